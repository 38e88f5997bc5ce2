//! The profile's content: relays, pending invitations, contacts (queues, ratchet, ordering
//! and de-duplication state, messages not yet shown) and the outbox. Plain data with pure
//! operations; no I/O and no clock (times are passed in as Unix milliseconds).
//!
//! Bounds (per contact): [`MAX_SEEN`] digests of processed messages, [`MAX_REORDER`]
//! buffered out-of-order payloads (each at most one text, [`super::wire::MAX_TEXT_LEN`]
//! bytes), [`MAX_OUTBOX`] outbox items (each at most one padded Olm message, ~15 KiB): so a
//! contact holds at most ~2 MiB of buffered messages and ~2 MiB of outbox at the extremes;
//! normally all three are nearly empty.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use sotto_protocol::ids::ID_LEN;
use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{
    AuthSecretKey, DhPublicKey, DhSecretKey, RecipientId, RelayAddress, SenderId,
};
use vodozemac::olm::{Session, SessionPickle};

use super::secret::{Secret32, b64, b64_array};
use super::wire::Payload;
use crate::client::QueueCredentials;

/// Version of the persisted state layout.
pub const STATE_VERSION: u32 = 1;

/// Digests of recently processed messages kept per contact (relay redeliveries and sender
/// retries are recent, so a short window recognises them).
pub const MAX_SEEN: usize = 128;

/// Most out-of-order payloads buffered per contact. When a gap stays open until the buffer
/// is full (a message lost for good, e.g. expired on the relay), the gap is skipped and
/// reported.
pub const MAX_REORDER: usize = 256;

/// Most outbox items per contact; `send` refuses more until the relay takes some.
pub const MAX_OUTBOX: usize = 128;

/// Length of the message digests in [`Contact::seen`].
const DIGEST_LEN: usize = 16;

/// Why stored data could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the profile holds an unusable {0}")]
pub struct StateError(pub &'static str);

/// Everything a profile holds.
#[derive(Serialize, Deserialize)]
pub struct State {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Known relays (canonical address text); the first is the default receive relay.
    pub relays: Vec<String>,
    /// Invitations made and not yet used.
    pub invitations: Vec<PendingInvitation>,
    /// Contacts.
    pub contacts: Vec<Contact>,
    /// Network actions waiting to be done, in order.
    pub outbox: Vec<OutboxItem>,
    /// Next local id (contacts, invitations, outbox items, inbox entries).
    pub next_id: u64,
    /// Relay that SENDs and SKEYs go through by default (FWD; canonical address text).
    /// Absent in profiles written before it existed.
    #[serde(default)]
    pub send_through: Option<String>,
    /// SOCKS5 proxy (Tor) every relay connection goes through (`host:port`). Absent in
    /// profiles written before it existed.
    #[serde(default)]
    pub socks5: Option<String>,
    /// Create passwords of private relays (what NEW must carry there), by canonical address
    /// text. Secret, like everything in the (encrypted) profile. Absent in profiles written
    /// before it existed.
    #[serde(default)]
    pub create_passwords: std::collections::BTreeMap<String, String>,
    /// Our loop queues, at most one per relay (loop cover, `docs/client.md` § Traffic
    /// policy): made when `listen` first runs with loops on there, kept across runs. Absent
    /// in profiles written before they existed.
    #[serde(default)]
    pub loops: Vec<LoopQueue>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            relays: Vec::new(),
            invitations: Vec::new(),
            contacts: Vec::new(),
            outbox: Vec::new(),
            next_id: 1,
            send_through: None,
            socks5: None,
            create_passwords: std::collections::BTreeMap::new(),
            loops: Vec::new(),
        }
    }
}

/// A queue this profile sends loop messages to and receives them back on: loop cover on
/// one relay. Only we know its sender id, and it is secured with our own sender key, so
/// nobody else can write to it.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoopQueue {
    /// The queue (its envelope key seals the loop messages).
    pub queue: RecvQueue,
    /// Our sender key for it (KEY, signed SENDs).
    pub sender_key: Secret32,
    /// Whether the relay accepted KEY (until then the next `listen` sends it again).
    pub secured: bool,
}

