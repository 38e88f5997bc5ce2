//! A run's results: JSON (everything), CSV (one row per target and checkpoint) and an SVG
//! plot (fraction of targets linked against messages sent, per attack).
//!
//! Pure presentation over [`RunReport`]; nothing here simulates or attacks.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use serde::Serialize;

use crate::attack::{ATTACKS, Summary, Target};
use crate::scenario::Scenario;
use crate::world::RunStats;

/// Bytes one record costs on the wire (see `sotto_timing::policy::WIRE_BYTES_PER_RECORD`).
const WIRE: f64 = sotto_timing::policy::WIRE_BYTES_PER_RECORD as f64;

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The scenario, as run.
    pub scenario: Scenario,
    /// One summary per attack, over all targets.
    pub attacks: Vec<Summary>,
    /// The same over the targets whose client stays connected all the time.
    pub attacks_always_online: Vec<Summary>,
    /// The same over the targets who connect in sessions.
    pub attacks_in_sessions: Vec<Summary>,
    /// Costs and service the users got.
    pub service: Service,
    /// Per-target checkpoints.
    pub targets: Vec<Target>,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

/// Bandwidth and latency.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Service {
    /// Messages written and delivered.
    pub written: u64,
    /// Delivered.
    pub delivered: u64,
    /// Loops sent and back.
    pub loops_sent: u64,
    /// Loops back.
    pub loops_delivered: u64,
    /// SENDs refused by a full queue.
    pub quota_refused: u64,
    /// Median write → delivery latency, seconds.
    pub latency_p50_s: f64,
    /// 90th percentile, seconds.
    pub latency_p90_s: f64,
    /// Median latency of the messages whose recipient was connected when they were released
    /// (the cost of the network and the policy, without waiting for the recipient), seconds.
    pub connected_p50_s: f64,
    /// 90th percentile of the same, seconds.
    pub connected_p90_s: f64,
    /// Median wait before leaving the author (the paced outbox), seconds.
    pub outbox_p50_s: f64,
    /// Median from leaving to release by the recipient's relay, seconds.
    pub relays_p50_s: f64,
    /// Median from release to delivery, seconds.
    pub push_p50_s: f64,
    /// Mean megabytes a connected client moves per day (both directions): the policy's cost.
    pub mb_per_online_day: f64,
    /// Mean megabytes per user per calendar day (both directions), connected or not.
    pub mb_per_user_day: f64,
    /// Fraction of the time users were connected.
    pub online_fraction: f64,
    /// Events simulated.
    pub events: u64,
}

impl Service {
    /// Costs and latencies from a run's statistics.
    pub fn from_stats(s: &RunStats, users: u32, days: f64) -> Self {
        let q = |v: &[u64], p: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let i = ((v.len() as f64 * p) as usize).min(v.len() - 1);
            v[i] as f64 / 1000.0
        };
        let client_frames = (s.up_frames + s.down_frames) as f64;
        let online_days = s.online_ms as f64 / 86_400_000.0;
        Service {
            written: s.written,
            delivered: s.delivered,
            loops_sent: s.loops_sent,
            loops_delivered: s.loops_delivered,
            quota_refused: s.quota_refused,
            latency_p50_s: q(&s.latencies_ms, 0.5),
            latency_p90_s: q(&s.latencies_ms, 0.9),
            connected_p50_s: q(&s.connected_latencies_ms, 0.5),
            connected_p90_s: q(&s.connected_latencies_ms, 0.9),
            outbox_p50_s: q(&s.outbox_ms, 0.5),
            relays_p50_s: q(&s.relay_ms, 0.5),
            push_p50_s: q(&s.push_ms, 0.5),
            mb_per_online_day: if online_days > 0.0 {
                client_frames * WIRE / 1e6 / online_days
            } else {
                0.0
            },
            mb_per_user_day: client_frames * WIRE / 1e6 / (f64::from(users) * days),
            online_fraction: online_days / (f64::from(users) * days),
            events: s.events,
        }
    }
}

