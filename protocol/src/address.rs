//! Relay and queue addresses.
//!
//! `sotto://<base64url(relay static key)>@<host>[:<port>][?tcp[=<port>]]` names a relay and
//! pins its Noise key; `<relay address>#<base64url(sender id)>` names the sending side of a
//! queue. Hosts are DNS names, IPv4 literals or bracketed IPv6 literals. The optional
//! transport hint `?tcp` says the relay also accepts TLS over TCP (on the same port number,
//! or on the one given), which clients use through Tor or where UDP is blocked. Parsing is
//! strict and every malformed form has its own error; formatting is canonical (the default
//! port is omitted, a TCP port equal to the QUIC port is written `?tcp`), so
//! `parse(format(a)) == a`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::DEFAULT_PORT;
use crate::ids::SenderId;
use crate::keys::{KEY_LEN, RelayPublicKey};

/// URI scheme of relay addresses.
pub const SCHEME: &str = "sotto://";

/// Longest DNS name accepted as a host.
pub const MAX_HOST_LEN: usize = 253;

/// Longest relay address in text form (scheme, key, `@`, bracketed host, port, and the
/// transport hint `?tcp=65535`).
pub const MAX_ADDRESS_LEN: usize = 8 + 43 + 1 + MAX_HOST_LEN + 2 + 6 + TCP_HINT.len() + 6;

/// The transport hint that announces a TLS-over-TCP listener.
pub const TCP_HINT: &str = "?tcp";

/// Why a relay or queue address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The text does not start with `sotto://`.
    #[error("address must start with `sotto://`")]
    MissingScheme,
    /// No `@` separates the key from the host.
    #[error("address must be sotto://<key>@<host>[:<port>]; `@` is missing")]
    MissingAt,
    /// The key part is not 32 bytes of unpadded base64url.
    #[error("relay key must be 43 characters of unpadded base64url (32 bytes)")]
    BadKey,
    /// The host is empty.
    #[error("host is missing")]
    MissingHost,
    /// The host is not a DNS name, IPv4 literal or bracketed IPv6 literal.
    #[error("invalid host `{0}`")]
    BadHost(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port `{0}`")]
    BadPort(String),
    /// A queue address lacks `#<sender id>` or the id is malformed.
    #[error("queue address must end in #<sender id> (32 characters of base64url)")]
    BadQueueId,
    /// The address is longer than any valid address.
    #[error("address is too long")]
    TooLong,
    /// The part after `?` is not a transport hint (`tcp` or `tcp=<port>`).
    #[error("invalid transport hint `{0}`: write `?tcp` or `?tcp=<port>`")]
    BadHint(String),
}

/// Host part of a relay address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name (lower-cased), including `.onion` names.
    Domain(String),
    /// An IPv4 literal.
    Ipv4(Ipv4Addr),
    /// An IPv6 literal (bracketed in text form).
    Ipv6(Ipv6Addr),
}

impl Host {
    /// Whether this is a Tor onion-service name.
    pub fn is_onion(&self) -> bool {
        matches!(self, Host::Domain(d) if d.ends_with(".onion"))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

impl FromStr for Host {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AddressError::MissingHost);
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| AddressError::BadHost(s.to_owned()))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(Host::Ipv6)
                .map_err(|_| AddressError::BadHost(s.to_owned()));
        }
        if let Ok(v4) = s.parse::<Ipv4Addr>() {
            return Ok(Host::Ipv4(v4));
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        // A name made only of digits and dots would be a mistyped IPv4 literal.
        let all_numeric = s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if s.len() > MAX_HOST_LEN || all_numeric || !s.split('.').all(valid_label) {
            return Err(AddressError::BadHost(s.to_owned()));
        }
        Ok(Host::Domain(s.to_ascii_lowercase()))
    }
}

/// A relay: its pinned Noise public key, host, port and (optionally) its TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayAddress {
    /// The relay's static Noise key; a handshake with any other key is refused.
    pub key: RelayPublicKey,
    /// Where to reach it.
    pub host: Host,
    /// UDP port (QUIC).
    pub port: u16,
    /// TCP port of the relay's TLS-over-TCP listener, when the address announces one
    /// (`?tcp` or `?tcp=<port>`). `None` says nothing either way: clients that need TCP
    /// (through a proxy, or when UDP is blocked) then try [`RelayAddress::port`].
    pub tcp: Option<u16>,
}

impl RelayAddress {
    /// An address without a transport hint.
    pub fn new(key: RelayPublicKey, host: Host, port: u16) -> Self {
        Self {
            key,
            host,
            port,
            tcp: None,
        }
    }

    /// `host:port` as a socket-address string (IPv6 bracketed), for resolvers.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The TCP port to dial: the hinted one, else the QUIC port.
    pub fn tcp_port(&self) -> u16 {
        self.tcp.unwrap_or(self.port)
    }
}

