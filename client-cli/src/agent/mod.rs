//! The contact agent: a local profile of relays and contacts, end-to-end encrypted duplex
//! connections made of queues, and the work of keeping them (sending, receiving in order
//! and once, rotating queues). The `sotto` CLI is a thin layer over [`Agent`]; privacy
//! clients can embed it the same way.
//!
//! What it owns: the profile (through [`store::Store`], the single source of truth, re-read
//! under a lock for every change so that several processes can share a profile), one
//! connection per relay ([`net::Net`]), Olm sessions (vodozemac), the outbox. What it does
//! not: the wire format of queues (`sotto-protocol`), sessions with relays
//! ([`crate::RelayClient`]), anything a person sees (the CLI formats [`Event`]s).
//!
//! The full description — connection flow, invitation format, ratchet and padding, what is
//! stored and how — is `docs/client.md`.
//!
//! # Metadata
//!
//! - Every SEND body is exactly [`sotto_protocol::MAX_BODY`] bytes ([`wire`]).
//! - Sends made *because something was received* (the inviter's SKEY and READY after a
//!   HELLO, the sender's SKEY and SWITCHED after a rotation request, deleting the old queue
//!   after a rotation) are never sent at once: each batch waits an independent random delay,
//!   exponential with mean [`AgentOptions::auto_delay_mean`]. Delivery receipts are not
//!   sent at all.

mod inbound;
pub mod invitation;
pub mod net;
mod outbox;
pub mod secret;
mod state;
mod store;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::Serialize;
use sotto_protocol::{AuthSecretKey, ErrorCode, QueueAddress, RecipientId, RelayAddress};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, Session, SessionConfig, SessionPickle};

use crate::client::{ClientOptions, Pushed, QueueCredentials, SealedMessage};
use inbound::process;
use invitation::{Invitation, InvitationError};
use net::{Net, NetError};
use outbox::{enqueue_message, push_item};
use secret::Secret32;
pub use state::StateError;
use state::{Action, Contact, Lease, PendingInvitation, QueueOwner, RecvQueue, SendQueue, State};
pub use store::{KdfParams, StoreError};
use store::{ReceiverLock, Store};
use wire::{Payload, WireError};

pub use wire::MAX_TEXT_LEN;

/// Default mean of the random delay before automatic sends.
pub const DEFAULT_AUTO_DELAY_MEAN: Duration = Duration::from_secs(2);

/// Longest automatic-send delay, as a multiple of the mean (keeps the tail finite).
const AUTO_DELAY_CAP_FACTOR: u32 = 20;

/// How long an outbox item stays leased to the process doing it (longer than the worst
/// case of [`net::ATTEMPTS`] connects and requests with the default timeouts).
const LEASE: Duration = Duration::from_secs(120);

/// How often the receive loop re-reads the profile (new queues to subscribe, outbox items
/// that fell due, broken connections to restore).
const TICK: Duration = Duration::from_millis(250);

/// Longest pause between attempts to reach a relay or do a contact's outbox that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Longest name of a contact, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Called with every SEND body just before it goes to [`crate::RelayClient::send`]
/// (diagnostics and tests: e.g. to check that every body has the same length).
pub type SendTap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Settings of an [`Agent`].
#[derive(Clone)]
pub struct AgentOptions {
    /// Connection and request settings.
    pub client: ClientOptions,
    /// Mean of the exponential random delay before automatic sends (zero: no delay, for
    /// tests only).
    pub auto_delay_mean: Duration,
    /// Argon2id cost for a new profile (an existing profile keeps its own).
    pub kdf: KdfParams,
    /// See [`SendTap`].
    pub send_tap: Option<SendTap>,
    /// **Test hook**: after the relay answered OK to a message's SEND, stop with
    /// [`AgentError::StoppedAfterSend`] *before* the profile records it as sent, and mark
    /// its outbox lease as expired — what a process killed at that moment looks like once
    /// [`LEASE`] has passed. The next agent on the profile sends the same ciphertext again;
    /// the recipient must show it once.
    pub stop_after_send: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            auto_delay_mean: DEFAULT_AUTO_DELAY_MEAN,
            kdf: KdfParams::DEFAULT,
            send_tap: None,
            stop_after_send: false,
        }
    }
}

/// Why an agent operation failed. Display texts are one line meant for the person using
/// the CLI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Profile storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A relay could not be reached or refused a request.
    #[error(transparent)]
    Net(#[from] NetError),
    /// No contact of that name.
    #[error("unknown contact `{0}` (see `sotto contacts`)")]
    UnknownContact(String),
    /// The contact's set-up is not complete on this side yet.
    #[error(
        "contact `{0}` is not connected yet: the invitation has not been accepted, or \
         `sotto recv` has not run since"
    )]
    ContactPending(String),
    /// The name is in use.
    #[error("a contact or invitation named `{0}` already exists")]
    NameTaken(String),
    /// The name is not acceptable.
    #[error(
        "invalid name `{0}`: use 1 to {MAX_NAME_LEN} characters, no `:`, no control \
         characters, no leading or trailing spaces"
    )]
    BadName(String),
    /// No relay was given and none is configured.
    #[error("no relay configured: add one with `sotto relay add sotto://…`")]
    NoRelay,
    /// A private relay refused to create a queue: no create password, or a wrong one.
    #[error(
        "{relay} refused to create a queue: it is a private relay and {}; set it with \
         `sotto relay add {relay} --create-password`",
        if *had_password { "the create password saved for it is wrong" } else { "no create password is saved for it" }
    )]
    CreateRefused {
        /// The relay.
        relay: String,
        /// Whether a password was sent.
        had_password: bool,
    },
    /// `--via` names no known relay.
    #[error(
        "unknown relay `{0}`: give a full sotto:// address or one listed by `sotto relay list`"
    )]
    UnknownRelay(String),
    /// A relay address that does not parse.
    #[error("invalid relay address `{text}`: {source}")]
    BadRelayAddress {
        /// What was given.
        text: String,
        /// Why.
        #[source]
        source: sotto_protocol::AddressError,
    },
    /// A malformed invitation.
    #[error("malformed invitation: {0}")]
    Invitation(#[from] InvitationError),
    /// The invitation's queue is already secured by someone else, or does not exist (the
    /// relay gives the same answer for both, so as not to reveal which).
    #[error("this invitation has already been used, or is no longer valid")]
    InvitationUsed,
    /// The text is too long for one message.
    #[error("message is {0} bytes; the most one message carries is {MAX_TEXT_LEN}")]
    TooLong(usize),
    /// Too many messages waiting to be sent to this contact.
    #[error(
        "too many messages to `{0}` are waiting to be sent; run `sotto recv` when the relay is reachable"
    )]
    OutboxFull(String),
    /// A rotation is already under way.
    #[error(
        "a queue rotation for `{0}` is already under way; wait for it to finish (`sotto recv`)"
    )]
    Rotating(String),
    /// A message (or set-up step) stays queued because the relay could not take it.
    #[error(
        "not delivered to `{contact}` yet ({source}); it stays queued and is retried by the next `sotto send` or `sotto recv`"
    )]
    NotDelivered {
        /// The contact.
        contact: String,
        /// Why.
        #[source]
        source: NetError,
    },
    /// The contact's queue refuses our messages (deleted, or secured by someone else).
    #[error(
        "`{0}`'s queue refuses our messages: the contact may have deleted the connection \
         (the message stays queued; `sotto delete {0}` forgets the contact)"
    )]
    QueueRefused(String),
    /// Another process is doing this contact's outbox and did not finish in time.
    #[error("another sotto process is sending to `{0}`; try again")]
    Busy(String),
    /// Unusable stored data.
    #[error(transparent)]
    State(#[from] StateError),
    /// The Olm keys in an invitation are unusable.
    #[error("malformed invitation: its keys are unusable")]
    InvitationKeys,
    /// Stopped by the test hook [`ReceiveOptions::stop_before_ack`].
    #[error("stopped before acknowledging a message (test hook)")]
    StoppedBeforeAck,
    /// Stopped by the test hook [`AgentOptions::stop_after_send`].
    #[error("stopped after a SEND was accepted, before recording it (test hook)")]
    StoppedAfterSend,
}

