//! The measurements, as pure functions over timestamp records.
//!
//! Nothing here does I/O or reads a clock: every function takes the times the runner
//! recorded (microseconds since the start of the run, on a monotonic clock) and returns
//! numbers, so each can be checked on synthetic data with a known answer.
//! `docs/loadtest.md` gives the definitions and formulas these functions implement.
//!
//! - [`delivery_counts`]: exactly-once accounting (lost, duplicated, corrupted).
//! - [`percentiles_ms`]: latency quantiles from an HDR histogram.
//! - [`baseline_us`], [`added_delays_ms`], [`delay_ks_distance`]: the delay the relay added
//!   and how far its distribution is from the configured exponential.
//! - [`pool_sizes`]: how many messages waited in the relay when each one left.
//! - [`Observation`] and [`timing_adversary`]: a timing adversary that links deliveries to
//!   sends, its accuracy, and the posterior entropy (effective anonymity set).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Everything the tester observed about one message. Times are microseconds since the
/// start of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageRecord {
    /// Sequence number.
    pub seq: u64,
    /// Queue index.
    pub queue: u32,
    /// Global index of the sender session.
    pub sender: u32,
    /// Global index of the recipient session (the one subscribed to the queue).
    pub recipient: u32,
    /// When the SEND was handed to the session (`None`: never sent, the run stopped first).
    pub sent_at_us: Option<u64>,
    /// When the relay's OK arrived.
    pub ok_at_us: Option<u64>,
    /// When the message first arrived, intact, at its recipient session.
    pub received_at_us: Option<u64>,
    /// How many times it arrived intact.
    pub deliveries: u32,
    /// The SEND was refused, timed out or its session broke.
    pub send_failed: bool,
}

/// Exactly-once accounting of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    /// Messages the relay accepted: SEND answered OK, or arrived (a run ends when every
    /// message has arrived, which can be before the last OKs do).
    pub sent: u64,
    /// Distinct messages that arrived intact.
    pub delivered: u64,
    /// Accepted messages that never arrived intact.
    pub lost: u64,
    /// Extra intact arrivals of messages that had already arrived.
    pub duplicated: u64,
    /// Arrivals that were not intact (see [`crate::workload::verify_body`]).
    pub corrupted: u64,
    /// SENDs that failed (refused, timed out, session lost) and never arrived.
    pub send_failed: u64,
}

/// Counts sent, delivered, lost, duplicated and failed messages; `corrupted` is the number
/// of arrivals that failed verification (they cannot be attributed to a message).
pub fn delivery_counts(records: &[MessageRecord], corrupted: u64) -> DeliveryCounts {
    let mut c = DeliveryCounts {
        corrupted,
        ..DeliveryCounts::default()
    };
    for r in records {
        let arrived = r.received_at_us.is_some();
        if r.ok_at_us.is_some() || arrived {
            c.sent += 1;
            if !arrived {
                c.lost += 1;
            }
        } else if r.send_failed && !arrived {
            c.send_failed += 1;
        }
        if arrived {
            c.delivered += 1;
        }
        c.duplicated += u64::from(r.deliveries.saturating_sub(1));
    }
    c
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of values.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
}

/// Largest value an HDR histogram here holds: one hour in microseconds (larger values are
/// clamped to it).
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// Quantiles of `values_us` (microseconds) in milliseconds, from an HDR histogram with three
/// significant digits. All zero for no values.
pub fn percentiles_ms(values_us: impl IntoIterator<Item = u64>) -> Percentiles {
    let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, HISTOGRAM_MAX_US, 3) else {
        return Percentiles::default();
    };
    for v in values_us {
        h.saturating_record(v.clamp(1, HISTOGRAM_MAX_US));
    }
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / 1000.0,
    }
}

/// Send → receive latencies (µs) of the delivered messages.
pub fn latencies_us(records: &[MessageRecord]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|r| Some(r.received_at_us?.saturating_sub(r.sent_at_us?)))
        .collect()
}

/// Send → OK latencies (µs) of the accepted messages.
pub fn ok_latencies_us(records: &[MessageRecord]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|r| Some(r.ok_at_us?.saturating_sub(r.sent_at_us?)))
        .collect()
}

