//! The results of a run: the [`Report`] (serialised as the JSON output, keys documented in
//! `docs/loadtest.md`), its human-readable table, and the per-message CSV.
//!
//! This module only formats; the numbers come from [`crate::metrics`] via the runner.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::metrics::{DeliveryCounts, MessageRecord, Percentiles, PoolSummary};

/// KS distance above which the table warns that a saturated run's delays are shaped by
/// queueing rather than by the configured delay.
const SATURATED_KS: f64 = 0.1;

/// Everything a run measured. Field names are the JSON keys.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `"relay"` (through Sotto relays) or `"ceiling"` (bare QUIC forwarder).
    pub mode: String,
    /// What was run.
    pub config: RunConfig,
    /// Exactly-once accounting (flattened: `sent`, `delivered`, `lost`, `duplicated`,
    /// `corrupted`, `send_failed`).
    #[serde(flatten)]
    pub counts: DeliveryCounts,
    /// Seconds from the first SEND to the last delivery.
    pub elapsed_s: f64,
    /// Delivered messages per second over `elapsed_s`.
    pub throughput_msgs_per_s: f64,
    /// Delivered body bytes per second over `elapsed_s`, in MiB.
    pub throughput_mib_per_s: f64,
    /// Send → receive latency.
    pub latency_ms: Percentiles,
    /// Send → OK latency.
    pub ok_latency_ms: Percentiles,
    /// The delay model the relay is configured with.
    pub delay_model: DelayModel,
    /// Baseline path latency subtracted from latencies to get the added delay.
    pub baseline_ms: f64,
    /// KS distance between the added delays and Exp(`delay_model.mean_ms`); `null` when the
    /// model has no delay.
    pub delay_ks_distance: Option<f64>,
    /// Messages waiting in the relay when each one left.
    pub pool_size: PoolSummary,
    /// The timing adversary's accuracy.
    pub adversary: AdversarySummary,
    /// Mean posterior entropy over candidate senders (bits).
    pub entropy_bits: f64,
    /// 2^`entropy_bits`.
    pub effective_anonymity_set: f64,
    /// Distinct datagram sizes on the tester's connections (see `docs/loadtest.md`).
    pub frame_sizes_distinct: u64,
    /// Datagram counters behind `frame_sizes_distinct`.
    pub wire: WireSummary,
    /// Process CPU (user + system) per delivered message, µs.
    pub cpu_us_per_msg: Option<f64>,
    /// CPU of the embedded relay's threads per delivered message, µs (`null` for remote
    /// relays and the ceiling).
    pub relay_cpu_us_per_msg: Option<f64>,
    /// Throughput of the ceiling run (with `--ceiling` or `--compare-ceiling`).
    pub ceiling_msgs_per_s: Option<f64>,
    /// `throughput_msgs_per_s / ceiling_msgs_per_s` (with `--compare-ceiling`).
    pub relay_to_ceiling_ratio: Option<f64>,
    /// ACKs that failed.
    pub ack_failed: u64,
    /// Distinct error messages seen (at most a few; never ids, keys or addresses).
    pub errors: Vec<String>,
}

/// The run's parameters, echoed into the report.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// Whether the relay was embedded in this process.
    pub embedded: bool,
    /// Number of relays targeted.
    pub relays: usize,
    /// Queues.
    pub queues: u32,
    /// Sender sessions and receiver sessions per relay (each).
    pub connections: u32,
    /// Message limit, if any.
    pub messages: Option<u64>,
    /// Duration limit, if any (s).
    pub duration_s: Option<f64>,
    /// Arrival rate (msgs/s, 0 = as fast as the window allows).
    pub rate: f64,
    /// Most messages sent and not yet delivered.
    pub window: usize,
    /// Body size.
    pub body_bytes: usize,
    /// Workload seed.
    pub seed: u64,
    /// Cover frames per second per session.
    pub cover_rate: f64,
    /// Fixed QUIC MTU (0 = quinn's MTU discovery).
    pub mtu: u16,
    /// Transport of the relay sessions (`quic` or `tcp`).
    pub transport: String,
    /// Embedded relay committed without fsync.
    pub unsafe_no_fsync: bool,
}

