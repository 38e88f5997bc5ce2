//! Reading the configuration: `config.toml`, then `SOTTO_RELAY_*` variables, then flags, with
//! errors that name the key; and [`KEYS`], every key with its environment variable.
//!
//! The types, sections and defaults are in the parent module; this file does not define what
//! a setting means, only where its value comes from.

use std::path::Path;

use super::*;

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
    "delivery.pacing",
    "delivery.min_pace_gap",
    "store.max_batch",
    "store.unsafe_no_fsync",
    "store.cache_mib",
    "store.max_mib",
    "store.reserve_mib",
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
    "limits.idle_timeout",
    "limits.record_timeout",
    "forwarding.mode",
    "forwarding.allowed",
    "forwarding.allow_private",
    "forwarding.max_destinations",
    "forwarding.connect_timeout",
    "forwarding.answer_timeout",
    "forwarding.idle_timeout",
    "forwarding.delay_mean",
    "forwarding.delay_cap",
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
    /// `--delivery-mode` (`delivery.mode`).
    pub delivery_mode: Option<String>,
    /// `--delivery-mean` (`delivery.mean`, a duration such as `"30s"`).
    pub delivery_mean: Option<String>,
    /// `--delivery-cap` (`delivery.cap`, a duration).
    pub delivery_cap: Option<String>,
    /// `--cover-rate` (`delivery.cover_rate`, frames per second, parsed as a number).
    pub cover_rate: Option<String>,
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
        for (key, v) in [
            ("delivery.mode", &overrides.delivery_mode),
            ("delivery.mean", &overrides.delivery_mean),
            ("delivery.cap", &overrides.delivery_cap),
            ("delivery.cover_rate", &overrides.cover_rate),
        ] {
            if let Some(v) = v {
                // As from the environment: a number stays a number.
                set_key(&mut table, key, env_value(v));
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
        if self.delivery.min_pace_gap < MIN_PACE_GAP_FLOOR {
            return invalid(
                "delivery.min_pace_gap",
                "must be at least 10ms (100 frames per second per session)",
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
        for (key, d) in [
            ("limits.idle_timeout", l.idle_timeout),
            ("limits.record_timeout", l.record_timeout),
        ] {
            if d.is_zero() {
                return invalid(key, "must be more than zero");
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
        if f.delay_cap < f.delay_mean || f.delay_cap > MAX_FORWARD_DELAY_CAP {
            return invalid(
                "forwarding.delay_cap",
                "must be at least forwarding.delay_mean and at most 60s (a FWD's delay must stay well under the 300 s its sealed request lives)",
            );
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
    fn a_min_pace_gap_below_the_pacers_floor_is_refused() {
        let o = Overrides::default();
        let c = load("", &[], &o).unwrap();
        assert!(c.delivery.pacing);
        assert_eq!(c.delivery.min_pace_gap, Duration::from_secs(1));
        let env = [
            ("SOTTO_RELAY_DELIVERY_PACING", "false"),
            ("SOTTO_RELAY_DELIVERY_MIN_PACE_GAP", "10ms"),
        ];
        let c = load("", &env, &o).unwrap();
        assert!(!c.delivery.pacing);
        assert_eq!(c.delivery.min_pace_gap, MIN_PACE_GAP_FLOOR);
        let e = load("[delivery]\nmin_pace_gap = \"9ms\"\n", &[], &o).unwrap_err();
        assert!(e.to_string().contains("delivery.min_pace_gap"), "{e}");
    }

    #[test]
    fn the_forwarding_delay_cap_is_checked() {
        let o = Overrides::default();
        let c = load("", &[], &o).unwrap();
        assert_eq!(
            c.forwarding.delay_mode(),
            DelayMode::Poisson {
                mean: Duration::from_secs(1),
                cap: Duration::from_secs(10)
            }
        );
        let env = [("SOTTO_RELAY_FORWARDING_DELAY_MEAN", "0s")];
        assert_eq!(
            load("", &env, &o).unwrap().forwarding.delay_mode(),
            DelayMode::Off
        );
        for text in [
            "[forwarding]\ndelay_mean = \"5s\"\ndelay_cap = \"4s\"\n",
            "[forwarding]\ndelay_cap = \"61s\"\n",
        ] {
            let e = load(text, &[], &o).unwrap_err();
            assert!(
                e.to_string().contains("forwarding.delay_cap"),
                "{text}: {e}"
            );
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
    fn delivery_flags_beat_env_and_file() {
        let text = "[delivery]\nmode = \"rounds\"\nmean = \"1h\"\ncap = \"2h\"\n";
        let env = [
            ("SOTTO_RELAY_DELIVERY_MODE", "poisson"),
            ("SOTTO_RELAY_DELIVERY_COVER_RATE", "1"),
        ];
        let o = Overrides {
            delivery_mode: Some("poisson".into()),
            delivery_mean: Some("100ms".into()),
            delivery_cap: Some("1s".into()),
            cover_rate: Some("2.5".into()),
            ..Overrides::default()
        };
        let c = load(text, &env, &o).unwrap();
        assert_eq!(c.delivery.mode, "poisson");
        assert_eq!(c.delivery.mean, std::time::Duration::from_millis(100));
        assert_eq!(c.delivery.cap, std::time::Duration::from_secs(1));
        assert!((c.delivery.cover_rate - 2.5).abs() < f64::EPSILON);
        // A bad flag value is named by its key, like a bad file or env value.
        let o = Overrides {
            cover_rate: Some("fast".into()),
            ..Overrides::default()
        };
        let e = load("", &[], &o).unwrap_err();
        assert!(e.to_string().contains("cover_rate"), "{e}");
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