impl fmt::Display for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}@{}", self.key.to_base64(), self.host)?;
        if self.port != DEFAULT_PORT {
            write!(f, ":{}", self.port)?;
        }
        match self.tcp {
            None => {}
            Some(p) if p == self.port => f.write_str(TCP_HINT)?,
            Some(p) => write!(f, "{TCP_HINT}={p}")?,
        }
        Ok(())
    }
}

/// Parses a port: a decimal number in 1..=65535, no sign, no leading zero.
fn parse_port(p: &str) -> Result<u16, AddressError> {
    match p.parse::<u16>() {
        Ok(n) if n != 0 && !p.starts_with('+') && !p.starts_with('0') => Ok(n),
        _ => Err(AddressError::BadPort(p.to_owned())),
    }
}

impl FromStr for RelayAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(AddressError::MissingScheme)?;
        let (rest, hint) = match rest.split_once('?') {
            Some((r, h)) => (r, Some(h)),
            None => (rest, None),
        };
        let (key, hostport) = rest.split_once('@').ok_or(AddressError::MissingAt)?;
        let key_bytes = URL_SAFE_NO_PAD
            .decode(key)
            .map_err(|_| AddressError::BadKey)?;
        let key = <[u8; KEY_LEN]>::try_from(key_bytes.as_slice())
            .map(RelayPublicKey)
            .map_err(|_| AddressError::BadKey)?;
        // Split off a port: after `]` for IPv6, after the only `:` otherwise.
        let (host, port) = if hostport.starts_with('[') {
            match hostport.rfind(']') {
                Some(i) => {
                    let (h, p) = hostport.split_at(i + 1);
                    match p.strip_prefix(':') {
                        Some(p) => (h, Some(p)),
                        None if p.is_empty() => (h, None),
                        None => return Err(AddressError::BadHost(hostport.to_owned())),
                    }
                }
                None => return Err(AddressError::BadHost(hostport.to_owned())),
            }
        } else if hostport.matches(':').count() > 1 {
            // An unbracketed IPv6 literal: the port would be ambiguous.
            return Err(AddressError::BadHost(hostport.to_owned()));
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let host: Host = host.parse()?;
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => parse_port(p)?,
        };
        let tcp = match hint {
            None => None,
            Some("tcp") => Some(port),
            Some(h) => match h.strip_prefix("tcp=") {
                Some(p) => Some(parse_port(p).map_err(|_| AddressError::BadHint(h.to_owned()))?),
                None => return Err(AddressError::BadHint(h.to_owned())),
            },
        };
        Ok(RelayAddress {
            key,
            host,
            port,
            tcp,
        })
    }
}

/// The sending side of a queue: `<relay address>#<base64url(sender id)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAddress {
    /// Relay holding the queue.
    pub relay: RelayAddress,
    /// Id to use in SKEY and SEND.
    pub sender_id: SenderId,
}

impl fmt::Display for QueueAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.relay, self.sender_id)
    }
}

