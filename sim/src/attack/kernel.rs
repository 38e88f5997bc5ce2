//! Exponentially decaying sums, the building block of the timing and reply attacks.
//!
//! An adversary who knows that a delay is `Exp(mean)` weighs a candidate event at time `s`
//! for an effect at time `t ≥ s` by the density `e^{−(t−s)/mean}/mean`. Summed over many
//! candidates this is a decaying sum that can be kept in O(1) per event: values are stored
//! relative to a reference time, `V = Σ w·e^{(s − ref)/mean}`, so that at any `t` the sum is
//! `V·e^{−(t − ref)/mean}/mean`. Posteriors are ratios of sums with the same kernel, in which
//! the common factor cancels, so [`Decay::ratio`] needs no exponential at all.
//!
//! Contributions must not count before their time (a frame seen at the relay 22 ms from now
//! cannot explain an output now): [`Pending`] holds them until then.

/// Rebase once the exponent of a new contribution exceeds this (e^600 ≈ 1e260, far below
/// f64's range), so that nothing overflows.
const REBASE_EXPONENT: f64 = 600.0;

/// A family of decaying sums sharing one kernel mean and one reference time: one total (`z`)
/// and one per target.
#[derive(Debug, Clone)]
pub struct Decay {
    mean_ms: f64,
    ref_ms: f64,
    /// Sum over all contributions.
    pub z: f64,
    /// Sum per target.
    pub per: Vec<f64>,
}

impl Decay {
    /// Sums for `targets` targets with kernel mean `mean_ms` (at least 1 ms).
    pub fn new(mean_ms: f64, targets: usize) -> Self {
        Self {
            mean_ms: mean_ms.max(1.0),
            ref_ms: 0.0,
            z: 0.0,
            per: vec![0.0; targets],
        }
    }

    /// The weight a contribution at `at_ms` gets relative to the reference (rebasing first
    /// if it would be too large).
    fn scale(&mut self, at_ms: f64) -> f64 {
        let mut e = (at_ms - self.ref_ms) / self.mean_ms;
        if e > REBASE_EXPONENT {
            let f = (-e).exp();
            self.z *= f;
            for v in &mut self.per {
                *v *= f;
            }
            self.ref_ms = at_ms;
            e = 0.0;
        }
        e.exp()
    }

    /// Adds a contribution at `at_ms`: `total` to the total and `(target, weight)` pairs.
    pub fn add(&mut self, at_ms: f64, total: f64, targets: &[(u16, f64)]) {
        let s = self.scale(at_ms);
        self.z += total * s;
        for &(t, w) in targets {
            if let Some(v) = self.per.get_mut(usize::from(t)) {
                *v += w * s;
            }
        }
    }

    /// Target `i`'s share of the total now (the posterior that an effect now was caused by
    /// target `i`), 0 when there is no total.
    pub fn ratio(&self, i: usize) -> f64 {
        if self.z > 0.0 {
            self.per.get(i).copied().unwrap_or(0.0) / self.z
        } else {
            0.0
        }
    }

    /// The multiplier that turns stored values into sums at `t_ms`: `e^{−(t − ref)/mean}`.
    pub fn factor_at(&self, t_ms: f64) -> f64 {
        (-(t_ms - self.ref_ms) / self.mean_ms).exp()
    }
}

/// A contribution waiting for its time.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// When it starts to count, ms.
    pub at_ms: u64,
    /// Weight in the total.
    pub total: f64,
    /// Weights per target.
    pub targets: Vec<(u16, f64)>,
}

/// Contributions not yet due. Each lane must receive its contributions in non-decreasing
/// time (every contribution of a lane has the same offset from an observation, and
/// observations come in time order), so a lane is a FIFO and applying what is due is a merge
/// of the lanes' fronts: O(1) per contribution, no sorting.
#[derive(Debug, Default)]
pub struct Pending {
    lanes: [std::collections::VecDeque<Contribution>; 2],
}

impl Pending {
    /// Holds `c` in `lane` (0 or 1) until its time.
    pub fn push(&mut self, lane: usize, c: Contribution) {
        let q = &mut self.lanes[lane.min(1)];
        debug_assert!(
            q.back().is_none_or(|b| b.at_ms <= c.at_ms),
            "lane out of order"
        );
        q.push_back(c);
    }

    /// Moves every contribution due by `now_ms` into `sums`, in time order.
    pub fn apply_due(&mut self, now_ms: u64, sums: &mut Decay) {
        loop {
            let pick = match (self.lanes[0].front(), self.lanes[1].front()) {
                (Some(a), Some(b)) if a.at_ms <= b.at_ms => 0,
                (Some(_), Some(_)) | (None, Some(_)) => 1,
                (Some(_), None) => 0,
                (None, None) => return,
            };
            let Some(c) = self.lanes[pick].front() else {
                return;
            };
            if c.at_ms > now_ms {
                return;
            }
            if let Some(c) = self.lanes[pick].pop_front() {
                sums.add(c.at_ms as f64, c.total, &c.targets);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_is_the_kernel_weighted_share() {
        let mut d = Decay::new(1000.0, 2);
        d.add(0.0, 1.0, &[(0, 1.0)]);
        d.add(1000.0, 1.0, &[(1, 1.0)]);
        // Target 1's contribution is one mean newer: e^1 times heavier.
        let e = std::f64::consts::E;
        assert!((d.ratio(1) - e / (1.0 + e)).abs() < 1e-12);
        assert!((d.ratio(0) + d.ratio(1) - 1.0).abs() < 1e-12);
        assert_eq!(Decay::new(1.0, 1).ratio(0), 0.0);
    }

    #[test]
    fn rebasing_keeps_ratios_and_never_overflows() {
        let mut d = Decay::new(1.0, 1);
        for i in 0..100_000u32 {
            d.add(f64::from(i) * 10.0, 1.0, &[(0, 0.5)]);
            assert!(d.z.is_finite());
        }
        assert!((d.ratio(0) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn pending_contributions_wait_for_their_time() {
        let mut d = Decay::new(10.0, 1);
        let mut p = Pending::default();
        p.push(
            1,
            Contribution {
                at_ms: 50,
                total: 1.0,
                targets: vec![(0, 1.0)],
            },
        );
        p.push(
            0,
            Contribution {
                at_ms: 60,
                total: 1.0,
                targets: vec![],
            },
        );
        p.apply_due(49, &mut d);
        assert_eq!(d.z, 0.0);
        p.apply_due(50, &mut d);
        assert!(d.z > 0.0);
        assert_eq!(d.ratio(0), 1.0);
        p.apply_due(60, &mut d);
        assert!(d.ratio(0) < 1.0);
    }
}
