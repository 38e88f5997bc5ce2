//! Relay configuration: `config.toml` in the data directory, `SOTTO_RELAY_*` environment
//! variables and command-line flags, merged in that order of increasing precedence over the
//! documented defaults.
//!
//! Every key is listed in [`KEYS`] with its environment variable; `docs/operator.md` is the
//! reference. Unknown keys and bad values are errors that name the key, so a typo never
//! silently falls back to a default.
//!
//! This file holds the configuration's types, sections and defaults; `load.rs` reads them
//! (file, environment, flags) and lists every key ([`KEYS`]).

mod load;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scheduler::DelayMode;

/// Name of the configuration file inside the data directory.
pub const CONFIG_FILE: &str = "config.toml";

/// Environment variable prefix.
pub const ENV_PREFIX: &str = "SOTTO_RELAY_";

/// Default UDP listen address. Port 5443 works without root.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5443";

/// Default metrics address (loopback only).
pub const DEFAULT_METRICS: &str = "127.0.0.1:5444";

/// The whole configuration, as read from `config.toml` with every default filled in.
/// `Debug` shows every setting except `create_password` (a secret: only whether one is set).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Host name or IP that clients use to reach this relay; it goes into the address.
    pub host: String,
    /// UDP address the QUIC listener binds.
    pub listen: SocketAddr,
    /// TCP address the TLS-over-TCP listener binds (for clients behind Tor or on networks
    /// that block UDP), or `"off"` (the default). When on, the relay's address carries the
    /// transport hint `?tcp` (see `docs/protocol.md` § 3).
    pub listen_tcp: String,
    /// HTTP address of the Prometheus endpoint, or `"off"`.
    pub metrics: String,
    /// Password required to create queues (private relay). Empty: anyone may create.
    pub create_password: String,
    /// Queue and message retention.
    pub queues: QueuesConfig,
    /// Delayed delivery.
    pub delivery: DeliveryConfig,
    /// Store tuning.
    pub store: StoreConfig,
    /// QUIC transport.
    pub quic: QuicConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Forwarding (FWD) on behalf of clients.
    pub forwarding: ForwardingConfig,
    /// Logging.
    pub log: LogConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be added without deciding how it prints.
        let Config {
            host,
            listen,
            listen_tcp,
            metrics,
            create_password,
            queues,
            delivery,
            store,
            quic,
            limits,
            forwarding,
            log,
        } = self;
        let password = if create_password.is_empty() {
            "<none>"
        } else {
            "<redacted>"
        };
        f.debug_struct("Config")
            .field("host", host)
            .field("listen", listen)
            .field("listen_tcp", listen_tcp)
            .field("metrics", metrics)
            .field("create_password", &format_args!("{password}"))
            .field("queues", queues)
            .field("delivery", delivery)
            .field("store", store)
            .field("quic", quic)
            .field("limits", limits)
            .field("forwarding", forwarding)
            .field("log", log)
            .finish()
    }
}

impl Config {
    /// Whether `given` opens NEW on this relay: always when no `create_password` is set,
    /// otherwise when it is the password. Compared as BLAKE3 hashes in constant time
    /// (`blake3::Hash` equality), so that neither the password's bytes nor its length show
    /// in how long a refusal takes.
    pub fn create_password_matches(&self, given: &[u8]) -> bool {
        self.create_password.is_empty()
            || blake3::hash(self.create_password.as_bytes()) == blake3::hash(given)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| unreachable_addr()),
            listen_tcp: "off".into(),
            metrics: DEFAULT_METRICS.into(),
            create_password: String::new(),
            queues: QueuesConfig::default(),
            delivery: DeliveryConfig::default(),
            store: StoreConfig::default(),
            quic: QuicConfig::default(),
            limits: LimitsConfig::default(),
            forwarding: ForwardingConfig::default(),
            log: LogConfig::default(),
        }
    }
}

