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
//! # Paced sessions
//!
//! With [`ClientOptions::pacing`] the writer sends **one frame at each tick** of a
//! [`sotto_timing::Pacer`] (gaps `Exp(1/rate)` drawn from the OS's CSPRNG) and never a frame
//! between ticks: at a tick it takes as many queued transmissions as fit one frame, in
//! order (greedily, as unpaced), or sends a cover frame (DROP) if nothing waits. An observer
//! of the link sees the same Poisson stream of frames whether or not anything real is sent.
//! [`ClientStats::real_ticks`] and [`ClientStats::cover_ticks`] count them.
//!
//! - **PACE.** With [`ClientOptions::relay_cover`] > 0 the session's first transmission is
//!   PACE with the mean gap [`ClientOptions::pace_gap_ms`] (`docs/protocol.md` § 9.2), so
//!   that the relay's answers wait for its own ticks instead of following our real frames.
//!   [`RelayClient::connect`] does not wait for its answer. A relay that refuses
//!   (`PROHIBITED`, `LIMITED`, or `SYNTAX` from a relay that predates PACE) is logged once
//!   per session at `info` and recorded ([`RelayClient::relay_pacing`]); the session goes on,
//!   still paced on our side.
//! - **Echo.** With [`ClientOptions::echo`] every frame the reader receives (an answer, a
//!   pushed MSG, the relay's cover) is answered by one frame of ours [`ECHO_DELAY`] after
//!   it arrived, besides the ticks: the writer fills it as it fills a tick (the ACK
//!   of a message just pushed, if the caller queued it within the delay, and what else
//!   waits) or sends cover. The echoes depend only on the frames received, which an
//!   observer already sees, never on what they carried; they let an ACK, and so the next
//!   message of its queue, leave without waiting for a tick. At most [`ECHO_QUEUE`] wait;
//!   beyond, received frames go unanswered (counted: [`ClientStats::echoes_dropped`]).
//!   [`ClientStats::echoes`] counts those sent.
//! - **Cover.** The ticks are the cover: [`RelayClient::send_cover`] and
//!   [`RelayClient::start_cover_traffic`] do nothing on a paced session.
//! - **Request timeouts.** A paced request waits for a tick, and its answer for the relay's
//!   next frame (`Exp(gap)` or longer behind other answers), so a timer started at the call
//!   would time healthy requests out. The waits are bounded in three steps instead:
//!   1. a free request slot and room in the writer's queue: within
//!      [`ClientOptions::request_timeout`] of the call, as unpaced;
//!   2. departure (the writer tells each request when the frame carrying it has been
//!      written): within `request_timeout` + `(`[`PACED_SLACK_GAPS`]` + 2n)` mean tick gaps
//!      of entering the queue, `n` being the transmissions queued ahead of it (each tick
//!      takes at least one, so it leaves within `n + 1` ticks: this is more than twice the
//!      expected wait plus eight gaps);
//!   3. the answer: within `request_timeout` + `(PACED_SLACK_GAPS + 2m)` PACE gaps of its
//!      departure, `m` being the other requests waiting for an answer then (each answer
//!      takes at most one relay frame); when the relay refused PACE or none was asked for,
//!      within `request_timeout` of departure.
//!
//!   With the defaults (15 s) and one tick every 12 s, a request that finds the queue empty
//!   gives up on departure after 2 min 15 s (`e^-11` of healthy ticks are later); the
//!   answer bound with a PACE gap of 100 s is about 17 minutes. A dead connection is found
//!   sooner by QUIC's idle timeout, which fails every waiting request at once.
//! - **Bounds.** [`WRITE_QUEUE`] is the outbox of a paced link: at most that many
//!   transmissions wait for ticks (plus the one a tick's frame had no room for). When real
//!   traffic exceeds the rate, transmissions wait longer and callers block on a full
//!   queue (within step 1's bound); nothing changes on the wire. A
//!   [`Burst`](sotto_timing::pacing::Burst) allowance in the policy trades that latency for
//!   leakage: while more than `after` transmissions wait, gaps are drawn `factor` times
//!   shorter (from the tick after the backlog crossed the threshold), and an observer who
//!   sees the rate rise learns that a burst is being sent ([`ClientStats::burst_gaps`]).
//! - **Ending.** [`RelayClient::finish`] stops the ticks after the frame being written,
//!   ends the stream in an orderly way and waits for the relay to close the session, so
//!   that the relay has read every frame counted in [`ClientStats::frames`] (echoes still
//!   waiting are not sent).
//!
//! # Bounds (worst-case memory per client)
//!
//! - [`WRITE_QUEUE`] queued transmissions of at most one frame each, plus the one the
//!   writer carries to the next frame: 65 × 16 KiB ≈ 1 MiB. On a paced session this is the
//!   link's outbox (see above).
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
//!
//! This file is about 1 000 lines: a third is the documentation above (the normative
//! description of paced sessions and the bounds), the rest one cohesive concern — a method
//! per command over the same request bookkeeping, and their unit tests. Splitting the
//! commands across files would separate each from the bookkeeping it is written against.

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
use sotto_timing::pacing::PacingPolicy;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{CLOSE_NORMAL, FramedConnection, Link, LinkKind};
use tasks::{
    Outgoing, Queued, Shared, WaiterGuard, WriterControl, bump, paced_write_loop, read_loop,
    write_loop,
};
pub use types::{
    ClientError, ClientOptions, ClientStats, Pushed, QueueCredentials, ReceivedMessage,
    RelayPacing, SealedMessage,
};

