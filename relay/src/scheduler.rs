//! The delivery scheduler task: the one owner of the relay's pool of delayed messages.
//!
//! # What this module owns
//!
//! * [`run`] is the one task that owns a [`Scheduler`]: it reads new entries from a
//!   bounded channel, sleeps until the next deadline and hands due entries to the
//!   relay in batches.
//! * [`SchedulerMetrics`]: the pool size and the realised delays.
//!
//! The pool itself, the delay modes and the sampler are sans-IO and live in
//! [`sotto_timing::delay`] (re-exported here), where the simulator uses the same code; its
//! documentation says why delays are exponential, what the cap and rounds cost, and why
//! release times are wall-clock [`UnixMillis`].
//!
//! # Why the task re-reads the wall clock
//!
//! Release times are stored with the message and survive a restart, so they are wall-clock
//! time. The wall clock can step. If it steps **backwards**, [`run`] reads the clock again
//! before every release and never releases a message before its release time, even if
//! tokio's timer fires first. If it steps **forwards** (NTP, or a machine resuming from
//! suspend, which the monotonic clock behind tokio's timers does not count), [`run`]
//! notices within [`MAX_SLEEP`], because it never sleeps longer than that while the pool
//! is non-empty.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use sotto_timing::delay::{
    DelayMode, DelaySampler, Pending, Released, Scheduler, UnixMillis, ks_distance_exponential,
};

/// Longest single sleep of [`run`] while the pool is non-empty.
///
/// Bounds how late a release can be after the wall clock steps forwards (tokio's
/// timers follow the monotonic clock, which does not see the step).
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Metrics the scheduler task keeps up to date. No labels: nothing per queue.
#[derive(Debug, Clone)]
pub struct SchedulerMetrics {
    /// Number of messages in the pool (the anonymity set of the next release).
    pub pool_size: prometheus::IntGauge,
    /// Realised delay of each released message: actual release time minus
    /// `inserted_at`, in seconds.
    pub delay_seconds: prometheus::Histogram,
}

impl SchedulerMetrics {
    /// Creates `sotto_scheduler_pool_size` and `sotto_scheduler_delay_seconds`
    /// (buckets from 10 ms doubling to about 87 minutes) and registers them.
    ///
    /// # Errors
    ///
    /// Fails if `registry` already holds metrics with these names.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let pool_size = prometheus::IntGauge::new(
            "sotto_scheduler_pool_size",
            "Messages stored but not yet released by the delivery scheduler.",
        )?;
        let buckets = prometheus::exponential_buckets(0.01, 2.0, 20)?;
        let delay_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "sotto_scheduler_delay_seconds",
                "Realised delivery delay: release time minus storage time.",
            )
            .buckets(buckets),
        )?;
        registry.register(Box::new(pool_size.clone()))?;
        registry.register(Box::new(delay_seconds.clone()))?;
        Ok(Self {
            pool_size,
            delay_seconds,
        })
    }

    fn record(&self, core_len: usize, released: &[Released<impl Sized>], now: UnixMillis) {
        self.pool_size
            .set(i64::try_from(core_len).unwrap_or(i64::MAX));
        for entry in released {
            let delay_ms = now.saturating_sub(entry.inserted_at);
            self.delay_seconds.observe(delay_ms as f64 / 1000.0);
        }
    }
}