fn unreachable_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], sotto_protocol::DEFAULT_PORT))
}

/// Queue and message retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuesConfig {
    /// Messages older than this are deleted, delivered or not.
    #[serde(with = "duration_text")]
    pub message_ttl: Duration,
    /// Most messages a queue holds; SEND beyond it answers QUOTA.
    pub quota: u32,
    /// Queues with no activity for this long are removed with their messages.
    #[serde(with = "duration_text")]
    pub idle_expiry: Duration,
    /// How often the expiry task runs.
    #[serde(with = "duration_text")]
    pub expiry_interval: Duration,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        Self {
            message_ttl: Duration::from_secs(21 * 24 * 3600),
            quota: 128,
            idle_expiry: Duration::from_secs(90 * 24 * 3600),
            expiry_interval: Duration::from_secs(3600),
        }
    }
}

/// Delayed delivery (see `docs/threat-model.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// `poisson`, `rounds` or `off`.
    pub mode: String,
    /// Mean of the exponential delay (`poisson`).
    #[serde(with = "duration_text")]
    pub mean: Duration,
    /// Largest delay (`poisson`).
    #[serde(with = "duration_text")]
    pub cap: Duration,
    /// Round length (`rounds`).
    #[serde(with = "duration_text")]
    pub round: Duration,
    /// MSG timestamps are rounded down to a multiple of this.
    #[serde(with = "duration_text")]
    pub timestamp_granularity: Duration,
    /// Rate of cover frames sent to each subscribed session, per second (0 = off). Does not
    /// apply to paced sessions (PACE): their ticks are their cover.
    pub cover_rate: f64,
    /// Whether sessions may ask to be paced (PACE, `docs/protocol.md` § 9.2). Off: PACE is
    /// answered `ERR PROHIBITED` and the session stays unpaced.
    pub pacing: bool,
    /// Shortest mean gap a session may ask for with PACE; a shorter non-zero gap is answered
    /// `ERR LIMITED` (the session stays unpaced). Bounds the frames one paced session costs:
    /// at most `1 / min_pace_gap` records of 16 KiB per second on average. At least
    /// [`MIN_PACE_GAP_FLOOR`].
    #[serde(with = "duration_text")]
    pub min_pace_gap: Duration,
}

/// Smallest `delivery.min_pace_gap` accepted: 10 ms, the fastest rate a pacer allows
/// (`sotto_timing::pacing::MAX_RATE`, 100 frames per second).
pub const MIN_PACE_GAP_FLOOR: Duration = Duration::from_millis(10);

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mode: "poisson".into(),
            mean: Duration::from_millis(1000),
            cap: Duration::from_secs(10),
            round: Duration::from_secs(2),
            timestamp_granularity: Duration::from_secs(60),
            cover_rate: 0.0,
            pacing: true,
            min_pace_gap: Duration::from_secs(1),
        }
    }
}

impl DeliveryConfig {
    /// The scheduler mode this section describes.
    ///
    /// # Errors
    /// A message naming `delivery.mode` for an unknown mode.
    pub fn delay_mode(&self) -> Result<DelayMode, ConfigError> {
        match self.mode.as_str() {
            "poisson" => Ok(DelayMode::Poisson {
                mean: self.mean,
                cap: self.cap,
            }),
            "rounds" => Ok(DelayMode::Rounds { period: self.round }),
            "off" => Ok(DelayMode::Off),
            other => Err(ConfigError::Invalid {
                key: "delivery.mode".into(),
                reason: format!("`{other}` is not one of poisson, rounds, off"),
            }),
        }
    }
}

