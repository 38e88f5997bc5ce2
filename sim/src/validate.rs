//! Validation: the load tester's workload in the simulator's relay model, scored by the load
//! tester's own timing adversary.
//!
//! `sotto-loadtest` runs a seeded workload through a real relay: Poisson arrivals at a fixed
//! rate, each message a SEND from one of the sender sessions into one of the queues, whose
//! recipients are subscribed on receiver sessions and ACK each message as it arrives; sender
//! sessions may send cover frames. It then scores a timing adversary who sees when frames
//! enter the relay and when messages leave it (`sotto_loadtest::metrics`).
//!
//! This module runs the same workload in virtual time through the same relay core the
//! simulator uses everywhere — release times from [`DelaySampler`], the pool in
//! [`Scheduler`], one message in flight per queue until its ACK — with fixed network and
//! storage latencies, builds the load tester's own [`MessageRecord`]s, and scores them with
//! [`sotto_loadtest::metrics::score_timing_adversary`], the function the load tester calls.
//! If the two top-1 figures agree (`docs/sim.md`, ±20 %), the simulator's model of a relay's
//! mixing is what the relay does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sotto_loadtest::metrics::{AdversaryResult, MessageRecord, score_timing_adversary};
use sotto_timing::exp::poisson_gap;
use sotto_timing::{DelayMode, DelaySampler, Scheduler};

use crate::rng::{Stream, rng_for};

/// The workload, as the load tester's flags give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateSpec {
    /// Seed.
    pub seed: u64,
    /// Messages per second, all senders together (`--rate`).
    pub rate: f64,
    /// Messages (`--messages`).
    pub messages: u64,
    /// Queues (`--queues`).
    pub queues: u32,
    /// Sender sessions (`--connections`).
    pub senders: u32,
    /// Delay mode: `poisson`, `rounds` or `off` (`--delay-mode`).
    pub delay: String,
    /// Mean (Poisson) or round period (rounds), ms (`--delay-mean`, `--round`).
    pub delay_mean_ms: u64,
    /// Poisson cap, ms.
    pub delay_cap_ms: u64,
    /// Cover frames per second per sender session (`--cover-rate`).
    pub cover_rate: f64,
    /// Client → relay one-way latency, µs (loopback, plus the session's processing).
    pub up_us: u64,
    /// Relay → client one-way latency, µs.
    pub down_us: u64,
    /// SEND arrival to durable commit, µs (a group commit on this machine's disk).
    pub store_us: u64,
    /// Mean of an exponential jitter added twice to each message's path, before it is stored
    /// (waiting for a group commit) and after it is released (waking its session, batching
    /// frames), µs; fitted to the real relay without delay (docs/sim.md).
    pub jitter_us: u64,
}

impl Default for ValidateSpec {
    fn default() -> Self {
        Self {
            seed: 1,
            rate: 100.0,
            messages: 3000,
            queues: 64,
            senders: 2,
            delay: "poisson".into(),
            delay_mean_ms: 1000,
            delay_cap_ms: 10_000,
            cover_rate: 0.0,
            up_us: 300,
            down_us: 300,
            store_us: 500,
            jitter_us: 0,
        }
    }
}

/// The simulated run's adversary result and what it was computed from.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// The workload.
    pub spec: ValidateSpec,
    /// The load tester's adversary, on simulated records.
    pub adversary: AdversaryResult,
    /// Messages delivered.
    pub delivered: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Send(u32),
    Arrive(u32),
    Wake,
    Deliver(u32),
    Ack(u32),
}