impl FromStr for QueueAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (relay, id) = s.rsplit_once('#').ok_or(AddressError::BadQueueId)?;
        Ok(QueueAddress {
            relay: relay.parse()?,
            sender_id: id.parse().map_err(|_| AddressError::BadQueueId)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    fn addr(s: &str) -> Result<RelayAddress, AddressError> {
        s.parse()
    }

    #[test]
    fn parses_every_host_form_and_round_trips() {
        for (text, host, port) in [
            (
                format!("sotto://{KEY}@relay.example.org"),
                "relay.example.org",
                DEFAULT_PORT,
            ),
            (format!("sotto://{KEY}@127.0.0.1:7000"), "127.0.0.1", 7000),
            (format!("sotto://{KEY}@[::1]:443"), "[::1]", 443),
            (
                format!("sotto://{KEY}@[2001:db8::1]"),
                "[2001:db8::1]",
                DEFAULT_PORT,
            ),
        ] {
            let a = addr(&text).unwrap();
            assert_eq!(a.host.to_string(), host);
            assert_eq!(a.port, port);
            assert_eq!(a.key.0[31], 31);
            assert_eq!(a.to_string(), text);
            assert_eq!(addr(&a.to_string()).unwrap(), a);
        }
    }

    #[test]
    fn explicit_default_port_is_canonicalised() {
        let a = addr(&format!("sotto://{KEY}@Example.ORG:{DEFAULT_PORT}")).unwrap();
        assert_eq!(a.to_string(), format!("sotto://{KEY}@example.org"));
    }

    #[test]
    fn every_malformed_form_has_its_error() {
        assert_eq!(addr("http://x@y"), Err(AddressError::MissingScheme));
        assert_eq!(
            addr(&format!("sotto://{KEY}")),
            Err(AddressError::MissingAt)
        );
        assert_eq!(addr("sotto://short@host"), Err(AddressError::BadKey));
        assert_eq!(
            addr(&format!("sotto://{KEY}=@host")),
            Err(AddressError::BadKey)
        );
        assert_eq!(
            addr(&format!("sotto://{KEY}@")),
            Err(AddressError::MissingHost)
        );
        assert_eq!(
            addr(&format!("sotto://{KEY}@:5")),
            Err(AddressError::MissingHost)
        );
        assert!(matches!(
            addr(&format!("sotto://{KEY}@bad_host")),
            Err(AddressError::BadHost(_))
        ));
        assert!(matches!(
            addr(&format!("sotto://{KEY}@[::1")),
            Err(AddressError::BadHost(_))
        ));
        assert!(matches!(
            addr(&format!("sotto://{KEY}@[nope]")),
            Err(AddressError::BadHost(_))
        ));
        assert!(matches!(
            addr(&format!("sotto://{KEY}@1.2.3")),
            Err(AddressError::BadHost(_))
        ));
        assert!(matches!(
            addr(&format!("sotto://{KEY}@::1")),
            Err(AddressError::BadHost(_))
        ));
        for p in ["0", "65536", "x", "", "+5", "05"] {
            assert!(
                matches!(
                    addr(&format!("sotto://{KEY}@h:{p}")),
                    Err(AddressError::BadPort(_))
                ),
                "port {p}"
            );
        }
        assert_eq!(addr(&"x".repeat(400)), Err(AddressError::TooLong));
    }

    #[test]
    fn queue_address_round_trips() {
        let q: QueueAddress = format!("sotto://{KEY}@h:9#{}", SenderId([3; 24]))
            .parse()
            .unwrap();
        assert_eq!(q.sender_id, SenderId([3; 24]));
        assert_eq!(q.to_string().parse::<QueueAddress>().unwrap(), q);
        assert_eq!(
            format!("sotto://{KEY}@h:9").parse::<QueueAddress>(),
            Err(AddressError::BadQueueId)
        );
        assert_eq!(
            format!("sotto://{KEY}@h#zz").parse::<QueueAddress>(),
            Err(AddressError::BadQueueId)
        );
    }

    #[test]
    fn tcp_hints_parse_format_and_round_trip() {
        for (text, port, tcp) in [
            (format!("sotto://{KEY}@relay.example.org?tcp"), 5443, 5443),
            (format!("sotto://{KEY}@127.0.0.1:7000?tcp"), 7000, 7000),
            (format!("sotto://{KEY}@[::1]:7000?tcp=443"), 7000, 443),
            (
                format!("sotto://{KEY}@abcdefghijklmnop.onion?tcp=80"),
                5443,
                80,
            ),
        ] {
            let a = addr(&text).unwrap();
            assert_eq!((a.port, a.tcp, a.tcp_port()), (port, Some(tcp), tcp));
            assert_eq!(a.to_string(), text);
            assert_eq!(addr(&a.to_string()).unwrap(), a);
            let q: QueueAddress = format!("{text}#{}", SenderId([3; 24])).parse().unwrap();
            assert_eq!(q.relay, a);
            assert_eq!(q.to_string().parse::<QueueAddress>().unwrap(), q);
        }
        // A TCP port equal to the QUIC port is written `?tcp`.
        let a = addr(&format!("sotto://{KEY}@h:7000?tcp=7000")).unwrap();
        assert_eq!(a.to_string(), format!("sotto://{KEY}@h:7000?tcp"));
        let a = addr(&format!("sotto://{KEY}@h?tcp=5443")).unwrap();
        assert_eq!(a.to_string(), format!("sotto://{KEY}@h?tcp"));
        // Without a hint the TCP port to try is the QUIC port.
        let a = addr(&format!("sotto://{KEY}@h:7000")).unwrap();
        assert_eq!((a.tcp, a.tcp_port()), (None, 7000));
        // The longest address, hint included, is accepted.
        let long = format!(
            "sotto://{KEY}@{}.{}.{}.{}:65535?tcp=65534",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert!(long.len() <= MAX_ADDRESS_LEN);
        assert_eq!(addr(&long).unwrap().to_string(), long);
    }

    #[test]
    fn malformed_hints_are_refused() {
        for h in [
            "",
            "udp",
            "tcp=",
            "tcp=0",
            "tcp=65536",
            "tcp=05",
            "tcp=x",
            "tcp&tcp",
            "TCP",
        ] {
            assert!(
                matches!(
                    addr(&format!("sotto://{KEY}@h:9?{h}")),
                    Err(AddressError::BadHint(_))
                ),
                "hint {h:?}"
            );
        }
        // The hint comes after the port, never inside the host.
        assert!(matches!(
            addr(&format!("sotto://{KEY}@h?tcp:9")),
            Err(AddressError::BadHint(_))
        ));
        assert!(
            addr(&format!("sotto://{KEY}@h?tcp=7?tcp"))
                .unwrap_err()
                .to_string()
                .contains("?tcp=<port>")
        );
    }

    #[test]
    fn onion_hosts_are_recognised() {
        let a = addr(&format!("sotto://{KEY}@abcdefghijklmnop.onion")).unwrap();
        assert!(a.host.is_onion());
    }
}
