//! The relay server: [`start`] wires the store, the scheduler, the listeners and the relay's
//! tasks together; [`RunningRelay`] is the handle that stops them.
//!
//! The rooms (after mini-redis `server.rs`):
//! - `listener`: an accept loop per transport (QUIC; TLS over TCP when `listen_tcp` is on)
//!   admits connections under the same session caps and handshake rate limits (refusing
//!   with a metric rather than blocking accept) and spawns one task per connection; after
//!   the handshake both transports run the same session code;
//! - `session`: one connection's loop, which owns the session state (subscriptions, messages
//!   in flight) and runs store writes concurrently so many SENDs of one session share a group
//!   commit; `session::frames` holds its reader task (records → frames) and writer task
//!   (transmissions → greedily batched frames, plus optional cover frames, and the ticks
//!   of a session paced by PACE),
//!   `session::recipient` the recipient's commands and delivery on subscriptions;
//! - `commands`: SEND and SKEY as both a session and a forwarded request run them, and how a
//!   store outcome becomes an answer;
//! - `router`: maps each subscribed queue to the one session subscribed to it, and wakes it
//!   when the scheduler (see [`crate::scheduler`]) releases a message;
//! - [`forward`]: FWD (this relay forwarding for its clients) and RFWD (this relay executing
//!   what another forwards);
//! - `maintenance`: TTL and idle-queue expiry, gauges, pruning of the handshake limiter;
//! - `supervise`: the tasks the relay cannot serve without.
//!
//! This file owns the start-up order, the state every task shares (`Shared`) and the
//! shutdown handle; it holds no per-connection logic.
//!
//! Shutdown is cooperative: a [`CancellationToken`] stops accepting, sessions finish their
//! in-flight store writes and close, the writer thread drains.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::SeedableRng as _;
use sotto_protocol::{
    AuthPublicKey, AuthSecretKey, CorrId, EntityId, ErrorCode, RelayAddress, RelayStaticKey,
    Response, Transmission,
};
use sotto_transport as transport;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::datadir::{self, Identity};
use crate::metrics::Metrics;
use crate::scheduler::{self, DelaySampler, Pending, Scheduler, SchedulerMetrics};
use crate::store::{QueueRef, Store, StoreMetrics, StoreOptions};

mod commands;
pub mod forward;
mod listener;
mod maintenance;
mod router;
mod session;
mod supervise;

use router::Router;
use supervise::{BoxFuture, spawn_critical};

/// Bound of the scheduler's input channel (≈ 56 bytes per entry).
const SCHEDULER_QUEUE: usize = 65_536;

/// Largest batch the scheduler releases at once.
const RELEASE_BATCH: usize = 1024;

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
                full: metrics.store_full.clone(),
                read_only: metrics.store_read_only.clone(),
            }),
            max_store_bytes: config.store.max_mib.saturating_mul(1 << 20),
            reserve_bytes: config.store.reserve_mib.saturating_mul(1 << 20),
            ..StoreOptions::default()
        },
    )?;
    if config.store.unsafe_no_fsync {
        tracing::warn!(
            "store.unsafe_no_fsync is ON: acknowledged messages can be lost on a crash (benchmarks only)"
        );
    }
    let endpoint = listener::bind_quic(&identity, &config)?;
    let local_addr = endpoint.local_addr()?;
    let mut address = datadir::address(&identity.relay_key, &config, local_addr.port())?;
    let tcp_listener = listener::bind_tcp(&identity, &config).await?;
    if let Some((_, _, bound)) = &tcp_listener {
        // The bound port, which differs from the configured one when that is 0.
        address.tcp = Some(bound.port());
    }
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
                    format!(
                        "cannot serve metrics on {a} (another relay on this \
                         host?): set --metrics off or another address (`metrics` in config.toml; \
                         see docs/operator.md, \"Several relays on one host\")"
                    )
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
    let (released_tx, released_rx) = mpsc::channel::<Vec<scheduler::Released<QueueRef>>>(64);
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
    let forwarder = Arc::new(forward::Forwarder::new(
        endpoint.clone(),
        identity.relay_key.public(),
        &config.forwarding,
        config.quic.options(),
        config.log.sensitive,
        &metrics,
        shutdown.clone(),
    )?);
    critical(
        "forward sweeper",
        Box::pin(forwarder.clone().run_sweeper(shutdown.clone())),
    );

    let shared = Arc::new(Shared {
        forwarder,
        sampler: Mutex::new(DelaySampler::new(
            config.delivery.delay_mode()?,
            rand::rngs::StdRng::from_entropy(),
        )),
        handshake_limiter: RateLimiter::keyed(per_second_burst_2x(
            config.limits.handshakes_per_ip_per_s,
        )),
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
            Box::pin(async move { shared.router.wake_released(released_rx).await }),
        );
    }
    critical("expiry", Box::pin(maintenance::expiry_task(shared.clone())));
    critical("gauges", Box::pin(maintenance::gauge_task(shared.clone())));
    critical(
        "limiter pruning",
        Box::pin(maintenance::limiter_prune_task(shared.clone())),
    );
    critical(
        "QUIC accept loop",
        Box::pin(listener::quic_accept_loop(
            endpoint.clone(),
            shared.clone(),
            tracker.clone(),
        )),
    );
    if let Some((listener, acceptor, _)) = tcp_listener {
        critical(
            "TCP accept loop",
            Box::pin(listener::tcp_accept_loop(
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
    /// Handshakes per source (see [`listener::source_key`]). Keys are held only in memory,
    /// pruned every minute, and capped at [`listener::MAX_TRACKED_SOURCES`] (≤ ≈ 5 MiB).
    handshake_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Open sessions and handshakes in progress per source (see [`listener::source_key`]);
    /// entries are removed at zero, so at most `limits.max_sessions` entries (≈ 50 bytes each).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    sessions: AtomicUsize,
    next_session: AtomicU64,
    /// Sessions to destination relays for FWD (bounded, see [`forward`]).
    forwarder: Arc<forward::Forwarder>,
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

    /// The transmission answering `corr` on `entity` with `resp`; an error answer is counted
    /// by its code.
    fn answer(&self, corr: CorrId, entity: Option<EntityId>, resp: &Response) -> Transmission {
        if let Response::Err(code) = resp {
            self.count_error(*code);
        }
        Transmission::response(corr, entity, resp)
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

/// `n` per second with bursts of `2n` (a limit of 0 counts as 1).
fn per_second_burst_2x(n: u32) -> Quota {
    Quota::per_second(nonzero(n)).allow_burst(nonzero(n.saturating_mul(2)))
}

/// `n` as a limit: 0 counts as 1.
fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Locks `m`, whether or not another thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the data (sets, maps and timestamps) stays
    // consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
