//! The outbox, sans-IO: encrypting a payload as a contact's next message and queueing it,
//! and queueing other network actions (SKEY, DEL). The agent does the items later, in
//! order per contact (see `Agent::flush_contact`).

use super::state::{Action, OutboxItem, State, StateError};
use super::wire::{Message, Payload};
use super::{AgentError, unpickle_session};

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
