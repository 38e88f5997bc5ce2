//! One session: a connection after its handshake, whichever the transport.
//!
//! What it owns: the session loop and its state — subscriptions, the message in flight on
//! each, deletions still committing, the per-session rate limits, the store writes in flight
//! (run concurrently, so many SENDs of one session share a group commit) — and the dispatch
//! of each decoded command to its handler. The loop selects over shutdown, the next frame
//! (while fewer than [`MAX_IN_FLIGHT`] writes run), a finished write and the router's inbox.
//!
//! Where the rest is: [`frames`] (the reader and writer tasks: records ↔ frames, batching,
//! cover, and the session's pace after PACE: the writer owns the tick process and holds the
//! answers for it; this loop only tells it the gap, before PACE's answer), [`recipient`] (NEW, the recipient's commands and delivery on subscriptions),
//! `super::commands` (what SEND and SKEY check and write), `super::forward` (FWD and RFWD
//! proper).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sotto_protocol::{
    AuthPublicKey, Command, CorrId, DecodeError, EntityId, ErrorCode, MessageId, RecipientId,
    RelayAddress, Response, Transmission,
};
use sotto_transport::{self as transport, FramedConnection};
use tokio::sync::mpsc;

use super::commands::{SecuredSenders, prepare_send, prepare_sender_key, simple_write, store_send};
use super::router::Inbox;
use super::{Shared, forward, lock, nonzero, per_second_burst_2x};
use crate::store::{QueueRef, StoredMessage, WriteOp};

mod frames;
mod recipient;

use frames::Outgoing;

/// Transmissions waiting for a session's writer. Each holds at most one MSG (~15.5 KiB), so
/// a full queue costs ≤ 4 MiB per session; beyond it the session loop waits. (A paced
/// session's writer holds up to another 256 answers for its next tick, see
/// `frames::LAZY_PER_FRAME`.) They are boxed
/// so that the channel's first block of 32 slots, which tokio allocates with the channel,
/// costs 256 bytes per idle session instead of 4 KiB.
const OUT_QUEUE: usize = 256;

/// Decoded frames waiting for a session's loop (each ≤ 16 KiB of transmissions, so ≤ 64 KiB
/// per session, plus the one frame the reader holds).
const IN_FRAMES: usize = 4;

/// Store writes one session may have in flight; beyond it the session stops reading (and QUIC
/// flow control stops the client). Each holds at most one SEND body (≤ 15 KiB), so ≤ 4 MiB
/// per session.
const MAX_IN_FLIGHT: usize = 256;

/// A subscribed queue in one session.
struct Sub {
    recipient_id: RecipientId,
    /// The queue's recipient key as this session read it at SUB (it never changes), so that
    /// an ACK on the subscription is verified without reading and decoding the queue record
    /// again (two Ed25519 point decompressions and a store read per delivered message).
    recipient_key: AuthPublicKey,
}

/// A message delivered in this session and not yet acknowledged.
#[derive(Clone, Copy)]
struct InFlight {
    msg_id: MessageId,
    seq: u64,
    /// Its release and receipt times (from the authenticated record), so that the ACK's
    /// delete needs no second decryption of the 16 KiB record.
    release_at_ms: u64,
    received_ms: u64,
}

impl InFlight {
    fn of(m: &StoredMessage) -> Self {
        Self {
            msg_id: m.msg.msg_id,
            seq: m.seq,
            release_at_ms: m.msg.release_at_ms,
            received_ms: m.msg.received_ms,
        }
    }
}

/// The result of a store write, applied by the session loop when it completes.
enum Completion {
    /// Send this answer.
    Reply(Transmission),
    /// An ACK's delete finished.
    Acked {
        queue: QueueRef,
        /// Position of the deleted message.
        seq: u64,
        /// Whether the ACK was answered, and the next message delivered, when it was accepted
        /// (subscriptions): the answer here is not sent, and the message in flight now is
        /// another one.
        early: bool,
        reply: Transmission,
    },
    /// A DEL finished.
    Deleted {
        queue: QueueRef,
        reply: Transmission,
    },
}

