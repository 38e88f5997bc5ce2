//! Contacts: making an invitation, accepting one (our receive queue, the SKEY of the
//! inviter's queue, the HELLO), deleting a contact with its queues, and what
//! [`Agent::contacts`] reports; contact names and their rules.
//!
//! It does not finish a set-up: the inviter's side completes when the HELLO is received
//! (`inbound`), and the messages it queues are sent by the outbox (`send`).

use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::Serialize;
use sotto_protocol::{QueueAddress, RelayAddress};
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, SessionConfig};

use super::invitation::Invitation;
use super::outbox::{enqueue_message, push_item};
use super::secret::Secret32;
use super::state::{Action, Contact, PendingInvitation, RecvQueue, SendQueue, State, StateError};
use super::timing::now_ms;
use super::wire::Payload;
use super::{Agent, AgentError};
use crate::client::QueueCredentials;

/// Longest name of a contact, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// State of a contact as [`Agent::contacts`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactStatus {
    /// An invitation made here, not used yet.
    Invited,
    /// Set-up under way.
    Connecting,
    /// Both directions work.
    Connected,
    /// Moving our receive queue to another relay.
    Rotating,
}

/// A contact as [`Agent::contacts`] reports it (no keys or queue ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContactInfo {
    /// Local name.
    pub name: String,
    /// Status.
    pub status: ContactStatus,
    /// Relays we receive this contact's messages on (`host:port`).
    pub receive_relays: Vec<String>,
    /// Relay we send to (`host:port`), once known.
    pub send_relay: Option<String>,
    /// Outbox items waiting.
    pub queued: usize,
    /// Why the last attempt at this contact's outbox failed, if the last attempt failed
    /// (e.g. `relay 127.0.0.1:5223 unreachable: …`).
    pub last_failure: Option<String>,
    /// When that was (Unix seconds).
    pub last_failure_at: Option<u64>,
}

impl Agent {
    /// Makes an invitation on `via` (default: the default relay) for a contact to be called
    /// `name` (default `contact-N`). Returns the one-line `sotto:` link.
    ///
    /// # Errors
    /// Relay errors, [`AgentError::NameTaken`], [`AgentError::BadName`], store errors.
    pub async fn invite(
        &mut self,
        via: Option<&str>,
        name: Option<&str>,
    ) -> Result<String, AgentError> {
        let relay = self.resolve_relay(via)?;
        if let Some(n) = name {
            check_name(n)?;
            if self.store.read()?.name_taken(n) {
                return Err(AgentError::NameTaken(n.to_owned()));
            }
        }
        let creds = self.create_queue(&relay).await?;
        let mut account = Account::new();
        let otk = account
            .generate_one_time_keys(1)
            .created
            .into_iter()
            .next()
            .ok_or(AgentError::State(StateError("one-time key")))?;
        account.mark_keys_as_published();
        let mut invitation_id = [0u8; 16];
        OsRng.fill_bytes(&mut invitation_id);
        let envelope_key = Secret32::random();
        let link = Invitation {
            id: invitation_id,
            identity_key: account.curve25519_key().to_bytes(),
            one_time_key: otk.to_bytes(),
            envelope_key: envelope_key.clone(),
            queue: creds.queue_address(),
        }
        .to_link();
        let account = account.pickle().encrypt(self.store.pickle_key());
        let queue = RecvQueue::new(&creds, envelope_key);
        let name = name.map(str::to_owned);
        self.store.update(|st| {
            let id = st.take_id();
            let name = name.unwrap_or_else(|| format!("contact-{id}"));
            if st.name_taken(&name) {
                return Err(AgentError::NameTaken(name));
            }
            st.invitations.push(PendingInvitation {
                id,
                invitation_id,
                name,
                queue,
                account,
                link: link.clone(),
            });
            Ok(())
        })?;
        Ok(link)
    }