/// The scheduler task: owns `core` until shutdown and returns it.
///
/// Selects over, in priority order:
/// 1. `shutdown`: moves whatever is still buffered in `input` into the pool and
///    returns the pool;
/// 2. when an entry is due (`release_at <= clock()`): room in `output`, then
///    sends a batch of at most `batch` due entries (re-reading `clock()` first,
///    so a backwards step of the wall clock never releases anything early). If
///    `output` is full the task waits (backpressure) while still accepting input
///    and honouring shutdown; no entry leaves the pool before there is room for
///    it, so none is lost on shutdown;
/// 3. new entries from `input` (up to `batch` at a time; each turn of the loop
///    also takes up to `batch` already-buffered entries without waiting, so a
///    backlog of due messages does not hold up new ones, nor the reverse);
/// 4. a tokio sleep until the next deadline as computed from `clock()`, never
///    longer than [`MAX_SLEEP`].
///
/// All messages due at once (a whole round in [`DelayMode::Rounds`]) leave in
/// consecutive batches without sleeping in between. When `input` is closed the
/// task keeps releasing until the pool is empty, then returns it. When `output`
/// is closed it returns at once with what is left. A `batch` of 0 is treated
/// as 1.
///
/// `clock` is the wall clock ([`UnixMillis`]); tests pass a fake one and pause
/// tokio's time.
pub async fn run<T: Send + 'static>(
    mut core: Scheduler<T>,
    mut input: mpsc::Receiver<Pending<T>>,
    output: mpsc::Sender<Vec<Released<T>>>,
    shutdown: CancellationToken,
    clock: impl Fn() -> UnixMillis + Send + 'static,
    metrics: Option<SchedulerMetrics>,
    batch: usize,
) -> Scheduler<T> {
    let batch = batch.max(1);
    let mut input_open = true;
    // Bounded by `batch`: `recv_many` never pushes more than that.
    let mut incoming: Vec<Pending<T>> = Vec::with_capacity(batch);

    loop {
        if let Some(metrics) = &metrics {
            metrics
                .pool_size
                .set(i64::try_from(core.len()).unwrap_or(i64::MAX));
        }
        // Take what is already waiting without blocking, so that neither a backlog
        // of due messages nor a stream of new ones starves the other.
        if input_open {
            input_open = absorb_ready(&mut core, &mut input, batch);
        }
        let now = clock();
        let next = core.next_deadline();
        if next.is_none() && !input_open {
            return core;
        }

        if next.is_some_and(|deadline| deadline <= now) {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    absorb_remaining_input(&mut core, &mut input);
                    return core;
                }
                permit = output.reserve() => {
                    let Ok(permit) = permit else {
                        // Nobody to deliver to: keep the rest for the caller.
                        absorb_remaining_input(&mut core, &mut input);
                        return core;
                    };
                    // Re-read the wall clock: it may have stepped back while we
                    // waited for room, and nothing may leave early.
                    let now = clock();
                    let released = core.pop_due(now, batch);
                    if !released.is_empty() {
                        if let Some(metrics) = &metrics {
                            metrics.record(core.len(), &released, now);
                        }
                        permit.send(released);
                    }
                }
                received = input.recv_many(&mut incoming, batch), if input_open => {
                    input_open = absorb(&mut core, &mut incoming, received);
                }
            }
        } else {
            // `deadline > now` in this branch, so the subtraction cannot underflow.
            let sleep_for =
                next.map(|deadline| Duration::from_millis(deadline - now).min(MAX_SLEEP));
            let wake_at = tokio::time::Instant::now() + sleep_for.unwrap_or(MAX_SLEEP);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    absorb_remaining_input(&mut core, &mut input);
                    return core;
                }
                received = input.recv_many(&mut incoming, batch), if input_open => {
                    input_open = absorb(&mut core, &mut incoming, received);
                }
                () = tokio::time::sleep_until(wake_at), if sleep_for.is_some() => {}
            }
        }
    }
}

/// Moves what `recv_many` returned into the pool; returns whether the channel is
/// still open (`recv_many` returns 0 only once it is closed and empty).
fn absorb<T>(core: &mut Scheduler<T>, incoming: &mut Vec<Pending<T>>, received: usize) -> bool {
    for pending in incoming.drain(..) {
        core.insert(pending.item, pending.inserted_at, pending.release_at);
    }
    received > 0
}