type WriteFuture = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// One session's state, owned by its loop ([`run_session`]).
struct Session {
    shared: Arc<Shared>,
    id: u64,
    /// The Noise handshake hash, which every signature in this session covers.
    hash: [u8; 32],
    /// To the writer task (bounded by [`OUT_QUEUE`]).
    out: mpsc::Sender<Box<Outgoing>>,
    /// END and wake-ups from the router.
    inbox: Arc<Inbox>,
    /// Subscribed queues (at most `limits.subscriptions_per_session`).
    subs: HashMap<QueueRef, Sub>,
    /// Per queue, the message delivered (SUB or GET) and not yet acknowledged.
    in_flight: HashMap<QueueRef, InFlight>,
    /// Per queue, the positions of messages this session saw acknowledged whose deletions
    /// have not committed yet: deliveries pass over exactly these (messages released later
    /// at lower positions are still found). At most one position per ACK write in flight
    /// ([`MAX_IN_FLIGHT`]).
    acked_pending: HashMap<QueueRef, Vec<u64>>,
    secured_senders: SecuredSenders,
    /// Store writes, FWDs and RFWDs in flight; at [`MAX_IN_FLIGHT`] the loop stops reading.
    writes: FuturesUnordered<WriteFuture>,
    /// Commands per second (`limits.commands_per_session_per_s`, burst 2×); DROP is exempt.
    commands: DefaultDirectRateLimiter,
    /// NEW per minute (`limits.new_per_session_per_min`).
    news: DefaultDirectRateLimiter,
    /// FWD per second (`limits.forwards_per_session_per_s`, burst 2×).
    forwards: DefaultDirectRateLimiter,
    /// How many queues are subscribed, for the writer (cover frames only while any are).
    subscribed: Arc<AtomicUsize>,
}

/// Runs one session until the client closes it, it breaks or the relay shuts down; then
/// finishes its in-flight writes and closes the connection.
pub(super) async fn run_session(shared: Arc<Shared>, framed: FramedConnection, id: u64) {
    let FramedConnection {
        connection,
        sender,
        mut receiver,
        handshake_hash,
    } = framed;
    receiver.set_record_timeout(Some(shared.config.limits.record_timeout));
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let (frames_tx, mut frames_rx) = mpsc::channel(IN_FRAMES);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(frames::read_frames(
        receiver,
        connection.clone(),
        frames_tx,
        shared.clone(),
    ));
    let writer = tokio::spawn(frames::write_frames(
        sender,
        out_rx,
        shared.clone(),
        subscribed.clone(),
    ));

    let limits = &shared.config.limits;
    let mut s = Session {
        id,
        hash: handshake_hash,
        out: out_tx,
        inbox: Arc::new(Inbox::new(id)),
        subs: HashMap::new(),
        in_flight: HashMap::new(),
        acked_pending: HashMap::new(),
        secured_senders: SecuredSenders::default(),
        writes: FuturesUnordered::new(),
        commands: RateLimiter::direct(per_second_burst_2x(limits.commands_per_session_per_s)),
        news: RateLimiter::direct(
            Quota::per_minute(nonzero(limits.new_per_session_per_min))
                .allow_burst(nonzero(limits.new_per_session_per_min)),
        ),
        forwards: RateLimiter::direct(per_second_burst_2x(limits.forwards_per_session_per_s)),
        subscribed,
        shared: shared.clone(),
    };

    let mut reading = true;
    // `limits.idle_timeout`: only frames count, not QUIC keep-alives.
    let idle_timeout = shared.config.limits.idle_timeout;
    let mut idle_at = tokio::time::Instant::now() + idle_timeout;
    // The command handlers' futures are boxed while they run: inline, their largest state
    // would be part of this task for the session's whole life (≈ 6 KiB of every idle
    // session, see `docs/benchmarks.md`); boxed, it costs one allocation per frame.
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            frame = frames_rx.recv(), if reading && s.writes.len() < MAX_IN_FLIGHT => match frame {
                Some(transmissions) => {
                    idle_at = tokio::time::Instant::now() + idle_timeout;
                    Box::pin(async {
                        for t in transmissions {
                            s.handle(t).await;
                        }
                    })
                    .await;
                }
                None => reading = false,
            },
            Some(done) = s.writes.next() => Box::pin(s.complete(done)).await,
            () = s.inbox.notify.notified() => Box::pin(s.drain_inbox()).await,
            () = tokio::time::sleep_until(idle_at), if reading => {
                if s.subs.is_empty() && s.writes.is_empty() {
                    shared.limited("idle_session");
                    break;
                }
                // A subscriber may be quiet: it waits for messages.
                idle_at = tokio::time::Instant::now() + idle_timeout;
            }
        }
        if !reading && s.writes.is_empty() {
            break;
        }
    }
    // Finish in-flight store writes so that what was written is answered (or at least
    // durable) before the session goes away.
    while let Some(done) = s.writes.next().await {
        Box::pin(s.complete(done)).await;
    }
    for q in s.subs.keys() {
        shared.router.unsubscribe(q, id);
    }
    drop(s);
    reader.abort();
    // The writer flushes what is queued, then finishes the stream.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    connection.close(transport::CLOSE_NORMAL.into(), b"");
}

