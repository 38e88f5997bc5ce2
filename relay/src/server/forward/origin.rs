//! The forwarding side of FWD: policy, the forwarding delay, a bounded pool of sessions to
//! destination relays, and the mapping of their failures to error codes
//! (`docs/protocol.md` § 10a.3).
//!
//! What it owns: the delay each FWD is held for (`min(Exp(forwarding.delay_mean),
//! forwarding.delay_cap)`, drawn with the release delays' sampler, before the pool is looked
//! up, so that neither the RFWD nor a new connection to the destination follows the client's
//! frame at once), and one [`RelayClient`] session per destination, dialled from the relay's
//! own QUIC endpoint (so destinations see this relay's address), with the destination's key
//! pinned from its address. What it does not: the sealed blob — it is passed on unread and
//! never logged or stored — and the destination side of RFWD (`destination`, with the
//! replay memory in the store).
//!
//! # Bounds
//!
//! - At most `forwarding.max_destinations` sessions (the least recently used is closed to
//!   make room); each costs at most ≈ 7 MiB ([`sotto_transport::client`]'s queues and the QUIC
//!   windows), so the pool costs at most `max_destinations` × 7 MiB (224 MiB with the
//!   default 32), and far less in practice.
//! - Dialling is bounded by `forwarding.connect_timeout`, waiting for an answer by
//!   `forwarding.answer_timeout`; concurrent FWDs to one destination share one dial.
//! - Sessions unused for `forwarding.idle_timeout` are closed by [`Forwarder::run_sweeper`].
//! - A FWD waits out its delay (at most `forwarding.delay_cap`) as one of its session's
//!   writes in flight (≤ 256 per session, each holding one sealed blob of 15 616 bytes), and
//!   outside `forwarding.answer_timeout`. Shutdown cuts the wait short: the FWD is answered
//!   `ERR UNREACHABLE` (nothing was forwarded) and counted in
//!   `sotto_forward_delays_cut_total`, so a delay never holds shutdown up.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGauge};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use sotto_protocol::address::Host;
use sotto_protocol::{Command, ErrorCode, RelayAddress, RelayPublicKey, Response};
use sotto_timing::delay::{DelayMode, DelaySampler};
use sotto_transport::{ClientError, ClientOptions, RelayClient};
use sotto_transport::{QuicOptions, TransportChoice, TransportError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ForwardingConfig, ForwardingMode};
use crate::metrics::Metrics;
use crate::server::lock;

/// A destination as the pool knows it: key, host and port. The transport hint of an
/// address is not part of it (it names the same relay).
type Destination = (RelayPublicKey, Host, u16);

fn destination(a: &RelayAddress) -> Destination {
    (a.key, a.host.clone(), a.port)
}

/// One destination's session, dialled on first use and again after it breaks.
#[derive(Default)]
struct Slot {
    /// Held while dialling, so concurrent FWDs to one destination share one dial.
    client: tokio::sync::Mutex<Option<RelayClient>>,
    /// Last use, for LRU eviction and idle closing.
    last_used: Mutex<Option<Instant>>,
}

impl Slot {
    fn touch(&self) {
        *lock(&self.last_used) = Some(Instant::now());
    }

    fn last_used(&self) -> Option<Instant> {
        *lock(&self.last_used)
    }
}

/// The forwarding delay (`docs/protocol.md` § 10a.3 step 3) and its metrics.
struct ForwardDelay {
    /// `DelayMode::Poisson { delay_mean, delay_cap }`, or `Off` for a zero mean; seeded from
    /// the OS like the release sampler (predictable delays are no defence).
    sampler: Mutex<DelaySampler<StdRng>>,
    /// Cuts every wait short.
    shutdown: CancellationToken,
    /// `sotto_forward_delay_seconds`: delays waited out in full.
    seconds: Histogram,
    /// `sotto_forward_delayed`: FWDs waiting now.
    waiting: IntGauge,
    /// `sotto_forward_delays_cut_total`: waits cut short by shutdown.
    cut: IntCounter,
}