impl From<WireError> for AgentError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooLong(n) => AgentError::TooLong(n),
            _ => AgentError::State(StateError("message encoding")),
        }
    }
}

/// Something that happened while receiving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A text from a contact, in the order the contact sent it.
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
    /// A contact's set-up completed.
    Connected {
        /// The contact's name.
        contact: String,
    },
    /// A rotation of our receive queue for this contact finished (the old queue is
    /// deleted shortly after, as an automatic action).
    Rotated {
        /// The contact's name.
        contact: String,
    },
    /// The contact moved its receive queue (a rotation on its side): our messages go to
    /// the new queue from now on.
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
}

/// How long [`Agent::receive`] runs.
#[derive(Debug, Clone, Default)]
pub struct ReceiveOptions {
    /// Return after this long at most (`None`: until stopped).
    pub wait: Option<Duration>,
    /// Return once every queue is subscribed, nothing arrived for this long, and no outbox
    /// item falls due before `wait` ends (`None`: never for that reason).
    pub idle: Option<Duration>,
    /// Return when cancelled.
    pub stop: Option<CancellationToken>,
    /// **Test hook**: return [`AgentError::StoppedBeforeAck`] right after the first text
    /// has been persisted and shown, without acknowledging it — what a crash at that point
    /// does. The relay then delivers it again and the agent must show it only once.
    pub stop_before_ack: bool,
}

/// State of a contact as [`Agent::contacts`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactStatus {
    /// An invitation made here, not used yet.
    Invited,
    /// Set-up under way.
    Connecting,
    /// Both directions work.
    Connected,
    /// Moving our receive queue to another relay.
    Rotating,
}

/// A contact as [`Agent::contacts`] reports it (no keys or queue ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContactInfo {
    /// Local name.
    pub name: String,
    /// Status.
    pub status: ContactStatus,
    /// Relays we receive this contact's messages on (`host:port`).
    pub receive_relays: Vec<String>,
    /// Relay we send to (`host:port`), once known.
    pub send_relay: Option<String>,
    /// Outbox items waiting.
    pub queued: usize,
}

/// A local profile and its connections.
pub struct Agent {
    store: Store,
    opts: AgentOptions,
    net: Net,
    /// Random id of this instance, for outbox leases.
    owner: u64,
    /// Contacts whose outbox failed: not before this instant, and the current backoff.
    backoff: HashMap<u64, (Instant, Duration)>,
    /// Relay that SENDs and SKEYs go through (FWD): the profile's default, or this run's
    /// override ([`Agent::override_send_through`]).
    through: Option<RelayAddress>,
}

enum Claim {
    Done,
    Busy,
    Item(u64, Box<Action>),
}

impl Agent {
    /// Creates a new profile in `home`.
    ///
    /// # Errors
    /// [`StoreError::AlreadyInitialised`], I/O errors.
    pub fn create(home: &Path, passphrase: &[u8], opts: AgentOptions) -> Result<Self, AgentError> {
        let store = Store::create(home, passphrase, opts.kdf)?;
        Ok(Self::with_store(store, opts))
    }

    /// Opens the profile in `home`.
    ///
    /// # Errors
    /// [`StoreError::NotInitialised`], [`StoreError::WrongPassphrase`], I/O errors.
    pub fn open(home: &Path, passphrase: &[u8], opts: AgentOptions) -> Result<Self, AgentError> {
        let store = Store::open(home, passphrase)?;
        let mut agent = Self::with_store(store, opts);
        agent.through = agent.send_through()?;
        // The profile's proxy, unless this run was given one (`--socks5`). No connection
        // exists yet, so the network layer can simply be made again.
        if agent.opts.client.socks5.is_none()
            && let Some(proxy) = agent.socks5()?
        {
            agent.opts.client.socks5 = Some(proxy);
            agent.net = Net::new(agent.opts.client.clone());
        }
        Ok(agent)
    }

    fn with_store(store: Store, opts: AgentOptions) -> Self {
        let net = Net::new(opts.client.clone());
        Self {
            store,
            opts,
            net,
            owner: OsRng.next_u64(),
            backoff: HashMap::new(),
            through: None,
        }
    }

    /// The profile directory.
    pub fn home(&self) -> &Path {
        self.store.dir()
    }

    /// Closes every connection (pending outbox items stay in the profile).
    pub async fn close(mut self) {
        self.net.close_all().await;
    }

    // ---------------------------------------------------------------- relays

    /// Known relays; the first is the default receive relay.
    ///
    /// # Errors
    /// Store errors.
    pub fn relays(&self) -> Result<Vec<RelayAddress>, AgentError> {
        let st = self.store.read()?;
        st.relays
            .iter()
            .map(|r| {
                r.parse()
                    .map_err(|_| AgentError::State(StateError("relay address")))
            })
            .collect()
    }

