//! `sotto-sim`: run a scenario, write its report.
//!
//! `sotto-sim run SCENARIO.toml --out DIR` simulates the scenario and writes
//! `DIR/report.json`, `DIR/checkpoints.csv` and `DIR/linked.svg`, with a progress bar on a
//! terminal; `--set key=value` overrides a scenario field (dotted TOML path).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sotto_sim::Scenario;

/// Simulate a Sotto network and measure how fast a global observer links its users.
#[derive(Debug, Parser)]
#[command(name = "sotto-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one scenario.
    Run {
        /// Scenario file (TOML; see sim/scenarios/).
        scenario: PathBuf,
        /// Directory for report.json, checkpoints.csv and linked.svg.
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        /// Override a field, e.g. `--set population.users=1000` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Plot several runs on one figure: the fraction of targets linked by at least one attack
    /// against messages (docs/threat-model.md's figure).
    Compare {
        /// The SVG to write.
        #[arg(long)]
        out: PathBuf,
        /// Figure title.
        #[arg(long, default_value = "Targets linked by a global observer")]
        title: String,
        /// Runs as LABEL=DIR (a `run --out` directory), in legend order.
        runs: Vec<String>,
    },
    /// Run the load tester's workload in the simulator's relay model and print the timing
    /// adversary's result as JSON (compare with `sotto-loadtest --json`; see docs/sim.md).
    Validate {
        /// Override a field of the workload, e.g. `--set delay_mean_ms=100` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            scenario,
            out,
            set,
            quiet,
        } => {
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("reading {}", scenario.display()))?;
            let scen = load(&text, &set)?;
            let bar = if quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(scen.horizon_ms() / 3_600_000)
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} simulated hours, {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(scen.name.clone());
            let report = sotto_sim::run(&scen, |t| bar.set_position(t / 3_600_000))
                .map_err(anyhow::Error::msg)?;
            bar.finish_and_clear();
            report.write(&out)?;
            for s in &report.attacks {
                println!(
                    "{:>6}: linked {}/{} targets; messages-to-link median {} p10 {}; 90 % at {}",
                    s.attack,
                    s.linked,
                    s.targets,
                    show(s.median_messages),
                    show(s.p10_messages),
                    show(s.n90_messages),
                );
            }
            let v = &report.service;
            println!(
                "service: {} of {} messages delivered, latency p50 {:.1} s p90 {:.1} s (to a connected recipient p50 {:.1} s p90 {:.1} s), {:.0} MB per connected day, {:.0} % of the time connected; {:.0} s",
                v.delivered,
                v.written,
                v.latency_p50_s,
                v.latency_p90_s,
                v.connected_p50_s,
                v.connected_p90_s,
                v.mb_per_online_day,
                v.online_fraction * 100.0,
                report.wall_s
            );
            println!("report: {}", out.join("report.json").display());
            Ok(())
        }
        Command::Compare { out, title, runs } => {
            let mut curves = Vec::new();
            for r in runs {
                let Some((label, dir)) = r.split_once('=') else {
                    bail!("runs are LABEL=DIR, got `{r}`");
                };
                let path = PathBuf::from(dir).join("report.json");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)?;
                let targets: Vec<sotto_sim::attack::Target> =
                    serde_json::from_value(v["targets"].clone()).context("targets")?;
                curves.push((
                    label.to_owned(),
                    sotto_sim::report::any_attack_curve(&targets),
                ));
            }
            sotto_sim::report::compare_svg(&out, &title, &curves)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Validate { set } => {
            let table = apply(toml::Table::new(), &set)?;
            let spec: sotto_sim::validate::ValidateSpec =
                toml::from_str(&toml::to_string(&table)?).context("the workload")?;
            let v = sotto_sim::validate::run(&spec).map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "not reached".to_owned(), |n| n.to_string())
}

/// Parses the scenario and applies `key=value` overrides through TOML.
fn load(text: &str, set: &[String]) -> anyhow::Result<Scenario> {
    let table: toml::Table = toml::from_str(text).context("parsing the scenario")?;
    let table = apply(table, set)?;
    Scenario::from_toml(&toml::to_string(&table)?).map_err(anyhow::Error::msg)
}

/// Applies `key=value` overrides (dotted keys, TOML values, bare words as strings).
fn apply(mut table: toml::Table, set: &[String]) -> anyhow::Result<toml::Table> {
    for kv in set {
        let Some((key, value)) = kv.split_once('=') else {
            bail!("--set takes KEY=VALUE, got `{kv}`");
        };
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut at = &mut table;
        for p in parts {
            at = at
                .entry(p)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .with_context(|| format!("`{p}` in `{key}` is not a table"))?;
        }
        at.insert(last.to_owned(), value);
    }
    Ok(table)
}
