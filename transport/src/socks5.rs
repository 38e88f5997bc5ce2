//! A minimal SOCKS5 client: RFC 1928 `CONNECT` with RFC 1929 username/password, enough to
//! reach relays through Tor.
//!
//! This module owns the proxy handshake and nothing else: after `connect` the stream is a
//! plain byte pipe to the relay, and the TLS and Noise layers run over it unchanged.
//!
//! Privacy rules it enforces:
//!
//! - **The proxy resolves the relay's host name.** A DNS name is sent as `ATYP = 3`
//!   (DOMAINNAME) and is never looked up locally, so neither the name nor the fact that it
//!   was wanted reaches the local resolver (a `.onion` name could not be resolved anyway,
//!   and leaking it to clearnet DNS would tell the network which onion service is used).
//!   Only the proxy's own host name (usually `127.0.0.1`) is resolved locally.
//! - **One circuit per connection.** Each connection offers a fresh random username and
//!   password. Tor isolates streams by SOCKS credentials (`IsolateSOCKSAuth`, on by
//!   default), so two relay connections never share a circuit and the exit (or the onion
//!   service's rendezvous) cannot link them by circuit. Proxies that do not care about
//!   credentials may pick "no authentication" instead.

use std::fmt;
use std::io;
use std::str::FromStr;

use rand::RngCore as _;
use rand::rngs::OsRng;
use sotto_protocol::address::Host;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const VERSION: u8 = 5;
const METHOD_NONE: u8 = 0x00;
const METHOD_USER_PASS: u8 = 0x02;
const METHOD_UNACCEPTABLE: u8 = 0xff;
const USER_PASS_VERSION: u8 = 1;
const CMD_CONNECT: u8 = 1;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// Random bytes in each of the per-connection username and password (sent as hex).
const CREDENTIAL_BYTES: usize = 8;

/// Where a SOCKS5 proxy listens: `host:port`, e.g. `127.0.0.1:9050` (Tor's default SOCKS
/// port). IPv6 literals are bracketed (`[::1]:9050`). The proxy's own host name, if it is
/// one, is resolved locally; relay host names never are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Socks5Proxy {
    host: String,
    port: u16,
}

impl Socks5Proxy {
    /// A proxy at `host` (a name or an IP literal, IPv6 without brackets) and `port`.
    ///
    /// # Errors
    /// [`BadProxyAddress`] if the host is empty or the port is 0.
    pub fn new(host: &str, port: u16) -> Result<Self, BadProxyAddress> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
            return Err(BadProxyAddress(format!("{host}:{port}")));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The proxy's host (IPv6 literals without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Socks5Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Socks5Proxy {
    type Err = BadProxyAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadProxyAddress(s.to_owned());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        // An unbracketed IPv6 literal would make the port ambiguous.
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        Self::new(host, port).map_err(|_| bad())
    }
}

/// A proxy address that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SOCKS5 proxy address `{0}`: write HOST:PORT, e.g. 127.0.0.1:9050 for Tor")]
pub struct BadProxyAddress(String);

