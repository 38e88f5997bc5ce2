//! Sending: a text from the person ([`Agent::send`]), and doing the outbox over the
//! network — a contact's items in order under a lease, each a SKEY, a SEND (the padded
//! envelope, directly or forwarded through the send-through relay) or a DEL — with the
//! growing pause between retries of a contact whose outbox failed ([`Agent::flush_due`]).
//!
//! It does not decide what goes into the outbox (the operations that queue items, and
//! `inbound` for automatic replies) nor how an item is encrypted and leased (`outbox`).

use std::ops::ControlFlow;
use std::time::Duration;

use sotto_protocol::{AuthSecretKey, ErrorCode, QueueAddress};
use tokio::time::Instant;

use super::contacts::sendable_contact;
use super::net::NetError;
use super::outbox::{Claim, LEASE, claim_next, enqueue_message, expire_lease, finish};
use super::state::{self, Action};
use super::timing::{next_backoff, now_ms};
use super::wire::{self, MAX_TEXT_LEN, Payload};
use super::{Agent, AgentError, Event};

impl Agent {
    /// Sends a text; returns once the relay answered OK (the message is durable there).
    ///
    /// # Errors
    /// [`AgentError::UnknownContact`], [`AgentError::ContactPending`],
    /// [`AgentError::TooLong`], [`AgentError::OutboxFull`], [`AgentError::NotDelivered`]
    /// (the message stays queued).
    pub async fn send(&mut self, name: &str, text: &str) -> Result<(), AgentError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(AgentError::TooLong(text.len()));
        }
        let pickle_key = *self.store.pickle_key();
        let (contact, item) = self.store.update(|st| {
            let id = sendable_contact(st, name)?;
            if st.outbox_len(id) >= state::MAX_OUTBOX {
                return Err(AgentError::OutboxFull(name.to_owned()));
            }
            let payload = Payload::Text(text.to_owned());
            let item = enqueue_message(st, &pickle_key, id, payload, now_ms(), false)?;
            Ok((id, item))
        })?;
        self.flush_contact(contact, Some(item), true).await
    }

    /// Puts a text in the contact's outbox and returns without sending it: a running
    /// [`Agent::receive`] (`sotto listen`) sends it at its next round — on its paced link,
    /// with a traffic policy — and otherwise the next `receive`, `flush_due` or `send` to
    /// that contact does.
    ///
    /// # Errors
    /// [`AgentError::UnknownContact`], [`AgentError::ContactPending`],
    /// [`AgentError::TooLong`], [`AgentError::OutboxFull`], store errors.
    pub fn queue_text(&mut self, name: &str, text: &str) -> Result<(), AgentError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(AgentError::TooLong(text.len()));
        }
        let pickle_key = *self.store.pickle_key();
        self.store.update(|st| {
            let id = sendable_contact(st, name)?;
            if st.outbox_len(id) >= state::MAX_OUTBOX {
                return Err(AgentError::OutboxFull(name.to_owned()));
            }
            enqueue_message(
                st,
                &pickle_key,
                id,
                Payload::Text(text.to_owned()),
                now_ms(),
                false,
            )?;
            Ok(())
        })
    }

    /// Does every outbox item that is due (automatic sends whose delay has passed, and
    /// anything a failure left behind). Failures become [`Event::Warning`]s and are retried
    /// later with a growing pause.
    ///
    /// # Errors
    /// Store errors.
    pub async fn flush_due<F>(&mut self, on_event: &mut F) -> Result<(), AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let due = self.store.read()?.due_contacts(now_ms(), self.owner);
        let now = Instant::now();
        for c in due {
            if self.backoff.get(&c).is_some_and(|(until, _)| now < *until) {
                continue;
            }
            match self.flush_contact(c, None, false).await {
                Ok(()) => {
                    self.backoff.remove(&c);
                }
                Err(e @ (AgentError::Store(_) | AgentError::State(_))) => return Err(e),
                Err(e) => {
                    let pause = next_backoff(self.backoff.get(&c).map(|(_, p)| *p));
                    self.backoff.insert(c, (Instant::now() + pause, pause));
                    let _ = on_event(&Event::Warning {
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Does the contact's outbox items in order: all of them up to and including `until`
    /// (whether due or not: the person is sending anyway), or, with `until = None`, those
    /// that are due (`include_not_due` = false) or all.
    pub(super) async fn flush_contact(
        &mut self,
        contact: u64,
        until: Option<u64>,
        include_not_due: bool,
    ) -> Result<(), AgentError> {
        let owner = self.owner;
        let busy_deadline = Instant::now() + LEASE;
        loop {
            let claim = self.store.update(|st| {
                let now = now_ms();
                Ok::<_, AgentError>(claim_next(st, contact, until, include_not_due, owner, now))
            })?;
            match claim {
                Claim::Done => return Ok(()),
                Claim::Busy => {
                    if Instant::now() >= busy_deadline {
                        return Err(AgentError::Busy(self.contact_name(contact)));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Claim::Item(id, action) => {
                    let result = self.execute(&action).await;
                    if result.is_ok()
                        && self.opts.stop_after_send
                        && matches!(*action, Action::Send { .. })
                    {
                        self.store.update(|st| {
                            expire_lease(st, id);
                            Ok::<_, AgentError>(())
                        })?;
                        return Err(AgentError::StoppedAfterSend);
                    }
                    let ok = result.is_ok();
                    self.store.update(|st| {
                        finish(st, id, ok);
                        Ok::<_, AgentError>(())
                    })?;
                    if let Err(source) = result {
                        if source.relay_code() == Some(ErrorCode::Blocked) {
                            return Err(AgentError::QueueBlocked(self.contact_name(contact)));
                        }
                        if matches!(
                            source.relay_code(),
                            Some(ErrorCode::Auth | ErrorCode::Prohibited)
                        ) && matches!(*action, Action::Send { .. } | Action::Skey { .. })
                        {
                            return Err(AgentError::QueueRefused(self.contact_name(contact)));
                        }
                        return Err(AgentError::NotDelivered {
                            contact: self.contact_name(contact),
                            source,
                        });
                    }
                }
            }
        }
    }

    /// The contact's name, for an error message (`?` if it is gone).
    fn contact_name(&self, id: u64) -> String {
        self.store
            .read()
            .ok()
            .and_then(|st| st.contact(id).map(|c| c.name.clone()))
            .unwrap_or_else(|| "?".into())
    }

    /// Does one outbox item over the network.
    async fn execute(&mut self, action: &Action) -> Result<(), NetError> {
        match action {
            Action::Skey { queue, sender_key } => {
                let q = parse_queue(queue)?;
                let key = AuthSecretKey::from_bytes(sender_key.expose());
                let sender_id = q.sender_id;
                // A repeated SKEY with the same key is answered OK, so a retry after a
                // lost answer is harmless; PROHIBITED means someone else holds the queue.
                if let Some(via) = self.through_for(&q.relay) {
                    let dest = q.relay.clone();
                    return self
                        .net
                        .request(&via, async |c| {
                            c.sender_secure_through(&dest, sender_id, &key).await
                        })
                        .await;
                }
                self.net
                    .request(&q.relay, async |c| c.sender_secure(sender_id, &key).await)
                    .await
            }
            Action::Send {
                queue,
                sender_key,
                envelope_key,
                olm_type,
                olm,
            } => {
                let q = parse_queue(queue)?;
                let key = AuthSecretKey::from_bytes(sender_key.expose());
                let body = wire::seal_envelope(envelope_key, *olm_type, olm).map_err(|_| {
                    NetError::Request {
                        relay: q.relay.host_port(),
                        source: crate::client::ClientError::UnexpectedResponse(
                            "message does not fit the envelope",
                        ),
                    }
                })?;
                if let Some(tap) = &self.opts.send_tap {
                    tap(&body);
                }
                let sender_id = q.sender_id;
                if let Some(via) = self.through_for(&q.relay) {
                    let dest = q.relay.clone();
                    return self
                        .net
                        .request(&via, async |c| {
                            c.send_through(&dest, sender_id, Some(&key), 0, body.clone())
                                .await
                        })
                        .await;
                }
                self.net
                    .request(&q.relay, async |c| {
                        c.send(sender_id, Some(&key), 0, body.clone()).await
                    })
                    .await
            }
            Action::Delete { queue } => self.delete_queue(queue).await,
        }
    }
}

/// A queue address stored in the outbox.
fn parse_queue(text: &str) -> Result<QueueAddress, NetError> {
    text.parse().map_err(|_| NetError::Request {
        relay: "?".into(),
        source: crate::client::ClientError::UnexpectedResponse("unusable stored queue address"),
    })
}