/// The no-delay baseline path latency: the smallest send → receive latency of the run
/// (the message whose drawn delay was closest to zero). `None` without deliveries.
pub fn baseline_us(records: &[MessageRecord]) -> Option<u64> {
    latencies_us(records).into_iter().min()
}

/// Added delay of each delivered message in milliseconds: receive − send − baseline.
pub fn added_delays_ms(records: &[MessageRecord], baseline_us: f64) -> Vec<f64> {
    latencies_us(records)
        .into_iter()
        .map(|l| (l as f64 - baseline_us) / 1000.0)
        .collect()
}

/// Kolmogorov–Smirnov distance between `delays_ms` and Exp(`mean_ms`); `None` when the
/// model has no delay (`mean_ms` ≤ 0) or there are no samples.
pub fn delay_ks_distance(delays_ms: &[f64], mean_ms: f64) -> Option<f64> {
    if mean_ms > 0.0 && !delays_ms.is_empty() {
        Some(sotto_relay::scheduler::ks_distance_exponential(
            delays_ms, mean_ms,
        ))
    } else {
        None
    }
}

/// Median and 1st percentile of the pool sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PoolSummary {
    /// Median pool size at release.
    pub median: f64,
    /// 1st percentile (the small pools that protect least).
    pub p1: f64,
}

/// For each delivered message, how many other messages were in the relay when it left.
///
/// A message *enters* the pool when its OK arrives (`ok_at`, or `sent_at` if the OK was
/// lost) and *leaves* at `received_at − baseline` (never, if it was not delivered), and not
/// before it entered. The pool size of message *i* is the number of other messages *j* with
/// `enter_j ≤ leave_i` and `leave_j ≥ leave_i`. O(n log n).
pub fn pool_sizes(records: &[MessageRecord], baseline_us: f64) -> Vec<u64> {
    let mut enters: Vec<f64> = Vec::with_capacity(records.len());
    let mut leaves: Vec<f64> = Vec::with_capacity(records.len());
    let mut delivered: Vec<f64> = Vec::new();
    for r in records {
        let Some(enter) = r.ok_at_us.or(r.sent_at_us) else {
            continue;
        };
        let enter = enter as f64;
        enters.push(enter);
        match r.received_at_us {
            Some(recv) => {
                let leave = (recv as f64 - baseline_us).max(enter);
                leaves.push(leave);
                delivered.push(leave);
            }
            None => leaves.push(f64::INFINITY),
        }
    }
    enters.sort_by(f64::total_cmp);
    leaves.sort_by(f64::total_cmp);
    delivered
        .into_iter()
        .map(|leave| {
            let entered = enters.partition_point(|&e| e <= leave);
            let left_before = leaves.partition_point(|&l| l < leave);
            // The message itself has entered and has not left before its own release.
            (entered.saturating_sub(left_before).saturating_sub(1)) as u64
        })
        .collect()
}

/// Median and 1st percentile (nearest rank) of `sizes`; zeros when empty.
pub fn pool_summary(sizes: &[u64]) -> PoolSummary {
    let mut s = sizes.to_vec();
    s.sort_unstable();
    let at = |q: f64| -> f64 {
        if s.is_empty() {
            return 0.0;
        }
        let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s.get(rank - 1).copied().unwrap_or(0) as f64
    };
    PoolSummary {
        median: at(0.5),
        p1: at(0.01),
    }
}

/// What the timing adversary sees: the times frames entered the relay from sender sessions
/// (real SENDs and cover frames alike, sorted), and for each delivered message the time it
/// left towards its recipient and — for scoring only — which entering frame was its SEND.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Entering frame times (µs), ascending.
    pub sends: Vec<u64>,
    /// Delivered messages.
    pub deliveries: Vec<Delivery>,
}

/// One delivered message as the adversary sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// When it left the relay towards its recipient (µs).
    pub received_us: u64,
    /// Index in [`Observation::sends`] of its true SEND (ground truth, for scoring).
    pub send_index: usize,
}

