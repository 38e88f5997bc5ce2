//! `sotto`: the reference command-line client. A thin layer over
//! [`sotto_client::agent::Agent`]: it parses arguments, gets the passphrase, formats output,
//! and turns errors into one line on stderr and a non-zero exit status.
//!
//! Exit status: 0 success, 1 error, 2 usage error (clap), 3 the test hook
//! `SOTTO_TEST_STOP_BEFORE_ACK` stopped `recv` before acknowledging a message.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sotto_client::agent::{
    Agent, AgentError, AgentOptions, ContactStatus, Event, KdfParams, ReceiveOptions, StoreError,
};
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
    /// Seconds to wait for a relay to answer a connection attempt.
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
    /// Send a message; succeeds only once the relay has stored it.
    Send {
        /// The contact.
        name: String,
        /// The text.
        text: String,
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
    /// Receive until interrupted.
    Listen {
        /// One JSON object per line instead of `NAME: TEXT`.
        #[arg(long)]
        json: bool,
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
    let opts = AgentOptions {
        client: ClientOptions {
            connect_timeout: Duration::from_secs(cli.timeout.max(1)),
            socks5: cli.socks5.clone(),
            ..ClientOptions::default()
        },
        auto_delay_mean: Duration::from_secs_f64(cli.auto_delay),
        kdf: KdfParams::DEFAULT,
        send_tap: None,
        stop_after_send: false,
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
    let result = command(&mut agent, cli.command).await;
    agent.close().await;
    result
}

async fn command(agent: &mut Agent, command: Command) -> Result<(), CliError> {
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
        Command::Send { name, text } => agent.send(&name, &text).await?,
        Command::Recv { wait, idle, json } => {
            let opts = ReceiveOptions {
                wait: Some(Duration::from_secs(wait)),
                idle: idle.map(Duration::from_secs),
                stop: None,
                stop_before_ack: std::env::var_os("SOTTO_TEST_STOP_BEFORE_ACK")
                    .is_some_and(|v| v == "1"),
            };
            agent.receive(opts, |e| print_event(e, json)).await?;
        }
        Command::Listen { json } => {
            let stop = CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            let opts = ReceiveOptions {
                wait: None,
                idle: None,
                stop: Some(stop),
                stop_before_ack: false,
            };
            agent.receive(opts, |e| print_event(e, json)).await?;
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
                    if c.queued > 0 {
                        l.push_str(&format!("  ({} queued)", c.queued));
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
