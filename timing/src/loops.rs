//! Loop cover: messages a client sends through its own queue, and what their return says.
//!
//! A loop message is an ordinary SEND (or FWD) to a queue the client itself receives on,
//! with a body as random as any end-to-end ciphertext, so neither a relay nor an observer can
//! tell it from a message to a contact. Loops do two jobs (Loopix's loop cover, Piotrowska et
//! al. 2017):
//!
//! - **cover on the receiving side**: loops arrive at the client like messages from contacts,
//!   so the client's receiving link carries deliveries even when nobody writes to it;
//! - **detection**: a loop that does not come back within [`LoopPolicy::overdue_after`] means
//!   a relay on the way dropped or held it (or the network failed); the client tells the user
//!   ([`LoopMonitor::poll_overdue`]).
//!
//! This module owns when loops are due ([`LoopSchedule`], a Poisson process) and the table of
//! loops on their way ([`LoopMonitor`]). Times are [`Duration`]s since an origin the caller
//! chooses (a tokio `Instant` at start, or the simulator's virtual clock); nothing here reads
//! a clock or sends anything.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;

use crate::exp::poisson_gap;

/// Most loops tracked at once; the oldest is forgotten (counted as lost) beyond this. At the
/// default rates a client has a handful in flight.
pub const MAX_OUTSTANDING: usize = 1024;

/// How often loops are sent and when one is late.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopPolicy {
    /// Loops per second (Poisson); 0 turns loops off.
    pub rate: f64,
    /// A loop not back after this long is reported.
    pub overdue_after: Duration,
}

impl LoopPolicy {
    /// No loops.
    pub const OFF: LoopPolicy = LoopPolicy {
        rate: 0.0,
        overdue_after: Duration::from_secs(600),
    };

    /// Whether loops are on.
    pub fn is_on(&self) -> bool {
        self.rate.is_finite() && self.rate > 0.0
    }
}

/// When the next loop is due: a Poisson process of [`LoopPolicy::rate`].
#[derive(Debug)]
pub struct LoopSchedule<R> {
    rate: f64,
    next_at: Option<Duration>,
    rng: R,
}

impl<R: Rng> LoopSchedule<R> {
    /// A schedule starting at `now` (the first loop is one gap later); none when loops are off.
    pub fn new(policy: &LoopPolicy, now: Duration, mut rng: R) -> Self {
        let next_at = policy
            .is_on()
            .then(|| now.saturating_add(poisson_gap(&mut rng, policy.rate)));
        Self {
            rate: policy.rate,
            next_at,
            rng,
        }
    }

    /// When the next loop is due (`None`: loops are off).
    pub fn next_at(&self) -> Option<Duration> {
        self.next_at
    }

    /// Whether a loop is due at `now`; if so, schedules the one after it.
    pub fn poll_due(&mut self, now: Duration) -> bool {
        match self.next_at {
            Some(at) if at <= now => {
                self.next_at = Some(now.saturating_add(poisson_gap(&mut self.rng, self.rate)));
                true
            }
            _ => false,
        }
    }
}

/// What [`LoopMonitor`] has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Loops sent.
    pub sent: u64,
    /// Loops that came back.
    pub returned: u64,
    /// Loops reported overdue (or forgotten beyond [`MAX_OUTSTANDING`]).
    pub overdue: u64,
    /// Loops that came back after being reported overdue, or that were never sent (ignored).
    pub unexpected: u64,
    /// Loops whose send failed ([`LoopMonitor::handle_failed`]): they never left, so they
    /// are neither returned nor overdue.
    pub failed: u64,
}

/// The loops on their way, by the id the client put in each loop's body.
#[derive(Debug, Default)]
pub struct LoopMonitor {
    outstanding: BTreeMap<u64, Duration>,
    stats: LoopStats,
}

impl LoopMonitor {
    /// An empty monitor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loop `id` left at `now`.
    pub fn handle_sent(&mut self, id: u64, now: Duration) {
        self.stats.sent += 1;
        self.outstanding.insert(id, now);
        while self.outstanding.len() > MAX_OUTSTANDING {
            if self.outstanding.pop_first().is_some() {
                self.stats.overdue += 1;
            }
        }
    }

