//! A finished run's [`Outcome`]: its [`Report`], computed from the run's [`Tally`] and what
//! was [`Measured`] around it with the pure functions of [`crate::metrics`], and the raw
//! material of the CSV and the plot.
//!
//! It is a pure function of its inputs: it touches no session, clock or file (formatting and
//! writing the report are [`crate::report`]'s).

use std::time::Duration;

use super::Options;
use super::accounting::Tally;
use crate::metrics::{self, MessageRecord};
use crate::report::{AdversarySummary, DelayModel, Report, WireSummary};

/// Deliveries over which the posterior entropy is averaged (evenly spaced).
const ENTROPY_SAMPLE: usize = 2000;

/// The result of a run: the report and the raw material of the CSV and the plot.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The metrics.
    pub report: Report,
    /// One record per message, indexed by sequence number.
    pub records: Vec<MessageRecord>,
    /// Added delay of each delivered message (ms).
    pub added_delay_ms: Vec<f64>,
}

/// What a run measured besides the records.
#[derive(Debug, Default)]
pub(super) struct Measured {
    /// Messages dispatched.
    pub(super) dispatched: u64,
    /// Seconds from the first dispatch to the last.
    pub(super) dispatch_s: f64,
    /// Process CPU time over dispatch and drain.
    pub(super) cpu: Duration,
    /// The embedded relay's threads' CPU time over the same span.
    pub(super) relay_cpu: Option<Duration>,
}

/// Computes the outcome of a `mode` (`"relay"` or `"ceiling"`) run.
pub(super) fn finish(
    opts: &Options,
    mode: &str,
    tally: Tally,
    m: &Measured,
    wire: WireSummary,
) -> Outcome {
    let Tally {
        records,
        corrupted,
        ack_failed,
        cover,
        errors,
    } = tally;
    let counts = metrics::delivery_counts(&records, corrupted);
    let first_sent = records.iter().filter_map(|r| r.sent_at_us).min();
    let last_recv = records.iter().filter_map(|r| r.received_at_us).max();
    let elapsed_s = match (first_sent, last_recv) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e6,
        _ => m.dispatch_s.max(1e-6),
    };
    let delivered = counts.delivered as f64;
    let model_mean_ms = if mode == "ceiling" {
        0.0
    } else {
        opts.model_mean_ms()
    };
    let base_us = opts
        .baseline
        .map(|b| b.as_secs_f64() * 1e6)
        .or_else(|| metrics::baseline_us(&records).map(|b| b as f64))
        .unwrap_or(0.0);
    let added = metrics::added_delays_ms(&records, base_us);
    let (adv, params) =
        metrics::score_timing_adversary(&records, &cover, base_us, model_mean_ms, ENTROPY_SAMPLE);
    let adversary_mean_us = params.mean_us;
    let per_msg = |d: Duration| (delivered > 0.0).then(|| d.as_secs_f64() * 1e6 / delivered);
    let report = Report {
        mode: mode.into(),
        config: opts.run_config(),
        counts,
        elapsed_s,
        throughput_msgs_per_s: delivered / elapsed_s,
        throughput_mib_per_s: delivered * opts.body_bytes as f64 / elapsed_s / f64::from(1 << 20),
        latency_ms: metrics::percentiles_ms(metrics::latencies_us(&records)),
        ok_latency_ms: metrics::percentiles_ms(metrics::ok_latencies_us(&records)),
        delay_model: DelayModel {
            mode: if mode == "ceiling" {
                "off".into()
            } else {
                opts.delay.name().into()
            },
            mean_ms: model_mean_ms,
        },
        baseline_ms: base_us / 1000.0,
        delay_ks_distance: metrics::delay_ks_distance(&added, model_mean_ms),
        pool_size: metrics::pool_summary(&metrics::pool_sizes(&records, base_us)),
        adversary: AdversarySummary {
            top1: adv.top1,
            top10: adv.top10,
            mrr: adv.mrr,
            baseline_top1: adv.baseline_top1,
            mean_candidates: adv.mean_candidates,
            model_mean_ms: adversary_mean_us / 1000.0,
        },
        entropy_bits: adv.entropy_bits,
        effective_anonymity_set: adv.effective_anonymity_set,
        frame_sizes_distinct: wire.sizes.len() as u64,
        wire,
        cpu_us_per_msg: per_msg(m.cpu),
        relay_cpu_us_per_msg: m.relay_cpu.and_then(per_msg),
        ceiling_msgs_per_s: None,
        relay_to_ceiling_ratio: None,
        ack_failed,
        errors,
    };
    if m.dispatched == 0 {
        tracing::warn!("no message was dispatched");
    }
    Outcome {
        report,
        records,
        added_delay_ms: added,
    }
}
