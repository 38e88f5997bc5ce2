//! Private routing (FWD / RFWD, `docs/protocol.md` § 10a) between real relays.
//!
//! Relay A (the forwarding relay) listens on 127.0.0.3, the sending client binds 127.0.0.2
//! and relay B (the destination) 127.0.0.1, so the three addresses can be told apart in
//! B's log. Most tests run both relays in-process; the log test runs them as the real
//! `sotto-relay` binary and reads what they write to stderr.
// Test helpers (here and in `common`) unwrap freely: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::process::{self, RelayProcess};
use common::*;
use sotto_protocol::command::SEALED_LEN;
use sotto_protocol::forward::{AnswerKey, MAX_EXPIRY_AHEAD_S, Sealer};
use sotto_protocol::{
    AuthSecretKey, Command as Cmd, CorrId, EntityId, ErrorCode, RelayAddress, RelayStaticKey,
    Response, SenderId, Transmission,
};
use sotto_relay::config::Config;
use sotto_transport::{self as transport, QuicOptions};
use sotto_transport::{ClientError, Pushed, QueueCredentials, RelayClient};
use tokio::sync::mpsc;

/// Relay A: on 127.0.0.3, forwarding to loopback destinations (the test's relays).
fn forwarder(c: &mut Config) {
    c.listen = "127.0.0.3:0".parse().unwrap();
    c.host = "127.0.0.3".into();
    c.forwarding.allow_private = true;
    // Short, so that an unreachable destination fails the test quickly; not a threshold.
    c.forwarding.connect_timeout = Duration::from_secs(2);
}

/// A client bound to 127.0.0.2, connected to `addr`.
async fn client_from_2(
    addr: &RelayAddress,
) -> (RelayClient, mpsc::Receiver<Pushed>, quinn::Endpoint) {
    let ep = transport::client_endpoint("127.0.0.2:0".parse().unwrap(), &QuicOptions::default())
        .unwrap();
    let (c, rx) = RelayClient::connect(&ep, addr, &client_options())
        .await
        .unwrap();
    (c, rx, ep)
}

fn relay_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Relay(code)) => code,
        other => panic!("expected a relay error, got {other:?}"),
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A SEND sealed to `dest` by hand (so that the test holds the blob to replay it).
fn seal_send(
    dest: &RelayAddress,
    sender_id: SenderId,
    body: &[u8],
    expiry: u64,
) -> (Vec<u8>, AnswerKey, CorrId) {
    let corr = CorrId::from_u64(77);
    let cmd = Cmd::Send {
        flags: 0,
        body: body.to_vec(),
    };
    let (sealed, key) = Sealer::start(&dest.key)
        .unwrap()
        .seal_command(expiry, corr, Some(EntityId::from(sender_id)), &cmd, None)
        .unwrap();
    assert_eq!(sealed.len(), SEALED_LEN);
    (sealed, key, corr)
}

/// Opens a FWD_ANSWER and returns the destination's answer to the inner command.
fn open_answer(r: Response, key: &AnswerKey, corr: CorrId) -> Response {
    let Response::FwdAnswer { sealed } = r else {
        panic!("expected FWD_ANSWER, got {r:?}");
    };
    let t: Transmission = key.open(&sealed).unwrap();
    assert_eq!(t.corr_id, corr);
    t.decode_response().unwrap()
}

fn fwd(dest: &RelayAddress, sealed: &[u8]) -> Cmd {
    Cmd::Fwd {
        relay: dest.clone(),
        sealed: sealed.to_vec(),
    }
}

fn command_count(relay: &TestRelay, name: &str) -> u64 {
    relay
        .running()
        .metrics
        .commands
        .with_label_values(&[name])
        .get()
}

