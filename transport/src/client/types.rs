//! What callers of [`super::RelayClient`] pass in and get back: options, errors, pushed
//! events, messages and queue credentials, and the client's counters.
//!
//! Plain data, no I/O. `Debug` of anything holding ids or keys shows neither (ids are
//! linkable identifiers, keys are secrets).

use std::time::Duration;

use sotto_protocol::forward::ForwardError;
use sotto_protocol::seal::{BodySealKey, OpenError};
use sotto_protocol::{
    AuthSecretKey, DecodeError, DhPublicKey, DhSecretKey, ErrorCode, MessageId, QueueAddress,
    RecipientId, RelayAddress, SenderId,
};

use sotto_timing::pacing::PacingPolicy;

use crate::{DialOptions, QuicOptions, Socks5Proxy, TransportChoice, TransportError};

/// Connection and request settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Bound on resolving, connecting and the Noise handshake together.
    pub connect_timeout: Duration,
    /// Bound on one request. Unpaced: from the call until its answer (including waiting for
    /// a free request slot and for room in the writer's queue). Paced (`pacing`), the
    /// waits are bounded in three steps instead, so that a healthy paced session never
    /// times a request out: see [`crate::client`], "Paced sessions".
    pub request_timeout: Duration,
    /// QUIC settings of the connection.
    pub quic: QuicOptions,
    /// QUIC, TLS over TCP, or QUIC with automatic fallback to TCP (the default).
    pub transport: TransportChoice,
    /// Route every relay connection through this SOCKS5 proxy (Tor's, e.g.
    /// `127.0.0.1:9050`), over TCP; the proxy resolves relay host names. Required for
    /// `.onion` relays.
    pub socks5: Option<Socks5Proxy>,
    /// With [`TransportChoice::Auto`]: how long QUIC may go unanswered before TCP is tried
    /// (at most half of `connect_timeout`).
    pub quic_fallback_after: Duration,
    /// Pace this session's frames: one frame at each tick of a Poisson process of this
    /// policy's rate, real transmissions in place of cover, nothing between ticks
    /// ([`sotto_timing::pacing`]). `None` (the default): frames leave as traffic comes.
    /// [`RelayClient::connect`](crate::RelayClient::connect) refuses a policy that does not
    /// [validate](PacingPolicy::validate).
    pub pacing: Option<PacingPolicy>,
    /// Cover frames per second to ask the relay for on a paced session (PACE with a mean gap
    /// of `round(1000 / relay_cover)` ms, `docs/protocol.md` § 9.2): the relay then sends a
    /// frame at each of its own ticks and holds its answers for them, so that answers do
    /// not show which of our frames were real. 0 (the default), or any value without
    /// `pacing`: no PACE is sent.
    pub relay_cover: f64,
    /// On a paced session, answer every frame received with one frame of ours,
    /// [`ECHO_DELAY`](crate::client::ECHO_DELAY) after it arrived, besides the ticks: what
    /// is queued then (the ACK of a message just received, the next transmission), or cover.
    /// Every received frame gets exactly one echo, real or cover, so the echoes say nothing
    /// the received frames did not already say, and an ACK leaves without waiting for a
    /// tick. Ignored without `pacing`. `false` (the default): ticks only.
    pub echo: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            quic: QuicOptions::default(),
            transport: TransportChoice::Auto,
            socks5: None,
            quic_fallback_after: DialOptions::default().quic_fallback_after,
            pacing: None,
            relay_cover: 0.0,
            echo: false,
        }
    }
}

impl ClientOptions {
    /// The transport part of these options, for [`transport::dial`](crate::dial).
    pub fn dial_options(&self) -> DialOptions {
        DialOptions {
            transport: self.transport,
            socks5: self.socks5.clone(),
            quic_fallback_after: self.quic_fallback_after,
            timeout: self.connect_timeout,
        }
    }

    /// The PACE gap these options ask for: `round(1000 / relay_cover)` milliseconds (at
    /// least 1, at most `u32::MAX`), or `None` when no PACE is sent (no `pacing`, or a
    /// `relay_cover` that is not a positive finite number).
    pub fn pace_gap_ms(&self) -> Option<u32> {
        let rate = self.relay_cover;
        if self.pacing.is_none() || !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        // `as u32` saturates; a rate above 1000/s would round to 0, which means "off".
        Some(((1000.0 / rate).round() as u32).max(1))
    }
}

