//! Runs a workload against relays (embedded or remote) or the ceiling forwarder, records
//! every message's timestamps, and turns them into a [`Report`].
//!
//! # Shape
//!
//! - **Setup.** Per relay, `connections` receiver sessions create the queues (queue `q`
//!   lives on relay `q mod R` and is served by receiver session `(q div R) mod N` of that
//!   relay), secure each with a fresh sender key and subscribe; then `connections` sender
//!   sessions connect. Every session has its own UDP endpoint.
//! - **Dispatch.** One task walks the [`Workload`]: it waits for the planned time (with a
//!   rate) and for a slot in the in-flight window, records the message, and spawns its
//!   SEND. The window (`--window`) bounds messages sent and not yet delivered (or failed),
//!   so memory and the relay's per-queue quota stay bounded whatever the rate.
//! - **Receive.** One task per receiver session takes pushed MSGs, verifies each body,
//!   records the arrival and spawns its ACK (at most one per queue is outstanding, since the
//!   relay delivers one unacknowledged message per queue at a time).
//! - **Collector.** The one piece of shared state: the per-message records, behind a mutex
//!   held only to update a record. Memory: about 80 bytes per message sent.
//!
//! Times are microseconds on a monotonic clock from the start of dispatch.
//!
//! This crate is an application whose library target exists for its tests; errors are
//! `anyhow` with context, as in a binary.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use rand::{Rng as _, SeedableRng as _};
use sotto_protocol::{AuthSecretKey, MAX_BODY, RecipientId, RelayAddress};
use sotto_relay::config::Config;
use sotto_relay::{RunningRelay, datadir};
use sotto_transport::{self as transport, QuicOptions};
use sotto_transport::{
    ClientOptions, Link, Pushed, QueueCredentials, RelayClient, TransportChoice,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ceiling::{self, CeilingSender, Forwarder};
use crate::cpu;
use crate::metrics::{self, AdversaryParams, MessageRecord, Observation};
use crate::report::{
    AdversarySummary, CreateQueuesReport, DelayModel, Report, RunConfig, WireSummary,
};
use crate::workload::{HEADER_LEN, Planned, Workload, WorkloadSpec, make_body, verify_body};

/// Distinct error messages kept for the report.
const MAX_ERRORS: usize = 8;

/// Largest `--window`: bounds the messages in flight (each holds a task and a body).
pub const MAX_WINDOW: usize = 1_000_000;

/// Largest `--connections` per relay (each session has its own UDP socket and tasks).
pub const MAX_CONNECTIONS: u32 = 4096;

/// Deliveries over which the posterior entropy is averaged (evenly spaced).
const ENTROPY_SAMPLE: usize = 2000;

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

    fn drain(&self) -> Duration {
        self.drain_timeout.unwrap_or_else(|| {
            Duration::from_secs(15)
                + match self.delay {
                    DelayKind::Poisson => self.cap(),
                    DelayKind::Rounds => self.round,
                    DelayKind::Off => Duration::ZERO,
                }
        })
    }

    fn quic(&self) -> QuicOptions {
        if self.mtu == 0 {
            QuicOptions::default()
        } else {
            QuicOptions::uniform_mtu(self.mtu)
        }
    }

    fn client_options(&self) -> ClientOptions {
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

    fn run_config(&self) -> RunConfig {
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

/// The result of a run: the report and the raw material of the CSV and the plot.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The metrics.
    pub report: Report,
    /// One record per message, indexed by sequence number.
    pub records: Vec<MessageRecord>,
    /// Added delay of each delivered message (ms).
    pub added_delay_ms: Vec<f64>,
}

/// An embedded relay on its own runtime (its threads are named `sotto-relay*`, which is how
/// its CPU time is told apart from the tester's).
struct Embedded {
    relay: Option<RunningRelay>,
    runtime: Option<tokio::runtime::Runtime>,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Embedded {
    async fn start(opts: &Options) -> anyhow::Result<Self> {
        let config = opts.embedded_config()?;
        let (dir, temp) = match &opts.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().context("cannot create a temporary directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        if !datadir::has_identity(&dir) {
            datadir::init(&dir, &datadir::InitOptions::default())?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sotto-relay")
            .enable_all()
            .build()
            .context("cannot start the embedded relay's runtime")?;
        let d = dir.clone();
        let relay = runtime
            .spawn(async move { sotto_relay::start(&d, config).await })
            .await
            .context("the embedded relay's start task failed")??;
        Ok(Self {
            relay: Some(relay),
            runtime: Some(runtime),
            dir,
            _temp: temp,
        })
    }

    fn address(&self) -> Option<RelayAddress> {
        self.relay.as_ref().map(|r| r.address.clone())
    }

    async fn stop(mut self) {
        if let (Some(relay), Some(rt)) = (self.relay.take(), self.runtime.as_ref()) {
            let _ = rt.spawn(relay.shutdown()).await;
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One record and whether it has been resolved (delivered, or its SEND failed).
#[derive(Debug, Default)]
struct Slot {
    rec: MessageRecord,
    resolved: bool,
}

/// Shared by the dispatcher, the SEND tasks and the receive loops.
#[derive(Debug)]
struct Collector {
    start: OnceLock<Instant>,
    slots: Mutex<Vec<Slot>>,
    corrupted: AtomicU64,
    ack_failed: AtomicU64,
    resolved: watch::Sender<u64>,
    /// Free slots of the in-flight window.
    window: Semaphore,
    cover: Mutex<Vec<u64>>,
    errors: Mutex<BTreeSet<String>>,
    /// ACKs in flight (at most one per queue), waited for before the sessions close.
    acks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single field update: a poisoned lock holds usable data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Collector {
    fn new(window: usize) -> Self {
        Self {
            start: OnceLock::new(),
            slots: Mutex::new(Vec::new()),
            corrupted: AtomicU64::new(0),
            ack_failed: AtomicU64::new(0),
            resolved: watch::channel(0).0,
            window: Semaphore::new(window.min(Semaphore::MAX_PERMITS)),
            cover: Mutex::new(Vec::new()),
            errors: Mutex::new(BTreeSet::new()),
            acks: TaskTracker::new(),
        }
    }

    fn now_us(&self) -> u64 {
        let start = self.start.get_or_init(Instant::now);
        u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn error(&self, e: impl std::fmt::Display) {
        let mut errors = lock(&self.errors);
        if errors.len() < MAX_ERRORS {
            errors.insert(e.to_string());
        }
    }

    fn plan(&self, p: &Planned, sender: u32, recipient: u32) {
        let mut slots = lock(&self.slots);
        debug_assert_eq!(slots.len() as u64, p.seq);
        slots.push(Slot {
            rec: MessageRecord {
                seq: p.seq,
                queue: p.queue,
                sender,
                recipient,
                ..MessageRecord::default()
            },
            resolved: false,
        });
    }

    fn with_slot(&self, seq: u64, f: impl FnOnce(&mut Slot) -> bool) {
        let newly_resolved = {
            let mut slots = lock(&self.slots);
            let Some(slot) = usize::try_from(seq).ok().and_then(|i| slots.get_mut(i)) else {
                return;
            };
            let was = slot.resolved;
            f(slot);
            !was && slot.resolved
        };
        if newly_resolved {
            self.window.add_permits(1);
            self.resolved.send_modify(|n| *n += 1);
        }
    }

    fn sent(&self, seq: u64, at: u64) {
        self.with_slot(seq, |s| {
            s.rec.sent_at_us = Some(at);
            false
        });
    }

    fn ok(&self, seq: u64) {
        let now = self.now_us();
        self.with_slot(seq, |s| {
            s.rec.ok_at_us = Some(now);
            false
        });
    }

    fn failed(&self, seq: u64, e: impl std::fmt::Display) {
        self.error(format!("SEND failed: {e}"));
        self.with_slot(seq, |s| {
            s.rec.send_failed = true;
            s.resolved = true;
            true
        });
    }

    /// A body arrived on `queue` at `at`; verifies and records it.
    fn received(&self, queue: u32, body: &[u8], at: u64) {
        let seq = match verify_body(body, queue) {
            Ok(seq) => seq,
            Err(e) => {
                self.corrupted.fetch_add(1, Ordering::Relaxed);
                self.error(format!("corrupted message: {e}"));
                return;
            }
        };
        let mut known = false;
        self.with_slot(seq, |s| {
            known = true;
            s.rec.deliveries += 1;
            if s.rec.received_at_us.is_none() {
                s.rec.received_at_us = Some(at);
            }
            s.resolved = true;
            true
        });
        if !known {
            // An intact body with a sequence number this run never planned.
            self.corrupted.fetch_add(1, Ordering::Relaxed);
            self.error("message with an unknown sequence number");
        }
    }

    fn records(&self) -> Vec<MessageRecord> {
        lock(&self.slots).iter().map(|s| s.rec.clone()).collect()
    }
}

/// A queue as the SEND side uses it.
#[derive(Debug, Clone)]
struct RelayQueue {
    relay: usize,
    recipient: u32,
    sender_key: Arc<AuthSecretKey>,
    creds: Arc<QueueCredentials>,
}

/// Where SENDs go.
#[derive(Debug)]
enum Backend {
    Relay {
        /// `senders[relay][i]`.
        senders: Vec<Vec<RelayClient>>,
        queues: Vec<RelayQueue>,
    },
    Ceiling {
        senders: Vec<CeilingSender>,
        receivers: u32,
    },
}

impl Backend {
    /// Global (sender session, recipient session) of a planned message.
    fn sessions(&self, p: &Planned, n: u32) -> (u32, u32) {
        match self {
            Backend::Relay { queues, .. } => {
                let q = queues.get(p.queue as usize);
                let relay = q.map_or(0, |q| q.relay) as u32;
                (relay * n + p.sender, q.map_or(0, |q| q.recipient))
            }
            Backend::Ceiling { receivers, .. } => (p.sender, p.queue % (*receivers).max(1)),
        }
    }

    async fn send(&self, p: &Planned, body: Vec<u8>) -> Result<(), String> {
        match self {
            Backend::Relay { senders, queues } => {
                let q = queues.get(p.queue as usize).ok_or("no such queue")?;
                let client = senders
                    .get(q.relay)
                    .and_then(|s| s.get(p.sender as usize))
                    .ok_or("no such sender session")?;
                client
                    .send(q.creds.sender_id, Some(&q.sender_key), 0, body)
                    .await
                    .map_err(|e| e.to_string())
            }
            Backend::Ceiling { senders, .. } => {
                let s = senders
                    .get(p.sender as usize)
                    .ok_or("no such sender session")?;
                s.send(p.queue, p.seq, &body)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Sessions of a run, kept to read their counters and close them.
#[derive(Debug, Default)]
struct Sessions {
    connections: Vec<quinn::Connection>,
    /// TLS-over-TCP sessions (`--transport tcp`): bytes only, no datagrams.
    tcp_links: Vec<Link>,
    endpoints: Vec<quinn::Endpoint>,
    relay_clients: Vec<RelayClient>,
}

impl Sessions {
    /// The sessions' counters now: QUIC `[tx datagrams, tx bytes, rx datagrams, rx bytes,
    /// lost packets]` per connection, TCP `[bytes sent, bytes received]` per link.
    fn mark(&self) -> WireMark {
        WireMark {
            quic: self
                .connections
                .iter()
                .map(|c| {
                    let s = c.stats();
                    [
                        s.udp_tx.datagrams,
                        s.udp_tx.bytes,
                        s.udp_rx.datagrams,
                        s.udp_rx.bytes,
                        s.path.lost_packets,
                    ]
                })
                .collect(),
            tcp: self
                .tcp_links
                .iter()
                .map(|l| {
                    let s = l.stats();
                    [s.bytes_sent, s.bytes_received]
                })
                .collect(),
        }
    }

    /// What crossed the wire since `since` (taken when dispatch began, so the handshakes'
    /// datagrams — which QUIC does not pad to the MTU — are not counted), and the number of
    /// distinct datagram sizes that is consistent with it.
    fn wire(&self, since: &WireMark) -> (u64, WireSummary) {
        let now = self.mark();
        let mut counters = Vec::new();
        let mut w = WireSummary {
            connections: (now.quic.len() + now.tcp.len()) as u64,
            ..WireSummary::default()
        };
        for (i, c) in now.quic.iter().enumerate() {
            let before = since.quic.get(i).copied().unwrap_or_default();
            let [tx_d, tx_b, rx_d, rx_b, lost]: [u64; 5] =
                std::array::from_fn(|k| c[k].saturating_sub(before[k]));
            w.datagrams_tx += tx_d;
            w.bytes_tx += tx_b;
            w.datagrams_rx += rx_d;
            w.bytes_rx += rx_b;
            w.lost_packets += lost;
            counters.push((tx_d, tx_b));
            counters.push((rx_d, rx_b));
        }
        for (i, l) in now.tcp.iter().enumerate() {
            let before = since.tcp.get(i).copied().unwrap_or_default();
            w.bytes_tx += l[0].saturating_sub(before[0]);
            w.bytes_rx += l[1].saturating_sub(before[1]);
        }
        w.sizes = metrics::datagram_sizes(&counters);
        (w.sizes.len() as u64, w)
    }

    async fn close(self) {
        for c in &self.relay_clients {
            c.close().await;
        }
        for c in &self.connections {
            c.close(0u32.into(), b"");
        }
        for l in &self.tcp_links {
            l.close(0u32.into(), b"");
        }
        for e in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
        }
    }
}

/// Counters of every session at one instant (see [`Sessions::mark`]).
#[derive(Debug, Clone, Default)]
struct WireMark {
    quic: Vec<[u64; 5]>,
    tcp: Vec<[u64; 2]>,
}

/// Connects one session to `relay`, keeping the QUIC connection for its counters.
async fn connect_relay(
    relay: &RelayAddress,
    opts: &ClientOptions,
    sessions: &mut Sessions,
) -> anyhow::Result<(RelayClient, mpsc::Receiver<Pushed>)> {
    let bind = SocketAddr::from(([0, 0, 0, 0], 0));
    let endpoint = transport::client_endpoint(bind, &opts.quic)?;
    let config = transport::client_config(&opts.quic)?;
    let framed = transport::dial(&endpoint, Some(config), relay, &opts.dial_options())
        .await
        .with_context(|| format!("cannot connect to the relay at {}", relay.host_port()))?;
    match framed.connection.as_quic() {
        Some(c) => sessions.connections.push(c.clone()),
        None => sessions.tcp_links.push(framed.connection.clone()),
    }
    sessions.endpoints.push(endpoint);
    let (client, rx) = RelayClient::from_framed(framed, relay.clone(), opts);
    sessions.relay_clients.push(client.clone());
    Ok((client, rx))
}

/// Runs the workload through relays (embedded when `opts.relays` is empty).
///
/// # Errors
/// Setup failures (an unreachable relay, refused queue creation, bad options). Lost or
/// corrupted messages are not errors: they are in the report.
pub async fn run_relay(opts: &Options) -> anyhow::Result<Outcome> {
    opts.validate()?;
    let embedded = if opts.relays.is_empty() {
        Some(Embedded::start(opts).await?)
    } else {
        None
    };
    let relays: Vec<RelayAddress> = match &embedded {
        Some(e) => e.address().into_iter().collect(),
        None => opts.relays.clone(),
    };
    let result = run_relay_on(opts, &relays, embedded.is_some()).await;
    if let Some(e) = embedded {
        e.stop().await;
    }
    result
}

async fn run_relay_on(
    opts: &Options,
    relays: &[RelayAddress],
    embedded: bool,
) -> anyhow::Result<Outcome> {
    let copts = opts.client_options();
    let n = opts.connections;
    let r_count = relays.len().max(1);
    let collector = Arc::new(Collector::new(opts.window));
    let mut sessions = Sessions::default();
    let password = opts.create_password.as_deref().map(str::as_bytes);

    // Receivers and their queues.
    let mut receivers: Vec<Vec<(RelayClient, Option<mpsc::Receiver<Pushed>>)>> = Vec::new();
    for relay in relays {
        let mut v = Vec::new();
        for _ in 0..n {
            let (c, rx) = connect_relay(relay, &copts, &mut sessions).await?;
            v.push((c, Some(rx)));
        }
        receivers.push(v);
    }
    let mut queues: Vec<Option<RelayQueue>> = vec![None; opts.queues as usize];
    let mut pending = FuturesUnordered::new();
    for q in 0..opts.queues {
        let relay = q as usize % r_count;
        let local = (q as usize / r_count) % n as usize;
        let client = receivers
            .get(relay)
            .and_then(|v| v.get(local))
            .map(|(c, _)| c.clone())
            .context("receiver session missing")?;
        let recipient = relay as u32 * n + local as u32;
        pending.push(setup_queue(client, password, q, relay, recipient));
        // Bounded concurrency of setup requests.
        if pending.len() >= 64
            && let Some(done) = pending.next().await
        {
            let (q, rq) = done?;
            if let Some(slot) = queues.get_mut(q as usize) {
                *slot = Some(rq);
            }
        }
    }
    while let Some(done) = pending.next().await {
        let (q, rq) = done?;
        if let Some(slot) = queues.get_mut(q as usize) {
            *slot = Some(rq);
        }
    }
    let queues: Vec<RelayQueue> = queues.into_iter().flatten().collect();
    if queues.len() != opts.queues as usize {
        bail!("not every queue was created");
    }

    // Receive loops.
    let mut by_recipient: HashMap<RecipientId, (u32, Arc<QueueCredentials>)> = HashMap::new();
    for (q, rq) in queues.iter().enumerate() {
        by_recipient.insert(rq.creds.recipient_id, (q as u32, rq.creds.clone()));
    }
    let by_recipient = Arc::new(by_recipient);
    let mut receive_tasks = Vec::new();
    for v in &mut receivers {
        for (client, rx) in v.iter_mut() {
            let Some(rx) = rx.take() else { continue };
            receive_tasks.push(tokio::spawn(relay_receive_loop(
                client.clone(),
                rx,
                by_recipient.clone(),
                collector.clone(),
            )));
        }
    }

    // Senders.
    let mut senders: Vec<Vec<RelayClient>> = Vec::new();
    for relay in relays {
        let mut v = Vec::new();
        for _ in 0..n {
            let (c, rx) = connect_relay(relay, &copts, &mut sessions).await?;
            drop(rx); // senders subscribe to nothing; pushes would be discarded (counted)
            v.push(c);
        }
        senders.push(v);
    }
    let cover_clients: Vec<RelayClient> = senders.iter().flatten().cloned().collect();
    let backend = Arc::new(Backend::Relay { senders, queues });

    let cancel = CancellationToken::new();
    let cover_tasks = start_cover(opts, &collector, cover_clients, &cancel);
    let mark = sessions.mark();
    let measured = drive(opts, &collector, &backend, embedded).await;
    cancel.cancel();
    for t in cover_tasks {
        let _ = t.await;
    }
    collector.acks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), collector.acks.wait()).await;
    let (distinct, wire) = sessions.wire(&mark);
    drop(backend);
    sessions.close().await;
    for t in receive_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(finish(opts, "relay", &collector, &measured, distinct, wire))
}

/// Creates queue `q` on `client`'s relay, secures it with a fresh sender key and subscribes.
async fn setup_queue(
    client: RelayClient,
    password: Option<&[u8]>,
    q: u32,
    relay: usize,
    recipient: u32,
) -> anyhow::Result<(u32, RelayQueue)> {
    let creds = client
        .create_queue(password)
        .await
        .context("cannot create a queue (a private relay needs --create-password)")?;
    let sender_key = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    client
        .secure(&creds, sender_key.public())
        .await
        .context("cannot secure a queue")?;
    client
        .subscribe(&creds)
        .await
        .context("cannot subscribe to a queue")?;
    Ok((
        q,
        RelayQueue {
            relay,
            recipient,
            sender_key: Arc::new(sender_key),
            creds: Arc::new(creds),
        },
    ))
}

async fn relay_receive_loop(
    client: RelayClient,
    mut rx: mpsc::Receiver<Pushed>,
    by_recipient: Arc<HashMap<RecipientId, (u32, Arc<QueueCredentials>)>>,
    collector: Arc<Collector>,
) {
    while let Some(p) = rx.recv().await {
        match p {
            Pushed::Msg { recipient_id, msg } => {
                let at = collector.now_us();
                let Some((queue, creds)) = by_recipient.get(&recipient_id) else {
                    collector.corrupted.fetch_add(1, Ordering::Relaxed);
                    collector.error("message on a queue this run did not create");
                    continue;
                };
                // The ACK is spawned before the arrival is recorded, so that when the last
                // message resolves its ACK is already tracked and is waited for.
                let opened = msg.open(creds);
                let (client, creds, c) = (client.clone(), creds.clone(), collector.clone());
                collector.acks.spawn(async move {
                    if let Err(e) = client.ack(&creds, msg.msg_id).await {
                        c.ack_failed.fetch_add(1, Ordering::Relaxed);
                        c.error(format!("ACK failed: {e}"));
                    }
                });
                match opened {
                    Ok(m) => collector.received(*queue, &m.body, at),
                    Err(e) => {
                        collector.corrupted.fetch_add(1, Ordering::Relaxed);
                        collector.error(format!("corrupted message: {e}"));
                    }
                }
            }
            Pushed::End { .. } => collector.error("a subscription ended during the run"),
            Pushed::Closed(_) => break,
        }
    }
}

/// Client cover traffic: each sender session sends DROP frames as a Poisson process of
/// `cover_rate`, and the time each enters is recorded (the adversary sees it as a send).
fn start_cover(
    opts: &Options,
    collector: &Arc<Collector>,
    clients: Vec<RelayClient>,
    cancel: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    if opts.cover_rate <= 0.0 {
        return Vec::new();
    }
    clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let (collector, cancel, rate) = (collector.clone(), cancel.clone(), opts.cover_rate);
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(
                opts.seed ^ 0xC0FE_u64.wrapping_mul(i as u64 + 1),
            );
            tokio::spawn(async move {
                loop {
                    let u: f64 = rng.r#gen();
                    let gap = Duration::from_secs_f64((-(1.0 - u).ln() / rate).min(3600.0));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        () = tokio::time::sleep(gap) => {}
                    }
                    let at = collector.now_us();
                    if client.send_cover().await.is_err() {
                        return;
                    }
                    lock(&collector.cover).push(at);
                }
            })
        })
        .collect()
}

/// What [`drive`] measured besides the records.
#[derive(Debug, Default)]
struct Measured {
    dispatched: u64,
    dispatch_s: f64,
    cpu: Duration,
    relay_cpu: Option<Duration>,
}

/// Dispatches the workload and waits for it to resolve (or for the drain timeout).
async fn drive(
    opts: &Options,
    collector: &Arc<Collector>,
    backend: &Arc<Backend>,
    embedded: bool,
) -> Measured {
    let spec = WorkloadSpec {
        seed: opts.seed,
        queues: opts.queues,
        senders: opts.connections,
        rate: opts.rate,
        messages: opts.messages,
        duration: opts.duration,
    };
    let progress = Progress::start(opts, collector);
    let cpu0 = cpu::process_cpu();
    let relay0 = embedded
        .then(|| cpu::threads_cpu(cpu::RELAY_THREAD_PREFIXES))
        .flatten();
    let t0 = Instant::now();
    let _ = collector.now_us(); // the run's clock starts here
    let deadline = opts
        .duration
        .map(|d| tokio::time::Instant::from_std(t0 + d));
    let mut dispatched = 0u64;
    for p in Workload::new(spec) {
        if let Some(at) = p.at {
            tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + at)).await;
        }
        let permit = match deadline {
            Some(d) => tokio::select! {
                p = collector.window.acquire() => p,
                () = tokio::time::sleep_until(d) => break,
            },
            None => collector.window.acquire().await,
        };
        match permit {
            // Returned by `with_slot` when the message resolves.
            Ok(p) => p.forget(),
            Err(_) => break,
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            collector.window.add_permits(1);
            break;
        }
        let (sender, recipient) = backend.sessions(&p, opts.connections);
        collector.plan(&p, sender, recipient);
        dispatched += 1;
        let (collector, backend) = (collector.clone(), backend.clone());
        let (seed, len) = (opts.seed, opts.body_bytes);
        tokio::spawn(async move {
            let body = make_body(seed, p.seq, p.queue, len);
            collector.sent(p.seq, collector.now_us());
            match backend.send(&p, body).await {
                Ok(()) => collector.ok(p.seq),
                Err(e) => collector.failed(p.seq, e),
            }
        });
    }
    let dispatch_s = t0.elapsed().as_secs_f64();
    let mut resolved = collector.resolved.subscribe();
    let _ = tokio::time::timeout(opts.drain(), resolved.wait_for(|&r| r >= dispatched)).await;
    let cpu = cpu::process_cpu().saturating_sub(cpu0);
    let relay_cpu = relay0.and_then(|before| {
        cpu::threads_cpu(cpu::RELAY_THREAD_PREFIXES).map(|after| after.saturating_sub(before))
    });
    progress.finish();
    Measured {
        dispatched,
        dispatch_s,
        cpu,
        relay_cpu,
    }
}

/// Computes the report from the collector.
fn finish(
    opts: &Options,
    mode: &str,
    collector: &Collector,
    m: &Measured,
    frame_sizes_distinct: u64,
    wire: WireSummary,
) -> Outcome {
    let records = collector.records();
    let counts = metrics::delivery_counts(&records, collector.corrupted.load(Ordering::Relaxed));
    let first_sent = records.iter().filter_map(|r| r.sent_at_us).min();
    let last_recv = records.iter().filter_map(|r| r.received_at_us).max();
    let elapsed_s = match (first_sent, last_recv) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e6,
        _ => m.dispatch_s.max(1e-6),
    };
    let delivered = counts.delivered as f64;
    let model_mean_ms = if mode == "ceiling" {
        0.0
    } else {
        opts.model_mean_ms()
    };
    let base_us = opts
        .baseline
        .map(|b| b.as_secs_f64() * 1e6)
        .or_else(|| metrics::baseline_us(&records).map(|b| b as f64))
        .unwrap_or(0.0);
    let added = metrics::added_delays_ms(&records, base_us);
    let adversary_mean_us = if model_mean_ms > 0.0 {
        model_mean_ms * 1000.0
    } else {
        // No configured delay: the adversary models the path's own jitter.
        let n = added.len().max(1) as f64;
        (added.iter().map(|d| d.max(0.0)).sum::<f64>() / n * 1000.0).max(1.0)
    };
    let obs = Observation::from_records(&records, &lock(&collector.cover));
    let adv = metrics::timing_adversary(
        &obs,
        &AdversaryParams {
            base_us,
            mean_us: adversary_mean_us,
            window_us: AdversaryParams::window_for(adversary_mean_us),
            entropy_sample: ENTROPY_SAMPLE,
        },
    );
    let per_msg = |d: Duration| (delivered > 0.0).then(|| d.as_secs_f64() * 1e6 / delivered);
    let report = Report {
        mode: mode.into(),
        config: opts.run_config(),
        counts,
        elapsed_s,
        throughput_msgs_per_s: delivered / elapsed_s,
        throughput_mib_per_s: delivered * opts.body_bytes as f64 / elapsed_s / f64::from(1 << 20),
        latency_ms: metrics::percentiles_ms(metrics::latencies_us(&records)),
        ok_latency_ms: metrics::percentiles_ms(metrics::ok_latencies_us(&records)),
        delay_model: DelayModel {
            mode: if mode == "ceiling" {
                "off".into()
            } else {
                opts.delay.name().into()
            },
            mean_ms: model_mean_ms,
        },
        baseline_ms: base_us / 1000.0,
        delay_ks_distance: metrics::delay_ks_distance(&added, model_mean_ms),
        pool_size: metrics::pool_summary(&metrics::pool_sizes(&records, base_us)),
        adversary: AdversarySummary {
            top1: adv.top1,
            top10: adv.top10,
            mrr: adv.mrr,
            baseline_top1: adv.baseline_top1,
            mean_candidates: adv.mean_candidates,
            model_mean_ms: adversary_mean_us / 1000.0,
        },
        entropy_bits: adv.entropy_bits,
        effective_anonymity_set: adv.effective_anonymity_set,
        frame_sizes_distinct,
        wire,
        cpu_us_per_msg: per_msg(m.cpu),
        relay_cpu_us_per_msg: m.relay_cpu.and_then(per_msg),
        ceiling_msgs_per_s: None,
        relay_to_ceiling_ratio: None,
        ack_failed: collector.ack_failed.load(Ordering::Relaxed),
        errors: lock(&collector.errors).iter().cloned().collect(),
    };
    if m.dispatched == 0 {
        tracing::warn!("no message was dispatched");
    }
    Outcome {
        report,
        records,
        added_delay_ms: added,
    }
}

/// Runs the same workload through the in-process plain forwarder (see [`crate::ceiling`]).
///
/// # Errors
/// If the forwarder or a session cannot be set up.
pub async fn run_ceiling(opts: &Options) -> anyhow::Result<Outcome> {
    opts.validate()?;
    let quic = opts.quic();
    let n = opts.connections;
    let mut forwarder = Forwarder::start(n, &quic)?;
    let collector = Arc::new(Collector::new(opts.window));
    let mut sessions = Sessions::default();
    let mut receive_tasks = Vec::new();
    for i in 0..n {
        let conn = ceiling::connect(forwarder.addr, &quic, true, i).await?;
        sessions.connections.push(conn.connection.clone());
        sessions.endpoints.push(conn.endpoint.clone());
        let collector = collector.clone();
        receive_tasks.push(tokio::spawn(ceiling::receive(conn, move |queue, body| {
            let at = collector.now_us();
            collector.received(queue, body, at);
        })));
    }
    forwarder.wait_receivers(n).await?;
    let mut senders = Vec::new();
    for i in 0..n {
        let conn = ceiling::connect(forwarder.addr, &quic, false, i).await?;
        sessions.connections.push(conn.connection.clone());
        sessions.endpoints.push(conn.endpoint.clone());
        senders.push(CeilingSender::start(conn));
    }
    let backend = Arc::new(Backend::Ceiling {
        senders,
        receivers: n,
    });
    let mark = sessions.mark();
    let measured = drive(opts, &collector, &backend, false).await;
    let (distinct, wire) = sessions.wire(&mark);
    drop(backend);
    sessions.close().await;
    forwarder.shutdown().await;
    for t in receive_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(finish(
        opts, "ceiling", &collector, &measured, distinct, wire,
    ))
}

/// Runs the relay workload, then the ceiling, and puts `ceiling_msgs_per_s` and
/// `relay_to_ceiling_ratio` into the relay's report.
///
/// # Errors
/// As [`run_relay`] and [`run_ceiling`].
pub async fn run_compare(opts: &Options) -> anyhow::Result<Outcome> {
    let mut relay = run_relay(opts).await?;
    let ceiling = run_ceiling(opts).await?;
    let c = ceiling.report.throughput_msgs_per_s;
    relay.report.ceiling_msgs_per_s = Some(c);
    relay.report.relay_to_ceiling_ratio = (c > 0.0).then(|| relay.report.throughput_msgs_per_s / c);
    Ok(relay)
}

/// Creates `count` queues as fast as the window allows (spread over the receiver sessions of
/// each relay) and reports the rate; the queues stay in the relay (keep them with
/// `--data-dir` for an embedded relay).
///
/// # Errors
/// Setup failures.
pub async fn create_queues(opts: &Options, count: u64) -> anyhow::Result<CreateQueuesReport> {
    opts.validate()?;
    let embedded = if opts.relays.is_empty() {
        Some(Embedded::start(opts).await?)
    } else {
        None
    };
    let relays: Vec<RelayAddress> = match &embedded {
        Some(e) => e.address().into_iter().collect(),
        None => opts.relays.clone(),
    };
    let copts = opts.client_options();
    let mut sessions = Sessions::default();
    let mut clients = Vec::new();
    for relay in &relays {
        for _ in 0..opts.connections {
            let (c, rx) = connect_relay(relay, &copts, &mut sessions).await?;
            drop(rx);
            clients.push(c);
        }
    }
    let collector = Arc::new(Collector::new(opts.window));
    let created = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = Progress::counter(opts, count, created.clone());
    let cpu0 = cpu::process_cpu();
    let relay0 = embedded
        .as_ref()
        .and_then(|_| cpu::threads_cpu(cpu::RELAY_THREAD_PREFIXES));
    let t0 = Instant::now();
    let window = Arc::new(Semaphore::new(opts.window));
    let password: Option<Arc<Vec<u8>>> = opts
        .create_password
        .as_ref()
        .map(|p| Arc::new(p.as_bytes().to_vec()));
    for i in 0..count {
        let Ok(permit) = window.clone().acquire_owned().await else {
            break;
        };
        let Some(client) = clients
            .get((i % clients.len().max(1) as u64) as usize)
            .cloned()
        else {
            break;
        };
        let (created, failed, collector, password) = (
            created.clone(),
            failed.clone(),
            collector.clone(),
            password.clone(),
        );
        tokio::spawn(async move {
            match client
                .create_queue(password.as_deref().map(Vec::as_slice))
                .await
            {
                Ok(_) => created.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    collector.error(format!("NEW failed: {e}"));
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            drop(permit);
        });
    }
    // Every request has finished once the whole window is free again.
    let _ = window
        .acquire_many(u32::try_from(opts.window).unwrap_or(u32::MAX))
        .await;
    let elapsed_s = t0.elapsed().as_secs_f64().max(1e-6);
    let cpu = cpu::process_cpu().saturating_sub(cpu0);
    let relay_cpu = relay0
        .and_then(|b| cpu::threads_cpu(cpu::RELAY_THREAD_PREFIXES).map(|a| a.saturating_sub(b)));
    progress.finish();
    sessions.close().await;
    let created = created.load(Ordering::Relaxed);
    let per = |d: Duration| (created > 0).then(|| d.as_secs_f64() * 1e6 / created as f64);
    let (stored_queues, db_bytes) = match &embedded {
        Some(e) => (
            e.relay
                .as_ref()
                .and_then(|r| r.store.counts().ok())
                .map(|(q, _)| q),
            std::fs::metadata(e.dir.join(datadir::DB_FILE))
                .ok()
                .map(|m| m.len()),
        ),
        None => (None, None),
    };
    if let Some(e) = embedded {
        e.stop().await;
    }
    let errors = lock(&collector.errors).iter().cloned().collect();
    Ok(CreateQueuesReport {
        mode: "create_queues".into(),
        requested: count,
        created,
        failed: failed.load(Ordering::Relaxed),
        elapsed_s,
        queues_per_s: created as f64 / elapsed_s,
        cpu_us_per_queue: per(cpu),
        relay_cpu_us_per_queue: relay_cpu.and_then(per),
        stored_queues,
        db_bytes,
        errors,
    })
}

/// The progress bar: drawn on standard error when it is a terminal and `--progress` is on
/// (the default of the binary), hidden otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn bar(opts: &Options, len: Option<u64>) -> indicatif::ProgressBar {
        use std::io::IsTerminal as _;
        if !(opts.progress && std::io::stderr().is_terminal()) {
            return indicatif::ProgressBar::hidden();
        }
        let bar = match len {
            Some(l) => indicatif::ProgressBar::new(l),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    }

    fn start(opts: &Options, collector: &Arc<Collector>) -> Self {
        let bar = Self::bar(opts, opts.messages.filter(|_| opts.duration.is_none()));
        if bar.is_hidden() {
            return Self { bar, task: None };
        }
        let (b, rx) = (bar.clone(), collector.resolved.subscribe());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            loop {
                let done = *rx.borrow();
                b.set_position(done);
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                b.set_message(format!("resolved, {rate:.0} msg/s"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            bar,
            task: Some(task),
        }
    }

    fn counter(opts: &Options, len: u64, count: Arc<AtomicU64>) -> Self {
        let bar = Self::bar(opts, Some(len));
        if bar.is_hidden() {
            return Self { bar, task: None };
        }
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                b.set_position(count.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            bar,
            task: Some(task),
        }
    }

    fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}