/// A queue this profile receives on (one it created).
#[derive(Clone, Serialize, Deserialize)]
pub struct RecvQueue {
    /// Relay address text.
    pub relay: String,
    /// Recipient id.
    #[serde(with = "b64_array")]
    pub recipient_id: [u8; ID_LEN],
    /// Sender id (what the peer uses).
    #[serde(with = "b64_array")]
    pub sender_id: [u8; ID_LEN],
    /// Ed25519 seed signing recipient commands.
    pub recipient_key: Secret32,
    /// X25519 secret for body sealing.
    pub dh_key: Secret32,
    /// Relay's per-queue X25519 key.
    #[serde(with = "b64_array")]
    pub relay_dh_key: [u8; 32],
    /// Envelope key the peer seals with.
    pub envelope_key: Secret32,
}

impl RecvQueue {
    /// Stores fresh credentials with their envelope key.
    pub fn new(c: &QueueCredentials, envelope_key: Secret32) -> Self {
        Self {
            relay: c.relay.to_string(),
            recipient_id: c.recipient_id.0,
            sender_id: c.sender_id.0,
            recipient_key: Secret32::new(*c.recipient_key.to_bytes()),
            dh_key: Secret32::new(*c.dh_key.to_bytes()),
            relay_dh_key: c.relay_dh_key.0,
            envelope_key,
        }
    }

    /// The relay address.
    ///
    /// # Errors
    /// [`StateError`] if the stored text does not parse.
    pub fn relay_address(&self) -> Result<RelayAddress, StateError> {
        self.relay.parse().map_err(|_| StateError("relay address"))
    }

    /// Credentials for [`crate::RelayClient`].
    ///
    /// # Errors
    /// [`StateError`] for a stored address or key that is unusable.
    pub fn creds(&self) -> Result<QueueCredentials, StateError> {
        let dh_key = DhSecretKey::from_bytes(*self.dh_key.expose());
        let relay_dh_key = DhPublicKey(self.relay_dh_key);
        let seal_key =
            BodySealKey::derive(&dh_key, &relay_dh_key).ok_or(StateError("relay DH key"))?;
        Ok(QueueCredentials {
            relay: self.relay_address()?,
            recipient_id: RecipientId(self.recipient_id),
            sender_id: SenderId(self.sender_id),
            recipient_key: AuthSecretKey::from_bytes(self.recipient_key.expose()),
            dh_key,
            relay_dh_key,
            seal_key,
        })
    }
}

/// An invitation this profile made and nobody has used yet.
#[derive(Serialize, Deserialize)]
pub struct PendingInvitation {
    /// Local id.
    pub id: u64,
    /// Random id in the invitation.
    #[serde(with = "b64_array")]
    pub invitation_id: [u8; 16],
    /// Name the contact will get.
    pub name: String,
    /// The queue the invitation points at.
    pub queue: RecvQueue,
    /// Olm account made for this contact (vodozemac pickle, encrypted with the pickle key).
    pub account: String,
    /// The invitation text (to show it again).
    pub link: String,
}

/// Where this profile sends to a contact.
#[derive(Clone, Serialize, Deserialize)]
pub struct SendQueue {
    /// Queue address text.
    pub queue: String,
    /// Our Ed25519 sender key (SKEY, signed SENDs).
    pub sender_key: Secret32,
    /// Envelope key the queue's owner gave us.
    pub envelope_key: Secret32,
}

/// A message decrypted, in order, and not yet shown.
#[derive(Clone, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Local id.
    pub id: u64,
    /// The sender's sequence number.
    pub seq: u64,
    /// Receipt time at the relay (Unix seconds, rounded by the relay).
    pub timestamp: u64,
    /// The text.
    pub text: String,
}

/// A contact: a duplex connection made of queues in each direction and one Olm session.
#[derive(Serialize, Deserialize)]
pub struct Contact {
    /// Local id.
    pub id: u64,
    /// Local name (unique in the profile).
    pub name: String,
    /// The invitation this contact came from, on the inviter's side (its id is checked
    /// against the accepting side's HELLO).
    #[serde(default, with = "opt_id16")]
    pub invitation_id: Option<[u8; 16]>,
    /// Olm session (vodozemac pickle, encrypted with the pickle key).
    pub session: String,
    /// Queues the contact sends to us on; the last is the current one, earlier ones are
    /// being retired by a rotation.
    pub recv: Vec<RecvQueue>,
    /// Where we send; `None` on the inviter's side until the HELLO arrives.
    pub send: Option<SendQueue>,
    /// Whether both directions are known to work (HELLO seen on the inviter's side, READY
    /// on the accepting side).
    pub connected: bool,
    /// Sequence number of our next message.
    pub next_send_seq: u64,
    /// Sequence number of the next message to present.
    pub next_recv_seq: u64,
    /// Payloads that arrived ahead of a gap.
    pub reorder: BTreeMap<u64, Payload>,
    /// Digests (BLAKE3, truncated) of recently processed Olm messages.
    pub seen: VecDeque<String>,
    /// Texts in order, not yet shown.
    pub inbox: Vec<InboxEntry>,
    /// A rotation of our receive queue is under way.
    pub rotating: bool,
    /// Why the last attempt at this contact's outbox failed, if it did (cleared when one
    /// succeeds).
    #[serde(default)]
    pub last_failure: Option<Failure>,
}