impl ForwardDelay {
    /// Waits out one freshly drawn delay.
    ///
    /// # Errors
    /// `UNREACHABLE` when shutdown cut the wait short: nothing was forwarded.
    async fn hold(&self) -> Result<(), ErrorCode> {
        let ms = {
            let mut sampler = lock(&self.sampler);
            if *sampler.mode() == DelayMode::Off {
                return Ok(());
            }
            // A release time from 0 is the delay itself.
            sampler.release_at(0)
        };
        let delay = Duration::from_millis(ms);
        let _waiting = GaugeUnit::new(&self.waiting);
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {
                self.cut.inc();
                Err(ErrorCode::Unreachable)
            }
            () = tokio::time::sleep(delay) => {
                self.seconds.observe(delay.as_secs_f64());
                Ok(())
            }
        }
    }
}

/// One unit of a gauge, from creation until dropped (also when the future holding it is).
struct GaugeUnit(IntGauge);

impl GaugeUnit {
    fn new(g: &IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeUnit {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Forwards sealed requests to destination relays on behalf of this relay's clients.
pub struct Forwarder {
    endpoint: quinn::Endpoint,
    own_key: RelayPublicKey,
    mode: ForwardingMode,
    allow_private: bool,
    max_destinations: usize,
    connect_timeout: Duration,
    idle_timeout: Duration,
    client_options: ClientOptions,
    /// Log destinations (only with `log.sensitive`).
    sensitive: bool,
    /// Sessions by destination; at most `max_destinations` entries.
    pool: Mutex<HashMap<Destination, Arc<Slot>>>,
    /// Held before the pool is looked up.
    delay: ForwardDelay,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destinations say whom this relay's clients write to: not printed.
        f.debug_struct("Forwarder")
            .field("mode", &mode_name(&self.mode))
            .field("sessions", &lock(&self.pool).len())
            .finish_non_exhaustive()
    }
}

fn mode_name(m: &ForwardingMode) -> &'static str {
    match m {
        ForwardingMode::Off => "off",
        ForwardingMode::Listed(_) => "listed",
        ForwardingMode::Any => "any",
    }
}

impl Forwarder {
    /// A forwarder dialling from `endpoint` (the relay's own, so that destinations see the
    /// relay's address), refusing destinations whose key is `own_key`, holding each FWD for
    /// its forwarding delay unless `shutdown` is cancelled, and counting the delays in
    /// `metrics`.
    ///
    /// # Errors
    /// An invalid `forwarding` section (see [`ForwardingConfig::parsed_mode`]).
    pub fn new(
        endpoint: quinn::Endpoint,
        own_key: RelayPublicKey,
        config: &ForwardingConfig,
        quic: QuicOptions,
        sensitive: bool,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            endpoint,
            own_key,
            mode: config.parsed_mode()?,
            allow_private: config.allow_private,
            max_destinations: config.max_destinations.max(1),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            client_options: ClientOptions {
                connect_timeout: config.connect_timeout,
                request_timeout: config.answer_timeout,
                quic,
                // QUIC only: from the relay's own UDP socket, so destinations see the
                // relay's published address, and with no second transport to fall back to.
                transport: TransportChoice::Quic,
                ..ClientOptions::default()
            },
            sensitive,
            pool: Mutex::new(HashMap::new()),
            delay: ForwardDelay {
                sampler: Mutex::new(DelaySampler::new(
                    config.delay_mode(),
                    StdRng::from_entropy(),
                )),
                shutdown,
                seconds: metrics.forward_delay_seconds.clone(),
                waiting: metrics.forward_delayed.clone(),
                cut: metrics.forward_delays_cut.clone(),
            },
        })
    }

    /// Sessions currently in the pool.
    pub fn sessions(&self) -> usize {
        lock(&self.pool).len()
    }

    /// Forwards `sealed` to `to` as RFWD, after the forwarding delay, and returns the
    /// destination's sealed answer.
    ///
    /// # Errors
    /// The code for the client: `FWD_REFUSED` (policy, or `to` is this relay),
    /// `UNREACHABLE` (also when shutdown cut the delay short), `TIMEOUT`, `IDENTITY`, or the
    /// destination's own ERR code.
    pub async fn forward(&self, to: &RelayAddress, sealed: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        let result = self.forward_inner(to, sealed).await;
        if let Err(code) = result {
            if self.sensitive {
                tracing::debug!(destination = %to, code = code.name(), "forward failed");
            } else {
                tracing::debug!(code = code.name(), "forward failed");
            }
        }
        result
    }

    async fn forward_inner(
        &self,
        to: &RelayAddress,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>, ErrorCode> {
        self.check_policy(to)?;
        // Before the pool is looked up or a session dialled (§ 10a.3 step 3): neither the
        // RFWD nor a new connection to the destination follows the client's frame at once.
        // Outside the answer timeout, which bounds the wait for the destination only.
        self.delay.hold().await?;
        let slot = self.slot(to);
        let client = self.session(&slot, to).await?;
        slot.touch();
        let answer = client.request(None, Command::RFwd { sealed }, None).await;
        slot.touch();
        match answer {
            Ok(Response::FwdAnswer { sealed }) => Ok(sealed),
            // A destination that answers RFWD with anything else does not speak this
            // protocol: as good as unreachable.
            Ok(_) => Err(ErrorCode::Unreachable),
            Err(ClientError::Relay(code)) => Err(code),
            Err(ClientError::Timeout) => Err(ErrorCode::Timeout),
            Err(ClientError::Protocol(_)) => Err(ErrorCode::Internal),
            Err(_) => {
                // The session broke: forget it so the next FWD dials again. The RFWD may
                // have reached the destination before it broke, so the outcome is unknown
                // (TIMEOUT), not "nothing was forwarded" (UNREACHABLE, § 10a.7).
                let mut guard = slot.client.lock().await;
                if guard.as_ref().is_some_and(RelayClient::is_closed) {
                    *guard = None;
                }
                Err(ErrorCode::Timeout)
            }
        }
    }

    /// `FWD_REFUSED` unless the configuration allows `to` and `to` is not this relay.
    fn check_policy(&self, to: &RelayAddress) -> Result<(), ErrorCode> {
        // A → A: the destination key is this relay's own.
        if to.key == self.own_key {
            return Err(ErrorCode::FwdRefused);
        }
        match &self.mode {
            ForwardingMode::Off => Err(ErrorCode::FwdRefused),
            ForwardingMode::Listed(list) => {
                let d = destination(to);
                if list.iter().any(|a| destination(a) == d) {
                    Ok(())
                } else {
                    Err(ErrorCode::FwdRefused)
                }
            }
            ForwardingMode::Any => Ok(()),
        }
    }

    /// The pool slot of `to`, created if needed (closing the least recently used session
    /// when the pool is full).
    fn slot(&self, to: &RelayAddress) -> Arc<Slot> {
        let d = destination(to);
        let mut pool = lock(&self.pool);
        if let Some(s) = pool.get(&d) {
            return s.clone();
        }
        while pool.len() >= self.max_destinations {
            // Never-used slots (being dialled for the first time) count as oldest.
            let Some(oldest) = pool
                .iter()
                .min_by_key(|(_, s)| s.last_used())
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            // In-flight requests keep their clone of the session; it closes after them.
            pool.remove(&oldest);
        }
        let s = Arc::new(Slot::default());
        pool.insert(d, s.clone());
        s
    }

    /// The slot's session, dialling it if there is none or it has ended.
    async fn session(&self, slot: &Slot, to: &RelayAddress) -> Result<RelayClient, ErrorCode> {
        let mut guard = slot.client.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *guard = None;
        let deadline = Instant::now() + self.connect_timeout;
        let dial = async {
            let target = self.resolve(to).await?;
            let opts = ClientOptions {
                connect_timeout: deadline.saturating_duration_since(Instant::now()),
                ..self.client_options.clone()
            };
            // Pushes are not expected on a forwarding session; dropping the receiver
            // discards (and counts) any.
            let (client, _pushes) = RelayClient::connect(&self.endpoint, &target, &opts)
                .await
                .map_err(|e| connect_error(&e))?;
            Ok(client)
        };
        // No session, so no RFWD was sent: nothing was forwarded, whatever stopped the dial
        // (a closed UDP port looks like silence, since QUIC ignores ICMP).
        let client = tokio::time::timeout_at(deadline, dial)
            .await
            .map_err(|_| ErrorCode::Unreachable)??;
        *guard = Some(client.clone());
        Ok(client)
    }

    /// Resolves `to`'s host once and returns the address to dial with the host replaced by
    /// the chosen IP literal (so that what was checked is what is dialled).
    async fn resolve(&self, to: &RelayAddress) -> Result<RelayAddress, ErrorCode> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(to.host_port())
            .await
            .map_err(|_| ErrorCode::Unreachable)?
            .collect();
        if addrs.is_empty() {
            return Err(ErrorCode::Unreachable);
        }
        let check_global = matches!(self.mode, ForwardingMode::Any) && !self.allow_private;
        if check_global && addrs.iter().any(|a| !is_global(a.ip())) {
            // A name that resolves to any internal address is refused as a whole.
            return Err(ErrorCode::FwdRefused);
        }
        let local_v6 = self
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false);
        let chosen = addrs
            .iter()
            .find(|a| local_v6 || a.is_ipv4())
            .ok_or(ErrorCode::Unreachable)?;
        let host = match chosen.ip() {
            IpAddr::V4(v4) => Host::Ipv4(v4),
            IpAddr::V6(v6) => Host::Ipv6(v6),
        };
        Ok(RelayAddress {
            host,
            port: chosen.port(),
            ..to.clone()
        })
    }

    /// Closes sessions unused for `forwarding.idle_timeout` (not those being dialled or
    /// used right now).
    pub fn evict_idle(&self) {
        let now = Instant::now();
        lock(&self.pool).retain(|_, s| {
            let idle = s
                .last_used()
                .is_some_and(|t| now.saturating_duration_since(t) >= self.idle_timeout);
            !(idle && s.client.try_lock().is_ok())
        });
    }

    /// Runs [`Forwarder::evict_idle`] every half idle timeout until `shutdown`.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.idle_timeout / 2).max(Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.evict_idle(),
            }
        }
        // Close every session now rather than when the relay's endpoint closes.
        lock(&self.pool).clear();
    }
}