impl Observation {
    /// Builds the observation from the run's records and the times of cover frames sent by
    /// sender sessions.
    pub fn from_records(records: &[MessageRecord], cover_us: &[u64]) -> Self {
        // (time, is_real, seq) sorted; ties keep a deterministic order.
        let mut frames: Vec<(u64, bool, u64)> = records
            .iter()
            .filter_map(|r| Some((r.sent_at_us?, true, r.seq)))
            .chain(cover_us.iter().map(|&t| (t, false, 0)))
            .collect();
        frames.sort_unstable();
        let mut index_of_seq = std::collections::HashMap::with_capacity(records.len());
        for (i, (_, real, seq)) in frames.iter().enumerate() {
            if *real {
                index_of_seq.insert(*seq, i);
            }
        }
        let mut deliveries: Vec<Delivery> = records
            .iter()
            .filter_map(|r| {
                Some(Delivery {
                    received_us: r.received_at_us?,
                    send_index: *index_of_seq.get(&r.seq)?,
                })
            })
            .collect();
        deliveries.sort_unstable_by_key(|d| (d.received_us, d.send_index));
        Self {
            sends: frames.into_iter().map(|(t, _, _)| t).collect(),
            deliveries,
        }
    }
}

/// The adversary's model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdversaryParams {
    /// Baseline path latency (µs): no message leaves sooner than this after its SEND.
    pub base_us: f64,
    /// Mean of the exponential delay the adversary assumes (µs, > 0).
    pub mean_us: f64,
    /// Candidates are the SENDs with `base ≤ r − t ≤ base + window` (µs).
    pub window_us: f64,
    /// Posterior entropy is computed over at most this many evenly spaced deliveries.
    pub entropy_sample: usize,
}

impl AdversaryParams {
    /// The window for a mean: the model's 99.9th percentile, `mean · ln 1000`.
    pub fn window_for(mean_us: f64) -> f64 {
        mean_us * 1000f64.ln()
    }
}

/// How well the timing adversary links deliveries to their SENDs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AdversaryResult {
    /// Fraction of deliveries whose true SEND ranks first.
    pub top1: f64,
    /// Fraction whose true SEND ranks among the first ten.
    pub top10: f64,
    /// Mean reciprocal rank of the true SEND (0 when it is outside the candidates).
    pub mrr: f64,
    /// Accuracy of guessing uniformly among the candidates: mean of 1/|candidates|.
    pub baseline_top1: f64,
    /// Mean number of candidates.
    pub mean_candidates: f64,
    /// Mean posterior entropy over candidates, in bits.
    pub entropy_bits: f64,
    /// 2^entropy_bits.
    pub effective_anonymity_set: f64,
    /// Deliveries scored.
    pub deliveries: u64,
}

/// The timing adversary of a run, as the load tester scores it: the observation built from
/// the records and the sender sessions' cover frames, the adversary's model (its mean is the
/// configured delay's `model_mean_ms`, or with no configured delay the mean added delay of
/// the run — the path's own jitter — at least 1 µs), and the result. The simulator
/// (`sotto-sim validate`) calls this same function on simulated records.
pub fn score_timing_adversary(
    records: &[MessageRecord],
    cover_us: &[u64],
    base_us: f64,
    model_mean_ms: f64,
    entropy_sample: usize,
) -> (AdversaryResult, AdversaryParams) {
    let mean_us = if model_mean_ms > 0.0 {
        model_mean_ms * 1000.0
    } else {
        let added = added_delays_ms(records, base_us);
        let n = added.len().max(1) as f64;
        (added.iter().map(|d| d.max(0.0)).sum::<f64>() / n * 1000.0).max(1.0)
    };
    let params = AdversaryParams {
        base_us,
        mean_us,
        window_us: AdversaryParams::window_for(mean_us),
        entropy_sample,
    };
    let obs = Observation::from_records(records, cover_us);
    (timing_adversary(&obs, &params), params)
}

