//! Sotto for apps not written in Rust: UniFFI bindings of the client library's agent
//! ([`sotto_client::agent::Agent`]), from which UniFFI generates Python, Kotlin and Swift.
//!
//! The surface is what a messenger needs and what the `sotto` CLI uses: open or create an
//! encrypted profile ([`open_profile`], [`create_profile`]), its relays, invitations,
//! sending, receiving ([`Profile::receive`], events through an [`EventListener`]), contacts,
//! rotation and deletion. Errors are one typed exception, [`SottoError`], whose variants have
//! the meanings and the messages of the CLI's errors.
//!
//! # Threading
//!
//! Every call that touches the profile or the network is `async` (asyncio in Python,
//! `suspend` in Kotlin, `async` in Swift). A [`Profile`] holds two agents on the same open
//! profile, as two processes would, each on a thread of its own with a single-threaded
//! Tokio runtime (as the `sotto` CLI runs it): one receives ([`Profile::receive`]), the
//! other does everything else, one call at a time in the order they were made, so that a
//! send does not wait for a running receive. The host's futures only wait for the answer:
//! no call blocks the caller's thread, whatever executor polls it, and cancelling one on the
//! host side does not stop the work under way (a send goes on until the relay answered, a
//! receive until it is told to stop with [`Profile::stop_receiving`] or its time is up).
//!
//! The full guide, with a complete Python example, is `docs/bindings.md`.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::LocalBoxFuture;
use sotto_client::agent::{
    Agent, AgentError, AgentOptions, ContactInfo, ContactStatus, Event as AgentEvent, KdfParams,
    ReceiveOptions, StoreError,
};
use sotto_client::timing::TrafficPolicy;
use sotto_client::{ClientOptions, Socks5Proxy};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

uniffi::setup_scaffolding!("sotto");

// ---------------------------------------------------------------------------------------
// Errors

/// Why a call failed. Each variant carries one line for a person (the CLI's message); the
/// variant says what it means, so that an app can act on it without reading the text.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
#[non_exhaustive]
pub enum SottoError {
    /// No profile in that directory.
    #[error("{0}")]
    NotInitialised(String),
    /// A profile already exists in that directory.
    #[error("{0}")]
    AlreadyInitialised(String),
    /// The passphrase does not open the profile (or the profile file is damaged).
    #[error("{0}")]
    WrongPassphrase(String),
    /// The file is not a profile this version can read, or its content is damaged.
    #[error("{0}")]
    ProfileDamaged(String),
    /// Another receiver (this profile's, or another process's) is running on the profile.
    #[error("{0}")]
    ReceiverBusy(String),
    /// Reading or writing the profile failed.
    #[error("{0}")]
    Io(String),
    /// A relay could not be reached, does not hold the key in its address, or refused a
    /// request.
    #[error("{0}")]
    Network(String),
    /// No contact of that name.
    #[error("{0}")]
    UnknownContact(String),
    /// The contact's set-up is not complete on this side yet (receive until the
    /// `Connected` event).
    #[error("{0}")]
    ContactPending(String),
    /// A contact or invitation of that name already exists.
    #[error("{0}")]
    NameTaken(String),
    /// The name is not acceptable (1 to 64 characters, no `:`, no control characters, no
    /// leading or trailing spaces).
    #[error("{0}")]
    BadName(String),
    /// No relay was given and none is configured.
    #[error("{0}")]
    NoRelay(String),
    /// A private relay refused to create a queue (no create password, or a wrong one).
    #[error("{0}")]
    CreateRefused(String),
    /// The relay named is not a known relay.
    #[error("{0}")]
    UnknownRelay(String),
    /// A relay address that does not parse.
    #[error("{0}")]
    BadRelayAddress(String),
    /// A malformed invitation link.
    #[error("{0}")]
    BadInvitation(String),
    /// The invitation has already been used, or is no longer valid.
    #[error("{0}")]
    InvitationUsed(String),
    /// The text is too long for one message.
    #[error("{0}")]
    TooLong(String),
    /// Too many messages to this contact are waiting to be sent.
    #[error("{0}")]
    OutboxFull(String),
    /// A queue rotation for this contact is already under way.
    #[error("{0}")]
    Rotating(String),
    /// The relay could not take the message (or set-up step) now: it stays queued and is
    /// sent again by the next send or receive.
    #[error("{0}")]
    NotDelivered(String),
    /// The contact's queue refuses our messages (the contact may have deleted the
    /// connection).
    #[error("{0}")]
    QueueRefused(String),
    /// Another agent is doing this contact's outbox; try again.
    #[error("{0}")]
    Busy(String),
    /// An argument the library cannot use (a SOCKS5 proxy address, a duration, an empty
    /// passphrase).
    #[error("{0}")]
    InvalidArgument(String),
    /// The [`EventListener`] raised an exception: receiving stopped, and the event it was
    /// given is given again by the next receive.
    #[error("{0}")]
    ListenerFailed(String),
    /// The profile was closed ([`Profile::shutdown`]).
    #[error("{0}")]
    Closed(String),
    /// Anything else: unusable stored data, an internal failure.
    #[error("{0}")]
    Internal(String),
}

