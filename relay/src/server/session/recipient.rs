//! The queue's own commands in a session: NEW, then the recipient's KEY, OFF, DEL, SUB, GET
//! and ACK, and delivery on subscriptions (one message in flight per subscribed queue, the
//! next pushed when it is acknowledged or the router wakes the session).
//!
//! What it owns: the recipient's checks (signature against the queue's recipient key, or
//! the key read at SUB for an ACK on a subscription; a dummy key for unknown ids so AUTH
//! costs the same), the subscription and in-flight bookkeeping, and early ACK answers.
//! What it does not: the session loop and the completion of writes (`super`), the
//! subscription map across sessions (`router`), or the sender's commands (`commands`).

use std::sync::atomic::Ordering;

use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{
    AuthPublicKey, Command, CorrId, DhSecretKey, EntityId, ErrorCode, MessageId, RecipientId,
    Response, SenderId, Transmission,
};

use super::{Completion, InFlight, Session, Sub};
use crate::server::commands::store_error;
use crate::server::unix_ms;
use crate::store::{
    NewMessage, QueueRecord, QueueRef, QueueStatus, StoredMessage, WriteOp, WriteOutcome,
};

impl Session {
    /// NEW: creates a queue (limited per session, and by the relay's creation password if it
    /// has one) and answers its ids once the record is durable.
    pub(super) async fn new_queue(
        &mut self,
        corr: CorrId,
        recipient_key: AuthPublicKey,
        recipient_dh: sotto_protocol::DhPublicKey,
        password: Vec<u8>,
    ) {
        if self.news.check().is_err() {
            self.shared.limited("new_per_session");
            return self
                .reply(corr, None, Response::Err(ErrorCode::Limited))
                .await;
        }
        if !self.shared.config.create_password_matches(&password) {
            return self.reply(corr, None, Response::Err(ErrorCode::Auth)).await;
        }
        let mut rng = rand::rngs::OsRng;
        let relay_dh = DhSecretKey::generate(&mut rng);
        let Some(seal_key) = BodySealKey::derive(&relay_dh, &recipient_dh) else {
            return self
                .reply(corr, None, Response::Err(ErrorCode::Syntax))
                .await;
        };
        let now = unix_ms() / 1000;
        let rec = QueueRecord {
            recipient_id: RecipientId::random(&mut rng),
            sender_id: SenderId::random(&mut rng),
            recipient_key,
            sender_key: None,
            relay_dh_public: relay_dh.public(),
            seal_key,
            status: QueueStatus::Active,
            created_at: now,
            last_active: now,
        };
        let answer = Response::Ids {
            recipient_id: rec.recipient_id,
            sender_id: rec.sender_id,
            relay_dh_key: rec.relay_dh_public,
        };
        let shared = self.shared.clone();
        self.writes.push(Box::pin(async move {
            let resp = match shared
                .store
                .write(WriteOp::CreateQueue(Box::new(rec)))
                .await
            {
                Ok(WriteOutcome::Done) => answer,
                Ok(_) => Response::Err(ErrorCode::Internal),
                Err(e) => store_error(&e),
            };
            Completion::Reply(shared.answer(corr, None, &resp))
        }));
    }

