//! Relay configuration: `config.toml` in the data directory, `SOTTO_RELAY_*` environment
//! variables and command-line flags, merged in that order of increasing precedence over the
//! documented defaults.
//!
//! Every key is listed in [`KEYS`] with its environment variable; `docs/operator.md` is the
//! reference. Unknown keys and bad values are errors that name the key, so a typo never
//! silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Rate of cover frames sent to each subscribed session, per second (0 = off).
    pub cover_rate: f64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mode: "poisson".into(),
            mean: Duration::from_millis(1000),
            cap: Duration::from_secs(10),
            round: Duration::from_secs(2),
            timestamp_granularity: Duration::from_secs(60),
            cover_rate: 0.0,
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            unsafe_no_fsync: false,
            cache_mib: 64,
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
    /// are refused. Worst case ≈ 11 MiB per session (QUIC windows, answer queue, writes in
    /// flight, subscriptions), so this × 11 MiB bounds session memory.
    pub max_sessions: usize,
    /// Concurrent sessions (handshakes in progress included) from one source; beyond it
    /// connections are refused. Worst case this × 11 MiB for one source.
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
    /// `ERR TIMEOUT`. With `connect_timeout` it must stay under clients' request timeout
    /// (15 s by default).
    #[serde(with = "duration_text")]
    pub answer_timeout: Duration,
    /// Sessions to destinations unused for this long are closed.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
}

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

/// Every configuration key, for environment overrides and documentation. The environment
/// variable is `SOTTO_RELAY_` followed by the key upper-cased with `.` replaced by `_`
/// (e.g. `delivery.mean` → `SOTTO_RELAY_DELIVERY_MEAN`).
pub const KEYS: &[&str] = &[
    "host",
    "listen",
    "listen_tcp",
    "metrics",
    "create_password",
    "queues.message_ttl",
    "queues.quota",
    "queues.idle_expiry",
    "queues.expiry_interval",
    "delivery.mode",
    "delivery.mean",
    "delivery.cap",
    "delivery.round",
    "delivery.timestamp_granularity",
    "delivery.cover_rate",
    "store.max_batch",
    "store.unsafe_no_fsync",
    "store.cache_mib",
    "quic.idle_timeout",
    "quic.keep_alive",
    "quic.pad_to_mtu",
    "quic.initial_mtu",
    "quic.min_mtu",
    "quic.mtu_discovery",
    "limits.max_sessions",
    "limits.max_sessions_per_ip",
    "limits.handshakes_per_ip_per_s",
    "limits.commands_per_session_per_s",
    "limits.new_per_session_per_min",
    "limits.subscriptions_per_session",
    "limits.forwards_per_session_per_s",
    "limits.handshake_timeout",
    "forwarding.mode",
    "forwarding.allowed",
    "forwarding.allow_private",
    "forwarding.max_destinations",
    "forwarding.connect_timeout",
    "forwarding.answer_timeout",
    "forwarding.idle_timeout",
    "log.format",
    "log.sensitive",
    "log.level",
];