impl From<AgentError> for SottoError {
    fn from(e: AgentError) -> Self {
        let m = e.to_string();
        match e {
            AgentError::Store(s) => match s {
                StoreError::NotInitialised(_) => Self::NotInitialised(m),
                StoreError::AlreadyInitialised(_) => Self::AlreadyInitialised(m),
                StoreError::WrongPassphrase => Self::WrongPassphrase(m),
                StoreError::Format(_) | StoreError::Corrupt(_) => Self::ProfileDamaged(m),
                StoreError::ReceiverBusy => Self::ReceiverBusy(m),
                StoreError::Io { .. } => Self::Io(m),
                _ => Self::Internal(m),
            },
            AgentError::Net(_) => Self::Network(m),
            AgentError::UnknownContact(_) => Self::UnknownContact(m),
            AgentError::ContactPending(_) => Self::ContactPending(m),
            AgentError::NameTaken(_) => Self::NameTaken(m),
            AgentError::BadName(_) => Self::BadName(m),
            AgentError::NoRelay => Self::NoRelay(m),
            AgentError::CreateRefused { .. } => Self::CreateRefused(m),
            AgentError::UnknownRelay(_) => Self::UnknownRelay(m),
            AgentError::BadRelayAddress { .. } => Self::BadRelayAddress(m),
            AgentError::Invitation(_) | AgentError::InvitationKeys => Self::BadInvitation(m),
            AgentError::InvitationUsed => Self::InvitationUsed(m),
            AgentError::TooLong(_) => Self::TooLong(m),
            AgentError::OutboxFull(_) => Self::OutboxFull(m),
            AgentError::Rotating(_) => Self::Rotating(m),
            AgentError::NotDelivered { .. } => Self::NotDelivered(m),
            AgentError::QueueRefused(_) => Self::QueueRefused(m),
            AgentError::Busy { .. } => Self::Busy(m),
            AgentError::TimedOut { .. } => Self::NotDelivered(m),
            _ => Self::Internal(m),
        }
    }
}

/// What an [`EventListener`] returns when it fails (in the host language: it raised).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum ListenerError {
    /// The listener could not take the event.
    #[error("{0}")]
    Failed(String),
}

impl From<uniffi::UnexpectedUniFFICallbackError> for ListenerError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Failed(e.reason)
    }
}

// ---------------------------------------------------------------------------------------
// Workers

/// Panic payload with which a receive stops when the listener failed: unwinding out of the
/// agent's receive loop before it marks the event shown keeps the event for the next
/// receive, as a crash at that moment would.
struct ListenerAbort(String);

/// How many of the library's threads are calling into the host right now: answering a
/// call (which runs the host's continuation, through UniFFI's waker) or calling the
/// listener. See [`settle_host_calls`].
static IN_HOST: AtomicUsize = AtomicUsize::new(0);

/// Counts a call into the host while alive.
struct InHost;