fn message_count(relay: &TestRelay, creds: &QueueCredentials) -> usize {
    let store = &relay.running().store;
    store
        .message_count(&store.queue_ref(&creds.recipient_id))
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Delivery through A
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_sender_keys_sent_through_a_reach_a_queue_on_b() {
    let b = TestRelay::start().await;
    let a = TestRelay::start_with(forwarder).await;
    let (recipient, mut pushes, _e1) = connect(&b.address()).await;
    let creds = recipient.create_queue(None).await.unwrap();
    recipient.subscribe(&creds).await.unwrap();

    let (sender, _p, _e2) = client_from_2(&a.address()).await;
    sender
        .send_through(
            &b.address(),
            creds.sender_id,
            None,
            1,
            b"hello through A".to_vec(),
        )
        .await
        .unwrap();
    let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG");
    };
    let got = msg.open(&creds).unwrap();
    assert_eq!(got.body, b"hello through A");
    assert_eq!(got.flags, 1);
    assert!(recipient.ack(&creds, got.msg_id).await.unwrap());

    // The sender secures the queue through A; its signatures bind the sealed request.
    let key = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    sender
        .sender_secure_through(&b.address(), creds.sender_id, &key)
        .await
        .unwrap();
    assert_eq!(
        relay_err(
            sender
                .send_through(&b.address(), creds.sender_id, None, 0, b"unsigned".to_vec())
                .await
        ),
        ErrorCode::Auth,
        "the destination's own answer comes back sealed"
    );
    let other = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    assert_eq!(
        relay_err(
            sender
                .send_through(
                    &b.address(),
                    creds.sender_id,
                    Some(&other),
                    0,
                    b"x".to_vec()
                )
                .await
        ),
        ErrorCode::Auth
    );
    sender
        .send_through(
            &b.address(),
            creds.sender_id,
            Some(&key),
            0,
            b"signed".to_vec(),
        )
        .await
        .unwrap();
    let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG");
    };
    assert_eq!(msg.open(&creds).unwrap().body, b"signed");

    // A sent RFWD (never FWD) and received none; B executed them.
    assert_eq!(command_count(&a, "FWD"), 5);
    assert_eq!(command_count(&a, "RFWD"), 0);
    assert_eq!(command_count(&b, "RFWD"), 5);
    assert_eq!(command_count(&b, "FWD"), 0);
}

/// A holds each FWD for its forwarding delay (§ 10a.3 step 3), end to end with real relays:
/// the FWD still succeeds, and A counts the delay it waited out. (The other tests here run
/// A without a delay; the binary relays of the log test below keep the default 1 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_waits_out_its_delay_and_still_succeeds() {
    let b = TestRelay::start().await;
    let a = TestRelay::start_with(|c| {
        forwarder(c);
        c.forwarding.delay_mean = Duration::from_millis(200);
        c.forwarding.delay_cap = Duration::from_secs(2);
    })
    .await;
    let (recipient, _pushes, _e1) = connect(&b.address()).await;
    let creds = recipient.create_queue(None).await.unwrap();
    let (sender, _p, _e2) = client_from_2(&a.address()).await;
    for body in [b"first".to_vec(), b"second".to_vec()] {
        sender
            .send_through(&b.address(), creds.sender_id, None, 0, body)
            .await
            .unwrap();
    }
    assert_eq!(message_count(&b, &creds), 2);
    let m = &a.running().metrics;
    assert_eq!(m.forward_delay_seconds.get_sample_count(), 2);
    assert_eq!(m.forward_delayed.get(), 0);
    assert_eq!(m.forward_delays_cut.get(), 0);
    // Only the forwarding relay delays; the destination executes at once.
    let m = &b.running().metrics;
    assert_eq!(m.forward_delay_seconds.get_sample_count(), 0);
}

// ---------------------------------------------------------------------------------------
// Replays
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_forward_is_refused_via_a_and_directly_and_delivers_once() {
    let mut b = TestRelay::start().await;
    let a = TestRelay::start_with(forwarder).await;
    let (recipient, _pushes, _e1) = connect(&b.address()).await;
    let creds = recipient.create_queue(None).await.unwrap();
    let (sender, _p, _e2) = client_from_2(&a.address()).await;

    let (sealed, key, corr) = seal_send(&b.address(), creds.sender_id, b"once", now_s() + 300);
    let r = sender.request(None, fwd(&b.address(), &sealed), None).await;
    assert_eq!(open_answer(r.unwrap(), &key, corr), Response::Ok);
    assert_eq!(message_count(&b, &creds), 1);

    // The captured blob again, through A and straight to B: refused, no effect.
    let again = sender.request(None, fwd(&b.address(), &sealed), None).await;
    assert_eq!(relay_err(again), ErrorCode::Replay);
    let (direct, _p3, _e3) = connect(&b.address()).await;
    let rfwd = || Cmd::RFwd {
        sealed: sealed.clone(),
    };
    assert_eq!(
        relay_err(direct.request(None, rfwd(), None).await),
        ErrorCode::Replay
    );
    direct.close().await;

    // The replay memory survives a restart of B.
    b.restart().await;
    let (direct, _p4, _e4) = connect(&b.address()).await;
    assert_eq!(
        relay_err(direct.request(None, rfwd(), None).await),
        ErrorCode::Replay
    );

    // Expired, and expiring too far ahead: refused before execution.
    for expiry in [now_s() - 1, now_s() + MAX_EXPIRY_AHEAD_S + 120] {
        let (sealed, _, _) = seal_send(&b.address(), creds.sender_id, b"late", expiry);
        let r = direct.request(None, Cmd::RFwd { sealed }, None).await;
        assert_eq!(relay_err(r), ErrorCode::Replay, "expiry {expiry}");
    }
    // A blob sealed to another relay's key does not open at B.
    let stranger = RelayAddress {
        key: RelayStaticKey::generate(&mut rand::rngs::OsRng).public(),
        ..b.address()
    };
    let (sealed, _, _) = seal_send(&stranger, creds.sender_id, b"not for B", now_s() + 300);
    let r = direct.request(None, Cmd::RFwd { sealed }, None).await;
    assert_eq!(relay_err(r), ErrorCode::Auth);

    // Delivered exactly once.
    assert_eq!(message_count(&b, &creds), 1);
    let got = recipient_get(&b, &creds).await;
    assert_eq!(got, vec![b"once".to_vec()]);
}

