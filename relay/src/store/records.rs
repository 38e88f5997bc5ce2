//! What is on disk, byte for byte: the tables (see the store's # Layout), the stored types
//! (queue records, messages and their sealed bodies) and their codecs, and the associated
//! data that binds each sealed value to its table and key.
//!
//! What it owns: formats and versions — a queue record (version 1), a message record
//! (version 2: release time ‖ sealed header ‖ sealed body; version 1, written by earlier
//! relays, still read). What it does not: the keys (`keys`), or when records are written
//! (`ops`, `expiry`, `replay`); the replay memory's tables live with it in `replay`.

use redb::TableDefinition;
use sotto_protocol::aead::TAG_LEN;
use sotto_protocol::ids::ID_LEN;
use sotto_protocol::keys::KEY_LEN;
use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{AuthPublicKey, DhPublicKey, MessageId, RecipientId, SenderId};
use zeroize::Zeroizing;

use super::StoreError;
use super::keys::{Keys, NONCE_LEN};

/// Reference to a queue on disk: the keyed hash of its recipient id.
pub type QueueRef = [u8; 32];

pub(super) const QUEUES: TableDefinition<'_, QueueRef, &[u8]> = TableDefinition::new("queues");
pub(super) const SENDERS: TableDefinition<'_, [u8; 32], QueueRef> = TableDefinition::new("senders");
pub(super) const MESSAGES: TableDefinition<'_, (QueueRef, u64), &[u8]> =
    TableDefinition::new("messages");
pub(super) const PENDING: TableDefinition<'_, (u64, QueueRef, u64), ()> =
    TableDefinition::new("pending");
pub(super) const BY_TIME: TableDefinition<'_, (u64, QueueRef, u64), ()> =
    TableDefinition::new("by_time");
pub(super) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Queues blocked by the operator (`sotto-relay block`): the queue's reference (a keyed hash,
/// never an id) → when it was blocked, Unix seconds. Created by the first block; a store
/// without it has no blocked queue.
pub(super) const BLOCKED: TableDefinition<'_, QueueRef, u64> = TableDefinition::new("blocked");

const CHECK_PLAINTEXT: &[u8] = b"sotto relay store v1";
const RECORD_VERSION: u8 = 1;

/// Whether a queue accepts messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStatus {
    /// Accepting messages.
    Active,
    /// Disabled by its recipient (OFF).
    Off,
    /// Blocked by the relay's operator: every command on it is answered `BLOCKED`, and it
    /// holds no messages.
    Blocked,
}

/// A queue as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// Recipient id.
    pub recipient_id: RecipientId,
    /// Sender id.
    pub sender_id: SenderId,
    /// Verifies the recipient's commands.
    pub recipient_key: AuthPublicKey,
    /// Verifies the sender's SENDs once secured.
    pub sender_key: Option<AuthPublicKey>,
    /// The relay's per-queue DH public key (returned in IDS).
    pub relay_dh_public: DhPublicKey,
    /// Body sealing key shared with the recipient (the DH secret is not kept).
    pub seal_key: BodySealKey,
    /// Accepting or not.
    pub status: QueueStatus,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Last recipient or sender activity, Unix seconds (coarse: updated at most hourly).
    pub last_active: u64,
}

impl std::fmt::Debug for QueueRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueRecord")
            .field("secured", &self.sender_key.is_some())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A message as given to [`WriteOp::Append`](super::WriteOp::Append).
#[derive(Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Message id (random, unique per queue).
    pub msg_id: MessageId,
    /// Rounded timestamp shown to the recipient, Unix seconds.
    pub timestamp: u64,
    /// Exact receipt time, Unix milliseconds (for expiry and delay metrics; never sent).
    pub received_ms: u64,
    /// When the message becomes visible, Unix milliseconds.
    pub release_at_ms: u64,
    /// SEND flags.
    pub flags: u8,
    /// Body as it will be delivered: sealed for the recipient.
    pub body: SealedBody,
}