/// Runs the workload; times are kept in microseconds, release times in the relay's
/// milliseconds.
///
/// # Errors
/// An unknown delay mode.
pub fn run(spec: &ValidateSpec) -> Result<Validation, String> {
    let mode = match spec.delay.as_str() {
        "poisson" => DelayMode::Poisson {
            mean: Duration::from_millis(spec.delay_mean_ms),
            cap: Duration::from_millis(spec.delay_cap_ms),
        },
        "rounds" => DelayMode::Rounds {
            period: Duration::from_millis(spec.delay_mean_ms),
        },
        "off" => DelayMode::Off,
        other => return Err(format!("unknown delay mode `{other}`")),
    };
    let model_mean_ms = match mode {
        DelayMode::Poisson { .. } => spec.delay_mean_ms as f64,
        DelayMode::Rounds { .. } => spec.delay_mean_ms as f64 / 2.0,
        DelayMode::Off => 0.0,
    };
    let mut rng = rng_for(spec.seed, Stream::Population, 1);
    let mut sampler = DelaySampler::new(mode, rng_for(spec.seed, Stream::Relay, 0));
    let mut pool: Scheduler<u32> = Scheduler::new();
    let mut heap: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<_>, t: u64, ev: Ev| {
        seq += 1;
        heap.push(Reverse((t, seq, ev)));
    };
    let mut records: Vec<MessageRecord> = Vec::with_capacity(spec.messages as usize);
    let mut t = 0u64;
    for i in 0..spec.messages {
        t += u64::try_from(poisson_gap(&mut rng, spec.rate).as_micros()).unwrap_or(u64::MAX);
        let queue = rng.gen_range(0..spec.queues.max(1));
        let sender = rng.gen_range(0..spec.senders.max(1));
        records.push(MessageRecord {
            seq: i,
            queue,
            sender,
            ..MessageRecord::default()
        });
        push(&mut heap, t, Ev::Send(i as u32));
    }
    let end_of_sends = t;
    let mut cover_us = Vec::new();
    if spec.cover_rate > 0.0 {
        for _ in 0..spec.senders {
            let mut c = 0u64;
            loop {
                c += u64::try_from(poisson_gap(&mut rng, spec.cover_rate).as_micros())
                    .unwrap_or(u64::MAX);
                if c > end_of_sends {
                    break;
                }
                cover_us.push(c);
            }
        }
        cover_us.sort_unstable();
    }
    let mut queues: Vec<(VecDeque<u32>, Option<u32>)> =
        vec![(VecDeque::new(), None); spec.queues.max(1) as usize];
    let mut wake_at: Option<u64> = None;
    while let Some(Reverse((now, _, ev))) = heap.pop() {
        match ev {
            Ev::Send(i) => {
                records[i as usize].sent_at_us = Some(now);
                push(&mut heap, now + spec.up_us, Ev::Arrive(i));
            }
            Ev::Arrive(i) => {
                let stored_us = now + spec.store_us + jitter(&mut rng, spec.jitter_us);
                records[i as usize].ok_at_us = Some(stored_us + spec.down_us);
                let stored_ms = stored_us.div_ceil(1000);
                let release_ms = sampler.release_at(stored_ms);
                pool.insert(i, stored_ms, release_ms);
                if wake_at.is_none_or(|w| release_ms < w) {
                    wake_at = Some(release_ms);
                    push(&mut heap, release_ms * 1000, Ev::Wake);
                }
            }
            Ev::Wake => {
                let now_ms = now / 1000;
                if wake_at != Some(now_ms) {
                    continue;
                }
                for r in pool.pop_due(now_ms, usize::MAX) {
                    let q = records[r.item as usize].queue as usize;
                    queues[q].0.push_back(r.item);
                    if queues[q].1.is_none()
                        && let Some(m) = queues[q].0.pop_front()
                    {
                        queues[q].1 = Some(m);
                        let at = now + spec.down_us + jitter(&mut rng, spec.jitter_us);
                        push(&mut heap, at, Ev::Deliver(m));
                    }
                }
                wake_at = pool.next_deadline();
                if let Some(w) = wake_at {
                    push(&mut heap, w * 1000, Ev::Wake);
                }
            }
            Ev::Deliver(i) => {
                let r = &mut records[i as usize];
                r.received_at_us.get_or_insert(now);
                r.deliveries += 1;
                push(&mut heap, now + spec.up_us, Ev::Ack(i));
            }
            Ev::Ack(i) => {
                let q = records[i as usize].queue as usize;
                queues[q].1 = None;
                if let Some(m) = queues[q].0.pop_front() {
                    queues[q].1 = Some(m);
                    push(&mut heap, now + spec.down_us, Ev::Deliver(m));
                }
            }
        }
    }
    let base_us = sotto_loadtest::metrics::baseline_us(&records).map_or(0.0, |b| b as f64);
    let (adversary, _) = score_timing_adversary(&records, &cover_us, base_us, model_mean_ms, 2000);
    Ok(Validation {
        spec: spec.clone(),
        adversary,
        delivered: records
            .iter()
            .filter(|r| r.received_at_us.is_some())
            .count() as u64,
    })
}

/// One draw of the path jitter, µs (0 when the mean is 0).
fn jitter(rng: &mut impl Rng, mean_us: u64) -> u64 {
    if mean_us == 0 {
        return 0;
    }
    let mean = Duration::from_micros(mean_us);
    let d = sotto_timing::exp::exp_delay(rng, mean, mean * 50);
    u64::try_from(d.as_micros()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_follows_the_analytic_top1() {
        // With arrival rate ρ and mean delay μ, top-1 ≈ 1/(1 + ρμ) (docs/threat-model.md).
        let v = run(&ValidateSpec {
            rate: 100.0,
            delay_mean_ms: 100,
            messages: 3000,
            ..ValidateSpec::default()
        })
        .unwrap();
        assert_eq!(v.delivered, 3000);
        let expect = 1.0 / (1.0 + 100.0 * 0.1);
        assert!(
            (v.adversary.top1 - expect).abs() < 0.03,
            "{}",
            v.adversary.top1
        );
        // Without delay the adversary links nearly everything.
        let off = run(&ValidateSpec {
            delay: "off".into(),
            ..ValidateSpec::default()
        })
        .unwrap();
        assert!(off.adversary.top1 > 0.8, "{}", off.adversary.top1);
    }
}