/// A failed attempt at a contact's outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What went wrong, as the person was told.
    pub reason: String,
}

/// What became of a decrypted message.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Its sequence number was already processed or buffered.
    Duplicate,
    /// Accepted: these payloads are now in order (possibly none, if it was buffered).
    Accepted {
        /// Payloads to apply, in order, with their sequence numbers.
        ready: Vec<(u64, Payload)>,
        /// Messages given up on because the reorder buffer filled (never arrived).
        skipped: u64,
    },
}

impl Contact {
    /// A contact just made, from one side of an invitation: one receive queue and a new
    /// Olm session (`session`, pickled), nowhere to send yet, nothing sent or received.
    pub fn new(id: u64, name: String, session: String, recv: RecvQueue) -> Self {
        Self {
            id,
            name,
            invitation_id: None,
            session,
            recv: vec![recv],
            send: None,
            connected: false,
            next_send_seq: 0,
            next_recv_seq: 0,
            reorder: BTreeMap::new(),
            seen: VecDeque::new(),
            inbox: Vec::new(),
            rotating: false,
            last_failure: None,
        }
    }

    /// Whether a digest was recorded.
    pub fn has_seen(&self, digest: &str) -> bool {
        self.seen.iter().any(|d| d == digest)
    }

    /// Records a digest (bounded by [`MAX_SEEN`]).
    pub fn record_seen(&mut self, digest: String) {
        if self.seen.len() >= MAX_SEEN {
            self.seen.pop_front();
        }
        self.seen.push_back(digest);
    }

    /// Takes a decrypted message in: buffers it and returns what is now in order.
    pub fn arrive(&mut self, seq: u64, payload: Payload) -> Arrival {
        // u64::MAX can never be reached by counting (2^64 messages); refusing it keeps
        // `next_recv_seq` (at most the largest accepted seq + 1) from overflowing whatever a
        // contact sends.
        if seq == u64::MAX || seq < self.next_recv_seq || self.reorder.contains_key(&seq) {
            return Arrival::Duplicate;
        }
        self.reorder.insert(seq, payload);
        let mut ready = Vec::new();
        let mut skipped = 0;
        loop {
            while let Some(p) = self.reorder.remove(&self.next_recv_seq) {
                ready.push((self.next_recv_seq, p));
                self.next_recv_seq += 1;
            }
            if self.reorder.len() < MAX_REORDER {
                break;
            }
            // The buffer is full and the gap is still open: give up on the gap.
            if let Some(&first) = self.reorder.keys().next() {
                skipped += first - self.next_recv_seq;
                self.next_recv_seq = first;
            }
        }
        Arrival::Accepted { ready, skipped }
    }
}

/// A network action waiting to be done.
#[derive(Serialize, Deserialize)]
pub struct OutboxItem {
    /// Local id; items of one contact are done in id order.
    pub id: u64,
    /// The contact it belongs to.
    pub contact: u64,
    /// Not before this Unix millisecond (automatic actions are delayed at random).
    pub not_before_ms: u64,
    /// Whether the action is automatic (a response to receiving) rather than asked for.
    pub automatic: bool,
    /// What to do.
    pub action: Action,
}

/// What an outbox item does.
#[derive(Clone, Serialize, Deserialize)]
pub enum Action {
    /// SKEY: secure the contact's queue with our sender key.
    Skey {
        /// Queue address text.
        queue: String,
        /// Our sender key.
        sender_key: Secret32,
    },
    /// SEND an end-to-end message (sealed into an envelope when sent).
    Send {
        /// Queue address text.
        queue: String,
        /// Our sender key (signs the SEND).
        sender_key: Secret32,
        /// Envelope key.
        envelope_key: Secret32,
        /// Olm message type.
        olm_type: u8,
        /// Olm message.
        #[serde(with = "b64")]
        olm: Vec<u8>,
    },
    /// DEL one of our own queues (the old one after a rotation).
    Delete {
        /// The queue.
        queue: RecvQueue,
    },
}