impl InHost {
    fn enter() -> Self {
        IN_HOST.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for InHost {
    fn drop(&mut self) {
        IN_HOST.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits, at most `timeout_ms` milliseconds, until no thread of the library is calling into
/// the host; `true` if none is. The Python package calls it at interpreter exit (`atexit`),
/// because CPython ends a foreign thread that asks for the GIL once finalisation has begun
/// in a way that aborts the process; apps need not call it.
#[uniffi::export]
pub fn settle_host_calls(timeout_ms: u32) -> bool {
    let end = std::time::Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    while IN_HOST.load(Ordering::SeqCst) > 0 {
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// A job for a [`Worker`]: a call on its agent.
type Job = Box<dyn for<'a> FnOnce(&'a mut Agent) -> LocalBoxFuture<'a, ()> + Send>;

/// What a [`Worker`] is asked to do.
enum Order {
    Run(Job),
    /// Close the agent's connections, then answer and stop.
    Close(oneshot::Sender<()>),
}

/// One agent on a thread of its own, running one call at a time in the order they came,
/// on a single-threaded Tokio runtime (as the `sotto` CLI runs it). The host's futures only
/// wait for the answer, so whatever executor polls them, the work runs here, and dropping
/// one does not stop the call.
#[derive(Debug)]
struct Worker {
    orders: mpsc::UnboundedSender<Order>,
}

impl Worker {
    fn start(name: &str, agent: Agent) -> Result<Self, SottoError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SottoError::Internal(format!("cannot start a runtime: {e}")))?;
        let (orders, mut rx) = mpsc::unbounded_channel::<Order>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut agent = agent;
                    while let Some(order) = rx.recv().await {
                        match order {
                            Order::Run(job) => job(&mut agent).await,
                            Order::Close(done) => {
                                rx.close();
                                agent.close().await;
                                let _ = done.send(());
                                return;
                            }
                        }
                    }
                    // Every handle was dropped: close as `Profile::shutdown` would.
                    agent.close().await;
                });
            })
            .map_err(|e| SottoError::Internal(format!("cannot start a thread: {e}")))?;
        Ok(Self { orders })
    }

    /// Runs `f` on the agent and returns its result; a panic in it (a failed listener)
    /// becomes an error instead of ending the worker.
    async fn call<T, F>(&self, f: F) -> Result<T, SottoError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Agent) -> LocalBoxFuture<'a, Result<T, SottoError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |agent: &mut Agent| {
            Box::pin(async move {
                let result = match AssertUnwindSafe(f(agent)).catch_unwind().await {
                    Ok(r) => r,
                    Err(panic) => Err(match panic.downcast::<ListenerAbort>() {
                        Ok(abort) => SottoError::ListenerFailed(format!(
                            "the event listener failed ({}); receiving stopped, and that \
                             event is given again by the next receive",
                            abort.0
                        )),
                        Err(_) => SottoError::Internal("internal error: the call panicked".into()),
                    }),
                };
                let _in_host = InHost::enter();
                let _ = tx.send(result);
            })
        });
        self.orders.send(Order::Run(job)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Runs `f` on the agent after the calls before it, without waiting for it (nothing
    /// happens if the worker has stopped).
    fn post<F>(&self, f: F)
    where
        F: for<'a> FnOnce(&'a mut Agent) -> LocalBoxFuture<'a, ()> + Send + 'static,
    {
        let _ = self.orders.send(Order::Run(Box::new(f)));
    }

    /// Closes the agent and stops the worker, once the calls before are done.
    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.orders.send(Order::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Options

/// Settings for [`open_profile`] and [`create_profile`].
#[derive(Debug, Clone, uniffi::Record)]
pub struct ProfileOptions {
    /// Seconds to wait for a relay to answer a connection attempt (at least 1).
    #[uniffi(default = 10)]
    pub connect_timeout_secs: u64,
    /// Mean, in seconds, of the random delay before automatic sends (replies the library
    /// makes because it received something: contact set-up, rotation). 0 disables the
    /// delay: do not use it except in tests.
    #[uniffi(default = 2.0)]
    pub auto_delay_secs: f64,
    /// SOCKS5 proxy (`HOST:PORT`; Tor's is `127.0.0.1:9050`) for this session, overriding
    /// the profile's ([`Profile::set_socks5`]).
    #[uniffi(default = None)]
    pub socks5: Option<String>,
    /// What [`Profile::receive`] does with its connections so that someone watching the
    /// network cannot tell when this device sends: `off` (the default), `desktop` or
    /// `low-bandwidth`, as `sotto listen --policy` (`docs/client.md` § Traffic policy).
    /// Under a policy, send with [`Profile::queue_message`] while receiving, so that the
    /// message leaves in one of the paced frames; [`Profile::send`] is never paced.
    #[uniffi(default = "off")]
    pub traffic_policy: String,
    /// For tests only: derive the profile key with the cheapest Argon2id cost, which offers
    /// no protection to the profile file. Only used by [`create_profile`].
    #[uniffi(default = false)]
    pub insecure_fast_kdf: bool,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10,
            auto_delay_secs: 2.0,
            socks5: None,
            traffic_policy: "off".into(),
            insecure_fast_kdf: false,
        }
    }
}

/// The default [`ProfileOptions`].
#[uniffi::export]
pub fn default_profile_options() -> ProfileOptions {
    ProfileOptions::default()
}

impl ProfileOptions {
    fn traffic(&self) -> Result<TrafficPolicy, SottoError> {
        TrafficPolicy::named(&self.traffic_policy).ok_or_else(|| {
            SottoError::InvalidArgument(format!(
                "unknown traffic policy `{}`: use off, desktop or low-bandwidth",
                self.traffic_policy
            ))
        })
    }

    fn agent_options(&self) -> Result<AgentOptions, SottoError> {
        if !(self.auto_delay_secs.is_finite() && (0.0..3600.0).contains(&self.auto_delay_secs)) {
            return Err(SottoError::InvalidArgument(
                "auto_delay_secs must be a number of seconds from 0 to 3600".into(),
            ));
        }
        let socks5 = self.socks5.as_deref().map(parse_socks5).transpose()?;
        Ok(AgentOptions {
            client: ClientOptions {
                connect_timeout: Duration::from_secs(self.connect_timeout_secs.clamp(1, 3600)),
                socks5,
                ..ClientOptions::default()
            },
            auto_delay_mean: Duration::from_secs_f64(self.auto_delay_secs),
            kdf: if self.insecure_fast_kdf {
                KdfParams::INSECURE_FAST
            } else {
                KdfParams::DEFAULT
            },
            ..AgentOptions::default()
        })
    }
}

