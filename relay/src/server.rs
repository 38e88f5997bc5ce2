//! The relay server: QUIC and TLS-over-TCP listeners, sessions, queue commands, delivery.
//!
//! Shape (after mini-redis `server.rs`):
//! - a listener task per transport (QUIC; TLS over TCP when `listen_tcp` is on) admits
//!   connections under the same session caps and handshake rate limits (refusing with a
//!   metric rather than blocking accept) and spawns one task per connection; after the
//!   handshake both transports run the same session code;
//! - each session has a reader task (records → frames), a writer task (transmissions →
//!   greedily batched frames, plus optional cover frames) and its own loop that owns the
//!   session state (subscriptions, messages in flight) and runs store writes concurrently so
//!   many SENDs of one session share a group commit;
//! - the [`Router`] maps each subscribed queue to the one session subscribed to it;
//! - the scheduler task (see [`crate::scheduler`]) owns the delay pool and wakes subscribers
//!   when a message is released;
//! - an expiry task enforces TTL and idle-queue removal; a gauge task refreshes counts.
//!
//! Shutdown is cooperative: a [`CancellationToken`] stops accepting, sessions finish their
//! in-flight store writes and close, the writer thread drains.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::{Rng as _, SeedableRng as _};
use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{
    AuthPublicKey, AuthSecretKey, Command, CorrId, DecodeError, DhSecretKey, EntityId, ErrorCode,
    Frame, FrameBuilder, MessageId, RecipientId, RelayAddress, RelayStaticKey, Response, SenderId,
    Transmission,
};
use sotto_transport::{self as transport, FrameReceiver, FrameSender, FramedConnection};
use subtle::ConstantTimeEq as _;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::datadir::{self, Identity};
use crate::metrics::Metrics;
use crate::scheduler::{self, DelaySampler, Pending, Scheduler, SchedulerMetrics};
use crate::store::{
    NewMessage, QueueRecord, QueueRef, QueueStatus, SealedBody, Store, StoreError, StoreMetrics,
    StoreOptions, WriteOp, WriteOutcome,
};

/// Transmissions waiting for a session's writer. Each holds at most one MSG (~15.5 KiB), so
/// a full queue costs ≤ 4 MiB per session; beyond it the session loop waits. They are boxed
/// so that the channel's first block of 32 slots, which tokio allocates with the channel,
/// costs 256 bytes per idle session instead of 4 KiB.
const OUT_QUEUE: usize = 256;

/// How long a session's writer may hold an answer nobody waits on to act (the OK of an ACK
/// on a subscription) for a frame it can ride in, before sending it in a frame of its own.
/// A subscriber under load sends it with the next MSG; an idle one gets it after this.
/// Saves a 16 KiB record (12 padded datagrams, two AEAD passes) per delivered message at
/// moderate rates (`docs/benchmarks.md`, target 2).
const LAZY_ANSWER_DELAY: Duration = Duration::from_millis(5);

/// Lazy answers a writer holds at most (≈ 35 bytes each, so they always fit one frame);
/// more are sent as ordinary transmissions.
const LAZY_PER_FRAME: usize = 256;

/// One transmission for a session's writer.
struct Outgoing {
    t: Transmission,
    /// May wait up to [`LAZY_ANSWER_DELAY`] for a frame that goes out anyway.
    lazy: bool,
}

/// Decoded frames waiting for a session's loop (each ≤ 16 KiB of transmissions, so ≤ 64 KiB
/// per session, plus the one frame the reader holds).
const IN_FRAMES: usize = 4;

/// Store writes one session may have in flight; beyond it the session stops reading (and QUIC
/// flow control stops the client). Each holds at most one SEND body (≤ 15 KiB), so ≤ 4 MiB
/// per session.
const MAX_IN_FLIGHT: usize = 256;

/// Bound of the scheduler's input channel (≈ 56 bytes per entry).
const SCHEDULER_QUEUE: usize = 65_536;

/// Largest batch the scheduler releases at once.
const RELEASE_BATCH: usize = 1024;

/// Most source addresses the handshake limiter tracks at once (≈ 80 bytes each in governor's
/// map, so ≤ ≈ 5 MiB). From half of it on, unvalidated sources must first answer a QUIC
/// Retry; at the cap, idle entries are pruned and, if it is still full, handshakes are
/// refused (`sotto_rate_limited_total{limit="tracked_sources"}`).
const MAX_TRACKED_SOURCES: usize = 65_536;

/// Most connection attempts quinn holds before the accept loop takes them (each is refused
/// or admitted at once, so this only fills under a burst).
const MAX_INCOMING: usize = 4096;

/// Bytes quinn buffers for one not-yet-accepted connection, and for all of them.
const INCOMING_BUFFER: u64 = 64 << 10;
/// See [`INCOMING_BUFFER`]; bounds the whole pre-accept backlog to 16 MiB.
const INCOMING_BUFFER_TOTAL: u64 = 16 << 20;

/// The key limits are counted under for a source address: the IPv4 address, or the /64
/// prefix of an IPv6 address (one host usually holds a whole /64, so keying by full address
/// would give it 2^64 separate budgets). IPv4-mapped IPv6 addresses count as IPv4.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// Shutdown: how long sessions get to finish their in-flight writes and close.
pub const SHUTDOWN_SESSIONS: Duration = Duration::from_secs(15);
/// Shutdown: how long QUIC gets to deliver the close to every client.
pub const SHUTDOWN_IDLE: Duration = Duration::from_secs(2);
/// Shutdown: how long the store writer gets to commit what is queued.
pub const SHUTDOWN_STORE: Duration = Duration::from_secs(10);

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A running relay.
#[derive(Debug)]
pub struct RunningRelay {
    /// The relay's `sotto://` address (with the bound port).
    pub address: RelayAddress,
    /// The UDP socket address the listener is bound to.
    pub local_addr: SocketAddr,
    /// The TCP socket address the TLS-over-TCP listener is bound to (`listen_tcp`), if on.
    pub local_tcp_addr: Option<SocketAddr>,
    /// Where `/metrics` is served, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Metrics (for tests and the embedded load tester).
    pub metrics: Metrics,
    /// The store (for tests).
    pub store: Store,
    shutdown: CancellationToken,
    /// Cancelled when a task the relay cannot serve without stops (see [`spawn_critical`]).
    failed: CancellationToken,
    tracker: TaskTracker,
    endpoint: quinn::Endpoint,
}

impl RunningRelay {
    /// Completes when a task the relay cannot serve without (the scheduler, an accept loop,
    /// the expiry sweep, …) has panicked or ended before shutdown. The relay then no longer
    /// accepts or delivers, so `sotto-relay run` shuts it down and exits non-zero for the
    /// service manager to restart it. A panic inside one session ends that session only.
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// Stops accepting, lets sessions finish in-flight writes, closes them, and waits.
    ///
    /// Takes at most [`SHUTDOWN_SESSIONS`] + [`SHUTDOWN_IDLE`] + [`SHUTDOWN_STORE`] (27 s),
    /// inside the systemd unit's `TimeoutStopSec=30`, so a stop is never a SIGKILL.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_SESSIONS, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not finish within 15 s; closing anyway");
        }
        self.endpoint
            .close(transport::CLOSE_NORMAL.into(), b"shutdown");
        let _ = tokio::time::timeout(SHUTDOWN_IDLE, self.endpoint.wait_idle()).await;
        drop(self.metrics);
        if !self.store.close(SHUTDOWN_STORE).await {
            tracing::warn!("store writer did not finish within 10 s");
        }
    }

    /// A token that, when cancelled, shuts the relay down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts a relay from the data directory `dir` (which must be initialised) with `config`.
///
/// # Errors
/// Unreadable identity, a store that cannot be opened, an address that cannot be bound.
pub async fn start(dir: &Path, config: Config) -> anyhow::Result<RunningRelay> {
    let identity = datadir::load_identity(dir)?;
    start_with(dir, config, identity).await
}

