//! The agent's connections: at most one [`RelayClient`] per relay, made on first use and
//! made again after it breaks, and one channel into which every connection's pushed events
//! are forwarded, tagged with the relay and the connection's serial number (so that events
//! of a replaced connection can be told apart).
//!
//! Bound: [`PUSH_CHANNEL`] forwarded events. A relay pushes at most one unacknowledged
//! message per subscribed queue, plus END and the final Closed per connection, so the
//! channel holds at most a few events per queue.
//!
//! With a pacing policy in its [`ClientOptions`] every connection is paced; their ticks are
//! added up per relay across reconnections ([`Net::traffic`]), and [`Net::close_all`] ends
//! paced sessions in an orderly way ([`RelayClient::finish`]) so that the relay has read
//! every frame counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use sotto_protocol::RelayAddress;
use sotto_protocol::address::Host;
use tokio::sync::mpsc;

use crate::client::{ClientError, ClientOptions, Pushed, RelayClient, RelayPacing};
use crate::transport;

/// Capacity of the merged push channel, in events (each at most one frame, 16 KiB).
pub const PUSH_CHANNEL: usize = 256;

/// Attempts for one request when the connection breaks under it (connect + request).
pub const ATTEMPTS: usize = 3;

/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// How long closing waits for the endpoints' connections to drain once their
/// CONNECTION_CLOSE is out (it leaves at once; a connection attempt to a dead relay would
/// otherwise hold the process for its whole draining period).
const ENDPOINT_CLOSE_BOUND: Duration = Duration::from_millis(500);

/// How long closing waits for a relay to read the end of a paced session.
const FINISH_BOUND: Duration = Duration::from_secs(10);

/// Frames sent on the paced sessions with one relay, over every connection made to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTraffic {
    /// Ticks that carried real transmissions.
    pub real_ticks: u64,
    /// Cover ticks.
    pub cover_ticks: u64,
    /// Echo frames (one per frame received, with the policy's `echo`).
    pub echoes: u64,
    /// Connections made.
    pub sessions: u64,
    /// What the relay said to PACE on the last connection.
    pub pace: Option<RelayPacing>,
}

impl LinkTraffic {
    fn add(&mut self, client: &RelayClient) {
        let s = client.stats();
        self.real_ticks += s.real_ticks;
        self.cover_ticks += s.cover_ticks;
        self.echoes += s.echoes;
        self.sessions += 1;
        self.pace = Some(client.relay_pacing());
    }
}

/// A pushed event with where it came from.
#[derive(Debug)]
pub struct Tagged {
    /// The relay.
    pub relay: RelayAddress,
    /// Serial number of the connection that pushed it.
    pub serial: u64,
    /// The event.
    pub event: Pushed,
}

/// Why a relay could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Connecting failed (or the session broke and could not be made again).
    #[error("relay {relay} unreachable: {source}")]
    Unreachable {
        /// `host:port` of the relay.
        relay: String,
        /// The cause.
        #[source]
        source: ClientError,
    },
    /// The relay does not hold the key in its address.
    #[error(
        "wrong relay key: the relay at {relay} does not hold the key in its address \
         (check the address, or ask its operator for the current one)"
    )]
    WrongKey {
        /// `host:port` of the relay.
        relay: String,
    },
    /// The relay answered the request with an error or something unexpected.
    #[error("relay {relay}: {source}")]
    Request {
        /// `host:port` of the relay.
        relay: String,
        /// The cause.
        #[source]
        source: ClientError,
    },
}

impl NetError {
    /// The relay's answer, when it answered with ERR.
    pub fn relay_code(&self) -> Option<sotto_protocol::ErrorCode> {
        match self {
            NetError::Request {
                source: ClientError::Relay(c),
                ..
            } => Some(*c),
            _ => None,
        }
    }
}

struct Conn {
    client: RelayClient,
    serial: u64,
}

