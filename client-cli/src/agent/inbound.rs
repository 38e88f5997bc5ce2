//! Receiving, sans-IO: what one opened Olm message does to the profile's state — set up a
//! contact from an invitation's first pre-key message, decrypt, recognise duplicates and
//! forgeries, put payloads in order, and apply them (texts to the inbox; HELLO, READY,
//! NEW_QUEUE, SWITCHED to the contact and the outbox). The caller persists the state and
//! shows the inbox; nothing here touches the network, the disk or the terminal.

use std::time::Duration;

use vodozemac::olm::{Account, AccountPickle, DecryptionError, OlmMessage, SessionConfig};

use super::outbox::{enqueue_message, push_item};
use super::secret::Secret32;
use super::state::{
    self, Action, Arrival, Contact, InboxEntry, QueueOwner, RecvQueue, SendQueue, State,
    StateError, unpickle_session,
};
use super::timing::{auto_delay, millis, now_ms};
use super::wire::{Message, Payload};
use super::{AgentError, Event};

/// What processing one received message produced.
#[derive(Default)]
pub(super) struct Outcome {
    pub contact: Option<u64>,
    pub notices: Vec<Event>,
}

/// Processes one opened Olm message for its queue's owner. Never fails for bad input
/// (that is a [`Event::Rejected`]); fails only for unusable stored data.
pub(super) fn process(
    st: &mut State,
    pickle_key: &[u8; 32],
    auto_delay_mean: Duration,
    owner: QueueOwner,
    olm_type: u8,
    olm: &[u8],
    timestamp: u64,
) -> Result<Outcome, AgentError> {
    let digest = state::digest(olm);
    let rejected = |contact: Option<String>| Outcome {
        contact: None,
        notices: vec![Event::Rejected { contact }],
    };
    let Ok(message) = OlmMessage::from_parts(usize::from(olm_type), olm) else {
        let name = match owner {
            QueueOwner::Contact(id) => st.contact(id).map(|c| c.name.clone()),
            QueueOwner::Invitation(_) => None,
        };
        return Ok(rejected(name));
    };
    let (contact_id, plaintext) = match owner {
        QueueOwner::Contact(id) => {
            let c = st.contact_mut(id).ok_or(StateError("contact"))?;
            if c.has_seen(&digest) {
                return Ok(Outcome::default());
            }
            let mut session = unpickle_session(&c.session, pickle_key)?;
            let plaintext = match session.decrypt(&message) {
                Ok(p) => p,
                // Its key is used up: this message was decrypted before and its digest has
                // left the window. A relay delivers a message again when a crash undid the
                // deletion of the ACK (at least once), and only the contact holds the
                // envelope key that let it this far, so it is no forgery worth a notice:
                // like a recognised duplicate, it is dropped quietly (and ACKed).
                Err(DecryptionError::MissingMessageKey(_)) => return Ok(Outcome::default()),
                Err(_) => return Ok(rejected(Some(c.name.clone()))),
            };
            c.session = session.pickle().encrypt(pickle_key);
            c.record_seen(digest);
            (id, zeroize::Zeroizing::new(plaintext))
        }
        QueueOwner::Invitation(inv_id) => {
            let OlmMessage::PreKey(pre_key) = &message else {
                return Ok(rejected(None));
            };
            let idx = st
                .invitations
                .iter()
                .position(|i| i.id == inv_id)
                .ok_or(StateError("invitation"))?;
            let inv = st.invitations.get(idx).ok_or(StateError("invitation"))?;
            let pickle = AccountPickle::from_encrypted(&inv.account, pickle_key)
                .map_err(|_| StateError("Olm account"))?;
            let mut account = Account::from_pickle(pickle);
            let Ok(created) = account.create_inbound_session(
                SessionConfig::version_1(),
                pre_key.identity_key(),
                pre_key,
            ) else {
                return Ok(rejected(None));
            };
            let inv = st.invitations.remove(idx);
            let id = st.take_id();
            let mut c = Contact::new(
                id,
                inv.name,
                created.session.pickle().encrypt(pickle_key),
                inv.queue,
            );
            c.invitation_id = Some(inv.invitation_id);
            c.record_seen(digest);
            st.contacts.push(c);
            (id, zeroize::Zeroizing::new(created.plaintext))
        }
    };
    let name = st
        .contact(contact_id)
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let mut out = Outcome {
        contact: Some(contact_id),
        notices: Vec::new(),
    };
    let Ok(msg) = Message::decode(&plaintext) else {
        // Authentic but malformed: the ratchet step is kept, the content dropped.
        out.notices.push(Event::Rejected {
            contact: Some(name),
        });
        return Ok(out);
    };
    let c = st.contact_mut(contact_id).ok_or(StateError("contact"))?;
    let (ready, skipped) = match c.arrive(msg.seq, msg.payload) {
        Arrival::Duplicate => return Ok(out),
        Arrival::Accepted { ready, skipped } => (ready, skipped),
    };
    if skipped > 0 {
        out.notices.push(Event::Missed {
            contact: name.clone(),
            count: skipped,
        });
    }
    for (seq, payload) in ready {
        apply(
            st,
            pickle_key,
            auto_delay_mean,
            contact_id,
            seq,
            payload,
            timestamp,
            &mut out.notices,
        )?;
    }
    Ok(out)
}

