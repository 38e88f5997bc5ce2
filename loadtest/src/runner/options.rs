//! What a run is asked to do: [`Options`] (the command line's settings, with its defaults
//! and checks), the [`DelayKind`] of the relay, and the settings derived from them — the
//! embedded relay's configuration, the sessions' client options, the drain timeout and the
//! [`RunConfig`] echoed in the report.
//!
//! It does not start or connect anything: the modes in [`super`] do.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use sotto_protocol::{MAX_BODY, RelayAddress};
use sotto_relay::config::Config;
use sotto_transport::{self as transport, QuicOptions};
use sotto_transport::{ClientOptions, TransportChoice};

use crate::report::RunConfig;
use crate::workload::HEADER_LEN;

/// Largest `--window`: bounds the messages in flight (each holds a task and a body).
pub const MAX_WINDOW: usize = 1_000_000;

/// Largest `--connections` per relay (each session has its own UDP socket and tasks).
pub const MAX_CONNECTIONS: u32 = 4096;

/// How the relay delays messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayKind {
    /// Exponential delays with `delay_mean`.
    Poisson,
    /// Timed rounds of `round`.
    Rounds,
    /// No delay.
    Off,
}

impl DelayKind {
    /// The relay's name for the mode.
    pub fn name(self) -> &'static str {
        match self {
            DelayKind::Poisson => "poisson",
            DelayKind::Rounds => "rounds",
            DelayKind::Off => "off",
        }
    }
}

/// Everything a run needs. [`Options::default`] is the command line's defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// Relays to target; empty = start an embedded relay in this process.
    pub relays: Vec<RelayAddress>,
    /// Create password of the targeted relays, if they are private.
    pub create_password: Option<String>,
    /// Number of queues (spread over the relays).
    pub queues: u32,
    /// Sender sessions, and receiver sessions, per relay.
    pub connections: u32,
    /// Number of messages (with `duration`, whichever ends first).
    pub messages: Option<u64>,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    /// Total arrival rate, messages per second (Poisson); 0 = as fast as the window allows.
    pub rate: f64,
    /// Most messages in flight (sent, not yet delivered).
    pub window: usize,
    /// Body size in bytes (at least the 44-byte header, at most `MAX_BODY`).
    pub body_bytes: usize,
    /// Delay mode of the embedded relay (and the model the metrics assume).
    pub delay: DelayKind,
    /// Mean of the exponential delay.
    pub delay_mean: Duration,
    /// Cap of the exponential delay (default: the larger of 10 s and 10 × mean).
    pub delay_cap: Option<Duration>,
    /// Round length for `rounds`.
    pub round: Duration,
    /// Cover frames per second: from each sender session, and from the embedded relay to
    /// each subscribed session.
    pub cover_rate: f64,
    /// Workload seed.
    pub seed: u64,
    /// Fixed QUIC MTU for the tester's connections and the embedded relay (0 = quinn's
    /// defaults with MTU discovery).
    pub mtu: u16,
    /// Transport of the relay sessions: QUIC (the default) or TLS over TCP (the embedded
    /// relay then also listens on TCP). The ceiling forwarder is always QUIC.
    pub transport: TransportChoice,
    /// Embedded relay commits without fsync (benchmarks only).
    pub unsafe_no_fsync: bool,
    /// Data directory of the embedded relay (initialised if empty, kept afterwards);
    /// `None` = a temporary directory.
    pub data_dir: Option<PathBuf>,
    /// How long to wait for outstanding messages after the last SEND (default: the delay
    /// cap or round plus 15 s).
    pub drain_timeout: Option<Duration>,
    /// Baseline path latency to use instead of the measured one.
    pub baseline: Option<Duration>,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            relays: Vec::new(),
            create_password: None,
            queues: 64,
            connections: 2,
            messages: Some(10_000),
            duration: None,
            rate: 0.0,
            window: 256,
            body_bytes: MAX_BODY,
            delay: DelayKind::Poisson,
            delay_mean: Duration::from_millis(100),
            delay_cap: None,
            round: Duration::from_millis(500),
            cover_rate: 0.0,
            seed: 1,
            mtu: 1452,
            transport: TransportChoice::Quic,
            unsafe_no_fsync: false,
            data_dir: None,
            drain_timeout: None,
            baseline: None,
            progress: false,
        }
    }
}

