//! `sotto-loadtest`: command line. See `docs/loadtest.md`.
//!
//! Exit status: 0 when every accepted message arrived exactly once and intact, 2 when any
//! was lost or corrupted or a SEND failed, 1 when the run could not be set up.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use sotto_loadtest::plot::{self, PlotData};
use sotto_loadtest::report::{write_csv, write_json};
use sotto_loadtest::sessions::IdleSessionsOptions;
use sotto_loadtest::{DelayKind, Options, Outcome};
use sotto_protocol::{MAX_BODY, RelayAddress};
use sotto_transport::QuicOptions;
use sotto_transport::TransportChoice;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DelayArg {
    Poisson,
    Rounds,
    Off,
}

/// Load, exactly-once verification and timing-leakage measurement for Sotto relays.
///
/// Without --relay, starts an embedded relay in this process on a temporary data directory.
#[derive(Debug, Parser)]
#[command(name = "sotto-loadtest", version)]
struct Cli {
    /// Target a running relay (sotto://KEY@HOST:PORT); repeat to spread queues over several.
    #[arg(long = "relay", value_name = "ADDR")]
    relays: Vec<RelayAddress>,
    /// Create password of the targeted relays (private relays).
    #[arg(long, env = "SOTTO_CREATE_PASSWORD", hide_env_values = true)]
    create_password: Option<String>,
    /// Number of queues, spread over the relays.
    #[arg(long, default_value_t = 64)]
    queues: u32,
    /// Sender sessions, and as many receiver sessions, per relay.
    #[arg(long, default_value_t = 2)]
    connections: u32,
    /// Messages to send [default: 10000 unless --duration is given].
    #[arg(long)]
    messages: Option<u64>,
    /// Stop sending after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Total arrival rate in messages per second (Poisson); 0 = as fast as --window allows.
    #[arg(long, value_name = "MSGS_PER_S", default_value_t = 0.0)]
    rate: f64,
    /// Most messages sent and not yet delivered.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = MAX_BODY)]
    body_bytes: usize,
    /// Delay mode of the embedded relay (with --relay: the remote relay's mode, for the
    /// model).
    #[arg(long, value_enum, default_value_t = DelayArg::Poisson)]
    delay_mode: DelayArg,
    /// Mean of the exponential delay (poisson), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100.0)]
    delay_mean: f64,
    /// Cap of the exponential delay, in milliseconds [default: max(10 s, 10 × mean)].
    #[arg(long, value_name = "MS")]
    delay_cap: Option<f64>,
    /// Round length (rounds), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500.0)]
    round: f64,
    /// Cover frames per second from each sender session and (embedded relay) from the relay
    /// to each subscribed session.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    cover_rate: f64,
    /// Workload seed: the same seed gives the same workload.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Write the metrics as JSON to FILE (`-` = standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write one CSV row per message to FILE.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Write the latency CDF and added-delay histogram to FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Run the workload over bare QUIC through a plain forwarder instead (the ceiling).
    #[arg(long, conflicts_with = "compare_ceiling")]
    ceiling: bool,
    /// Run the relay workload, then the ceiling, and report the ratio.
    #[arg(long)]
    compare_ceiling: bool,
    /// Only create N queues as fast as possible, report the rate, and exit.
    #[arg(long, value_name = "N")]
    create_queues: Option<u64>,
    /// Only open N idle sessions to the running relay given with --relay (handshake, then
    /// QUIC keep-alives), hold them for --hold seconds, and report the relay's memory per
    /// session and CPU per handshake (needs --relay-pid).
    #[arg(long, value_name = "N", requires = "relays")]
    idle_sessions: Option<u64>,
    /// Process id of the relay given with --relay, to read its memory and CPU time from /proc.
    #[arg(long, value_name = "PID")]
    relay_pid: Option<u32>,
    /// --idle-sessions: seconds to keep the sessions open before measuring and closing.
    #[arg(long, value_name = "SECS", default_value_t = 15.0)]
    hold: f64,
    /// --idle-sessions: handshakes in progress at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    handshake_concurrency: usize,
    /// Embedded relay: commit without fsync (benchmarks of the durability cost only).
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Embedded relay: use (and keep) this data directory instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Fixed QUIC MTU of the tester's connections and the embedded relay (0 = quinn's MTU
    /// discovery from 1200).
    #[arg(long, default_value_t = 1452)]
    mtu: u16,
    /// Transport of the relay sessions: quic, or tcp (TLS over TCP; an embedded relay then
    /// also listens on TCP, a remote one needs `listen_tcp`). The ceiling is always QUIC.
    #[arg(long, value_name = "quic|tcp", default_value = "quic")]
    transport: TransportChoice,
    /// Seconds to wait for outstanding messages after the last SEND [default: delay cap or
    /// round + 15].
    #[arg(long, value_name = "SECS")]
    drain_timeout: Option<f64>,
    /// Use this baseline path latency (ms) instead of the measured minimum.
    #[arg(long, value_name = "MS")]
    baseline_ms: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Do not print the table.
    #[arg(long, short)]
    quiet: bool,
}

fn ms(v: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v / 1000.0)
        .with_context(|| format!("--{flag} must be a non-negative number of milliseconds"))
}