/// Why the proxy did not give us a connection to the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy itself could not be reached.
    #[error("cannot reach the SOCKS5 proxy at {proxy} ({source}); is Tor running?")]
    Unreachable {
        /// The proxy's address as configured.
        proxy: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The connection to the proxy failed during the SOCKS5 exchange.
    #[error("the SOCKS5 proxy closed the connection ({0})")]
    Io(#[source] io::Error),
    /// The proxy answered something other than SOCKS5.
    #[error("the proxy does not speak SOCKS5")]
    NotSocks5,
    /// The proxy accepts neither "no authentication" nor username/password.
    #[error("the SOCKS5 proxy accepts none of our authentication methods")]
    NoAcceptableMethod,
    /// The proxy refused the per-connection credentials.
    #[error("the SOCKS5 proxy refused the connection's credentials")]
    AuthFailed,
    /// The proxy could not (or would not) connect to the relay.
    #[error("the proxy could not reach the relay: {0}")]
    Refused(&'static str),
    /// The proxy's answer is malformed.
    #[error("malformed answer from the SOCKS5 proxy")]
    BadReply,
}

/// Connects to `host:port` through `proxy` and returns the stream, positioned after the
/// proxy's reply (the next byte is the relay's).
///
/// # Errors
/// [`ProxyError`] for any failure; the stream is dropped.
pub(crate) async fn connect(
    proxy: &Socks5Proxy,
    host: &Host,
    port: u16,
) -> Result<TcpStream, ProxyError> {
    let mut s = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|source| ProxyError::Unreachable {
            proxy: proxy.to_string(),
            source,
        })?;
    handshake(&mut s, host, port).await?;
    Ok(s)
}

async fn handshake(s: &mut TcpStream, host: &Host, port: u16) -> Result<(), ProxyError> {
    s.write_all(&[VERSION, 2, METHOD_NONE, METHOD_USER_PASS])
        .await
        .map_err(ProxyError::Io)?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.map_err(ProxyError::Io)?;
    match choice {
        [VERSION, METHOD_NONE] => {}
        [VERSION, METHOD_USER_PASS] => authenticate(s).await?,
        [VERSION, METHOD_UNACCEPTABLE] => return Err(ProxyError::NoAcceptableMethod),
        [VERSION, _] => return Err(ProxyError::BadReply),
        _ => return Err(ProxyError::NotSocks5),
    }
    s.write_all(&connect_request(host, port))
        .await
        .map_err(ProxyError::Io)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.map_err(ProxyError::Io)?;
    let [version, reply, _reserved, atyp] = head;
    if version != VERSION {
        return Err(ProxyError::BadReply);
    }
    if reply != 0 {
        return Err(ProxyError::Refused(reply_text(reply)));
    }
    // The bound address is of no use to us, but it must be consumed.
    let addr_len = match atyp {
        ATYP_IPV4 => 4,
        ATYP_IPV6 => 16,
        ATYP_DOMAIN => usize::from(s.read_u8().await.map_err(ProxyError::Io)?),
        _ => return Err(ProxyError::BadReply),
    };
    let mut rest = vec![0u8; addr_len + 2];
    s.read_exact(&mut rest).await.map_err(ProxyError::Io)?;
    Ok(())
}

/// RFC 1929 with fresh random credentials (stream isolation, see the module docs).
async fn authenticate(s: &mut TcpStream) -> Result<(), ProxyError> {
    let user = random_token();
    let pass = random_token();
    let mut msg = Vec::with_capacity(3 + user.len() + pass.len());
    msg.push(USER_PASS_VERSION);
    // Both tokens are 16 ASCII characters: the length fits a u8.
    msg.push(user.len() as u8);
    msg.extend_from_slice(user.as_bytes());
    msg.push(pass.len() as u8);
    msg.extend_from_slice(pass.as_bytes());
    s.write_all(&msg).await.map_err(ProxyError::Io)?;
    let mut status = [0u8; 2];
    s.read_exact(&mut status).await.map_err(ProxyError::Io)?;
    match status {
        [USER_PASS_VERSION, 0] => Ok(()),
        [USER_PASS_VERSION, _] => Err(ProxyError::AuthFailed),
        _ => Err(ProxyError::BadReply),
    }
}

fn random_token() -> String {
    let mut b = [0u8; CREDENTIAL_BYTES];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The CONNECT request. DNS names go to the proxy as names (ATYP 3), never resolved here.
fn connect_request(host: &Host, port: u16) -> Vec<u8> {
    let mut req = vec![VERSION, CMD_CONNECT, 0];
    match host {
        Host::Domain(name) => {
            req.push(ATYP_DOMAIN);
            // A DNS name is at most 253 bytes (`MAX_HOST_LEN`), so its length fits a u8.
            req.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
            req.extend_from_slice(name.as_bytes());
        }
        Host::Ipv4(a) => {
            req.push(ATYP_IPV4);
            req.extend_from_slice(&a.octets());
        }
        Host::Ipv6(a) => {
            req.push(ATYP_IPV6);
            req.extend_from_slice(&a.octets());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    req
}

fn reply_text(code: u8) -> &'static str {
    match code {
        1 => "general failure (for Tor: the relay or onion service may be down)",
        2 => "connection not allowed by the proxy's rules",
        3 => "network unreachable",
        4 => "host unreachable (for Tor: the onion service could not be reached)",
        5 => "connection refused by the relay's host",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported (the proxy may not resolve names)",
        _ => "unknown SOCKS5 error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_addresses_parse_and_print() {
        let p: Socks5Proxy = "127.0.0.1:9050".parse().unwrap();
        assert_eq!((p.host(), p.port()), ("127.0.0.1", 9050));
        assert_eq!(p.to_string(), "127.0.0.1:9050");
        let p: Socks5Proxy = "[::1]:9150".parse().unwrap();
        assert_eq!((p.host(), p.port()), ("::1", 9150));
        assert_eq!(p.to_string(), "[::1]:9150");
        let p: Socks5Proxy = "tor:9050".parse().unwrap();
        assert_eq!(p.host(), "tor");
        for bad in [
            "", "9050", "host", "host:", ":9050", "::1:9050", "h:0", "h:70000", "a b:1",
        ] {
            assert!(bad.parse::<Socks5Proxy>().is_err(), "{bad:?}");
        }
        assert!(
            "x".parse::<Socks5Proxy>()
                .unwrap_err()
                .to_string()
                .contains("127.0.0.1:9050")
        );
    }

    #[test]
    fn names_are_sent_to_the_proxy_unresolved() {
        let req = connect_request(&Host::Domain("abc.onion".into()), 5443);
        assert_eq!(
            req,
            [&[5, 1, 0, 3, 9][..], b"abc.onion", &5443u16.to_be_bytes()].concat()
        );
        let req = connect_request(&Host::Ipv4([10, 0, 0, 1].into()), 1);
        assert_eq!(req, [5, 1, 0, 1, 10, 0, 0, 1, 0, 1]);
        let req = connect_request(&Host::Ipv6(std::net::Ipv6Addr::LOCALHOST), 2);
        assert_eq!(req.len(), 4 + 16 + 2);
        assert_eq!(req.get(3), Some(&ATYP_IPV6));
    }

    #[test]
    fn credentials_differ_per_connection() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 2 * CREDENTIAL_BYTES);
        assert_ne!(a, b);
    }
}