    /// Loop `id` came back at `now`: its round trip, or `None` for an id not outstanding.
    pub fn handle_returned(&mut self, id: u64, now: Duration) -> Option<Duration> {
        match self.outstanding.remove(&id) {
            Some(sent) => {
                self.stats.returned += 1;
                Some(now.saturating_sub(sent))
            }
            None => {
                self.stats.unexpected += 1;
                None
            }
        }
    }

    /// Loop `id` never left: its send failed (the relay refused it, or the connection broke),
    /// so its absence says nothing about the relays. Removed from the table without being
    /// reported overdue; `false` for an id not outstanding.
    pub fn handle_failed(&mut self, id: u64) -> bool {
        let known = self.outstanding.remove(&id).is_some();
        if known {
            self.stats.failed += 1;
        }
        known
    }

    /// The loops sent more than `overdue_after` before `now`, removed from the table: each is
    /// reported once.
    pub fn poll_overdue(&mut self, now: Duration, overdue_after: Duration) -> Vec<u64> {
        let late: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, sent)| now.saturating_sub(**sent) > overdue_after)
            .map(|(id, _)| *id)
            .collect();
        for id in &late {
            self.outstanding.remove(id);
        }
        self.stats.overdue += late.len() as u64;
        late
    }

    /// Loops on their way.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Counters.
    pub fn stats(&self) -> LoopStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_schedule_is_poisson_and_off_means_never() {
        let rng = ChaCha20Rng::seed_from_u64(3);
        let mut off = LoopSchedule::new(&LoopPolicy::OFF, Duration::ZERO, rng.clone());
        assert_eq!(off.next_at(), None);
        assert!(!off.poll_due(Duration::MAX));
        let policy = LoopPolicy {
            rate: 0.5,
            overdue_after: 60 * S,
        };
        let mut s = LoopSchedule::new(&policy, Duration::ZERO, rng);
        let (mut due, mut now) = (0u32, Duration::ZERO);
        let horizon = 40_000 * S;
        while now < horizon {
            now = s.next_at().unwrap();
            assert!(s.poll_due(now));
            assert!(!s.poll_due(now), "one loop per due time");
            due += 1;
        }
        let per_s = f64::from(due) / horizon.as_secs_f64();
        assert!((per_s - 0.5).abs() < 0.02, "{per_s}");
    }

    #[test]
    fn loops_come_back_or_are_reported_once() {
        let mut m = LoopMonitor::new();
        m.handle_sent(1, S);
        m.handle_sent(2, 2 * S);
        m.handle_sent(3, 3 * S);
        assert_eq!(m.handle_returned(2, 5 * S), Some(3 * S));
        assert_eq!(
            m.handle_returned(2, 6 * S),
            None,
            "a duplicate is not a return"
        );
        assert!(m.poll_overdue(10 * S, 10 * S).is_empty());
        assert_eq!(m.poll_overdue(12 * S, 10 * S), vec![1]);
        assert_eq!(m.poll_overdue(12 * S, 10 * S), Vec::<u64>::new());
        assert_eq!(m.outstanding(), 1);
        assert_eq!(m.handle_returned(1, 13 * S), None);
        assert_eq!(
            m.stats(),
            LoopStats {
                sent: 3,
                returned: 1,
                overdue: 1,
                unexpected: 2,
                failed: 0,
            }
        );
    }

    #[test]
    fn a_loop_whose_send_failed_is_never_reported_overdue() {
        let mut m = LoopMonitor::new();
        m.handle_sent(1, S);
        m.handle_sent(2, S);
        assert!(m.handle_failed(1));
        assert!(!m.handle_failed(1), "once");
        assert_eq!(m.poll_overdue(100 * S, 10 * S), vec![2]);
        assert_eq!(m.handle_returned(1, 100 * S), None);
        let s = m.stats();
        assert_eq!((s.sent, s.failed, s.overdue, s.returned), (2, 1, 1, 0));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut m = LoopMonitor::new();
        for id in 0..(MAX_OUTSTANDING as u64 + 10) {
            m.handle_sent(id, S);
        }
        assert_eq!(m.outstanding(), MAX_OUTSTANDING);
        assert_eq!(m.stats().overdue, 10);
        assert_eq!(m.handle_returned(0, S), None, "the oldest were forgotten");
    }
}
