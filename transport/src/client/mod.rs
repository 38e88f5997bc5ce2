//! [`RelayClient`]: commands and answers over one session with a relay.
//!
//! This module owns one [`FramedConnection`] and the bookkeeping of its requests. It knows
//! the queue commands (NEW, KEY, SKEY, SEND, SUB, GET, ACK, OFF, DEL, PING, DROP), sends
//! SEND and SKEY through the relay to another one (FWD, sealed with
//! [`sotto_protocol::forward`]) and opens sealed bodies, but keeps no queues or contacts (that is the agent's job) and never
//! retries or reconnects: a broken session is reported and the caller decides.
//!
//! # Tasks and state
//!
//! - A **writer task** owns the [`FrameSender`](crate::FrameSender). It takes outgoing transmissions from a
//!   bounded channel and batches as many as are queued into each frame
//!   ([`FrameBuilder`]), greedily; a cover request becomes a frame of its own.
//! - A **reader task** owns the [`FrameReceiver`](crate::FrameReceiver). It decodes each frame, hands answers to
//!   the waiting request by correlation id, pushes unsolicited MSG/END (correlation id
//!   [`CorrId::NONE`]) to the [`Pushed`] channel returned by [`RelayClient::connect`], and
//!   discards (and counts) the relay's cover frames.
//! - The table of waiting requests is the one piece of state both sides touch: a request
//!   registers its waiter *before* its transmission is queued (so an answer can never
//!   arrive unrouted) and removes it on timeout or cancellation; the reader removes it when
//!   the answer arrives. It sits behind a short-held mutex.
//!
//! # Bounds (worst-case memory per client)
//!
//! - [`WRITE_QUEUE`] queued transmissions of at most one frame each: 64 × 16 KiB = 1 MiB.
//! - [`MAX_OUTSTANDING_REQUESTS`] requests waiting for an answer, each holding at most one
//!   answer of at most one frame: 256 × 16 KiB = 4 MiB. Further requests wait for a slot
//!   (counted against their timeout).
//! - [`PUSH_QUEUE`] pushed messages not yet taken by the caller, each at most one frame:
//!   64 × 16 KiB = 1 MiB. When it is full the reader stops reading, so flow control (QUIC's
//!   or TCP's) pushes back on the relay — and answers to requests wait too: **drain the
//!   [`Pushed`] receiver** (or drop it, which discards pushes, counted).
//! - QUIC buffers about twice [`QuicOptions::stream_window`](crate::QuicOptions::stream_window) (see [`crate`]);
//!   over TCP rustls holds at most one record, the kernel's socket buffers the rest.
//! - The set of queues subscribed on this session (so their ACKs go unsigned): one
//!   recipient id per successful SUB, removed on END or DEL; the relay caps subscriptions per
//!   session (`limits.subscriptions_per_session`).
//!
//! # Files
//!
//! - this file: [`RelayClient`], one method per command, request bookkeeping;
//! - `types.rs`: what callers pass in and get back ([`ClientOptions`], [`ClientError`],
//!   [`Pushed`], [`SealedMessage`], [`QueueCredentials`], [`ClientStats`]);
//! - `tasks.rs`: the writer and reader tasks and the state they share with the handles.