fn parse_socks5(text: &str) -> Result<Socks5Proxy, SottoError> {
    text.parse()
        .map_err(|e| SottoError::InvalidArgument(format!("invalid SOCKS5 proxy `{text}`: {e}")))
}

fn seconds(what: &str, secs: Option<f64>) -> Result<Option<Duration>, SottoError> {
    secs.map(|s| {
        if s.is_finite() && (0.0..1e9).contains(&s) {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(SottoError::InvalidArgument(format!(
                "{what} must be a non-negative number of seconds"
            )))
        }
    })
    .transpose()
}

// ---------------------------------------------------------------------------------------
// Events and contacts

/// Something that happened while receiving.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A text from a contact, in the order the contact sent it, once.
    Message {
        /// The contact's name.
        contact: String,
        /// The text.
        text: String,
        /// The contact's sequence number for it.
        seq: u64,
        /// When the relay received it (Unix seconds, rounded by the relay).
        timestamp: u64,
    },
    /// A contact's set-up completed: messages can be sent to it.
    Connected {
        /// The contact's name.
        contact: String,
    },
    /// A rotation of our receive queue for this contact finished.
    Rotated {
        /// The contact's name.
        contact: String,
    },
    /// The contact moved its receive queue to another relay.
    Moved {
        /// The contact's name.
        contact: String,
    },
    /// Messages from this contact never arrived and were given up on.
    Missed {
        /// The contact's name.
        contact: String,
        /// How many.
        count: u64,
    },
    /// A message failed authentication or could not be decrypted, and was dropped.
    Rejected {
        /// The contact's name, when the queue is known to belong to one.
        contact: Option<String>,
    },
    /// Something did not work and is being retried (e.g. a relay is unreachable).
    Warning {
        /// What.
        message: String,
    },
    /// A loop message through this relay has not come back in time: the relay may be
    /// dropping or delaying messages.
    LoopOverdue {
        /// The relay (`host:port`).
        relay: String,
        /// After how many seconds a loop counts as overdue.
        after_secs: u64,
    },
    /// An event of a kind this version of the bindings does not know.
    Other {
        /// Its kind, as in `sotto recv --json`.
        kind: String,
    },
}

impl From<&AgentEvent> for Event {
    fn from(e: &AgentEvent) -> Self {
        match e.clone() {
            AgentEvent::Message {
                contact,
                text,
                seq,
                timestamp,
            } => Self::Message {
                contact,
                text,
                seq,
                timestamp,
            },
            AgentEvent::Connected { contact } => Self::Connected { contact },
            AgentEvent::Rotated { contact } => Self::Rotated { contact },
            AgentEvent::Moved { contact } => Self::Moved { contact },
            AgentEvent::Missed { contact, count } => Self::Missed { contact, count },
            AgentEvent::Rejected { contact } => Self::Rejected { contact },
            AgentEvent::Warning { message } => Self::Warning { message },
            AgentEvent::LoopOverdue { relay, after_secs } => {
                Self::LoopOverdue { relay, after_secs }
            }
            other => Self::Other {
                kind: serde_json::to_value(&other)
                    .ok()
                    .and_then(|v| v.get("event")?.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            },
        }
    }
}

/// Receives the [`Event`]s of [`Profile::receive`], one at a time, on one of the library's
/// threads (not the host's main thread). An event is marked handled once `on_event`
/// returns; if it raises, receiving stops with [`SottoError::ListenerFailed`] and a text
/// it was given is given again by the next receive.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// Called for each event.
    ///
    /// # Errors
    /// Any: the host language's exception.
    fn on_event(&self, event: Event) -> Result<(), ListenerError>;
}

/// State of a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ContactState {
    /// An invitation made here, not used yet.
    Invited,
    /// Set-up under way.
    Connecting,
    /// Both directions work.
    Connected,
    /// Moving our receive queue to another relay.
    Rotating,
}

/// A contact or pending invitation (no keys or queue ids).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Contact {
    /// Local name.
    pub name: String,
    /// Its state.
    pub state: ContactState,
    /// Relays this contact's messages are received on (`host:port`).
    pub receive_relays: Vec<String>,
    /// Relay messages to it are sent to (`host:port`), once known.
    pub send_relay: Option<String>,
    /// Messages and set-up steps waiting to be sent.
    pub queued: u64,
}