/// As [`start`] with an identity already loaded.
///
/// # Errors
/// As [`start`].
pub async fn start_with(
    dir: &Path,
    config: Config,
    identity: Identity,
) -> anyhow::Result<RunningRelay> {
    use anyhow::Context as _;
    let metrics = Metrics::new()?;
    let store = Store::open(
        &dir.join(datadir::DB_FILE),
        &identity.storage_key,
        StoreOptions {
            max_batch: config.store.max_batch,
            unsafe_no_fsync: config.store.unsafe_no_fsync,
            cache_bytes: config.store.cache_mib << 20,
            metrics: Some(StoreMetrics {
                commit_seconds: metrics.commit_seconds.clone(),
                batch_size: metrics.commit_batch.clone(),
                relaxed_commits: metrics.relaxed_commits.clone(),
            }),
            ..StoreOptions::default()
        },
    )?;
    if config.store.unsafe_no_fsync {
        tracing::warn!(
            "store.unsafe_no_fsync is ON: acknowledged messages can be lost on a crash (benchmarks only)"
        );
    }
    let mut server_config = transport::server_config(
        identity.tls_cert.clone(),
        identity.tls_key.clone(),
        &config.quic.options(),
    )?;
    server_config
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    let endpoint = quinn::Endpoint::server(server_config, config.listen)
        .with_context(|| format!("cannot listen on UDP {}", config.listen))?;
    let local_addr = endpoint.local_addr()?;
    let mut address = datadir::address(&identity.relay_key, &config, local_addr.port())?;
    let tcp_listener = match config.listen_tcp_addr() {
        Some(a) => {
            let listener = tokio::net::TcpListener::bind(a).await.with_context(|| {
                format!("cannot listen on TCP {a} (set listen_tcp to \"off\" or another address)")
            })?;
            let acceptor =
                transport::TcpAcceptor::new(identity.tls_cert.clone(), identity.tls_key.clone())?;
            let bound = listener.local_addr()?;
            // The bound port, which differs from the configured one when that is 0.
            address.tcp = Some(bound.port());
            Some((listener, acceptor, bound))
        }
        None => None,
    };
    let local_tcp_addr = tcp_listener.as_ref().map(|(_, _, a)| *a);

    let shutdown = CancellationToken::new();
    let failed = CancellationToken::new();
    let tracker = TaskTracker::new();
    let critical = |name: &'static str, fut: BoxFuture| {
        spawn_critical(&tracker, name, fut, &shutdown, &failed);
    };

    let metrics_addr = match config.metrics_addr() {
        Some(a) => Some(
            crate::metrics::serve(a, metrics.clone(), shutdown.clone())
                .await
                .with_context(|| {
                    format!("cannot serve metrics on {a} (set --metrics off or another address)")
                })?,
        ),
        None => None,
    };

    // The scheduler: refill from the store, then run.
    let now = unix_ms();
    let mut pool = Scheduler::new();
    for (q, release, inserted) in store.pending_after(now)? {
        pool.insert(q, inserted, release);
    }
    if !pool.is_empty() {
        tracing::info!(
            pending = pool.len(),
            "restored messages waiting for release"
        );
    }
    let (sched_tx, sched_rx) = mpsc::channel(SCHEDULER_QUEUE);
    let (released_tx, mut released_rx) = mpsc::channel::<Vec<scheduler::Released<QueueRef>>>(64);
    let sched = scheduler::run(
        pool,
        sched_rx,
        released_tx,
        shutdown.clone(),
        unix_ms,
        Some(SchedulerMetrics {
            pool_size: metrics.pool_size.clone(),
            delay_seconds: metrics.delay_seconds.clone(),
        }),
        RELEASE_BATCH,
    );
    critical(
        "scheduler",
        Box::pin(async move {
            let _ = sched.await;
        }),
    );

    // FWD dials destinations from this endpoint, so they see this relay's address.
    let forwarder = Arc::new(crate::forward::Forwarder::new(
        endpoint.clone(),
        identity.relay_key.public(),
        &config.forwarding,
        config.quic.options(),
        config.log.sensitive,
    )?);
    critical(
        "forward sweeper",
        Box::pin(forwarder.clone().run_sweeper(shutdown.clone())),
    );

    let limits = &config.limits;
    let per_s = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    let shared = Arc::new(Shared {
        forwarder,
        sampler: Mutex::new(DelaySampler::new(
            config.delivery.delay_mode()?,
            rand::rngs::StdRng::from_entropy(),
        )),
        handshake_limiter: RateLimiter::keyed(
            Quota::per_second(per_s(limits.handshakes_per_ip_per_s))
                .allow_burst(per_s(limits.handshakes_per_ip_per_s.saturating_mul(2))),
        ),
        per_ip: Mutex::new(HashMap::new()),
        sessions: AtomicUsize::new(0),
        next_session: AtomicU64::new(1),
        router: Router::default(),
        dummy_key: AuthSecretKey::generate(&mut rand::rngs::OsRng).public(),
        key: identity.relay_key,
        store: store.clone(),
        metrics: metrics.clone(),
        scheduler: sched_tx,
        shutdown: shutdown.clone(),
        config,
    });

    // Released messages wake their subscriber.
    {
        let shared = shared.clone();
        critical(
            "release waker",
            Box::pin(async move {
                while let Some(batch) = released_rx.recv().await {
                    for r in batch {
                        shared.router.wake(&r.item);
                    }
                }
            }),
        );
    }
    critical("expiry", Box::pin(expiry_task(shared.clone())));
    critical("gauges", Box::pin(gauge_task(shared.clone())));
    critical(
        "limiter pruning",
        Box::pin(limiter_prune_task(shared.clone())),
    );
    critical(
        "QUIC accept loop",
        Box::pin(accept_loop(
            endpoint.clone(),
            shared.clone(),
            tracker.clone(),
        )),
    );
    if let Some((listener, acceptor, _)) = tcp_listener {
        critical(
            "TCP accept loop",
            Box::pin(tcp_accept_loop(
                listener,
                acceptor,
                shared.clone(),
                tracker.clone(),
            )),
        );
    }

    if shared.config.log.sensitive {
        tracing::warn!(
            "SENSITIVE LOGGING IS ON: logs will contain client addresses and queue ids. Turn log.sensitive off in production."
        );
    }
    match local_tcp_addr {
        Some(tcp) => {
            tracing::info!(%address, listen = %local_addr, listen_tcp = %tcp, "relay serving")
        }
        None => tracing::info!(%address, listen = %local_addr, "relay serving"),
    }
    Ok(RunningRelay {
        address,
        local_addr,
        local_tcp_addr,
        metrics_addr,
        metrics,
        store,
        shutdown,
        failed,
        tracker,
        endpoint,
    })
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns a task the relay cannot serve without. If it panics or returns while `shutdown`
/// is not cancelled, the error is logged (with the task's name only) and `failed` is
/// cancelled: see [`RunningRelay::failed`].
fn spawn_critical(
    tracker: &TaskTracker,
    name: &'static str,
    fut: BoxFuture,
    shutdown: &CancellationToken,
    failed: &CancellationToken,
) {
    use futures_util::FutureExt as _;
    let (shutdown, failed) = (shutdown.clone(), failed.clone());
    tracker.spawn(async move {
        let outcome = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
        if shutdown.is_cancelled() {
            return;
        }
        match outcome {
            Err(_) => tracing::error!(task = name, "a relay task panicked; the relay stops"),
            Ok(()) => tracing::error!(task = name, "a relay task ended early; the relay stops"),
        }
        failed.cancel();
    });
}

/// State shared by every task of one relay.
struct Shared {
    config: Config,
    key: RelayStaticKey,
    store: Store,
    metrics: Metrics,
    router: Router,
    scheduler: mpsc::Sender<Pending<QueueRef>>,
    sampler: Mutex<DelaySampler<rand::rngs::StdRng>>,
    /// Verifies signatures for ids that name no queue, so AUTH costs the same either way.
    dummy_key: AuthPublicKey,
    shutdown: CancellationToken,
    /// Handshakes per source (see [`source_key`]). Keys are held only in memory, pruned
    /// every minute, and capped at [`MAX_TRACKED_SOURCES`] (≤ ≈ 5 MiB).
    handshake_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Open sessions and handshakes in progress per source (see [`source_key`]); entries are
    /// removed at zero, so at most `limits.max_sessions` entries (≈ 50 bytes each).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    sessions: AtomicUsize,
    next_session: AtomicU64,
    /// Sessions to destination relays for FWD (bounded, see [`crate::forward`]).
    forwarder: Arc<crate::forward::Forwarder>,
}

impl Shared {
    /// Counts a refusal under `limit` (one of [`crate::metrics::LIMITS`]).
    fn limited(&self, limit: &str) {
        self.metrics.rate_limited.with_label_values(&[limit]).inc();
    }

    /// Counts an error answer by its code.
    fn count_error(&self, code: ErrorCode) {
        self.metrics.errors.with_label_values(&[code.name()]).inc();
    }

    /// A peer address for logs: redacted unless sensitive logging is on.
    fn peer(&self, addr: SocketAddr) -> String {
        if self.config.log.sensitive {
            addr.to_string()
        } else {
            "<redacted>".into()
        }
    }
}

/// Which session is subscribed to which queue.
#[derive(Default)]
struct Router {
    subs: Mutex<HashMap<QueueRef, Arc<Inbox>>>,
}

/// Events for one session, coalesced so that a slow session never blocks the router and
/// memory stays bounded by its subscriptions.
struct Inbox {
    session: u64,
    wake: Mutex<HashSet<QueueRef>>,
    end: Mutex<HashSet<QueueRef>>,
    notify: Notify,
}