/// Connections of one agent.
pub struct Net {
    opts: ClientOptions,
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
    conns: HashMap<RelayAddress, Conn>,
    /// Traffic of connections that have ended, by relay (one entry per relay ever used).
    retired: HashMap<RelayAddress, LinkTraffic>,
    next_serial: u64,
    push_tx: mpsc::Sender<Tagged>,
    push_rx: mpsc::Receiver<Tagged>,
}

impl Net {
    /// No connections yet.
    pub fn new(opts: ClientOptions) -> Self {
        let (push_tx, push_rx) = mpsc::channel(PUSH_CHANNEL);
        Self {
            opts,
            v4: None,
            v6: None,
            conns: HashMap::new(),
            retired: HashMap::new(),
            next_serial: 1,
            push_tx,
            push_rx,
        }
    }

    /// The merged pushed events.
    pub fn pushes(&mut self) -> &mut mpsc::Receiver<Tagged> {
        &mut self.push_rx
    }

    /// The serial number of the live connection to `relay`, if any.
    pub fn serial(&self, relay: &RelayAddress) -> Option<u64> {
        self.conns
            .get(relay)
            .filter(|c| !c.client.is_closed())
            .map(|c| c.serial)
    }

    /// Forgets the connection to `relay` (the next use connects again).
    pub async fn drop_conn(&mut self, relay: &RelayAddress) {
        if let Some(c) = self.conns.remove(relay) {
            c.client.close().await;
            self.retire(relay, &c.client);
        }
    }

    /// Whether connections are paced.
    pub fn is_paced(&self) -> bool {
        self.opts.pacing.is_some()
    }

    /// Frames sent to each relay so far (live and ended connections).
    pub fn traffic(&self) -> Vec<(RelayAddress, LinkTraffic)> {
        let mut relays: Vec<&RelayAddress> = self.retired.keys().chain(self.conns.keys()).collect();
        relays.sort_by_key(|r| r.to_string());
        relays.dedup();
        relays
            .into_iter()
            .map(|r| {
                let mut t = self.retired.get(r).copied().unwrap_or_default();
                if let Some(c) = self.conns.get(r) {
                    t.add(&c.client);
                }
                (r.clone(), t)
            })
            .collect()
    }

    fn retire(&mut self, relay: &RelayAddress, client: &RelayClient) {
        self.retired.entry(relay.clone()).or_default().add(client);
    }

    /// Closes every connection; paced ones in an orderly way (within a bound), so that
    /// their relays have read every frame [`Net::traffic`] counts.
    pub async fn close_all(&mut self) {
        let conns: Vec<(RelayAddress, Conn)> = self.conns.drain().collect();
        // All at once: each paced session waits for its relay to close it.
        let mut ending = tokio::task::JoinSet::new();
        for (_, c) in &conns {
            let client = c.client.clone();
            ending.spawn(async move {
                if client.is_paced() {
                    client.finish(FINISH_BOUND).await;
                } else {
                    client.close().await;
                }
            });
        }
        while ending.join_next().await.is_some() {}
        for (relay, c) in conns {
            self.retire(&relay, &c.client);
        }
        for ep in [self.v4.take(), self.v6.take()].into_iter().flatten() {
            ep.close(transport::CLOSE_NORMAL.into(), b"");
            let _ = tokio::time::timeout(ENDPOINT_CLOSE_BOUND, ep.wait_idle()).await;
        }
    }

