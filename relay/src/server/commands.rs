//! SEND and SKEY as both a session and a forwarded request (RFWD) run them: the checks —
//! queue lookup by sender id, signature over the given handshake hash, queue status — with
//! the same work whether or not the queue exists, the message to store, and the store
//! write; and how store outcomes become answers ([`simple_write`], [`store_error`]) for
//! every command.
//!
//! What it does not: anything tied to one connection (rate limits, subscriptions, write
//! futures: `session`), or opening sealed requests (`forward::destination`).

use std::collections::HashMap;

use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{
    AuthPublicKey, EntityId, ErrorCode, MessageId, Response, SenderId, Transmission,
};

use super::{Shared, lock, unix_ms};
use crate::scheduler::Pending;
use crate::store::{
    NewMessage, QueueRef, QueueStatus, SealedBody, Store, StoreError, WriteOp, WriteOutcome,
};

/// A SEND that passed its checks: the message to store and when it is released.
pub(super) struct PreparedSend {
    queue: QueueRef,
    msg: NewMessage,
    received_ms: u64,
    release_at: u64,
}

/// Checks a SEND — queue lookup by sender id, signature (over `hash`: the session's
/// handshake hash, or a forwarded request's), queue status — doing the same work whether or
/// not the queue exists, and builds the message to store. Shared by a session's SEND and a
/// forwarded one; `Err` is the answer to give.
pub(super) fn prepare_send(
    shared: &Shared,
    t: &Transmission,
    e: EntityId,
    flags: u8,
    body: Vec<u8>,
    hash: &[u8; 32],
    known: Option<&mut SecuredSenders>,
) -> Result<PreparedSend, Response> {
    let sid = SenderId::from(e);
    if let Some((queue, key, seal_key)) = known.as_deref().and_then(|k| k.get(&sid)) {
        // A secured queue this session has sent to: its sender key never changes, and the
        // store write checks that the queue still exists and is active.
        return if t.verify(key, hash) {
            Ok(new_send(shared, *queue, seal_key, flags, &body))
        } else {
            Err(Response::Err(ErrorCode::Auth))
        };
    }
    let found = match shared.store.queue_by_sender(&sid) {
        Ok(f) => f,
        Err(err) => {
            tracing::error!(error = %err, "store read failed");
            return Err(Response::Err(ErrorCode::Internal));
        }
    };
    let authorised = match &found {
        Some((_, rec)) => match rec.sender_key {
            Some(k) => t.verify(&k, hash),
            // Unsecured queue: unsigned SEND only.
            None => t.signature.is_none() || t.verify(&shared.dummy_key, hash),
        },
        None => {
            let _ = t.verify(&shared.dummy_key, hash);
            false
        }
    };
    let Some((queue, rec)) = found.filter(|_| authorised) else {
        return Err(Response::Err(ErrorCode::Auth));
    };
    match rec.status {
        QueueStatus::Active => {}
        QueueStatus::Off => return Err(Response::Err(ErrorCode::Prohibited)),
        QueueStatus::Blocked => return Err(Response::Err(ErrorCode::Blocked)),
    }
    let prepared = new_send(shared, queue, &rec.seal_key, flags, &body);
    if let (Some(known), Some(key)) = (known, rec.sender_key) {
        known.insert(sid, queue, key, rec.seal_key);
    }
    Ok(prepared)
}

/// The message a checked SEND stores — its body sealed for the recipient now, so that
/// delivery sends the stored bytes as they are — with its receipt time and drawn release
/// time.
fn new_send(
    shared: &Shared,
    queue: QueueRef,
    seal_key: &BodySealKey,
    flags: u8,
    body: &[u8],
) -> PreparedSend {
    let now = unix_ms();
    let release_at = lock(&shared.sampler).release_at(now);
    let gran = shared
        .config
        .delivery
        .timestamp_granularity
        .as_secs()
        .max(1);
    let msg_id = MessageId::random(&mut rand::rngs::OsRng);
    let msg = NewMessage {
        msg_id,
        timestamp: (now / 1000) / gran * gran,
        received_ms: now,
        release_at_ms: release_at,
        flags,
        body: SealedBody::seal(seal_key, &msg_id, body),
    };
    PreparedSend {
        queue,
        msg,
        received_ms: now,
        release_at,
    }
}

/// Secured queues a session has sent to, by sender id, with the sender key that secures
/// them, so that its next SENDs skip the store lookup (two table reads, a record decryption
/// and two Ed25519 point decompressions). Sound because a queue's sender key never changes
/// once set, and the store write itself refuses a SEND to a queue deleted or turned off
/// since. At most [`SECURED_SENDERS`] entries (≈ 250 bytes each, ≈ 16 KiB), allocated on a
/// session's first SEND; when full it starts again empty.
#[derive(Default)]
pub(super) struct SecuredSenders(HashMap<SenderId, (QueueRef, AuthPublicKey, BodySealKey)>);