impl RunReport {
    /// Writes `report.json`, `checkpoints.csv` and `linked.svg` into `dir`.
    ///
    /// # Errors
    /// If the directory or a file cannot be written.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("report.json"), json + "\n")?;
        let mut csv = String::from("alice,bob,messages,at_s");
        for a in ATTACKS {
            csv.push_str(&format!(",rank_{a}"));
        }
        csv.push('\n');
        for t in &self.targets {
            for c in &t.checkpoints {
                csv.push_str(&format!(
                    "{},{},{},{:.3}",
                    t.alice,
                    t.bob,
                    c.messages,
                    c.at_ms as f64 / 1000.0
                ));
                for r in c.ranks {
                    csv.push_str(&format!(",{r}"));
                }
                csv.push('\n');
            }
        }
        std::fs::write(dir.join("checkpoints.csv"), csv)?;
        self.plot(&dir.join("linked.svg"))
    }

    /// The fraction of targets whose Bob is ranked first after n messages, per attack.
    pub fn linked_curves(&self) -> Vec<(String, Vec<(u64, f64)>)> {
        let mut counts: Vec<u64> = self
            .targets
            .iter()
            .flat_map(|t| t.checkpoints.iter().map(|c| c.messages))
            .collect();
        counts.sort_unstable();
        counts.dedup();
        ATTACKS
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let pts = counts
                    .iter()
                    .filter_map(|&n| {
                        let at: Vec<bool> = self
                            .targets
                            .iter()
                            .filter_map(|t| t.checkpoints.iter().find(|c| c.messages == n))
                            .map(|c| c.ranks[k] == 1)
                            .collect();
                        (at.len() >= 10).then(|| {
                            (
                                n,
                                at.iter().filter(|&&b| b).count() as f64 / at.len() as f64,
                            )
                        })
                    })
                    .collect();
                ((*name).to_owned(), pts)
            })
            .collect()
    }

    fn plot(&self, path: &Path) -> anyhow::Result<()> {
        let curves = self.linked_curves();
        let max_n = curves
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(n, _)| *n))
            .max()
            .unwrap_or(1)
            .max(2);
        let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: targets linked (Bob ranked first)", self.scenario.name),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((1u64..max_n).log_scale(), 0.0..1.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("messages from Alice to Bob")
            .y_desc("fraction of targets")
            .draw()
            .map_err(plot_err)?;
        for (i, (name, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|&(n, f)| (n, f)),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        Ok(())
    }
}

/// The fraction of targets whose Bob at least one attack ranks first after n messages
/// (the adversary that runs all three), over the targets that reached n (at least 10).
pub fn any_attack_curve(targets: &[Target]) -> Vec<(u64, f64)> {
    let mut counts: Vec<u64> = targets
        .iter()
        .flat_map(|t| t.checkpoints.iter().map(|c| c.messages))
        .collect();
    counts.sort_unstable();
    counts.dedup();
    counts
        .into_iter()
        .filter_map(|n| {
            let at: Vec<bool> = targets
                .iter()
                .filter_map(|t| t.checkpoints.iter().find(|c| c.messages == n))
                .map(|c| c.ranks.contains(&1))
                .collect();
            (at.len() >= 10).then(|| {
                (
                    n,
                    at.iter().filter(|&&b| b).count() as f64 / at.len() as f64,
                )
            })
        })
        .collect()
}

/// Draws one curve per labelled run: the fraction of targets linked by at least one attack
/// against the number of messages from Alice to Bob (log scale).
///
/// # Errors
/// If the file cannot be written.
pub fn compare_svg(
    path: &Path,
    title: &str,
    runs: &[(String, Vec<(u64, f64)>)],
) -> anyhow::Result<()> {
    let max_n = runs
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(n, _)| *n))
        .max()
        .unwrap_or(1)
        .max(2);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1u64..max_n).log_scale(), 0.0..1.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("messages from Alice to Bob")
        .y_desc("fraction of targets linked")
        .draw()
        .map_err(plot_err)?;
    for (i, (name, pts)) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e:?}")
}