impl std::fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewMessage({} bytes)", self.body.len())
    }
}

/// A message body sealed for its recipient (`sotto_protocol::seal`, nonce = the message
/// id), as the relay stores and delivers it. Only [`SealedBody::seal`] makes one, so no body
/// reaches the store in the clear. The store keeps these bytes as they are — ciphertext
/// under the queue's seal key, which is itself stored only under the storage key — and
/// encrypts the rest of the record; delivery sends them without another pass over 16 KiB.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBody(Vec<u8>);

impl SealedBody {
    /// Seals `body` for the recipient of the queue whose seal key is `key`, as message `id`.
    pub fn seal(key: &BodySealKey, id: &MessageId, body: &[u8]) -> Self {
        Self(key.seal(id, body))
    }

    /// The sealed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The sealed bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Length of the sealed bytes (body + 16).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes (never, for a sealed body).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SealedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedBody({} bytes)", self.0.len())
    }
}

/// A stored message with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Sequence number within the store (orders messages of a queue).
    pub seq: u64,
    /// The message.
    pub msg: NewMessage,
}

/// The `meta` table's "check" record: a constant sealed under the storage key, written when
/// the store is created, so that a wrong key is told from damage before anything is read.
pub(super) fn seal_check(keys: &Keys) -> Vec<u8> {
    keys.seal(b"meta check", CHECK_PLAINTEXT)
}

/// Whether `sealed` is the check record as [`seal_check`] writes it with these keys.
pub(super) fn check_opens(keys: &Keys, sealed: &[u8]) -> bool {
    matches!(keys.open(b"meta check", sealed), Ok(p) if p.as_slice() == CHECK_PLAINTEXT)
}

pub(super) fn queue_ad(queue: &QueueRef) -> Vec<u8> {
    let mut ad = b"queues".to_vec();
    ad.extend_from_slice(queue);
    ad
}

pub(super) fn message_ad(queue: &QueueRef, seq: u64, release_at: u64) -> Vec<u8> {
    let mut ad = b"messages".to_vec();
    ad.extend_from_slice(queue);
    ad.extend_from_slice(&seq.to_be_bytes());
    ad.extend_from_slice(&release_at.to_be_bytes());
    ad
}

/// Encoding of a [`QueueRecord`] (before encryption); decoding lives in
/// [`decode_queue_record`] and is fuzzed.
pub fn encode_queue_record(q: &QueueRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    v.push(RECORD_VERSION);
    v.extend_from_slice(q.recipient_id.as_bytes());
    v.extend_from_slice(q.sender_id.as_bytes());
    v.extend_from_slice(&q.recipient_key.to_bytes());
    match &q.sender_key {
        Some(k) => {
            v.push(1);
            v.extend_from_slice(&k.to_bytes());
        }
        None => v.push(0),
    }
    v.extend_from_slice(q.relay_dh_public.as_bytes());
    v.extend_from_slice(q.seal_key.as_bytes());
    v.push(match q.status {
        QueueStatus::Active => 0,
        QueueStatus::Off => 1,
        QueueStatus::Blocked => 2,
    });
    v.extend_from_slice(&q.created_at.to_be_bytes());
    v.extend_from_slice(&q.last_active.to_be_bytes());
    v
}