/// Store tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Most writes grouped into one durable commit.
    pub max_batch: usize,
    /// Benchmark-only: commit without fsync. Acknowledged messages can be lost on a crash.
    /// Never enable on a production relay.
    pub unsafe_no_fsync: bool,
    /// redb page cache size in MiB.
    pub cache_mib: usize,
    /// Global storage budget in MiB, estimated from what the store holds (one message
    /// ≈ 16 KiB, one queue ≈ 0.5 KiB): at it, NEW and SEND answer STORE until deliveries
    /// free room. 0: no budget (the disk reserve still applies).
    pub max_mib: u64,
    /// Free disk space in MiB that the store's file system keeps: below it, NEW and SEND
    /// answer STORE. The store also keeps a reserve file of this size beside the database,
    /// given up when the disk fills anyway, so that deliveries and deletions go on. 0: no
    /// reserve.
    pub reserve_mib: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            unsafe_no_fsync: false,
            cache_mib: 64,
            max_mib: 0,
            reserve_mib: 64,
        }
    }
}

/// QUIC transport settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Connections silent for this long are closed.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    /// Keep-alive interval sent by the relay.
    #[serde(with = "duration_text")]
    pub keep_alive: Duration,
    /// Pad every datagram to the MTU (hides record boundaries).
    pub pad_to_mtu: bool,
    /// Initial MTU.
    pub initial_mtu: u16,
    /// Smallest MTU assumed.
    pub min_mtu: u16,
    /// Probe for a larger MTU.
    pub mtu_discovery: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        let d = sotto_transport::QuicOptions::default();
        Self {
            idle_timeout: d.idle_timeout,
            keep_alive: d.keep_alive,
            pad_to_mtu: d.pad_to_mtu,
            initial_mtu: d.initial_mtu,
            min_mtu: d.min_mtu,
            mtu_discovery: d.mtu_discovery,
        }
    }
}

impl QuicConfig {
    /// The transport options these settings describe.
    pub fn options(&self) -> sotto_transport::QuicOptions {
        sotto_transport::QuicOptions {
            idle_timeout: self.idle_timeout,
            keep_alive: self.keep_alive,
            pad_to_mtu: self.pad_to_mtu,
            initial_mtu: self.initial_mtu,
            min_mtu: self.min_mtu,
            mtu_discovery: self.mtu_discovery,
            ..sotto_transport::QuicOptions::default()
        }
    }
}

/// Resource limits. Each bounds memory or work; the worst cases are added up in
/// `docs/operator.md` ("Limits"). A *source* is an IPv4 address or an IPv6 /64. Every
/// refusal is counted in `sotto_rate_limited_total{limit=…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent sessions in total, handshakes in progress included; beyond it connections
    /// are refused. Worst case ≈ 15 MiB per session (QUIC windows, answer queue, answers held
    /// for a paced session's ticks, writes in flight, subscriptions), so this × 15 MiB bounds
    /// session memory.
    pub max_sessions: usize,
    /// Concurrent sessions (handshakes in progress included) from one source; beyond it
    /// connections are refused. Worst case this × 15 MiB for one source.
    pub max_sessions_per_ip: usize,
    /// Handshakes per second from one source (burst = 2×), checked before any cryptography;
    /// beyond it connections are refused. The limiter tracks at most 65 536 sources
    /// (≈ 5 MiB), held only in memory.
    pub handshakes_per_ip_per_s: u32,
    /// Commands per second per session (burst = 2×; DROP exempt); beyond it `ERR LIMITED`.
    pub commands_per_session_per_s: u32,
    /// NEW commands per session per minute (burst = this); beyond it `ERR LIMITED`.
    pub new_per_session_per_min: u32,
    /// Queues one session may subscribe to; beyond it SUB answers `ERR LIMITED`. Worst case
    /// ≈ 300 bytes per subscription.
    pub subscriptions_per_session: usize,
    /// FWD commands per session per second (burst = 2×); beyond it `ERR LIMITED`.
    pub forwards_per_session_per_s: u32,
    /// Time a client has to finish the QUIC and Noise handshakes; bounds how long a
    /// half-open connection holds its place under `max_sessions`.
    #[serde(with = "duration_text")]
    pub handshake_timeout: Duration,
    /// A session that holds no subscription and has sent no frame for this long is closed
    /// (QUIC keep-alives do not count: a client that only keeps its connection alive does
    /// not keep its place under `max_sessions`). Subscribed sessions may stay quiet.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    /// Once a record's first bytes arrived, the rest must arrive within this; otherwise the
    /// session is closed (code 1), so that half a record cannot hold a session open.
    #[serde(with = "duration_text")]
    pub record_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_sessions: 20_000,
            max_sessions_per_ip: 256,
            handshakes_per_ip_per_s: 20,
            commands_per_session_per_s: 2000,
            new_per_session_per_min: 120,
            subscriptions_per_session: 4096,
            forwards_per_session_per_s: 100,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            record_timeout: Duration::from_secs(30),
        }
    }
}