    /// KEY, OFF, DEL, SUB, GET, ACK: the signature is checked against the queue's recipient
    /// key (a dummy one for unknown ids, so AUTH costs the same), then the command runs.
    pub(super) async fn recipient_command(&mut self, t: &Transmission, e: EntityId, cmd: Command) {
        let corr = t.corr_id;
        let rid = RecipientId::from(e);
        if let Command::Ack { msg_id } = cmd {
            // An ACK on a subscription this session holds: the SUB's signature already bound
            // the recipient key to this Noise session, so the ACK may come unsigned; a signed
            // one is checked with the key read at SUB. Only this session's own subscriptions
            // take this path, so its timing tells the session nothing it does not know.
            // Unsigned ACKs anywhere else fall through and are refused with AUTH.
            let queue = self.shared.store.queue_ref(&rid);
            if let Some(key) = self.subs.get(&queue).map(|s| s.recipient_key) {
                if t.signature.is_some() && !t.verify(&key, &self.hash) {
                    return self
                        .reply(corr, Some(e), Response::Err(ErrorCode::Auth))
                        .await;
                }
                return self.ack(corr, e, queue, msg_id).await;
            }
        }
        let found = match self.shared.store.queue(&rid) {
            Ok(f) => f,
            Err(err) => {
                tracing::error!(error = %err, "store read failed");
                return self
                    .reply(corr, Some(e), Response::Err(ErrorCode::Internal))
                    .await;
            }
        };
        let key = found
            .as_ref()
            .map_or(self.shared.dummy_key, |(_, r)| r.recipient_key);
        let valid = t.verify(&key, &self.hash);
        let Some((queue, rec)) = found.filter(|_| valid) else {
            return self
                .reply(corr, Some(e), Response::Err(ErrorCode::Auth))
                .await;
        };
        if rec.status == QueueStatus::Blocked {
            // Blocked by the operator: every command, once authenticated (§ 9.4).
            return self
                .reply(corr, Some(e), Response::Err(ErrorCode::Blocked))
                .await;
        }
        match cmd {
            Command::Key { sender_key } => {
                self.push_simple_write(
                    corr,
                    e,
                    WriteOp::SetSenderKey {
                        queue,
                        key: sender_key,
                    },
                );
            }
            Command::Off => self.push_simple_write(corr, e, WriteOp::Disable { queue }),
            Command::Del => {
                let store = self.shared.store.clone();
                self.writes.push(Box::pin(async move {
                    let resp = match store.write(WriteOp::DeleteQueue { queue }).await {
                        Ok(WriteOutcome::Done) => Response::Ok,
                        Ok(_) => Response::Err(ErrorCode::Auth),
                        Err(e) => store_error(&e),
                    };
                    Completion::Deleted {
                        queue,
                        reply: Transmission::response(corr, Some(e), &resp),
                    }
                }));
            }
            Command::Sub => {
                if !self.subs.contains_key(&queue)
                    && self.subs.len() >= self.shared.config.limits.subscriptions_per_session
                {
                    self.shared.limited("subscriptions_per_session");
                    return self
                        .reply(corr, Some(e), Response::Err(ErrorCode::Limited))
                        .await;
                }
                self.shared.router.subscribe(queue, &self.inbox);
                self.subs.insert(
                    queue,
                    Sub {
                        recipient_id: rid,
                        recipient_key: rec.recipient_key,
                    },
                );
                self.subscribed.store(self.subs.len(), Ordering::Relaxed);
                self.touch(queue, &rec);
                self.reply(corr, Some(e), Response::Ok).await;
                // The message in flight on this session (an earlier SUB's push, or a GET's
                // answer) is pushed again, itself: the client holds it and will ACK its id,
                // even if a message at a lower position was released meanwhile (§ 9.2).
                match self.still_in_flight(&queue) {
                    Ok(Some(m)) => self.send_msg(None, e, m.msg).await,
                    Ok(None) => self.deliver(queue).await,
                    Err(_) => {}
                }
            }
            Command::Get => {
                self.touch(queue, &rec);
                // The same message again until it is acknowledged (§ 9.2), whatever was
                // released since; otherwise the oldest released one.
                let next = match self.still_in_flight(&queue) {
                    Ok(None) => self.first_visible(&queue),
                    other => other,
                };
                match next {
                    Ok(Some(m)) => {
                        self.in_flight.insert(queue, InFlight::of(&m));
                        self.send_msg(Some(corr), e, m.msg).await;
                    }
                    Ok(None) => self.reply(corr, Some(e), Response::NoMsg).await,
                    Err(code) => self.reply(corr, Some(e), Response::Err(code)).await,
                }
            }
            Command::Ack { msg_id } => self.ack(corr, e, queue, msg_id).await,
            _ => {
                self.reply(corr, Some(e), Response::Err(ErrorCode::Syntax))
                    .await
            }
        }
    }

    /// ACK, signature checked: deletes the message in flight on `queue` if it has `msg_id`.
    async fn ack(&mut self, corr: CorrId, e: EntityId, queue: QueueRef, msg_id: MessageId) {
        let Some(f) = self
            .in_flight
            .get(&queue)
            .copied()
            .filter(|f| f.msg_id == msg_id)
        else {
            return self.reply(corr, Some(e), Response::NoMsg).await;
        };
        // On a subscription, the ACK is answered and the next message goes out as soon as the
        // ACK is accepted (both usually in one frame), while the deletion commits. Waiting
        // for the commit would put a store write (queued behind durable SEND batches) into
        // every message's path, and cost a frame of its own for the answer. The answer
        // promises what a committed deletion promises anyway: the message is gone from
        // delivery; the deletion is durable within the store's relaxed-commit bound, and if it
        // fails the message is delivered again (at-least-once, `docs/protocol.md` § 12).
        let early = self.subs.contains_key(&queue);
        if early {
            self.in_flight.remove(&queue);
            self.acked_pending.entry(queue).or_default().push(f.seq);
        }
        // Queued before the answer leaves, so that any write the client causes after seeing
        // the answer commits with this deletion or after it.
        let pending = self
            .shared
            .store
            .submit(WriteOp::DeleteMessage {
                queue,
                seq: f.seq,
                release_at_ms: f.release_at_ms,
                received_ms: f.received_ms,
            })
            .await;
        if early && pending.is_err() {
            // The store is shutting down: nothing was deleted, nothing is promised.
            self.forget_pending_delete(queue, f.seq);
        }
        let early = early && pending.is_ok();
        self.writes.push(Box::pin(async move {
            let outcome = match pending {
                Ok(outcome) => outcome.await,
                Err(e) => Err(e),
            };
            let resp = match outcome {
                Ok(WriteOutcome::Done) => Response::Ok,
                Ok(_) => Response::NoMsg,
                Err(e) => store_error(&e),
            };
            Completion::Acked {
                queue,
                seq: f.seq,
                early,
                reply: Transmission::response(corr, Some(e), &resp),
            }
        }));
        if early {
            // Nobody waits on this answer to act: it rides with the next MSG or any other
            // frame within LAZY_ANSWER_DELAY.
            self.send_out(Transmission::response(corr, Some(e), &Response::Ok), true)
                .await;
            self.deliver(queue).await;
        }
    }

