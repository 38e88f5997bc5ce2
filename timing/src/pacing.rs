//! Pacing: a link that sends frames as a Poisson process, real traffic substituted for cover.
//!
//! A paced sender emits one frame at each tick of a Poisson process of rate λ. At a tick, if
//! real transmissions are waiting, the frame carries them; otherwise it is a cover frame
//! (DROP). An observer of the link sees the same process whether or not anything real is
//! sent: the number and timing of frames are independent of the traffic, as long as the
//! traffic fits in the rate (Loopix's "send stream", Piotrowska et al., USENIX Security 2017).
//! The cost is bandwidth (a frame every 1/λ seconds on average, real or not) and latency (a
//! real transmission waits for the next tick, `Exp(1/λ)`, and longer behind a backlog).
//!
//! **Backlog.** What waits is bounded by the caller (the client's writer queue). When real
//! traffic exceeds λ, items wait longer; nothing else changes on the wire. A [`Burst`]
//! allowance trades some of that latency for leakage: while more than [`Burst::after`] items
//! wait, ticks come `factor` times faster, so an observer who sees the rate rise learns that a
//! burst is being sent (its start, length and size, not its content or destination). The
//! default is no burst ([`Burst::NONE`]); the simulator measures what a burst leaks.
//!
//! This module owns the gap and substitution rules only: no clock, no channel, no frame
//! building. The client's writer task drives a [`Pacer`] with tokio's clock; the simulator
//! drives the same [`Pacer`] in virtual time.

use std::time::Duration;

use rand::Rng;

use crate::exp::poisson_gap;

/// Highest pacing rate accepted, in frames per second (a 16 KiB frame at 100/s is ≈ 14 GB a
/// day: anything higher is a mistake, not a policy).
pub const MAX_RATE: f64 = 100.0;

/// Faster ticks while a backlog waits. See the module documentation for what it leaks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    /// Speed up only while more than this many items wait.
    pub after: usize,
    /// Tick rate multiplier during a burst (1 = no burst).
    pub factor: f64,
}

impl Burst {
    /// No burst: the rate never changes.
    pub const NONE: Burst = Burst {
        after: usize::MAX,
        factor: 1.0,
    };
}

/// The rate and burst rule of one paced link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacingPolicy {
    /// Frames per second, real and cover together (λ).
    pub rate: f64,
    /// Burst allowance.
    pub burst: Burst,
}

impl PacingPolicy {
    /// A policy of `rate` frames per second without burst.
    pub fn at_rate(rate: f64) -> Self {
        Self {
            rate,
            burst: Burst::NONE,
        }
    }

    /// Checks the policy.
    ///
    /// # Errors
    /// A sentence naming the offending setting: a rate that is not in `(0, MAX_RATE]`, or a
    /// burst factor below 1 or above `MAX_RATE / rate`.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE) {
            return Err(format!(
                "pacing rate must be above 0 and at most {MAX_RATE} frames per second"
            ));
        }
        let f = self.burst.factor;
        if !(f.is_finite() && f >= 1.0 && self.rate * f <= MAX_RATE) {
            return Err(format!(
                "burst factor must be at least 1 and keep the rate at most {MAX_RATE} per second"
            ));
        }
        Ok(())
    }

    /// The tick rate while `backlog` items wait.
    pub fn rate_for(&self, backlog: usize) -> f64 {
        if backlog > self.burst.after {
            self.rate * self.burst.factor
        } else {
            self.rate
        }
    }
}

/// What a tick sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Real transmissions were waiting: the frame carries them.
    Real,
    /// Nothing was waiting: the frame is cover.
    Cover,
}

/// Counters of a [`Pacer`]: every tick is either real or cover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacerStats {
    /// Ticks that carried real transmissions.
    pub real: u64,
    /// Ticks that sent cover.
    pub cover: u64,
    /// Ticks drawn at the burst rate.
    pub burst: u64,
}

impl PacerStats {
    /// All ticks.
    pub fn ticks(&self) -> u64 {
        self.real + self.cover
    }
}

/// The tick process of one paced link: call [`Pacer::next_gap`] after each tick (and once at
/// the start) to know when the next one is, and [`Pacer::tick`] at each tick to know what it
/// sends.
#[derive(Debug)]
pub struct Pacer<R> {
    policy: PacingPolicy,
    rng: R,
    stats: PacerStats,
}