/// Decodes a queue record.
///
/// # Errors
/// [`StoreError::Corrupt`] on any malformed input.
pub fn decode_queue_record(b: &[u8]) -> Result<QueueRecord, StoreError> {
    use sotto_protocol::codec::Reader;
    let bad = |e: sotto_protocol::DecodeError| StoreError::Corrupt(format!("queue record: {e}"));
    let mut r = Reader::new(b);
    if r.u8().map_err(bad)? != RECORD_VERSION {
        return Err(StoreError::Corrupt("queue record: unknown version".into()));
    }
    let recipient_id = RecipientId(r.array::<ID_LEN>().map_err(bad)?);
    let sender_id = SenderId(r.array::<ID_LEN>().map_err(bad)?);
    let recipient_key_bytes = r.array().map_err(bad)?;
    let recipient_key = AuthPublicKey::from_bytes(&recipient_key_bytes).map_err(bad)?;
    let sender_key = match r.u8().map_err(bad)? {
        0 => {
            // The point decompression a sender key costs, so that a queue not secured yet
            // takes as long to look up as a secured one and as an id that names nothing
            // (which opens a dummy record with a sender key): AUTH timing, issue 22 L2.
            let again = AuthPublicKey::from_bytes(std::hint::black_box(&recipient_key_bytes));
            std::hint::black_box(again.is_ok());
            None
        }
        1 => Some(AuthPublicKey::from_bytes(&r.array().map_err(bad)?).map_err(bad)?),
        _ => {
            return Err(StoreError::Corrupt(
                "queue record: bad sender key flag".into(),
            ));
        }
    };
    let relay_dh_public = DhPublicKey(r.array().map_err(bad)?);
    let seal_key = BodySealKey::from_bytes(r.array().map_err(bad)?);
    let status = match r.u8().map_err(bad)? {
        0 => QueueStatus::Active,
        1 => QueueStatus::Off,
        2 => QueueStatus::Blocked,
        _ => return Err(StoreError::Corrupt("queue record: bad status".into())),
    };
    let created_at = r.u64().map_err(bad)?;
    let last_active = r.u64().map_err(bad)?;
    r.finish().map_err(bad)?;
    Ok(QueueRecord {
        recipient_id,
        sender_id,
        recipient_key,
        sender_key,
        relay_dh_public,
        seal_key,
        status,
        created_at,
        last_active,
    })
}

/// `(status, last_active)` of an encoded queue record, read from its tail without decoding
/// (and so without decompressing) its keys: what a SEND's write needs.
pub(super) fn queue_record_state(b: &[u8]) -> Result<(QueueStatus, u64), StoreError> {
    let (_, last_active) = queue_record_times(b)?;
    let status = match b.len().checked_sub(17).and_then(|at| b.get(at)) {
        Some(0) => QueueStatus::Active,
        Some(1) => QueueStatus::Off,
        Some(2) => QueueStatus::Blocked,
        _ => return Err(StoreError::Corrupt("queue record: bad status".into())),
    };
    Ok((status, last_active))
}

/// `(created_at, last_active)` of an encoded queue record: its last 16 bytes, once the
/// length is one [`encode_queue_record`] produces (with or without a sender key).
pub(super) fn queue_record_times(b: &[u8]) -> Result<(u64, u64), StoreError> {
    // version, 2 ids, recipient key, flag, [sender key], DH key, seal key, status, 2 times.
    const UNSECURED: usize = 1 + 2 * ID_LEN + KEY_LEN + 1 + 2 * KEY_LEN + 1 + 16;
    if b.len() != UNSECURED && b.len() != UNSECURED + KEY_LEN {
        return Err(StoreError::Corrupt("queue record: bad length".into()));
    }
    let tail = b
        .len()
        .checked_sub(16)
        .and_then(|at| b.get(at..))
        .ok_or_else(|| StoreError::Corrupt("queue record: too short".into()))?;
    let (c, l) = tail.split_at(8);
    let word = |x: &[u8]| <[u8; 8]>::try_from(x).map(u64::from_be_bytes);
    match (word(c), word(l)) {
        (Ok(c), Ok(l)) => Ok((c, l)),
        _ => Err(StoreError::Corrupt("queue record: too short".into())),
    }
}

/// Version byte of a message record's header (version 1 encrypted the whole message,
/// body included, under the storage key; see [`open_message`]).
const MESSAGE_VERSION: u8 = 2;

/// Length of a message header: version, message id, timestamp, receipt time, flags.
const MESSAGE_HEADER_LEN: usize = 1 + ID_LEN + 8 + 8 + 1;