/// A receive queue found by relay and recipient id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOwner {
    /// A contact's queue.
    Contact(u64),
    /// A pending invitation's queue.
    Invitation(u64),
}

impl State {
    /// A fresh local id.
    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Whether a contact or pending invitation already has this name.
    pub fn name_taken(&self, name: &str) -> bool {
        self.contacts.iter().any(|c| c.name == name)
            || self.invitations.iter().any(|i| i.name == name)
    }

    /// The contact with this name.
    pub fn contact_by_name(&self, name: &str) -> Option<&Contact> {
        self.contacts.iter().find(|c| c.name == name)
    }

    /// The contact with this id.
    pub fn contact(&self, id: u64) -> Option<&Contact> {
        self.contacts.iter().find(|c| c.id == id)
    }

    /// The contact with this id, mutably.
    pub fn contact_mut(&mut self, id: u64) -> Option<&mut Contact> {
        self.contacts.iter_mut().find(|c| c.id == id)
    }

    /// Who owns the receive queue `recipient_id` on `relay`.
    pub fn owner_of(&self, relay: &str, recipient_id: &[u8; ID_LEN]) -> Option<QueueOwner> {
        let is = |q: &RecvQueue| q.relay == relay && q.recipient_id == *recipient_id;
        if let Some(c) = self.contacts.iter().find(|c| c.recv.iter().any(is)) {
            return Some(QueueOwner::Contact(c.id));
        }
        self.invitations
            .iter()
            .find(|i| is(&i.queue))
            .map(|i| QueueOwner::Invitation(i.id))
    }

    /// The relays we receive on (contacts' and invitations' queues; loop queues do not
    /// count), as address text.
    pub fn receive_relays(&self) -> std::collections::BTreeSet<String> {
        self.receive_queues()
            .into_iter()
            .map(|q| q.relay.clone())
            .collect()
    }

    /// The loop queue on `relay`, if we have one.
    pub fn loop_queue(&self, relay: &str) -> Option<&LoopQueue> {
        self.loops.iter().find(|l| l.queue.relay == relay)
    }

    /// Every receive queue: contacts' and invitations'.
    pub fn receive_queues(&self) -> Vec<&RecvQueue> {
        self.contacts
            .iter()
            .flat_map(|c| c.recv.iter())
            .chain(self.invitations.iter().map(|i| &i.queue))
            .collect()
    }

    /// The next outbox item of a contact (its items are done strictly in order).
    pub fn first_item_of(&self, contact: u64) -> Option<&OutboxItem> {
        self.outbox
            .iter()
            .filter(|i| i.contact == contact)
            .min_by_key(|i| i.id)
    }

    /// Number of outbox items of a contact.
    pub fn outbox_len(&self, contact: u64) -> usize {
        self.outbox.iter().filter(|i| i.contact == contact).count()
    }

    /// Contacts whose next item is due at `now_ms`.
    pub fn due_contacts(&self, now_ms: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = self.outbox.iter().map(|i| i.contact).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter(|&c| {
                self.first_item_of(c)
                    .is_some_and(|i| i.not_before_ms <= now_ms)
            })
            .collect()
    }

    /// When the earliest next item of any contact becomes due.
    pub fn next_due_ms(&self) -> Option<u64> {
        let mut ids: Vec<u64> = self.outbox.iter().map(|i| i.contact).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|c| self.first_item_of(c))
            .map(|i| i.not_before_ms)
            .min()
    }

    /// Removes a contact and everything queued for it.
    pub fn remove_contact(&mut self, id: u64) {
        self.contacts.retain(|c| c.id != id);
        self.outbox.retain(|i| i.contact != id);
    }
}

/// Opens a contact's Olm session from its pickle ([`Contact::session`]).
pub fn unpickle_session(pickle: &str, pickle_key: &[u8; 32]) -> Result<Session, StateError> {
    SessionPickle::from_encrypted(pickle, pickle_key)
        .map(Session::from_pickle)
        .map_err(|_| StateError("Olm session"))
}

/// The digest by which a processed Olm message is recognised when it comes again.
pub fn digest(olm: &[u8]) -> String {
    use base64::Engine as _;
    let h = blake3::hash(olm);
    let short = h.as_bytes().get(..DIGEST_LEN).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(short)
}