    /// The live client for `relay`, connecting if needed. Returns it with its serial.
    ///
    /// # Errors
    /// [`NetError::WrongKey`] or [`NetError::Unreachable`].
    pub async fn client(&mut self, relay: &RelayAddress) -> Result<(RelayClient, u64), NetError> {
        if let Some(c) = self.conns.get(relay)
            && !c.client.is_closed()
        {
            return Ok((c.client.clone(), c.serial));
        }
        if let Some(old) = self.conns.remove(relay) {
            self.retire(relay, &old.client);
        }
        let endpoint = self.endpoint(relay)?;
        let (client, mut rx) = RelayClient::connect(&endpoint, relay, &self.opts)
            .await
            .map_err(|e| classify_connect(relay, e))?;
        let serial = self.next_serial;
        self.next_serial += 1;
        let tx = self.push_tx.clone();
        let tag = relay.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let t = Tagged {
                    relay: tag.clone(),
                    serial,
                    event,
                };
                if tx.send(t).await.is_err() {
                    break;
                }
            }
        });
        self.conns.insert(
            relay.clone(),
            Conn {
                client: client.clone(),
                serial,
            },
        );
        Ok((client, serial))
    }

    /// Runs `op` on the client for `relay`; if the session is broken (closed, lost, timed
    /// out), connects again and retries, up to [`ATTEMPTS`] times in all. The connects of
    /// one request share one `connect_timeout` between them, so that an unreachable relay
    /// costs one timeout, not one per attempt. A request that timed out may have reached
    /// the relay: callers make their requests idempotent or harmless to repeat.
    ///
    /// # Errors
    /// [`NetError::Request`] for an answer, [`NetError::Unreachable`] /
    /// [`NetError::WrongKey`] when no session could be had.
    pub async fn request<T, F>(&mut self, relay: &RelayAddress, mut op: F) -> Result<T, NetError>
    where
        F: AsyncFnMut(RelayClient) -> Result<T, ClientError>,
    {
        let mut last = None;
        let mut connect_left = self.opts.connect_timeout;
        for attempt in 0..ATTEMPTS {
            if connect_left.is_zero() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            let started = tokio::time::Instant::now();
            let connected = tokio::time::timeout(connect_left, self.client(relay)).await;
            connect_left = connect_left.saturating_sub(started.elapsed());
            let client = match connected {
                Ok(Ok((c, _))) => c,
                Ok(Err(e @ NetError::WrongKey { .. })) => return Err(e),
                Ok(Err(e)) => {
                    last = Some(e);
                    continue;
                }
                Err(_) => {
                    last = Some(NetError::Unreachable {
                        relay: relay.host_port(),
                        source: ClientError::Timeout,
                    });
                    break;
                }
            };
            match op(client).await {
                Ok(v) => return Ok(v),
                Err(e) if session_broken(&e) => {
                    self.drop_conn(relay).await;
                    last = Some(NetError::Unreachable {
                        relay: relay.host_port(),
                        source: e,
                    });
                }
                Err(e) => {
                    return Err(NetError::Request {
                        relay: relay.host_port(),
                        source: e,
                    });
                }
            }
        }
        Err(last.unwrap_or_else(|| NetError::Unreachable {
            relay: relay.host_port(),
            source: ClientError::Closed,
        }))
    }

    fn endpoint(&mut self, relay: &RelayAddress) -> Result<quinn::Endpoint, NetError> {
        let v6 = matches!(relay.host, Host::Ipv6(_));
        let slot = if v6 { &mut self.v6 } else { &mut self.v4 };
        if let Some(ep) = slot {
            return Ok(ep.clone());
        }
        let bind: SocketAddr = if v6 {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let ep = transport::client_endpoint(bind, &self.opts.quic).map_err(|e| {
            NetError::Unreachable {
                relay: relay.host_port(),
                source: ClientError::Transport(e),
            }
        })?;
        *slot = Some(ep.clone());
        Ok(ep)
    }
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

/// `e`, from a request to `relay` made without [`Net::request`]'s retries, as
/// [`Net::request`] reports it.
pub(super) fn request_error(relay: &RelayAddress, e: ClientError) -> NetError {
    if session_broken(&e) {
        NetError::Unreachable {
            relay: relay.host_port(),
            source: e,
        }
    } else {
        NetError::Request {
            relay: relay.host_port(),
            source: e,
        }
    }
}

/// Whether an error means the session is gone (so a new one may succeed).
pub(super) fn session_broken(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Transport(_) | ClientError::Closed | ClientError::Timeout
    )
}

fn classify_connect(relay: &RelayAddress, e: ClientError) -> NetError {
    match e {
        ClientError::Transport(transport::TransportError::IdentityMismatch) => NetError::WrongKey {
            relay: relay.host_port(),
        },
        e => NetError::Unreachable {
            relay: relay.host_port(),
            source: e,
        },
    }
}