    /// Records recipient activity for idle expiry, at most hourly.
    fn touch(&mut self, queue: QueueRef, rec: &QueueRecord) {
        let now = unix_ms() / 1000;
        if now.saturating_sub(rec.last_active) >= 3600 {
            let store = self.shared.store.clone();
            self.writes.push(Box::pin(async move {
                let _ = store.write(WriteOp::Touch { queue, now }).await;
                Completion::Reply(Transmission::response(CorrId::NONE, None, &Response::Drop))
            }));
        }
    }

    /// `seq` of `queue` no longer waits for its deletion to commit.
    pub(super) fn forget_pending_delete(&mut self, queue: QueueRef, seq: u64) {
        if let Some(v) = self.acked_pending.get_mut(&queue) {
            v.retain(|&s| s != seq);
            if v.is_empty() {
                self.acked_pending.remove(&queue);
            }
        }
    }

    /// The message in flight on `queue` in this session, if it is still stored; a message
    /// that is gone (acknowledged through another session, expired, its queue deleted) is no
    /// longer in flight.
    fn still_in_flight(&mut self, queue: &QueueRef) -> Result<Option<StoredMessage>, ErrorCode> {
        let Some(f) = self.in_flight.get(queue).copied() else {
            return Ok(None);
        };
        match self.shared.store.message_at(queue, f.seq) {
            Ok(Some(m)) if m.msg.msg_id == f.msg_id => Ok(Some(m)),
            Ok(_) => {
                self.in_flight.remove(queue);
                Ok(None)
            }
            Err(e) => {
                tracing::error!(error = %e, "store read failed");
                Err(ErrorCode::Internal)
            }
        }
    }

    /// The first visible message of `queue`, other than those this session saw
    /// acknowledged and whose deletions are still committing.
    fn first_visible(&self, queue: &QueueRef) -> Result<Option<StoredMessage>, ErrorCode> {
        let skip = self.acked_pending.get(queue).map_or(&[][..], Vec::as_slice);
        self.shared
            .store
            .first_visible_except(queue, skip, unix_ms())
            .map_err(|e| {
                tracing::error!(error = %e, "store read failed");
                ErrorCode::Internal
            })
    }

    /// Sends a stored message as MSG: its body was sealed for the recipient when it was
    /// stored. With `corr` it answers a GET (held on a paced session, like every answer);
    /// without, it is pushed on a subscription (never held).
    async fn send_msg(&mut self, corr: Option<CorrId>, e: EntityId, m: NewMessage) {
        let sealed_body = m.body.into_bytes();
        self.shared.metrics.messages_delivered.inc();
        let msg = Response::Msg {
            msg_id: m.msg_id,
            timestamp: m.timestamp,
            flags: m.flags,
            sealed_body,
        };
        match corr {
            Some(corr) => self.reply(corr, Some(e), msg).await,
            None => self.push(e, &msg).await,
        }
    }

    /// Pushes the next visible message of a subscribed queue, unless one is in flight.
    pub(super) async fn deliver(&mut self, queue: QueueRef) {
        if self.in_flight.contains_key(&queue) {
            return;
        }
        let Some(sub) = self.subs.get(&queue) else {
            return;
        };
        let rid = sub.recipient_id;
        match self.first_visible(&queue) {
            Ok(Some(m)) => {
                self.in_flight.insert(queue, InFlight::of(&m));
                self.send_msg(None, rid.into(), m.msg).await;
            }
            Ok(None) => {}
            Err(_) => {}
        }
    }
}