/// Scores the timing adversary on `obs` (see `docs/loadtest.md`, "Timing adversary").
///
/// For a delivery at time r the candidates are the SENDs with `base ≤ r − t ≤ base + window`;
/// each gets the likelihood `λ·e^{−λ(r − t − base)}`, λ = 1/mean, so the ranking is by
/// recency; SENDs at the same time tie and the scores are the expectation over a random
/// tie-break. The posterior over candidates is the normalised likelihood; its Shannon
/// entropy (Serjantov–Danezis) is averaged over up to `entropy_sample` deliveries.
pub fn timing_adversary(obs: &Observation, p: &AdversaryParams) -> AdversaryResult {
    let sends = &obs.sends;
    let n = obs.deliveries.len();
    if n == 0 {
        return AdversaryResult::default();
    }
    let lambda = if p.mean_us > 0.0 {
        1.0 / p.mean_us
    } else {
        1.0
    };
    let (mut top1, mut top10, mut mrr, mut base_top1, mut cands) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let step = n.div_ceil(p.entropy_sample.max(1));
    let (mut h_sum, mut h_n) = (0.0, 0u64);
    for (i, d) in obs.deliveries.iter().enumerate() {
        let r = d.received_us as f64;
        let newest = r - p.base_us;
        let oldest = newest - p.window_us;
        // Candidate range [lo, hi) in the sorted send times.
        let lo = sends.partition_point(|&t| (t as f64) < oldest);
        let hi = sends.partition_point(|&t| (t as f64) <= newest);
        let count = hi.saturating_sub(lo);
        cands += count as f64;
        if count > 0 {
            base_top1 += 1.0 / count as f64;
        }
        let Some(&t_true) = sends.get(d.send_index) else {
            continue;
        };
        if d.send_index >= lo && d.send_index < hi {
            // Later SENDs have smaller gaps, so higher likelihood.
            let upto = sends.partition_point(|&t| t <= t_true).min(hi);
            let from = sends.partition_point(|&t| t < t_true).max(lo);
            let better = hi - upto;
            let ties = upto.saturating_sub(from).max(1);
            let tf = ties as f64;
            if better == 0 {
                top1 += 1.0 / tf;
            }
            top10 += (10usize.saturating_sub(better).min(ties)) as f64 / tf;
            mrr += (1..=ties).map(|j| 1.0 / (better + j) as f64).sum::<f64>() / tf;
        }
        if i % step == 0 && count > 0 {
            h_sum += posterior_entropy_bits(sends.get(lo..hi).unwrap_or_default(), newest, lambda);
            h_n += 1;
        }
    }
    let nf = n as f64;
    let entropy_bits = if h_n > 0 { h_sum / h_n as f64 } else { 0.0 };
    AdversaryResult {
        top1: top1 / nf,
        top10: top10 / nf,
        mrr: mrr / nf,
        baseline_top1: base_top1 / nf,
        mean_candidates: cands / nf,
        entropy_bits,
        effective_anonymity_set: entropy_bits.exp2(),
        deliveries: n as u64,
    }
}

/// Entropy (bits) of the posterior ∝ e^{−λ(newest − t)} over candidate times `cands`
/// (all ≤ `newest`). Weights are taken relative to the newest candidate so that none
/// underflows to an all-zero sum.
fn posterior_entropy_bits(cands: &[u64], newest: f64, lambda: f64) -> f64 {
    let Some(&latest) = cands.last() else {
        return 0.0;
    };
    let g0 = newest - latest as f64;
    let (mut z, mut wg) = (0.0f64, 0.0f64);
    for &t in cands {
        let excess = (newest - t as f64 - g0).max(0.0);
        let w = (-lambda * excess).exp();
        z += w;
        wg += w * lambda * excess;
    }
    if z <= 0.0 {
        return 0.0;
    }
    // H = log2 Z + (1/Z) Σ w·λ·g / ln 2, with g measured from the newest candidate.
    (z.log2() + wg / z / std::f64::consts::LN_2).max(0.0)
}