/// Forwarding of sealed SEND/SKEY to other relays on behalf of clients (FWD, see
/// `docs/protocol.md` § 10a and `docs/operator.md`). Being a *destination* (answering RFWD)
/// needs no configuration: it is a SEND that arrives through another relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// `off` (FWD answered `FWD_REFUSED`), `listed` (only to `allowed`) or `any` (default: a
    /// public relay forwards, so that its users can hide their address from recipients'
    /// relays).
    pub mode: String,
    /// Relay addresses forwarded to in `listed` mode (key, host and port must all match).
    pub allowed: Vec<String>,
    /// In `any` mode, also forward to hosts that resolve to loopback, private, link-local
    /// or other non-global addresses. Off by default, so clients cannot use the relay to
    /// reach its own network.
    pub allow_private: bool,
    /// Most destinations with an open session at once; the least recently used is closed
    /// to make room. Worst case ≈ 7 MiB per session (the client's queues and QUIC windows),
    /// so this × 7 MiB bounds the pool's memory.
    pub max_destinations: usize,
    /// Bound on resolving, connecting to and handshaking with a destination; beyond it the
    /// client gets `ERR TIMEOUT`.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Bound on waiting for a destination's answer; beyond it the client gets
    /// `ERR TIMEOUT`. With `connect_timeout` and `delay_cap` (the forwarding delay is not
    /// part of it) it should stay under what clients wait for a FWD's answer.
    #[serde(with = "duration_text")]
    pub answer_timeout: Duration,
    /// Sessions to destinations unused for this long are closed.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    /// Mean of the random delay each FWD is held for before it is forwarded
    /// (`docs/protocol.md` § 10a.3 step 3): `min(Exp(delay_mean), delay_cap)`, drawn
    /// independently for each FWD. Zero forwards at once (no timing defence on this hop).
    #[serde(with = "duration_text")]
    pub delay_mean: Duration,
    /// Longest forwarding delay; draws above it are clamped to it. At least `delay_mean`
    /// and at most [`MAX_FORWARD_DELAY_CAP`], so that a delayed request stays far from the
    /// expiry clients seal into it (300 s). Shutdown cuts a delay short, so the cap never
    /// holds a shutdown up.
    #[serde(with = "duration_text")]
    pub delay_cap: Duration,
}

/// Largest `forwarding.delay_cap` accepted: 60 s. The delay adds to what a client waits for
/// a FWD's answer, and a sealed request expires 300 s after the client sealed it
/// (`docs/protocol.md` § 10a.1): a cap well under that leaves room for the client's own
/// pacing, the dial and the answer.
pub const MAX_FORWARD_DELAY_CAP: Duration = Duration::from_secs(60);

impl Default for ForwardingConfig {
    fn default() -> Self {
        Self {
            mode: "any".into(),
            allowed: Vec::new(),
            allow_private: false,
            max_destinations: 32,
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            delay_mean: Duration::from_secs(1),
            delay_cap: Duration::from_secs(10),
        }
    }
}

