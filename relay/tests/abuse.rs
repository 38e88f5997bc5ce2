//! Abuse handling (`docs/operator.md`, "Abuse reports"): `sotto-relay block`, `unblock` and
//! `blocks list` run as the real binary against a real relay's data directory, then the relay
//! is started again and real clients see `BLOCKED`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use sotto_protocol::{Command as Cmd, ErrorCode, RelayStaticKey};
use sotto_transport::{ClientError, QueueCredentials, RelayClient};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `sotto-relay ARGS… --data DIR`: (success, stdout, stderr).
fn tool(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto-relay"))
        .args(args)
        .arg("--data")
        .arg(dir)
        .env_remove("SOTTO_RELAY_DATA")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An invitation link (`docs/client.md`, "The invitation") for `creds`' queue, with random
/// keys: `block` reads only its queue address.
fn invitation(creds: &QueueCredentials) -> String {
    let q = creds.queue_address().to_string();
    let mut b = vec![1u8];
    b.extend((0..16 + 32 * 3).map(|i| i as u8));
    b.extend_from_slice(&u16::try_from(q.len()).unwrap().to_be_bytes());
    b.extend_from_slice(q.as_bytes());
    format!("sotto:{}", URL_SAFE_NO_PAD.encode(b))
}

fn relay_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Relay(code)) => code,
        other => panic!("expected a relay error, got {other:?}"),
    }
}

async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

/// Starts the relay again on its data directory and port, metrics on.
async fn start_again(relay: &mut TestRelay, port: u16) {
    let mut config = relay.config.clone();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    relay.relay = Some(sotto_relay::start(relay.dir.path(), config).await.unwrap());
}

/// How many messages of `creds` the relay hands out (GET, ACK each).
async fn drain(c: &RelayClient, creds: &QueueCredentials) -> usize {
    let mut n = 0;
    while let Some(m) = c.get(creds).await.unwrap() {
        assert!(c.ack(creds, m.msg_id).await.unwrap());
        n += 1;
    }
    n
}