/// Applies one in-order payload.
#[allow(clippy::too_many_arguments)]
fn apply(
    st: &mut State,
    pickle_key: &[u8; 32],
    auto_delay_mean: Duration,
    contact_id: u64,
    seq: u64,
    payload: Payload,
    timestamp: u64,
    notices: &mut Vec<Event>,
) -> Result<(), AgentError> {
    let entry_id = st.take_id();
    let c = st.contact_mut(contact_id).ok_or(StateError("contact"))?;
    let name = c.name.clone();
    let automatic_at = || now_ms().saturating_add(millis(auto_delay(auto_delay_mean)));
    match payload {
        Payload::Text(text) => c.inbox.push(InboxEntry {
            id: entry_id,
            seq,
            timestamp,
            text,
        }),
        Payload::Hello {
            invitation_id,
            reply_queue,
            envelope_key,
        } => {
            if c.send.is_some() || c.invitation_id != Some(invitation_id) {
                return Ok(());
            }
            let sender_key = Secret32::random();
            c.send = Some(SendQueue {
                queue: reply_queue.clone(),
                sender_key: sender_key.clone(),
                envelope_key,
            });
            c.connected = true;
            let at = automatic_at();
            push_item(
                st,
                contact_id,
                at,
                true,
                Action::Skey {
                    queue: reply_queue,
                    sender_key,
                },
            );
            enqueue_message(st, pickle_key, contact_id, Payload::Ready, at, true)?;
            notices.push(Event::Connected { contact: name });
        }
        Payload::Ready => {
            if !c.connected {
                c.connected = true;
                notices.push(Event::Connected { contact: name });
            }
        }
        Payload::NewQueue {
            queue,
            envelope_key,
        } => {
            if c.send.is_none() {
                return Ok(());
            }
            let sender_key = Secret32::random();
            c.send = Some(SendQueue {
                queue: queue.clone(),
                sender_key: sender_key.clone(),
                envelope_key,
            });
            let at = automatic_at();
            push_item(st, contact_id, at, true, Action::Skey { queue, sender_key });
            // Everything encrypted from here on goes to the new queue; SWITCHED tells the
            // contact that nothing later than it goes to the old one.
            enqueue_message(st, pickle_key, contact_id, Payload::Switched, at, true)?;
            notices.push(Event::Moved { contact: name });
        }
        Payload::Switched => {
            if c.recv.len() > 1 {
                let keep = c.recv.len() - 1;
                let old: Vec<RecvQueue> = c.recv.drain(..keep).collect();
                c.rotating = false;
                let at = automatic_at();
                for queue in old {
                    push_item(st, contact_id, at, true, Action::Delete { queue });
                }
                notices.push(Event::Rotated { contact: name });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodozemac::olm::Session;

    use super::super::state::PendingInvitation;

    const QUEUE: &str = "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@127.0.0.1:9#BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH";

    fn olm(session: &mut Session, seq: u64, payload: Payload) -> (u8, Vec<u8>) {
        let plain = Message { seq, payload }.encode().unwrap();
        let (t, b) = session.encrypt(plain.as_slice()).unwrap().to_parts();
        (t as u8, b)
    }

    fn inbox_texts(st: &State) -> Vec<String> {
        st.contacts[0]
            .inbox
            .iter()
            .map(|e| e.text.clone())
            .collect()
    }

    /// The inviter's state with a pending invitation (id 1) for "bob", and bob's session
    /// with his HELLO (seq 0) that answers it.
    fn invitation_and_hello(key: &[u8; 32]) -> (State, Session, u8, Vec<u8>) {
        let mut alice = Account::new();
        let otk = alice.generate_one_time_keys(1).created[0];
        let mut st = State::default();
        st.invitations.push(PendingInvitation {
            id: 1,
            invitation_id: [5; 16],
            name: "bob".into(),
            queue: RecvQueue {
                relay: "r".into(),
                recipient_id: [1; 24],
                sender_id: [2; 24],
                recipient_key: Secret32::new([3; 32]),
                dh_key: Secret32::new([4; 32]),
                relay_dh_key: [5; 32],
                envelope_key: Secret32::new([6; 32]),
            },
            account: alice.pickle().encrypt(key),
            link: String::new(),
        });
        st.next_id = 2;
        let bob = Account::new();
        let mut bob_session = bob
            .create_outbound_session(SessionConfig::version_1(), alice.curve25519_key(), otk)
            .unwrap();
        let hello = Payload::Hello {
            invitation_id: [5; 16],
            reply_queue: QUEUE.into(),
            envelope_key: Secret32::new([7; 32]),
        };
        let (t, hello) = olm(&mut bob_session, 0, hello);
        (st, bob_session, t, hello)
    }

    /// The inviter's side of a contact, driven without relays: set-up from a pre-key HELLO,
    /// then replayed, tampered and repeated messages.
    #[test]
    fn replayed_and_tampered_messages_are_never_shown() {
        let key = [9u8; 32];
        let (mut st, mut bob_session, t, hello) = invitation_and_hello(&key);
        // Garbage on the invitation's queue makes no contact.
        let out = process(
            &mut st,
            &key,
            Duration::ZERO,
            QueueOwner::Invitation(1),
            t,
            &[1, 2, 3],
            0,
        )
        .unwrap();
        assert!(matches!(
            out.notices[..],
            [Event::Rejected { contact: None }]
        ));
        assert!(st.contacts.is_empty());

        let out = process(
            &mut st,
            &key,
            Duration::ZERO,
            QueueOwner::Invitation(1),
            t,
            &hello,
            0,
        )
        .unwrap();
        assert_eq!(
            out.notices,
            vec![Event::Connected {
                contact: "bob".into()
            }]
        );
        assert!(st.invitations.is_empty());
        let id = st.contacts[0].id;
        // The inviter's SKEY and READY wait in the outbox (automatic sends).
        assert_eq!(st.outbox.len(), 2);
        assert!(st.outbox.iter().all(|i| i.automatic));

        let owner = QueueOwner::Contact(id);
        // The same HELLO again (a relay redelivery): recognised, nothing happens.
        let out = process(&mut st, &key, Duration::ZERO, owner, t, &hello, 0).unwrap();
        assert!(out.notices.is_empty());
        assert_eq!(st.outbox.len(), 2);

        let (t1, first) = olm(&mut bob_session, 1, Payload::Text("first".into()));
        process(&mut st, &key, Duration::ZERO, owner, t1, &first, 0).unwrap();
        assert_eq!(inbox_texts(&st), vec!["first"]);

        // Tampered: rejected, and the session is untouched (the real one still decrypts).
        let (t2, second) = olm(&mut bob_session, 2, Payload::Text("second".into()));
        let mut bad = second.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        let out = process(&mut st, &key, Duration::ZERO, owner, t2, &bad, 0).unwrap();
        assert_eq!(
            out.notices,
            vec![Event::Rejected {
                contact: Some("bob".into())
            }]
        );
        process(&mut st, &key, Duration::ZERO, owner, t2, &second, 0).unwrap();
        assert_eq!(inbox_texts(&st), vec!["first", "second"]);

        // A replay old enough to have left the digest window: Olm refuses the used key, and
        // it is dropped as quietly as a recognised one.
        st.contacts[0].seen.clear();
        let out = process(&mut st, &key, Duration::ZERO, owner, t1, &first, 0).unwrap();
        assert!(out.notices.is_empty());
        assert!(out.contact.is_none());
        assert_eq!(inbox_texts(&st), vec!["first", "second"]);

        // Out of order: 4 waits for 3, then both come out in order.
        let (t3, third) = olm(&mut bob_session, 3, Payload::Text("third".into()));
        let (t4, fourth) = olm(&mut bob_session, 4, Payload::Text("fourth".into()));
        process(&mut st, &key, Duration::ZERO, owner, t4, &fourth, 0).unwrap();
        assert_eq!(inbox_texts(&st).len(), 2);
        process(&mut st, &key, Duration::ZERO, owner, t3, &third, 0).unwrap();
        assert_eq!(inbox_texts(&st), vec!["first", "second", "third", "fourth"]);
    }

    /// After a relay crash undid the deletions of the last ACKs, the relay delivers those
    /// messages again, in order, before newer ones. Whether a message's digest is still in
    /// the window or not (its key then used up), nothing is shown, no notice is raised, and
    /// the contact keeps working.
    #[test]
    fn messages_delivered_again_after_a_relay_crash_are_dropped_quietly() {
        let key = [9u8; 32];
        let (mut st, mut bob_session, t, hello) = invitation_and_hello(&key);
        process(
            &mut st,
            &key,
            Duration::ZERO,
            QueueOwner::Invitation(1),
            t,
            &hello,
            0,
        )
        .unwrap();
        let owner = QueueOwner::Contact(st.contacts[0].id);
        let outbox = st.outbox.len();
        let n = state::MAX_SEEN as u64 + 40;
        let sent: Vec<(u8, Vec<u8>)> = (1..=n)
            .map(|seq| olm(&mut bob_session, seq, Payload::Text(format!("m{seq}"))))
            .collect();
        for (t, m) in &sent {
            let out = process(&mut st, &key, Duration::ZERO, owner, *t, m, 0).unwrap();
            assert!(out.notices.is_empty());
        }
        assert_eq!(inbox_texts(&st).len(), sent.len());
        // Shown (the agent empties the inbox once the texts are on screen).
        st.contacts[0].inbox.clear();

        // The HELLO and every text again: the oldest have left the digest window.
        let again = std::iter::once((t, hello)).chain(sent);
        for (t, m) in again {
            let out = process(&mut st, &key, Duration::ZERO, owner, t, &m, 0).unwrap();
            assert!(
                out.notices.is_empty(),
                "a redelivery raised {:?}",
                out.notices
            );
            assert!(out.contact.is_none(), "nothing to show");
        }
        assert!(inbox_texts(&st).is_empty(), "nothing shown twice");
        assert_eq!(st.outbox.len(), outbox, "no READY or SKEY again");

        let (t, next) = olm(&mut bob_session, n + 1, Payload::Text("next".into()));
        let out = process(&mut st, &key, Duration::ZERO, owner, t, &next, 0).unwrap();
        assert!(out.notices.is_empty());
        assert_eq!(inbox_texts(&st), vec!["next"]);
    }
}
