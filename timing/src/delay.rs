//! Delivery delays: how a relay draws release times, and the pool of messages waiting for
//! theirs.
//!
//! # What this module owns
//!
//! * [`DelaySampler`] draws the *release time* of a message that has just been
//!   durably stored, according to the configured [`DelayMode`].
//! * [`Scheduler`] is the pool of messages that are stored but not yet visible to
//!   SUB/GET: a plain, deterministic min-heap driven with an explicit `now`, so the
//!   relay's task, its tests and the network simulator (`sotto-sim`) drive the same code.
//! * [`ks_distance_exponential`] measures how far a sample of delays is from the
//!   exponential distribution; the load tester uses it to check a relay's observed
//!   behaviour.
//!
//! It deliberately does **not** own the task that sleeps until the next deadline, its
//! channels or its metrics (the relay's `scheduler` module), persist anything (the store
//! keeps each message's release time and reloads the pool on start), decide what
//! "releasing" means (the caller makes the message visible and wakes subscribers), or
//! generate cover traffic ([`crate::pacing`]).
//!
//! # Why exponential delays
//!
//! A relay that forwards messages in arrival order, or after a fixed delay, lets
//! anyone who watches its inputs and outputs match them up. Sotto follows the
//! *Poisson mixing* of Loopix (Piotrowska, Hayes, Elahi, Meiser, Danezis, "The
//! Loopix Anonymity System", USENIX Security 2017; after the stop-and-go mixes of
//! Kesdogan et al. 1998): each message is held for an independent delay
//! `d ~ Exp(mean)`.
//!
//! The exponential is the only continuous *memoryless* distribution: however long
//! a message has already waited, its remaining wait is again `Exp(mean)`. So at
//! any instant every message in the pool is **equally likely to be the next one
//! to leave**, whatever its arrival time. An observer who sees a message leave
//! learns nothing about which of the pooled messages it is beyond "one of them":
//! the anonymity set of each output is the whole pool, and by Little's law the
//! pool holds on average `arrival rate × mean` messages. A longer mean buys a
//! larger pool (more anonymity) at the cost of latency. A uniform or fixed delay
//! does not have this property: the oldest messages are more likely to leave
//! next, which links outputs to inputs.
//!
//! Draws use inverse-CDF sampling, `d = -mean · ln(u)` with `u` uniform in
//! `(0, 1]`, rounded to the **nearest** millisecond (truncating would shorten
//! every delay by half a millisecond on average). Messages whose release times
//! fall in the same millisecond leave in insertion order.
//!
//! # The cap
//!
//! [`DelayMode::Poisson`] clamps each delay to `cap` so that no message waits
//! unboundedly long. The result is a truncated exponential: a draw equals `cap`
//! with probability `e^(-cap/mean)` (a point mass), and the mean delay becomes
//! `mean · (1 - e^(-cap/mean))` (see [`DelayMode::expected_delay`]). The cap
//! breaks memorylessness for messages older than the cap: a message that has
//! waited almost `cap` is certain to leave soon, so an observer who knows when a
//! message arrived can guess that it leaves at exactly `arrival + cap`. Operators
//! should keep `cap` large compared with `mean` (with `cap = 10 · mean` only
//! 0.0045 % of messages are capped).
//!
//! # Rounds
//!
//! [`DelayMode::Rounds`] is a timed mix: every message that arrives during a
//! round leaves together at the round's end, the next multiple of `period` on the
//! wall clock. Within a round the arrival order is hidden entirely (all leave in
//! one [`Scheduler::pop_due`]), and the delay is uniform in `(0, period]`. Its
//! weaknesses: a round with one message in it gives no anonymity at all, and
//! release instants are predictable. [`DelayMode::Off`] releases immediately and
//! is meant for tests and private relays that do not need a timing defence.
//!
//! # Why wall-clock time
//!
//! Release times are stored with the message and survive a restart, so they are
//! [`UnixMillis`] (wall clock), not [`std::time::Instant`], which means nothing in
//! another process. The wall clock can step. If it steps **backwards**, the relay's scheduler task
//! reads the clock again before every release and never releases a message
//! before its release time, even if tokio's timer fires first. If it steps
//! **forwards** (NTP, or a machine resuming from suspend, which the monotonic
//! clock behind tokio's timers does not count), the relay's scheduler task notices within
//! its longest sleep (one second), because it never sleeps longer than that while the pool is
//! non-empty.
//!
//! # Memory
//!
//! The pool itself has no bound; the relay bounds it indirectly (per-queue
//! message quota × number of queues). Each pooled entry takes
//! [`Scheduler::ENTRY_BYTES`] = `size_of::<T>()` + 24 bytes (release time,
//! insertion sequence number, insertion time), plus whatever `T` owns on the
//! heap; the heap's vector may hold up to twice its peak length while growing, and
//! is shrunk after large drains. The relay should keep `T` small (an index into
//! the store, not the message body). The input channel is bounded by the caller.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::collections::binary_heap::PeekMut;
use std::fmt;
use std::time::Duration;