/// Length of a message header as stored: nonce, encrypted header, tag.
const SEALED_HEADER_LEN: usize = NONCE_LEN + MESSAGE_HEADER_LEN + TAG_LEN;

/// The header of a message record: everything but the release time (stored beside it) and
/// the body (after it, sealed for the recipient). Encrypted under the storage key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Message id.
    pub msg_id: MessageId,
    /// Rounded timestamp shown to the recipient, Unix seconds.
    pub timestamp: u64,
    /// Exact receipt time, Unix milliseconds.
    pub received_ms: u64,
    /// SEND flags.
    pub flags: u8,
}

impl MessageHeader {
    /// The header of `m`.
    pub fn of(m: &NewMessage) -> Self {
        Self {
            msg_id: m.msg_id,
            timestamp: m.timestamp,
            received_ms: m.received_ms,
            flags: m.flags,
        }
    }

    /// Version byte ‖ message id ‖ timestamp ‖ receipt time ‖ flags.
    pub fn encode(&self) -> [u8; MESSAGE_HEADER_LEN] {
        let mut v = [0u8; MESSAGE_HEADER_LEN];
        v[0] = MESSAGE_VERSION;
        v[1..1 + ID_LEN].copy_from_slice(self.msg_id.as_bytes());
        v[1 + ID_LEN..9 + ID_LEN].copy_from_slice(&self.timestamp.to_be_bytes());
        v[9 + ID_LEN..17 + ID_LEN].copy_from_slice(&self.received_ms.to_be_bytes());
        v[17 + ID_LEN] = self.flags;
        v
    }

    /// Decodes exactly what [`MessageHeader::encode`] writes.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for another length or version.
    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != MESSAGE_HEADER_LEN || b.first() != Some(&MESSAGE_VERSION) {
            return Err(StoreError::Corrupt("message: bad header".into()));
        }
        decode_header_fields(&b[1..])
    }

    /// The message with this header, released at `release_at_ms`, carrying `body`.
    pub(super) fn into_message(self, release_at_ms: u64, body: SealedBody) -> NewMessage {
        NewMessage {
            msg_id: self.msg_id,
            timestamp: self.timestamp,
            received_ms: self.received_ms,
            release_at_ms,
            flags: self.flags,
            body,
        }
    }
}

impl std::fmt::Debug for MessageHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The message id links a delivery to a stored record: not for logs.
        f.debug_struct("MessageHeader")
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// Decodes the plaintext of a version 1 message record (as earlier relays wrote it: version
/// 1 ‖ message id ‖ timestamp ‖ receipt time ‖ flags ‖ body, all under the storage key).
///
/// # Errors
/// [`StoreError::Corrupt`] on another version, truncation, or a body over `MAX_BODY`.
pub fn decode_legacy_message(b: &[u8]) -> Result<(MessageHeader, &[u8]), StoreError> {
    if b.first() != Some(&1) {
        return Err(StoreError::Corrupt("message: unknown version".into()));
    }
    let header = decode_header_fields(&b[1..])?;
    let body = b.get(MESSAGE_HEADER_LEN..).unwrap_or_default();
    if body.len() > sotto_protocol::MAX_BODY {
        return Err(StoreError::Corrupt("message: body too large".into()));
    }
    Ok((header, body))
}

/// A message record's value: release time ‖ header sealed under the storage key (with the
/// record's position as associated data) ‖ sealed body.
pub(super) fn encode_message_value(
    keys: &Keys,
    queue: &QueueRef,
    seq: u64,
    m: &NewMessage,
) -> Vec<u8> {
    let header = keys.seal(
        &message_ad(queue, seq, m.release_at_ms),
        &MessageHeader::of(m).encode(),
    );
    let mut value = Vec::with_capacity(8 + header.len() + m.body.len());
    value.extend_from_slice(&m.release_at_ms.to_be_bytes());
    value.extend_from_slice(&header);
    value.extend_from_slice(m.body.as_bytes());
    value
}