mod opt_id16 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::b64_array;

    #[derive(Serialize, Deserialize)]
    struct Wrapped(#[serde(with = "b64_array")] [u8; 16]);

    pub fn serialize<S: Serializer>(v: &Option<[u8; 16]>, s: S) -> Result<S::Ok, S::Error> {
        v.map(Wrapped).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 16]>, D::Error> {
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact() -> Contact {
        Contact {
            id: 1,
            name: "bob".into(),
            invitation_id: Some([1; 16]),
            session: String::new(),
            recv: Vec::new(),
            send: None,
            connected: true,
            next_send_seq: 0,
            next_recv_seq: 0,
            reorder: BTreeMap::new(),
            seen: VecDeque::new(),
            inbox: Vec::new(),
            rotating: false,
            last_failure: None,
        }
    }

    fn text(s: &str) -> Payload {
        Payload::Text(s.into())
    }

    #[test]
    fn out_of_order_messages_come_out_in_order_once() {
        let mut c = contact();
        assert_eq!(
            c.arrive(1, text("b")),
            Arrival::Accepted {
                ready: vec![],
                skipped: 0
            }
        );
        assert_eq!(c.arrive(1, text("b")), Arrival::Duplicate);
        assert_eq!(
            c.arrive(0, text("a")),
            Arrival::Accepted {
                ready: vec![(0, text("a")), (1, text("b"))],
                skipped: 0
            }
        );
        assert_eq!(c.arrive(0, text("a")), Arrival::Duplicate);
        assert_eq!(c.next_recv_seq, 2);
    }

    /// A contact sending sequence numbers at the top of the range cannot make the counter
    /// overflow: the last value is refused, the one before it is the last accepted.
    #[test]
    fn sequence_numbers_at_the_end_of_the_range_do_not_overflow() {
        let mut c = contact();
        assert_eq!(c.arrive(u64::MAX, text("max")), Arrival::Duplicate);
        for i in 0..MAX_REORDER as u64 {
            let seq = u64::MAX - 1 - i;
            assert!(matches!(c.arrive(seq, text("x")), Arrival::Accepted { .. }));
        }
        assert_eq!(c.next_recv_seq, u64::MAX);
        assert_eq!(c.arrive(u64::MAX, text("max")), Arrival::Duplicate);
        assert_eq!(c.arrive(5, text("old")), Arrival::Duplicate);
    }

    #[test]
    fn a_gap_that_never_fills_is_skipped_when_the_buffer_is_full() {
        let mut c = contact();
        let mut last = None;
        for seq in 1..=MAX_REORDER as u64 {
            last = Some(c.arrive(seq, text("x")));
        }
        match last.unwrap() {
            Arrival::Accepted { ready, skipped } => {
                assert_eq!(skipped, 1);
                assert_eq!(ready.len(), MAX_REORDER);
            }
            other => panic!("{other:?}"),
        }
        assert!(c.reorder.is_empty());
        assert_eq!(c.arrive(0, text("late")), Arrival::Duplicate);
    }

    #[test]
    fn seen_digests_are_bounded() {
        let mut c = contact();
        for i in 0..(MAX_SEEN + 10) {
            c.record_seen(digest(&i.to_be_bytes()));
        }
        assert_eq!(c.seen.len(), MAX_SEEN);
        assert!(!c.has_seen(&digest(&0usize.to_be_bytes())));
        assert!(c.has_seen(&digest(&(MAX_SEEN + 9).to_be_bytes())));
    }

    #[test]
    fn outbox_items_are_taken_in_order_per_contact() {
        let mut s = State::default();
        let item = |id, contact, not_before_ms| OutboxItem {
            id,
            contact,
            not_before_ms,
            automatic: true,
            action: Action::Skey {
                queue: String::new(),
                sender_key: Secret32::new([0; 32]),
            },
        };
        s.outbox.push(item(5, 1, 100));
        s.outbox.push(item(3, 1, 500));
        s.outbox.push(item(4, 2, 300));
        assert_eq!(s.first_item_of(1).unwrap().id, 3);
        // Contact 1's item 5 is due, but it waits behind item 3.
        assert_eq!(s.due_contacts(200), Vec::<u64>::new());
        assert_eq!(s.due_contacts(300), vec![2]);
        assert_eq!(s.due_contacts(600), vec![1, 2]);
        assert_eq!(s.next_due_ms(), Some(300));
        s.remove_contact(2);
        assert_eq!(s.next_due_ms(), Some(500));
    }
}