impl<R: Rng> Pacer<R> {
    /// A pacer for `policy` drawing its gaps from `rng` (a cryptographically secure generator
    /// in clients: predictable ticks would let an observer tell real frames from cover).
    pub fn new(policy: PacingPolicy, rng: R) -> Self {
        Self {
            policy,
            rng,
            stats: PacerStats::default(),
        }
    }

    /// The gap from now to the next tick, given the number of items waiting now. Gaps are
    /// independent `Exp(1/rate)` draws; the process is memoryless, so drawing the next gap at
    /// a tick (or again when the backlog crosses the burst threshold) is the same Poisson
    /// process.
    pub fn next_gap(&mut self, backlog: usize) -> Duration {
        let rate = self.policy.rate_for(backlog);
        if backlog > self.policy.burst.after && self.policy.burst.factor > 1.0 {
            self.stats.burst += 1;
        }
        poisson_gap(&mut self.rng, rate)
    }

    /// What the tick due now sends, given the number of real items waiting: the waiting real
    /// traffic replaces the cover frame.
    pub fn tick(&mut self, backlog: usize) -> Tick {
        if backlog > 0 {
            self.stats.real += 1;
            Tick::Real
        } else {
            self.stats.cover += 1;
            Tick::Cover
        }
    }

    /// The policy.
    pub fn policy(&self) -> &PacingPolicy {
        &self.policy
    }

    /// Ticks so far.
    pub fn stats(&self) -> PacerStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn pacer(policy: PacingPolicy) -> Pacer<ChaCha20Rng> {
        Pacer::new(policy, ChaCha20Rng::seed_from_u64(7))
    }

    #[test]
    fn real_traffic_replaces_cover_and_every_tick_is_counted() {
        let mut p = pacer(PacingPolicy::at_rate(0.1));
        assert_eq!(p.tick(0), Tick::Cover);
        assert_eq!(p.tick(3), Tick::Real);
        assert_eq!(p.tick(1), Tick::Real);
        assert_eq!(p.tick(0), Tick::Cover);
        assert_eq!(
            p.stats(),
            PacerStats {
                real: 2,
                cover: 2,
                burst: 0
            }
        );
        assert_eq!(p.stats().ticks(), 4);
    }

    #[test]
    fn gaps_do_not_depend_on_the_backlog_without_burst() {
        // Same seed, same gaps, whatever waits: the wire shows nothing of the traffic.
        let mut idle = pacer(PacingPolicy::at_rate(0.5));
        let mut busy = pacer(PacingPolicy::at_rate(0.5));
        for i in 0..1000 {
            assert_eq!(idle.next_gap(0), busy.next_gap(i % 70));
        }
        let mut p = pacer(PacingPolicy::at_rate(0.5));
        let n = 20_000;
        let mean = (0..n).map(|_| p.next_gap(0).as_secs_f64()).sum::<f64>() / n as f64;
        assert!((mean - 2.0).abs() < 0.06, "{mean}");
    }

    #[test]
    fn a_burst_speeds_up_only_above_its_threshold() {
        let policy = PacingPolicy {
            rate: 1.0,
            burst: Burst {
                after: 4,
                factor: 10.0,
            },
        };
        policy.validate().unwrap();
        assert_eq!(policy.rate_for(4), 1.0);
        assert_eq!(policy.rate_for(5), 10.0);
        let mut p = pacer(policy);
        let n = 20_000;
        let mean = (0..n).map(|_| p.next_gap(9).as_secs_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.1).abs() < 0.005, "{mean}");
        assert_eq!(p.stats().burst, n);
    }

    #[test]
    fn bad_policies_are_refused() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 101.0] {
            assert!(PacingPolicy::at_rate(rate).validate().is_err(), "{rate}");
        }
        let slow_burst = PacingPolicy {
            rate: 1.0,
            burst: Burst {
                after: 1,
                factor: 0.5,
            },
        };
        assert!(slow_burst.validate().is_err());
        assert!(PacingPolicy::at_rate(0.1).validate().is_ok());
    }
}
