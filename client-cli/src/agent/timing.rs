//! The agent's clock and delays: wall-clock Unix milliseconds for the deadlines kept in the
//! profile (outbox items), the random delay of automatic sends, and the growing
//! pause between retries of a relay or an outbox that failed.
//!
//! It does not decide when anything runs: the receive loop and the outbox read these
//! values and wait themselves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use sotto_timing::exp::exp_delay;

/// Longest automatic-send delay, as a multiple of the mean (keeps the tail finite).
const AUTO_DELAY_CAP_FACTOR: u32 = 20;

/// Longest pause between attempts to reach a relay or do a contact's outbox that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A random delay for an automatic send: exponential with mean `mean`, capped at
/// `AUTO_DELAY_CAP_FACTOR` (20) × `mean`.
pub fn auto_delay(mean: Duration) -> Duration {
    exp_delay(&mut OsRng, mean, mean * AUTO_DELAY_CAP_FACTOR)
}

/// The pause before the next attempt after a failure: one second after the first, then
/// twice the `previous` pause, at most [`MAX_BACKOFF`].
pub(super) fn next_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(Duration::from_secs(1), |p| (p * 2).min(MAX_BACKOFF))
}

/// After a failure at `now`, following a pause of `previous` (if any): when to try again,
/// and the pause to remember for the next failure. The pause is [`next_backoff`]'s; the
/// wait is [`jittered`], so that the clients of a relay that went away do not all come back
/// at the same instants.
pub(super) fn next_retry(
    now: tokio::time::Instant,
    previous: Option<Duration>,
) -> (tokio::time::Instant, Duration) {
    let pause = next_backoff(previous);
    (now + jittered(pause), pause)
}

/// `pause` shortened at random to between half and all of it.
fn jittered(pause: Duration) -> Duration {
    use rand::Rng as _;
    pause.mul_f64(OsRng.gen_range(0.5..=1.0))
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// `d` in whole milliseconds (saturating).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_delays_are_exponential_with_the_configured_mean() {
        let mean = Duration::from_secs(2);
        assert_eq!(auto_delay(Duration::ZERO), Duration::ZERO);
        let n = 20_000;
        let draws: Vec<f64> = (0..n).map(|_| auto_delay(mean).as_secs_f64()).collect();
        assert!(draws.iter().all(|&d| d <= 40.0), "capped at 20 × the mean");
        let avg = draws.iter().sum::<f64>() / n as f64;
        assert!((avg - 2.0).abs() < 0.1, "{avg}");
        // Median of an exponential is m·ln 2: about 1.39 s, so half the automatic sends
        // wait longer than that.
        let below = draws
            .iter()
            .filter(|&&d| d < 2.0 * std::f64::consts::LN_2)
            .count();
        let frac = below as f64 / n as f64;
        assert!((frac - 0.5).abs() < 0.02, "{frac}");
    }

    #[test]
    fn retry_pauses_double_up_to_the_cap() {
        let mut pause = None;
        let pauses: Vec<u64> = (0..7)
            .map(|_| {
                let p = next_backoff(pause);
                pause = Some(p);
                p.as_secs()
            })
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        let p = Duration::from_secs(8);
        let waits: Vec<Duration> = (0..1000).map(|_| jittered(p)).collect();
        assert!(waits.iter().all(|w| *w >= p / 2 && *w <= p));
        assert!(waits.iter().any(|w| *w < p * 3 / 4) && waits.iter().any(|w| *w > p * 3 / 4));
    }
}
