//! Sending: a text from the person ([`Agent::send`], bounded in time), and doing the
//! outbox over the network — a contact's items in order under the contact's outbox lock
//! (an OS lock: it ends with the process holding it), each a SKEY, a SEND (the padded
//! envelope, directly or forwarded through the send-through relay) or a DEL — with the
//! growing pause between retries of a contact whose outbox failed ([`Agent::flush_due`]),
//! and the reason of the last failure kept for `contacts`.
//!
//! It does not decide what goes into the outbox (the operations that queue items, and
//! `inbound` for automatic replies) nor how an item is encrypted (`outbox`).

use std::ops::ControlFlow;
use std::time::Duration;

use sotto_protocol::{AuthSecretKey, ErrorCode, QueueAddress};
use tokio::time::Instant;

use super::contacts::sendable_contact;
use super::net::NetError;
use super::outbox::{Claim, claim_next, enqueue_message, finish};
use super::state::{self, Action, Failure};
use super::store::{LockHolder, OutboxLock};
use super::timing::{next_retry, now_ms};
use super::wire::{self, MAX_TEXT_LEN, Payload};
use super::{Agent, AgentError, Event};

/// How often a `send` that found its contact's outbox lock taken looks again.
const BUSY_POLL: Duration = Duration::from_millis(100);

/// How long a `send` waits for another `send` holding its contact's outbox lock before it
/// says so (a receiving holder is given half the send bound: it sends our item).
const BUSY_SEND_WAIT: Duration = Duration::from_secs(2);

impl Agent {
    /// Sends a text; returns once the relay answered OK (the message is durable there), or
    /// once another agent that is receiving (`sotto listen`) has sent it. Ends within
    /// [`AgentOptions::send_timeout`](super::AgentOptions::send_timeout) in any case; the
    /// message is queued first, so every error after that leaves it queued for the next
    /// `send`, `receive` or `flush_due`.
    ///
    /// # Errors
    /// [`AgentError::UnknownContact`], [`AgentError::ContactPending`],
    /// [`AgentError::TooLong`], [`AgentError::OutboxFull`] (nothing queued);
    /// [`AgentError::NotDelivered`], [`AgentError::TimedOut`], [`AgentError::Busy`],
    /// [`AgentError::QueueRefused`], [`AgentError::QueueBlocked`] (the message stays
    /// queued).
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
        self.flush_within(contact, item).await
    }

    /// [`Agent::flush_contact`] up to and including `item`, within the send timeout; a
    /// timeout is recorded as the contact's last failure like any other.
    pub(super) async fn flush_within(&mut self, contact: u64, item: u64) -> Result<(), AgentError> {
        let bound = self.send_timeout();
        match tokio::time::timeout(bound, self.flush_contact(contact, Some(item), true)).await {
            Ok(result) => result,
            Err(_) => {
                let e = AgentError::TimedOut {
                    contact: self.contact_name(contact),
                    secs: bound.as_secs_f64().ceil() as u64,
                };
                self.record_failure(contact, &e)?;
                Err(e)
            }
        }
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
        let due = self.store.read()?.due_contacts(now_ms());
        let now = Instant::now();
        for c in due {
            if self.backoff.get(&c).is_some_and(|(until, _)| now < *until) {
                continue;
            }
            match self.flush_contact(c, None, false).await {
                Ok(()) => {
                    self.backoff.remove(&c);
                }
                // Another process is doing this contact's items: they get done.
                Err(AgentError::Busy { .. }) => {}
                Err(e @ (AgentError::Store(_) | AgentError::State(_))) => return Err(e),
                Err(e) => {
                    let retry = next_retry(Instant::now(), self.backoff.get(&c).map(|(_, p)| *p));
                    self.backoff.insert(c, retry);
                    let _ = on_event(&Event::Warning {
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Does the contact's outbox items in order, under its outbox lock: all of them up to
    /// and including `until` (whether due or not: the person is sending anyway), or, with
    /// `until = None`, those that are due (`include_not_due` = false) or all. A failure is
    /// recorded as the contact's last one (an item done clears it, in `outbox::finish`).
    ///
    /// If another agent holds the lock: with `until`, waits (within the caller's bound) for
    /// it to have done item `until` or to let go; otherwise returns [`AgentError::Busy`]
    /// at once.
    pub(super) async fn flush_contact(
        &mut self,
        contact: u64,
        until: Option<u64>,
        include_not_due: bool,
    ) -> Result<(), AgentError> {
        let Some(_lock) = self.lock_outbox(contact, until).await? else {
            // Another agent did it.
            return Ok(());
        };
        let result = self.flush_locked(contact, until, include_not_due).await;
        if let Err(e) = &result
            && !matches!(
                e,
                AgentError::Store(_) | AgentError::State(_) | AgentError::StoppedAfterSend
            )
        {
            self.record_failure(contact, e)?;
        }
        result
    }

    /// Keeps `e` as the reason of the contact's last failed attempt.
    fn record_failure(&self, contact: u64, e: &AgentError) -> Result<(), AgentError> {
        let reason = match e {
            AgentError::NotDelivered { source, .. } => source.to_string(),
            e => e.to_string(),
        };
        self.store.update(|st| {
            if let Some(c) = st.contact_mut(contact) {
                c.last_failure = Some(Failure {
                    at_ms: now_ms(),
                    reason,
                });
            }
            Ok::<_, AgentError>(())
        })
    }

    /// Takes the contact's outbox lock. `None`: another agent held it and has done item
    /// `until` meanwhile.
    async fn lock_outbox(
        &self,
        contact: u64,
        until: Option<u64>,
    ) -> Result<Option<OutboxLock>, AgentError> {
        let me = LockHolder {
            pid: std::process::id(),
            receiving: self.receiving,
        };
        let started = Instant::now();
        loop {
            let holder = match self.store.try_lock_outbox(contact, me)? {
                Ok(lock) => return Ok(Some(lock)),
                Err(holder) => holder,
            };
            // One read of the profile per look: the contact's name, and whether our item
            // is still there.
            let st = self.store.read()?;
            let name = st
                .contact(contact)
                .map_or_else(|| "?".to_owned(), |c| c.name.clone());
            let Some(item) = until else {
                return Err(AgentError::busy(name, holder));
            };
            if st.contact(contact).is_none() {
                return Err(AgentError::UnknownContact(name));
            }
            if !st.outbox.iter().any(|i| i.id == item) {
                return Ok(None);
            }
            // A receiving holder does our item in the same pass (so it is worth waiting
            // for, within half our bound); a sending one lets go when it has done its own
            // items — a healthy one in well under a second. Either way not for long, and
            // never without saying who.
            let patience = if holder.receiving {
                self.send_timeout() / 2
            } else {
                BUSY_SEND_WAIT.min(self.send_timeout() / 2)
            };
            if started.elapsed() >= patience {
                return Err(AgentError::busy(name, holder));
            }
            tokio::time::sleep(BUSY_POLL).await;
        }
    }

    /// The loop of [`Agent::flush_contact`], under the lock.
    async fn flush_locked(
        &mut self,
        contact: u64,
        until: Option<u64>,
        include_not_due: bool,
    ) -> Result<(), AgentError> {
        loop {
            let claim = claim_next(
                &self.store.read()?,
                contact,
                until,
                include_not_due,
                now_ms(),
            );
            match claim {
                Claim::Done => return Ok(()),
                Claim::Item(id, action) => {
                    let result = self.execute(&action).await;
                    if result.is_ok()
                        && self.opts.stop_after_send
                        && matches!(*action, Action::Send { .. })
                    {
                        // As if the process died here: the lock goes with it.
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