use rand::Rng;

/// Wall-clock milliseconds since the Unix epoch. Release times are persisted
/// across restarts, so they are wall-clock, not `Instant`.
pub type UnixMillis = u64;

/// How release times are drawn. See the module documentation for the trade-offs.
#[derive(Debug, Clone, PartialEq)]
pub enum DelayMode {
    /// Independent exponential delays (Poisson mixing): `d = min(Exp(mean), cap)`.
    Poisson {
        /// Mean of the exponential before capping.
        mean: Duration,
        /// Largest delay ever drawn; draws above it are clamped to it.
        cap: Duration,
    },
    /// Timed rounds: release at the next multiple of `period` (on the Unix
    /// epoch's grid) strictly after arrival. A period shorter than one
    /// millisecond behaves like [`DelayMode::Off`].
    Rounds {
        /// Length of one round.
        period: Duration,
    },
    /// No delay: release at arrival. No timing defence.
    Off,
}

impl DelayMode {
    /// Short name for configuration and metrics: `"poisson"`, `"rounds"` or `"off"`.
    pub fn name(&self) -> &'static str {
        match self {
            DelayMode::Poisson { .. } => "poisson",
            DelayMode::Rounds { .. } => "rounds",
            DelayMode::Off => "off",
        }
    }

    /// Expected delay of one message under this mode.
    ///
    /// Poisson: `mean · (1 - e^(-cap/mean))`, the mean of the capped exponential.
    /// Rounds: `period / 2`, for arrivals spread evenly over a round. Off: zero.
    pub fn expected_delay(&self) -> Duration {
        match self {
            DelayMode::Poisson { mean, cap } => {
                let m = mean.as_secs_f64();
                if m <= 0.0 {
                    return Duration::ZERO;
                }
                let c = cap.as_secs_f64();
                Duration::try_from_secs_f64(m * (1.0 - (-c / m).exp())).unwrap_or(Duration::MAX)
            }
            DelayMode::Rounds { period } => *period / 2,
            DelayMode::Off => Duration::ZERO,
        }
    }
}

/// Draws release times according to a [`DelayMode`].
///
/// * Poisson: `now + min(d, cap)` with `d ~ Exp(mean)`, by inverse-CDF sampling
///   from a uniform in `(0, 1]`, rounded to the nearest millisecond.
/// * Rounds: the next multiple of `period` strictly after `now` (all messages
///   pooled in one round leave together).
/// * Off: `now`.
///
/// Release times saturate at `UnixMillis::MAX` instead of overflowing.
pub struct DelaySampler<R> {
    mode: DelayMode,
    rng: R,
}

impl<R: Rng> DelaySampler<R> {
    /// A sampler for `mode` drawing randomness from `rng`. The relay should pass a
    /// cryptographically secure generator: predictable delays are no defence.
    pub fn new(mode: DelayMode, rng: R) -> Self {
        Self { mode, rng }
    }