    /// Adds a relay (no-op if known). The first relay added is the default.
    ///
    /// # Errors
    /// [`AgentError::BadRelayAddress`], store errors.
    pub fn add_relay(&self, addr: &str) -> Result<RelayAddress, AgentError> {
        self.add_relay_with_password(addr, None)
    }

    /// Adds a relay as [`Agent::add_relay`] does and, for a private relay, sets the create
    /// password its queues need (`None` keeps any password set before).
    ///
    /// # Errors
    /// As [`Agent::add_relay`].
    pub fn add_relay_with_password(
        &self,
        addr: &str,
        create_password: Option<&str>,
    ) -> Result<RelayAddress, AgentError> {
        let a = parse_relay(addr)?;
        let text = a.to_string();
        self.store.update(|st| {
            if !st.relays.contains(&text) {
                st.relays.push(text.clone());
            }
            if let Some(p) = create_password {
                st.create_passwords.insert(text.clone(), p.to_owned());
            }
            Ok::<_, AgentError>(())
        })?;
        Ok(a)
    }

    /// Removes a relay from the list (queues on it keep working until rotated away).
    ///
    /// # Errors
    /// [`AgentError::UnknownRelay`], store errors.
    pub fn remove_relay(&self, spec: &str) -> Result<RelayAddress, AgentError> {
        let a = self.resolve_relay(Some(spec))?;
        let text = a.to_string();
        self.store.update(|st| {
            let before = st.relays.len();
            st.relays.retain(|r| *r != text);
            if st.relays.len() == before {
                return Err(AgentError::UnknownRelay(spec.to_owned()));
            }
            Ok(())
        })?;
        Ok(a)
    }

    /// A relay from a `--via`-style argument: a full address, or a known relay named by its
    /// address, `host:port` or host. `None`: the default relay.
    ///
    /// # Errors
    /// [`AgentError::NoRelay`], [`AgentError::UnknownRelay`],
    /// [`AgentError::BadRelayAddress`].
    pub fn resolve_relay(&self, spec: Option<&str>) -> Result<RelayAddress, AgentError> {
        let known = self.relays()?;
        let Some(spec) = spec else {
            return known.into_iter().next().ok_or(AgentError::NoRelay);
        };
        if spec.starts_with(sotto_protocol::address::SCHEME) {
            return parse_relay(spec);
        }
        let matches: Vec<RelayAddress> = known
            .into_iter()
            .filter(|r| r.host_port() == spec || r.host.to_string() == spec)
            .collect();
        match <[RelayAddress; 1]>::try_from(matches) {
            Ok([one]) => Ok(one),
            Err(_) => Err(AgentError::UnknownRelay(spec.to_owned())),
        }
    }

    /// The relay this profile sends through by default (FWD, `docs/protocol.md` § 10a):
    /// messages and contact set-up go to the contact's relay through it, so that relay
    /// sees it instead of this client's address. `None`: sent directly.
    ///
    /// # Errors
    /// Store errors, a damaged stored address.
    pub fn send_through(&self) -> Result<Option<RelayAddress>, AgentError> {
        let st = self.store.read()?;
        st.send_through
            .as_deref()
            .map(|r| {
                r.parse()
                    .map_err(|_| AgentError::State(StateError("send-through relay")))
            })
            .transpose()
    }

    /// Sets the profile's default relay to send through (`spec` as for `--via`), or with
    /// `None` sends directly again. Applies to this agent at once.
    ///
    /// # Errors
    /// As [`Agent::resolve_relay`], store errors.
    pub fn set_send_through(
        &mut self,
        spec: Option<&str>,
    ) -> Result<Option<RelayAddress>, AgentError> {
        let relay = spec.map(|s| self.resolve_relay(Some(s))).transpose()?;
        let text = relay.as_ref().map(ToString::to_string);
        self.store.update(|st| {
            st.send_through = text.clone();
            Ok::<_, AgentError>(())
        })?;
        self.through = relay.clone();
        Ok(relay)
    }

    /// The profile's SOCKS5 proxy (Tor), through which every relay connection goes (over
    /// TCP, with relay host names resolved by the proxy), if one is set.
    ///
    /// # Errors
    /// Store errors, a damaged stored proxy address.
    pub fn socks5(&self) -> Result<Option<crate::transport::Socks5Proxy>, AgentError> {
        let st = self.store.read()?;
        st.socks5
            .as_deref()
            .map(|p| {
                p.parse()
                    .map_err(|_| AgentError::State(StateError("SOCKS5 proxy")))
            })
            .transpose()
    }

    /// Sets (or with `None` removes) the profile's SOCKS5 proxy. It applies to connections
    /// made by agents opened from now on.
    ///
    /// # Errors
    /// Store errors.
    pub fn set_socks5(
        &mut self,
        proxy: Option<&crate::transport::Socks5Proxy>,
    ) -> Result<(), AgentError> {
        let text = proxy.map(ToString::to_string);
        self.store.update(|st| {
            st.socks5 = text.clone();
            Ok::<_, AgentError>(())
        })?;
        Ok(())
    }

    /// Sends through `spec` (as for `--via`) for the rest of this agent's life, whatever
    /// the profile's default (the CLI's `--through`).
    ///
    /// # Errors
    /// As [`Agent::resolve_relay`].
    pub fn override_send_through(&mut self, spec: &str) -> Result<RelayAddress, AgentError> {
        let relay = self.resolve_relay(Some(spec))?;
        self.through = Some(relay.clone());
        Ok(relay)
    }

    /// The relay to forward a SEND/SKEY for a queue on `dest` through, if any. A queue on
    /// the forwarding relay itself is written to directly (a relay does not forward to
    /// itself).
    fn through_for(&self, dest: &RelayAddress) -> Option<RelayAddress> {
        self.through.clone().filter(|t| t.key != dest.key)
    }

    // ---------------------------------------------------------------- contacts