/// What a stored message record holds.
pub(super) enum OpenedMessage {
    /// Version 2: the message, its body sealed for the recipient.
    Current(NewMessage),
    /// Version 1 (written by earlier relays): the body in the clear, to be sealed with the
    /// queue's seal key.
    Legacy {
        header: MessageHeader,
        release_at_ms: u64,
        body: Zeroizing<Vec<u8>>,
    },
}

impl OpenedMessage {
    pub(super) fn received_ms(&self) -> u64 {
        match self {
            Self::Current(m) => m.received_ms,
            Self::Legacy { header, .. } => header.received_ms,
        }
    }
}

/// Opens a message record's value at `(queue, seq)`: a version 2 header (and the sealed body
/// after it), or else a version 1 record.
///
/// # Errors
/// [`StoreError::Corrupt`] if neither authenticates or decodes.
pub(super) fn open_message(
    keys: &Keys,
    queue: &QueueRef,
    seq: u64,
    value: &[u8],
) -> Result<OpenedMessage, StoreError> {
    let (release_at_ms, rest) = split_release(value)?;
    let ad = message_ad(queue, seq, release_at_ms);
    if let Some((head, body)) = rest.split_at_checked(SEALED_HEADER_LEN)
        && let Ok(h) = keys.open(&ad, head)
        && h.first() == Some(&MESSAGE_VERSION)
    {
        let header = MessageHeader::decode(&h)?;
        if body.len() > sotto_protocol::MAX_BODY + TAG_LEN {
            return Err(StoreError::Corrupt("message: body too large".into()));
        }
        return Ok(OpenedMessage::Current(
            header.into_message(release_at_ms, SealedBody(body.to_vec())),
        ));
    }
    let plain = keys.open(&ad, rest)?;
    let (header, body) = decode_legacy_message(&plain)?;
    Ok(OpenedMessage::Legacy {
        header,
        release_at_ms,
        body: Zeroizing::new(body.to_vec()),
    })
}

/// Message id, timestamp, receipt time and flags, from the bytes after the version byte
/// (anything after them is left to the caller).
fn decode_header_fields(b: &[u8]) -> Result<MessageHeader, StoreError> {
    use sotto_protocol::codec::Reader;
    let bad = |e: sotto_protocol::DecodeError| StoreError::Corrupt(format!("message: {e}"));
    let mut r = Reader::new(b);
    Ok(MessageHeader {
        msg_id: MessageId(r.array().map_err(bad)?),
        timestamp: r.u64().map_err(bad)?,
        received_ms: r.u64().map_err(bad)?,
        flags: r.u8().map_err(bad)?,
    })
}

/// The release time (Unix ms) in front of a message record's value, and the rest.
pub(super) fn split_release(value: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    if value.len() < 8 {
        return Err(StoreError::Corrupt("message value too short".into()));
    }
    let (r, rest) = value.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(r);
    Ok((u64::from_be_bytes(b), rest))
}

#[cfg(test)]
mod tests {
    use rand::rngs::OsRng;
    use sotto_protocol::AuthSecretKey;

    use super::*;
    use crate::store::test_support::*;
    use crate::store::*;

    #[test]
    fn queue_record_times_are_the_last_two_fields() {
        let mut rec = record();
        rec.created_at = 7;
        rec.last_active = 9;
        assert_eq!(
            queue_record_times(&encode_queue_record(&rec)).unwrap(),
            (7, 9)
        );
        rec.sender_key = Some(AuthSecretKey::generate(&mut OsRng).public());
        assert_eq!(
            queue_record_times(&encode_queue_record(&rec)).unwrap(),
            (7, 9)
        );
        assert!(queue_record_times(&[0; 100]).is_err());
        assert_eq!(
            queue_record_state(&encode_queue_record(&rec)).unwrap(),
            (QueueStatus::Active, 9)
        );
        rec.status = QueueStatus::Off;
        rec.sender_key = None;
        assert_eq!(
            queue_record_state(&encode_queue_record(&rec)).unwrap(),
            (QueueStatus::Off, 9)
        );
    }