    /// The release time of a message stored at `now`.
    pub fn release_at(&mut self, now: UnixMillis) -> UnixMillis {
        match &self.mode {
            DelayMode::Poisson { mean, cap } => {
                let delay = crate::exp::exp_delay_ms(&mut self.rng, *mean, *cap);
                now.saturating_add(delay)
            }
            DelayMode::Rounds { period } => next_round(now, *period),
            DelayMode::Off => now,
        }
    }

    /// The mode this sampler draws from.
    pub fn mode(&self) -> &DelayMode {
        &self.mode
    }
}

impl<R> fmt::Debug for DelaySampler<R> {
    // The generator's state is not printed: it would predict future delays.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelaySampler")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}
/// The next multiple of `period` strictly after `now`.
fn next_round(now: UnixMillis, period: Duration) -> UnixMillis {
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    if period_ms == 0 {
        return now;
    }
    (now / period_ms)
        .saturating_add(1)
        .saturating_mul(period_ms)
}

/// The pool of stored-but-unreleased messages: a min-heap ordered by
/// `(release_at, insertion sequence number)`, driven with an explicit `now`.
///
/// Entries with equal release times leave in insertion order.
///
/// **Bound:** none of its own; the relay bounds the number of entries with its
/// per-queue quota × number of queues. **Worst case per entry:**
/// [`Scheduler::ENTRY_BYTES`] = `size_of::<T>()` + 24 bytes (the same as
/// `size_of::<Pending<T>>()` + 8 for the sequence number), plus what `T` owns on
/// the heap, times up to 2 for the heap vector's spare capacity while growing.
/// With `T` a 32-byte store key that is at most 112 bytes per pooled message.
pub struct Scheduler<T> {
    heap: BinaryHeap<Entry<T>>,
    /// Next insertion sequence number (a `u64` cannot wrap in practice).
    next_seq: u64,
}

/// A message leaving the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Released<T> {
    /// What the caller inserted.
    pub item: T,
    /// When the message was stored.
    pub inserted_at: UnixMillis,
    /// When it was scheduled to leave (`<=` the `now` of the release).
    pub release_at: UnixMillis,
    /// Pool size just before this entry was removed (the first entry of a
    /// [`Scheduler::pop_due`] batch sees the full pool, the next one one fewer):
    /// the size of the set this message was mixed with.
    pub pool_size_before: usize,
}

/// A message entering the pool through the relay's scheduler task's input channel.
///
/// Takes `size_of::<T>()` + 16 bytes per slot of that (caller-bounded) channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending<T> {
    /// What the caller wants back on release (keep it small: a store key).
    pub item: T,
    /// When the message was stored.
    pub inserted_at: UnixMillis,
    /// When it may become visible, from [`DelaySampler::release_at`] or from the
    /// store on restart.
    pub release_at: UnixMillis,
}

impl<T> Scheduler<T> {
    /// Bytes one pooled entry occupies inside the heap's vector: `size_of::<T>()`
    /// plus 24 bytes of bookkeeping (and alignment padding, if `T` needs it).
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry<T>>();

