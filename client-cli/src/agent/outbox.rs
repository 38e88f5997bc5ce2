//! The outbox, sans-IO: queueing work for later — encrypting a payload as a contact's next
//! message, and other network actions (SKEY, DEL) — and taking a contact's items in order,
//! then finishing them.
//!
//! It does not touch the network, the disk, the clock or the locks: the agent takes the
//! contact's outbox lock (one process at a time does a contact's items, `store`), does the
//! items over the network and persists the state around each step (`send`), with times
//! passed in.

use super::AgentError;
use super::state::{Action, OutboxItem, State, StateError, unpickle_session};
use super::wire::{Message, Payload};

/// What [`claim_next`] found in a contact's outbox.
pub(super) enum Claim {
    /// Nothing (more) to do now.
    Done,
    /// This item (id, action) is next.
    Item(u64, Box<Action>),
}

/// Queues a network action; `automatic` ones are those made in response to receiving.
pub(super) fn push_item(
    st: &mut State,
    contact: u64,
    not_before_ms: u64,
    automatic: bool,
    action: Action,
) -> u64 {
    let id = st.take_id();
    st.outbox.push(OutboxItem {
        id,
        contact,
        not_before_ms,
        automatic,
        action,
    });
    id
}

/// Encrypts `payload` as the contact's next message and queues it for its current send
/// queue. Returns the outbox item's id.
pub(super) fn enqueue_message(
    st: &mut State,
    pickle_key: &[u8; 32],
    contact: u64,
    payload: Payload,
    not_before_ms: u64,
    automatic: bool,
) -> Result<u64, AgentError> {
    let item_id = st.take_id();
    let c = st.contact_mut(contact).ok_or(StateError("contact"))?;
    let send = c.send.clone().ok_or(StateError("send queue"))?;
    let plaintext = Message {
        seq: c.next_send_seq,
        payload,
    }
    .encode()?;
    let mut session = unpickle_session(&c.session, pickle_key)?;
    let olm = session
        .encrypt(plaintext.as_slice())
        .map_err(|_| StateError("Olm session"))?;
    let (olm_type, bytes) = olm.to_parts();
    c.session = session.pickle().encrypt(pickle_key);
    c.next_send_seq += 1;
    st.outbox.push(OutboxItem {
        id: item_id,
        contact,
        not_before_ms,
        automatic,
        action: Action::Send {
            queue: send.queue,
            sender_key: send.sender_key,
            envelope_key: send.envelope_key,
            olm_type: u8::try_from(olm_type).map_err(|_| StateError("Olm message type"))?,
            olm: bytes,
        },
    });
    Ok(item_id)
}

/// The contact's first outbox item, unless it comes after `until` (an item id) or,
/// without `include_not_due`, is not due yet at `now_ms`. Items are taken strictly in
/// order: a later item never goes before an earlier one that waits. The caller holds the
/// contact's outbox lock.
pub(super) fn claim_next(
    st: &State,
    contact: u64,
    until: Option<u64>,
    include_not_due: bool,
    now_ms: u64,
) -> Claim {
    let Some(item) = st.first_item_of(contact) else {
        return Claim::Done;
    };
    if until.is_some_and(|u| item.id > u) || (!include_not_due && item.not_before_ms > now_ms) {
        return Claim::Done;
    }
    Claim::Item(item.id, Box::new(item.action.clone()))
}

/// Ends an attempt at item `id`: a `done` item leaves the outbox, and its contact's last
/// failure is over; otherwise it stays for the next attempt.
pub(super) fn finish(st: &mut State, id: u64, done: bool) {
    if !done {
        return;
    }
    let contact = st.outbox.iter().find(|i| i.id == id).map(|i| i.contact);
    st.outbox.retain(|i| i.id != id);
    if let Some(c) = contact.and_then(|c| st.contact_mut(c)) {
        c.last_failure = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::secret::Secret32;

    fn skey(st: &mut State, contact: u64, not_before_ms: u64) -> u64 {
        push_item(
            st,
            contact,
            not_before_ms,
            true,
            Action::Skey {
                queue: String::new(),
                sender_key: Secret32::new([0; 32]),
            },
        )
    }

    fn claimed(c: Claim) -> Option<u64> {
        match c {
            Claim::Item(id, _) => Some(id),
            Claim::Done => None,
        }
    }

    #[test]
    fn a_contacts_items_are_done_in_order() {
        let mut st = State::default();
        let first = skey(&mut st, 1, 1_000);
        let second = skey(&mut st, 1, 0);
        // Not due yet, and the later item does not jump the queue.
        assert!(matches!(claim_next(&st, 1, None, false, 500), Claim::Done));
        // The person is sending anyway: everything up to the item asked for.
        assert_eq!(
            claimed(claim_next(&st, 1, Some(first), true, 500)),
            Some(first)
        );
        // A failed attempt leaves it first; a finished one removes it.
        finish(&mut st, first, false);
        assert_eq!(claimed(claim_next(&st, 1, None, true, 600)), Some(first));
        finish(&mut st, first, true);
        assert!(matches!(
            claim_next(&st, 1, Some(first), true, 600),
            Claim::Done
        ));
        assert_eq!(claimed(claim_next(&st, 1, None, false, 600)), Some(second));
        assert!(matches!(claim_next(&st, 2, None, true, 600), Claim::Done));
    }
}
