//! Security checks: every command a party may not issue is refused and changes nothing;
//! a signature only counts in the session it was made for; guessed ids get AUTH like any
//! other stranger; and no secret appears in `Debug` output, in the relay's logs (at
//! `RUST_LOG=trace`, the real binary) or in its metrics.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use common::process;
use common::raw::RawSession;
use common::*;
use sotto_protocol::{
    AuthSecretKey, Command, CorrId, DhSecretKey, EntityId, ErrorCode, MessageId, RecipientId,
    RelayStaticKey, Response, SenderId, Transmission,
};
use sotto_transport::{ClientError, Pushed, QueueCredentials, RelayClient};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Relay(c)) => c,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// What the store holds about a queue: (exists, secured, active, message count).
fn state(relay: &TestRelay, creds: &QueueCredentials) -> (bool, bool, bool, usize) {
    let store = &relay.running().store;
    match store.queue(&creds.recipient_id).unwrap() {
        None => (false, false, false, 0),
        Some((q, rec)) => (
            true,
            rec.sender_key.is_some(),
            rec.status == sotto_relay::store::QueueStatus::Active,
            store.message_count(&q).unwrap(),
        ),
    }
}

fn random_id() -> [u8; 24] {
    let mut b = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    b
}

// ---------------------------------------------------------------------------------------
// The refusal matrix
// ---------------------------------------------------------------------------------------

const RECIPIENT_COMMANDS: [&str; 6] = ["SUB", "GET", "ACK", "OFF", "DEL", "KEY"];