/// Entity id that a command requires, by kind.
enum Needs {
    Nothing,
    Recipient,
    Sender,
}

fn needs(cmd: &Command) -> Needs {
    match cmd {
        Command::New { .. }
        | Command::Ping
        | Command::Drop
        | Command::Fwd { .. }
        | Command::RFwd { .. }
        | Command::Pace { .. } => Needs::Nothing,
        Command::SKey { .. } | Command::Send { .. } => Needs::Sender,
        _ => Needs::Recipient,
    }
}

impl Session {
    /// Answers `corr` on `entity` with `resp` (an error answer is counted).
    async fn reply(&mut self, corr: CorrId, entity: Option<EntityId>, resp: Response) {
        let t = self.shared.answer(corr, entity, &resp);
        self.send_out(t, false).await;
    }

    /// Queues the answer `t` for the writer; a `lazy` one may wait for a frame that goes out
    /// anyway (`frames::LAZY_ANSWER_DELAY`). On a paced session every answer waits for the
    /// next frame.
    async fn send_out(&mut self, t: Transmission, lazy: bool) {
        let _ = self.out.send(Box::new(Outgoing::Answer { t, lazy })).await;
    }

    /// Queues a pushed MSG or END for `entity` (correlation id zero): never held, paced or not.
    async fn push(&mut self, entity: EntityId, resp: &Response) {
        let t = Transmission::response(CorrId::NONE, Some(entity), resp);
        let _ = self.out.send(Box::new(Outgoing::Push(t))).await;
    }

    /// PACE (`docs/protocol.md` § 9.2): the writer paces the session with mean gap `gap_ms`,
    /// or stops pacing for 0. A refused PACE leaves the session unpaced (a paced one stops
    /// being paced) and its error is sent at once.
    async fn pace(&mut self, corr: CorrId, gap_ms: u32) {
        let delivery = &self.shared.config.delivery;
        let refusal = if gap_ms == 0 {
            None
        } else if !delivery.pacing {
            Some(ErrorCode::Prohibited)
        } else if Duration::from_millis(gap_ms.into()) < delivery.min_pace_gap {
            self.shared.limited("min_pace_gap");
            Some(ErrorCode::Limited)
        } else {
            None
        };
        let gap_ms = if refusal.is_some() { 0 } else { gap_ms };
        // Before the answer, so that it is held under the new pace or sent at once without.
        let _ = self.out.send(Box::new(Outgoing::Pace { gap_ms })).await;
        let resp = refusal.map_or(Response::Ok, Response::Err);
        self.reply(corr, None, resp).await;
    }

