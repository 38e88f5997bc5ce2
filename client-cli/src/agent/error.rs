//! [`AgentError`]: why an agent operation failed, in words for the person using the CLI,
//! and which lower errors (profile storage, relays, invitations, stored data) it wraps.
//!
//! It does not decide what a failure means for the work under way (whether a message stays
//! queued, a contact is undone): the operations that return these errors do.

use super::contacts::MAX_NAME_LEN;
use super::invitation::InvitationError;
use super::net::NetError;
use super::state::StateError;
use super::store::StoreError;
use super::wire::{MAX_TEXT_LEN, WireError};

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
    /// The relay's operator blocked the contact's queue (ERR BLOCKED): nothing sent to it
    /// arrives.
    #[error(
        "the relay operator blocked `{0}`'s queue: messages to them are refused there (the \
         message stays queued). Ask `{0}` to move their queue to another relay \
         (`sotto rotate`), or forget the contact with `sotto delete {0}`"
    )]
    QueueBlocked(String),
    /// Another process (or agent) is doing this contact's outbox right now (it holds the
    /// contact's outbox lock) and had not let go or sent this message in time (2 s for a
    /// sending holder, half the send timeout for a receiving one).
    /// The message stays queued.
    #[error(
        "{}",
        if *receiving {
            format!("the running `sotto listen` or `sotto recv` ({}) is sending to `{contact}` and sends this message too; it stays queued until then", process(*pid))
        } else {
            format!("another `sotto send` ({}) is sending to `{contact}` right now; this message stays queued and is sent by the next `sotto send`, `recv` or `listen`", process(*pid))
        }
    )]
    Busy {
        /// The contact.
        contact: String,
        /// The holder's process id (0: unknown).
        pid: u32,
        /// Whether the holder is receiving (and so does due items by itself).
        receiving: bool,
    },
    /// `send` did not finish within its bound (`--timeout`): a relay was slow or
    /// unreachable. The message stays queued.
    #[error(
        "not delivered to `{contact}` within {secs} s (a relay is slow or unreachable); it stays queued and is retried by the next `sotto send` or `sotto recv`"
    )]
    TimedOut {
        /// The contact.
        contact: String,
        /// The bound, in whole seconds.
        secs: u64,
    },
    /// Unusable stored data.
    #[error(transparent)]
    State(#[from] StateError),
    /// The Olm keys in an invitation are unusable.
    #[error("malformed invitation: its keys are unusable")]
    InvitationKeys,
    /// Stopped by the test hook
    /// [`ReceiveOptions::stop_before_ack`](super::ReceiveOptions::stop_before_ack).
    #[error("stopped before acknowledging a message (test hook)")]
    StoppedBeforeAck,
    /// Stopped by the test hook
    /// [`AgentOptions::stop_after_send`](super::AgentOptions::stop_after_send).
    #[error("stopped after a SEND was accepted, before recording it (test hook)")]
    StoppedAfterSend,
}

/// "process 4242", or "another process" when the holder's id could not be read (it was
/// being written).
fn process(pid: u32) -> String {
    if pid == 0 {
        "another process".into()
    } else {
        format!("process {pid}")
    }
}

impl AgentError {
    pub(super) fn busy(contact: String, holder: super::store::LockHolder) -> Self {
        AgentError::Busy {
            contact,
            pid: holder.pid,
            receiving: holder.receiving,
        }
    }
}

impl From<WireError> for AgentError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooLong(n) => AgentError::TooLong(n),
            _ => AgentError::State(StateError("message encoding")),
        }
    }
}