    /// An empty pool.
    pub fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    /// Adds `item`, stored at `inserted_at`, to leave at `release_at`.
    ///
    /// A `release_at` in the past is allowed (e.g. reloaded on start after
    /// downtime): the entry is due at once.
    pub fn insert(&mut self, item: T, inserted_at: UnixMillis, release_at: UnixMillis) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Entry {
            release_at,
            seq,
            inserted_at,
            item,
        });
    }

    /// The earliest release time in the pool, or `None` if it is empty.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.heap.peek().map(|entry| entry.release_at)
    }

    /// Removes and returns at most `max` entries whose `release_at <= now`, in
    /// release order (ties in insertion order). Never returns an entry early,
    /// whatever `now` was in earlier calls.
    pub fn pop_due(&mut self, now: UnixMillis, max: usize) -> Vec<Released<T>> {
        let mut out = Vec::new();
        while out.len() < max {
            let pool_size_before = self.heap.len();
            let Some(top) = self.heap.peek_mut() else {
                break;
            };
            if top.release_at > now {
                break;
            }
            let entry = PeekMut::pop(top);
            out.push(Released {
                item: entry.item,
                inserted_at: entry.inserted_at,
                release_at: entry.release_at,
                pool_size_before,
            });
        }
        self.shrink_after_drain();
        out
    }

    /// Number of pooled entries.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps only the entries whose item satisfies `keep` (e.g. to drop the
    /// messages of a deleted queue). Order among the remaining entries is kept.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.heap.retain(|entry| keep(&entry.item));
        self.shrink_after_drain();
    }

    /// Empties the pool into a vector in release order (ties in insertion order),
    /// e.g. to inspect what the relay's scheduler task returned on shutdown.
    pub fn into_pending(self) -> Vec<Pending<T>> {
        // `into_sorted_vec` is ascending in `Entry`'s order, which is reversed
        // (latest release first) to make `BinaryHeap` a min-heap.
        let mut entries = self.heap.into_sorted_vec();
        entries.reverse();
        entries
            .into_iter()
            .map(|entry| Pending {
                item: entry.item,
                inserted_at: entry.inserted_at,
                release_at: entry.release_at,
            })
            .collect()
    }

    /// Gives memory back after a burst has drained, so that the pool's footprint
    /// follows its current size rather than its historical peak.
    fn shrink_after_drain(&mut self) {
        const MIN_CAPACITY_TO_SHRINK: usize = 1024;
        let capacity = self.heap.capacity();
        if capacity >= MIN_CAPACITY_TO_SHRINK && self.heap.len() < capacity / 4 {
            self.heap.shrink_to(self.heap.len().saturating_mul(2));
        }
    }
}

impl<T> Default for Scheduler<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Scheduler<T> {
    // Items are not printed: they identify messages, and logs must not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("len", &self.heap.len())
            .field("next_deadline", &self.next_deadline())
            .finish_non_exhaustive()
    }
}

/// One pooled message with its ordering key.
struct Entry<T> {
    release_at: UnixMillis,
    seq: u64,
    inserted_at: UnixMillis,
    item: T,
}