    /// Makes an invitation on `via` (default: the default relay) for a contact to be called
    /// `name` (default `contact-N`). Returns the one-line `sotto:` link.
    ///
    /// # Errors
    /// Relay errors, [`AgentError::NameTaken`], [`AgentError::BadName`], store errors.
    pub async fn invite(
        &mut self,
        via: Option<&str>,
        name: Option<&str>,
    ) -> Result<String, AgentError> {
        let relay = self.resolve_relay(via)?;
        if let Some(n) = name {
            check_name(n)?;
            if self.store.read()?.name_taken(n) {
                return Err(AgentError::NameTaken(n.to_owned()));
            }
        }
        let creds = self.create_queue(&relay).await?;
        let mut account = Account::new();
        let otk = account
            .generate_one_time_keys(1)
            .created
            .into_iter()
            .next()
            .ok_or(AgentError::State(StateError("one-time key")))?;
        account.mark_keys_as_published();
        let mut invitation_id = [0u8; 16];
        OsRng.fill_bytes(&mut invitation_id);
        let envelope_key = Secret32::random();
        let link = Invitation {
            id: invitation_id,
            identity_key: account.curve25519_key().to_bytes(),
            one_time_key: otk.to_bytes(),
            envelope_key: envelope_key.clone(),
            queue: creds.queue_address(),
        }
        .to_link();
        let account = account.pickle().encrypt(self.store.pickle_key());
        let queue = RecvQueue::new(&creds, envelope_key);
        let name = name.map(str::to_owned);
        self.store.update(|st| {
            let id = st.take_id();
            let name = name.unwrap_or_else(|| format!("contact-{id}"));
            if st.name_taken(&name) {
                return Err(AgentError::NameTaken(name));
            }
            st.invitations.push(PendingInvitation {
                id,
                invitation_id,
                name,
                queue,
                account,
                link: link.clone(),
            });
            Ok(())
        })?;
        Ok(link)
    }