/// Capacity of the writer's queue, in transmissions (each at most one frame, 16 KiB).
pub const WRITE_QUEUE: usize = 64;

/// Most requests waiting for an answer at once on one client.
pub const MAX_OUTSTANDING_REQUESTS: usize = 256;

/// Capacity of the [`Pushed`] channel, in events (each at most one frame, 16 KiB).
pub const PUSH_QUEUE: usize = 64;

/// Slack of a paced request's waits for its tick and for its answer, in mean gaps (see
/// "Paced sessions" in the module documentation).
pub const PACED_SLACK_GAPS: u32 = 10;

/// How long after a received frame its echo leaves ([`ClientOptions::echo`]); the
/// simulator uses the same constant.
pub use sotto_timing::policy::ECHO_DELAY;

/// Most echoes waiting at once on one paced session (an [`Instant`] each). A relay sending
/// faster than `ECHO_QUEUE` frames per [`ECHO_DELAY`] gets the rest unanswered (counted).
pub const ECHO_QUEUE: usize = 256;

/// How a paced session's requests are timed (see "Paced sessions").
#[derive(Debug, Clone, Copy)]
struct PacedTiming {
    request_timeout: Duration,
    /// Mean gap between our ticks (1 / rate).
    tick_gap: Duration,
    /// Mean gap between the relay's frames that we asked for (zero: no PACE).
    pace_gap: Duration,
}

impl PacedTiming {
    /// `request_timeout` + `(PACED_SLACK_GAPS + 2 × ahead)` × `gap`.
    fn bound(&self, gap: Duration, ahead: usize) -> Duration {
        let gaps = u32::try_from(ahead)
            .unwrap_or(u32::MAX)
            .saturating_mul(2)
            .saturating_add(PACED_SLACK_GAPS);
        self.request_timeout
            .saturating_add(gap.saturating_mul(gaps))
    }

    /// The gap of the relay's frames as answers see it: the PACE gap unless the relay
    /// refused (then it answers at once).
    fn answer_gap(&self, shared: &Shared) -> Duration {
        match shared.relay_pacing() {
            RelayPacing::Asked | RelayPacing::Accepted => self.pace_gap,
            RelayPacing::NotAsked | RelayPacing::Refused(_) => Duration::ZERO,
        }
    }
}