/// Environment variable of a dotted key.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Values given on the command line; they override everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--host`.
    pub host: Option<String>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--listen-tcp`.
    pub listen_tcp: Option<String>,
    /// `--metrics`.
    pub metrics: Option<String>,
}

impl Config {
    /// Loads `config.toml` from `dir` (missing file = all defaults), applies environment
    /// variables from `env`, then `overrides`, and validates the result.
    ///
    /// # Errors
    /// One error naming the offending key or file.
    pub fn load(
        dir: &Path,
        env: impl Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.display().to_string(),
                    message: e.message().to_owned() + &span_hint(&text, e.span()),
                })?;
        for key in KEYS {
            if let Some(v) = env(&env_var(key)) {
                set_key(&mut table, key, env_value(&v));
            }
        }
        for (key, v) in [
            ("host", &overrides.host),
            ("listen", &overrides.listen),
            ("listen_tcp", &overrides.listen_tcp),
            ("metrics", &overrides.metrics),
        ] {
            if let Some(v) = v {
                set_key(&mut table, key, toml::Value::String(v.clone()));
            }
        }
        // Through text again, so that errors carry the key's position (`queues.quota`).
        let merged = toml::to_string(&table).unwrap_or_default();
        let config: Config = toml::from_str(&merged).map_err(|e: toml::de::Error| {
            let key = e
                .span()
                .and_then(|sp| key_at(&merged, sp.start))
                .map(|k| format!("`{k}`: "))
                .unwrap_or_default();
            ConfigError::Parse {
                path: format!("{} (with SOTTO_RELAY_* and flags applied)", path.display()),
                message: format!("{key}{}", e.message()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                reason: reason.into(),
            })
        };
        if self.host.parse::<sotto_protocol::address::Host>().is_err() {
            return invalid(
                "host",
                "must be a DNS name, an IPv4 address or a bracketed IPv6 address",
            );
        }
        if self.listen_tcp != "off" && self.listen_tcp.parse::<SocketAddr>().is_err() {
            return invalid(
                "listen_tcp",
                "must be an address such as 0.0.0.0:5443 (TCP), or \"off\"",
            );
        }
        if self.metrics != "off" && self.metrics.parse::<SocketAddr>().is_err() {
            return invalid(
                "metrics",
                "must be an address such as 127.0.0.1:5444, or \"off\"",
            );
        }
        if self.create_password.len() > sotto_protocol::command::MAX_PASSWORD_LEN {
            return invalid("create_password", "must be at most 64 bytes");
        }
        if self.queues.quota == 0 {
            return invalid("queues.quota", "must be at least 1");
        }
        if self.queues.message_ttl.is_zero() {
            return invalid("queues.message_ttl", "must be more than zero");
        }
        if self.queues.idle_expiry.is_zero() {
            return invalid("queues.idle_expiry", "must be more than zero");
        }
        if self.queues.expiry_interval.is_zero() {
            return invalid("queues.expiry_interval", "must be more than zero");
        }
        self.delivery.delay_mode()?;
        if self.delivery.mode == "poisson"
            && (self.delivery.mean.is_zero() || self.delivery.cap < self.delivery.mean)
        {
            return invalid(
                "delivery.cap",
                "mean must be more than zero and cap at least the mean",
            );
        }
        if self.delivery.mode == "rounds" && self.delivery.round.is_zero() {
            return invalid("delivery.round", "must be more than zero");
        }
        if self.delivery.timestamp_granularity.as_secs() == 0 {
            return invalid("delivery.timestamp_granularity", "must be at least 1s");
        }
        if !(self.delivery.cover_rate.is_finite()
            && (0.0..=100.0).contains(&self.delivery.cover_rate))
        {
            return invalid(
                "delivery.cover_rate",
                "must be between 0 and 100 frames per second",
            );
        }
        if !(1..=10_000).contains(&self.store.max_batch) {
            return invalid("store.max_batch", "must be between 1 and 10000");
        }
        if self.quic.min_mtu < 1200 || self.quic.initial_mtu < self.quic.min_mtu {
            return invalid(
                "quic.min_mtu",
                "min_mtu must be at least 1200 and initial_mtu at least min_mtu",
            );
        }
        if self.quic.idle_timeout.is_zero() || self.quic.keep_alive >= self.quic.idle_timeout {
            return invalid(
                "quic.keep_alive",
                "keep_alive must be shorter than idle_timeout",
            );
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_sessions", l.max_sessions),
            ("limits.max_sessions_per_ip", l.max_sessions_per_ip),
            (
                "limits.handshakes_per_ip_per_s",
                l.handshakes_per_ip_per_s as usize,
            ),
            (
                "limits.commands_per_session_per_s",
                l.commands_per_session_per_s as usize,
            ),
            (
                "limits.new_per_session_per_min",
                l.new_per_session_per_min as usize,
            ),
            (
                "limits.subscriptions_per_session",
                l.subscriptions_per_session,
            ),
            (
                "limits.forwards_per_session_per_s",
                l.forwards_per_session_per_s as usize,
            ),
        ] {
            if v == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        let f = &self.forwarding;
        f.parsed_mode()?;
        if !(1..=10_000).contains(&f.max_destinations) {
            return invalid("forwarding.max_destinations", "must be between 1 and 10000");
        }
        for (key, d) in [
            ("forwarding.connect_timeout", f.connect_timeout),
            ("forwarding.answer_timeout", f.answer_timeout),
            ("forwarding.idle_timeout", f.idle_timeout),
        ] {
            if d.is_zero() {
                return invalid(key, "must be more than zero");
            }
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return invalid("log.format", "must be \"human\" or \"json\"");
        }
        Ok(())
    }

    /// The TLS-over-TCP listen address, or `None` when `listen_tcp = "off"`.
    pub fn listen_tcp_addr(&self) -> Option<SocketAddr> {
        self.listen_tcp.parse().ok()
    }

    /// The metrics address, or `None` when `metrics = "off"`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.parse().ok()
    }

    /// A `config.toml` for `init`, with every key at its value and a comment.
    pub fn to_commented_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Sotto relay configuration. Every key is documented in docs/operator.md.\n\
             # Precedence: command-line flags > SOTTO_RELAY_* environment > this file > defaults.\n\
             # This file may hold create_password: keep it private (mode 0600).\n\n{body}"
        )
    }
}

/// The dotted key of the value at byte `pos` of a TOML document written by `toml::to_string`
/// (one `key = value` per line under `[section]` headers).
fn key_at(text: &str, pos: usize) -> Option<String> {
    let before = text.get(..pos)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let section = before
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')));
    let key = line.split_once('=').map(|(k, _)| k.trim().to_owned());
    match (section, key) {
        (Some(s), Some(k)) => Some(format!("{s}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(s), None) => Some(s.to_owned()),
        (None, None) => None,
    }
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => {
            let line = text.get(..s.start).map_or(0, |t| t.lines().count().max(1));
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Interprets an environment value as TOML (numbers, booleans, quoted strings), falling back
/// to a plain string.
fn env_value(v: &str) -> toml::Value {
    format!("v = {v}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_owned()))
}

fn set_key(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_key(t, rest, value);
            }
        }
        None => {
            table.insert(key.to_owned(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)], o: &Overrides) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Config::load(
            dir.path(),
            |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            o,
        )
    }

    #[test]
    fn defaults_round_trip_through_the_generated_file() {
        let c = Config::default();
        c.validate().unwrap();
        let parsed = load(&c.to_commented_toml(), &[], &Overrides::default()).unwrap();
        assert_eq!(parsed, c);
    }

    #[test]
    fn precedence_is_flags_then_env_then_file() {
        let text = "listen = \"127.0.0.1:1000\"\n[queues]\nquota = 5\n";
        let c = load(text, &[], &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 1000);
        assert_eq!(c.queues.quota, 5);
        let env = [
            ("SOTTO_RELAY_LISTEN", "127.0.0.1:2000"),
            ("SOTTO_RELAY_QUEUES_QUOTA", "7"),
        ];
        let c = load(text, &env, &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.queues.quota, 7);
        let o = Overrides {
            listen: Some("127.0.0.1:3000".into()),
            ..Overrides::default()
        };
        assert_eq!(load(text, &env, &o).unwrap().listen.port(), 3000);
        let env = [("SOTTO_RELAY_DELIVERY_MEAN", "250ms")];
        assert_eq!(
            load("", &env, &Overrides::default()).unwrap().delivery.mean,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("[queues]\nquota = \"lots\"\n", &[], &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("quota"), "{e}");
        let e = load("[queues]\nquotta = 5\n", &[], &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("quotta"), "{e}");
        let e = load("[delivery]\nmode = \"fast\"\n", &[], &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("delivery.mode"), "{e}");
        let e = load("listen = \"nowhere\"\n", &[], &Overrides::default()).unwrap_err();
        assert!(
            e.to_string().contains("listen") || e.to_string().contains("socket"),
            "{e}"
        );
        let e = load(
            "[queues]\nmessage_ttl = \"3 fortnights\"\n",
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("message_ttl"), "{e}");
        let e = load(
            "",
            &[("SOTTO_RELAY_QUEUES_QUOTA", "0")],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("queues.quota"), "{e}");
        let e = load("host = \"bad host\"", &[], &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("host"), "{e}");
    }

    #[test]
    fn forwarding_policy_parses_and_errors_name_the_key() {
        let o = Overrides::default();
        let c = load("", &[], &o).unwrap();
        assert_eq!(c.forwarding.parsed_mode().unwrap(), ForwardingMode::Any);
        let a = "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@relay.example.org";
        let text = format!("[forwarding]\nmode = \"listed\"\nallowed = [\"{a}\"]\n");
        let c = load(&text, &[], &o).unwrap();
        assert_eq!(
            c.forwarding.parsed_mode().unwrap(),
            ForwardingMode::Listed(vec![a.parse().unwrap()])
        );
        // A list from the environment, as a TOML array.
        let env_list = format!("[\"{a}\"]");
        let env = [
            ("SOTTO_RELAY_FORWARDING_MODE", "listed"),
            ("SOTTO_RELAY_FORWARDING_ALLOWED", env_list.as_str()),
        ];
        let c = load("", &env, &o).unwrap();
        assert!(matches!(
            c.forwarding.parsed_mode().unwrap(),
            ForwardingMode::Listed(l) if l.len() == 1
        ));
        for (text, key) in [
            ("[forwarding]\nmode = \"some\"\n", "forwarding.mode"),
            ("[forwarding]\nmode = \"listed\"\n", "forwarding.allowed"),
            (
                "[forwarding]\nmode = \"listed\"\nallowed = [\"relay.example.org\"]\n",
                "forwarding.allowed",
            ),
            (
                "[forwarding]\nmax_destinations = 0\n",
                "forwarding.max_destinations",
            ),
            (
                "[forwarding]\nconnect_timeout = \"0s\"\n",
                "forwarding.connect_timeout",
            ),
        ] {
            let e = load(text, &[], &o).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn listen_tcp_is_off_by_default_and_takes_an_address() {
        let c = load("", &[], &Overrides::default()).unwrap();
        assert_eq!((c.listen_tcp.as_str(), c.listen_tcp_addr()), ("off", None));
        let c = load(
            "listen_tcp = \"127.0.0.1:5443\"\n",
            &[],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.listen_tcp_addr(), Some("127.0.0.1:5443".parse().unwrap()));
        let env = [("SOTTO_RELAY_LISTEN_TCP", "0.0.0.0:443")];
        let c = load("", &env, &Overrides::default()).unwrap();
        assert_eq!(c.listen_tcp_addr().map(|a| a.port()), Some(443));
        let o = Overrides {
            listen_tcp: Some("off".into()),
            ..Overrides::default()
        };
        assert_eq!(load("", &env, &o).unwrap().listen_tcp_addr(), None);
        let e = load("listen_tcp = \"5443\"\n", &[], &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("listen_tcp"), "{e}");
    }

    #[test]
    fn every_key_has_an_env_var_that_applies() {
        for key in KEYS {
            assert!(env_var(key).starts_with(ENV_PREFIX));
        }
        let mut t = toml::Table::new();
        set_key(&mut t, "a.b", toml::Value::Integer(1));
        assert_eq!(t["a"]["b"].as_integer(), Some(1));
    }
}