    /// One transmission: decoded, counted, rate-limited, checked for the entity id its
    /// command needs, and handed to its handler.
    async fn handle(&mut self, t: Transmission) {
        let corr = t.corr_id;
        let entity = t.entity;
        let decoded = t.decode_command();
        if let Ok(c) = &decoded {
            self.shared
                .metrics
                .commands
                .with_label_values(&[c.name()])
                .inc();
        }
        // Malformed commands are charged too: answering them costs as much as a PING.
        if !matches!(decoded, Ok(Command::Drop)) && self.commands.check().is_err() {
            self.shared.limited("commands_per_session");
            return self
                .reply(corr, entity, Response::Err(ErrorCode::Limited))
                .await;
        }
        let cmd = match decoded {
            Ok(c) => c,
            Err(DecodeError::TooLong { .. }) => {
                return self
                    .reply(corr, entity, Response::Err(ErrorCode::Large))
                    .await;
            }
            Err(_) => {
                return self
                    .reply(corr, entity, Response::Err(ErrorCode::Syntax))
                    .await;
            }
        };
        if self.shared.config.log.sensitive {
            // Only with `log.sensitive`: ids identify queues (see docs/operator.md).
            tracing::debug!(
                session = self.id,
                command = cmd.name(),
                entity = %entity.map(|e| e.to_string()).unwrap_or_default(),
                "command"
            );
        }
        if matches!(cmd, Command::Drop) {
            self.shared.metrics.cover_received.inc();
            return;
        }
        // § 2: the all-zero correlation id marks transmissions the relay sends on its own,
        // so an answer to it could not be told from a push — and the answers of NEW, FWD and
        // RFWD (no entity) would be taken for internal writes and never sent, leaving e.g.
        // a queue nobody holds the ids of. Refused before any work.
        if corr == CorrId::NONE {
            return self
                .reply(corr, entity, Response::Err(ErrorCode::Syntax))
                .await;
        }
        match (needs(&cmd), entity) {
            (Needs::Nothing, Some(_)) | (Needs::Recipient | Needs::Sender, None) => {
                return self
                    .reply(corr, entity, Response::Err(ErrorCode::Syntax))
                    .await;
            }
            _ => {}
        }
        match (cmd, entity) {
            (Command::Ping, _) => self.reply(corr, None, Response::Pong).await,
            (Command::Pace { gap_ms }, _) => self.pace(corr, gap_ms).await,
            (
                Command::New {
                    recipient_auth_key,
                    recipient_dh_key,
                    password,
                },
                _,
            ) => {
                self.new_queue(corr, recipient_auth_key, recipient_dh_key, password)
                    .await;
            }
            (Command::Fwd { relay, sealed }, _) => {
                // Limited before any work on the destination, so that a session cannot make
                // this relay dial out faster than the limit.
                if self.forwards.check().is_err() {
                    self.shared.limited("forwards_per_session");
                    return self
                        .reply(corr, None, Response::Err(ErrorCode::Limited))
                        .await;
                }
                self.forward(corr, relay, sealed);
            }
            (Command::RFwd { sealed }, _) => self.forwarded(corr, sealed),
            (Command::Send { flags, body }, Some(e)) => self.send(&t, e, flags, body).await,
            (Command::SKey { sender_key }, Some(e)) => self.sender_key(&t, e, sender_key).await,
            (cmd, Some(e)) => self.recipient_command(&t, e, cmd).await,
            (_, None) => {
                self.reply(corr, None, Response::Err(ErrorCode::Syntax))
                    .await
            }
        }
    }

    async fn send(&mut self, t: &Transmission, e: EntityId, flags: u8, body: Vec<u8>) {
        let corr = t.corr_id;
        let prepared = match prepare_send(
            &self.shared,
            t,
            e,
            flags,
            body,
            &self.hash,
            Some(&mut self.secured_senders),
        ) {
            Ok(p) => p,
            Err(resp) => return self.reply(corr, Some(e), resp).await,
        };
        let shared = self.shared.clone();
        self.writes.push(Box::pin(async move {
            let resp = store_send(&shared, prepared).await;
            Completion::Reply(shared.answer(corr, Some(e), &resp))
        }));
    }

    async fn sender_key(&mut self, t: &Transmission, e: EntityId, key: AuthPublicKey) {
        match prepare_sender_key(&self.shared, t, e, key, &self.hash) {
            Ok(queue) => self.push_simple_write(t.corr_id, e, WriteOp::SetSenderKey { queue, key }),
            Err(resp) => self.reply(t.corr_id, Some(e), resp).await,
        }
    }