/// Bound of [`SecuredSenders`].
const SECURED_SENDERS: usize = 64;

impl SecuredSenders {
    fn get(&self, id: &SenderId) -> Option<&(QueueRef, AuthPublicKey, BodySealKey)> {
        self.0.get(id)
    }

    fn insert(&mut self, id: SenderId, queue: QueueRef, key: AuthPublicKey, seal: BodySealKey) {
        if self.0.len() >= SECURED_SENDERS && !self.0.contains_key(&id) {
            self.0 = HashMap::new();
        }
        self.0.insert(id, (queue, key, seal));
    }
}

/// Stores a checked SEND (one durable write) and hands it to the scheduler; the answer
/// for the sender.
pub(super) async fn store_send(shared: &Shared, p: PreparedSend) -> Response {
    let PreparedSend {
        queue,
        msg,
        received_ms,
        release_at,
    } = p;
    let op = WriteOp::Append {
        queue,
        msg,
        quota: shared.config.queues.quota,
    };
    match shared.store.write(op).await {
        Ok(WriteOutcome::Appended { .. }) => {
            shared.metrics.messages_sent.inc();
            // The scheduler wakes the subscriber at release time; if its queue is full the
            // message is still stored and visible after release (the recipient sees it on
            // its next SUB/GET/ACK).
            let _ = shared
                .scheduler
                .send(Pending {
                    item: queue,
                    inserted_at: received_ms,
                    release_at,
                })
                .await;
            Response::Ok
        }
        Ok(WriteOutcome::QuotaExceeded) => Response::Err(ErrorCode::Quota),
        Ok(WriteOutcome::NoQueue) => Response::Err(ErrorCode::Auth),
        Ok(WriteOutcome::Disabled) => Response::Err(ErrorCode::Prohibited),
        Ok(WriteOutcome::QueueBlocked) => Response::Err(ErrorCode::Blocked),
        Ok(_) => Response::Err(ErrorCode::Internal),
        Err(e) => store_error(&e),
    }
}

/// Checks an SKEY — queue lookup by sender id, a signature by the key it installs (proof of
/// possession, over `hash`: the session's handshake hash or a forwarded request's), no other
/// sender key already set, queue active — and returns the queue; `Err` is the answer to
/// give. Shared by a session's SKEY and a forwarded one.
pub(super) fn prepare_sender_key(
    shared: &Shared,
    t: &Transmission,
    e: EntityId,
    key: AuthPublicKey,
    hash: &[u8; 32],
) -> Result<QueueRef, Response> {
    let found = match shared.store.queue_by_sender(&SenderId::from(e)) {
        Ok(f) => f,
        Err(err) => {
            tracing::error!(error = %err, "store read failed");
            return Err(Response::Err(ErrorCode::Internal));
        }
    };
    let valid = t.verify(&key, hash);
    let Some((queue, rec)) = found.filter(|_| valid) else {
        return Err(Response::Err(ErrorCode::Auth));
    };
    if rec.status == QueueStatus::Blocked {
        return Err(Response::Err(ErrorCode::Blocked));
    }
    if rec.sender_key.is_some_and(|k| k != key) || rec.status != QueueStatus::Active {
        return Err(Response::Err(ErrorCode::Prohibited));
    }
    Ok(queue)
}

/// One store write whose answer is OK or an error code (KEY, SKEY, OFF).
pub(super) async fn simple_write(store: &Store, op: WriteOp) -> Response {
    match store.write(op).await {
        Ok(WriteOutcome::Done) => Response::Ok,
        Ok(WriteOutcome::NoQueue) => Response::Err(ErrorCode::Auth),
        Ok(WriteOutcome::KeyConflict | WriteOutcome::Disabled) => {
            Response::Err(ErrorCode::Prohibited)
        }
        Ok(WriteOutcome::QueueBlocked) => Response::Err(ErrorCode::Blocked),
        Ok(_) => Response::Err(ErrorCode::Internal),
        Err(e) => store_error(&e),
    }
}

/// The answer to a store write that failed; the failure is logged, except a refusal of a
/// full or read-only store (logged once, when the store changes state, not per command).
pub(super) fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::Full | StoreError::ReadOnly => Response::Err(ErrorCode::Store),
        StoreError::Io(_) => {
            tracing::warn!(error = %e, "store write refused");
            Response::Err(ErrorCode::Store)
        }
        _ => {
            tracing::warn!(error = %e, "store write refused");
            Response::Err(ErrorCode::Internal)
        }
    }
}
