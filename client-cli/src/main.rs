//! `sotto`: the reference command-line client. A thin layer over
//! [`sotto_client::agent::Agent`]: it parses arguments, gets the passphrase, formats output,
//! and turns errors into one line on stderr and a non-zero exit status.
//!
//! Exit status: 0 success, 1 error, 2 usage error (clap), 3 the test hook
//! `SOTTO_TEST_STOP_BEFORE_ACK` stopped `recv` before acknowledging a message, 130 / 143 a
//! command other than `recv` and `listen` ended by SIGINT / SIGTERM (those two end
//! normally, with 0). A second signal ends the process at once.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sotto_client::agent::{
    Agent, AgentError, AgentOptions, ContactStatus, Event, KdfParams, ReceiveOptions, StoreError,
    TrafficStats,
};
use sotto_client::timing::TrafficPolicy;
use sotto_client::timing::pacing::{MAX_RATE, PacingPolicy};
use sotto_client::{ClientOptions, Socks5Proxy};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

#[derive(Parser, Debug)]
#[command(
    name = "sotto",
    version,
    about = "Private messages over Sotto relays: no account, no phone number",
    long_about = "Private messages over Sotto relays: no account, no phone number.\n\n\
        The profile is encrypted with a passphrase, read from SOTTO_PASSPHRASE or asked for."
)]
struct Cli {
    /// Profile directory.
    #[arg(long, global = true, env = "SOTTO_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Mean, in seconds, of the random delay before automatic sends (replies the client
    /// makes because it received something). 0 disables the delay: do not use it except
    /// in tests.
    #[arg(
        long,
        global = true,
        env = "SOTTO_AUTO_DELAY",
        value_name = "SECS",
        default_value_t = 2.0
    )]
    auto_delay: f64,
    /// Seconds to wait for a relay to answer a connection (QUIC, then TLS over TCP if QUIC
    /// has not answered after min(3, SECS/2) seconds, within the same SECS; the retries of
    /// one request share them). `send` and `accept` give up after SECS + 2 seconds at most:
    /// they exit non-zero and the message stays queued for the next send, recv or listen.
    #[arg(
        long,
        global = true,
        env = "SOTTO_TIMEOUT",
        value_name = "SECS",
        default_value_t = 10
    )]
    timeout: u64,
    /// Send messages and contact set-up through this relay (address, host:port or host of
    /// an added relay), so that the contact's relay sees it instead of your address; for
    /// this command, overriding `sotto relay through`.
    #[arg(long, global = true, value_name = "RELAY")]
    through: Option<String>,
    /// Connect to relays only through this SOCKS5 proxy — Tor's is 127.0.0.1:9050 — over
    /// TCP, with relay names resolved by the proxy (needed for .onion relays); for this
    /// command, overriding `sotto relay proxy`.
    #[arg(long, global = true, env = "SOTTO_SOCKS5", value_name = "HOST:PORT")]
    socks5: Option<Socks5Proxy>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new profile (asks for a passphrase).
    Init,
    /// Manage the relays this profile uses.
    Relay {
        #[command(subcommand)]
        command: RelayCommand,
    },
    /// Print a one-line invitation for a new contact.
    Invite {
        /// Relay to receive this contact's messages on (address, host:port or host of an
        /// added relay; default: the first added).
        #[arg(long, value_name = "RELAY")]
        via: Option<String>,
        /// Name for the contact (default: contact-N).
        #[arg(long)]
        name: Option<String>,
    },
    /// Accept an invitation.
    Accept {
        /// The `sotto:` invitation.
        link: String,
        /// Name for the contact.
        #[arg(long)]
        name: String,
        /// Relay to receive this contact's messages on (default: the first added).
        #[arg(long, value_name = "RELAY")]
        via: Option<String>,
    },
    /// Send a message; succeeds only once the relay has stored it. Not paced: to send
    /// under a traffic policy, run `listen --policy …` and use --queue.
    Send {
        /// The contact.
        name: String,
        /// The text.
        text: String,
        /// Only put the message in the outbox and return: the running `sotto listen` sends
        /// it at its next round (on its paced links, with a traffic policy); without one,
        /// the next recv, listen or send to this contact does.
        #[arg(long)]
        queue: bool,
    },
    /// Receive for a while (and finish contact set-ups and rotations), then exit.
    Recv {
        /// Receive for this many seconds. Relays hold messages for random delays, so a
        /// message sent a moment ago may need a few seconds to arrive.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        wait: u64,
        /// Return earlier, once every queue is subscribed, nothing has arrived for this
        /// many seconds, and no automatic send is due before the end of --wait.
        #[arg(long, value_name = "SECS")]
        idle: Option<u64>,
        /// One JSON object per line instead of `NAME: TEXT`.
        #[arg(long)]
        json: bool,
    },
    /// Receive until interrupted (Ctrl-C), optionally under a traffic policy.
    Listen {
        /// One JSON object per line instead of `NAME: TEXT`; with a traffic policy, a last
        /// line {"event":"traffic",…} counts the frames sent to each relay.
        #[arg(long)]
        json: bool,
        #[arg(
            long,
            value_name = "POLICY",
            default_value = "desktop",
            value_parser = ["off", "desktop", "low-bandwidth"],
            help = "Traffic policy: desktop (default), low-bandwidth or off (see --help)",
            long_help = policy_help()
        )]
        policy: String,
        #[arg(
            long,
            value_name = "PER_S",
            help = "Frames per second to each relay, overriding the policy's (0: no pacing)",
            long_help = rate_help(
                "Frames per second sent to each relay, real or cover, overriding the policy's \
                 (0: no pacing). Messages wait for the next frame, on average 1/PER_S seconds."
            )
        )]
        pace_rate: Option<f64>,
        #[arg(
            long,
            value_name = "PER_S",
            help = "Loop messages per second through each relay, overriding the policy's (0: none)",
            long_help = rate_help(
                "Loop messages per second sent through each relay you receive on and back to \
                 you, overriding the policy's (0: none). A loop that does not come back in \
                 time is reported: that relay may be dropping or delaying messages. Needs \
                 pacing."
            )
        )]
        loop_rate: Option<f64>,
        #[arg(
            long,
            value_name = "PER_S",
            help = "Cover frames per second to ask each relay for, overriding the policy's (0: none)",
            long_help = rate_help(
                "Cover frames per second to ask each relay for, overriding the policy's (0: \
                 none). The relay then holds its answers for its own frames, so that they do \
                 not show which of your frames were real; answers wait 1/PER_S seconds on \
                 average. Relays that do not pace say so once. Needs pacing."
            )
        )]
        relay_cover: Option<f64>,
    },
    /// List contacts and pending invitations.
    Contacts {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Move my receive queue for a contact to another relay, without losing a message.
    Rotate {
        /// The contact.
        name: String,
        /// The relay to move to.
        #[arg(long, value_name = "RELAY")]
        via: String,
    },
    /// Delete a contact (or a pending invitation) and its queues.
    Delete {
        /// The contact.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum RelayCommand {
    /// Add a relay (the first added is the default receive relay).
    Add {
        /// sotto://KEY@HOST[:PORT]
        // The text is clap's help, shown as it is: not an intra-doc link.
        #[allow(rustdoc::broken_intra_doc_links)]
        addr: String,
        /// The relay is private: save the create password its operator gave you (read from
        /// SOTTO_CREATE_PASSWORD or asked for); new queues there carry it.
        #[arg(long)]
        create_password: bool,
    },
    /// List relays.
    List,
    /// Remove a relay from the list.
    Remove {
        /// Address, host:port or host.
        addr: String,
    },
    /// Show or set the relay that messages and contact set-up go through by default, so
    /// that contacts' relays see it instead of your address.
    Through {
        /// Address, host:port or host of an added relay; omit to show the current one.
        relay: Option<String>,
        /// Send directly again.
        #[arg(long, conflicts_with = "relay")]
        off: bool,
    },
    /// Show or set the SOCKS5 proxy (Tor: 127.0.0.1:9050) that every relay connection goes
    /// through by default, hiding your IP address from relays.
    Proxy {
        /// HOST:PORT of the proxy; omit to show the current one.
        proxy: Option<Socks5Proxy>,
        /// Connect directly again.
        #[arg(long, conflicts_with = "proxy")]
        off: bool,
    },
}

/// Errors of the CLI: the agent's, or its own.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Usage(String),
    #[error("could not read the passphrase: {0}")]
    Prompt(std::io::Error),
    /// Ended by a signal while the command was under way.
    #[error("interrupted{}", if *.queued { "; the message stays queued and is sent by the next `sotto send`, `recv` or `listen`" } else { "" })]
    Interrupted {
        /// The signal.
        signal: Signal,
        /// Whether a message was queued (`send`).
        queued: bool,
    },
}

