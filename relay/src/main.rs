//! `sotto-relay`: run and manage a Sotto relay.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sotto_relay::config::{Config, Overrides};
use sotto_relay::datadir;

#[derive(Parser, Debug)]
#[command(
    name = "sotto-relay",
    version,
    about = "Sotto relay: metadata-resistant anonymous message queues"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a data directory: relay identity, TLS certificate, storage key, config.toml.
    Init {
        /// Data directory [env: SOTTO_RELAY_DATA] [default: ~/.local/share/sotto-relay]
        #[arg(long)]
        data: Option<PathBuf>,
        /// Host name or IP clients use to reach this relay (goes into its address).
        #[arg(long)]
        host: Option<String>,
        /// UDP address to listen on.
        #[arg(long)]
        listen: Option<String>,
        /// Replace an existing identity (the old database is moved aside).
        #[arg(long)]
        force: bool,
    },
    /// Serve (initialising the data directory first if it has no identity).
    Run {
        /// Data directory [env: SOTTO_RELAY_DATA] [default: ~/.local/share/sotto-relay]
        #[arg(long)]
        data: Option<PathBuf>,
        /// UDP address to listen on [env: SOTTO_RELAY_LISTEN] [default: 0.0.0.0:5443]
        #[arg(long)]
        listen: Option<String>,
        /// TCP address for TLS-over-TCP clients (Tor, networks without UDP), or "off"
        /// [env: SOTTO_RELAY_LISTEN_TCP] [default: off]
        #[arg(long)]
        listen_tcp: Option<String>,
        /// Prometheus endpoint address, or "off" [env: SOTTO_RELAY_METRICS] [default: 127.0.0.1:5444]
        #[arg(long)]
        metrics: Option<String>,
        /// Host in the relay's address [env: SOTTO_RELAY_HOST]
        #[arg(long)]
        host: Option<String>,
        /// Release delay of stored messages: "poisson", "rounds" or "off" (`delivery.mode`)
        /// [env: SOTTO_RELAY_DELIVERY_MODE] [default: poisson]
        #[arg(long)]
        delivery_mode: Option<String>,
        /// Mean release delay, e.g. "30s" (`delivery.mean`) [env: SOTTO_RELAY_DELIVERY_MEAN]
        #[arg(long)]
        delivery_mean: Option<String>,
        /// Longest release delay, e.g. "10m" (`delivery.cap`) [env: SOTTO_RELAY_DELIVERY_CAP]
        #[arg(long)]
        delivery_cap: Option<String>,
        /// Cover frames per second to subscribed sessions, 0 for none (`delivery.cover_rate`)
        /// [env: SOTTO_RELAY_DELIVERY_COVER_RATE]
        #[arg(long)]
        cover_rate: Option<String>,
    },
    /// Print the relay's sotto:// address (one line).
    Address {
        /// Data directory [env: SOTTO_RELAY_DATA]
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Validate the configuration and explain any error.
    CheckConfig {
        /// Data directory [env: SOTTO_RELAY_DATA]
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Health check: dial this relay's QUIC listener on loopback (the configured `listen`
    /// port), complete the Noise handshake against its key and PING it. Exit status 0 if it
    /// answered, 1 otherwise (for container HEALTHCHECKs and monitoring).
    Check {
        /// Data directory [env: SOTTO_RELAY_DATA]
        #[arg(long)]
        data: Option<PathBuf>,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Block a queue reported for abuse: it answers BLOCKED to every command and its
    /// messages are deleted. Run it while the relay is stopped (see docs/operator.md,
    /// "Abuse reports").
    Block {
        /// The invitation link (sotto:…), queue address (sotto://…#…) or queue id
        /// (32 base64url characters) from the report.
        target: String,
        /// Data directory [env: SOTTO_RELAY_DATA]
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Lift a block (the relay must be stopped); the queue is active again, empty.
    Unblock {
        /// What `block` was given, or an entry of `blocks list` (64 hex digits).
        target: String,
        /// Data directory [env: SOTTO_RELAY_DATA]
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// The block list.
    Blocks {
        #[command(subcommand)]
        command: BlocksCmd,
    },
}

#[derive(Subcommand, Debug)]
enum BlocksCmd {
    /// Print how many queues are blocked, then one line per block: its entry (a keyed hash
    /// of the queue's id, meaningless without storage.key) and when it was made.
    List {
        /// Data directory [env: SOTTO_RELAY_DATA]
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn load_config(dir: &std::path::Path, overrides: &Overrides) -> anyhow::Result<Config> {
    Config::load(dir, env, overrides).map_err(|e| anyhow::anyhow!("configuration error: {e}"))
}

/// Logs to stderr, filtered by `RUST_LOG` (else `log.level`), human or JSON (`log.format`).
///
/// Privacy: the relay's own events (targets `sotto_*`) redact addresses, ids and keys unless
/// `log.sensitive` is on. Dependencies do not: quinn and quinn-udp put peer addresses in
/// their debug events and in some warnings (quinn-udp's `sendmsg error` names the
/// destination). So unless `log.sensitive` is on, only *errors* of other crates pass,
/// whatever `RUST_LOG` asks for. See `docs/operator.md`, "Logging".
fn init_logging(config: &Config) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, filter::filter_fn};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let sensitive = config.log.sensitive;
    let privacy = filter_fn(move |meta| {
        sensitive || meta.target().starts_with("sotto") || *meta.level() <= tracing::Level::ERROR
    });
    let registry = tracing_subscriber::registry().with(filter).with(privacy);
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if config.log.format == "json" {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    if sensitive {
        // Printed whatever the filter, so it cannot be missed.
        eprintln!(
            "sotto-relay: WARNING: SENSITIVE LOGGING IS ON (log.sensitive): logs will contain \
             client IP addresses and queue ids. Never leave this on in production."
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Init {
            data,
            host,
            listen,
            force,
        } => {
            let dir = data.unwrap_or_else(datadir::default_dir);
            datadir::init(
                &dir,
                &datadir::InitOptions {
                    host,
                    listen,
                    force,
                },
            )?;
            let config = load_config(&dir, &Overrides::default())?;
            let id = datadir::load_identity(&dir)?;
            println!("initialised {}", dir.display());
            println!(
                "{}",
                datadir::address(&id.relay_key, &config, config.listen.port())?
            );
            Ok(())
        }
        Cmd::Address { data } => {
            let dir = data.unwrap_or_else(datadir::default_dir);
            let config = load_config(&dir, &Overrides::default())?;
            let id = datadir::load_identity(&dir)?;
            let address = datadir::address(&id.relay_key, &config, config.listen.port())?;
            println!("{address}");
            // This command sees config.toml and its own environment only, not the flags or
            // environment of the running relay (a systemd unit's `Environment=`).
            match datadir::served_address(&dir) {
                Some(served) if served != address => eprintln!(
                    "sotto-relay: warning: the relay last started with another address, {served} \
                     (flags or environment this command does not see: --host, --listen, \
                     --listen-tcp, SOTTO_RELAY_*); the line above is what config.toml and this \
                     environment say"
                ),
                Some(_) => {}
                None => eprintln!(
                    "sotto-relay: note: computed from config.toml and this environment; the \
                     relay has not recorded a start yet, so flags or an environment it runs \
                     with (--host, --listen-tcp, SOTTO_RELAY_*) may give another address"
                ),
            }
            Ok(())
        }
        Cmd::CheckConfig { data } => {
            let dir = data.unwrap_or_else(datadir::default_dir);
            let config = load_config(&dir, &Overrides::default())?;
            if datadir::has_identity(&dir) {
                datadir::load_identity(&dir)?;
            }
            println!(
                "configuration OK ({}): listen {}, listen_tcp {}, delivery {}, metrics {}",
                dir.join(sotto_relay::config::CONFIG_FILE).display(),
                config.listen,
                config.listen_tcp,
                config.delivery.mode,
                config.metrics
            );
            Ok(())
        }
        Cmd::Check { data, timeout } => {
            let dir = data.unwrap_or_else(datadir::default_dir);
            let config = load_config(&dir, &Overrides::default())?;
            let id = datadir::load_identity(&dir)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let took = rt.block_on(async {
                tokio::time::timeout(timeout, check(&config, &id))
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
            })?;
            println!("ok: the relay answered PING in {} ms", took.as_millis());
            Ok(())
        }
        Cmd::Block { target, data } => offline(data, |store, key| async move {
            let b = sotto_relay::abuse::block(&store, &key, &target).await?;
            if b.already {
                println!("already blocked: {} (nothing changed)", b.entry);
            } else {
                println!(
                    "blocked {}: {} message(s) deleted; every command on the queue is answered \
                     BLOCKED once the relay is started again",
                    b.entry, b.messages
                );
            }
            Ok(())
        }),
        Cmd::Unblock { target, data } => offline(data, |store, key| async move {
            let entry = sotto_relay::abuse::unblock(&store, &key, &target).await?;
            println!("unblocked {entry}: the queue accepts commands again (it is empty)");
            Ok(())
        }),
        Cmd::Blocks {
            command: BlocksCmd::List { data },
        } => offline(data, |store, _| async move {
            print!("{}", sotto_relay::abuse::list(&store)?);
            Ok(())
        }),
        Cmd::Run {
            data,
            listen,
            listen_tcp,
            metrics,
            host,
            delivery_mode,
            delivery_mean,
            delivery_cap,
            cover_rate,
        } => {
            let dir = data.unwrap_or_else(datadir::default_dir);
            let overrides = Overrides {
                host,
                listen,
                listen_tcp,
                metrics,
                delivery_mode,
                delivery_mean,
                delivery_cap,
                cover_rate,
            };
            if !datadir::has_identity(&dir) {
                datadir::init(&dir, &datadir::InitOptions::default())?;
                eprintln!("sotto-relay: initialised new relay in {}", dir.display());
            }
            let config = load_config(&dir, &overrides)?;
            init_logging(&config);
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(serve(dir, config))
        }
    }
}

/// `check`: dials the relay on loopback at its `listen` port, PINGs it; how long it took.
async fn check(config: &Config, id: &datadir::Identity) -> anyhow::Result<std::time::Duration> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let start = std::time::Instant::now();
    let ip = match config.listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    };
    let port = config.listen.port();
    if port == 0 {
        anyhow::bail!("`listen` has port 0 (any free port): there is no fixed port to check");
    }
    let host = match ip {
        IpAddr::V4(a) => sotto_protocol::address::Host::Ipv4(a),
        IpAddr::V6(a) => sotto_protocol::address::Host::Ipv6(a),
    };
    let address = sotto_protocol::RelayAddress::new(id.relay_key.public(), host, port);
    let bind: std::net::SocketAddr = if ip.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let quic = sotto_transport::QuicOptions::default();
    let endpoint = sotto_transport::client_endpoint(bind, &quic)?;
    let (client, _pushes) = sotto_transport::RelayClient::connect(
        &endpoint,
        &address,
        &sotto_transport::ClientOptions::default(),
    )
    .await
    .with_context(|| format!("cannot reach the relay at {}", address.host_port()))?;
    client
        .ping()
        .await
        .context("the relay did not answer PING")?;
    client.close().await;
    endpoint.wait_idle().await;
    Ok(start.elapsed())
}

/// Runs `f` on the store of a stopped relay, then closes it cleanly.
fn offline<F, Fut>(data: Option<PathBuf>, f: F) -> anyhow::Result<()>
where
    F: FnOnce(sotto_relay::store::Store, sotto_protocol::RelayPublicKey) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let dir = data.unwrap_or_else(datadir::default_dir);
    if !datadir::has_identity(&dir) {
        anyhow::bail!(
            "{} holds no relay (no {}): give the relay's data directory with --data",
            dir.display(),
            datadir::RELAY_KEY_FILE
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let (store, key) = sotto_relay::abuse::open_offline(&dir)?;
        let result = f(store.clone(), key).await;
        if !store.close(std::time::Duration::from_secs(30)).await {
            eprintln!("sotto-relay: warning: the store did not close within 30 s");
        }
        result
    })
}

async fn serve(dir: PathBuf, config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before the address is printed: whoever reads it may stop the relay at once, and a
    // SIGTERM must then stop it cleanly rather than kill it.
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let relay = sotto_relay::start(&dir, config).await?;
    datadir::record_served_address(&dir, &relay.address);
    println!("{}", relay.address);
    if let Some(m) = relay.metrics_addr {
        eprintln!("sotto-relay: metrics on http://{m}/metrics");
    }
    let loopback_host = matches!(
        &relay.address.host,
        sotto_protocol::address::Host::Ipv4(a) if a.is_loopback()
    ) || matches!(&relay.address.host, sotto_protocol::address::Host::Ipv6(a) if a.is_loopback());
    if loopback_host && !relay.local_addr.ip().is_loopback() {
        eprintln!(
            "sotto-relay: the address above names {}, which only this machine can reach; \
             give other people an address with your public name or IP: restart with --host HOST \
             (or set `host` in config.toml)",
            relay.address.host
        );
    }
    let failed = tokio::select! {
        _ = term.recv() => false,
        _ = int.recv() => false,
        () = relay.failed() => true,
    };
    tracing::info!("shutting down: finishing in-flight writes and closing sessions");
    relay.shutdown().await;
    tracing::info!("stopped");
    if failed {
        // Non-zero, so that the service manager (Restart=on-failure) starts a fresh relay.
        anyhow::bail!("a relay task stopped unexpectedly (see the log); exiting to be restarted");
    }
    Ok(())
}
