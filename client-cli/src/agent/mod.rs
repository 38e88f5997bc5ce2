//! The contact agent: a local profile of relays and contacts, end-to-end encrypted duplex
//! connections made of queues, and the work of keeping them (sending, receiving in order
//! and once, rotating queues). The `sotto` CLI is a thin layer over [`Agent`]; privacy
//! clients can embed it the same way.
//!
//! What it owns: the profile (through the store, the single source of truth, re-read
//! under a lock for every change so that several processes can share a profile), one
//! connection per relay (`net::Net`), Olm sessions (vodozemac), the outbox. What it does
//! not: the wire format of queues (`sotto-protocol`), sessions with relays
//! ([`crate::RelayClient`]), anything a person sees (the CLI formats [`Event`]s).
//!
//! The full description — connection flow, invitation format, ratchet and padding, what is
//! stored and how — is `docs/client.md`.
//!
//! # Rooms
//!
//! This file holds the [`Agent`] type, [`Agent::create`] / [`Agent::open`] and its options;
//! each public method lives with the work it does:
//!
//! - `profile` — the relays a profile knows, the relay it sends through (FWD), its SOCKS5
//!   proxy ([`Agent::add_relay`], [`Agent::set_send_through`], [`Agent::set_socks5`], …).
//! - `contacts` — invitations, accepting one, deleting and listing contacts
//!   ([`Agent::invite`], [`Agent::accept`], [`Agent::delete`], [`Agent::contacts`]).
//! - `send` — sending a text and doing the outbox over the network ([`Agent::send`],
//!   [`Agent::flush_due`]).
//! - `receive` — the receive loop and its [`Event`]s ([`Agent::receive`]).
//! - `rotation` — starting to move a receive queue to another relay ([`Agent::rotate`]).
//! - `queues` — creating and deleting our receive queues on relays.
//! - `traffic` — the traffic policy: paced links, the relays they go to, loop cover
//!   ([`Agent::traffic_stats`], [`Agent::disconnect`]).
//! - `error` ([`AgentError`]), `timing` (clock, automatic-send delay, retry pauses).
//!
//! Below them, without I/O and tested without a relay: `state` (the profile's content),
//! `inbound` (what one received message does to it), `outbox` (queueing work and taking it in order),
//! [`wire`] (message and envelope encoding), [`invitation`] (the link), [`secret`]. With
//! I/O: `store` (the encrypted profile file and its locks, the outbox locks among them), [`net`] (one connection per
//! relay).
//!
//! # Metadata
//!
//! - Every SEND body is exactly [`sotto_protocol::MAX_BODY`] bytes ([`wire`]).
//! - Sends made *because something was received* (the inviter's SKEY and READY after a
//!   HELLO, the sender's SKEY and SWITCHED after a rotation request, deleting the old queue
//!   after a rotation) are never sent at once: each batch waits an independent random delay,
//!   exponential with mean [`AgentOptions::auto_delay_mean`]. Delivery receipts are not
//!   sent at all.
//! - With a traffic policy ([`AgentOptions::traffic`]) every link is paced, sends to
//!   contacts go through one of those links, and loops go out through the same path as
//!   messages (`docs/client.md` § Traffic policy).

mod contacts;
mod error;
mod inbound;
pub mod invitation;
pub mod net;
mod outbox;
mod profile;
mod queues;
mod receive;
mod rotation;
pub mod secret;
mod send;
mod state;
mod store;
mod timing;
mod traffic;
pub mod wire;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sotto_protocol::RelayAddress;
use sotto_timing::TrafficPolicy;
use sotto_timing::loops::LoopStats;
use tokio::time::Instant;

use crate::client::ClientOptions;
use net::Net;
use store::Store;

pub use contacts::{ContactInfo, ContactStatus, MAX_NAME_LEN, check_name};
pub use error::AgentError;
pub use receive::{Event, ReceiveOptions};
pub use state::StateError;
pub use store::{KdfParams, StoreError};
pub use timing::auto_delay;
pub use traffic::{LoopTotals, RelayTraffic, TrafficStats};
pub use wire::MAX_TEXT_LEN;