/// Moves up to `max` already-buffered entries into the pool without waiting;
/// returns whether the channel is still open.
fn absorb_ready<T>(
    core: &mut Scheduler<T>,
    input: &mut mpsc::Receiver<Pending<T>>,
    max: usize,
) -> bool {
    for _ in 0..max {
        match input.try_recv() {
            Ok(pending) => core.insert(pending.item, pending.inserted_at, pending.release_at),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

/// On the way out: closes `input` so that no sender can add more, and moves what
/// is already buffered (at most the channel's capacity) into the pool.
fn absorb_remaining_input<T>(core: &mut Scheduler<T>, input: &mut mpsc::Receiver<Pending<T>>) {
    input.close();
    while let Ok(pending) = input.try_recv() {
        core.insert(pending.item, pending.inserted_at, pending.release_at);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};

    use super::*;

    /// A fake wall clock for the async tests: tokio's (paused) clock plus an
    /// offset the test can step, like NTP stepping the system clock.
    #[derive(Clone)]
    struct FakeClock {
        start: tokio::time::Instant,
        offset_ms: Arc<AtomicI64>,
    }

    impl FakeClock {
        fn new() -> Self {
            Self {
                start: tokio::time::Instant::now(),
                offset_ms: Arc::new(AtomicI64::new(0)),
            }
        }

        fn now(&self) -> UnixMillis {
            let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
            let offset = self.offset_ms.load(AtomicOrdering::SeqCst);
            u64::try_from(elapsed + offset).unwrap_or(0)
        }

        fn step(&self, delta_ms: i64) {
            self.offset_ms.fetch_add(delta_ms, AtomicOrdering::SeqCst);
        }

        fn closure(&self) -> impl Fn() -> UnixMillis + Send + 'static {
            let clock = self.clone();
            move || clock.now()
        }
    }

    struct Harness {
        input: mpsc::Sender<Pending<u32>>,
        output: mpsc::Receiver<Vec<Released<u32>>>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<Scheduler<u32>>,
    }

    fn start(
        clock: &FakeClock,
        output_capacity: usize,
        batch: usize,
        metrics: Option<SchedulerMetrics>,
    ) -> Harness {
        let (input, input_rx) = mpsc::channel(64);
        let (output_tx, output) = mpsc::channel(output_capacity);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            Scheduler::new(),
            input_rx,
            output_tx,
            shutdown.clone(),
            clock.closure(),
            metrics,
            batch,
        ));
        Harness {
            input,
            output,
            shutdown,
            task,
        }
    }

    async fn send(h: &Harness, item: u32, inserted_at: UnixMillis, release_at: UnixMillis) {
        let pending = Pending {
            item,
            inserted_at,
            release_at,
        };
        assert!(h.input.send(pending).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn run_releases_on_time_in_bounded_batches() {
        let clock = FakeClock::new();
        let registry = prometheus::Registry::new();
        let metrics = SchedulerMetrics::register(&registry).ok();
        assert!(metrics.is_some());
        let mut h = start(&clock, 4, 3, metrics.clone());
        // Seven due at 1000 ms (more than one batch), two at 2500 ms.
        for item in 0..7 {
            send(&h, item, 0, 1_000).await;
        }
        send(&h, 100, 0, 2_500).await;
        send(&h, 101, 0, 2_500).await;

        // New input wakes the task just before the deadline: still nothing due.
        tokio::time::sleep(Duration::from_millis(998)).await;
        send(&h, 50, clock.now(), 2_500).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(h.output.try_recv().is_err(), "released before 1000 ms");

        let mut received = Vec::new();
        while received.len() < 7 {
            let Some(batch) = h.output.recv().await else {
                panic!("scheduler stopped");
            };
            assert!(
                !batch.is_empty() && batch.len() <= 3,
                "batch of {}",
                batch.len()
            );
            for released in &batch {
                assert!(released.release_at <= clock.now());
            }
            received.extend(batch);
        }
        let items: Vec<_> = received.iter().map(|r| r.item).collect();
        assert_eq!(items, (0..7).collect::<Vec<_>>());

        tokio::time::sleep_until(clock.start + Duration::from_millis(2_499)).await;
        assert!(h.output.try_recv().is_err(), "released before 2500 ms");
        let Some(batch) = h.output.recv().await else {
            panic!("scheduler stopped");
        };
        assert!(clock.now() >= 2_500);
        assert_eq!(
            batch.iter().map(|r| r.item).collect::<Vec<_>>(),
            [100, 101, 50]
        );

        h.shutdown.cancel();
        let Ok(pool) = h.task.await else {
            panic!("scheduler task failed");
        };
        assert!(pool.is_empty());
        let Some(metrics) = metrics else {
            return;
        };
        assert_eq!(metrics.delay_seconds.get_sample_count(), 10);
        // 7 × 1 s + 2 × 2.5 s + 1.502 s.
        assert!(metrics.delay_seconds.get_sample_sum() >= 13.5 - 1e-9);
        assert_eq!(metrics.pool_size.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn run_never_releases_early_when_the_wall_clock_steps_back() {
        let clock = FakeClock::new();
        let mut h = start(&clock, 4, 8, None);
        send(&h, 1, 0, 1_000).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        clock.step(-300);
        let Some(batch) = h.output.recv().await else {
            panic!("scheduler stopped");
        };
        assert_eq!(batch.len(), 1);
        assert!(clock.now() >= 1_000);
        // The monotonic timer alone would have fired at 1000 ms.
        assert!(clock.start.elapsed() >= Duration::from_millis(1_300));
        h.shutdown.cancel();
        assert!(h.task.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn run_notices_a_forward_step_of_the_wall_clock() {
        let clock = FakeClock::new();
        let mut h = start(&clock, 4, 8, None);
        send(&h, 1, 0, 60_000).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        clock.step(120_000);
        let Some(batch) = h.output.recv().await else {
            panic!("scheduler stopped");
        };
        assert_eq!(batch.len(), 1);
        assert!(clock.start.elapsed() <= MAX_SLEEP + Duration::from_millis(100));
        h.shutdown.cancel();
        assert!(h.task.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_returns_the_pool_including_buffered_input() {
        let clock = FakeClock::new();
        let h = start(&clock, 4, 8, None);
        for item in 0..5 {
            send(&h, item, 0, 3_600_000 + u64::from(item)).await;
        }
        h.shutdown.cancel();
        let Ok(pool) = h.task.await else {
            panic!("scheduler task failed");
        };
        let items: Vec<_> = pool.into_pending().into_iter().map(|p| p.item).collect();
        assert_eq!(items, [0, 1, 2, 3, 4]);
        assert!(h.input.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_is_honoured_while_output_is_full() {
        let clock = FakeClock::new();
        // Room for one batch of one; the test reads only one batch.
        let mut h = start(&clock, 1, 1, None);
        for item in 0..3 {
            send(&h, item, 0, 0).await;
        }
        let Some(first) = h.output.recv().await else {
            panic!("scheduler stopped");
        };
        assert_eq!(first.len(), 1);
        h.shutdown.cancel();
        let Ok(pool) = h.task.await else {
            panic!("scheduler task failed");
        };
        let mut buffered = 0;
        while let Ok(batch) = h.output.try_recv() {
            buffered += batch.len();
        }
        // Nothing lost, nothing duplicated; the last item never found room.
        assert!(!pool.is_empty());
        assert_eq!(1 + buffered + pool.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_output_does_not_block_new_input() {
        let clock = FakeClock::new();
        // Output room for one batch, never read; input room for 64.
        let mut h = start(&clock, 1, 4, None);
        for item in 0..200 {
            // Due at once: the task is stuck on output but keeps taking input.
            send(&h, item, 0, 0).await;
        }
        h.shutdown.cancel();
        let Ok(pool) = h.task.await else {
            panic!("scheduler task failed");
        };
        let mut buffered = 0;
        while let Ok(batch) = h.output.try_recv() {
            buffered += batch.len();
        }
        assert_eq!(buffered, 4);
        assert_eq!(pool.len(), 196);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_input_drains_the_pool_then_returns() {
        let clock = FakeClock::new();
        let Harness {
            input,
            mut output,
            task,
            shutdown: _shutdown,
        } = start(&clock, 4, 8, None);
        for item in 0..3 {
            let pending = Pending {
                item,
                inserted_at: 0,
                release_at: 500 * u64::from(item),
            };
            assert!(input.send(pending).await.is_ok());
        }
        drop(input);
        let mut count = 0;
        while let Some(batch) = output.recv().await {
            count += batch.len();
        }
        assert_eq!(count, 3);
        let Ok(pool) = task.await else {
            panic!("scheduler task failed");
        };
        assert!(pool.is_empty());
    }
}