impl Cli {
    fn options(&self) -> anyhow::Result<Options> {
        let secs = |v: f64, flag: &str| {
            Duration::try_from_secs_f64(v)
                .with_context(|| format!("--{flag} must be a non-negative number of seconds"))
        };
        Ok(Options {
            relays: self.relays.clone(),
            create_password: self.create_password.clone(),
            queues: self.queues,
            connections: self.connections,
            messages: match (self.messages, self.duration) {
                (None, None) => Some(10_000),
                (m, _) => m,
            },
            duration: self.duration.map(|d| secs(d, "duration")).transpose()?,
            rate: self.rate,
            window: self.window,
            body_bytes: self.body_bytes,
            delay: match self.delay_mode {
                DelayArg::Poisson => DelayKind::Poisson,
                DelayArg::Rounds => DelayKind::Rounds,
                DelayArg::Off => DelayKind::Off,
            },
            delay_mean: ms(self.delay_mean, "delay-mean")?,
            delay_cap: self.delay_cap.map(|c| ms(c, "delay-cap")).transpose()?,
            round: ms(self.round, "round")?,
            cover_rate: self.cover_rate,
            seed: self.seed,
            mtu: self.mtu,
            transport: self.transport,
            unsafe_no_fsync: self.unsafe_no_fsync,
            data_dir: self.data_dir.clone(),
            drain_timeout: self
                .drain_timeout
                .map(|d| secs(d, "drain-timeout"))
                .transpose()?,
            baseline: self.baseline_ms.map(|b| ms(b, "baseline-ms")).transpose()?,
            progress: !self.no_progress,
        })
    }
}

fn write_outputs(cli: &Cli, outcome: &Outcome, opts: &Options) -> anyhow::Result<()> {
    if let Some(path) = &cli.json {
        write_json(path, &outcome.report)?;
    }
    if let Some(path) = &cli.csv {
        write_csv(path, &outcome.records)?;
    }
    if let Some(path) = &cli.plot {
        let r = &outcome.report;
        let to_ms = |v: Vec<u64>| v.into_iter().map(|us| us as f64 / 1000.0).collect();
        let model = (r.delay_model.mean_ms > 0.0).then_some(r.delay_model.mean_ms);
        let data = PlotData {
            title: format!(
                "sotto-loadtest: {} — delay {} {}, {} queues, {} msg/s, seed {}",
                r.mode,
                r.delay_model.mode,
                model.map_or_else(String::new, |m| format!("mean {m:.0} ms")),
                opts.queues,
                r.throughput_msgs_per_s.round(),
                opts.seed
            ),
            latency_ms: to_ms(sotto_loadtest::metrics::latencies_us(&outcome.records)),
            ok_latency_ms: to_ms(sotto_loadtest::metrics::ok_latencies_us(&outcome.records)),
            added_delay_ms: outcome.added_delay_ms.clone(),
            model_mean_ms: model,
        };
        plot::write_svg(path, &data)?;
    }
    Ok(())
}

async fn idle_sessions(cli: &Cli, n: u64) -> anyhow::Result<ExitCode> {
    let relay = match cli.relays.as_slice() {
        [r] => r.clone(),
        _ => anyhow::bail!("--idle-sessions needs exactly one --relay"),
    };
    let quic = if cli.mtu == 0 {
        QuicOptions::default()
    } else {
        QuicOptions::uniform_mtu(cli.mtu)
    };
    let opts = IdleSessionsOptions {
        relay,
        relay_pid: cli.relay_pid,
        sessions: n,
        concurrency: cli.handshake_concurrency,
        hold: Duration::try_from_secs_f64(cli.hold)
            .context("--hold must be a non-negative number of seconds")?,
        quic,
        connect_timeout: Duration::from_secs(30),
    };
    let report = sotto_loadtest::sessions::idle_sessions(&opts).await?;
    if !cli.quiet {
        print!("{}", report.to_table());
    }
    if let Some(path) = &cli.json {
        write_json(path, &report)?;
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let opts = cli.options()?;
    if let Some(n) = cli.idle_sessions {
        return idle_sessions(&cli, n).await;
    }
    if let Some(n) = cli.create_queues {
        let report = sotto_loadtest::create_queues(&opts, n).await?;
        if !cli.quiet {
            print!("{}", report.to_table());
        }
        if let Some(path) = &cli.json {
            write_json(path, &report)?;
        }
        return Ok(if report.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }
    let outcome = if cli.ceiling {
        let mut o = sotto_loadtest::run_ceiling(&opts).await?;
        o.report.ceiling_msgs_per_s = Some(o.report.throughput_msgs_per_s);
        o
    } else if cli.compare_ceiling {
        sotto_loadtest::run_compare(&opts).await?
    } else {
        sotto_loadtest::run_relay(&opts).await?
    };
    if !cli.quiet {
        print!("{}", outcome.report.to_table());
    }
    write_outputs(&cli, &outcome, &opts)?;
    Ok(if outcome.report.ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "verification FAILED: {} lost, {} corrupted, {} SENDs failed",
            outcome.report.counts.lost,
            outcome.report.counts.corrupted,
            outcome.report.counts.send_failed
        );
        ExitCode::from(2)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sotto-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