mod tasks;
mod types;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::VarInt;
use rand::Rng as _;
use rand::rngs::OsRng;
use sotto_protocol::forward::{DEFAULT_EXPIRY_S, Sealer};
use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{
    AuthPublicKey, AuthSecretKey, Command, CorrId, DecodeError, DhSecretKey, EntityId, ErrorCode,
    FRAME_PLAINTEXT_LEN, FrameBuilder, MessageId, RelayAddress, Response, SenderId, Transmission,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{CLOSE_NORMAL, FramedConnection, Link, LinkKind};
use tasks::{Outgoing, Shared, WaiterGuard, bump, read_loop, write_loop};
pub use types::{
    ClientError, ClientOptions, ClientStats, Pushed, QueueCredentials, ReceivedMessage,
    SealedMessage,
};

/// Capacity of the writer's queue, in transmissions (each at most one frame, 16 KiB).
pub const WRITE_QUEUE: usize = 64;

/// Most requests waiting for an answer at once on one client.
pub const MAX_OUTSTANDING_REQUESTS: usize = 256;

/// Capacity of the [`Pushed`] channel, in events (each at most one frame, 16 KiB).
pub const PUSH_QUEUE: usize = 64;

struct Inner {
    relay: RelayAddress,
    handshake_hash: [u8; 32],
    connection: Link,
    outgoing: mpsc::Sender<Outgoing>,
    /// Bounds requests waiting for an answer ([`MAX_OUTSTANDING_REQUESTS`]).
    slots: Semaphore,
    next_corr: AtomicU64,
    request_timeout: Duration,
    shared: Arc<Shared>,
    /// Cancelled by [`RelayClient::close`], when the last handle is dropped, or when either
    /// task ends; stops both tasks and the cover task.
    cancel: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The handshake hash is unique per session: a linkable identifier, not for logs.
        f.debug_struct("RelayClient")
            .field("relay", &self.relay.host)
            .field("closed", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.connection.close(VarInt::from_u32(CLOSE_NORMAL), b"");
    }
}

/// A session with one relay. Cheap to clone; all clones share the session, which closes
/// when [`RelayClient::close`] is called or the last clone is dropped.
#[derive(Debug, Clone)]
pub struct RelayClient {
    inner: Arc<Inner>,
}

impl RelayClient {
    /// Connects to `relay` (Noise against the pinned key, over the transport `opts` choose:
    /// see [`crate::dial`]) and starts the session's tasks. Returns the client and the
    /// receiver of pushed events, which must be drained (see the module documentation) or
    /// dropped.
    ///
    /// A QUIC connection is made from `endpoint` with `opts.quic` (not the endpoint's default
    /// client configuration); a TCP connection (`opts.transport`, `opts.socks5`, or the
    /// automatic fallback) does not use the endpoint.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`ClientError::Transport`] as [`crate::dial`] (including
    /// [`TransportError::IdentityMismatch`](crate::TransportError::IdentityMismatch) for a relay that does not hold the pinned key,
    /// and [`TransportError::OnionNeedsProxy`](crate::TransportError::OnionNeedsProxy) for a `.onion` relay without `opts.socks5`).
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        relay: &RelayAddress,
        opts: &ClientOptions,
    ) -> Result<(RelayClient, mpsc::Receiver<Pushed>), ClientError> {
        let config = crate::client_config(&opts.quic)?;
        let framed = crate::dial(endpoint, Some(config), relay, &opts.dial_options()).await?;
        Ok(Self::from_framed(framed, relay.clone(), opts))
    }

    /// Starts a client on an already established session (for tests and tools that make
    /// the connection themselves).
    pub fn from_framed(
        framed: FramedConnection,
        relay: RelayAddress,
        opts: &ClientOptions,
    ) -> (RelayClient, mpsc::Receiver<Pushed>) {
        let FramedConnection {
            connection,
            sender,
            receiver,
            handshake_hash,
        } = framed;
        let (out_tx, out_rx) = mpsc::channel(WRITE_QUEUE);
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE);
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        tokio::spawn(write_loop(
            sender,
            out_rx,
            connection.clone(),
            shared.clone(),
            cancel.clone(),
        ));
        tokio::spawn(read_loop(
            receiver,
            push_tx,
            connection.clone(),
            shared.clone(),
            cancel.clone(),
        ));
        let inner = Inner {
            relay,
            handshake_hash,
            connection,
            outgoing: out_tx,
            slots: Semaphore::new(MAX_OUTSTANDING_REQUESTS),
            next_corr: AtomicU64::new(1),
            request_timeout: opts.request_timeout,
            shared,
            cancel,
        };
        (
            RelayClient {
                inner: Arc::new(inner),
            },
            push_rx,
        )
    }

    /// The session's Noise handshake hash (what signed commands bind).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.inner.handshake_hash
    }

    /// The relay this client is connected to.
    pub fn relay(&self) -> &RelayAddress {
        &self.inner.relay
    }

    /// The underlying connection (for its statistics; [`Link::as_quic`] for QUIC's).
    pub fn connection(&self) -> &Link {
        &self.inner.connection
    }

    /// The transport this session runs over (TCP after an automatic fallback, or through a
    /// SOCKS5 proxy).
    pub fn transport(&self) -> LinkKind {
        self.inner.connection.kind()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            requests: get(&c.requests),
            cover_sent: get(&c.cover_sent),
            cover_skipped: get(&c.cover_skipped),
            cover_received: get(&c.cover_received),
            late_answers: get(&c.late_answers),
            pushes_discarded: get(&c.pushes_discarded),
            unexpected: get(&c.unexpected),
        }
    }

    /// Sends one command and waits for its answer. With `key`, the command is signed,
    /// bound to this session's handshake hash. An ERR answer becomes
    /// [`ClientError::Relay`]; any other answer is returned as is.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] if the command breaks a field limit (nothing is sent),
    /// [`ClientError::Timeout`] after [`ClientOptions::request_timeout`],
    /// [`ClientError::Closed`] if the session ends first, [`ClientError::Relay`] for ERR.
    pub async fn request(
        &self,
        entity: Option<EntityId>,
        cmd: Command,
        key: Option<&AuthSecretKey>,
    ) -> Result<Response, ClientError> {
        cmd.validate()?;
        let inner = &*self.inner;
        let deadline = Instant::now() + inner.request_timeout;
        let _slot = tokio::time::timeout_at(deadline, inner.slots.acquire())
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| ClientError::Closed)?;
        let corr = inner.next_corr.fetch_add(1, Ordering::Relaxed);
        let corr_id = CorrId::from_u64(corr);
        let t = match key {
            Some(k) => Transmission::signed(corr_id, entity, &cmd, k, &inner.handshake_hash),
            None => Transmission::command(corr_id, entity, &cmd),
        };
        if !FrameBuilder::fits_empty(&t) {
            return Err(ClientError::Protocol(DecodeError::TooLong {
                field: "transmission",
                len: t.encoded_len(),
                max: FRAME_PLAINTEXT_LEN,
            }));
        }
        let (tx, rx) = oneshot::channel();
        let _guard = {
            let mut w = inner.shared.waiters();
            if w.closed {
                return Err(ClientError::Closed);
            }
            w.by_corr.insert(corr, tx);
            WaiterGuard {
                shared: &inner.shared,
                corr,
            }
        };
        tokio::time::timeout_at(deadline, inner.outgoing.send(Outgoing::Transmission(t)))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| ClientError::Closed)?;
        bump(&inner.shared.counters.requests);
        let answer = tokio::time::timeout_at(deadline, rx)
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| ClientError::Closed)?;
        match answer {
            Response::Err(code) => Err(ClientError::Relay(code)),
            r => Ok(r),
        }
    }

    /// Creates a queue (NEW) with fresh recipient keys; returns its credentials, including
    /// the body sealing key derived with the relay's per-queue DH key.
    ///
    /// # Errors
    /// As [`RelayClient::request`]; [`ClientError::Relay`] with AUTH for a wrong or missing
    /// create password; [`ClientError::UnexpectedResponse`] for an answer other than IDS or
    /// an unusable relay DH key.
    pub async fn create_queue(
        &self,
        password: Option<&[u8]>,
    ) -> Result<QueueCredentials, ClientError> {
        let recipient_key = AuthSecretKey::generate(&mut OsRng);
        let dh_key = DhSecretKey::generate(&mut OsRng);
        let cmd = Command::New {
            recipient_auth_key: recipient_key.public(),
            recipient_dh_key: dh_key.public(),
            password: password.unwrap_or_default().to_vec(),
        };
        match self.request(None, cmd, None).await? {
            Response::Ids {
                recipient_id,
                sender_id,
                relay_dh_key,
            } => {
                let seal_key = BodySealKey::derive(&dh_key, &relay_dh_key)
                    .ok_or(ClientError::UnexpectedResponse("low-order relay DH key"))?;
                Ok(QueueCredentials {
                    relay: self.inner.relay.clone(),
                    recipient_id,
                    sender_id,
                    recipient_key,
                    dh_key,
                    relay_dh_key,
                    seal_key,
                })
            }
            r => Err(unexpected("NEW expects IDS", &r)),
        }
    }

    /// Secures the queue with the sender's key (KEY, signed by the recipient).
    ///
    /// # Errors
    /// As [`RelayClient::request`]; an answer other than OK is
    /// [`ClientError::UnexpectedResponse`].
    pub async fn secure(
        &self,
        creds: &QueueCredentials,
        sender_key: AuthPublicKey,
    ) -> Result<(), ClientError> {
        self.recipient_ok(creds, Command::Key { sender_key }, "KEY expects OK")
            .await
    }

    /// Secures a queue from the sender's side (SKEY with `sender_key`'s public key, signed
    /// by `sender_key` itself).
    ///
    /// # Errors
    /// As [`RelayClient::secure`]; PROHIBITED if the queue is already secured.
    pub async fn sender_secure(
        &self,
        sender_id: SenderId,
        sender_key: &AuthSecretKey,
    ) -> Result<(), ClientError> {
        let cmd = Command::SKey {
            sender_key: sender_key.public(),
        };
        let r = self
            .request(Some(sender_id.into()), cmd, Some(sender_key))
            .await?;
        expect_ok("SKEY expects OK", &r)
    }

    /// Sends a message (SEND), signed with `key` when given (required once the queue is
    /// secured). `body` should already be padded to [`sotto_protocol::MAX_BODY`].
    ///
    /// # Errors
    /// As [`RelayClient::request`]: AUTH, QUOTA, LARGE, PROHIBITED… as
    /// [`ClientError::Relay`]; a body over the limit as [`ClientError::Protocol`].
    pub async fn send(
        &self,
        sender_id: SenderId,
        key: Option<&AuthSecretKey>,
        flags: u8,
        body: Vec<u8>,
    ) -> Result<(), ClientError> {
        let r = self
            .request(Some(sender_id.into()), Command::Send { flags, body }, key)
            .await?;
        expect_ok("SEND expects OK", &r)
    }

    /// Sends a message (SEND) to a queue on `destination` **through this relay** (FWD,
    /// `docs/protocol.md` § 10a): the SEND is sealed to the destination's key, so the
    /// destination sees this relay's address instead of ours, and this relay sees neither
    /// the queue nor the body. Signed with `key` when given, as [`RelayClient::send`].
    ///
    /// # Errors
    /// As [`RelayClient::forward`]. `Ok` means the destination stored the message durably;
    /// see there for which errors leave the outcome unknown.
    pub async fn send_through(
        &self,
        destination: &RelayAddress,
        sender_id: SenderId,
        key: Option<&AuthSecretKey>,
        flags: u8,
        body: Vec<u8>,
    ) -> Result<(), ClientError> {
        let r = self
            .forward(
                destination,
                sender_id.into(),
                Command::Send { flags, body },
                key,
            )
            .await?;
        expect_ok("SEND expects OK", &r)
    }

    /// Secures a queue on `destination` from the sender's side (SKEY, as
    /// [`RelayClient::sender_secure`]) through this relay (FWD).
    ///
    /// # Errors
    /// As [`RelayClient::forward`]; PROHIBITED if the queue is secured with another key.
    pub async fn sender_secure_through(
        &self,
        destination: &RelayAddress,
        sender_id: SenderId,
        sender_key: &AuthSecretKey,
    ) -> Result<(), ClientError> {
        let cmd = Command::SKey {
            sender_key: sender_key.public(),
        };
        let r = self
            .forward(destination, sender_id.into(), cmd, Some(sender_key))
            .await?;
        expect_ok("SKEY expects OK", &r)
    }

    /// Seals `cmd` (a SEND or SKEY for `entity`, signed with `key` over the sealed request's
    /// handshake hash when given) to `destination`'s key with an expiry 5 minutes ahead,
    /// sends it to this relay as FWD, and opens the destination's sealed answer. An ERR in
    /// the answer becomes [`ClientError::Relay`]; any other answer is returned as is.
    ///
    /// # Errors
    /// [`ClientError::Relay`] with this relay's refusal (`FWD_REFUSED`, `LIMITED`), its
    /// failure to reach the destination (`UNREACHABLE`, `IDENTITY`, `TIMEOUT`), the
    /// destination's refusal before execution (`AUTH`, `SYNTAX`, `REPLAY`, `LIMITED`), or the
    /// destination's answer to the command (e.g. `AUTH`, `QUOTA`). All of these had no effect
    /// at the destination except `TIMEOUT`. A [`ClientError::Timeout`], a closed session or
    /// [`ClientError::Forward`] (the answer did not open) also leave the outcome unknown.
    pub async fn forward(
        &self,
        destination: &RelayAddress,
        entity: EntityId,
        cmd: Command,
        key: Option<&AuthSecretKey>,
    ) -> Result<Response, ClientError> {
        cmd.validate()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The inner correlation id only matches the answer to this request; a random one
        // says nothing about this client's session.
        let corr = CorrId::from_u64(OsRng.r#gen::<u64>() | 1);
        let (sealed, answer_key) = Sealer::start(&destination.key)?.seal_command(
            now.saturating_add(DEFAULT_EXPIRY_S),
            corr,
            Some(entity),
            &cmd,
            key,
        )?;
        let fwd = Command::Fwd {
            relay: destination.clone(),
            sealed,
        };
        let sealed = match self.request(None, fwd, None).await? {
            Response::FwdAnswer { sealed } => sealed,
            r => return Err(unexpected("FWD expects FWD_ANSWER", &r)),
        };
        let t = answer_key.open(&sealed)?;
        if t.corr_id != corr || t.entity != Some(entity) {
            return Err(ClientError::UnexpectedResponse(
                "the destination's answer is for another request",
            ));
        }
        match t.decode_response()? {
            Response::Err(code) => Err(ClientError::Relay(code)),
            r => Ok(r),
        }
    }

    /// Subscribes this session to the queue (SUB): its messages arrive as [`Pushed::Msg`].
    ///
    /// # Errors
    /// As [`RelayClient::secure`].
    pub async fn subscribe(&self, creds: &QueueCredentials) -> Result<(), ClientError> {
        self.recipient_ok(creds, Command::Sub, "SUB expects OK")
            .await?;
        self.inner.shared.subscribed().insert(creds.recipient_id);
        Ok(())
    }

    /// Fetches one message (GET) and opens its body; `None` when the queue is empty.
    ///
    /// # Errors
    /// As [`RelayClient::request`]; [`ClientError::Open`] if the body does not open.
    pub async fn get(
        &self,
        creds: &QueueCredentials,
    ) -> Result<Option<ReceivedMessage>, ClientError> {
        let r = self.recipient_request(creds, Command::Get).await?;
        match r {
            Response::Msg {
                msg_id,
                timestamp,
                flags,
                sealed_body,
            } => {
                let sealed = SealedMessage {
                    msg_id,
                    timestamp,
                    flags,
                    sealed_body,
                };
                sealed.open(creds).map(Some)
            }
            Response::NoMsg => Ok(None),
            r => Err(unexpected("GET expects MSG or NO_MSG", &r)),
        }
    }

    /// Acknowledges (deletes) a delivered message (ACK). Returns `true` when the relay
    /// deleted it, `false` when it answered NO_MSG (no such message: already acknowledged,
    /// expired, or not the one last delivered) — a harmless outcome, not an error.
    ///
    /// On a queue this session holds the subscription of, the ACK goes unsigned (the SUB's
    /// signature already proved the recipient key to this session); if the relay refuses it
    /// with AUTH because the subscription just ended, it is sent again signed.
    ///
    /// # Errors
    /// As [`RelayClient::request`].
    pub async fn ack(
        &self,
        creds: &QueueCredentials,
        msg_id: MessageId,
    ) -> Result<bool, ClientError> {
        let entity = Some(creds.recipient_id.into());
        let cmd = Command::Ack { msg_id };
        let subscribed = self.inner.shared.subscribed().contains(&creds.recipient_id);
        let unsigned = if subscribed {
            match self.request(entity, cmd.clone(), None).await {
                Err(ClientError::Relay(ErrorCode::Auth)) => None,
                other => Some(other?),
            }
        } else {
            None
        };
        let answer = match unsigned {
            Some(answer) => answer,
            None => self.recipient_request(creds, cmd).await?,
        };
        match answer {
            Response::Ok => Ok(true),
            Response::NoMsg => Ok(false),
            r => Err(unexpected("ACK expects OK or NO_MSG", &r)),
        }
    }

    /// Stops the queue accepting messages (OFF).
    ///
    /// # Errors
    /// As [`RelayClient::secure`].
    pub async fn off(&self, creds: &QueueCredentials) -> Result<(), ClientError> {
        self.recipient_ok(creds, Command::Off, "OFF expects OK")
            .await
    }

    /// Deletes the queue and its messages (DEL).
    ///
    /// # Errors
    /// As [`RelayClient::secure`].
    pub async fn delete(&self, creds: &QueueCredentials) -> Result<(), ClientError> {
        self.recipient_ok(creds, Command::Del, "DEL expects OK")
            .await?;
        self.inner.shared.subscribed().remove(&creds.recipient_id);
        Ok(())
    }

    /// PING → PONG.
    ///
    /// # Errors
    /// As [`RelayClient::request`].
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.request(None, Command::Ping, None).await? {
            Response::Pong => Ok(()),
            r => Err(unexpected("PING expects PONG", &r)),
        }
    }

    /// Queues one cover frame (a single DROP, no answer). Waits while the writer's queue is
    /// full.
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the session has ended.
    pub async fn send_cover(&self) -> Result<(), ClientError> {
        self.inner
            .outgoing
            .send(Outgoing::Cover)
            .await
            .map_err(|_| ClientError::Closed)?;
        bump(&self.inner.shared.counters.cover_sent);
        Ok(())
    }

    /// Starts a task sending cover frames as a Poisson process of `rate_per_s` frames per
    /// second (exponentially distributed gaps, so cover ticks are memoryless like the
    /// relay's delays). A tick that finds the writer's queue full of real traffic is skipped
    /// (counted). The task ends when the session closes; a rate that is not a positive
    /// finite number starts a task that ends at once.
    pub fn start_cover_traffic(&self, rate_per_s: f64) -> JoinHandle<()> {
        let outgoing = self.inner.outgoing.clone();
        let cancel = self.inner.cancel.clone();
        let shared = self.inner.shared.clone();
        tokio::spawn(async move {
            if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
                return;
            }
            loop {
                let gap = sotto_timing::exp::poisson_gap(&mut OsRng, rate_per_s);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(gap) => {}
                }
                match outgoing.try_send(Outgoing::Cover) {
                    Ok(()) => bump(&shared.counters.cover_sent),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        bump(&shared.counters.cover_skipped);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        })
    }

    /// Closes the session now: queued transmissions are discarded, waiting requests fail
    /// with [`ClientError::Closed`], the [`Pushed`] channel gets [`Pushed::Closed`] and
    /// ends. A QUIC close is sent while the endpoint keeps running; a TCP connection is shut
    /// down.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        self.inner.shared.close();
        self.inner
            .connection
            .close(VarInt::from_u32(CLOSE_NORMAL), b"");
    }

    async fn recipient_request(
        &self,
        creds: &QueueCredentials,
        cmd: Command,
    ) -> Result<Response, ClientError> {
        self.request(
            Some(creds.recipient_id.into()),
            cmd,
            Some(&creds.recipient_key),
        )
        .await
    }

    async fn recipient_ok(
        &self,
        creds: &QueueCredentials,
        cmd: Command,
        name: &'static str,
    ) -> Result<(), ClientError> {
        let r = self.recipient_request(creds, cmd).await?;
        expect_ok(name, &r)
    }
}

/// `expected` as in [`unexpected`], e.g. "KEY expects OK".
fn expect_ok(expected: &'static str, r: &Response) -> Result<(), ClientError> {
    match r {
        Response::Ok => Ok(()),
        r => Err(unexpected(expected, r)),
    }
}

/// `expected` says what the command should have been answered with, e.g. "NEW expects IDS".
fn unexpected(expected: &'static str, r: &Response) -> ClientError {
    tracing::debug!(expected, answer = r.name(), "unexpected answer");
    ClientError::UnexpectedResponse(expected)
}