impl<T> Entry<T> {
    fn key(&self) -> (UnixMillis, u64) {
        (self.release_at, self.seq)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    // Reversed: `BinaryHeap` is a max-heap and we want the earliest release on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

/// Kolmogorov–Smirnov distance between the empirical distribution of
/// `samples_ms` and the exponential distribution with mean `mean_ms`:
/// `max_i max(|F(x_i) - i/n|, |F(x_i) - (i-1)/n|)` over the sorted samples, with
/// `F(x) = 1 - e^(-x/mean)` for `x >= 0` and 0 below.
///
/// Returns 0 for an empty sample and 1 if `mean_ms` is not a positive finite
/// number or a sample is NaN. For `n` samples truly drawn from the distribution
/// the distance is about `0.87 / sqrt(n)` on average; samples rounded to whole
/// milliseconds add at most about `0.5 / mean_ms`.
pub fn ks_distance_exponential(samples_ms: &[f64], mean_ms: f64) -> f64 {
    if samples_ms.is_empty() {
        return 0.0;
    }
    if !(mean_ms.is_finite() && mean_ms > 0.0) || samples_ms.iter().any(|x| x.is_nan()) {
        return 1.0;
    }
    let mut sorted = samples_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(index, &x)| {
            let cdf = if x <= 0.0 {
                0.0
            } else {
                1.0 - (-x / mean_ms).exp()
            };
            let above = (index + 1) as f64 / n;
            let below = index as f64 / n;
            (cdf - above).abs().max((cdf - below).abs())
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {

    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn poisson(mean_ms: u64, cap: Duration) -> DelayMode {
        DelayMode::Poisson {
            mean: Duration::from_millis(mean_ms),
            cap,
        }
    }

    fn draws(mode: DelayMode, seed: u64, n: usize) -> Vec<u64> {
        let mut sampler = DelaySampler::new(mode, ChaCha20Rng::seed_from_u64(seed));
        let now = 1_700_000_000_000;
        (0..n).map(|_| sampler.release_at(now) - now).collect()
    }

    /// Pearson's chi-square statistic against equal expected counts.
    fn chi_square_uniform(counts: &[u64]) -> f64 {
        let total: u64 = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    #[test]
    fn mode_names() {
        assert_eq!(poisson(1000, HOUR).name(), "poisson");
        assert_eq!(
            DelayMode::Rounds {
                period: Duration::from_secs(1)
            }
            .name(),
            "rounds"
        );
        assert_eq!(DelayMode::Off.name(), "off");
    }

    #[test]
    fn poisson_draws_follow_the_exponential() {
        let delays = draws(poisson(1000, HOUR), 1, 100_000);
        let samples: Vec<f64> = delays.iter().map(|&d| d as f64).collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((mean - 1000.0).abs() < 20.0, "sample mean {mean}");
        let ks = ks_distance_exponential(&samples, 1000.0);
        assert!(ks < 0.01, "KS distance {ks}");
    }

    #[test]
    fn poisson_cap_is_honoured_with_a_point_mass_at_the_cap() {
        let n = 100_000;
        let delays = draws(poisson(1000, Duration::from_millis(500)), 2, n);
        assert!(delays.iter().all(|&d| d <= 500));
        // P(Exp(1000) > 500) = e^-0.5 ≈ 0.607.
        let at_cap = delays.iter().filter(|&&d| d == 500).count() as f64 / n as f64;
        assert!(
            (at_cap - (-0.5f64).exp()).abs() < 0.01,
            "mass at cap {at_cap}"
        );
        let mean = delays.iter().sum::<u64>() as f64 / n as f64;
        let expected = poisson(1000, Duration::from_millis(500))
            .expected_delay()
            .as_secs_f64()
            * 1000.0;
        assert!(
            (mean - expected).abs() < 0.02 * expected,
            "mean {mean} vs {expected}"
        );
    }

    #[test]
    fn poisson_release_times_saturate() {
        let mut sampler = DelaySampler::new(poisson(1000, HOUR), ChaCha20Rng::seed_from_u64(3));
        for _ in 0..1000 {
            assert!(sampler.release_at(u64::MAX - 5) >= u64::MAX - 5);
        }
    }

    #[test]
    fn ks_distance_detects_fit_and_misfit() {
        let n = 10_000;
        // Exact quantiles of Exp(1000) at (i - 0.5)/n fit as well as n points can.
        let quantiles: Vec<f64> = (0..n)
            .map(|i| -1000.0 * (1.0 - (i as f64 + 0.5) / n as f64).ln())
            .collect();
        let ks = ks_distance_exponential(&quantiles, 1000.0);
        assert!((ks - 0.5 / n as f64).abs() < 1e-9, "KS {ks}");
        // Fixed delays are far from exponential.
        let fixed = vec![1000.0; n];
        assert!(ks_distance_exponential(&fixed, 1000.0) > 0.3);
        // Wrong mean.
        assert!(ks_distance_exponential(&quantiles, 2000.0) > 0.1);
        assert_eq!(ks_distance_exponential(&[], 1000.0), 0.0);
        assert_eq!(ks_distance_exponential(&[1.0], 0.0), 1.0);
        assert_eq!(ks_distance_exponential(&[f64::NAN], 1.0), 1.0);
    }

    #[test]
    fn nothing_is_released_before_its_time() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        for _ in 0..50 {
            let mut items: Vec<(u32, u64)> =
                (0..500).map(|i| (i, rng.gen_range(0..2_000))).collect();
            items.shuffle(&mut rng);
            let mut scheduler = Scheduler::new();
            for &(id, release_at) in &items {
                scheduler.insert(id, 0, release_at);
            }
            let mut released = Vec::new();
            let mut now: UnixMillis = 0;
            while !scheduler.is_empty() {
                // Mostly forward, sometimes a step back like a wall clock would.
                now = if rng.gen_bool(0.1) {
                    now.saturating_sub(rng.gen_range(0..300))
                } else {
                    now + rng.gen_range(0..100)
                };
                let max = rng.gen_range(1..40);
                let batch = scheduler.pop_due(now, max);
                assert!(batch.len() <= max);
                assert!(batch.iter().all(|r| r.release_at <= now));
                if batch.len() < max {
                    // Everything due has gone out.
                    assert!(scheduler.next_deadline().is_none_or(|d| d > now));
                }
                released.extend(batch);
            }
            assert!(
                released
                    .windows(2)
                    .all(|w| w[0].release_at <= w[1].release_at)
            );
            let mut ids: Vec<u32> = released.iter().map(|r| r.item).collect();
            ids.sort_unstable();
            assert_eq!(ids, (0..500).collect::<Vec<_>>());
        }
    }

    #[test]
    fn ties_leave_in_insertion_order_and_pool_size_counts_down() {
        let mut scheduler = Scheduler::new();
        scheduler.insert("late", 0, 20);
        for name in ["a", "b", "c"] {
            scheduler.insert(name, 0, 10);
        }
        assert_eq!(scheduler.next_deadline(), Some(10));
        assert!(scheduler.pop_due(9, usize::MAX).is_empty());
        let out = scheduler.pop_due(10, usize::MAX);
        let names: Vec<_> = out.iter().map(|r| r.item).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let sizes: Vec<_> = out.iter().map(|r| r.pool_size_before).collect();
        assert_eq!(sizes, [4, 3, 2]);
        assert_eq!(scheduler.len(), 1);
        assert!(scheduler.pop_due(100, 0).is_empty());
    }

    #[test]
    fn retain_and_into_pending_keep_release_order() {
        let mut scheduler = Scheduler::new();
        for (id, release_at) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            scheduler.insert(id, 5, release_at);
        }
        scheduler.retain(|&id| id != 3);
        let pending = scheduler.into_pending();
        let order: Vec<_> = pending.iter().map(|p| (p.item, p.release_at)).collect();
        assert_eq!(order, [(2, 10), (4, 10), (1, 30)]);
        assert!(pending.iter().all(|p| p.inserted_at == 5));
    }

    #[test]
    fn entry_overhead_is_24_bytes() {
        assert_eq!(Scheduler::<u64>::ENTRY_BYTES, 8 + 24);
        // The worked example in `Scheduler`'s documentation.
        assert_eq!(Scheduler::<[u8; 32]>::ENTRY_BYTES, 56);
        assert_eq!(std::mem::size_of::<Pending<[u8; 32]>>(), 48);
    }

    #[test]
    fn release_order_is_independent_of_insertion_order() {
        // Ten messages stored at the same instant: each should be first to leave
        // equally often.
        let mut sampler = DelaySampler::new(poisson(1000, HOUR), ChaCha20Rng::seed_from_u64(5));
        let mut firsts = [0u64; 10];
        for _ in 0..10_000 {
            let mut scheduler = Scheduler::new();
            for index in 0..10 {
                scheduler.insert(index, 0, sampler.release_at(0));
            }
            let first = scheduler.pop_due(u64::MAX, 1);
            let index = first.first().map(|r| r.item).unwrap_or(usize::MAX);
            if let Some(count) = firsts.get_mut(index) {
                *count += 1;
            }
        }
        assert_eq!(firsts.iter().sum::<u64>(), 10_000);
        // Chi-square, 9 degrees of freedom, p = 0.001 critical value 27.88.
        let chi2 = chi_square_uniform(&firsts);
        assert!(chi2 < 27.88, "chi-square {chi2}, counts {firsts:?}");
    }

    #[test]
    fn pooled_messages_are_equally_likely_to_leave_next_whatever_their_age() {
        // Memorylessness proper: messages stored at 0, 200, ..., 800 ms and all
        // still pooled at 800 ms are each next to leave with probability 1/5,
        // although the oldest has waited 800 ms longer. A fixed or uniform delay
        // would favour the oldest.
        let arrivals = [0u64, 200, 400, 600, 800];
        let mut sampler = DelaySampler::new(poisson(1000, HOUR), ChaCha20Rng::seed_from_u64(6));
        let mut firsts = [0u64; 5];
        let mut kept = 0;
        while kept < 10_000 {
            let mut scheduler = Scheduler::new();
            for (index, &at) in arrivals.iter().enumerate() {
                scheduler.insert(index, at, sampler.release_at(at));
            }
            if !scheduler.pop_due(800, usize::MAX).is_empty() {
                continue; // Not all pooled at 800 ms: outside the condition.
            }
            kept += 1;
            let first = scheduler.pop_due(u64::MAX, 1);
            let index = first.first().map(|r| r.item).unwrap_or(usize::MAX);
            if let Some(count) = firsts.get_mut(index) {
                *count += 1;
            }
        }
        assert_eq!(firsts.iter().sum::<u64>(), 10_000);
        // Chi-square, 4 degrees of freedom, p = 0.001 critical value 18.47.
        let chi2 = chi_square_uniform(&firsts);
        assert!(chi2 < 18.47, "chi-square {chi2}, counts {firsts:?}");
    }

    #[test]
    fn rounds_pool_a_round_and_release_it_at_once() {
        let mode = DelayMode::Rounds {
            period: Duration::from_secs(1),
        };
        assert_eq!(mode.expected_delay(), Duration::from_millis(500));
        let mut sampler = DelaySampler::new(mode, ChaCha20Rng::seed_from_u64(7));
        let mut scheduler = Scheduler::new();
        for at in [1_000, 1_001, 1_500, 1_999] {
            let release_at = sampler.release_at(at);
            assert_eq!(release_at, 2_000);
            scheduler.insert(at, at, release_at);
        }
        // The next round is separate.
        for at in [2_000, 2_999] {
            let release_at = sampler.release_at(at);
            assert_eq!(release_at, 3_000);
            scheduler.insert(at, at, release_at);
        }
        assert!(scheduler.pop_due(1_999, usize::MAX).is_empty());
        let round: Vec<_> = scheduler
            .pop_due(2_000, usize::MAX)
            .into_iter()
            .map(|r| r.item)
            .collect();
        assert_eq!(round, [1_000, 1_001, 1_500, 1_999]);
        assert!(scheduler.pop_due(2_999, usize::MAX).is_empty());
        let round: Vec<_> = scheduler
            .pop_due(3_000, usize::MAX)
            .into_iter()
            .map(|r| r.item)
            .collect();
        assert_eq!(round, [2_000, 2_999]);
        // Degenerate periods.
        let mut zero = DelaySampler::new(
            DelayMode::Rounds {
                period: Duration::ZERO,
            },
            ChaCha20Rng::seed_from_u64(8),
        );
        assert_eq!(zero.release_at(1234), 1234);
        let mut huge = DelaySampler::new(
            DelayMode::Rounds {
                period: Duration::from_millis(u64::MAX / 2 + 1),
            },
            ChaCha20Rng::seed_from_u64(9),
        );
        assert_eq!(huge.release_at(u64::MAX - 1), u64::MAX);
    }

    #[test]
    fn off_releases_now() {
        let mut sampler = DelaySampler::new(DelayMode::Off, ChaCha20Rng::seed_from_u64(10));
        assert_eq!(sampler.mode(), &DelayMode::Off);
        for now in [0, 1, 1_700_000_000_000, u64::MAX] {
            assert_eq!(sampler.release_at(now), now);
        }
        assert_eq!(DelayMode::Off.expected_delay(), Duration::ZERO);
    }
}