    /// Accepts an invitation: creates our receive queue on `via` (default: the default
    /// relay), secures the inviter's queue (SKEY) and sends the HELLO. Returns once the
    /// relay accepted the HELLO. If a relay cannot be reached, the contact is kept and
    /// [`AgentError::NotDelivered`] says that the rest is done by the next `send`/`recv`.
    ///
    /// # Errors
    /// [`AgentError::Invitation`], [`AgentError::InvitationUsed`],
    /// [`AgentError::NameTaken`], relay errors.
    pub async fn accept(
        &mut self,
        link: &str,
        name: &str,
        via: Option<&str>,
    ) -> Result<(), AgentError> {
        let inv = Invitation::parse(link)?;
        check_name(name)?;
        if self.store.read()?.name_taken(name) {
            return Err(AgentError::NameTaken(name.to_owned()));
        }
        let relay = self.resolve_relay(via)?;
        let account = Account::new();
        let session = account
            .create_outbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(inv.identity_key),
                Curve25519PublicKey::from_bytes(inv.one_time_key),
            )
            .map_err(|_| AgentError::InvitationKeys)?;
        let creds = self.create_queue(&relay).await?;
        let sender_key = Secret32::random();
        let envelope_key = Secret32::random();
        let hello = Payload::Hello {
            invitation_id: inv.id,
            reply_queue: creds.queue_address().to_string(),
            envelope_key: envelope_key.clone(),
        };
        let pickle_key = *self.store.pickle_key();
        let name = name.to_owned();
        // The contact, its SKEY and its HELLO are persisted before anything is sent, so a
        // crash part-way leaves work that the next command finishes, not a used invitation
        // with no contact.
        let res = self.store.update(|st| {
            if st.name_taken(&name) {
                return Err(AgentError::NameTaken(name.clone()));
            }
            let id = st.take_id();
            let mut contact = Contact::new(
                id,
                name.clone(),
                session.pickle().encrypt(&pickle_key),
                RecvQueue::new(&creds, envelope_key),
            );
            contact.send = Some(SendQueue {
                queue: inv.queue.to_string(),
                sender_key: sender_key.clone(),
                envelope_key: inv.envelope_key.clone(),
            });
            st.contacts.push(contact);
            push_item(
                st,
                id,
                now_ms(),
                false,
                Action::Skey {
                    queue: inv.queue.to_string(),
                    sender_key,
                },
            );
            let item = enqueue_message(st, &pickle_key, id, hello, now_ms(), false)?;
            Ok((id, item))
        });
        let (contact, item) = self.delete_queue_on_error(&creds, res).await?;
        match self.flush_within(contact, item).await {
            // The invitation's queue is secured by someone else, or gone: undo.
            Err(AgentError::QueueRefused(_)) => {
                self.store.update(|st| {
                    st.remove_contact(contact);
                    Ok::<_, AgentError>(())
                })?;
                self.store.remove_outbox_lock(contact);
                self.delete_queue_best_effort(&creds).await;
                Err(AgentError::InvitationUsed)
            }
            r => r,
        }
    }

    /// Deletes a contact (or a pending invitation): deletes our receive queues on their
    /// relays, then forgets it. The contact is not told; its sends start failing.
    ///
    /// # Errors
    /// [`AgentError::UnknownContact`]; relay errors (then nothing is forgotten).
    pub async fn delete(&mut self, name: &str) -> Result<(), AgentError> {
        let queues: Vec<RecvQueue> = {
            let st = self.store.read()?;
            if let Some(c) = st.contact_by_name(name) {
                c.recv.clone()
            } else if let Some(i) = st.invitations.iter().find(|i| i.name == name) {
                vec![i.queue.clone()]
            } else {
                return Err(AgentError::UnknownContact(name.to_owned()));
            }
        };
        for q in &queues {
            self.delete_queue(q).await?;
        }
        let removed = self.store.update(|st| {
            let id = st.contact_by_name(name).map(|c| c.id);
            if let Some(id) = id {
                st.remove_contact(id);
            }
            st.invitations.retain(|i| i.name != name);
            Ok::<_, AgentError>(id)
        })?;
        if let Some(id) = removed {
            self.store.remove_outbox_lock(id);
        }
        Ok(())
    }

    /// Contacts and pending invitations.
    ///
    /// # Errors
    /// Store errors.
    pub fn contacts(&self) -> Result<Vec<ContactInfo>, AgentError> {
        let st = self.store.read()?;
        let host = |r: &str| {
            r.parse::<RelayAddress>()
                .map(|a| a.host_port())
                .unwrap_or_else(|_| "?".into())
        };
        let mut out: Vec<ContactInfo> = st
            .contacts
            .iter()
            .map(|c| ContactInfo {
                name: c.name.clone(),
                status: if c.rotating {
                    ContactStatus::Rotating
                } else if c.connected && c.send.is_some() {
                    ContactStatus::Connected
                } else {
                    ContactStatus::Connecting
                },
                receive_relays: c.recv.iter().map(|q| host(&q.relay)).collect(),
                send_relay: c.send.as_ref().map(|s| {
                    s.queue
                        .parse::<QueueAddress>()
                        .map(|q| q.relay.host_port())
                        .unwrap_or_else(|_| "?".into())
                }),
                queued: st.outbox_len(c.id),
                last_failure: c.last_failure.as_ref().map(|f| f.reason.clone()),
                last_failure_at: c.last_failure.as_ref().map(|f| f.at_ms / 1000),
            })
            .collect();
        out.extend(st.invitations.iter().map(|i| ContactInfo {
            name: i.name.clone(),
            status: ContactStatus::Invited,
            receive_relays: vec![host(&i.queue.relay)],
            send_relay: None,
            queued: 0,
            last_failure: None,
            last_failure_at: None,
        }));
        Ok(out)
    }

    /// The credentials of the queues we receive `name`'s messages on (oldest first).
    /// For tools and tests that inspect queues directly; these are secrets.
    ///
    /// # Errors
    /// [`AgentError::UnknownContact`], unusable stored data.
    pub fn receive_credentials(&self, name: &str) -> Result<Vec<QueueCredentials>, AgentError> {
        let st = self.store.read()?;
        let c = st
            .contact_by_name(name)
            .ok_or_else(|| AgentError::UnknownContact(name.to_owned()))?;
        c.recv
            .iter()
            .map(|q| q.creds().map_err(AgentError::from))
            .collect()
    }
}

/// The contact called `name`, if it can be sent to.
pub(super) fn sendable_contact(st: &State, name: &str) -> Result<u64, AgentError> {
    match st.contact_by_name(name) {
        Some(c) if c.send.is_some() => Ok(c.id),
        Some(_) => Err(AgentError::ContactPending(name.to_owned())),
        None if st.invitations.iter().any(|i| i.name == name) => {
            Err(AgentError::ContactPending(name.to_owned()))
        }
        None => Err(AgentError::UnknownContact(name.to_owned())),
    }
}

/// Checks a contact name (see [`AgentError::BadName`]).
///
/// # Errors
/// [`AgentError::BadName`].
pub fn check_name(name: &str) -> Result<(), AgentError> {
    let n = name.chars().count();
    if n == 0
        || n > MAX_NAME_LEN
        || name.trim() != name
        || name.contains(':')
        || name.chars().any(char::is_control)
    {
        return Err(AgentError::BadName(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["bob", "Alice Smith", "Ünal", "x"] {
            check_name(good).unwrap();
        }
        for bad in ["", " bob", "bob ", "a:b", "a\nb", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