/// Default mean of the random delay before automatic sends.
pub const DEFAULT_AUTO_DELAY_MEAN: Duration = Duration::from_secs(2);

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
    /// Bound on [`Agent::send`] (and the sends of [`Agent::accept`]) as a whole: connecting,
    /// the outbox items before the message, the message. `None`: `client.connect_timeout`
    /// plus `client.request_timeout`. The `sotto` CLI sets it to `--timeout`.
    pub send_timeout: Option<Duration>,
    /// **Test hook**: after the relay answered OK to a message's SEND, stop with
    /// [`AgentError::StoppedAfterSend`] *before* the profile records it as sent — what a
    /// process killed at that moment looks like (its outbox lock ends with it). The next
    /// agent on the profile sends the same ciphertext again; the recipient must show it
    /// once.
    pub stop_after_send: bool,
    /// What the agent does with its links (`docs/client.md` § Traffic policy). With
    /// `send` set, every connection is paced with it and asks its relay for `relay_cover`,
    /// sends to contacts go through the send-through relay (the profile's default relay
    /// unless one is set) and [`Agent::receive`] keeps a link to it; with `loops` on,
    /// [`Agent::receive`] keeps a loop queue on every relay it receives on and sends loops
    /// through it. [`TrafficPolicy::OFF`] (the default): none of this.
    pub traffic: TrafficPolicy,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            auto_delay_mean: DEFAULT_AUTO_DELAY_MEAN,
            kdf: KdfParams::DEFAULT,
            send_tap: None,
            send_timeout: None,
            stop_after_send: false,
            traffic: TrafficPolicy::OFF,
        }
    }
}

/// A local profile and its connections.
pub struct Agent {
    store: Store,
    opts: AgentOptions,
    net: Net,
    /// Whether [`Agent::receive`] is running (written into outbox locks it takes, so that
    /// a `send` that finds one knows its item will be done).
    receiving: bool,
    /// Contacts whose outbox failed: not before this instant, and the current backoff.
    backoff: HashMap<u64, (Instant, Duration)>,
    /// Relay that SENDs and SKEYs go through (FWD): the profile's default, or this run's
    /// override ([`Agent::override_send_through`]).
    through: Option<RelayAddress>,
    /// Loops of every [`Agent::receive`] run so far.
    loop_stats: LoopStats,
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
            agent.net = Net::new(net_options(&agent.opts));
        }
        Ok(agent)
    }

    fn with_store(store: Store, opts: AgentOptions) -> Self {
        let net = Net::new(net_options(&opts));
        Self {
            store,
            opts,
            net,
            receiving: false,
            backoff: HashMap::new(),
            through: None,
            loop_stats: LoopStats::default(),
        }
    }

    /// Another agent on this open profile, as if a second process had opened it (its own
    /// connections and outbox locks; the same options and send-through relay, but the
    /// traffic policy `traffic`), without the passphrase and without deriving the key
    /// again: e.g. one that receives under a policy while this one sends.
    pub fn reopen(&self, traffic: TrafficPolicy) -> Self {
        let opts = AgentOptions {
            traffic,
            ..self.opts.clone()
        };
        let mut agent = Self::with_store(self.store.clone(), opts);
        agent.through = self.through.clone();
        agent
    }

    /// The profile directory.
    pub fn home(&self) -> &Path {
        self.store.dir()
    }

    /// [`AgentOptions::send_timeout`], or its default.
    pub fn send_timeout(&self) -> Duration {
        self.opts
            .send_timeout
            .unwrap_or(self.opts.client.connect_timeout + self.opts.client.request_timeout)
    }

    /// Closes every connection (pending outbox items stay in the profile).
    pub async fn close(mut self) {
        self.net.close_all().await;
    }
}

/// The options of the agent's connections: `opts.client`, paced as `opts.traffic` says.
fn net_options(opts: &AgentOptions) -> ClientOptions {
    let mut client = opts.client.clone();
    if let Some(pacing) = opts.traffic.send {
        client.pacing = Some(pacing);
        client.relay_cover = opts.traffic.relay_cover;
        client.echo = opts.traffic.echo;
    }
    client
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
            .field("send_timeout", &self.send_timeout)
            .field("stop_after_send", &self.stop_after_send)
            .field("traffic", &self.traffic)
            .finish()
    }
}