/// The relay's delay model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DelayModel {
    /// `poisson`, `rounds` or `off`.
    pub mode: String,
    /// Mean delay in ms: the exponential's mean; half the round for rounds; 0 for off.
    pub mean_ms: f64,
}

/// The timing adversary's scores (see [`crate::metrics::timing_adversary`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AdversarySummary {
    /// Fraction of deliveries linked to the right SEND at rank 1.
    pub top1: f64,
    /// … within the first ten.
    pub top10: f64,
    /// Mean reciprocal rank.
    pub mrr: f64,
    /// Random guessing among the candidates: mean of 1/|candidates|.
    pub baseline_top1: f64,
    /// Mean number of candidates per delivery.
    pub mean_candidates: f64,
    /// Mean delay the adversary assumed (ms).
    pub model_mean_ms: f64,
}

/// QUIC datagram counters summed over the tester's connections, for the dispatch phase
/// (from the first SEND to the end of the drain; handshakes excluded). With TLS over TCP
/// only the byte counts are filled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WireSummary {
    /// Connections counted.
    pub connections: u64,
    /// Datagrams sent by the tester.
    pub datagrams_tx: u64,
    /// Their bytes (UDP payload).
    pub bytes_tx: u64,
    /// Datagrams received by the tester.
    pub datagrams_rx: u64,
    /// Their bytes.
    pub bytes_rx: u64,
    /// Packets quinn declared lost on the tester's connections.
    pub lost_packets: u64,
    /// The distinct per-datagram sizes inferred (see `docs/loadtest.md`).
    pub sizes: Vec<u64>,
}

/// The report of `--create-queues`.
#[derive(Debug, Clone, Serialize)]
pub struct CreateQueuesReport {
    /// Always `"create_queues"`.
    pub mode: String,
    /// Queues requested.
    pub requested: u64,
    /// Queues created (NEW answered IDS).
    pub created: u64,
    /// NEW requests that failed.
    pub failed: u64,
    /// Seconds.
    pub elapsed_s: f64,
    /// Created queues per second.
    pub queues_per_s: f64,
    /// Process CPU per created queue, µs.
    pub cpu_us_per_queue: Option<f64>,
    /// Embedded relay's CPU per created queue, µs.
    pub relay_cpu_us_per_queue: Option<f64>,
    /// Queues in the embedded relay's store afterwards.
    pub stored_queues: Option<u64>,
    /// Size of the embedded relay's database file afterwards, bytes.
    pub db_bytes: Option<u64>,
    /// Distinct error messages seen.
    pub errors: Vec<String>,
}