struct Inner {
    relay: RelayAddress,
    handshake_hash: [u8; 32],
    connection: Link,
    outgoing: mpsc::Sender<Outgoing>,
    /// Bounds requests waiting for an answer ([`MAX_OUTSTANDING_REQUESTS`]).
    slots: Semaphore,
    next_corr: AtomicU64,
    request_timeout: Duration,
    /// `Some` on a paced session.
    paced: Option<PacedTiming>,
    shared: Arc<Shared>,
    /// Cancelled by [`RelayClient::close`], when the last handle is dropped, or when either
    /// task ends; stops both tasks and the cover task.
    cancel: CancellationToken,
    /// Cancelled by [`RelayClient::finish`]: the writer ends the stream after its frame.
    finish: CancellationToken,
    /// Cancelled by the writer when it has stopped.
    writer_done: CancellationToken,
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
        if let Some(p) = &opts.pacing {
            p.validate().map_err(ClientError::Options)?;
        }
        let config = crate::client_config(&opts.quic)?;
        let framed = crate::dial(endpoint, Some(config), relay, &opts.dial_options()).await?;
        Ok(Self::from_framed(framed, relay.clone(), opts))
    }

    /// Starts a client on an already established session (for tests and tools that make
    /// the connection themselves). A paced session's first transmission is PACE (see the
    /// module documentation); the policy is not checked here (an invalid rate ticks at
    /// most once an hour, [`sotto_timing::exp::MAX_GAP`]).
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
        let control = WriterControl {
            cancel: cancel.clone(),
            finish: CancellationToken::new(),
            done: CancellationToken::new(),
        };
        let (finish, writer_done) = (control.finish.clone(), control.done.clone());
        let paced = opts.pacing.map(|p: PacingPolicy| PacedTiming {
            request_timeout: opts.request_timeout,
            tick_gap: Duration::try_from_secs_f64(1.0 / p.rate)
                .unwrap_or(sotto_timing::exp::MAX_GAP),
            pace_gap: Duration::from_millis(opts.pace_gap_ms().map_or(0, u64::from)),
        });
        let (echo_tx, echo_rx) = match opts.pacing {
            Some(_) if opts.echo => {
                let (tx, rx) = mpsc::channel(ECHO_QUEUE);
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        match opts.pacing {
            Some(policy) => {
                tokio::spawn(paced_write_loop(
                    sender,
                    out_rx,
                    connection.clone(),
                    shared.clone(),
                    control,
                    policy,
                    echo_rx,
                ));
            }
            None => {
                tokio::spawn(write_loop(
                    sender,
                    out_rx,
                    connection.clone(),
                    shared.clone(),
                    control,
                ));
            }
        }
        tokio::spawn(read_loop(
            receiver,
            push_tx,
            connection.clone(),
            shared.clone(),
            cancel.clone(),
            echo_tx,
        ));
        let inner = Inner {
            relay,
            handshake_hash,
            connection,
            outgoing: out_tx,
            slots: Semaphore::new(MAX_OUTSTANDING_REQUESTS),
            next_corr: AtomicU64::new(1),
            request_timeout: opts.request_timeout,
            paced,
            shared,
            cancel,
            finish,
            writer_done,
        };
        let client = RelayClient {
            inner: Arc::new(inner),
        };
        if let Some(gap_ms) = opts.pace_gap_ms() {
            client.ask_pace(gap_ms);
        }
        (client, push_rx)
    }

    /// Queues PACE as the session's first transmission and watches its answer in a task
    /// that holds no handle (so it never keeps the session open).
    fn ask_pace(&self, gap_ms: u32) {
        let inner = &*self.inner;
        let Some(timing) = inner.paced else {
            return;
        };
        let corr = inner.next_corr.fetch_add(1, Ordering::Relaxed);
        let t = Transmission::command(CorrId::from_u64(corr), None, &Command::Pace { gap_ms });
        let (tx, rx) = oneshot::channel();
        let (dep_tx, dep_rx) = oneshot::channel();
        inner.shared.waiters().by_corr.insert(corr, tx);
        inner.shared.set_relay_pacing(RelayPacing::Asked);
        inner.shared.pace_corr.store(corr, Ordering::Relaxed);
        let queued = Outgoing::Transmission(Queued {
            t,
            departed: Some(dep_tx),
        });
        // The queue is new and empty: this cannot find it full.
        if inner.outgoing.try_send(queued).is_err() {
            inner.shared.waiters().by_corr.remove(&corr);
            inner.shared.set_relay_pacing(RelayPacing::NotAsked);
            return;
        }
        bump(&inner.shared.counters.requests);
        let shared = inner.shared.clone();
        let cancel = inner.cancel.clone();
        tokio::spawn(async move {
            let _guard = WaiterGuard {
                shared: &shared,
                corr,
            };
            let answer = tokio::select! {
                _ = cancel.cancelled() => return,
                a = wait_paced(&shared, timing, 0, dep_rx, rx) => a,
            };
            // The reader has recorded the relay's decision (`Shared::pace_corr`).
            match answer {
                Ok(Response::Ok) => {}
                Ok(Response::Err(code)) => {
                    let why = match code {
                        ErrorCode::Syntax => "it predates PACE",
                        ErrorCode::Prohibited => "it does not pace sessions",
                        ErrorCode::Limited => "its shortest gap is longer than the one asked for",
                        _ => "it refused",
                    };
                    tracing::info!(
                        "the relay does not pace its answers ({why}: PACE answered {}): an \
                         observer can tell real frames by their answers; this client's own \
                         frames stay paced",
                        code.name()
                    );
                }
                Ok(r) => {
                    tracing::debug!(answer = r.name(), "unexpected answer to PACE");
                }
                Err(e) => tracing::debug!(error = %e, "no answer to PACE"),
            }
        });
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

    /// Whether this session's frames are paced ([`ClientOptions::pacing`]).
    pub fn is_paced(&self) -> bool {
        self.inner.paced.is_some()
    }

    /// What the relay said to this session's PACE.
    pub fn relay_pacing(&self) -> RelayPacing {
        self.inner.shared.relay_pacing()
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
            real_ticks: get(&c.real_ticks),
            cover_ticks: get(&c.cover_ticks),
            burst_gaps: get(&c.burst_gaps),
            echoes: get(&c.echoes),
            echoes_dropped: get(&c.echoes_dropped),
        }
    }

    /// Sends one command and waits for its answer. With `key`, the command is signed,
    /// bound to this session's handshake hash. An ERR answer becomes
    /// [`ClientError::Relay`]; any other answer is returned as is.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] if the command breaks a field limit (nothing is sent),
    /// [`ClientError::Timeout`] after [`ClientOptions::request_timeout`] (on a paced
    /// session, after the bounds of "Paced sessions" in the module documentation),
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
        let answer = match inner.paced {
            None => {
                let queued = Queued { t, departed: None };
                tokio::time::timeout_at(
                    deadline,
                    inner.outgoing.send(Outgoing::Transmission(queued)),
                )
                .await
                .map_err(|_| ClientError::Timeout)?
                .map_err(|_| ClientError::Closed)?;
                bump(&inner.shared.counters.requests);
                tokio::time::timeout_at(deadline, rx)
                    .await
                    .map_err(|_| ClientError::Timeout)?
                    .map_err(|_| ClientError::Closed)?
            }
            Some(timing) => {
                let (dep_tx, dep_rx) = oneshot::channel();
                let queued = Queued {
                    t,
                    departed: Some(dep_tx),
                };
                let permit = tokio::time::timeout_at(deadline, inner.outgoing.reserve())
                    .await
                    .map_err(|_| ClientError::Timeout)?
                    .map_err(|_| ClientError::Closed)?;
                // Queued ahead of this one: the queue's length once this slot is taken.
                let ahead = WRITE_QUEUE.saturating_sub(inner.outgoing.capacity() + 1);
                permit.send(Outgoing::Transmission(queued));
                bump(&inner.shared.counters.requests);
                return match wait_paced(&inner.shared, timing, ahead, dep_rx, rx).await? {
                    Response::Err(code) => Err(ClientError::Relay(code)),
                    r => Ok(r),
                };
            }
        };
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
    /// full. On a paced session it does nothing (its ticks are the cover).
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the session has ended.
    pub async fn send_cover(&self) -> Result<(), ClientError> {
        if self.is_paced() {
            return if self.is_closed() {
                Err(ClientError::Closed)
            } else {
                Ok(())
            };
        }
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
    /// finite number starts a task that ends at once, and so does any rate on a paced
    /// session (its ticks are the cover: [`ClientOptions::pacing`]).
    pub fn start_cover_traffic(&self, rate_per_s: f64) -> JoinHandle<()> {
        if self.is_paced() {
            return tokio::spawn(async {});
        }
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

    /// Ends the session in an orderly way: the writer stops after the frame it is writing
    /// (a paced session ticks no more), ends the stream, and this waits — at most `bound` —
    /// for the relay to read everything and close the session; then it closes as
    /// [`RelayClient::close`] does. Transmissions still queued are not sent (their requests
    /// fail with [`ClientError::Closed`]); answers to what was sent are still delivered
    /// meanwhile. Afterwards [`RelayClient::stats`] counts exactly the frames the relay read.
    pub async fn finish(&self, bound: Duration) {
        let inner = &*self.inner;
        inner.finish.cancel();
        let _ = tokio::time::timeout(bound, async {
            inner.writer_done.cancelled().await;
            // The reader ends (and cancels) once the relay closes the connection.
            inner.cancel.cancelled().await;
        })
        .await;
        self.close().await;
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

/// Waits for a paced request's departure and then its answer, each within its bound (see
/// "Paced sessions" in the module documentation); `ahead` transmissions were queued before
/// it. The answer cannot come before the departure signal, but is taken if it does.
async fn wait_paced(
    shared: &Shared,
    timing: PacedTiming,
    ahead: usize,
    departed: oneshot::Receiver<()>,
    answer: oneshot::Receiver<Response>,
) -> Result<Response, ClientError> {
    let mut answer = answer;
    let depart_by = Instant::now() + timing.bound(timing.tick_gap, ahead);
    tokio::select! {
        biased;
        a = &mut answer => return a.map_err(|_| ClientError::Closed),
        d = departed => d.map_err(|_| ClientError::Closed)?,
        _ = tokio::time::sleep_until(depart_by) => return Err(ClientError::Timeout),
    }
    // Other requests waiting for an answer may be answered first, each in a relay frame.
    let others = shared.waiters().by_corr.len().saturating_sub(1);
    let answer_by = Instant::now() + timing.bound(timing.answer_gap(shared), others);
    tokio::time::timeout_at(answer_by, answer)
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|_| ClientError::Closed)
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

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: PacedTiming = PacedTiming {
        request_timeout: Duration::from_secs(15),
        tick_gap: Duration::from_secs(12),
        pace_gap: Duration::from_secs(100),
    };

    type Departure = (oneshot::Sender<()>, oneshot::Receiver<()>);
    type Answer = (oneshot::Sender<Response>, oneshot::Receiver<Response>);

    fn channels() -> (Departure, Answer) {
        (oneshot::channel(), oneshot::channel())
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_request_is_not_timed_while_it_waits_for_its_tick() {
        let shared = Arc::new(Shared::default());
        shared.set_relay_pacing(RelayPacing::Accepted);
        let ((dep_tx, dep_rx), (ans_tx, ans_rx)) = channels();
        let start = Instant::now();
        let waiting = tokio::spawn({
            let shared = shared.clone();
            async move { wait_paced(&shared, TIMING, 0, dep_rx, ans_rx).await }
        });
        // Leaves after eight request timeouts (slow ticks), answered a PACE gap later.
        tokio::time::sleep(TIMING.request_timeout * 8).await;
        dep_tx.send(()).unwrap();
        tokio::time::sleep(TIMING.pace_gap).await;
        ans_tx.send(Response::Ok).unwrap();
        assert!(matches!(waiting.await.unwrap(), Ok(Response::Ok)));
        assert_eq!(
            start.elapsed(),
            TIMING.request_timeout * 8 + TIMING.pace_gap
        );
    }

    #[tokio::test(start_paused = true)]
    async fn departure_and_answer_are_each_bounded() {
        let shared = Arc::new(Shared::default());
        // Never leaves: timed out after request_timeout + (10 + 2 × 3) tick gaps.
        let ((_dep_tx, dep_rx), (_ans_tx, ans_rx)) = channels();
        let start = Instant::now();
        let r = wait_paced(&shared, TIMING, 3, dep_rx, ans_rx).await;
        assert!(matches!(r, Err(ClientError::Timeout)));
        assert_eq!(
            start.elapsed(),
            TIMING.request_timeout + TIMING.tick_gap * 16
        );

        // Leaves at once, never answered, the relay pacing: request_timeout + 10 PACE gaps.
        shared.set_relay_pacing(RelayPacing::Asked);
        let ((dep_tx, dep_rx), (_ans_tx, ans_rx)) = channels();
        dep_tx.send(()).unwrap();
        let start = Instant::now();
        let r = wait_paced(&shared, TIMING, 0, dep_rx, ans_rx).await;
        assert!(matches!(r, Err(ClientError::Timeout)));
        assert_eq!(
            start.elapsed(),
            TIMING.request_timeout + TIMING.pace_gap * 10
        );

        // A relay that refused PACE answers at once: request_timeout after departure.
        shared.set_relay_pacing(RelayPacing::Refused(ErrorCode::Syntax));
        let ((dep_tx, dep_rx), (_ans_tx, ans_rx)) = channels();
        dep_tx.send(()).unwrap();
        let start = Instant::now();
        let r = wait_paced(&shared, TIMING, 0, dep_rx, ans_rx).await;
        assert!(matches!(r, Err(ClientError::Timeout)));
        assert_eq!(start.elapsed(), TIMING.request_timeout);

        // The session ended before the transmission left: Closed, not a timeout.
        let ((dep_tx, dep_rx), (_ans_tx, ans_rx)) = channels();
        drop(dep_tx);
        let r = wait_paced(&shared, TIMING, 0, dep_rx, ans_rx).await;
        assert!(matches!(r, Err(ClientError::Closed)));
    }

    #[test]
    fn the_pace_gap_is_the_rounded_inverse_of_the_relay_cover() {
        let paced = |relay_cover| ClientOptions {
            pacing: Some(PacingPolicy::at_rate(1.0)),
            relay_cover,
            ..ClientOptions::default()
        };
        assert_eq!(paced(0.01).pace_gap_ms(), Some(100_000));
        assert_eq!(paced(3.0).pace_gap_ms(), Some(333));
        assert_eq!(paced(1.0 / 600.0).pace_gap_ms(), Some(600_000));
        assert_eq!(paced(5000.0).pace_gap_ms(), Some(1));
        assert_eq!(paced(1e-12).pace_gap_ms(), Some(u32::MAX));
        for off in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(paced(off).pace_gap_ms(), None, "{off}");
        }
        let unpaced = ClientOptions {
            relay_cover: 1.0,
            ..ClientOptions::default()
        };
        assert_eq!(unpaced.pace_gap_ms(), None, "no PACE without pacing");
    }
}