/// What the relay said to this session's PACE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPacing {
    /// No PACE was sent (unpaced session, or no relay cover asked for): the relay answers
    /// at once.
    NotAsked,
    /// PACE sent, not answered yet (or its answer timed out): answers are assumed held.
    Asked,
    /// The relay paces this session: its answers wait for its next frame.
    Accepted,
    /// The relay refused (`PROHIBITED`: it does not pace; `LIMITED`: the gap is below its
    /// minimum; `SYNTAX`: it predates PACE). It answers at once, so an observer can tell
    /// which of our frames were real by the answers they get; our own frames stay paced.
    Refused(ErrorCode),
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting failed, or the session broke.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The relay answered ERR.
    #[error("the relay refused the request: {0}")]
    Relay(ErrorCode),
    /// No answer within [`ClientOptions::request_timeout`].
    #[error("the relay did not answer in time")]
    Timeout,
    /// The session is closed (locally, or because the connection ended).
    #[error("the connection to the relay is closed")]
    Closed,
    /// The options cannot be used (a pacing policy that does not validate).
    #[error("unusable client options: {0}")]
    Options(String),
    /// The relay answered with something that does not answer this request.
    #[error("unexpected answer from the relay: {0}")]
    UnexpectedResponse(&'static str),
    /// Malformed data: a command that breaks a field limit, or an undecodable frame from
    /// the relay.
    #[error("malformed protocol data: {0}")]
    Protocol(#[from] DecodeError),
    /// A message body did not open with the queue's sealing key.
    #[error("a message from the relay failed to open (corrupted, or not for this queue)")]
    Open(#[from] OpenError),
    /// A forwarded command could not be sealed, or the destination's sealed answer did not
    /// open (a broken relay on the way: the outcome is unknown).
    #[error("forwarding failed: {0}")]
    Forward(#[from] ForwardError),
}

/// Something the relay sent without being asked, or the end of the session.
#[derive(Debug)]
pub enum Pushed {
    /// A message on a subscribed queue. The client does not know which credentials it
    /// belongs to; open it with [`SealedMessage::open`] and the queue's credentials.
    Msg {
        /// The queue the message is on.
        recipient_id: RecipientId,
        /// The message as the relay sent it.
        msg: SealedMessage,
    },
    /// The subscription to this queue ended (another session subscribed, or it was deleted).
    End {
        /// The queue.
        recipient_id: RecipientId,
    },
    /// The session ended; nothing more will be pushed. [`ClientError::Closed`] after
    /// [`RelayClient::close`](crate::RelayClient::close) or an orderly end, otherwise the error that ended it.
    Closed(ClientError),
}

/// A message as delivered by the relay: the body is still sealed to the queue's DH key.
#[derive(Clone)]
pub struct SealedMessage {
    /// Id to acknowledge.
    pub msg_id: MessageId,
    /// Receipt time at the relay (seconds since the Unix epoch, rounded by the relay).
    pub timestamp: u64,
    /// Flags the sender set.
    pub flags: u8,
    /// The body sealed by the relay.
    pub sealed_body: Vec<u8>,
}

impl SealedMessage {
    /// Opens the body with the queue's sealing key.
    ///
    /// # Errors
    /// [`ClientError::Open`] if the body does not authenticate under `creds.seal_key`.
    pub fn open(&self, creds: &QueueCredentials) -> Result<ReceivedMessage, ClientError> {
        let body = creds.seal_key.open(&self.msg_id, &self.sealed_body)?;
        Ok(ReceivedMessage {
            msg_id: self.msg_id,
            timestamp: self.timestamp,
            flags: self.flags,
            body,
        })
    }
}

/// A message with its body opened (the sender's end-to-end ciphertext, padded).
#[derive(Clone)]
pub struct ReceivedMessage {
    /// Id to acknowledge.
    pub msg_id: MessageId,
    /// Receipt time at the relay (seconds since the Unix epoch, rounded by the relay).
    pub timestamp: u64,
    /// Flags the sender set.
    pub flags: u8,
    /// The body as the sender sent it.
    pub body: Vec<u8>,
}

/// Everything a recipient needs to use a queue it created. `Debug` shows no ids or keys.
#[derive(Clone)]
pub struct QueueCredentials {
    /// The relay holding the queue.
    pub relay: RelayAddress,
    /// Id for the recipient's commands.
    pub recipient_id: RecipientId,
    /// Id the sender uses (goes into the invitation).
    pub sender_id: SenderId,
    /// Key that signs the recipient's commands.
    pub recipient_key: AuthSecretKey,
    /// Recipient's X25519 key for body sealing.
    pub dh_key: DhSecretKey,
    /// Relay's per-queue X25519 key for body sealing.
    pub relay_dh_key: DhPublicKey,
    /// Key that opens sealed bodies, derived from `dh_key` and `relay_dh_key`.
    pub seal_key: BodySealKey,
}

impl QueueCredentials {
    /// The address a sender uses: relay address and sender id.
    pub fn queue_address(&self) -> QueueAddress {
        QueueAddress {
            relay: self.relay.clone(),
            sender_id: self.sender_id,
        }
    }
}

/// Counters of one client (every discard path is counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent.
    pub requests: u64,
    /// Cover (DROP) frames queued by [`RelayClient::send_cover`](crate::RelayClient::send_cover) or the cover task.
    pub cover_sent: u64,
    /// Cover ticks skipped because the writer's queue was full of real traffic.
    pub cover_skipped: u64,
    /// Cover (DROP) transmissions received from the relay and discarded.
    pub cover_received: u64,
    /// Answers whose request had already timed out or been cancelled.
    pub late_answers: u64,
    /// Pushed events discarded because the [`Pushed`] receiver was dropped.
    pub pushes_discarded: u64,
    /// Unsolicited transmissions that were neither MSG, END nor DROP (ignored).
    pub unexpected: u64,
    /// Paced sessions: ticks whose frame carried real transmissions (written to the
    /// connection). Every frame of a paced session is a tick, so `real_ticks + cover_ticks`
    /// is the number of frames it has sent.
    pub real_ticks: u64,
    /// Paced sessions: ticks whose frame was cover (nothing was waiting).
    pub cover_ticks: u64,
    /// Paced sessions: gaps drawn at the burst rate ([`sotto_timing::pacing::Burst`]).
    pub burst_gaps: u64,
    /// Paced sessions with [`ClientOptions::echo`]: echo frames written (real or cover).
    pub echoes: u64,
    /// Paced sessions with [`ClientOptions::echo`]: received frames left without an echo
    /// because [`ECHO_QUEUE`](crate::client::ECHO_QUEUE) echoes were already waiting.
    pub echoes_dropped: u64,
}

impl ClientStats {
    /// Ticks a paced session has sent, real or cover.
    pub fn ticks(&self) -> u64 {
        self.real_ticks + self.cover_ticks
    }

    /// Frames a paced session has sent: every tick and every echo.
    pub fn frames(&self) -> u64 {
        self.ticks() + self.echoes
    }
}

impl std::fmt::Debug for QueueCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids link a queue's two sides and keys are secrets: print neither.
        f.debug_struct("QueueCredentials")
            .field("relay", &self.relay.host)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SealedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedMessage")
            .field("timestamp", &self.timestamp)
            .field("flags", &self.flags)
            .field("sealed_len", &self.sealed_body.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("timestamp", &self.timestamp)
            .field("flags", &self.flags)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn credentials_debug_shows_no_ids_or_keys() {
        let relay: RelayAddress = "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@h:9"
            .parse()
            .unwrap();
        let dh_key = DhSecretKey::generate(&mut OsRng);
        let relay_dh = DhSecretKey::generate(&mut OsRng).public();
        let creds = QueueCredentials {
            relay,
            recipient_id: RecipientId([7; 24]),
            sender_id: SenderId([8; 24]),
            recipient_key: AuthSecretKey::generate(&mut OsRng),
            seal_key: BodySealKey::derive(&dh_key, &relay_dh).unwrap(),
            dh_key,
            relay_dh_key: relay_dh,
        };
        let s = format!("{creds:?}");
        assert!(!s.contains(&creds.recipient_id.to_string()));
        assert!(!s.contains(&creds.sender_id.to_string()));
        assert!(!s.contains("7, 7"));
        assert_eq!(
            creds.queue_address().to_string(),
            format!(
                "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@h:9#{}",
                creds.sender_id
            )
        );
    }
}