fn forms(bytes: &[u8]) -> Vec<String> {
    vec![
        URL_SAFE_NO_PAD.encode(bytes),
        STANDARD.encode(bytes),
        hex::encode(bytes),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_queue_answers_blocked_loses_its_messages_and_survives_restarts() {
    let mut relay = TestRelay::start_with(|c| c.metrics = "127.0.0.1:0".into()).await;
    let dir = relay.dir.path().to_owned();
    let port = relay.running().local_addr.port();
    let address = relay.address();
    let (c, _pushes, _ep) = connect(&relay.address()).await;
    let reported = c.create_queue(None).await.unwrap();
    let other = c.create_queue(None).await.unwrap();
    for i in 0..3u8 {
        c.send(reported.sender_id, None, 0, vec![i; 64])
            .await
            .unwrap();
    }
    c.send(other.sender_id, None, 0, vec![9; 64]).await.unwrap();
    c.close().await;
    let link = invitation(&reported);

    // While the relay runs, its database is locked: a clear error, nothing changed.
    let (ok, _, err) = tool(&dir, &["block", &link]);
    assert!(!ok && err.contains("stop it first"), "{err}");

    relay.stop().await;
    // Bad input: a clear error each, nothing changed.
    for (bad, says) in [
        ("not-a-link", "cannot read"),
        ("sotto:!!!!", "malformed invitation link"),
        (
            "sotto://short@relay.example.org#x",
            "malformed queue address",
        ),
    ] {
        let (ok, _, err) = tool(&dir, &["block", bad]);
        assert!(!ok && err.contains(says), "{bad}: {err}");
    }
    let elsewhere = sotto_protocol::address::QueueAddress {
        relay: sotto_protocol::RelayAddress {
            key: RelayStaticKey::generate(&mut rand::rngs::OsRng).public(),
            ..address.clone()
        },
        sender_id: reported.sender_id,
    };
    let (ok, _, err) = tool(&dir, &["block", &elsewhere.to_string()]);
    assert!(!ok && err.contains("not this one"), "{err}");
    let unknown = sotto_protocol::address::QueueAddress {
        relay: address.clone(),
        sender_id: sotto_protocol::SenderId::random(&mut rand::rngs::OsRng),
    };
    let (ok, _, err) = tool(&dir, &["block", &unknown.to_string()]);
    assert!(!ok && err.contains("no queue on this relay"), "{err}");
    let (ok, _, err) = tool(&dir, &["unblock", &link]);
    assert!(!ok && err.contains("not blocked"), "{err}");
    let (ok, out, err) = tool(&dir, &["blocks", "list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("0 blocked queue(s)"), "{out}");

    // The block, from the invitation link in the report.
    let (ok, out, err) = tool(&dir, &["block", &link]);
    assert!(ok, "{err}");
    assert!(out.contains("3 message(s) deleted"), "{out}");
    let (ok, again, _) = tool(&dir, &["block", &reported.queue_address().to_string()]);
    assert!(ok && again.contains("already blocked"), "{again}");
    let (ok, list, _) = tool(&dir, &["blocks", "list"]);
    assert!(ok && list.starts_with("1 blocked queue(s)\n"), "{list}");
    let entry = list.lines().nth(1).unwrap().split(' ').next().unwrap();
    assert_eq!(entry.len(), 64);
    // Only the keyed hash is kept: no form of either id in the list or in the file.
    let db = std::fs::read(dir.join(sotto_relay::datadir::DB_FILE)).unwrap();
    for id in [
        &reported.recipient_id.as_bytes()[..],
        &reported.sender_id.as_bytes()[..],
    ] {
        for f in forms(id) {
            assert!(!list.contains(&f) && !out.contains(&f));
        }
        assert!(!db.windows(id.len()).any(|w| w == id));
    }

    // After a restart: BLOCKED to the sender and to the recipient (once authenticated).
    start_again(&mut relay, port).await;
    let (c, _pushes, _ep) = connect(&relay.address()).await;
    let r = c.send(reported.sender_id, None, 0, vec![1; 64]).await;
    assert_eq!(relay_err(r), ErrorCode::Blocked);
    assert_eq!(relay_err(c.subscribe(&reported).await), ErrorCode::Blocked);
    assert_eq!(relay_err(c.get(&reported).await), ErrorCode::Blocked);
    let wrong = sotto_protocol::AuthSecretKey::generate(&mut rand::rngs::OsRng);
    let r = c
        .request(Some(reported.recipient_id.into()), Cmd::Del, Some(&wrong))
        .await;
    assert_eq!(relay_err(r), ErrorCode::Auth, "no signature, no BLOCKED");
    let r = c
        .request(
            Some(reported.recipient_id.into()),
            Cmd::Del,
            Some(&reported.recipient_key),
        )
        .await;
    assert_eq!(relay_err(r), ErrorCode::Blocked, "DEL cannot undo a block");
    // The other queue is untouched, its message kept.
    assert_eq!(drain(&c, &other).await, 1);
    let metrics = relay.running().metrics_addr.unwrap();
    eventually("sotto_blocked_queues = 1", async || {
        scrape(metrics).await.get("sotto_blocked_queues") == Some(&1.0)
    })
    .await;
    let m = scrape(metrics).await;
    assert_eq!(m["sotto_errors_total{code=\"BLOCKED\"}"], 4.0);
    c.close().await;

    // Unblocked by its list entry: active again, and empty.
    relay.stop().await;
    let (ok, out, err) = tool(&dir, &["unblock", entry]);
    assert!(ok && out.contains("unblocked"), "{err}");
    let (_, list, _) = tool(&dir, &["blocks", "list"]);
    assert!(list.starts_with("0 blocked queue(s)"), "{list}");
    start_again(&mut relay, port).await;
    let (c, _pushes, _ep) = connect(&relay.address()).await;
    assert_eq!(drain(&c, &reported).await, 0, "the block deleted them");
    c.send(reported.sender_id, None, 0, vec![7; 64])
        .await
        .unwrap();
    assert_eq!(drain(&c, &reported).await, 1);
    c.close().await;
    relay.stop().await;
}