    /// Accepts an invitation: creates our receive queue on `via` (default: the default
    /// relay), secures the inviter's queue (SKEY) and sends the HELLO. Returns once the
    /// relay accepted the HELLO. If a relay cannot be reached, the contact is kept and
    /// [`AgentError::NotDelivered`] says that the rest is done by the next `send`/`recv`.
    ///
    /// # Errors
    /// [`AgentError::Invitation`], [`AgentError::InvitationUsed`],
    /// [`AgentError::NameTaken`], relay errors.
    pub async fn accept(
        &mut self,
        link: &str,
        name: &str,
        via: Option<&str>,
    ) -> Result<(), AgentError> {
        let inv = Invitation::parse(link)?;
        check_name(name)?;
        if self.store.read()?.name_taken(name) {
            return Err(AgentError::NameTaken(name.to_owned()));
        }
        let relay = self.resolve_relay(via)?;
        let account = Account::new();
        let session = account
            .create_outbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(inv.identity_key),
                Curve25519PublicKey::from_bytes(inv.one_time_key),
            )
            .map_err(|_| AgentError::InvitationKeys)?;
        let creds = self.create_queue(&relay).await?;
        let sender_key = Secret32::random();
        let envelope_key = Secret32::random();
        let hello = Payload::Hello {
            invitation_id: inv.id,
            reply_queue: creds.queue_address().to_string(),
            envelope_key: envelope_key.clone(),
        };
        let pickle_key = *self.store.pickle_key();
        let name = name.to_owned();
        // The contact, its SKEY and its HELLO are persisted before anything is sent, so a
        // crash part-way leaves work that the next command finishes, not a used invitation
        // with no contact.
        let res = self.store.update(|st| {
            if st.name_taken(&name) {
                return Err(AgentError::NameTaken(name.clone()));
            }
            let id = st.take_id();
            st.contacts.push(Contact {
                id,
                name: name.clone(),
                invitation_id: None,
                session: session.pickle().encrypt(&pickle_key),
                recv: vec![RecvQueue::new(&creds, envelope_key)],
                send: Some(SendQueue {
                    queue: inv.queue.to_string(),
                    sender_key: sender_key.clone(),
                    envelope_key: inv.envelope_key.clone(),
                }),
                connected: false,
                next_send_seq: 0,
                next_recv_seq: 0,
                reorder: Default::default(),
                seen: Default::default(),
                inbox: Vec::new(),
                rotating: false,
            });
            push_item(
                st,
                id,
                now_ms(),
                false,
                Action::Skey {
                    queue: inv.queue.to_string(),
                    sender_key,
                },
            );
            let item = enqueue_message(st, &pickle_key, id, hello, now_ms(), false)?;
            Ok((id, item))
        });
        let (contact, item) = match res {
            Ok(v) => v,
            Err(e) => {
                self.delete_queue_best_effort(&creds).await;
                return Err(e);
            }
        };
        match self.flush_contact(contact, Some(item), true).await {
            // The invitation's queue is secured by someone else, or gone: undo.
            Err(AgentError::QueueRefused(_)) => {
                self.store.update(|st| {
                    st.remove_contact(contact);
                    Ok::<_, AgentError>(())
                })?;
                self.delete_queue_best_effort(&creds).await;
                Err(AgentError::InvitationUsed)
            }
            r => r,
        }
    }

    /// Sends a text; returns once the relay answered OK (the message is durable there).
    ///
    /// # Errors
    /// [`AgentError::UnknownContact`], [`AgentError::ContactPending`],
    /// [`AgentError::TooLong`], [`AgentError::OutboxFull`], [`AgentError::NotDelivered`]
    /// (the message stays queued).
    pub async fn send(&mut self, name: &str, text: &str) -> Result<(), AgentError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(AgentError::TooLong(text.len()));
        }
        let pickle_key = *self.store.pickle_key();
        let (contact, item) = self.store.update(|st| {
            let id = sendable_contact(st, name)?;
            if st.outbox_len(id) >= state::MAX_OUTBOX {
                return Err(AgentError::OutboxFull(name.to_owned()));
            }
            let payload = Payload::Text(text.to_owned());
            let item = enqueue_message(st, &pickle_key, id, payload, now_ms(), false)?;
            Ok((id, item))
        })?;
        self.flush_contact(contact, Some(item), true).await
    }

    /// Moves our receive queue for `name` to the relay `via`: creates the new queue and
    /// asks the contact to switch. Messages keep arriving on the old queue until the
    /// contact has switched; then the old queue is deleted (both done by
    /// [`Agent::receive`]).
    ///
    /// # Errors
    /// As [`Agent::send`], [`AgentError::Rotating`], relay errors.
    pub async fn rotate(&mut self, name: &str, via: &str) -> Result<(), AgentError> {
        let relay = self.resolve_relay(Some(via))?;
        {
            let st = self.store.read()?;
            let id = sendable_contact(&st, name)?;
            if st.contact(id).is_some_and(|c| c.rotating) {
                return Err(AgentError::Rotating(name.to_owned()));
            }
        }
        let creds = self.create_queue(&relay).await?;
        let envelope_key = Secret32::random();
        let payload = Payload::NewQueue {
            queue: creds.queue_address().to_string(),
            envelope_key: envelope_key.clone(),
        };
        let pickle_key = *self.store.pickle_key();
        let res = self.store.update(|st| {
            let id = sendable_contact(st, name)?;
            let c = st
                .contact_mut(id)
                .ok_or_else(|| AgentError::UnknownContact(name.to_owned()))?;
            if c.rotating {
                return Err(AgentError::Rotating(name.to_owned()));
            }
            c.rotating = true;
            c.recv.push(RecvQueue::new(&creds, envelope_key));
            let item = enqueue_message(st, &pickle_key, id, payload, now_ms(), false)?;
            Ok((id, item))
        });
        let (contact, item) = match res {
            Ok(v) => v,
            Err(e) => {
                self.delete_queue_best_effort(&creds).await;
                return Err(e);
            }
        };
        self.flush_contact(contact, Some(item), true).await
    }

    /// Deletes a contact (or a pending invitation): deletes our receive queues on their
    /// relays, then forgets it. The contact is not told; its sends start failing.
    ///
    /// # Errors
    /// [`AgentError::UnknownContact`]; relay errors (then nothing is forgotten).
    pub async fn delete(&mut self, name: &str) -> Result<(), AgentError> {
        let queues: Vec<RecvQueue> = {
            let st = self.store.read()?;
            if let Some(c) = st.contact_by_name(name) {
                c.recv.clone()
            } else if let Some(i) = st.invitations.iter().find(|i| i.name == name) {
                vec![i.queue.clone()]
            } else {
                return Err(AgentError::UnknownContact(name.to_owned()));
            }
        };
        for q in &queues {
            self.delete_queue(q).await?;
        }
        self.store.update(|st| {
            if let Some(id) = st.contact_by_name(name).map(|c| c.id) {
                st.remove_contact(id);
            }
            st.invitations.retain(|i| i.name != name);
            Ok::<_, AgentError>(())
        })
    }

    /// Contacts and pending invitations.
    ///
    /// # Errors
    /// Store errors.
    pub fn contacts(&self) -> Result<Vec<ContactInfo>, AgentError> {
        let st = self.store.read()?;
        let host = |r: &str| {
            r.parse::<RelayAddress>()
                .map(|a| a.host_port())
                .unwrap_or_else(|_| "?".into())
        };
        let mut out: Vec<ContactInfo> = st
            .contacts
            .iter()
            .map(|c| ContactInfo {
                name: c.name.clone(),
                status: if c.rotating {
                    ContactStatus::Rotating
                } else if c.connected && c.send.is_some() {
                    ContactStatus::Connected
                } else {
                    ContactStatus::Connecting
                },
                receive_relays: c.recv.iter().map(|q| host(&q.relay)).collect(),
                send_relay: c.send.as_ref().map(|s| {
                    s.queue
                        .parse::<QueueAddress>()
                        .map(|q| q.relay.host_port())
                        .unwrap_or_else(|_| "?".into())
                }),
                queued: st.outbox_len(c.id),
            })
            .collect();
        out.extend(st.invitations.iter().map(|i| ContactInfo {
            name: i.name.clone(),
            status: ContactStatus::Invited,
            receive_relays: vec![host(&i.queue.relay)],
            send_relay: None,
            queued: 0,
        }));
        Ok(out)
    }

    /// The credentials of the queues we receive `name`'s messages on (oldest first).
    /// For tools and tests that inspect queues directly; these are secrets.
    ///
    /// # Errors
    /// [`AgentError::UnknownContact`], unusable stored data.
    pub fn receive_credentials(&self, name: &str) -> Result<Vec<QueueCredentials>, AgentError> {
        let st = self.store.read()?;
        let c = st
            .contact_by_name(name)
            .ok_or_else(|| AgentError::UnknownContact(name.to_owned()))?;
        c.recv
            .iter()
            .map(|q| q.creds().map_err(AgentError::from))
            .collect()
    }

    // ---------------------------------------------------------------- receiving

    /// Receives: subscribes to every receive queue, processes messages (decrypts, orders,
    /// de-duplicates, completes contact set-ups and rotations), calls `on_event` for each
    /// [`Event`], does outbox items as they fall due, and restores broken connections.
    /// Each text is persisted, then shown (`on_event`), then marked shown, then
    /// acknowledged. Returns when `opts` say so or `on_event` breaks.
    ///
    /// # Errors
    /// [`StoreError::ReceiverBusy`]; the first relay error when no queue could be
    /// subscribed at all; store errors.
    pub async fn receive<F>(
        &mut self,
        opts: ReceiveOptions,
        mut on_event: F,
    ) -> Result<(), AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let _receiver: ReceiverLock = self.store.lock_receiver()?;
        let start = Instant::now();
        let deadline = opts.wait.map(|w| start + w);
        if self.show_inbox(&mut on_event)?.is_break() {
            return Ok(());
        }
        let mut subs = Subscriptions::default();
        let first = self.sync_subscriptions(&mut subs, &mut on_event).await?;
        if let Some(e) = first
            && subs.live.is_empty()
        {
            return Err(AgentError::Net(e));
        }
        let mut last_activity = Instant::now();
        let stop = opts.stop.clone().unwrap_or_default();
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            if let Some(idle) = opts.idle
                && now.duration_since(last_activity) >= idle
                && subs.complete
                && !self.outbox_due_before(deadline)?
            {
                break;
            }
            let tick = deadline.map_or(now + TICK, |d| d.min(now + TICK));
            enum Step {
                Push(Option<net::Tagged>),
                Tick,
                Stop,
            }
            let step = tokio::select! {
                _ = stop.cancelled() => Step::Stop,
                p = self.net.pushes().recv() => Step::Push(p),
                _ = tokio::time::sleep_until(tick) => Step::Tick,
            };
            match step {
                Step::Stop => break,
                // The agent holds a sender, so the channel never ends.
                Step::Push(None) => break,
                Step::Push(Some(t)) => match t.event {
                    Pushed::Msg { recipient_id, msg } => {
                        last_activity = Instant::now();
                        let flow = self
                            .handle_msg(&t.relay, recipient_id, msg, &opts, &mut on_event)
                            .await?;
                        if flow.is_break() {
                            break;
                        }
                    }
                    Pushed::End { recipient_id } => {
                        subs.live.remove(&(t.relay.to_string(), recipient_id.0));
                    }
                    Pushed::Closed(_) => {
                        let current = self.net.serial(&t.relay);
                        if current.is_none() || current == Some(t.serial) {
                            self.net.drop_conn(&t.relay).await;
                        }
                    }
                },
                Step::Tick => {
                    self.sync_subscriptions(&mut subs, &mut on_event).await?;
                    self.flush_due(&mut on_event).await?;
                }
            }
        }
        Ok(())
    }

    /// Does every outbox item that is due (automatic sends whose delay has passed, and
    /// anything a failure left behind). Failures become [`Event::Warning`]s and are retried
    /// later with a growing pause.
    ///
    /// # Errors
    /// Store errors.
    pub async fn flush_due<F>(&mut self, on_event: &mut F) -> Result<(), AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let due = self.store.read()?.due_contacts(now_ms(), self.owner);
        let now = Instant::now();
        for c in due {
            if self.backoff.get(&c).is_some_and(|(until, _)| now < *until) {
                continue;
            }
            match self.flush_contact(c, None, false).await {
                Ok(()) => {
                    self.backoff.remove(&c);
                }
                Err(e @ (AgentError::Store(_) | AgentError::State(_))) => return Err(e),
                Err(e) => {
                    let pause = self
                        .backoff
                        .get(&c)
                        .map_or(Duration::from_secs(1), |(_, p)| (*p * 2).min(MAX_BACKOFF));
                    self.backoff.insert(c, (Instant::now() + pause, pause));
                    let _ = on_event(&Event::Warning {
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    fn outbox_due_before(&self, deadline: Option<Instant>) -> Result<bool, AgentError> {
        let st = self.store.read()?;
        let Some(due) = st.next_due_ms() else {
            return Ok(false);
        };
        let Some(deadline) = deadline else {
            return Ok(true);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        Ok(due <= now_ms().saturating_add(millis(left)))
    }

    /// Shows texts that were persisted but not shown (after a crash, or a callback that
    /// broke early), then marks them shown.
    fn show_inbox<F>(&self, on_event: &mut F) -> Result<ControlFlow<()>, AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let st = self.store.read()?;
        let mut shown: Vec<u64> = Vec::new();
        let mut flow = ControlFlow::Continue(());
        'outer: for c in &st.contacts {
            for e in &c.inbox {
                shown.push(e.id);
                flow = on_event(&Event::Message {
                    contact: c.name.clone(),
                    text: e.text.clone(),
                    seq: e.seq,
                    timestamp: e.timestamp,
                });
                if flow.is_break() {
                    break 'outer;
                }
            }
        }
        if !shown.is_empty() {
            self.store.update(|st| {
                for c in &mut st.contacts {
                    c.inbox.retain(|e| !shown.contains(&e.id));
                }
                Ok::<_, AgentError>(())
            })?;
        }
        Ok(flow)
    }

    async fn handle_msg<F>(
        &mut self,
        relay: &RelayAddress,
        recipient_id: RecipientId,
        msg: SealedMessage,
        opts: &ReceiveOptions,
        on_event: &mut F,
    ) -> Result<ControlFlow<()>, AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let relay_text = relay.to_string();
        let (owner, queue, contact_name) = {
            let st = self.store.read()?;
            let Some(owner) = st.owner_of(&relay_text, &recipient_id.0) else {
                // A queue we no longer have (deleted after a rotation): nothing to do.
                return Ok(ControlFlow::Continue(()));
            };
            let queue = st
                .receive_queues()
                .into_iter()
                .find(|q| q.relay == relay_text && q.recipient_id == recipient_id.0)
                .cloned()
                .ok_or(StateError("receive queue"))?;
            let name = match owner {
                QueueOwner::Contact(id) => st.contact(id).map(|c| c.name.clone()),
                QueueOwner::Invitation(_) => None,
            };
            (owner, queue, name)
        };
        let creds = queue.creds()?;
        let msg_id = msg.msg_id;
        let opened = msg.open(&creds).ok().and_then(|m| {
            wire::open_envelope(&queue.envelope_key, &m.body)
                .ok()
                .map(|e| (m.timestamp, e))
        });
        let flow = match opened {
            None => on_event(&Event::Rejected {
                contact: contact_name,
            }),
            Some((timestamp, (olm_type, olm))) => {
                let pickle_key = *self.store.pickle_key();
                let mean = self.opts.auto_delay_mean;
                let outcome = self.store.update(|st| {
                    process(st, &pickle_key, mean, owner, olm_type, &olm, timestamp)
                })?;
                let mut flow = ControlFlow::Continue(());
                for n in &outcome.notices {
                    if on_event(n).is_break() {
                        flow = ControlFlow::Break(());
                    }
                }
                if outcome.contact.is_some() && flow.is_continue() {
                    let had_text = self
                        .store
                        .read()?
                        .contacts
                        .iter()
                        .any(|c| !c.inbox.is_empty());
                    flow = self.show_inbox(on_event)?;
                    if opts.stop_before_ack && had_text {
                        return Err(AgentError::StoppedBeforeAck);
                    }
                }
                flow
            }
        };
        // Persisted (and shown, or buffered in order) before this: now the relay may
        // delete it. A failed ACK only means the message comes again, and is recognised.
        let ack = self
            .net
            .request(relay, async |c| c.ack(&creds, msg_id).await)
            .await;
        if let Err(e) = ack {
            let _ = on_event(&Event::Warning {
                message: format!("could not acknowledge a message: {e}"),
            });
        }
        Ok(flow)
    }

    /// Subscribes every receive queue that has no live subscription. Returns the first
    /// relay error of this round, if any (also reported as a warning).
    async fn sync_subscriptions<F>(
        &mut self,
        subs: &mut Subscriptions,
        on_event: &mut F,
    ) -> Result<Option<NetError>, AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let queues: Vec<RecvQueue> = self
            .store
            .read()?
            .receive_queues()
            .into_iter()
            .cloned()
            .collect();
        let wanted: HashSet<(String, [u8; 24])> = queues
            .iter()
            .map(|q| (q.relay.clone(), q.recipient_id))
            .collect();
        subs.live.retain(|k, _| wanted.contains(k));
        let now = Instant::now();
        let mut first_error = None;
        let mut complete = true;
        let mut failed: HashSet<String> = HashSet::new();
        for q in &queues {
            let key = (q.relay.clone(), q.recipient_id);
            let relay = q.relay_address()?;
            let current = self.net.serial(&relay);
            if current.is_some() && subs.live.get(&key).copied() == current {
                continue;
            }
            complete = false;
            if failed.contains(&q.relay) || subs.retry.get(&q.relay).is_some_and(|(t, _)| now < *t)
            {
                continue;
            }
            let creds = q.creds()?;
            match self
                .net
                .request(&relay, async |c| c.subscribe(&creds).await)
                .await
            {
                Ok(()) => {
                    if let Some(serial) = self.net.serial(&relay) {
                        subs.live.insert(key, serial);
                    }
                    subs.retry.remove(&q.relay);
                    subs.down.remove(&q.relay);
                }
                Err(e) if e.relay_code() == Some(ErrorCode::Auth) => {
                    // The queue is gone (deleted by a rotation in another process, or
                    // expired on the relay): nothing to subscribe.
                    subs.live.insert(key, current.unwrap_or_default());
                }
                Err(e) => {
                    failed.insert(q.relay.clone());
                    let pause = subs
                        .retry
                        .get(&q.relay)
                        .map_or(Duration::from_secs(1), |(_, p)| (*p * 2).min(MAX_BACKOFF));
                    subs.retry.insert(q.relay.clone(), (now + pause, pause));
                    if subs.down.insert(q.relay.clone()) {
                        let _ = on_event(&Event::Warning {
                            message: e.to_string(),
                        });
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        subs.complete = complete && first_error.is_none();
        if !subs.complete {
            // Re-check: everything may be live now.
            subs.complete = queues.iter().all(|q| {
                q.relay_address().ok().is_some_and(|r| {
                    let s = self.net.serial(&r);
                    s.is_some() && subs.live.get(&(q.relay.clone(), q.recipient_id)).copied() == s
                })
            });
        }
        Ok(first_error)
    }

    // ---------------------------------------------------------------- outbox

    /// Does the contact's outbox items in order: all of them up to and including `until`
    /// (whether due or not: the person is sending anyway), or, with `until = None`, those
    /// that are due (`include_not_due` = false) or all.
    async fn flush_contact(
        &mut self,
        contact: u64,
        until: Option<u64>,
        include_not_due: bool,
    ) -> Result<(), AgentError> {
        let owner = self.owner;
        let busy_deadline = Instant::now() + LEASE;
        loop {
            let claim = self.store.update(|st| {
                let now = now_ms();
                let Some(item) = st.first_item_of(contact) else {
                    return Ok::<_, AgentError>(Claim::Done);
                };
                if until.is_some_and(|u| item.id > u)
                    || (!include_not_due && item.not_before_ms > now)
                {
                    return Ok(Claim::Done);
                }
                if !state::leasable(item, now, owner) {
                    return Ok(Claim::Busy);
                }
                let id = item.id;
                let action = item.action.clone();
                if let Some(i) = st.outbox.iter_mut().find(|i| i.id == id) {
                    i.lease = Some(Lease {
                        owner,
                        until_ms: now + millis(LEASE),
                    });
                }
                Ok(Claim::Item(id, Box::new(action)))
            })?;
            match claim {
                Claim::Done => return Ok(()),
                Claim::Busy => {
                    if Instant::now() >= busy_deadline {
                        return Err(AgentError::Busy(self.contact_name(contact)));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Claim::Item(id, action) => {
                    let result = self.execute(&action).await;
                    if result.is_ok()
                        && self.opts.stop_after_send
                        && matches!(*action, Action::Send { .. })
                    {
                        self.store.update(|st| {
                            if let Some(l) = st
                                .outbox
                                .iter_mut()
                                .find(|i| i.id == id)
                                .and_then(|i| i.lease.as_mut())
                            {
                                l.until_ms = 0;
                            }
                            Ok::<_, AgentError>(())
                        })?;
                        return Err(AgentError::StoppedAfterSend);
                    }
                    let ok = result.is_ok();
                    self.store.update(|st| {
                        if ok {
                            st.outbox.retain(|i| i.id != id);
                        } else if let Some(i) = st.outbox.iter_mut().find(|i| i.id == id) {
                            i.lease = None;
                        }
                        Ok::<_, AgentError>(())
                    })?;
                    if let Err(source) = result {
                        if matches!(
                            source.relay_code(),
                            Some(ErrorCode::Auth | ErrorCode::Prohibited)
                        ) && matches!(*action, Action::Send { .. } | Action::Skey { .. })
                        {
                            return Err(AgentError::QueueRefused(self.contact_name(contact)));
                        }
                        return Err(AgentError::NotDelivered {
                            contact: self.contact_name(contact),
                            source,
                        });
                    }
                }
            }
        }
    }

    fn contact_name(&self, id: u64) -> String {
        self.store
            .read()
            .ok()
            .and_then(|st| st.contact(id).map(|c| c.name.clone()))
            .unwrap_or_else(|| "?".into())
    }

    async fn execute(&mut self, action: &Action) -> Result<(), NetError> {
        match action {
            Action::Skey { queue, sender_key } => {
                let q = parse_queue(queue)?;
                let key = AuthSecretKey::from_bytes(sender_key.expose());
                let sender_id = q.sender_id;
                // A repeated SKEY with the same key is answered OK, so a retry after a
                // lost answer is harmless; PROHIBITED means someone else holds the queue.
                if let Some(via) = self.through_for(&q.relay) {
                    let dest = q.relay.clone();
                    return self
                        .net
                        .request(&via, async |c| {
                            c.sender_secure_through(&dest, sender_id, &key).await
                        })
                        .await;
                }
                self.net
                    .request(&q.relay, async |c| c.sender_secure(sender_id, &key).await)
                    .await
            }
            Action::Send {
                queue,
                sender_key,
                envelope_key,
                olm_type,
                olm,
            } => {
                let q = parse_queue(queue)?;
                let key = AuthSecretKey::from_bytes(sender_key.expose());
                let body = wire::seal_envelope(envelope_key, *olm_type, olm).map_err(|_| {
                    NetError::Request {
                        relay: q.relay.host_port(),
                        source: crate::client::ClientError::UnexpectedResponse(
                            "message does not fit the envelope",
                        ),
                    }
                })?;
                if let Some(tap) = &self.opts.send_tap {
                    tap(&body);
                }
                let sender_id = q.sender_id;
                if let Some(via) = self.through_for(&q.relay) {
                    let dest = q.relay.clone();
                    return self
                        .net
                        .request(&via, async |c| {
                            c.send_through(&dest, sender_id, Some(&key), 0, body.clone())
                                .await
                        })
                        .await;
                }
                self.net
                    .request(&q.relay, async |c| {
                        c.send(sender_id, Some(&key), 0, body.clone()).await
                    })
                    .await
            }
            Action::Delete { queue } => self.delete_queue(queue).await,
        }
    }

    async fn create_queue(&mut self, relay: &RelayAddress) -> Result<QueueCredentials, AgentError> {
        let text = relay.to_string();
        let password = zeroize::Zeroizing::new(
            self.store
                .read()?
                .create_passwords
                .get(&text)
                .cloned()
                .unwrap_or_default(),
        );
        let pw = (!password.is_empty()).then(|| password.as_bytes());
        match self
            .net
            .request(relay, async |c| c.create_queue(pw).await)
            .await
        {
            Ok(creds) => Ok(creds),
            // NEW is refused with AUTH only for a missing or wrong create password.
            Err(e) if e.relay_code() == Some(ErrorCode::Auth) => Err(AgentError::CreateRefused {
                relay: text,
                had_password: pw.is_some(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_queue(&mut self, q: &RecvQueue) -> Result<(), NetError> {
        let creds = q.creds().map_err(|_| NetError::Request {
            relay: q.relay.clone(),
            source: crate::client::ClientError::UnexpectedResponse("unusable stored queue"),
        })?;
        let relay = creds.relay.clone();
        match self
            .net
            .request(&relay, async |c| c.delete(&creds).await)
            .await
        {
            // Already gone.
            Err(e) if e.relay_code() == Some(ErrorCode::Auth) => Ok(()),
            r => r,
        }
    }

    async fn delete_queue_best_effort(&mut self, creds: &QueueCredentials) {
        let relay = creds.relay.clone();
        let _ = self
            .net
            .request(&relay, async |c| c.delete(creds).await)
            .await;
    }
}

/// Subscriptions of one receive run: which queues are subscribed on which connection
/// (by serial), and relays to retry later.
#[derive(Default)]
struct Subscriptions {
    live: HashMap<(String, [u8; 24]), u64>,
    retry: HashMap<String, (Instant, Duration)>,
    /// Relays reported unreachable (warned once per outage).
    down: HashSet<String>,
    /// Every wanted queue has a live subscription.
    complete: bool,
}

/// The contact called `name`, if it can be sent to.
fn sendable_contact(st: &State, name: &str) -> Result<u64, AgentError> {
    match st.contact_by_name(name) {
        Some(c) if c.send.is_some() => Ok(c.id),
        Some(_) => Err(AgentError::ContactPending(name.to_owned())),
        None if st.invitations.iter().any(|i| i.name == name) => {
            Err(AgentError::ContactPending(name.to_owned()))
        }
        None => Err(AgentError::UnknownContact(name.to_owned())),
    }
}

fn unpickle_session(p: &str, key: &[u8; 32]) -> Result<Session, AgentError> {
    SessionPickle::from_encrypted(p, key)
        .map(Session::from_pickle)
        .map_err(|_| AgentError::State(StateError("Olm session")))
}

fn parse_relay(text: &str) -> Result<RelayAddress, AgentError> {
    text.trim()
        .parse()
        .map_err(|source| AgentError::BadRelayAddress {
            text: text.to_owned(),
            source,
        })
}

fn parse_queue(text: &str) -> Result<QueueAddress, NetError> {
    text.parse().map_err(|_| NetError::Request {
        relay: "?".into(),
        source: crate::client::ClientError::UnexpectedResponse("unusable stored queue address"),
    })
}

/// Checks a contact name (see [`AgentError::BadName`]).
///
/// # Errors
/// [`AgentError::BadName`].
pub fn check_name(name: &str) -> Result<(), AgentError> {
    let n = name.chars().count();
    if n == 0
        || n > MAX_NAME_LEN
        || name.trim() != name
        || name.contains(':')
        || name.chars().any(char::is_control)
    {
        return Err(AgentError::BadName(name.to_owned()));
    }
    Ok(())
}

/// A random delay for an automatic send: exponential with mean `mean`, capped at
/// [`AUTO_DELAY_CAP_FACTOR`] × `mean`.
pub fn auto_delay(mean: Duration) -> Duration {
    exponential(mean, OsRng.r#gen::<f64>())
}

/// The exponential delay for a uniform sample `u ∈ [0, 1)`.
fn exponential(mean: Duration, u: f64) -> Duration {
    if mean.is_zero() {
        return Duration::ZERO;
    }
    let cap = mean * AUTO_DELAY_CAP_FACTOR;
    // 1 − u ∈ (0, 1], so the logarithm is finite and ≤ 0.
    let d = -(1.0 - u).ln() * mean.as_secs_f64();
    if d.is_finite() && d >= 0.0 {
        Duration::from_secs_f64(d).min(cap)
    } else {
        cap
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("home", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("client", &self.client)
            .field("auto_delay_mean", &self.auto_delay_mean)
            .field("kdf", &self.kdf)
            .field("send_tap", &self.send_tap.is_some())
            .field("stop_after_send", &self.stop_after_send)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_delays_are_exponential_with_the_configured_mean() {
        let mean = Duration::from_secs(2);
        assert_eq!(exponential(mean, 0.0), Duration::ZERO);
        assert_eq!(exponential(Duration::ZERO, 0.7), Duration::ZERO);
        assert!(exponential(mean, 0.999_999_999) <= mean * AUTO_DELAY_CAP_FACTOR);
        // Deterministic quantiles: the mean of −ln(1−u)·m over a uniform grid ≈ m.
        let n = 100_000;
        let avg: f64 = (0..n)
            .map(|i| exponential(mean, (i as f64 + 0.5) / n as f64).as_secs_f64())
            .sum::<f64>()
            / n as f64;
        assert!((avg - 2.0).abs() < 0.05, "{avg}");
        // Median of an exponential is m·ln 2: about 1.39 s, so half the automatic sends
        // wait longer than that.
        let median = exponential(mean, 0.5).as_secs_f64();
        assert!((median - 2.0 * std::f64::consts::LN_2).abs() < 1e-9);
    }

    #[test]
    fn names_are_checked() {
        for good in ["bob", "Alice Smith", "Ünal", "x"] {
            check_name(good).unwrap();
        }
        for bad in ["", " bob", "bob ", "a:b", "a\nb", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
