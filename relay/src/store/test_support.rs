//! Helpers shared by the store's unit tests: sample records and messages, stores opened in a
//! temporary directory, and a look at the file as a crash would leave it.

use std::path::Path;
use std::time::Duration;

use rand::rngs::OsRng;
use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{AuthSecretKey, DhSecretKey, MessageId, RecipientId, SenderId};

use super::*;

pub(super) fn record() -> QueueRecord {
    let dh = DhSecretKey::generate(&mut OsRng);
    QueueRecord {
        recipient_id: RecipientId::random(&mut OsRng),
        sender_id: SenderId::random(&mut OsRng),
        recipient_key: AuthSecretKey::generate(&mut OsRng).public(),
        sender_key: None,
        relay_dh_public: dh.public(),
        seal_key: BodySealKey::from_bytes([3; 32]),
        status: QueueStatus::Active,
        created_at: 1000,
        last_active: 1000,
    }
}

pub(super) fn message(id: u8, received_ms: u64, release_at_ms: u64) -> NewMessage {
    NewMessage {
        msg_id: MessageId([id; 24]),
        timestamp: received_ms / 1000,
        received_ms,
        release_at_ms,
        flags: 0,
        body: sealed(id, &[id; 100]),
    }
}

/// `body` sealed as message `[id; 24]` with the seal key of [`record`].
pub(super) fn sealed(id: u8, body: &[u8]) -> SealedBody {
    SealedBody::seal(
        &BodySealKey::from_bytes([3; 32]),
        &MessageId([id; 24]),
        body,
    )
}

pub(super) fn open(dir: &Path) -> Store {
    let key = StorageKey::from_bytes([7; 32]);
    let path = dir.join("q.redb");
    if !path.exists() {
        Store::create(&path, &key).unwrap();
    }
    Store::open(&path, &key, StoreOptions::default()).unwrap()
}

/// The writer's counts as published now.
pub(super) fn stats(store: &Store) -> CommitStats {
    *store.commit_stats().borrow()
}

pub(super) fn open_with(dir: &Path, opts: StoreOptions, bound: Duration) -> Store {
    let key = StorageKey::from_bytes([7; 32]);
    let path = dir.join("q.redb");
    if !path.exists() {
        Store::create(&path, &key).unwrap();
    }
    Store::open_with_bound(&path, &key, opts, bound).unwrap()
}

/// (queues, messages) in the database as a crash at this moment would leave it. The file
/// is copied while the writer is idle: the copy holds every page written, fsynced or not
/// (the page cache is what a reader sees), and redb recovers the copy to the commit its
/// header names, which only a durable commit writes.
pub(super) async fn after_a_crash(store: &Store) -> (u64, u64) {
    let image = store.path().with_extension("image");
    let _ = std::fs::remove_file(&image);
    std::fs::copy(store.path(), &image).unwrap();
    let copy = Store::open(
        &image,
        &StorageKey::from_bytes([7; 32]),
        StoreOptions::default(),
    )
    .unwrap();
    let counts = copy.counts().unwrap();
    assert!(copy.close(Duration::from_secs(10)).await);
    std::fs::remove_file(&image).unwrap();
    counts
}

/// A queue holding `n` messages; returns it with the deletions that ACK them.
pub(super) async fn queue_with_messages(store: &Store, n: u8) -> (QueueRef, Vec<WriteOp>) {
    let rec = record();
    store
        .write(WriteOp::CreateQueue(Box::new(rec.clone())))
        .await
        .unwrap();
    let q = store.queue_ref(&rec.recipient_id);
    let mut acks = Vec::new();
    for i in 0..n {
        let msg = message(i, 5_000_000, 5_000_000);
        let WriteOutcome::Appended { seq } = store
            .write(WriteOp::Append {
                queue: q,
                msg,
                quota: 100,
            })
            .await
            .unwrap()
        else {
            panic!("not appended");
        };
        acks.push(WriteOp::DeleteMessage {
            queue: q,
            seq,
            release_at_ms: 5_000_000,
            received_ms: 5_000_000,
        });
    }
    (q, acks)
}