/// Every message in the queue, fetched and acknowledged on a fresh session.
async fn recipient_get(b: &TestRelay, creds: &QueueCredentials) -> Vec<Vec<u8>> {
    let (c, _p, _e) = connect(&b.address()).await;
    let creds = QueueCredentials {
        relay: b.address(),
        ..creds.clone()
    };
    let mut out = Vec::new();
    while let Some(m) = c.get(&creds).await.unwrap() {
        out.push(m.body.clone());
        assert!(c.ack(&creds, m.msg_id).await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------
// Failures of the destination
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_is_down_is_a_clear_error_and_nothing_is_sent() {
    let mut b = TestRelay::start().await;
    let a = TestRelay::start_with(forwarder).await;
    let (recipient, _pushes, _e1) = connect(&b.address()).await;
    let creds = recipient.create_queue(None).await.unwrap();
    recipient.close().await;
    let b_address = b.address();
    b.stop().await;

    let (sender, _p, _e2) = client_from_2(&a.address()).await;
    let r = sender
        .send_through(&b_address, creds.sender_id, None, 0, b"lost?".to_vec())
        .await;
    // Its UDP port is closed: no answer to the connection (QUIC ignores ICMP), so no
    // session and no RFWD — nothing was forwarded, which UNREACHABLE says (§ 10a.3, § 10a.7),
    // not TIMEOUT ("outcome unknown").
    assert_eq!(relay_err(r), ErrorCode::Unreachable);
    // The session with A is unharmed.
    sender.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_presenting_another_key_is_refused_with_identity() {
    let mut b = TestRelay::start().await;
    let a = TestRelay::start_with(forwarder).await;
    let (recipient, _pushes, _e1) = connect(&b.address()).await;
    let creds = recipient.create_queue(None).await.unwrap();
    recipient.close().await;
    let (sender, _p, _e2) = client_from_2(&a.address()).await;

    // An address that pins another key than the relay at its host and port holds.
    let wrong = RelayAddress {
        key: RelayStaticKey::generate(&mut rand::rngs::OsRng).public(),
        ..b.address()
    };
    let r = sender
        .send_through(&wrong, creds.sender_id, None, 0, b"x".to_vec())
        .await;
    assert_eq!(relay_err(r), ErrorCode::Identity);

    // B replaced by another relay (another key) at the same address: refused too.
    sender
        .send_through(&b.address(), creds.sender_id, None, 0, b"1".to_vec())
        .await
        .unwrap();
    let b_address = b.address();
    let port = b.running().local_addr.port();
    b.stop().await;
    let _c = TestRelay::start_with(|c| {
        c.listen = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    // A's pooled session to the old B ends with it; until A has seen that close the
    // forward may fail as UNREACHABLE, or TIMEOUT when the session broke under the RFWD;
    // after it A dials again and sees the other key.
    let mut last = ErrorCode::Unreachable;
    for _ in 0..5 {
        last = relay_err(
            sender
                .send_through(&b_address, creds.sender_id, None, 0, b"2".to_vec())
                .await,
        );
        if !matches!(last, ErrorCode::Unreachable | ErrorCode::Timeout) {
            break;
        }
    }
    assert_eq!(last, ErrorCode::Identity);
}

// ---------------------------------------------------------------------------------------
// Loops, chains and policy
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_and_chains_are_refused() {
    let b = TestRelay::start().await;
    let a = TestRelay::start_with(forwarder).await;
    let (recipient, _pushes, _e1) = connect(&b.address()).await;
    let creds = recipient.create_queue(None).await.unwrap();
    let (sender, _p, _e2) = client_from_2(&a.address()).await;

    // A → A.
    let r = sender
        .send_through(&a.address(), creds.sender_id, None, 0, b"x".to_vec())
        .await;
    assert_eq!(relay_err(r), ErrorCode::FwdRefused);

    // A → B → A: a blob sealed to A handed to B does not open there, and B never passes it
    // on (A receives no RFWD).
    let (for_a, _, _) = seal_send(&a.address(), creds.sender_id, b"x", now_s() + 300);
    let r = sender.request(None, fwd(&b.address(), &for_a), None).await;
    assert_eq!(relay_err(r), ErrorCode::Auth);

    // A FWD (or RFWD) cannot even be sealed inside a request: its own blob fills one.
    let inner = fwd(&a.address(), &for_a);
    let sealed = Sealer::start(&b.address().key).unwrap().seal_command(
        now_s() + 300,
        CorrId::from_u64(5),
        Some(EntityId::from(creds.sender_id)),
        &inner,
        None,
    );
    assert!(matches!(
        sealed,
        Err(sotto_protocol::forward::ForwardError::TooLarge(_))
    ));
    // Any other command than SEND and SKEY is answered SYNTAX by B, inside the seal.
    let corr = CorrId::from_u64(6);
    let (sealed, key) = Sealer::start(&b.address().key)
        .unwrap()
        .seal_command(
            now_s() + 300,
            corr,
            Some(EntityId::from(creds.recipient_id)),
            &Cmd::Del,
            Some(&creds.recipient_key),
        )
        .unwrap();
    let r = sender.request(None, fwd(&b.address(), &sealed), None).await;
    assert_eq!(
        open_answer(r.unwrap(), &key, corr),
        Response::Err(ErrorCode::Syntax)
    );
    assert!(
        b.running()
            .store
            .queue(&creds.recipient_id)
            .unwrap()
            .is_some(),
        "the queue was not deleted"
    );

    assert_eq!(command_count(&a, "RFWD"), 0, "B forwarded nothing to A");
    assert_eq!(command_count(&b, "FWD"), 0);
    assert_eq!(message_count(&b, &creds), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_follows_the_configured_policy() {
    let b = TestRelay::start().await;
    let (recipient, _pushes, _e1) = connect(&b.address()).await;
    let creds = recipient.create_queue(None).await.unwrap();
    let send = async |a: &TestRelay| {
        let (sender, _p, _e) = client_from_2(&a.address()).await;
        sender
            .send_through(&b.address(), creds.sender_id, None, 0, b"p".to_vec())
            .await
    };

    let off = TestRelay::start_with(|c| {
        forwarder(c);
        c.forwarding.mode = "off".into();
    })
    .await;
    assert_eq!(relay_err(send(&off).await), ErrorCode::FwdRefused);

    let other = format!(
        "sotto://{}@127.0.0.1:9",
        RelayStaticKey::generate(&mut rand::rngs::OsRng)
            .public()
            .to_base64()
    );
    let listed_other = TestRelay::start_with(|c| {
        forwarder(c);
        c.forwarding.mode = "listed".into();
        c.forwarding.allowed = vec![other.clone()];
    })
    .await;
    assert_eq!(relay_err(send(&listed_other).await), ErrorCode::FwdRefused);

    let b_text = b.address().to_string();
    let listed_b = TestRelay::start_with(|c| {
        forwarder(c);
        c.forwarding.mode = "listed".into();
        c.forwarding.allowed = vec![other.clone(), b_text.clone()];
    })
    .await;
    send(&listed_b).await.unwrap();

    // `any` refuses loopback destinations unless told otherwise.
    let public_only = TestRelay::start_with(|c| {
        forwarder(c);
        c.forwarding.allow_private = false;
    })
    .await;
    assert_eq!(relay_err(send(&public_only).await), ErrorCode::FwdRefused);

    assert_eq!(message_count(&b, &creds), 1);
}

// ---------------------------------------------------------------------------------------
// What each relay logs and stores (the real binary)
// ---------------------------------------------------------------------------------------

/// Starts `sotto-relay run` on `listen` with `host` in its address, sensitive logging on,
/// immediate delivery and `env`, and reads the address it prints.
fn spawn_relay(
    data: &std::path::Path,
    listen: &str,
    host: &str,
    env: &[(&str, &str)],
) -> RelayProcess {
    let mut cmd = process::relay_command(
        data,
        &["--listen", listen, "--host", host, "--metrics", "off"],
    );
    cmd.env("SOTTO_RELAY_LOG_SENSITIVE", "true")
        .env("SOTTO_RELAY_DELIVERY_MODE", "off")
        .envs(env.iter().copied());
    process::spawn(cmd, data).unwrap_or_else(|e| panic!("relay did not start:\n{e}"))
}

/// The ways a value could show up in a log or a file.
fn forms(bytes: &[u8]) -> Vec<String> {
    vec![
        URL_SAFE_NO_PAD.encode(bytes),
        STANDARD.encode(bytes),
        hex::encode(bytes),
        hex::encode_upper(bytes),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_logs_a_not_the_client_and_a_keeps_no_queue_id_or_body() {
    let dir = tempfile::tempdir().unwrap();
    // B at debug level with sensitive logging on: it logs every peer address it sees.
    let b = spawn_relay(
        &dir.path().join("b"),
        "127.0.0.1:0",
        "127.0.0.1",
        &[("RUST_LOG", "debug")],
    );
    // A at trace level, sensitive too: the most it would ever log.
    let a_data = dir.path().join("a");
    let a = spawn_relay(
        &a_data,
        "127.0.0.3:0",
        "127.0.0.3",
        &[
            ("RUST_LOG", "trace"),
            ("SOTTO_RELAY_FORWARDING_ALLOW_PRIVATE", "true"),
        ],
    );

    let (recipient, _pushes, _e1) = connect(&b.address).await;
    let creds = recipient.create_queue(None).await.unwrap();
    let body = b"MARKER-9f2c-forwarded-message-body".to_vec();
    let (sender, _p, e2) = client_from_2(&a.address).await;
    let client_port = e2.local_addr().unwrap().port();
    sender
        .send_through(&b.address, creds.sender_id, None, 0, body.clone())
        .await
        .unwrap();
    let got = recipient.get(&creds).await.unwrap().unwrap();
    assert_eq!(got.body, body);
    sender.close().await;
    recipient.close().await;

    let (status, a_log) = a.terminate();
    assert!(status.success(), "{status:?}\n{a_log}");
    let (status, b_log) = b.terminate();
    assert!(status.success(), "{status:?}\n{b_log}");

    // B saw A's address (the session A opened to forward), and the forwarded command.
    assert!(b_log.contains("SENSITIVE LOGGING IS ON"), "{b_log}");
    assert!(b_log.contains("forwarded command"), "{b_log}");
    assert!(
        b_log.contains("127.0.0.3"),
        "A's address is not in B's log:\n{b_log}"
    );
    assert!(
        !b_log.contains("127.0.0.2"),
        "the client's address is in B's log:\n{b_log}"
    );
    assert!(
        !b_log.contains(&format!(":{client_port}")),
        "the client's port is in B's log:\n{b_log}"
    );

    // A saw the client (positive control: its log is as verbose as it gets) but neither the
    // queue nor the body, in its log or in its store.
    assert!(a_log.contains("127.0.0.2"), "{a_log}");
    let mut secrets = Vec::new();
    for id in [&creds.recipient_id.0[..], &creds.sender_id.0[..]] {
        secrets.extend(forms(id));
    }
    secrets.extend(forms(&body));
    secrets.push(String::from_utf8(body.clone()).unwrap());
    for s in &secrets {
        assert!(!a_log.contains(s.as_str()), "A logged `{s}`:\n{a_log}");
    }
    let store = std::fs::read(a_data.join(sotto_relay::datadir::DB_FILE)).unwrap();
    for raw in [&creds.recipient_id.0[..], &creds.sender_id.0[..], &body[..]] {
        assert!(
            !store.windows(raw.len()).any(|w| w == raw),
            "A's store holds a queue id or the body"
        );
    }
    for s in &secrets {
        assert!(
            !store.windows(s.len()).any(|w| w == s.as_bytes()),
            "A's store holds `{s}`"
        );
    }
}