fn pct_row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "  {name:<22} p50 {:>9.3}  p90 {:>9.3}  p99 {:>9.3}  p99.9 {:>9.3}  max {:>9.3}",
        p.p50, p.p90, p.p99, p.p999, p.max
    );
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// The human-readable table printed at the end of a run.
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let c = &self.counts;
        let _ = writeln!(
            o,
            "sotto-loadtest — {} ({}, {} queues, {}+{} sessions, seed {})",
            self.mode,
            if self.mode == "ceiling" {
                "in-process forwarder".to_owned()
            } else if self.config.embedded {
                "embedded relay".to_owned()
            } else {
                format!("{} relay(s)", self.config.relays)
            },
            self.config.queues,
            self.config.connections,
            self.config.connections,
            self.config.seed
        );
        let _ = writeln!(
            o,
            "  delivery               sent {}  delivered {}  lost {}  duplicated {}  corrupted {}  send_failed {}",
            c.sent, c.delivered, c.lost, c.duplicated, c.corrupted, c.send_failed
        );
        let _ = writeln!(
            o,
            "  throughput             {:.0} msg/s  {:.2} MiB/s  over {:.2} s",
            self.throughput_msgs_per_s, self.throughput_mib_per_s, self.elapsed_s
        );
        pct_row(&mut o, "latency (ms)", &self.latency_ms);
        pct_row(&mut o, "ok latency (ms)", &self.ok_latency_ms);
        let _ = writeln!(
            o,
            "  delay model            {} mean {:.1} ms  baseline {:.3} ms  KS distance {}",
            self.delay_model.mode,
            self.delay_model.mean_ms,
            self.baseline_ms,
            opt(self.delay_ks_distance, 4)
        );
        let _ = writeln!(
            o,
            "  pool size              median {:.0}  p1 {:.0}",
            self.pool_size.median, self.pool_size.p1
        );
        let a = &self.adversary;
        let _ = writeln!(
            o,
            "  timing adversary       top1 {:.4}  top10 {:.4}  mrr {:.4}  chance {:.4}  ({:.1} candidates)",
            a.top1, a.top10, a.mrr, a.baseline_top1, a.mean_candidates
        );
        let _ = writeln!(
            o,
            "  anonymity              entropy {:.2} bits  effective set {:.1}",
            self.entropy_bits, self.effective_anonymity_set
        );
        let _ = writeln!(
            o,
            "  wire                   {} distinct datagram size(s) {:?}  ({} tx / {} rx datagrams)",
            self.frame_sizes_distinct,
            self.wire.sizes,
            self.wire.datagrams_tx,
            self.wire.datagrams_rx
        );
        let _ = writeln!(
            o,
            "  cpu                    {} µs/msg (process)  {} µs/msg (relay threads)",
            opt(self.cpu_us_per_msg, 1),
            opt(self.relay_cpu_us_per_msg, 1)
        );
        if let Some(ceiling) = self.ceiling_msgs_per_s {
            let _ = writeln!(
                o,
                "  ceiling                {ceiling:.0} msg/s  relay/ceiling {}",
                opt(self.relay_to_ceiling_ratio, 3)
            );
        }
        if self.config.rate == 0.0 && self.delay_ks_distance.is_some_and(|d| d > SATURATED_KS) {
            let _ = writeln!(
                o,
                "  note                   --rate 0 saturates the relay: queueing, not the configured \
                 delay, shapes these delays; measure leakage with a --rate below the throughput"
            );
        }
        for e in &self.errors {
            let _ = writeln!(o, "  error                  {e}");
        }
        o
    }

    /// Whether the run verified: nothing lost, corrupted or failed to send.
    pub fn ok(&self) -> bool {
        self.counts.lost == 0 && self.counts.corrupted == 0 && self.counts.send_failed == 0
    }
}

impl CreateQueuesReport {
    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "sotto-loadtest — create queues: {} of {} created ({} failed) in {:.2} s = {:.0} queues/s",
            self.created, self.requested, self.failed, self.elapsed_s, self.queues_per_s
        );
        let _ = writeln!(
            o,
            "  cpu {} µs/queue (process)  {} µs/queue (relay threads)  stored {}  db {} bytes",
            opt(self.cpu_us_per_queue, 1),
            opt(self.relay_cpu_us_per_queue, 1),
            self.stored_queues
                .map_or_else(|| "-".into(), |v| v.to_string()),
            self.db_bytes.map_or_else(|| "-".into(), |v| v.to_string()),
        );
        for e in &self.errors {
            let _ = writeln!(o, "  error {e}");
        }
        o
    }
}

/// Writes `value` as pretty JSON to `path` (`-` = standard output).
///
/// # Errors
/// If the file cannot be written.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// The CSV header.
pub const CSV_HEADER: &str =
    "seq,queue,sender_session,recipient_session,sent_at_ms,ok_at_ms,released_at_ms,received_at_ms";

/// Writes one row per message: times in milliseconds since the start of the run (three
/// decimals), empty when unknown. `released_at_ms` is always empty: the relay does not
/// reveal release times (MSG timestamps are rounded to the minute).
///
/// # Errors
/// If the file cannot be written.
pub fn write_csv(path: &Path, records: &[MessageRecord]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let ms = |v: Option<u64>| v.map_or_else(String::new, |us| format!("{:.3}", us as f64 / 1000.0));
    writeln!(w, "{CSV_HEADER}")?;
    for r in records {
        writeln!(
            w,
            "{},{},{},{},{},{},,{}",
            r.seq,
            r.queue,
            r.sender,
            r.recipient,
            ms(r.sent_at_us),
            ms(r.ok_at_us),
            ms(r.received_at_us)
        )?;
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}