impl Options {
    /// Checks the options.
    ///
    /// # Errors
    /// A message naming the offending flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.queues == 0 || self.connections == 0 {
            bail!("--queues and --connections must be at least 1");
        }
        if self.messages.is_none() && self.duration.is_none() {
            bail!("give --messages or --duration");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!("--rate must be a non-negative number");
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            bail!("--window must be between 1 and {MAX_WINDOW}");
        }
        if self.connections > MAX_CONNECTIONS {
            bail!("--connections must be at most {MAX_CONNECTIONS} (per relay)");
        }
        if !(HEADER_LEN..=MAX_BODY).contains(&self.body_bytes) {
            bail!("--body-bytes must be between {HEADER_LEN} and {MAX_BODY}");
        }
        if self.delay == DelayKind::Poisson && self.delay_mean.is_zero() {
            bail!("--delay-mean must be more than zero (or use --delay-mode off)");
        }
        if self.delay == DelayKind::Rounds && self.round.is_zero() {
            bail!("--round must be more than zero");
        }
        if !(self.cover_rate.is_finite() && (0.0..=100.0).contains(&self.cover_rate)) {
            bail!("--cover-rate must be between 0 and 100 frames per second");
        }
        if self.mtu != 0 && self.mtu < transport::QUIC_MIN_MTU {
            bail!("--mtu must be 0 or at least 1200");
        }
        Ok(())
    }

    /// Cap of the exponential delay (`--delay-cap`, or its default).
    fn cap(&self) -> Duration {
        self.delay_cap
            .unwrap_or_else(|| Duration::from_secs(10).max(self.delay_mean * 10))
    }

    /// Mean delay of the model, in ms (half a round for rounds, 0 for off).
    pub fn model_mean_ms(&self) -> f64 {
        match self.delay {
            DelayKind::Poisson => self.delay_mean.as_secs_f64() * 1000.0,
            DelayKind::Rounds => self.round.as_secs_f64() * 500.0,
            DelayKind::Off => 0.0,
        }
    }

    /// How long to wait for outstanding messages after the last SEND.
    pub(super) fn drain(&self) -> Duration {
        self.drain_timeout.unwrap_or_else(|| {
            Duration::from_secs(15)
                + match self.delay {
                    DelayKind::Poisson => self.cap(),
                    DelayKind::Rounds => self.round,
                    DelayKind::Off => Duration::ZERO,
                }
        })
    }

    /// QUIC settings of the tester's connections (and of the ceiling forwarder).
    pub(super) fn quic(&self) -> QuicOptions {
        if self.mtu == 0 {
            QuicOptions::default()
        } else {
            QuicOptions::uniform_mtu(self.mtu)
        }
    }

    /// Options of every relay session the tester opens.
    pub(super) fn client_options(&self) -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            quic: self.quic(),
            transport: self.transport,
            ..ClientOptions::default()
        }
    }

    /// The configuration of the embedded relay.
    ///
    /// # Errors
    /// If the resulting configuration does not validate.
    pub fn embedded_config(&self) -> anyhow::Result<Config> {
        let mut c = Config {
            host: "127.0.0.1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: "off".into(),
            ..Config::default()
        };
        c.delivery.mode = self.delay.name().into();
        c.delivery.mean = self.delay_mean.max(Duration::from_millis(1));
        c.delivery.cap = self.cap().max(c.delivery.mean);
        c.delivery.round = self.round.max(Duration::from_millis(1));
        c.delivery.cover_rate = self.cover_rate;
        c.store.unsafe_no_fsync = self.unsafe_no_fsync;
        c.queues.quota = c.queues.quota.max(
            u32::try_from(self.window)
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        );
        if self.transport == TransportChoice::Tcp {
            c.listen_tcp = "127.0.0.1:0".into();
        }
        if self.mtu != 0 {
            c.quic.initial_mtu = self.mtu;
            c.quic.min_mtu = self.mtu;
            c.quic.mtu_discovery = false;
        }
        // The load tester is one client opening many sessions as fast as it can: lift the
        // per-client limits that exist to stop abuse.
        let l = &mut c.limits;
        l.max_sessions = l.max_sessions.max(100_000);
        l.max_sessions_per_ip = 100_000;
        l.handshakes_per_ip_per_s = 100_000;
        l.commands_per_session_per_s = 10_000_000;
        l.new_per_session_per_min = 100_000_000;
        l.subscriptions_per_session = l
            .subscriptions_per_session
            .max(usize::try_from(self.queues).unwrap_or(usize::MAX));
        c.validate()?;
        Ok(c)
    }

    /// The settings echoed in the report.
    pub(super) fn run_config(&self) -> RunConfig {
        RunConfig {
            embedded: self.relays.is_empty(),
            relays: self.relays.len().max(1),
            queues: self.queues,
            connections: self.connections,
            messages: self.messages,
            duration_s: self.duration.map(|d| d.as_secs_f64()),
            rate: self.rate,
            window: self.window,
            body_bytes: self.body_bytes,
            seed: self.seed,
            cover_rate: self.cover_rate,
            mtu: self.mtu,
            transport: self.transport.to_string(),
            unsafe_no_fsync: self.unsafe_no_fsync,
        }
    }
}