fn recipient_command(name: &str) -> Command {
    match name {
        "SUB" => Command::Sub,
        "GET" => Command::Get,
        "ACK" => Command::Ack {
            msg_id: MessageId(random_id()),
        },
        "OFF" => Command::Off,
        "DEL" => Command::Del,
        "KEY" => Command::Key {
            sender_key: AuthSecretKey::generate(&mut rand::rngs::OsRng).public(),
        },
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_a_party_may_not_issue_is_refused_and_changes_nothing() {
    let relay = TestRelay::start().await;
    let (c, _pushes, _e) = connect(&relay.address()).await;
    // A secured queue with one message waiting, and an unsecured one.
    let secured = c.create_queue(None).await.unwrap();
    let sender_key = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    c.secure(&secured, sender_key.public()).await.unwrap();
    c.send(secured.sender_id, Some(&sender_key), 0, b"waiting".to_vec())
        .await
        .unwrap();
    let open = c.create_queue(None).await.unwrap();
    let other = c.create_queue(None).await.unwrap();
    let before = (state(&relay, &secured), state(&relay, &open));
    assert_eq!(before.0, (true, true, true, 1));

    let mut refusals = 0;
    for name in RECIPIENT_COMMANDS {
        // The sender doing a recipient's command: on its own id, signed with its key…
        let r = c
            .request(
                Some(secured.sender_id.into()),
                recipient_command(name),
                Some(&sender_key),
            )
            .await;
        assert_eq!(code(r), ErrorCode::Auth, "sender {name} on the sender id");
        // …or on the recipient id (had it leaked), signed with the sender's key.
        let r = c
            .request(
                Some(secured.recipient_id.into()),
                recipient_command(name),
                Some(&sender_key),
            )
            .await;
        assert_eq!(
            code(r),
            ErrorCode::Auth,
            "sender {name} on the recipient id"
        );
        // The recipient's command unsigned.
        let r = c
            .request(
                Some(secured.recipient_id.into()),
                recipient_command(name),
                None,
            )
            .await;
        assert_eq!(code(r), ErrorCode::Auth, "unsigned {name}");
        // Signed by another queue's recipient.
        let r = c
            .request(
                Some(secured.recipient_id.into()),
                recipient_command(name),
                Some(&other.recipient_key),
            )
            .await;
        assert_eq!(
            code(r),
            ErrorCode::Auth,
            "{name} signed by another recipient"
        );
        // A guessed recipient id, signed with a real recipient key.
        let r = c
            .request(
                Some(RecipientId(random_id()).into()),
                recipient_command(name),
                Some(&secured.recipient_key),
            )
            .await;
        assert_eq!(code(r), ErrorCode::Auth, "{name} on a random id");
        refusals += 5;
    }
    // SEND to a secured queue: unsigned, signed by the wrong key, by the recipient's key.
    for key in [
        None,
        Some(AuthSecretKey::generate(&mut rand::rngs::OsRng)),
        Some(secured.recipient_key.clone()),
    ] {
        let r = c
            .send(secured.sender_id, key.as_ref(), 0, b"forged".to_vec())
            .await;
        assert_eq!(code(r), ErrorCode::Auth);
        refusals += 1;
    }
    // SEND, signed or not, to guessed sender ids.
    for key in [None, Some(&sender_key)] {
        let r = c
            .send(SenderId(random_id()), key, 0, b"guess".to_vec())
            .await;
        assert_eq!(code(r), ErrorCode::Auth);
        refusals += 1;
    }
    // SKEY on a queue that is already secured, and on a guessed id.
    let intruder = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    assert_eq!(
        code(c.sender_secure(secured.sender_id, &intruder).await),
        ErrorCode::Prohibited
    );
    assert_eq!(
        code(c.sender_secure(SenderId(random_id()), &intruder).await),
        ErrorCode::Auth
    );
    // SKEY signed by a key other than the one it installs (no proof of possession).
    let r = c
        .request(
            Some(open.sender_id.into()),
            Command::SKey {
                sender_key: intruder.public(),
            },
            Some(&sender_key),
        )
        .await;
    assert_eq!(code(r), ErrorCode::Auth);
    refusals += 3;

    // Nothing changed: both queues exist, as secured/active as before, the message is there.
    assert_eq!(
        (state(&relay, &secured), state(&relay, &open)),
        before,
        "a refused command changed state"
    );
    assert_eq!(c.get(&secured).await.unwrap().unwrap().body, b"waiting");
    println!("refusal matrix: {refusals} refused commands, state unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_counts_only_in_its_own_session() {
    let relay = TestRelay::start().await;
    let (a, _pa, _ea) = connect(&relay.address()).await;
    let creds = a.create_queue(None).await.unwrap();
    let sender_key = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    a.secure(&creds, sender_key.public()).await.unwrap();
    let hash_a = a.handshake_hash();

    let mut b = RawSession::open(&relay).await;
    assert_ne!(b.hash(), hash_a);
    let rid: EntityId = creds.recipient_id.into();
    let sid: EntityId = creds.sender_id.into();
    let before = state(&relay, &creds);

    // Signed for session A, submitted in session B: every recipient command and SEND.
    let mut corr = 1u64;
    for name in RECIPIENT_COMMANDS {
        let t = Transmission::signed(
            CorrId::from_u64(corr),
            Some(rid),
            &recipient_command(name),
            &creds.recipient_key,
            &hash_a,
        );
        corr += 1;
        assert_eq!(
            b.request(t).await,
            Response::Err(ErrorCode::Auth),
            "{name} with session A's signature in session B"
        );
    }
    let send = Command::Send {
        flags: 0,
        body: b"replayed".to_vec(),
    };
    let t = Transmission::signed(
        CorrId::from_u64(corr),
        Some(sid),
        &send,
        &sender_key,
        &hash_a,
    );
    corr += 1;
    assert_eq!(b.request(t).await, Response::Err(ErrorCode::Auth));
    assert_eq!(
        state(&relay, &creds),
        before,
        "a replayed signature changed state"
    );

    // The control: the same commands signed for session B are accepted there.
    let t = Transmission::signed(
        CorrId::from_u64(corr),
        Some(sid),
        &send,
        &sender_key,
        &b.hash(),
    );
    corr += 1;
    assert_eq!(b.request(t).await, Response::Ok);
    let t = Transmission::signed(
        CorrId::from_u64(corr),
        Some(rid),
        &Command::Get,
        &creds.recipient_key,
        &b.hash(),
    );
    assert!(matches!(b.request(t).await, Response::Msg { .. }));
}

/// An ACK may go unsigned only on a subscription its own session holds (the SUB's signature
/// bound the recipient key to that session): elsewhere, and after the subscription moved to
/// another session, an unsigned ACK is refused with AUTH and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_ack_counts_only_on_its_own_sessions_subscription() {
    let relay = TestRelay::start().await;
    let (a, mut pushes, _ea) = connect(&relay.address()).await;
    let (sender, _ps, _es) = connect(&relay.address()).await;
    let creds = a.create_queue(None).await.unwrap();
    for body in [b"one", b"two"] {
        sender
            .send(creds.sender_id, None, 0, body.to_vec())
            .await
            .unwrap();
    }
    let rid: EntityId = creds.recipient_id.into();
    a.subscribe(&creds).await.unwrap();
    let Pushed::Msg { msg: first, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG")
    };

    // Session B holds no subscription: its unsigned ACK of the message in flight is refused.
    let mut b = RawSession::open(&relay).await;
    let ack = |corr: u64, msg_id| {
        Transmission::command(CorrId::from_u64(corr), Some(rid), &Command::Ack { msg_id })
    };
    assert_eq!(
        b.request(ack(1, first.msg_id)).await,
        Response::Err(ErrorCode::Auth)
    );
    assert_eq!(state(&relay, &creds).3, 2, "nothing was deleted");

    // A holds the subscription: its unsigned ACK deletes the message and the next one comes.
    let r = a
        .request(
            Some(rid),
            Command::Ack {
                msg_id: first.msg_id,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(r, Response::Ok);
    let Pushed::Msg { msg: second, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG")
    };
    assert_eq!(second.open(&creds).unwrap().body, b"two");

    // B takes the subscription over (signed SUB): A gets END and its unsigned ACK is refused.
    let sub = Transmission::signed(
        CorrId::from_u64(2),
        Some(rid),
        &Command::Sub,
        &creds.recipient_key,
        &b.hash(),
    );
    assert_eq!(b.request(sub).await, Response::Ok);
    assert!(matches!(next_push(&mut pushes).await, Pushed::End { .. }));
    assert_eq!(
        code(
            a.request(
                Some(rid),
                Command::Ack {
                    msg_id: second.msg_id
                },
                None
            )
            .await
        ),
        ErrorCode::Auth
    );
    // The client library knows the subscription ended and signs: the message is not in
    // flight on A any more, so NO_MSG, and it stays for B.
    assert!(!a.ack(&creds, second.msg_id).await.unwrap());
    // Deletions commit with the next write at the latest (writes commit in order): once a
    // later SEND is answered, the first ACK's deletion is on disk.
    let other = a.create_queue(None).await.unwrap();
    sender
        .send(other.sender_id, None, 0, b"later".to_vec())
        .await
        .unwrap();
    assert_eq!(state(&relay, &creds).3, 1, "the message B was sent stays");
}

/// The relay may hold an ACK's answer for a frame to ride in, but answers on one queue still
/// come in the order of their commands: ACK then OFF in one frame are answered ACK first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_ack_answer_keeps_its_place_among_the_queues_answers() {
    let relay = TestRelay::start().await;
    let (a, _pa, _ea) = connect(&relay.address()).await;
    let creds = a.create_queue(None).await.unwrap();
    a.send(creds.sender_id, None, 0, b"only".to_vec())
        .await
        .unwrap();
    let rid: EntityId = creds.recipient_id.into();
    let mut b = RawSession::open(&relay).await;
    let signed = |corr: u64, cmd: &Command, hash: &[u8; 32]| {
        Transmission::signed(
            CorrId::from_u64(corr),
            Some(rid),
            cmd,
            &creds.recipient_key,
            hash,
        )
    };
    let is_msg = |t: &Transmission| matches!(t.decode_response(), Ok(Response::Msg { .. }));
    let got = b
        .exchange(&[signed(1, &Command::Sub, &b.hash())], |got| {
            got.iter().any(is_msg)
        })
        .await;
    let Some(Response::Msg { msg_id, .. }) = got
        .iter()
        .find(|t| is_msg(t))
        .map(|t| t.decode_response().unwrap())
    else {
        panic!("expected MSG")
    };
    let ack = Transmission::command(CorrId::from_u64(2), Some(rid), &Command::Ack { msg_id });
    let off = signed(3, &Command::Off, &b.hash());
    let answered = |got: &[Transmission], corr: u64| {
        got.iter().position(|t| t.corr_id == CorrId::from_u64(corr))
    };
    let got = b
        .exchange(&[ack, off], |got| {
            answered(got, 2).is_some() && answered(got, 3).is_some()
        })
        .await;
    let (ack_at, off_at) = (answered(&got, 2).unwrap(), answered(&got, 3).unwrap());
    assert_eq!(got[ack_at].decode_response().unwrap(), Response::Ok);
    assert_eq!(got[off_at].decode_response().unwrap(), Response::Ok);
    assert!(ack_at < off_at, "the ACK's answer came after the OFF's");
    assert_eq!(state(&relay, &creds).3, 0, "the ACK deleted the message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessed_ids_at_scale_find_nothing() {
    // A thousand random recipient and sender ids: all AUTH, like any stranger, and the
    // queue that does exist is untouched.
    let relay = TestRelay::start_with(|c| c.limits.commands_per_session_per_s = 100_000).await;
    let (c, _p, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    let key = creds.recipient_key.clone();
    let before = state(&relay, &creds);
    let guesses = (0..500).map(|_| {
        let c = c.clone();
        let key = key.clone();
        async move {
            let r1 = c
                .request(
                    Some(RecipientId(random_id()).into()),
                    Command::Get,
                    Some(&key),
                )
                .await;
            let r2 = c
                .send(SenderId(random_id()), None, 0, b"guess".to_vec())
                .await;
            (code(r1), code(r2))
        }
    });
    for (a, b) in futures_util::future::join_all(guesses).await {
        assert_eq!((a, b), (ErrorCode::Auth, ErrorCode::Auth));
    }
    assert_eq!(state(&relay, &creds), before);
    assert_eq!(relay.running().store.counts().unwrap(), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_relay_refuses_new_without_its_password() {
    let relay = TestRelay::start_with(|c| c.create_password = "correct horse".into()).await;
    let (c, _p, _e) = connect(&relay.address()).await;
    assert_eq!(code(c.create_queue(None).await), ErrorCode::Auth);
    assert_eq!(code(c.create_queue(Some(b"wrong")).await), ErrorCode::Auth);
    assert_eq!(relay.running().store.counts().unwrap(), (0, 0));
    c.create_queue(Some(b"correct horse")).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Secrets never printed
// ---------------------------------------------------------------------------------------

/// Every text form a secret's bytes could take in a log line or `Debug` output.
fn forms(bytes: &[u8]) -> Vec<String> {
    vec![
        URL_SAFE_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        hex::encode(bytes),
        hex::encode_upper(bytes),
        format!("{bytes:?}"),
        // A prefix long enough to identify the secret (some printers truncate).
        hex::encode(&bytes[..bytes.len().min(8)]),
    ]
}

fn assert_hides(what: &str, text: &str, secret: &[u8]) {
    for f in forms(secret) {
        assert!(!text.contains(&f), "{what} shows a secret ({f}) in: {text}");
    }
}

#[test]
fn debug_output_of_secret_bearing_types_shows_no_secret() {
    let mut rng = rand::rngs::OsRng;
    let auth = AuthSecretKey::generate(&mut rng);
    assert_hides("AuthSecretKey", &format!("{auth:?}"), &*auth.to_bytes());
    let dh = DhSecretKey::generate(&mut rng);
    assert_hides("DhSecretKey", &format!("{dh:?}"), &*dh.to_bytes());
    let relay_key = RelayStaticKey::generate(&mut rng);
    assert_hides(
        "RelayStaticKey",
        &format!("{relay_key:?}"),
        relay_key.secret_bytes(),
    );
    let seal =
        sotto_protocol::seal::BodySealKey::derive(&dh, &DhSecretKey::generate(&mut rng).public())
            .unwrap();
    assert_hides("BodySealKey", &format!("{seal:?}"), seal.as_bytes());
    let storage = sotto_relay::store::StorageKey::generate(&mut rng);
    assert_hides("StorageKey", &format!("{storage:?}"), storage.as_bytes());

    // The relay's identity as loaded from a data directory.
    let dir = tempfile::tempdir().unwrap();
    sotto_relay::datadir::init(dir.path(), &Default::default()).unwrap();
    let id = sotto_relay::datadir::load_identity(dir.path()).unwrap();
    let text = format!("{id:?}");
    assert_hides("Identity", &text, id.relay_key.secret_bytes());
    assert_hides("Identity", &text, id.storage_key.as_bytes());
    assert_hides("Identity", &text, &id.tls_key);

    // A queue record as stored: ids, keys and the seal key hidden.
    let rec = sotto_relay::store::QueueRecord {
        recipient_id: RecipientId(random_id()),
        sender_id: SenderId(random_id()),
        recipient_key: auth.public(),
        sender_key: Some(AuthSecretKey::generate(&mut rng).public()),
        relay_dh_public: dh.public(),
        seal_key: seal.clone(),
        status: sotto_relay::store::QueueStatus::Active,
        created_at: 1,
        last_active: 1,
    };
    let text = format!("{rec:?}");
    assert_hides("QueueRecord", &text, rec.recipient_id.as_bytes());
    assert_hides("QueueRecord", &text, rec.sender_id.as_bytes());
    assert_hides("QueueRecord", &text, seal.as_bytes());
    let msg_id = MessageId(random_id());
    let msg = sotto_relay::store::NewMessage {
        msg_id,
        timestamp: 0,
        received_ms: 0,
        release_at_ms: 0,
        flags: 0,
        body: sotto_relay::store::SealedBody::seal(&seal, &msg_id, b"MARKER secret body"),
    };
    let text = format!("{msg:?}");
    assert_hides("NewMessage", &text, msg.msg_id.as_bytes());
    assert_hides("NewMessage", &text, msg.body.as_bytes());
    assert!(!text.contains("MARKER"), "{text}");
    let text = format!("{:?}", msg.body);
    assert_hides("SealedBody", &text, msg.body.as_bytes());
}

/// The relay's configuration holds a secret (the create password of a private relay).
#[test]
fn config_debug_hides_the_create_password() {
    let mut config = sotto_relay::config::Config::default();
    config.create_password = "MARKER-create-password".into();
    let text = format!("{config:?}");
    assert!(
        !text.contains("MARKER-create-password"),
        "Config's Debug shows create_password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_debug_output_shows_no_secret() {
    let relay = TestRelay::start().await;
    let (c, mut pushes, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    let text = format!("{creds:?} {c:?}");
    assert_hides("QueueCredentials", &text, &*creds.recipient_key.to_bytes());
    assert_hides("QueueCredentials", &text, &*creds.dh_key.to_bytes());
    assert_hides("QueueCredentials", &text, creds.seal_key.as_bytes());
    assert_hides("QueueCredentials", &text, creds.recipient_id.as_bytes());
    assert_hides("QueueCredentials", &text, creds.sender_id.as_bytes());
    assert_hides("RelayClient", &text, &c.handshake_hash());
    c.send(creds.sender_id, None, 0, b"MARKER body".to_vec())
        .await
        .unwrap();
    c.subscribe(&creds).await.unwrap();
    let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG")
    };
    let opened = msg.open(&creds).unwrap();
    let text = format!("{msg:?} {opened:?}");
    assert!(!text.contains("MARKER"), "{text}");
    assert_hides("ReceivedMessage", &text, opened.msg_id.as_bytes());
}

// ---------------------------------------------------------------------------------------
// Logs and metrics of a full run
// ---------------------------------------------------------------------------------------

/// Drives every command against the relay process from 127.0.0.2 and returns every
/// secret and identifier the run created.
async fn full_session(addr: &sotto_protocol::RelayAddress) -> Vec<(String, Vec<u8>)> {
    use sotto_transport::{self as transport, QuicOptions};
    let ep = transport::client_endpoint("127.0.0.2:0".parse().unwrap(), &QuicOptions::default())
        .unwrap();
    let (c, mut pushes) = RelayClient::connect(&ep, addr, &client_options())
        .await
        .unwrap();
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    let creds = c.create_queue(None).await.unwrap();
    let sender_key = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    c.secure(&creds, sender_key.public()).await.unwrap();
    let body = b"MARKER-7f3a-secret-message-body".to_vec();
    c.send(creds.sender_id, Some(&sender_key), 0, body.clone())
        .await
        .unwrap();
    c.subscribe(&creds).await.unwrap();
    let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG")
    };
    let opened = msg.open(&creds).unwrap();
    assert!(c.ack(&creds, opened.msg_id).await.unwrap());
    c.send(creds.sender_id, Some(&sender_key), 0, body.clone())
        .await
        .unwrap();
    let Pushed::Msg { msg: msg2, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG")
    };
    assert!(c.ack(&creds, msg2.msg_id).await.unwrap());
    // A queue secured from the sender's side, refusals, OFF and DEL.
    let second = c.create_queue(None).await.unwrap();
    let second_sender = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    c.sender_secure(second.sender_id, &second_sender)
        .await
        .unwrap();
    let wrong = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    assert!(
        c.send(second.sender_id, Some(&wrong), 0, body.clone())
            .await
            .is_err()
    );
    assert!(
        c.request(Some(second.recipient_id.into()), Command::Get, Some(&wrong))
            .await
            .is_err()
    );
    c.off(&second).await.unwrap();
    c.delete(&second).await.unwrap();
    assert!(c.get(&creds).await.unwrap().is_none());
    c.ping().await.unwrap();

    for (name, q, sk) in [
        ("queue 1", &creds, &sender_key),
        ("queue 2", &second, &second_sender),
    ] {
        secrets.push((format!("{name} recipient id"), q.recipient_id.0.to_vec()));
        secrets.push((format!("{name} sender id"), q.sender_id.0.to_vec()));
        secrets.push((
            format!("{name} recipient auth secret"),
            q.recipient_key.to_bytes().to_vec(),
        ));
        secrets.push((
            format!("{name} recipient auth public"),
            q.recipient_key.public().to_bytes().to_vec(),
        ));
        secrets.push((
            format!("{name} recipient DH secret"),
            q.dh_key.to_bytes().to_vec(),
        ));
        secrets.push((
            format!("{name} recipient DH public"),
            q.dh_key.public().0.to_vec(),
        ));
        secrets.push((format!("{name} relay DH public"), q.relay_dh_key.0.to_vec()));
        secrets.push((format!("{name} seal key"), q.seal_key.as_bytes().to_vec()));
        secrets.push((format!("{name} sender auth secret"), sk.to_bytes().to_vec()));
        secrets.push((
            format!("{name} sender auth public"),
            sk.public().to_bytes().to_vec(),
        ));
    }
    secrets.push(("message id 1".into(), opened.msg_id.0.to_vec()));
    secrets.push(("message id 2".into(), msg2.msg_id.0.to_vec()));
    secrets.push(("sealed body".into(), msg.sealed_body.clone()));
    secrets.push(("body".into(), body));
    secrets.push(("session handshake hash".into(), c.handshake_hash().to_vec()));
    c.close().await;
    ep.wait_idle().await;
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_and_exports_no_key_id_or_body() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut cmd =
        process::relay_command(&data, &["--listen", "127.0.0.1:0", "--metrics", &metrics]);
    cmd.env("RUST_LOG", "trace")
        .env("SOTTO_RELAY_DELIVERY_MEAN", "20ms")
        .env("SOTTO_RELAY_DELIVERY_CAP", "100ms");
    // The suite may run with a delivery mode set (the over-TCP and CI variants): keep it.
    for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("SOTTO_RELAY_DELIVERY_MODE")) {
        cmd.env(k, v);
    }
    let relay = process::spawn(cmd, &data).unwrap_or_else(|e| panic!("relay did not start: {e}"));
    let addr = relay.address.clone();

    let mut secrets = full_session(&addr).await;
    // The relay's own secrets, from its data directory.
    for f in ["relay.key", "storage.key"] {
        let text = std::fs::read_to_string(data.join(f)).unwrap();
        secrets.push((f.into(), URL_SAFE_NO_PAD.decode(text.trim()).unwrap()));
    }
    secrets.push((
        "tls.key".into(),
        std::fs::read(data.join("tls.key")).unwrap(),
    ));

    // Metrics, scraped while the relay runs.
    let scrape = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).await.unwrap();
        r
    };
    assert!(scrape.contains("sotto_commands_total"), "{scrape}");

    // SIGTERM, then the logs.
    let (status, log) = relay.terminate();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("session open"),
        "the log was not at debug level:\n{log}"
    );
    assert!(!log.contains("127.0.0.2"), "the client's address is logged");
    let mut checked = 0;
    for (name, bytes) in &secrets {
        for f in forms(bytes) {
            assert!(!log.contains(&f), "the log shows {name}");
            assert!(!scrape.contains(&f), "/metrics shows {name}");
            checked += 1;
        }
    }
    assert!(!log.contains("MARKER"), "a message body is logged");
    println!(
        "log privacy: {} log lines and {} metric lines checked against {} secrets ({checked} forms)",
        log.lines().count(),
        scrape.lines().count(),
        secrets.len()
    );
}