/// The signals that end a command cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Int,
    Term,
}

impl Signal {
    /// The shell's exit status for a process ended by it: 128 + its number.
    fn exit_status(self) -> u8 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
        }
    }
}

/// What `send` and `accept` get on top of `--timeout` in all: time for the request itself
/// once connected, so that an unreachable relay is reported as such, not as a timeout.
const SEND_AFTER_CONNECT: Duration = Duration::from_secs(2);

/// How long closing connections may take once a signal came: the relays notice the rest.
const CLOSE_AFTER_SIGNAL: Duration = Duration::from_millis(200);

/// How long `listen` waits, after a signal, for its relays to confirm the end of its paced
/// links (so that its frame counts are what they received).
const DISCONNECT_AFTER_SIGNAL: Duration = Duration::from_millis(700);

/// After a signal, how long `recv` / `listen` have to stop at their next step before
/// they are cut off (at an await point: nothing is shown twice, see `docs/client.md`).
const STOP_GRACE: Duration = Duration::from_millis(150);

/// Waits for SIGINT or SIGTERM, records which, and cancels `token`; a second one ends the
/// process at once.
fn watch_signals(
    token: CancellationToken,
) -> Result<std::sync::Arc<std::sync::OnceLock<Signal>>, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let which = std::sync::Arc::new(std::sync::OnceLock::new());
    let setup = |e| CliError::Usage(format!("cannot watch signals: {e}"));
    let mut int = signal(SignalKind::interrupt()).map_err(setup)?;
    let mut term = signal(SignalKind::terminate()).map_err(setup)?;
    let seen = which.clone();
    tokio::spawn(async move {
        let mut next = async || {
            tokio::select! {
                _ = int.recv() => Signal::Int,
                _ = term.recv() => Signal::Term,
            }
        };
        let _ = seen.set(next().await);
        token.cancel();
        std::process::exit(i32::from(next().await.exit_status()));
    });
    Ok(which)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sotto: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Agent(AgentError::StoppedBeforeAck)) => {
            eprintln!("sotto: test hook: stopped before acknowledging a message");
            ExitCode::from(3)
        }
        Err(e @ CliError::Interrupted { signal, .. }) => {
            eprintln!("sotto: {e}");
            ExitCode::from(signal.exit_status())
        }
        Err(e) => {
            eprintln!("sotto: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Shows the transport's notices on stderr, as plain lines: today only the switch to TCP
/// when a relay does not answer over UDP. Nothing else is logged.
fn init_notices() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_ansi(false);
    let only = Targets::new().with_target("sotto_transport", LevelFilter::INFO);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(only)
        .try_init();
}

async fn run(cli: Cli) -> Result<(), CliError> {
    init_notices();
    let home = match cli.home.clone() {
        Some(h) => h,
        None => dirs::data_dir()
            .map(|d| d.join("sotto"))
            .ok_or_else(|| CliError::Usage("no data directory: pass --home DIR".into()))?,
    };
    if !(cli.auto_delay.is_finite() && cli.auto_delay >= 0.0 && cli.auto_delay < 3600.0) {
        return Err(CliError::Usage(
            "--auto-delay must be a number of seconds from 0 to 3600".into(),
        ));
    }
    let traffic = match &cli.command {
        Command::Listen {
            policy,
            pace_rate,
            loop_rate,
            relay_cover,
            ..
        } => traffic_policy(policy, *pace_rate, *loop_rate, *relay_cover)?,
        _ => TrafficPolicy::OFF,
    };
    let opts = AgentOptions {
        client: ClientOptions {
            connect_timeout: Duration::from_secs(cli.timeout.max(1)),
            socks5: cli.socks5.clone(),
            ..ClientOptions::default()
        },
        auto_delay_mean: Duration::from_secs_f64(cli.auto_delay),
        kdf: KdfParams::DEFAULT,
        send_tap: None,
        send_timeout: Some(Duration::from_secs(cli.timeout.max(1)) + SEND_AFTER_CONNECT),
        stop_after_send: false,
        traffic,
    };
    if let Command::Init = cli.command {
        let pass = passphrase(true)?;
        Agent::create(&home, pass.as_bytes(), opts)?;
        println!("created profile in {}", home.display());
        return Ok(());
    }
    if !home.join("profile.sotto").exists() {
        return Err(AgentError::Store(StoreError::NotInitialised(home)).into());
    }
    let pass = passphrase(false)?;
    let mut agent = Agent::open(&home, pass.as_bytes(), opts)?;
    drop(pass);
    if let Some(through) = &cli.through {
        agent.override_send_through(through)?;
    }
    let interrupt = CancellationToken::new();
    let signal = watch_signals(interrupt.clone())?;
    let queues = matches!(cli.command, Command::Send { queue: false, .. });
    let result = if matches!(cli.command, Command::Recv { .. } | Command::Listen { .. }) {
        // They stop by themselves on the signal.
        command(&mut agent, cli.command, interrupt.clone()).await
    } else {
        tokio::select! {
            // The command first: its first step (queueing a message) happens even if a
            // signal is already there.
            biased;
            r = command(&mut agent, cli.command, interrupt.clone()) => r,
            () = interrupt.cancelled() => Err(CliError::Interrupted {
                signal: signal.get().copied().unwrap_or(Signal::Int),
                queued: queues,
            }),
        }
    };
    if interrupt.is_cancelled() {
        let _ = tokio::time::timeout(CLOSE_AFTER_SIGNAL, agent.close()).await;
    } else {
        agent.close().await;
    }
    result
}

async fn command(
    agent: &mut Agent,
    command: Command,
    interrupt: CancellationToken,
) -> Result<(), CliError> {
    match command {
        Command::Init => {}
        Command::Relay { command } => match command {
            RelayCommand::Add {
                addr,
                create_password,
            } => {
                let password = if create_password {
                    Some(create_password_input()?)
                } else {
                    None
                };
                let a = agent
                    .add_relay_with_password(&addr, password.as_deref().map(|p| p.as_str()))?;
                let first = agent.relays()?.first() == Some(&a);
                println!(
                    "{a}{}{}",
                    if first { " (default)" } else { "" },
                    if create_password {
                        " (private: create password saved)"
                    } else {
                        ""
                    }
                );
            }
            RelayCommand::List => {
                for (i, r) in agent.relays()?.iter().enumerate() {
                    println!("{r}{}", if i == 0 { " (default)" } else { "" });
                }
            }
            RelayCommand::Remove { addr } => {
                let a = agent.remove_relay(&addr)?;
                println!("removed {a}");
            }
            RelayCommand::Through { relay, off } => {
                let now = if off {
                    agent.set_send_through(None)?
                } else if let Some(r) = relay {
                    agent.set_send_through(Some(&r))?
                } else {
                    agent.send_through()?
                };
                match now {
                    Some(r) => println!("sending through {r}"),
                    None => println!("sending directly"),
                }
            }
            RelayCommand::Proxy { proxy, off } => {
                if off {
                    agent.set_socks5(None)?;
                } else if let Some(p) = &proxy {
                    agent.set_socks5(Some(p))?;
                }
                match agent.socks5()? {
                    Some(p) => println!("connecting to relays through the SOCKS5 proxy {p}"),
                    None => println!("connecting to relays directly"),
                }
            }
        },
        Command::Invite { via, name } => {
            let link = agent.invite(via.as_deref(), name.as_deref()).await?;
            println!("{link}");
        }
        Command::Accept { link, name, via } => {
            agent.accept(&link, &name, via.as_deref()).await?;
            eprintln!(
                "sotto: accepted; `{name}` is connected once they run `sotto recv` and you receive their reply"
            );
        }
        Command::Send {
            name,
            text,
            queue: false,
        } => agent.send(&name, &text).await?,
        Command::Send {
            name,
            text,
            queue: true,
        } => {
            agent.queue_text(&name, &text)?;
            eprintln!("sotto: queued for {name}; a running `sotto listen` sends it");
        }
        Command::Recv { wait, idle, json } => {
            let opts = ReceiveOptions {
                wait: Some(Duration::from_secs(wait)),
                idle: idle.map(Duration::from_secs),
                stop: Some(interrupt),
                stop_before_ack: std::env::var_os("SOTTO_TEST_STOP_BEFORE_ACK")
                    .is_some_and(|v| v == "1"),
            };
            receive_until_stopped(agent, opts, json).await?;
        }
        Command::Listen { json, .. } => {
            let paced = agent.traffic_policy().send.is_some();
            if paced {
                eprintln!(
                    "sotto: traffic policy: {}",
                    describe_policy(agent.traffic_policy())
                );
            }
            let opts = ReceiveOptions {
                wait: None,
                idle: None,
                stop: Some(interrupt),
                stop_before_ack: false,
            };
            let received = receive_until_stopped(agent, opts, json).await;
            if paced {
                // Ends every paced link once its relay has read all it was sent, so that
                // the counts below are what the relays received; within the time a
                // signal leaves (a relay that does not answer is not waited for).
                if tokio::time::timeout(DISCONNECT_AFTER_SIGNAL, agent.disconnect())
                    .await
                    .is_err()
                {
                    eprintln!("sotto: a relay did not confirm the end of its link in time");
                }
                print_traffic(&agent.traffic_stats(), json);
            }
            received?;
        }
        Command::Contacts { json } => {
            let contacts = agent.contacts()?;
            let mut out = std::io::stdout().lock();
            for c in contacts {
                let line = if json {
                    serde_json::to_string(&c).unwrap_or_default()
                } else {
                    let status = match c.status {
                        ContactStatus::Invited => "invited",
                        ContactStatus::Connecting => "connecting",
                        ContactStatus::Connected => "connected",
                        ContactStatus::Rotating => "rotating",
                    };
                    let mut l = format!(
                        "{}  {status}  receives on {}",
                        c.name,
                        c.receive_relays.join(", ")
                    );
                    if let Some(s) = &c.send_relay {
                        l.push_str(&format!("  sends to {s}"));
                    }
                    match (&c.last_failure, c.queued) {
                        (Some(why), n) if n > 0 => {
                            l.push_str(&format!("  ({n} queued; last attempt failed: {why})"));
                        }
                        (_, 0) => {}
                        (_, n) => l.push_str(&format!("  ({n} queued)")),
                    }
                    l
                };
                if writeln!(out, "{line}").is_err() {
                    std::process::exit(1);
                }
            }
        }
        Command::Rotate { name, via } => {
            agent.rotate(&name, &via).await?;
            eprintln!(
                "sotto: new queue created; messages move to it once `{name}` has switched (keep running `sotto recv`)"
            );
        }
        Command::Delete { name } => {
            agent.delete(&name).await?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

/// [`Agent::receive`] printing its events, until it returns or, once `opts.stop` is
/// cancelled (a signal), [`STOP_GRACE`] later at most: it is then cut off at an await
/// point, between two steps — a text persisted and shown is marked shown in the same step,
/// and one not acknowledged yet comes again and is recognised — so nothing is shown twice
/// or lost.
async fn receive_until_stopped(
    agent: &mut Agent,
    opts: ReceiveOptions,
    json: bool,
) -> Result<(), AgentError> {
    let stop = opts.stop.clone().unwrap_or_default();
    tokio::select! {
        biased;
        r = agent.receive(opts, |e| print_event(e, json)) => r,
        () = async {
            stop.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
        } => Ok(()),
    }
}

/// Prints one event. Texts go to stdout; notices to stderr (JSON mode: everything but
/// warnings to stdout). A failed write to stdout ends the process at once, so that a
/// message that could not be shown is not marked shown.
fn print_event(e: &Event, json: bool) -> ControlFlow<()> {
    let mut out = std::io::stdout().lock();
    let written = match (e, json) {
        (Event::Warning { message }, _) => {
            eprintln!("sotto: warning: {message}");
            Ok(())
        }
        (e, true) => match serde_json::to_string(e) {
            Ok(s) => writeln!(out, "{s}").and_then(|()| out.flush()),
            Err(_) => Ok(()),
        },
        (Event::Message { contact, text, .. }, false) => {
            writeln!(out, "{contact}: {}", escape(text)).and_then(|()| out.flush())
        }
        (Event::Connected { contact }, false) => {
            eprintln!("sotto: {contact} is connected");
            Ok(())
        }
        (Event::Moved { contact }, false) => {
            eprintln!("sotto: {contact} moved their queue to another relay");
            Ok(())
        }
        (Event::Rotated { contact }, false) => {
            eprintln!("sotto: rotation for {contact} finished; the old queue is being deleted");
            Ok(())
        }
        (Event::Missed { contact, count }, false) => {
            eprintln!("sotto: {count} message(s) from {contact} never arrived");
            Ok(())
        }
        (Event::LoopOverdue { relay, after_secs }, false) => {
            eprintln!(
                "sotto: warning: relay {relay} has not delivered a loop message for {}: it may be \
                 dropping or delaying messages",
                duration_words(*after_secs)
            );
            Ok(())
        }
        (Event::Reconnected { relay }, false) => {
            eprintln!("sotto: reconnected to relay {relay}");
            Ok(())
        }
        (Event::Rejected { contact }, false) => {
            match contact {
                Some(c) => eprintln!("sotto: dropped a message for {c} that failed authentication"),
                None => eprintln!("sotto: dropped a message that failed authentication"),
            }
            Ok(())
        }
        (_, false) => Ok(()),
    };
    if written.is_err() {
        std::process::exit(1);
    }
    ControlFlow::Continue(())
}

/// `secs` as a person says it: "10 minutes", "90 seconds", "1 hour".
fn duration_words(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        s if s >= 3600 && s % 3600 == 0 => plural(s / 3600, "hour"),
        s if s >= 60 && s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

/// The traffic policy of `listen`: the preset `name`, with each override replacing its part.
fn traffic_policy(
    name: &str,
    pace_rate: Option<f64>,
    loop_rate: Option<f64>,
    relay_cover: Option<f64>,
) -> Result<TrafficPolicy, CliError> {
    let mut p = TrafficPolicy::named(name)
        .ok_or_else(|| CliError::Usage(format!("unknown traffic policy {name:?}")))?;
    let rate = |flag: &str, r: f64| {
        if r.is_finite() && (0.0..=MAX_RATE).contains(&r) {
            Ok(r)
        } else {
            Err(CliError::Usage(format!(
                "{flag} must be a number of frames per second from 0 to {MAX_RATE}"
            )))
        }
    };
    if let Some(r) = pace_rate {
        let r = rate("--pace-rate", r)?;
        p.send = (r > 0.0).then(|| PacingPolicy {
            rate: r,
            ..p.send.unwrap_or(PacingPolicy::at_rate(r))
        });
    }
    if let Some(r) = loop_rate {
        p.loops.rate = rate("--loop-rate", r)?;
    }
    if let Some(r) = relay_cover {
        p.relay_cover = rate("--relay-cover", r)?;
    }
    match p.send {
        Some(send) => send.validate().map_err(CliError::Usage)?,
        None if p.loops.is_on() || p.relay_cover > 0.0 => {
            return Err(CliError::Usage(
                "--loop-rate and --relay-cover need pacing: choose --policy desktop or \
                 low-bandwidth, or give --pace-rate"
                    .into(),
            ));
        }
        None => {}
    }
    Ok(p)
}

/// "every 12 s", "every 5 min", "20 a second".
fn every(rate: f64) -> String {
    let gap = 1.0 / rate;
    match gap {
        g if g >= 120.0 => format!("every {} min", (g / 60.0 * 10.0).round() / 10.0),
        g if g >= 1.0 => format!("every {} s", (g * 10.0).round() / 10.0),
        _ => format!("{} a second", (rate * 10.0).round() / 10.0),
    }
}

/// One line on what a policy does and costs, per relay link.
fn describe_policy(p: &TrafficPolicy) -> String {
    let Some(send) = p.send else {
        return "frames leave when there is traffic; no cover, no loops".into();
    };
    let mut parts = vec![format!("a frame {} to each relay", every(send.rate))];
    if p.loops.is_on() {
        parts.push(format!("a loop message {}", every(p.loops.rate)));
    }
    if p.relay_cover > 0.0 {
        parts.push(format!("relay cover {}", every(p.relay_cover)));
    }
    let b = p.bandwidth_per_day();
    format!(
        "{} — about {} up and {} down a day per relay",
        parts.join(", "),
        bytes_words(b.up_bytes),
        bytes_words(b.down_bytes)
    )
}

/// "125 MB", "30.1 GB".
fn bytes_words(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

/// `listen --policy`'s long help: the presets and what they cost.
fn policy_help() -> String {
    let mut h = String::from(
        "What listen does with its connections while it runs, so that someone watching your \
         network cannot tell when you send. With a policy, listen sends one frame to each \
         relay at random moments (a Poisson process): a message takes the place of the next \
         cover frame, so the frames are the same whether or not you write. It also sends \
         loop messages to itself through each relay it receives on, to notice a relay that \
         drops or delays messages, and asks relays to pace their answers.\n",
    );
    for name in ["off", "desktop", "low-bandwidth"] {
        let p = TrafficPolicy::named(name).unwrap_or(TrafficPolicy::OFF);
        h.push_str(&format!("\n  {name:<14} {}", describe_policy(&p)));
    }
    h.push_str(
        "\n\nDown counts cover and loops only; messages you receive come on top. \
         --pace-rate, --loop-rate and --relay-cover replace one part of the policy. `sotto \
         send` is never paced: while listen runs, use `sotto send --queue` so that listen \
         sends the message. Default: desktop (measured in docs/threat-model.md); off \
         turns pacing, loops and relay cover off.",
    );
    h
}

/// A rate flag's long help, with what one frame a second costs.
fn rate_help(what: &str) -> String {
    let per_day = TrafficPolicy {
        send: Some(PacingPolicy::at_rate(1.0)),
        ..TrafficPolicy::OFF
    }
    .bandwidth_per_day()
    .up_bytes;
    format!(
        "{what}\n\nEach frame is about {:.0} KB on the wire: one a second is about {:.1} GB a \
         day.",
        per_day / 86_400.0 / 1e3,
        per_day / 1e9
    )
}

/// What `listen` sent under its policy: a JSON line, or lines on stderr.
fn print_traffic(stats: &TrafficStats, json: bool) {
    if json {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            event: &'static str,
            #[serde(flatten)]
            stats: &'a TrafficStats,
        }
        let line = Line {
            event: "traffic",
            stats,
        };
        if let Ok(s) = serde_json::to_string(&line) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{s}").and_then(|()| out.flush());
        }
        return;
    }
    for r in &stats.relays {
        eprintln!(
            "sotto: sent {} frames to relay {} ({} real ticks, {} cover ticks, {} echoes; relay \
             pacing: {})",
            r.frames, r.relay, r.real_ticks, r.cover_ticks, r.echoes, r.pace
        );
    }
    let l = &stats.loops;
    if l.sent > 0 {
        eprintln!(
            "sotto: loop messages: {} sent, {} back, {} overdue, {} failed",
            l.sent, l.returned, l.overdue, l.failed
        );
    }
}

/// Control characters in a text are shown escaped, so a text cannot fake other lines.
fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A private relay's create password: `SOTTO_CREATE_PASSWORD`, or asked for.
fn create_password_input() -> Result<Zeroizing<String>, CliError> {
    let p = match std::env::var_os("SOTTO_CREATE_PASSWORD") {
        Some(p) => Zeroizing::new(
            p.into_string()
                .map_err(|_| CliError::Usage("SOTTO_CREATE_PASSWORD is not valid UTF-8".into()))?,
        ),
        None => Zeroizing::new(
            rpassword::prompt_password("Create password of this relay: ")
                .map_err(CliError::Prompt)?,
        ),
    };
    if p.is_empty() {
        return Err(CliError::Usage(
            "the create password must not be empty".into(),
        ));
    }
    Ok(p)
}

fn passphrase(confirm: bool) -> Result<Zeroizing<String>, CliError> {
    if let Some(p) = std::env::var_os("SOTTO_PASSPHRASE") {
        let p = Zeroizing::new(
            p.into_string()
                .map_err(|_| CliError::Usage("SOTTO_PASSPHRASE is not valid UTF-8".into()))?,
        );
        if p.is_empty() {
            return Err(CliError::Usage("SOTTO_PASSPHRASE is empty".into()));
        }
        return Ok(p);
    }
    let p = Zeroizing::new(rpassword::prompt_password("Passphrase: ").map_err(CliError::Prompt)?);
    if p.is_empty() {
        return Err(CliError::Usage("the passphrase must not be empty".into()));
    }
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Passphrase again: ").map_err(CliError::Prompt)?,
        );
        if again != p {
            return Err(CliError::Usage("the passphrases differ".into()));
        }
    }
    Ok(p)
}