    #[test]
    fn record_codecs_round_trip_and_reject_garbage() {
        let rec = record();
        assert_eq!(
            decode_queue_record(&encode_queue_record(&rec)).unwrap(),
            rec
        );
        let enc = encode_queue_record(&rec);
        for n in 0..enc.len() {
            assert!(decode_queue_record(&enc[..n]).is_err());
        }
        let keys = Keys::new(&StorageKey::from_bytes([7; 32]));
        let q = [9u8; 32];
        let m = message(4, 1, 2);
        let value = encode_message_value(&keys, &q, 5, &m);
        assert_eq!(value.len(), 8 + SEALED_HEADER_LEN + m.body.len());
        match open_message(&keys, &q, 5, &value).unwrap() {
            OpenedMessage::Current(got) => assert_eq!(got, m),
            OpenedMessage::Legacy { .. } => panic!("read as version 1"),
        }
        // Bound to its position, and every truncation or flipped header byte is refused.
        assert!(open_message(&keys, &q, 6, &value).is_err());
        assert!(open_message(&keys, &[8; 32], 5, &value).is_err());
        for n in 0..8 + SEALED_HEADER_LEN {
            assert!(open_message(&keys, &q, 5, &value[..n]).is_err());
            let mut bad = value.clone();
            bad[n] ^= 1;
            assert!(open_message(&keys, &q, 5, &bad).is_err(), "byte {n}");
        }
        assert!(open_message(&keys, &q, 5, &[]).is_err());
        assert!(open_message(&keys, &q, 5, &[9; 100]).is_err());
    }

    /// A version 1 message record (the whole message under the storage key, as earlier
    /// relays wrote it).
    fn legacy_value(
        keys: &Keys,
        queue: &QueueRef,
        seq: u64,
        m: &NewMessage,
        body: &[u8],
    ) -> Vec<u8> {
        let mut plain = vec![1u8];
        plain.extend_from_slice(m.msg_id.as_bytes());
        plain.extend_from_slice(&m.timestamp.to_be_bytes());
        plain.extend_from_slice(&m.received_ms.to_be_bytes());
        plain.push(m.flags);
        plain.extend_from_slice(body);
        let mut value = m.release_at_ms.to_be_bytes().to_vec();
        value.extend_from_slice(&keys.seal(&message_ad(queue, seq, m.release_at_ms), &plain));
        value
    }

    /// Messages stored by an earlier relay (version 1 records) are still delivered: sealed
    /// with the queue's key when read, byte for byte what a version 2 record would give.
    #[tokio::test]
    async fn version_1_message_records_are_still_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let rec = record();
        let (q, _) = {
            store
                .write(WriteOp::CreateQueue(Box::new(rec.clone())))
                .await
                .unwrap();
            (store.queue_ref(&rec.recipient_id), ())
        };
        assert!(store.close(Duration::from_secs(10)).await);
        let keys = Keys::new(&StorageKey::from_bytes([7; 32]));
        let m = message(6, 1_000, 1_000);
        {
            let db = Database::create(dir.path().join("q.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(MESSAGES)
                .unwrap()
                .insert(
                    (q, 3u64),
                    legacy_value(&keys, &q, 3, &m, &[6; 100]).as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
        }
        match open_message(&keys, &q, 3, &legacy_value(&keys, &q, 3, &m, &[6; 100])).unwrap() {
            OpenedMessage::Legacy { header, body, .. } => {
                assert_eq!(body.as_slice(), &[6; 100]);
                assert_eq!(header.received_ms, 1_000);
            }
            OpenedMessage::Current(_) => panic!("read as version 2"),
        }
        let store = open(dir.path());
        let got = store.first_visible(&q, 2_000).unwrap().unwrap();
        assert_eq!(got.seq, 3);
        assert_eq!(
            got.msg, m,
            "sealed at read with the queue's key, as version 2 would"
        );
        assert!(store.close(Duration::from_secs(10)).await);
    }
}
