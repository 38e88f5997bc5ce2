//! Starting a rotation: moving our receive queue for a contact to another relay — a new
//! queue there, and a NEW_QUEUE message asking the contact to switch to it.
//!
//! The rest happens on receiving, in `inbound`: the contact's side secures the new queue
//! and answers SWITCHED on it (nothing after SWITCHED goes to the old queue); on SWITCHED
//! our side queues the old queue's deletion. Until then we receive on both queues, so no
//! message is lost.

use super::contacts::sendable_contact;
use super::outbox::enqueue_message;
use super::secret::Secret32;
use super::state::RecvQueue;
use super::timing::now_ms;
use super::wire::Payload;
use super::{Agent, AgentError};

impl Agent {
    /// Moves our receive queue for `name` to the relay `via`: creates the new queue and
    /// asks the contact to switch. Messages keep arriving on the old queue until the
    /// contact has switched; then the old queue is deleted (both done by
    /// [`Agent::receive`]).
    ///
    /// # Errors
    /// As [`Agent::send`], [`AgentError::Rotating`], relay errors.
    pub async fn rotate(&mut self, name: &str, via: &str) -> Result<(), AgentError> {
        let relay = self.resolve_relay(Some(via))?;
        {
            let st = self.store.read()?;
            let id = sendable_contact(&st, name)?;
            if st.contact(id).is_some_and(|c| c.rotating) {
                return Err(AgentError::Rotating(name.to_owned()));
            }
        }
        let creds = self.create_queue(&relay).await?;
        let envelope_key = Secret32::random();
        let payload = Payload::NewQueue {
            queue: creds.queue_address().to_string(),
            envelope_key: envelope_key.clone(),
        };
        let pickle_key = *self.store.pickle_key();
        let res = self.store.update(|st| {
            let id = sendable_contact(st, name)?;
            let c = st
                .contact_mut(id)
                .ok_or_else(|| AgentError::UnknownContact(name.to_owned()))?;
            if c.rotating {
                return Err(AgentError::Rotating(name.to_owned()));
            }
            c.rotating = true;
            c.recv.push(RecvQueue::new(&creds, envelope_key));
            let item = enqueue_message(st, &pickle_key, id, payload, now_ms(), false)?;
            Ok((id, item))
        });
        let (contact, item) = self.delete_queue_on_error(&creds, res).await?;
        self.flush_contact(contact, Some(item), true).await
    }
}