/// Distinct datagram sizes consistent with per-connection, per-direction counters
/// `(datagrams, bytes)`: a counter whose bytes are a whole multiple of its datagrams
/// contributes that one size; any other proves at least two sizes and contributes the two
/// sizes around its mean. Counters with no datagrams are ignored. Sorted, deduplicated.
pub fn datagram_sizes(counters: &[(u64, u64)]) -> Vec<u64> {
    let mut sizes = std::collections::BTreeSet::new();
    for &(datagrams, bytes) in counters {
        if datagrams == 0 {
            continue;
        }
        let mean = bytes / datagrams;
        sizes.insert(mean);
        if bytes % datagrams != 0 {
            sizes.insert(mean + 1);
        }
    }
    sizes.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use rand::seq::SliceRandom as _;
    use rand::{Rng as _, SeedableRng as _};
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn record(seq: u64, sent: u64, ok: u64, recv: Option<u64>) -> MessageRecord {
        MessageRecord {
            seq,
            sent_at_us: Some(sent),
            ok_at_us: Some(ok),
            received_at_us: recv,
            deliveries: u32::from(recv.is_some()),
            ..MessageRecord::default()
        }
    }

    fn params(base_us: f64, mean_us: f64) -> AdversaryParams {
        AdversaryParams {
            base_us,
            mean_us,
            window_us: AdversaryParams::window_for(mean_us),
            entropy_sample: 10_000,
        }
    }

    #[test]
    fn exactly_once_accounting() {
        let mut recs = vec![
            record(0, 0, 5, Some(10)),
            record(1, 1, 6, None),
            record(2, 2, 7, Some(12)),
        ];
        recs[2].deliveries = 3;
        recs.push(MessageRecord {
            seq: 3,
            sent_at_us: Some(3),
            send_failed: true,
            ..MessageRecord::default()
        });
        // Arrived before its OK was recorded (the run stopped waiting): sent all the same.
        recs.push(MessageRecord {
            seq: 4,
            sent_at_us: Some(4),
            received_at_us: Some(9),
            deliveries: 1,
            ..MessageRecord::default()
        });
        let c = delivery_counts(&recs, 4);
        assert_eq!(
            c,
            DeliveryCounts {
                sent: 4,
                delivered: 3,
                lost: 1,
                duplicated: 2,
                corrupted: 4,
                send_failed: 1,
            }
        );
    }

    #[test]
    fn percentiles_of_a_known_set() {
        let p = percentiles_ms((1..=1000).map(|i| i * 1000));
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() <= 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() <= 1.0, "{p:?}");
        assert_eq!(percentiles_ms([]), Percentiles::default());
    }

    #[test]
    fn fifo_zero_delay_relay_is_fully_linkable() {
        // One send per millisecond, each delivered exactly 300 µs later, in order.
        let recs: Vec<MessageRecord> = (0..500)
            .map(|i| record(i, i * 1000, i * 1000 + 100, Some(i * 1000 + 300)))
            .collect();
        let base = baseline_us(&recs).unwrap();
        assert_eq!(base, 300);
        let obs = Observation::from_records(&recs, &[]);
        let a = timing_adversary(&obs, &params(base as f64, 100.0));
        assert_eq!(a.top1, 1.0);
        assert_eq!(a.top10, 1.0);
        assert_eq!(a.mrr, 1.0);
        assert!(a.baseline_top1 <= 1.0);
        // The added delays are all zero; the pool is empty at every release.
        assert!(
            added_delays_ms(&recs, base as f64)
                .iter()
                .all(|&d| d == 0.0)
        );
        let pools = pool_sizes(&recs, base as f64);
        assert_eq!(
            pool_summary(&pools),
            PoolSummary {
                median: 0.0,
                p1: 0.0
            }
        );
    }

    #[test]
    fn uniformly_shuffled_batch_is_at_chance() {
        let n = 200u64;
        let mut order: Vec<u64> = (0..n).collect();
        order.shuffle(&mut ChaCha20Rng::seed_from_u64(1));
        // n sends one millisecond apart, then released in a random order after all of them.
        let recs: Vec<MessageRecord> = (0..n)
            .map(|i| {
                let pos = order.iter().position(|&o| o == i).unwrap() as u64;
                record(i, i * 1000, i * 1000 + 50, Some(1_000_000 + pos * 10))
            })
            .collect();
        // The synthetic path takes no time; no message has a near-zero delay here, so the
        // run's minimum latency would overestimate it.
        let base = 0.0;
        let obs = Observation::from_records(&recs, &[]);
        let a = timing_adversary(&obs, &params(base, 1_000_000.0));
        let chance = 1.0 / n as f64;
        assert!((a.top1 - chance).abs() <= 2.0 * chance, "{a:?}");
        assert!(a.baseline_top1 <= 2.0 * chance + 1e-9, "{a:?}");
        // The posterior is nearly flat over the whole batch.
        assert!(a.effective_anonymity_set > 0.8 * n as f64 * 0.5, "{a:?}");
        // Pool: the first released message left n − 1 others behind.
        let pools = pool_sizes(&recs, base);
        assert_eq!(pools.iter().max().copied(), Some(n - 1));
    }

    #[test]
    fn tied_sends_score_as_random_tie_breaks() {
        // Four sends at the same instant, delivered later in any order: top1 = 1/4 each.
        let recs: Vec<MessageRecord> = (0..4)
            .map(|i| record(i, 1000, 1100, Some(5000 + i)))
            .collect();
        let obs = Observation::from_records(&recs, &[]);
        let a = timing_adversary(&obs, &params(4000.0, 1000.0));
        assert!((a.top1 - 0.25).abs() < 1e-9, "{a:?}");
        assert_eq!(a.top10, 1.0);
        let expected_mrr = (1.0 + 0.5 + 1.0 / 3.0 + 0.25) / 4.0;
        assert!((a.mrr - expected_mrr).abs() < 1e-9, "{a:?}");
        assert!((a.entropy_bits - 2.0).abs() < 1e-9, "{a:?}");
        assert!((a.effective_anonymity_set - 4.0).abs() < 1e-9);
    }

    #[test]
    fn exponential_delays_fit_the_model_and_hide_senders() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mean_us = 100_000.0;
        let mut t = 0.0f64;
        let recs: Vec<MessageRecord> = (0..5000)
            .map(|i| {
                t += -(1.0 - rng.r#gen::<f64>()).ln() * 2_000.0; // 500 msgs/s
                let d = -(1.0 - rng.r#gen::<f64>()).ln() * mean_us;
                let sent = t as u64;
                record(i, sent, sent + 200, Some(sent + 400 + d as u64))
            })
            .collect();
        let base = baseline_us(&recs).unwrap() as f64;
        assert!((400.0..500.0).contains(&base), "{base}");
        let ks = delay_ks_distance(&added_delays_ms(&recs, base), mean_us / 1000.0).unwrap();
        assert!(ks < 0.03, "{ks}");
        // A wrong model is far.
        let wrong = delay_ks_distance(&added_delays_ms(&recs, base), mean_us / 200.0).unwrap();
        assert!(wrong > 0.3, "{wrong}");
        let obs = Observation::from_records(&recs, &[]);
        let a = timing_adversary(&obs, &params(base, mean_us));
        // ≈ 500 msgs/s × 0.1 s = 50 messages mixed: far from certain linking, above chance.
        assert!(a.top1 < 0.2, "{a:?}");
        assert!(a.top1 > a.baseline_top1, "{a:?}");
        assert!(a.effective_anonymity_set > 20.0, "{a:?}");
        // Pools hold about rate × mean = 50 messages.
        let pools = pool_summary(&pool_sizes(&recs, base));
        assert!((30.0..80.0).contains(&pools.median), "{pools:?}");
    }

    #[test]
    fn datagram_sizes_from_counters() {
        assert_eq!(
            datagram_sizes(&[(10, 14_520), (3, 4356), (0, 0)]),
            vec![1452]
        );
        assert_eq!(datagram_sizes(&[(10, 14_520), (2, 2652)]), vec![1326, 1452]);
        assert_eq!(datagram_sizes(&[(3, 4000)]), vec![1333, 1334]);
        assert!(datagram_sizes(&[]).is_empty());
    }

    #[test]
    fn cover_frames_are_decoys() {
        // FIFO zero delay, but a cover frame enters right after each real SEND.
        let recs: Vec<MessageRecord> = (0..100)
            .map(|i| record(i, i * 1000, i * 1000 + 100, Some(i * 1000 + 300)))
            .collect();
        let cover: Vec<u64> = (0..100).map(|i| i * 1000 + 10).collect();
        let obs = Observation::from_records(&recs, &cover);
        assert_eq!(obs.sends.len(), 200);
        let a = timing_adversary(&obs, &params(290.0, 100.0));
        assert_eq!(a.top1, 0.0, "{a:?}");
        assert!((a.mrr - 0.5).abs() < 1e-9, "{a:?}");
        assert_eq!(delay_ks_distance(&[], 1.0), None);
        assert_eq!(delay_ks_distance(&[1.0], 0.0), None);
    }
}