/// The client-facing code for a failure to dial a destination: IDENTITY when it proved
/// another key, otherwise UNREACHABLE — also when it did not answer the connection or the
/// handshake in time, since without a session no RFWD left (`docs/protocol.md` § 10a.3).
fn connect_error(e: &ClientError) -> ErrorCode {
    match e {
        ClientError::Transport(TransportError::IdentityMismatch) => ErrorCode::Identity,
        _ => ErrorCode::Unreachable,
    }
}

/// Whether `ip` is a globally routable unicast address (IANA special-purpose registries:
/// loopback, private, shared, link-local, documentation, benchmarking, multicast, reserved
/// and unique-local ranges are not). An IPv6 address that carries an IPv4 address a
/// gateway would reach — IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::/48` — is as global as that IPv4 address, so
/// that forwarding cannot reach a private IPv4 network through a translator; Teredo
/// (`2001::/32`, whose client address is obfuscated) is not global.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_global_v4(v4),
            None => is_global_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 address stands for, in the forms a translator or tunnel
/// routes to IPv4 (see [`is_global`]).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // ::a.b.c.d (IPv4-compatible, deprecated; `::` and `::1` fall in 0.0.0.0/8, not global).
    if s[..6] == [0; 6] {
        return Some(last);
    }
    // 64:ff9b::/96, the NAT64 well-known prefix.
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(last);
    }
    // 2002::/16, 6to4: the IPv4 address is bits 16–47.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        // 100.64.0.0/10 shared address space (carrier-grade NAT).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24 protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15 benchmarking.
        || (a == 198 && (b == 18 || b == 19)))
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // fc00::/7 unique local.
        || (s[0] & 0xfe00) == 0xfc00
        // fe80::/10 link-local.
        || (s[0] & 0xffc0) == 0xfe80
        // 2001:db8::/32 documentation.
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        // 2001::/32 Teredo.
        || (s[0] == 0x2001 && s[1] == 0)
        // 64:ff9b:1::/48 local-use translation, 100::/64 discard.
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1)
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarder in `any` mode without `allow_private`, so that a FWD to 127.0.0.1 gets as
    /// far as the pool (a slot is made) and is then refused when the host resolves to
    /// loopback: no packet is ever sent. Its endpoint is bound but stays silent, which is
    /// why these tests may run on tokio's paused clock.
    fn forwarder(delay_mean: Duration, shutdown: &CancellationToken) -> (Arc<Forwarder>, Metrics) {
        let metrics = Metrics::new().unwrap();
        let config = ForwardingConfig {
            delay_mean,
            delay_cap: Duration::from_secs(10),
            ..ForwardingConfig::default()
        };
        let endpoint = sotto_transport::client_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &QuicOptions::default(),
        )
        .unwrap();
        let own = sotto_protocol::RelayStaticKey::generate(&mut rand::rngs::OsRng).public();
        let f = Forwarder::new(
            endpoint,
            own,
            &config,
            QuicOptions::default(),
            false,
            &metrics,
            shutdown.clone(),
        )
        .unwrap();
        (Arc::new(f), metrics)
    }

    fn loopback_destination() -> RelayAddress {
        RelayAddress {
            key: sotto_protocol::RelayStaticKey::generate(&mut rand::rngs::OsRng).public(),
            host: Host::Ipv4(Ipv4Addr::LOCALHOST),
            port: 9,
            tcp: None,
        }
    }

    fn spawn_forward(f: &Arc<Forwarder>) -> tokio::task::JoinHandle<Result<Vec<u8>, ErrorCode>> {
        let (f, to) = (f.clone(), loopback_destination());
        tokio::spawn(async move { f.forward(&to, vec![0; 16]).await })
    }

    /// Lets the spawned FWD run until it waits (the clock is paused: it does not advance
    /// while this task is busy yielding).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_comes_before_the_pool_is_looked_up() {
        let shutdown = CancellationToken::new();
        let (f, metrics) = forwarder(Duration::from_secs(1), &shutdown);
        let fwd = spawn_forward(&f);
        settle().await;
        // Waiting out its delay: no slot yet, so no dial either.
        assert_eq!(metrics.forward_delayed.get(), 1);
        assert_eq!(f.sessions(), 0);
        assert!(!fwd.is_finished());
        // Past the cap the delay is over and the FWD reaches the pool, then the policy on
        // resolved addresses.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(fwd.await.unwrap(), Err(ErrorCode::FwdRefused));
        assert_eq!(f.sessions(), 1);
        assert_eq!(metrics.forward_delayed.get(), 0);
        assert_eq!(metrics.forward_delay_seconds.get_sample_count(), 1);
        assert_eq!(metrics.forward_delays_cut.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_the_delay_short_and_nothing_is_forwarded() {
        let shutdown = CancellationToken::new();
        let (f, metrics) = forwarder(Duration::from_secs(1), &shutdown);
        let fwd = spawn_forward(&f);
        settle().await;
        assert_eq!(metrics.forward_delayed.get(), 1);
        shutdown.cancel();
        // No clock advance needed: the wait ends with the shutdown, not with the delay.
        assert_eq!(fwd.await.unwrap(), Err(ErrorCode::Unreachable));
        assert_eq!(f.sessions(), 0, "the pool was never looked up");
        assert_eq!(metrics.forward_delays_cut.get(), 1);
        assert_eq!(metrics.forward_delayed.get(), 0);
        assert_eq!(metrics.forward_delay_seconds.get_sample_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_mean_forwards_at_once() {
        let shutdown = CancellationToken::new();
        let (f, metrics) = forwarder(Duration::ZERO, &shutdown);
        let fwd = spawn_forward(&f);
        settle().await;
        // Done without the clock moving: no delay was drawn.
        assert!(fwd.is_finished());
        assert_eq!(fwd.await.unwrap(), Err(ErrorCode::FwdRefused));
        assert_eq!(f.sessions(), 1);
        assert_eq!(metrics.forward_delay_seconds.get_sample_count(), 0);
    }

    #[test]
    fn internal_addresses_are_not_global() {
        for a in [
            "127.0.0.1",
            "127.0.0.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            // Private IPv4 behind a translator or tunnel.
            "::10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::192.168.1.1",
            "2002:0a00:0001::1",
            "2002:7f00:0001::1",
            "2002:c0a8:0101::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!is_global(a.parse().unwrap()), "{a}");
        }
        for a in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(is_global(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn dial_failures_map_to_specific_codes() {
        assert_eq!(
            connect_error(&ClientError::Transport(TransportError::IdentityMismatch)),
            ErrorCode::Identity
        );
        assert_eq!(
            connect_error(&ClientError::Transport(TransportError::Timeout)),
            ErrorCode::Unreachable
        );
        assert_eq!(
            connect_error(&ClientError::Transport(TransportError::Resolve)),
            ErrorCode::Unreachable
        );
        assert_eq!(connect_error(&ClientError::Closed), ErrorCode::Unreachable);
    }
}