impl From<ContactInfo> for Contact {
    fn from(c: ContactInfo) -> Self {
        Self {
            name: c.name,
            state: match c.status {
                ContactStatus::Invited => ContactState::Invited,
                ContactStatus::Connecting => ContactState::Connecting,
                ContactStatus::Connected => ContactState::Connected,
                ContactStatus::Rotating => ContactState::Rotating,
            },
            receive_relays: c.receive_relays,
            send_relay: c.send_relay,
            queued: u64::try_from(c.queued).unwrap_or(u64::MAX),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Profile

/// Creates a new encrypted profile in the directory `home` (made, mode 0700, if missing).
///
/// # Errors
/// [`SottoError::AlreadyInitialised`], [`SottoError::InvalidArgument`] (an empty
/// passphrase, bad options), [`SottoError::Io`].
#[uniffi::export]
pub async fn create_profile(
    home: String,
    passphrase: String,
    options: ProfileOptions,
) -> Result<Arc<Profile>, SottoError> {
    let passphrase = Zeroizing::new(passphrase);
    let opts = options.agent_options()?;
    let traffic = options.traffic()?;
    check_passphrase(&passphrase)?;
    off_thread(traffic, move || {
        Agent::create(&PathBuf::from(home), passphrase.as_bytes(), opts)
    })
    .await
}

/// Opens the encrypted profile in the directory `home`.
///
/// # Errors
/// [`SottoError::NotInitialised`], [`SottoError::WrongPassphrase`],
/// [`SottoError::ProfileDamaged`], [`SottoError::InvalidArgument`], [`SottoError::Io`].
#[uniffi::export]
pub async fn open_profile(
    home: String,
    passphrase: String,
    options: ProfileOptions,
) -> Result<Arc<Profile>, SottoError> {
    let passphrase = Zeroizing::new(passphrase);
    let opts = options.agent_options()?;
    let traffic = options.traffic()?;
    check_passphrase(&passphrase)?;
    off_thread(traffic, move || {
        Agent::open(&PathBuf::from(home), passphrase.as_bytes(), opts)
    })
    .await
}

/// Runs `make` (Argon2id: a third of a second or more) on a thread of its own, then starts
/// the profile's workers.
async fn off_thread<F>(traffic: TrafficPolicy, make: F) -> Result<Arc<Profile>, SottoError>
where
    F: FnOnce() -> Result<Agent, AgentError> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("sotto-open".into())
        .spawn(move || {
            let result = make()
                .map_err(SottoError::from)
                .and_then(|agent| Profile::new(agent, traffic));
            let _in_host = InHost::enter();
            let _ = tx.send(result);
        })
        .map_err(|e| SottoError::Internal(format!("cannot start a thread: {e}")))?;
    rx.await
        .map_err(|_| SottoError::Internal("opening the profile failed".into()))?
}

fn check_passphrase(p: &str) -> Result<(), SottoError> {
    if p.is_empty() {
        Err(SottoError::InvalidArgument(
            "the passphrase must not be empty".into(),
        ))
    } else {
        Ok(())
    }
}

fn closed() -> SottoError {
    SottoError::Closed("the profile is closed".into())
}

/// An open profile: its relays and contacts, sending and receiving.
#[derive(Debug, uniffi::Object)]
pub struct Profile {
    home: String,
    /// The agent of every call but [`Profile::receive`].
    commands: Worker,
    /// The agent of [`Profile::receive`].
    receiver: Worker,
    /// The receiving agent's traffic policy.
    traffic: TrafficPolicy,
    /// Whether a receive runs (or waits for the receiving agent).
    receiving: Arc<AtomicBool>,
    /// Stops the running receive.
    stop: StdMutex<Option<CancellationToken>>,
}

impl Profile {
    fn new(agent: Agent, traffic: TrafficPolicy) -> Result<Arc<Self>, SottoError> {
        let receiver = agent.reopen(traffic);
        Ok(Arc::new(Self {
            home: agent.home().display().to_string(),
            commands: Worker::start("sotto-agent", agent)?,
            receiver: Worker::start("sotto-receiver", receiver)?,
            traffic,
            receiving: Arc::new(AtomicBool::new(false)),
            stop: StdMutex::new(None),
        }))
    }
}

/// Clears [`Profile::receiving`] when a receive ends, however it ends.
struct Receiving(Arc<AtomicBool>);

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[uniffi::export]
impl Profile {
    /// The profile directory.
    pub fn home(&self) -> String {
        self.home.clone()
    }

    /// The relays the profile knows (`sotto://` addresses); the first is the default
    /// receive relay.
    ///
    /// # Errors
    /// Profile errors.
    pub async fn relays(&self) -> Result<Vec<String>, SottoError> {
        self.commands
            .call(|a| {
                Box::pin(async move { Ok(a.relays()?.iter().map(ToString::to_string).collect()) })
            })
            .await
    }

    /// Adds a relay (`sotto://KEY@HOST[:PORT]`; no-op if known; the first added is the
    /// default). For a private relay, `create_password` is the password its operator gave:
    /// saved in the profile, sent when creating queues there (`None` keeps any saved one).
    /// Returns the relay's address.
    ///
    /// # Errors
    /// [`SottoError::BadRelayAddress`], profile errors.
    #[uniffi::method(default(create_password = None))]
    pub async fn add_relay(
        &self,
        address: String,
        create_password: Option<String>,
    ) -> Result<String, SottoError> {
        if create_password.as_deref() == Some("") {
            return Err(SottoError::InvalidArgument(
                "the create password must not be empty".into(),
            ));
        }
        let password = create_password.map(Zeroizing::new);
        self.commands
            .call(move |a| {
                Box::pin(async move {
                    let pw = password.as_deref().map(String::as_str);
                    Ok(a.add_relay_with_password(&address, pw)?.to_string())
                })
            })
            .await
    }

    /// Removes a relay (address, `host:port` or host of a known relay) from the list;
    /// queues on it keep working until rotated away. Returns its address.
    ///
    /// # Errors
    /// [`SottoError::UnknownRelay`], profile errors.
    pub async fn remove_relay(&self, relay: String) -> Result<String, SottoError> {
        self.commands
            .call(move |a| Box::pin(async move { Ok(a.remove_relay(&relay)?.to_string()) }))
            .await
    }

    /// The relay that messages and contact set-up go through (FWD), if one is set, so that
    /// contacts' relays see it instead of this device's address.
    ///
    /// # Errors
    /// Profile errors.
    pub async fn send_through(&self) -> Result<Option<String>, SottoError> {
        self.commands
            .call(|a| Box::pin(async move { Ok(a.send_through()?.map(|r| r.to_string())) }))
            .await
    }

    /// Sets the relay to send through (a known relay's address, `host:port` or host), or
    /// with `None` sends directly again. Returns the relay set. Applies to sends at once,
    /// and to what receiving sends from the next [`Profile::receive`].
    ///
    /// # Errors
    /// [`SottoError::UnknownRelay`], profile errors.
    pub async fn set_send_through(
        &self,
        relay: Option<String>,
    ) -> Result<Option<String>, SottoError> {
        let traffic = self.traffic;
        let (set, fresh) = self
            .commands
            .call(move |a| {
                Box::pin(async move {
                    let r = a.set_send_through(relay.as_deref())?;
                    Ok((r.map(|r| r.to_string()), a.reopen(traffic)))
                })
            })
            .await?;
        // The receiving agent is made again once the receive under way, if any, is over
        // (not waited for: it may run until stopped).
        self.receiver
            .post(move |a| Box::pin(async move { std::mem::replace(a, fresh).close().await }));
        Ok(set)
    }

    /// The profile's SOCKS5 proxy (`HOST:PORT`), through which every relay connection goes
    /// (over TCP, relay names resolved by the proxy), if one is set.
    ///
    /// # Errors
    /// Profile errors.
    pub async fn socks5(&self) -> Result<Option<String>, SottoError> {
        self.commands
            .call(|a| Box::pin(async move { Ok(a.socks5()?.map(|p| p.to_string())) }))
            .await
    }

    /// Sets (or with `None` removes) the profile's SOCKS5 proxy, e.g. Tor's
    /// `127.0.0.1:9050`. It applies from the next [`open_profile`].
    ///
    /// # Errors
    /// [`SottoError::InvalidArgument`], profile errors.
    pub async fn set_socks5(&self, proxy: Option<String>) -> Result<(), SottoError> {
        let proxy = proxy.as_deref().map(parse_socks5).transpose()?;
        self.commands
            .call(move |a| Box::pin(async move { Ok(a.set_socks5(proxy.as_ref())?) }))
            .await
    }

    /// Makes an invitation on the relay `via` (default: the default relay) for a contact
    /// to be called `name` (default `contact-N`), and returns the one-line `sotto:` link to
    /// give them. The contact is connected once they accepted and this profile received
    /// their reply (the `Connected` event).
    ///
    /// # Errors
    /// [`SottoError::NoRelay`], [`SottoError::NameTaken`], [`SottoError::BadName`],
    /// [`SottoError::Network`], [`SottoError::CreateRefused`], profile errors.
    #[uniffi::method(default(via = None, name = None))]
    pub async fn invite(
        &self,
        via: Option<String>,
        name: Option<String>,
    ) -> Result<String, SottoError> {
        self.commands
            .call(move |a| {
                Box::pin(async move { Ok(a.invite(via.as_deref(), name.as_deref()).await?) })
            })
            .await
    }

    /// Accepts an invitation link under the name `name`, receiving this contact's messages
    /// on `via` (default: the default relay). Returns once the relay took the reply; the
    /// contact is connected once the inviter received it.
    ///
    /// # Errors
    /// [`SottoError::BadInvitation`], [`SottoError::InvitationUsed`],
    /// [`SottoError::NameTaken`], [`SottoError::BadName`], [`SottoError::Network`],
    /// [`SottoError::NotDelivered`] (the contact is kept and set-up finishes later),
    /// profile errors.
    #[uniffi::method(default(via = None))]
    pub async fn accept(
        &self,
        link: String,
        name: String,
        via: Option<String>,
    ) -> Result<(), SottoError> {
        self.commands
            .call(move |a| {
                Box::pin(async move { Ok(a.accept(&link, &name, via.as_deref()).await?) })
            })
            .await
    }

    /// Sends a text; returns once the relay stored it.
    ///
    /// # Errors
    /// [`SottoError::UnknownContact`], [`SottoError::ContactPending`],
    /// [`SottoError::TooLong`], [`SottoError::OutboxFull`], [`SottoError::NotDelivered`]
    /// (the message stays queued and is sent by the next send or receive),
    /// [`SottoError::QueueRefused`], [`SottoError::Busy`].
    pub async fn send(&self, contact: String, text: String) -> Result<(), SottoError> {
        self.commands
            .call(move |a| Box::pin(async move { Ok(a.send(&contact, &text).await?) }))
            .await
    }

    /// Puts a text in the contact's outbox and returns at once: a running receive sends
    /// it at its next round (within a quarter of a second), else the next send or receive.
    ///
    /// # Errors
    /// As [`Profile::send`], without the network ones.
    pub async fn queue_message(&self, contact: String, text: String) -> Result<(), SottoError> {
        self.commands
            .call(move |a| Box::pin(async move { Ok(a.queue_text(&contact, &text)?) }))
            .await
    }

    /// Contacts and pending invitations.
    ///
    /// # Errors
    /// Profile errors.
    pub async fn contacts(&self) -> Result<Vec<Contact>, SottoError> {
        self.commands
            .call(|a| {
                Box::pin(async move { Ok(a.contacts()?.into_iter().map(Contact::from).collect()) })
            })
            .await
    }

    /// Moves this profile's receive queue for `contact` to the relay `via` (a known
    /// relay's address, `host:port` or host, or a new `sotto://` address) without losing a
    /// message; the move finishes while receiving (the `Rotated` event).
    ///
    /// # Errors
    /// [`SottoError::UnknownContact`], [`SottoError::ContactPending`],
    /// [`SottoError::Rotating`], [`SottoError::UnknownRelay`], [`SottoError::Network`].
    pub async fn rotate(&self, contact: String, via: String) -> Result<(), SottoError> {
        self.commands
            .call(move |a| Box::pin(async move { Ok(a.rotate(&contact, &via).await?) }))
            .await
    }

    /// Deletes a contact (or a pending invitation) and its queues.
    ///
    /// # Errors
    /// [`SottoError::UnknownContact`], profile errors.
    pub async fn delete(&self, contact: String) -> Result<(), SottoError> {
        self.commands
            .call(move |a| Box::pin(async move { Ok(a.delete(&contact).await?) }))
            .await
    }

    /// Receives: subscribes to every receive queue and gives each [`Event`] to
    /// `listener` — texts (each once, in order), completed set-ups and rotations — while
    /// finishing set-ups, sending queued messages as they fall due and restoring broken
    /// connections. Returns after `wait_secs` (`None`: until [`Profile::stop_receiving`]),
    /// or earlier once nothing arrived for `idle_secs` and no queued send is due.
    ///
    /// One receive at a time per profile: a second one fails with
    /// [`SottoError::ReceiverBusy`]. Other calls (sending) go on while it runs.
    ///
    /// # Errors
    /// [`SottoError::ReceiverBusy`], [`SottoError::ListenerFailed`], the first
    /// [`SottoError::Network`] error when no queue could be subscribed at all, profile
    /// errors.
    #[uniffi::method(default(wait_secs = None, idle_secs = None))]
    pub async fn receive(
        &self,
        listener: Arc<dyn EventListener>,
        wait_secs: Option<f64>,
        idle_secs: Option<f64>,
    ) -> Result<(), SottoError> {
        let wait = seconds("wait_secs", wait_secs)?;
        let idle = seconds("idle_secs", idle_secs)?;
        if self
            .receiving
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(SottoError::ReceiverBusy(
                "a receive is already running on this profile".into(),
            ));
        }
        let receiving = Receiving(Arc::clone(&self.receiving));
        let stop = CancellationToken::new();
        if let Ok(mut s) = self.stop.lock() {
            *s = Some(stop.clone());
        }
        self.receiver
            .call(move |a| {
                Box::pin(async move {
                    let _receiving = receiving;
                    let opts = ReceiveOptions {
                        wait,
                        idle,
                        stop: Some(stop),
                        stop_before_ack: false,
                    };
                    a.receive(opts, |e| {
                        let handled = {
                            let _in_host = InHost::enter();
                            listener.on_event(Event::from(e))
                        };
                        if let Err(ListenerError::Failed(why)) = handled {
                            // Unwinds out of the receive loop before the event is marked
                            // handled; `Worker::call` makes it `ListenerFailed`.
                            std::panic::resume_unwind(Box::new(ListenerAbort(why)));
                        }
                        ControlFlow::Continue(())
                    })
                    .await?;
                    Ok(())
                })
            })
            .await
    }

    /// Makes a running [`Profile::receive`] return (at once; a message being taken in is
    /// finished first). Does nothing if none runs.
    pub fn stop_receiving(&self) {
        if let Ok(s) = self.stop.lock()
            && let Some(t) = s.as_ref()
        {
            t.cancel();
        }
    }

    /// Stops receiving, waits for the calls under way, and closes every connection. Later
    /// calls fail with [`SottoError::Closed`]. Messages not sent yet stay queued in the
    /// profile.
    pub async fn shutdown(&self) {
        self.stop_receiving();
        self.receiver.close().await;
        self.commands.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_meaning_and_the_clis_message() {
        let e = SottoError::from(AgentError::Store(StoreError::WrongPassphrase));
        assert!(matches!(&e, SottoError::WrongPassphrase(m) if m.starts_with("wrong passphrase")));
        let e = SottoError::from(AgentError::UnknownContact("bob".into()));
        assert!(matches!(&e, SottoError::UnknownContact(m) if m.contains("`bob`")));
        let e = SottoError::from(AgentError::InvitationKeys);
        assert!(matches!(e, SottoError::BadInvitation(_)));
    }

    #[test]
    fn options_are_checked() {
        let mut o = ProfileOptions::default();
        assert_eq!(
            o.agent_options().unwrap().auto_delay_mean,
            Duration::from_secs(2)
        );
        assert_eq!(o.traffic().unwrap(), TrafficPolicy::OFF);
        o.auto_delay_secs = f64::NAN;
        assert!(matches!(
            o.agent_options(),
            Err(SottoError::InvalidArgument(_))
        ));
        o.auto_delay_secs = 0.0;
        o.socks5 = Some("not a proxy".into());
        assert!(matches!(
            o.agent_options(),
            Err(SottoError::InvalidArgument(_))
        ));
        o.socks5 = Some("127.0.0.1:9050".into());
        assert!(o.agent_options().unwrap().client.socks5.is_some());
        o.traffic_policy = "desktop".into();
        assert!(o.traffic().unwrap().send.is_some());
        o.traffic_policy = "loud".into();
        assert!(matches!(o.traffic(), Err(SottoError::InvalidArgument(_))));
        assert!(seconds("wait_secs", Some(-1.0)).is_err());
        assert_eq!(
            seconds("wait_secs", Some(1.5)).unwrap(),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn events_convert_field_for_field() {
        let e = AgentEvent::Message {
            contact: "alice".into(),
            text: "hi".into(),
            seq: 3,
            timestamp: 1_700_000_000,
        };
        assert_eq!(
            Event::from(&e),
            Event::Message {
                contact: "alice".into(),
                text: "hi".into(),
                seq: 3,
                timestamp: 1_700_000_000
            }
        );
        let e = AgentEvent::Rejected { contact: None };
        assert_eq!(Event::from(&e), Event::Rejected { contact: None });
    }

    /// A profile made and opened through the bindings' own path (threads, workers), with
    /// no relay: its calls answer, and a shut-down profile says so.
    #[test]
    fn a_profile_opens_answers_and_shuts_down() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("p").display().to_string();
        let opts = ProfileOptions {
            insecure_fast_kdf: true,
            ..ProfileOptions::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = create_profile(home.clone(), "pass".into(), opts.clone())
                .await
                .unwrap();
            assert_eq!(p.relays().await.unwrap(), Vec::<String>::new());
            assert!(matches!(
                p.invite(None, None).await,
                Err(SottoError::NoRelay(_))
            ));
            p.shutdown().await;
            assert!(matches!(p.contacts().await, Err(SottoError::Closed(_))));
            let wrong = open_profile(home.clone(), "wrong".into(), opts.clone()).await;
            assert!(matches!(wrong, Err(SottoError::WrongPassphrase(_))));
            let again = open_profile(home, "pass".into(), opts).await.unwrap();
            assert!(again.contacts().await.unwrap().is_empty());
        });
    }
}