/// Which destinations a relay forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardingMode {
    /// Never.
    Off,
    /// Only to these relays.
    Listed(Vec<sotto_protocol::RelayAddress>),
    /// To any relay (on a global address unless `allow_private`).
    Any,
}

impl ForwardingConfig {
    /// How forwarding delays are drawn: Poisson with `delay_mean` and `delay_cap`, or no
    /// delay when the mean is zero.
    pub fn delay_mode(&self) -> DelayMode {
        if self.delay_mean.is_zero() {
            DelayMode::Off
        } else {
            DelayMode::Poisson {
                mean: self.delay_mean,
                cap: self.delay_cap,
            }
        }
    }

    /// The mode this section describes, with the allowed addresses parsed.
    ///
    /// # Errors
    /// A message naming `forwarding.mode` or `forwarding.allowed`.
    pub fn parsed_mode(&self) -> Result<ForwardingMode, ConfigError> {
        match self.mode.as_str() {
            "off" => Ok(ForwardingMode::Off),
            "any" => Ok(ForwardingMode::Any),
            "listed" => {
                let mut list = Vec::with_capacity(self.allowed.len());
                for a in &self.allowed {
                    list.push(a.parse().map_err(|e| ConfigError::Invalid {
                        key: "forwarding.allowed".into(),
                        reason: format!("`{a}` is not a relay address: {e}"),
                    })?);
                }
                if list.is_empty() {
                    return Err(ConfigError::Invalid {
                        key: "forwarding.allowed".into(),
                        reason: "mode \"listed\" needs at least one relay address".into(),
                    });
                }
                Ok(ForwardingMode::Listed(list))
            }
            other => Err(ConfigError::Invalid {
                key: "forwarding.mode".into(),
                reason: format!("`{other}` is not one of off, listed, any"),
            }),
        }
    }
}

/// Logging policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: String,
    /// Log addresses, ids and other identifying detail. For debugging only; announced
    /// loudly at start.
    pub sensitive: bool,
    /// Default filter when `RUST_LOG` is unset.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "human".into(),
            sensitive: false,
            level: "info".into(),
        }
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax or type error.
    #[error("{path}: {message}")]
    Parse {
        /// File (or environment variable).
        path: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value is syntactically fine but not allowed.
    #[error("invalid `{key}`: {reason}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Durations in `config.toml`: parsed as humantime (`"90days"`, `"1h 30m"`, `"250ms"`),
/// written in the largest whole unit (`"90days"`, not `"2months 29days 2h 52m 48s"`).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Formats `d` in its largest whole unit.
    pub fn format(d: Duration) -> String {
        let ms = d.as_millis();
        for (unit, name) in [
            (86_400_000u128, "days"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ] {
            if ms != 0 && ms.is_multiple_of(unit) {
                return format!("{}{name}", ms / unit);
            }
        }
        format!("{ms}ms")
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. \"90days\", \"1h\", \"250ms\""
            ))
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn largest_whole_unit() {
            assert_eq!(format(Duration::from_secs(90 * 86_400)), "90days");
            assert_eq!(format(Duration::from_secs(3600)), "1h");
            assert_eq!(format(Duration::from_millis(1500)), "1500ms");
            assert_eq!(format(Duration::ZERO), "0ms");
            for t in ["90days", "1h", "1500ms", "0ms", "10s", "2m"] {
                assert_eq!(format(humantime::parse_duration(t).unwrap()), t);
            }
        }
    }
}

pub use load::{KEYS, Overrides, env_var};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_password_opens_new_only_when_it_is_the_same_bytes() {
        let mut c = Config::default();
        assert!(c.create_password_matches(b""), "no password: open relay");
        assert!(c.create_password_matches(b"anything"));
        c.create_password = "s3cret".into();
        assert!(c.create_password_matches(b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret ", b"S3cret", b"s3cret\0"] {
            assert!(!c.create_password_matches(wrong), "{wrong:?}");
        }
    }
}
