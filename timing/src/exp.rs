//! The one exponential draw behind every random delay in Sotto.
//!
//! A relay's release delays ([`crate::delay`]), the cover and pacing gaps of clients and
//! relays ([`crate::pacing`]), loop cover ([`crate::loops`]) and the agent's delayed
//! automatic replies all draw from the exponential distribution, because it is memoryless:
//! however long one has already waited, the remaining wait is distributed the same, so the
//! time of the next event says nothing about the time of the last one. This module owns the
//! draw (inverse-CDF sampling, `d = −mean · ln u`, `u` uniform in `(0, 1]`) and its cap; it
//! does not own any clock or schedule.

use std::time::Duration;

use rand::Rng;

/// Longest gap [`poisson_gap`] ever returns, whatever the rate: keeps sleeps finite when a
/// rate is tiny.
pub const MAX_GAP: Duration = Duration::from_secs(3600);

/// The `u`-quantile of the exponential distribution with mean `mean_s` seconds, for `u` in
/// `[0, 1)`: `−mean · ln(1 − u)`. Non-finite or negative inputs give 0.
pub fn exp_quantile(mean_s: f64, u: f64) -> f64 {
    if !(mean_s.is_finite() && mean_s > 0.0 && (0.0..1.0).contains(&u)) {
        return 0.0;
    }
    -mean_s * (1.0 - u).ln()
}

/// One draw from `min(Exp(mean), cap)`, in seconds.
fn draw_s<R: Rng + ?Sized>(rng: &mut R, mean: Duration, cap: Duration) -> f64 {
    // `gen::<f64>()` is uniform on [0, 1) in steps of 2^-53, so `1 - x` is exact and
    // uniform on (0, 1]: ln is finite and the largest draw is -ln(2^-53) ≈ 36.7 × mean.
    exp_quantile(mean.as_secs_f64(), rng.r#gen::<f64>()).min(cap.as_secs_f64())
}

/// A delay drawn from `min(Exp(mean), cap)` (a point mass at `cap` of probability
/// `e^(−cap/mean)`). A zero mean gives zero.
pub fn exp_delay<R: Rng + ?Sized>(rng: &mut R, mean: Duration, cap: Duration) -> Duration {
    Duration::try_from_secs_f64(draw_s(rng, mean, cap)).unwrap_or(cap)
}

/// As [`exp_delay`], in whole milliseconds rounded to the **nearest** one (truncating would
/// shorten every delay by half a millisecond on average); `min` with an integral cap keeps
/// the point mass exactly at `cap`. This is the relay's release delay.
pub fn exp_delay_ms<R: Rng + ?Sized>(rng: &mut R, mean: Duration, cap: Duration) -> u64 {
    let draw_ms = exp_quantile(mean.as_secs_f64() * 1000.0, rng.r#gen::<f64>());
    let cap_ms = cap.as_millis() as f64;
    // `as u64` saturates.
    draw_ms.min(cap_ms).round() as u64
}

/// The gap to the next event of a Poisson process of `rate_per_s` events per second:
/// `Exp(1/rate)`, at most [`MAX_GAP`]. A rate that is not positive and finite gives
/// [`MAX_GAP`] (no event soon).
pub fn poisson_gap<R: Rng + ?Sized>(rng: &mut R, rate_per_s: f64) -> Duration {
    if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
        return MAX_GAP;
    }
    let mean = Duration::try_from_secs_f64(1.0 / rate_per_s).unwrap_or(MAX_GAP);
    exp_delay(rng, mean, MAX_GAP)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    #[test]
    fn quantiles_are_finite_and_have_the_right_mean() {
        assert_eq!(exp_quantile(0.5, 0.0), 0.0);
        assert_eq!(exp_quantile(-1.0, 0.5), 0.0);
        assert_eq!(exp_quantile(1.0, 1.0), 0.0);
        // Deterministic quantiles: the mean of −ln(1−u)·m over a uniform grid is ≈ m.
        let n = 100_000;
        let mean: f64 = (0..n)
            .map(|i| exp_quantile(0.25, (i as f64 + 0.5) / n as f64))
            .sum::<f64>()
            / n as f64;
        assert!((mean - 0.25).abs() < 0.01, "{mean}");
    }

    #[test]
    fn gaps_are_capped_and_follow_the_rate() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        assert_eq!(poisson_gap(&mut rng, 0.0), MAX_GAP);
        assert_eq!(poisson_gap(&mut rng, f64::NAN), MAX_GAP);
        assert!(poisson_gap(&mut rng, 1e-9) <= MAX_GAP);
        let n = 20_000;
        let mean = (0..n)
            .map(|_| poisson_gap(&mut rng, 4.0).as_secs_f64())
            .sum::<f64>()
            / n as f64;
        assert!((mean - 0.25).abs() < 0.01, "{mean}");
    }

    #[test]
    fn millisecond_delays_round_to_nearest_and_keep_the_cap() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let cap = Duration::from_millis(30);
        let draws: Vec<u64> = (0..50_000)
            .map(|_| exp_delay_ms(&mut rng, Duration::from_millis(10), cap))
            .collect();
        assert!(draws.iter().all(|&d| d <= 30));
        // P(d = cap) = e^-3 ≈ 0.0498.
        let at_cap = draws.iter().filter(|&&d| d == 30).count() as f64 / draws.len() as f64;
        assert!((at_cap - 0.0498).abs() < 0.005, "{at_cap}");
        assert_eq!(exp_delay_ms(&mut rng, Duration::ZERO, cap), 0);
        assert_eq!(exp_delay(&mut rng, Duration::ZERO, cap), Duration::ZERO);
    }
}