    /// Runs `op` (KEY, SKEY, OFF) as a write future answered with [`simple_write`]'s answer.
    fn push_simple_write(&mut self, corr: CorrId, e: EntityId, op: WriteOp) {
        let shared = self.shared.clone();
        self.writes.push(Box::pin(async move {
            let resp = simple_write(&shared.store, op).await;
            Completion::Reply(shared.answer(corr, Some(e), &resp))
        }));
    }

    async fn complete(&mut self, done: Completion) {
        match done {
            Completion::Reply(t) => {
                if t.corr_id == CorrId::NONE && t.entity.is_none() {
                    return; // internal write (touch)
                }
                self.send_out(t, false).await;
            }
            Completion::Acked {
                queue,
                seq,
                early,
                reply,
            } => {
                if !early {
                    self.in_flight.remove(&queue);
                }
                // The deletion is decided either way: committed (the store no longer has the
                // message) or failed (the message stays and may be delivered again).
                self.forget_pending_delete(queue, seq);
                match reply.decode_response() {
                    Ok(Response::Ok) => self.shared.metrics.messages_acked.inc(),
                    Ok(Response::Err(code)) => {
                        if early {
                            tracing::warn!(
                                "deleting an acknowledged message failed; it will be delivered again"
                            );
                        }
                        self.shared.count_error(code);
                    }
                    _ => {}
                }
                if !early {
                    // Early ACKs were answered when accepted.
                    self.send_out(reply, false).await;
                }
                self.deliver(queue).await;
            }
            Completion::Deleted { queue, reply } => {
                match reply.decode_response() {
                    Ok(Response::Ok) => {
                        self.shared.router.end(&queue, self.id);
                        self.subs.remove(&queue);
                        self.subscribed.store(self.subs.len(), Ordering::Relaxed);
                        self.in_flight.remove(&queue);
                        self.acked_pending.remove(&queue);
                    }
                    Ok(Response::Err(code)) => self.shared.count_error(code),
                    _ => {}
                }
                self.send_out(reply, false).await;
            }
        }
    }

    async fn drain_inbox(&mut self) {
        let ended: Vec<QueueRef> = lock(&self.inbox.end).drain().collect();
        for q in ended {
            if let Some(sub) = self.subs.remove(&q) {
                self.in_flight.remove(&q);
                self.subscribed.store(self.subs.len(), Ordering::Relaxed);
                self.push(sub.recipient_id.into(), &Response::End).await;
            }
        }
        let woken: Vec<QueueRef> = lock(&self.inbox.wake).drain().collect();
        for q in woken {
            self.deliver(q).await;
        }
    }
}

/// FWD and RFWD (`docs/protocol.md` § 10a). Both run as write futures, so a slow destination
/// or a replay-memory write never blocks the session loop, and both count against
/// [`MAX_IN_FLIGHT`].
impl Session {
    /// FWD: passes the sealed blob to the destination (as RFWD) and its answer back. This
    /// relay cannot read the blob and neither logs nor stores it.
    fn forward(&mut self, corr: CorrId, relay: RelayAddress, sealed: Vec<u8>) {
        let shared = self.shared.clone();
        self.writes.push(Box::pin(async move {
            let resp = match shared.forwarder.forward(&relay, sealed).await {
                Ok(sealed) => Response::FwdAnswer { sealed },
                Err(code) => Response::Err(code),
            };
            Completion::Reply(shared.answer(corr, None, &resp))
        }));
    }

    /// RFWD: opens the sealed request, checks its expiry and the replay memory, executes
    /// the SEND/SKEY inside locally and seals the answer. An RFWD is never forwarded
    /// further, so chains and loops cannot arise.
    fn forwarded(&mut self, corr: CorrId, sealed: Vec<u8>) {
        let shared = self.shared.clone();
        let session = self.id;
        self.writes.push(Box::pin(async move {
            let resp = forward::execute_forwarded(&shared, session, &sealed).await;
            Completion::Reply(shared.answer(corr, None, &resp))
        }));
    }
}