impl Inbox {
    fn new(session: u64) -> Self {
        Self {
            session,
            wake: Mutex::new(HashSet::new()),
            end: Mutex::new(HashSet::new()),
            notify: Notify::new(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the data (sets and maps) stays consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Router {
    /// Subscribes `inbox` to `q`; the previous subscriber (another session) gets END.
    fn subscribe(&self, q: QueueRef, inbox: &Arc<Inbox>) {
        let old = lock(&self.subs).insert(q, inbox.clone());
        if let Some(old) = old.filter(|o| o.session != inbox.session) {
            lock(&old.end).insert(q);
            old.notify.notify_one();
        }
    }

    /// Removes `q` if `session` holds it.
    fn unsubscribe(&self, q: &QueueRef, session: u64) {
        let mut subs = lock(&self.subs);
        if subs.get(q).is_some_and(|i| i.session == session) {
            subs.remove(q);
        }
    }

    /// Ends the subscription to a deleted queue; the subscriber (if another session) gets END.
    fn end(&self, q: &QueueRef, by_session: u64) {
        let old = lock(&self.subs).remove(q);
        if let Some(old) = old.filter(|o| o.session != by_session) {
            lock(&old.end).insert(*q);
            old.notify.notify_one();
        }
    }

    /// Tells the subscriber of `q` (if any) that a message may be available.
    fn wake(&self, q: &QueueRef) {
        let inbox = lock(&self.subs).get(q).cloned();
        if let Some(inbox) = inbox {
            lock(&inbox.wake).insert(*q);
            inbox.notify.notify_one();
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, tracker: TaskTracker) {
    let mut last_prune = tokio::time::Instant::now();
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        // Cheap checks before any cryptography (boringtun's rate limiter before a DH).
        let source = source_key(incoming.remote_address().ip());
        let tracked = shared.handshake_limiter.len();
        if tracked >= MAX_TRACKED_SOURCES / 2
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            // Many distinct sources: make each prove its address with a stateless Retry
            // before it may take a limiter entry, so spoofed sources cannot fill the table.
            shared
                .metrics
                .handshakes
                .with_label_values(&["retry"])
                .inc();
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let Some(guard) = admit(&shared, source, &mut last_prune) else {
            incoming.refuse();
            continue;
        };
        let remote = incoming.remote_address();
        let timeout = shared.config.limits.handshake_timeout;
        let owner = shared.clone();
        tracker.spawn(serve(shared.clone(), guard, remote, async move {
            let conn = incoming.await.map_err(transport::TransportError::Connect)?;
            transport::accept(conn, &owner.key, timeout).await
        }));
    }
}

/// The TLS-over-TCP listener (`listen_tcp`): the same admission checks as QUIC, then TLS and
/// the same Noise handshake, then the same session code.
async fn tcp_accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: transport::TcpAcceptor,
    shared: Arc<Shared>,
    tracker: TaskTracker,
) {
    let mut last_prune = tokio::time::Instant::now();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or a transient error: back off instead of spinning.
                    tracing::warn!(error = %e, "TCP accept failed; pausing accepts for 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Cheap checks before any cryptography (the TCP handshake already proved the
        // address, so there is no Retry step).
        let source = source_key(remote.ip());
        let Some(guard) = admit(&shared, source, &mut last_prune) else {
            // Refused: the connection is closed before TLS.
            drop(stream);
            continue;
        };
        let timeout = shared.config.limits.handshake_timeout;
        let owner = shared.clone();
        let acceptor = acceptor.clone();
        tracker.spawn(serve(shared.clone(), guard, remote, async move {
            transport::accept_tcp(stream, &acceptor, &owner.key, timeout).await
        }));
    }
}

/// The admission checks both listeners share, cheapest first and before any cryptography
/// (boringtun's rate limiter before a DH): tracked sources, handshakes per source, sessions
/// in all, sessions per source. Counts a refusal under its limit and returns `None`;
/// otherwise counts the session from now on (so half-open handshakes are capped too, and a
/// burst cannot overshoot the caps before the next accept).
fn admit(
    shared: &Arc<Shared>,
    source: IpAddr,
    last_prune: &mut tokio::time::Instant,
) -> Option<SessionGuard> {
    if shared.handshake_limiter.len() >= MAX_TRACKED_SOURCES {
        if last_prune.elapsed() >= Duration::from_secs(1) {
            *last_prune = tokio::time::Instant::now();
            shared.handshake_limiter.retain_recent();
        }
        if shared.handshake_limiter.len() >= MAX_TRACKED_SOURCES {
            shared.limited("tracked_sources");
            return None;
        }
    }
    if shared.handshake_limiter.check_key(&source).is_err() {
        shared.limited("handshakes_per_ip");
        return None;
    }
    if shared.sessions.load(Ordering::Relaxed) >= shared.config.limits.max_sessions {
        shared.limited("max_sessions");
        return None;
    }
    {
        let per_ip = lock(&shared.per_ip);
        if per_ip.get(&source).copied().unwrap_or(0) >= shared.config.limits.max_sessions_per_ip {
            drop(per_ip);
            shared.limited("max_sessions_per_ip");
            return None;
        }
    }
    Some(SessionGuard::new(shared, source))
}

/// One admitted connection, whichever the transport: the handshake (bounded by
/// `limits.handshake_timeout`), then the session.
async fn serve(
    shared: Arc<Shared>,
    guard: SessionGuard,
    remote: SocketAddr,
    handshake: impl Future<Output = Result<FramedConnection, transport::TransportError>>,
) {
    let _guard = guard;
    let timeout = shared.config.limits.handshake_timeout;
    // Boxed: the handshake's state (QUIC accept, Noise, a 16 KiB message buffer) is freed
    // when it ends instead of staying part of the session task for the session's lifetime.
    let handshake = Box::pin(handshake);
    let framed = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(timeout, handshake) => match r {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                shared.metrics.handshakes.with_label_values(&["failed"]).inc();
                tracing::debug!(peer = %shared.peer(remote), error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                shared.metrics.handshakes.with_label_values(&["timeout"]).inc();
                return;
            }
        },
    };
    shared.metrics.handshakes.with_label_values(&["ok"]).inc();
    shared.metrics.sessions.inc();
    let tcp = framed.connection.kind() == transport::LinkKind::Tcp;
    if tcp {
        shared.metrics.sessions_tcp.inc();
    }
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(
        session = id,
        peer = %shared.peer(remote),
        transport = %framed.connection.kind(),
        "session open"
    );
    run_session(shared.clone(), framed, id).await;
    shared.metrics.sessions.dec();
    if tcp {
        shared.metrics.sessions_tcp.dec();
    }
    tracing::debug!(session = id, "session closed");
}

/// Counts a session (total and per address) for its lifetime.
struct SessionGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl SessionGuard {
    fn new(shared: &Arc<Shared>, ip: IpAddr) -> Self {
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        *lock(&shared.per_ip).entry(ip).or_insert(0) += 1;
        Self {
            shared: shared.clone(),
            ip,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = lock(&self.shared.per_ip);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A subscribed queue in one session.
struct Sub {
    recipient_id: RecipientId,
    /// The queue's recipient key as this session read it at SUB (it never changes), so that
    /// an ACK on the subscription is verified without reading and decoding the queue record
    /// again (two Ed25519 point decompressions and a store read per delivered message).
    recipient_key: AuthPublicKey,
}

/// A message delivered in this session and not yet acknowledged.
#[derive(Clone, Copy)]
struct InFlight {
    msg_id: MessageId,
    seq: u64,
    /// Its release and receipt times (from the authenticated record), so that the ACK's
    /// delete needs no second decryption of the 16 KiB record.
    release_at_ms: u64,
    received_ms: u64,
}

impl InFlight {
    fn of(m: &crate::store::StoredMessage) -> Self {
        Self {
            msg_id: m.msg.msg_id,
            seq: m.seq,
            release_at_ms: m.msg.release_at_ms,
            received_ms: m.msg.received_ms,
        }
    }
}

/// The result of a store write, applied by the session loop when it completes.
enum Completion {
    /// Send this answer.
    Reply(Transmission),
    /// An ACK's delete finished.
    Acked {
        queue: QueueRef,
        /// Position of the deleted message.
        seq: u64,
        /// Whether the ACK was answered, and the next message delivered, when it was accepted
        /// (subscriptions): the answer here is not sent, and the message in flight now is
        /// another one.
        early: bool,
        reply: Transmission,
    },
    /// A DEL finished.
    Deleted {
        queue: QueueRef,
        reply: Transmission,
    },
}

type WriteFuture = Pin<Box<dyn Future<Output = Completion> + Send>>;

struct Session {
    shared: Arc<Shared>,
    id: u64,
    hash: [u8; 32],
    out: mpsc::Sender<Box<Outgoing>>,
    inbox: Arc<Inbox>,
    subs: HashMap<QueueRef, Sub>,
    in_flight: HashMap<QueueRef, InFlight>,
    /// Per queue, the positions of messages this session saw acknowledged whose deletions
    /// have not committed yet: deliveries pass over exactly these (messages released later
    /// at lower positions are still found). At most one position per ACK write in flight
    /// ([`MAX_IN_FLIGHT`]).
    acked_pending: HashMap<QueueRef, Vec<u64>>,
    secured_senders: SecuredSenders,
    writes: FuturesUnordered<WriteFuture>,
    /// Commands per second (`limits.commands_per_session_per_s`, burst 2×); DROP is exempt.
    commands: DefaultDirectRateLimiter,
    /// NEW per minute (`limits.new_per_session_per_min`).
    news: DefaultDirectRateLimiter,
    /// FWD per second (`limits.forwards_per_session_per_s`, burst 2×).
    forwards: DefaultDirectRateLimiter,
    subscribed: Arc<AtomicUsize>,
}

async fn run_session(shared: Arc<Shared>, framed: FramedConnection, id: u64) {
    let FramedConnection {
        connection,
        sender,
        receiver,
        handshake_hash,
    } = framed;
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let (frames_tx, mut frames_rx) = mpsc::channel(IN_FRAMES);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(read_frames(receiver, frames_tx, shared.clone()));
    let writer = tokio::spawn(write_frames(
        sender,
        out_rx,
        shared.clone(),
        subscribed.clone(),
    ));

    let limits = &shared.config.limits;
    let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    let mut s = Session {
        id,
        hash: handshake_hash,
        out: out_tx,
        inbox: Arc::new(Inbox::new(id)),
        subs: HashMap::new(),
        in_flight: HashMap::new(),
        acked_pending: HashMap::new(),
        secured_senders: SecuredSenders::default(),
        writes: FuturesUnordered::new(),
        commands: RateLimiter::direct(
            Quota::per_second(nz(limits.commands_per_session_per_s))
                .allow_burst(nz(limits.commands_per_session_per_s.saturating_mul(2))),
        ),
        news: RateLimiter::direct(
            Quota::per_minute(nz(limits.new_per_session_per_min))
                .allow_burst(nz(limits.new_per_session_per_min)),
        ),
        forwards: RateLimiter::direct(
            Quota::per_second(nz(limits.forwards_per_session_per_s))
                .allow_burst(nz(limits.forwards_per_session_per_s.saturating_mul(2))),
        ),
        subscribed,
        shared: shared.clone(),
    };

    let mut reading = true;
    // The command handlers' futures are boxed while they run: inline, their largest state
    // would be part of this task for the session's whole life (≈ 6 KiB of every idle
    // session, see `docs/benchmarks.md`); boxed, it costs one allocation per frame.
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            frame = frames_rx.recv(), if reading && s.writes.len() < MAX_IN_FLIGHT => match frame {
                Some(transmissions) => {
                    Box::pin(async {
                        for t in transmissions {
                            s.handle(t).await;
                        }
                    })
                    .await;
                }
                None => reading = false,
            },
            Some(done) = s.writes.next() => Box::pin(s.complete(done)).await,
            () = s.inbox.notify.notified() => Box::pin(s.drain_inbox()).await,
        }
        if !reading && s.writes.is_empty() {
            break;
        }
    }
    // Finish in-flight store writes so that what was written is answered (or at least
    // durable) before the session goes away.
    while let Some(done) = s.writes.next().await {
        Box::pin(s.complete(done)).await;
    }
    for q in s.subs.keys() {
        shared.router.unsubscribe(q, id);
    }
    drop(s);
    reader.abort();
    // The writer flushes what is queued, then finishes the stream.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    connection.close(transport::CLOSE_NORMAL.into(), b"");
}

/// Reads records, decodes frames, and hands their transmissions to the session loop. A
/// malformed or undecryptable record ends the session (the transport closes the connection
/// with a protocol error).
async fn read_frames(
    mut receiver: FrameReceiver,
    tx: mpsc::Sender<Vec<Transmission>>,
    shared: Arc<Shared>,
) {
    loop {
        match receiver.recv_frame().await {
            Ok(Some(plain)) => {
                shared
                    .metrics
                    .bytes_in
                    .inc_by(sotto_protocol::FRAME_LEN as u64);
                match Frame::decode(&plain) {
                    Ok(ts) => {
                        if tx.send(ts).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        shared.metrics.protocol_errors.inc();
                        tracing::debug!(error = %e, "malformed frame; closing session");
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                if matches!(
                    e,
                    transport::TransportError::Record(_)
                        | transport::TransportError::TruncatedRecord(_)
                ) {
                    shared.metrics.protocol_errors.inc();
                }
                tracing::debug!(error = %e, "session read ended");
                return;
            }
        }
    }
}

/// Batches transmissions greedily into frames; sends cover frames at the configured rate
/// while the session has subscriptions.
async fn write_frames(
    mut sender: FrameSender,
    mut rx: mpsc::Receiver<Box<Outgoing>>,
    shared: Arc<Shared>,
    subscribed: Arc<AtomicUsize>,
) {
    let cover_rate = shared.config.delivery.cover_rate;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let next_cover = |rng: &mut rand::rngs::StdRng| {
        let u: f64 = rng.r#gen::<f64>().max(f64::MIN_POSITIVE);
        tokio::time::Instant::now() + Duration::from_secs_f64((-u.ln() / cover_rate).min(3600.0))
    };
    let mut cover_at = (cover_rate > 0.0).then(|| next_cover(&mut rng));
    let mut carry: Option<Box<Outgoing>> = None;
    // Lazy answers waiting for a frame to ride in (at most LAZY_PER_FRAME; beyond that they
    // are sent like any other), and when they must go at the latest.
    let mut lazy: Vec<Box<Outgoing>> = Vec::new();
    let mut lazy_deadline: Option<tokio::time::Instant> = None;
    loop {
        let first = match carry.take() {
            Some(t) => Some(t),
            None => {
                let cover = async {
                    match cover_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                let lazy_due = async {
                    match lazy_deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    t = rx.recv() => match t {
                        Some(t) if t.lazy && lazy.len() < LAZY_PER_FRAME => {
                            lazy.push(t);
                            lazy_deadline.get_or_insert_with(|| {
                                tokio::time::Instant::now() + LAZY_ANSWER_DELAY
                            });
                            continue;
                        }
                        Some(t) => Some(t),
                        None => break,
                    },
                    () = lazy_due => None,
                    () = cover => {
                        cover_at = Some(next_cover(&mut rng));
                        if subscribed.load(Ordering::Relaxed) > 0 {
                            if sender.send_frame(FrameBuilder::cover_response()).await.is_err() {
                                return;
                            }
                            shared.metrics.cover_sent.inc();
                            shared.metrics.bytes_out.inc_by(sotto_protocol::FRAME_LEN as u64);
                        }
                        continue;
                    }
                }
            }
        };
        // Yield once before closing the frame: answers that are completing right now (a group
        // commit answers many SENDs at once) then share this frame instead of each taking a
        // 16 KiB record of their own (−13 % of the records a loaded relay sends, measured).
        tokio::task::yield_now().await;
        let mut frame = FrameBuilder::new();
        // Held answers are older than anything queued after them, so they go first (answers
        // on one queue keep their order); at most LAZY_PER_FRAME small ones always fit.
        for t in lazy.drain(..) {
            if !frame.push(&t.t) {
                tracing::error!("held answer does not fit a frame; dropped");
            }
        }
        if let Some(first) = first
            && !frame.push(&first.t)
        {
            if frame.is_empty() {
                // Cannot happen: every transmission the relay builds fits an empty frame.
                tracing::error!("transmission larger than a frame dropped");
                continue;
            }
            // It starts the next frame, after the held answers this one carries.
            carry = Some(first);
        }
        if carry.is_none() {
            while let Ok(t) = rx.try_recv() {
                if !frame.push(&t.t) {
                    carry = Some(t);
                    break;
                }
            }
        }
        lazy_deadline = None;
        if sender.send_frame(frame.finish()).await.is_err() {
            return;
        }
        shared
            .metrics
            .bytes_out
            .inc_by(sotto_protocol::FRAME_LEN as u64);
    }
    // Answers still held go out before the stream ends.
    if !lazy.is_empty() {
        let mut frame = FrameBuilder::new();
        for t in &lazy {
            if !frame.push(&t.t) {
                break;
            }
        }
        if sender.send_frame(frame.finish()).await.is_ok() {
            shared
                .metrics
                .bytes_out
                .inc_by(sotto_protocol::FRAME_LEN as u64);
        }
    }
    // Waits for the end of the stream to reach the network (TCP: `close_notify`), so the
    // session's close right after cannot cut it off.
    let _ = sender.shutdown().await;
}

/// Entity id that a command requires, by kind.
enum Needs {
    Nothing,
    Recipient,
    Sender,
}

fn needs(cmd: &Command) -> Needs {
    match cmd {
        Command::New { .. }
        | Command::Ping
        | Command::Drop
        | Command::Fwd { .. }
        | Command::RFwd { .. } => Needs::Nothing,
        Command::SKey { .. } | Command::Send { .. } => Needs::Sender,
        _ => Needs::Recipient,
    }
}

impl Session {
    async fn reply(&mut self, corr: CorrId, entity: Option<EntityId>, resp: Response) {
        if let Response::Err(code) = &resp {
            self.shared.count_error(*code);
        }
        self.send_out(Transmission::response(corr, entity, &resp), false)
            .await;
    }

    /// Queues `t` for the writer; a `lazy` one may wait for a frame that goes out anyway
    /// ([`LAZY_ANSWER_DELAY`]).
    async fn send_out(&mut self, t: Transmission, lazy: bool) {
        let _ = self.out.send(Box::new(Outgoing { t, lazy })).await;
    }

    async fn handle(&mut self, t: Transmission) {
        let corr = t.corr_id;
        let entity = t.entity;
        let decoded = t.decode_command();
        if let Ok(c) = &decoded {
            self.shared
                .metrics
                .commands
                .with_label_values(&[c.name()])
                .inc();
        }
        // Malformed commands are charged too: answering them costs as much as a PING.
        if !matches!(decoded, Ok(Command::Drop)) && self.commands.check().is_err() {
            self.shared.limited("commands_per_session");
            return self
                .reply(corr, entity, Response::Err(ErrorCode::Limited))
                .await;
        }
        let cmd = match decoded {
            Ok(c) => c,
            Err(DecodeError::TooLong { .. }) => {
                return self
                    .reply(corr, entity, Response::Err(ErrorCode::Large))
                    .await;
            }
            Err(_) => {
                return self
                    .reply(corr, entity, Response::Err(ErrorCode::Syntax))
                    .await;
            }
        };
        if self.shared.config.log.sensitive {
            // Only with `log.sensitive`: ids identify queues (see docs/operator.md).
            tracing::debug!(
                session = self.id,
                command = cmd.name(),
                entity = %entity.map(|e| e.to_string()).unwrap_or_default(),
                "command"
            );
        }
        if matches!(cmd, Command::Drop) {
            self.shared.metrics.cover_received.inc();
            return;
        }
        match (needs(&cmd), entity) {
            (Needs::Nothing, Some(_)) | (Needs::Recipient | Needs::Sender, None) => {
                return self
                    .reply(corr, entity, Response::Err(ErrorCode::Syntax))
                    .await;
            }
            _ => {}
        }
        match (cmd, entity) {
            (Command::Ping, _) => self.reply(corr, None, Response::Pong).await,
            (
                Command::New {
                    recipient_auth_key,
                    recipient_dh_key,
                    password,
                },
                _,
            ) => {
                self.new_queue(corr, recipient_auth_key, recipient_dh_key, password)
                    .await;
            }
            (Command::Fwd { relay, sealed }, _) => {
                // Limited before any work on the destination, so that a session cannot make
                // this relay dial out faster than the limit.
                if self.forwards.check().is_err() {
                    self.shared.limited("forwards_per_session");
                    return self
                        .reply(corr, None, Response::Err(ErrorCode::Limited))
                        .await;
                }
                self.forward(corr, relay, sealed);
            }
            (Command::RFwd { sealed }, _) => self.forwarded(corr, sealed),
            (Command::Send { flags, body }, Some(e)) => self.send(&t, e, flags, body).await,
            (Command::SKey { sender_key }, Some(e)) => self.sender_key(&t, e, sender_key).await,
            (cmd, Some(e)) => self.recipient_command(&t, e, cmd).await,
            (_, None) => {
                self.reply(corr, None, Response::Err(ErrorCode::Syntax))
                    .await
            }
        }
    }

    async fn new_queue(
        &mut self,
        corr: CorrId,
        recipient_key: AuthPublicKey,
        recipient_dh: sotto_protocol::DhPublicKey,
        password: Vec<u8>,
    ) {
        if self.news.check().is_err() {
            self.shared.limited("new_per_session");
            return self
                .reply(corr, None, Response::Err(ErrorCode::Limited))
                .await;
        }
        let expected = self.shared.config.create_password.as_bytes();
        if !expected.is_empty() && !bool::from(expected.ct_eq(password.as_slice())) {
            return self.reply(corr, None, Response::Err(ErrorCode::Auth)).await;
        }
        let mut rng = rand::rngs::OsRng;
        let relay_dh = DhSecretKey::generate(&mut rng);
        let Some(seal_key) = BodySealKey::derive(&relay_dh, &recipient_dh) else {
            return self
                .reply(corr, None, Response::Err(ErrorCode::Syntax))
                .await;
        };
        let now = unix_ms() / 1000;
        let rec = QueueRecord {
            recipient_id: RecipientId::random(&mut rng),
            sender_id: SenderId::random(&mut rng),
            recipient_key,
            sender_key: None,
            relay_dh_public: relay_dh.public(),
            seal_key,
            status: QueueStatus::Active,
            created_at: now,
            last_active: now,
        };
        let answer = Response::Ids {
            recipient_id: rec.recipient_id,
            sender_id: rec.sender_id,
            relay_dh_key: rec.relay_dh_public,
        };
        let store = self.shared.store.clone();
        let metrics = self.shared.metrics.clone();
        self.writes.push(Box::pin(async move {
            let resp = match store.write(WriteOp::CreateQueue(Box::new(rec))).await {
                Ok(WriteOutcome::Done) => answer,
                Ok(_) => Response::Err(ErrorCode::Internal),
                Err(e) => store_error(&e),
            };
            if let Response::Err(code) = &resp {
                metrics.errors.with_label_values(&[code.name()]).inc();
            }
            Completion::Reply(Transmission::response(corr, None, &resp))
        }));
    }

    async fn send(&mut self, t: &Transmission, e: EntityId, flags: u8, body: Vec<u8>) {
        let corr = t.corr_id;
        let prepared = match prepare_send(
            &self.shared,
            t,
            e,
            flags,
            body,
            &self.hash,
            Some(&mut self.secured_senders),
        ) {
            Ok(p) => p,
            Err(resp) => return self.reply(corr, Some(e), resp).await,
        };
        let shared = self.shared.clone();
        self.writes.push(Box::pin(async move {
            let resp = store_send(&shared, prepared).await;
            if let Response::Err(code) = &resp {
                shared.count_error(*code);
            }
            Completion::Reply(Transmission::response(corr, Some(e), &resp))
        }));
    }

    async fn sender_key(&mut self, t: &Transmission, e: EntityId, key: AuthPublicKey) {
        match prepare_sender_key(&self.shared, t, e, key, &self.hash) {
            Ok(queue) => self.push_simple_write(t.corr_id, e, WriteOp::SetSenderKey { queue, key }),
            Err(resp) => self.reply(t.corr_id, Some(e), resp).await,
        }
    }

    /// Runs `op` (KEY, SKEY, OFF) as a write future answered with [`simple_write`]'s answer.
    fn push_simple_write(&mut self, corr: CorrId, e: EntityId, op: WriteOp) {
        let shared = self.shared.clone();
        self.writes.push(Box::pin(async move {
            let resp = simple_write(&shared.store, op).await;
            if let Response::Err(code) = &resp {
                shared.count_error(*code);
            }
            Completion::Reply(Transmission::response(corr, Some(e), &resp))
        }));
    }

    async fn recipient_command(&mut self, t: &Transmission, e: EntityId, cmd: Command) {
        let corr = t.corr_id;
        let rid = RecipientId::from(e);
        if let Command::Ack { msg_id } = cmd {
            // An ACK on a subscription this session holds: the SUB's signature already bound
            // the recipient key to this Noise session, so the ACK may come unsigned; a signed
            // one is checked with the key read at SUB. Only this session's own subscriptions
            // take this path, so its timing tells the session nothing it does not know.
            // Unsigned ACKs anywhere else fall through and are refused with AUTH.
            let queue = self.shared.store.queue_ref(&rid);
            if let Some(key) = self.subs.get(&queue).map(|s| s.recipient_key) {
                if t.signature.is_some() && !t.verify(&key, &self.hash) {
                    return self
                        .reply(corr, Some(e), Response::Err(ErrorCode::Auth))
                        .await;
                }
                return self.ack(corr, e, queue, msg_id).await;
            }
        }
        let found = match self.shared.store.queue(&rid) {
            Ok(f) => f,
            Err(err) => {
                tracing::error!(error = %err, "store read failed");
                return self
                    .reply(corr, Some(e), Response::Err(ErrorCode::Internal))
                    .await;
            }
        };
        let key = found
            .as_ref()
            .map_or(self.shared.dummy_key, |(_, r)| r.recipient_key);
        let valid = t.verify(&key, &self.hash);
        let Some((queue, rec)) = found.filter(|_| valid) else {
            return self
                .reply(corr, Some(e), Response::Err(ErrorCode::Auth))
                .await;
        };
        match cmd {
            Command::Key { sender_key } => {
                self.push_simple_write(
                    corr,
                    e,
                    WriteOp::SetSenderKey {
                        queue,
                        key: sender_key,
                    },
                );
            }
            Command::Off => self.push_simple_write(corr, e, WriteOp::Disable { queue }),
            Command::Del => {
                let store = self.shared.store.clone();
                self.writes.push(Box::pin(async move {
                    let resp = match store.write(WriteOp::DeleteQueue { queue }).await {
                        Ok(WriteOutcome::Done) => Response::Ok,
                        Ok(_) => Response::Err(ErrorCode::Auth),
                        Err(e) => store_error(&e),
                    };
                    Completion::Deleted {
                        queue,
                        reply: Transmission::response(corr, Some(e), &resp),
                    }
                }));
            }
            Command::Sub => {
                if !self.subs.contains_key(&queue)
                    && self.subs.len() >= self.shared.config.limits.subscriptions_per_session
                {
                    self.shared.limited("subscriptions_per_session");
                    return self
                        .reply(corr, Some(e), Response::Err(ErrorCode::Limited))
                        .await;
                }
                self.shared.router.subscribe(queue, &self.inbox);
                self.subs.insert(
                    queue,
                    Sub {
                        recipient_id: rid,
                        recipient_key: rec.recipient_key,
                    },
                );
                self.subscribed.store(self.subs.len(), Ordering::Relaxed);
                self.in_flight.remove(&queue);
                self.touch(queue, &rec);
                self.reply(corr, Some(e), Response::Ok).await;
                self.deliver(queue, None).await;
            }
            Command::Get => {
                self.touch(queue, &rec);
                match self.first_visible(&queue) {
                    Ok(Some(m)) => {
                        self.in_flight.insert(queue, InFlight::of(&m));
                        self.send_msg(corr, e, m.msg).await;
                    }
                    Ok(None) => self.reply(corr, Some(e), Response::NoMsg).await,
                    Err(code) => self.reply(corr, Some(e), Response::Err(code)).await,
                }
            }
            Command::Ack { msg_id } => self.ack(corr, e, queue, msg_id).await,
            _ => {
                self.reply(corr, Some(e), Response::Err(ErrorCode::Syntax))
                    .await
            }
        }
    }

    /// ACK, signature checked: deletes the message in flight on `queue` if it has `msg_id`.
    async fn ack(&mut self, corr: CorrId, e: EntityId, queue: QueueRef, msg_id: MessageId) {
        let Some(f) = self
            .in_flight
            .get(&queue)
            .copied()
            .filter(|f| f.msg_id == msg_id)
        else {
            return self.reply(corr, Some(e), Response::NoMsg).await;
        };
        // On a subscription, the ACK is answered and the next message goes out as soon as the
        // ACK is accepted (both usually in one frame), while the deletion commits. Waiting
        // for the commit would put a store write (queued behind durable SEND batches) into
        // every message's path, and cost a frame of its own for the answer. The answer
        // promises what a committed deletion promises anyway: the message is gone from
        // delivery; the deletion is durable within the store's relaxed-commit bound, and if it
        // fails the message is delivered again (at-least-once, `docs/protocol.md` § 12).
        let early = self.subs.contains_key(&queue);
        if early {
            self.in_flight.remove(&queue);
            self.acked_pending.entry(queue).or_default().push(f.seq);
        }
        // Queued before the answer leaves, so that any write the client causes after seeing
        // the answer commits with this deletion or after it.
        let pending = self
            .shared
            .store
            .submit(WriteOp::DeleteMessage {
                queue,
                seq: f.seq,
                release_at_ms: f.release_at_ms,
                received_ms: f.received_ms,
            })
            .await;
        if early && pending.is_err() {
            // The store is shutting down: nothing was deleted, nothing is promised.
            self.forget_pending_delete(queue, f.seq);
        }
        let early = early && pending.is_ok();
        self.writes.push(Box::pin(async move {
            let outcome = match pending {
                Ok(outcome) => outcome.await,
                Err(e) => Err(e),
            };
            let resp = match outcome {
                Ok(WriteOutcome::Done) => Response::Ok,
                Ok(_) => Response::NoMsg,
                Err(e) => store_error(&e),
            };
            Completion::Acked {
                queue,
                seq: f.seq,
                early,
                reply: Transmission::response(corr, Some(e), &resp),
            }
        }));
        if early {
            // Nobody waits on this answer to act: it rides with the next MSG or any other
            // frame within LAZY_ANSWER_DELAY.
            self.send_out(Transmission::response(corr, Some(e), &Response::Ok), true)
                .await;
            self.deliver(queue, None).await;
        }
    }

    /// Records recipient activity for idle expiry, at most hourly.
    fn touch(&mut self, queue: QueueRef, rec: &QueueRecord) {
        let now = unix_ms() / 1000;
        if now.saturating_sub(rec.last_active) >= 3600 {
            let store = self.shared.store.clone();
            self.writes.push(Box::pin(async move {
                let _ = store.write(WriteOp::Touch { queue, now }).await;
                Completion::Reply(Transmission::response(CorrId::NONE, None, &Response::Drop))
            }));
        }
    }

    /// `seq` of `queue` no longer waits for its deletion to commit.
    fn forget_pending_delete(&mut self, queue: QueueRef, seq: u64) {
        if let Some(v) = self.acked_pending.get_mut(&queue) {
            v.retain(|&s| s != seq);
            if v.is_empty() {
                self.acked_pending.remove(&queue);
            }
        }
    }

    /// The first visible message of `queue`, other than those this session saw
    /// acknowledged and whose deletions are still committing.
    fn first_visible(
        &self,
        queue: &QueueRef,
    ) -> Result<Option<crate::store::StoredMessage>, ErrorCode> {
        let skip = self.acked_pending.get(queue).map_or(&[][..], Vec::as_slice);
        self.shared
            .store
            .first_visible_except(queue, skip, unix_ms())
            .map_err(|e| {
                tracing::error!(error = %e, "store read failed");
                ErrorCode::Internal
            })
    }

    /// Sends a stored message as MSG: its body was sealed for the recipient when it was
    /// stored.
    async fn send_msg(&mut self, corr: CorrId, e: EntityId, m: NewMessage) {
        let sealed_body = m.body.into_bytes();
        self.shared.metrics.messages_delivered.inc();
        self.reply(
            corr,
            Some(e),
            Response::Msg {
                msg_id: m.msg_id,
                timestamp: m.timestamp,
                flags: m.flags,
                sealed_body,
            },
        )
        .await;
    }

    /// Pushes the next visible message of a subscribed queue, unless one is in flight.
    async fn deliver(&mut self, queue: QueueRef, _hint: Option<()>) {
        if self.in_flight.contains_key(&queue) {
            return;
        }
        let Some(sub) = self.subs.get(&queue) else {
            return;
        };
        let rid = sub.recipient_id;
        match self.first_visible(&queue) {
            Ok(Some(m)) => {
                self.in_flight.insert(queue, InFlight::of(&m));
                self.send_msg(CorrId::NONE, rid.into(), m.msg).await;
            }
            Ok(None) => {}
            Err(_) => {}
        }
    }

    async fn complete(&mut self, done: Completion) {
        match done {
            Completion::Reply(t) => {
                if t.corr_id == CorrId::NONE && t.entity.is_none() {
                    return; // internal write (touch)
                }
                self.send_out(t, false).await;
            }
            Completion::Acked {
                queue,
                seq,
                early,
                reply,
            } => {
                if !early {
                    self.in_flight.remove(&queue);
                }
                // The deletion is decided either way: committed (the store no longer has the
                // message) or failed (the message stays and may be delivered again).
                self.forget_pending_delete(queue, seq);
                match reply.decode_response() {
                    Ok(Response::Ok) => self.shared.metrics.messages_acked.inc(),
                    Ok(Response::Err(code)) => {
                        if early {
                            tracing::warn!(
                                "deleting an acknowledged message failed; it will be delivered again"
                            );
                        }
                        self.shared.count_error(code);
                    }
                    _ => {}
                }
                if !early {
                    // Early ACKs were answered when accepted.
                    self.send_out(reply, false).await;
                }
                self.deliver(queue, None).await;
            }
            Completion::Deleted { queue, reply } => {
                match reply.decode_response() {
                    Ok(Response::Ok) => {
                        self.shared.router.end(&queue, self.id);
                        self.subs.remove(&queue);
                        self.subscribed.store(self.subs.len(), Ordering::Relaxed);
                        self.in_flight.remove(&queue);
                        self.acked_pending.remove(&queue);
                    }
                    Ok(Response::Err(code)) => self.shared.count_error(code),
                    _ => {}
                }
                self.send_out(reply, false).await;
            }
        }
    }

    async fn drain_inbox(&mut self) {
        let ended: Vec<QueueRef> = lock(&self.inbox.end).drain().collect();
        for q in ended {
            if let Some(sub) = self.subs.remove(&q) {
                self.in_flight.remove(&q);
                self.subscribed.store(self.subs.len(), Ordering::Relaxed);
                self.reply(CorrId::NONE, Some(sub.recipient_id.into()), Response::End)
                    .await;
            }
        }
        let woken: Vec<QueueRef> = lock(&self.inbox.wake).drain().collect();
        for q in woken {
            self.deliver(q, None).await;
        }
    }
}

/// FWD and RFWD (`docs/protocol.md` § 10a). Both run as write futures, so a slow destination
/// or a replay-memory write never blocks the session loop, and both count against
/// [`MAX_IN_FLIGHT`].
impl Session {
    /// FWD: passes the sealed blob to the destination (as RFWD) and its answer back. This
    /// relay cannot read the blob and neither logs nor stores it.
    fn forward(&mut self, corr: CorrId, relay: RelayAddress, sealed: Vec<u8>) {
        let shared = self.shared.clone();
        self.writes.push(Box::pin(async move {
            let resp = match shared.forwarder.forward(&relay, sealed).await {
                Ok(sealed) => Response::FwdAnswer { sealed },
                Err(code) => {
                    shared.count_error(code);
                    Response::Err(code)
                }
            };
            Completion::Reply(Transmission::response(corr, None, &resp))
        }));
    }

    /// RFWD: opens the sealed request, checks its expiry and the replay memory, executes
    /// the SEND/SKEY inside locally and seals the answer. An RFWD is never forwarded
    /// further, so chains and loops cannot arise.
    fn forwarded(&mut self, corr: CorrId, sealed: Vec<u8>) {
        let shared = self.shared.clone();
        let session = self.id;
        self.writes.push(Box::pin(async move {
            let resp = execute_forwarded(&shared, session, &sealed).await;
            if let Response::Err(code) = &resp {
                shared.count_error(*code);
            }
            Completion::Reply(Transmission::response(corr, None, &resp))
        }));
    }
}

/// The destination's processing of RFWD, in the order of `docs/protocol.md` § 10a.4. Errors
/// before execution are returned unsealed; the inner command's answer is sealed.
async fn execute_forwarded(shared: &Shared, session: u64, sealed: &[u8]) -> Response {
    use sotto_protocol::forward::{self, ForwardError};
    let opened = match forward::open_request(&shared.key, sealed) {
        Ok(o) => o,
        Err(ForwardError::Malformed(_)) => return Response::Err(ErrorCode::Syntax),
        Err(_) => return Response::Err(ErrorCode::Auth),
    };
    let now = unix_ms() / 1000;
    if !forward::expiry_acceptable(opened.expiry, now) {
        return Response::Err(ErrorCode::Replay);
    }
    // Durably remembered before anything else happens, so a replay can have no effect even
    // across a crash.
    let op = WriteOp::RecordForward {
        ephemeral: opened.ephemeral,
        expiry: opened.expiry,
        now,
    };
    match shared.store.write(op).await {
        Ok(WriteOutcome::Done) => {}
        Ok(WriteOutcome::Replayed) => return Response::Err(ErrorCode::Replay),
        Ok(WriteOutcome::ForwardMemoryFull) => {
            tracing::warn!("replay memory of forwarded requests is full; refusing RFWD");
            return Response::Err(ErrorCode::Limited);
        }
        Ok(_) => return Response::Err(ErrorCode::Internal),
        Err(e) => return store_error(&e),
    }
    let t = &opened.transmission;
    let inner = execute_inner(shared, session, t, &opened.handshake_hash).await;
    if let Response::Err(code) = &inner {
        shared.count_error(*code);
    }
    let answer = Transmission::response(t.corr_id, t.entity, &inner);
    match opened.answer_key.seal(&answer, &mut rand::rngs::OsRng) {
        Ok(sealed) => Response::FwdAnswer { sealed },
        Err(e) => {
            tracing::error!(error = %e, "cannot seal the answer to a forwarded command");
            Response::Err(ErrorCode::Internal)
        }
    }
}

/// The SEND or SKEY inside an RFWD, with the sealed request's handshake hash as the
/// signature binding.
async fn execute_inner(
    shared: &Shared,
    session: u64,
    t: &Transmission,
    hash: &[u8; 32],
) -> Response {
    let cmd = match t.decode_command() {
        Ok(c) => c,
        Err(DecodeError::TooLong { .. }) => return Response::Err(ErrorCode::Large),
        Err(_) => return Response::Err(ErrorCode::Syntax),
    };
    if matches!(cmd, Command::Send { .. } | Command::SKey { .. }) {
        shared
            .metrics
            .commands
            .with_label_values(&[cmd.name()])
            .inc();
    }
    if shared.config.log.sensitive {
        // Only with `log.sensitive`: ids identify queues (see docs/operator.md).
        tracing::debug!(
            session,
            command = cmd.name(),
            entity = %t.entity.map(|e| e.to_string()).unwrap_or_default(),
            "forwarded command"
        );
    }
    match (cmd, t.entity) {
        (Command::Send { flags, body }, Some(e)) => {
            forwarded_send(shared, t, e, flags, body, hash).await
        }
        (Command::SKey { sender_key }, Some(e)) => {
            forwarded_sender_key(shared, t, e, sender_key, hash).await
        }
        _ => Response::Err(ErrorCode::Syntax),
    }
}

/// A forwarded SEND: the same checks and effect as a SEND in a session (§ 9.2), with the
/// same work for unknown and known queues.
async fn forwarded_send(
    shared: &Shared,
    t: &Transmission,
    e: EntityId,
    flags: u8,
    body: Vec<u8>,
    hash: &[u8; 32],
) -> Response {
    match prepare_send(shared, t, e, flags, body, hash, None) {
        Ok(prepared) => store_send(shared, prepared).await,
        Err(resp) => resp,
    }
}

/// A SEND that passed its checks: the message to store and when it is released.
struct PreparedSend {
    queue: QueueRef,
    msg: NewMessage,
    received_ms: u64,
    release_at: u64,
}

/// Checks a SEND — queue lookup by sender id, signature (over `hash`: the session's
/// handshake hash, or a forwarded request's), queue status — doing the same work whether or
/// not the queue exists, and builds the message to store. Shared by a session's SEND and a
/// forwarded one; `Err` is the answer to give.
fn prepare_send(
    shared: &Shared,
    t: &Transmission,
    e: EntityId,
    flags: u8,
    body: Vec<u8>,
    hash: &[u8; 32],
    known: Option<&mut SecuredSenders>,
) -> Result<PreparedSend, Response> {
    let sid = SenderId::from(e);
    if let Some((queue, key, seal_key)) = known.as_deref().and_then(|k| k.get(&sid)) {
        // A secured queue this session has sent to: its sender key never changes, and the
        // store write checks that the queue still exists and is active.
        return if t.verify(key, hash) {
            Ok(new_send(shared, *queue, seal_key, flags, &body))
        } else {
            Err(Response::Err(ErrorCode::Auth))
        };
    }
    let found = match shared.store.queue_by_sender(&sid) {
        Ok(f) => f,
        Err(err) => {
            tracing::error!(error = %err, "store read failed");
            return Err(Response::Err(ErrorCode::Internal));
        }
    };
    let authorised = match &found {
        Some((_, rec)) => match rec.sender_key {
            Some(k) => t.verify(&k, hash),
            // Unsecured queue: unsigned SEND only.
            None => t.signature.is_none() || t.verify(&shared.dummy_key, hash),
        },
        None => {
            let _ = t.verify(&shared.dummy_key, hash);
            false
        }
    };
    let Some((queue, rec)) = found.filter(|_| authorised) else {
        return Err(Response::Err(ErrorCode::Auth));
    };
    if rec.status != QueueStatus::Active {
        return Err(Response::Err(ErrorCode::Prohibited));
    }
    let prepared = new_send(shared, queue, &rec.seal_key, flags, &body);
    if let (Some(known), Some(key)) = (known, rec.sender_key) {
        known.insert(sid, queue, key, rec.seal_key);
    }
    Ok(prepared)
}

/// The message a checked SEND stores — its body sealed for the recipient now, so that
/// delivery sends the stored bytes as they are — with its receipt time and drawn release
/// time.
fn new_send(
    shared: &Shared,
    queue: QueueRef,
    seal_key: &BodySealKey,
    flags: u8,
    body: &[u8],
) -> PreparedSend {
    let now = unix_ms();
    let release_at = lock(&shared.sampler).release_at(now);
    let gran = shared
        .config
        .delivery
        .timestamp_granularity
        .as_secs()
        .max(1);
    let msg_id = MessageId::random(&mut rand::rngs::OsRng);
    let msg = NewMessage {
        msg_id,
        timestamp: (now / 1000) / gran * gran,
        received_ms: now,
        release_at_ms: release_at,
        flags,
        body: SealedBody::seal(seal_key, &msg_id, body),
    };
    PreparedSend {
        queue,
        msg,
        received_ms: now,
        release_at,
    }
}

/// Secured queues a session has sent to, by sender id, with the sender key that secures
/// them, so that its next SENDs skip the store lookup (two table reads, a record decryption
/// and two Ed25519 point decompressions). Sound because a queue's sender key never changes
/// once set, and the store write itself refuses a SEND to a queue deleted or turned off
/// since. At most [`SECURED_SENDERS`] entries (≈ 250 bytes each, ≈ 16 KiB), allocated on a
/// session's first SEND; when full it starts again empty.
#[derive(Default)]
struct SecuredSenders(HashMap<SenderId, (QueueRef, AuthPublicKey, BodySealKey)>);

/// Bound of [`SecuredSenders`].
const SECURED_SENDERS: usize = 64;

impl SecuredSenders {
    fn get(&self, id: &SenderId) -> Option<&(QueueRef, AuthPublicKey, BodySealKey)> {
        self.0.get(id)
    }

    fn insert(&mut self, id: SenderId, queue: QueueRef, key: AuthPublicKey, seal: BodySealKey) {
        if self.0.len() >= SECURED_SENDERS && !self.0.contains_key(&id) {
            self.0 = HashMap::new();
        }
        self.0.insert(id, (queue, key, seal));
    }
}

/// Stores a checked SEND (one durable write) and hands it to the scheduler; the answer
/// for the sender.
async fn store_send(shared: &Shared, p: PreparedSend) -> Response {
    let PreparedSend {
        queue,
        msg,
        received_ms,
        release_at,
    } = p;
    let op = WriteOp::Append {
        queue,
        msg,
        quota: shared.config.queues.quota,
    };
    match shared.store.write(op).await {
        Ok(WriteOutcome::Appended { .. }) => {
            shared.metrics.messages_sent.inc();
            // The scheduler wakes the subscriber at release time; if its queue is full the
            // message is still stored and visible after release (the recipient sees it on
            // its next SUB/GET/ACK).
            let _ = shared
                .scheduler
                .send(Pending {
                    item: queue,
                    inserted_at: received_ms,
                    release_at,
                })
                .await;
            Response::Ok
        }
        Ok(WriteOutcome::QuotaExceeded) => Response::Err(ErrorCode::Quota),
        Ok(WriteOutcome::NoQueue) => Response::Err(ErrorCode::Auth),
        Ok(WriteOutcome::Disabled) => Response::Err(ErrorCode::Prohibited),
        Ok(_) => Response::Err(ErrorCode::Internal),
        Err(e) => store_error(&e),
    }
}

/// A forwarded SKEY: signed by the key it installs, over the sealed request's hash.
async fn forwarded_sender_key(
    shared: &Shared,
    t: &Transmission,
    e: EntityId,
    key: AuthPublicKey,
    hash: &[u8; 32],
) -> Response {
    match prepare_sender_key(shared, t, e, key, hash) {
        Ok(queue) => simple_write(&shared.store, WriteOp::SetSenderKey { queue, key }).await,
        Err(resp) => resp,
    }
}

/// Checks an SKEY — queue lookup by sender id, a signature by the key it installs (proof of
/// possession, over `hash`: the session's handshake hash or a forwarded request's), no other
/// sender key already set, queue active — and returns the queue; `Err` is the answer to
/// give. Shared by a session's SKEY and a forwarded one.
fn prepare_sender_key(
    shared: &Shared,
    t: &Transmission,
    e: EntityId,
    key: AuthPublicKey,
    hash: &[u8; 32],
) -> Result<QueueRef, Response> {
    let found = match shared.store.queue_by_sender(&SenderId::from(e)) {
        Ok(f) => f,
        Err(err) => {
            tracing::error!(error = %err, "store read failed");
            return Err(Response::Err(ErrorCode::Internal));
        }
    };
    let valid = t.verify(&key, hash);
    let Some((queue, rec)) = found.filter(|_| valid) else {
        return Err(Response::Err(ErrorCode::Auth));
    };
    if rec.sender_key.is_some_and(|k| k != key) || rec.status != QueueStatus::Active {
        return Err(Response::Err(ErrorCode::Prohibited));
    }
    Ok(queue)
}

/// One store write whose answer is OK or an error code (KEY, SKEY, OFF).
async fn simple_write(store: &Store, op: WriteOp) -> Response {
    match store.write(op).await {
        Ok(WriteOutcome::Done) => Response::Ok,
        Ok(WriteOutcome::NoQueue) => Response::Err(ErrorCode::Auth),
        Ok(WriteOutcome::KeyConflict | WriteOutcome::Disabled) => {
            Response::Err(ErrorCode::Prohibited)
        }
        Ok(_) => Response::Err(ErrorCode::Internal),
        Err(e) => store_error(&e),
    }
}

fn store_error(e: &StoreError) -> Response {
    tracing::warn!(error = %e, "store write refused");
    match e {
        StoreError::Io(_) => Response::Err(ErrorCode::Store),
        _ => Response::Err(ErrorCode::Internal),
    }
}

/// Queue records the idle-queue sweep examines per store write (≈ 3 ms of the writer's
/// time: one small AEAD open each; keys are decoded only for queues that go).
const IDLE_SCAN_CHUNK: usize = 1024;

/// Longest pause between two chunks of the idle-queue sweep.
const IDLE_SCAN_MAX_PAUSE: Duration = Duration::from_secs(1);

/// TTL and idle-queue expiry. Every `expiry_interval` it walks the store in chunks of
/// [`IDLE_SCAN_CHUNK`] queues, each its own short write, paced to spread one sweep over at
/// most a quarter of the interval: with 1 000 000 queues a sweep costs the writer ≈ 3 s of
/// CPU in ≈ 1 000 slices instead of one ≈ 5 s transaction that stalled every SEND.
async fn expiry_task(shared: Arc<Shared>) {
    let q = &shared.config.queues;
    let mut tick = tokio::time::interval(q.expiry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = unix_ms() / 1000;
        let chunks = shared.store.counts().map_or(1, |(queues, _)| {
            queues.div_ceil(IDLE_SCAN_CHUNK as u64).max(1)
        });
        let pause = (q.expiry_interval / 4)
            .checked_div(u32::try_from(chunks).unwrap_or(u32::MAX))
            .unwrap_or(Duration::ZERO)
            .min(IDLE_SCAN_MAX_PAUSE);
        let (mut messages, mut queues) = (0u64, 0u64);
        let mut scan_after = None;
        loop {
            let op = WriteOp::Expire {
                messages_before: now.saturating_sub(q.message_ttl.as_secs()),
                queues_idle_before: now.saturating_sub(q.idle_expiry.as_secs()),
                max: 1000,
                scan_after,
                scan: IDLE_SCAN_CHUNK,
            };
            match shared.store.write(op).await {
                Ok(WriteOutcome::Expired {
                    messages: m,
                    queues: n,
                    more,
                    next_scan,
                }) => {
                    shared.metrics.messages_expired.inc_by(m);
                    shared.metrics.queues_expired.inc_by(n);
                    messages += m;
                    queues += n;
                    scan_after = next_scan;
                    if !more && next_scan.is_none() {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "expiry failed; will retry");
                    break;
                }
            }
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
        if messages + queues > 0 {
            tracing::info!(messages, queues, "expired");
        }
    }
}

async fn gauge_task(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok((q, m)) = shared.store.counts() {
            shared
                .metrics
                .queues
                .set(i64::try_from(q).unwrap_or(i64::MAX));
            shared
                .metrics
                .stored_messages
                .set(i64::try_from(m).unwrap_or(i64::MAX));
        }
    }
}

async fn limiter_prune_task(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.handshake_limiter.retain_recent();
        shared.handshake_limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    #[test]
    fn sources_are_keyed_by_ipv4_address_or_ipv6_prefix() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_eq!(source_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(source_key(a), source_key(other));
    }
}

#[cfg(test)]
mod critical_tests {
    use super::*;

    /// A critical task that panics or returns before shutdown fails the relay; one that
    /// returns after shutdown does not.
    #[tokio::test]
    async fn a_critical_task_that_stops_fails_the_relay_unless_shutting_down() {
        let tracker = TaskTracker::new();
        let (shutdown, failed) = (CancellationToken::new(), CancellationToken::new());
        spawn_critical(
            &tracker,
            "panicking",
            Box::pin(async { panic!("injected") }),
            &shutdown,
            &failed,
        );
        tokio::time::timeout(Duration::from_secs(10), failed.cancelled())
            .await
            .expect("a panic fails the relay");

        let (shutdown, failed) = (CancellationToken::new(), CancellationToken::new());
        spawn_critical(
            &tracker,
            "returning",
            Box::pin(async {}),
            &shutdown,
            &failed,
        );
        tokio::time::timeout(Duration::from_secs(10), failed.cancelled())
            .await
            .expect("an early return fails the relay");

        let (shutdown, failed) = (CancellationToken::new(), CancellationToken::new());
        let waits = shutdown.clone();
        spawn_critical(
            &tracker,
            "orderly",
            Box::pin(async move { waits.cancelled().await }),
            &shutdown,
            &failed,
        );
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        assert!(
            !failed.is_cancelled(),
            "ending at shutdown is not a failure"
        );
    }
}
