//! The outbox, sans-IO: queueing work for later — encrypting a payload as a contact's next
//! message, and other network actions (SKEY, DEL) — and taking a contact's items in order,
//! each under a lease so that one process at a time does it, then finishing them.
//!
//! It does not touch the network, the disk or the clock: the agent does the items over the
//! network and persists the state around each step (`send`), with times passed in.

use std::time::Duration;

use super::AgentError;
use super::state::{self, Action, Lease, OutboxItem, State, StateError, unpickle_session};
use super::timing::millis;
use super::wire::{Message, Payload};

/// How long an outbox item stays leased to the process doing it (longer than the worst
/// case of [`super::net::ATTEMPTS`] connects and requests with the default timeouts).
pub(super) const LEASE: Duration = Duration::from_secs(120);

/// What [`claim_next`] found in a contact's outbox.
pub(super) enum Claim {
    /// Nothing (more) to do now.
    Done,
    /// The next item is leased to another process.
    Busy,
    /// This item (id, action) is now leased to the caller.
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
        lease: None,
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
        lease: None,
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

/// Leases the contact's first outbox item to `owner` at `now_ms`, unless it comes after
/// `until` (an item id) or, without `include_not_due`, is not due yet. Items are taken
/// strictly in order: a later item never goes before an earlier one that waits or is busy.
pub(super) fn claim_next(
    st: &mut State,
    contact: u64,
    until: Option<u64>,
    include_not_due: bool,
    owner: u64,
    now_ms: u64,
) -> Claim {
    let Some(item) = st.first_item_of(contact) else {
        return Claim::Done;
    };
    if until.is_some_and(|u| item.id > u) || (!include_not_due && item.not_before_ms > now_ms) {
        return Claim::Done;
    }
    if !state::leasable(item, now_ms, owner) {
        return Claim::Busy;
    }
    let id = item.id;
    let action = item.action.clone();
    if let Some(i) = st.outbox.iter_mut().find(|i| i.id == id) {
        i.lease = Some(Lease {
            owner,
            until_ms: now_ms + millis(LEASE),
        });
    }
    Claim::Item(id, Box::new(action))
}

/// Ends the lease on item `id`: a `done` item leaves the outbox; otherwise it stays, free
/// for the next attempt.
pub(super) fn finish(st: &mut State, id: u64, done: bool) {
    if done {
        st.outbox.retain(|i| i.id != id);
    } else if let Some(i) = st.outbox.iter_mut().find(|i| i.id == id) {
        i.lease = None;
    }
}

/// Marks the lease on item `id` as run out, as if its holder had died long ago (the test
/// hook `AgentOptions::stop_after_send`).
pub(super) fn expire_lease(st: &mut State, id: u64) {
    if let Some(l) = st
        .outbox
        .iter_mut()
        .find(|i| i.id == id)
        .and_then(|i| i.lease.as_mut())
    {
        l.until_ms = 0;
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
            Claim::Done | Claim::Busy => None,
        }
    }

    #[test]
    fn one_process_at_a_time_does_a_contacts_items_in_order() {
        let mut st = State::default();
        let first = skey(&mut st, 1, 1_000);
        let second = skey(&mut st, 1, 0);
        // Not due yet, and the later item does not jump the queue.
        assert!(matches!(
            claim_next(&mut st, 1, None, false, 7, 500),
            Claim::Done
        ));
        // The person is sending anyway: everything up to the item asked for.
        assert_eq!(
            claimed(claim_next(&mut st, 1, Some(first), true, 7, 500)),
            Some(first)
        );
        // Another process finds it leased; its holder may take it again.
        assert!(matches!(
            claim_next(&mut st, 1, None, true, 8, 600),
            Claim::Busy
        ));
        assert_eq!(
            claimed(claim_next(&mut st, 1, None, true, 7, 600)),
            Some(first)
        );
        // A failed attempt frees it; a finished one removes it.
        finish(&mut st, first, false);
        assert_eq!(
            claimed(claim_next(&mut st, 1, None, true, 8, 600)),
            Some(first)
        );
        finish(&mut st, first, true);
        assert!(matches!(
            claim_next(&mut st, 1, Some(first), true, 8, 600),
            Claim::Done
        ));
        assert_eq!(
            claimed(claim_next(&mut st, 1, None, false, 8, 600)),
            Some(second)
        );
        assert!(matches!(
            claim_next(&mut st, 1, None, false, 7, 600),
            Claim::Busy
        ));
        // A lease that ran out (its process died) lets another process take the item.
        expire_lease(&mut st, second);
        assert_eq!(
            claimed(claim_next(&mut st, 1, None, false, 7, 600)),
            Some(second)
        );
        assert!(matches!(
            claim_next(&mut st, 2, None, true, 7, 600),
            Claim::Done
        ));
    }
}
