//! Operating a relay: limits under a flood, the Prometheus endpoint, the logging policy,
//! clean stop on SIGTERM, and the operator documentation staying in step with the code.
//!
//! The log tests run the real `sotto-relay` binary as a subprocess and read what it writes
//! to stderr, exactly what journald would store.
// Test helpers (here and in `common`) unwrap freely: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::process::{self, RelayProcess};
use common::*;
use sotto_protocol::{AuthSecretKey, Command as Cmd, ErrorCode, RelayAddress, RelayStaticKey};
use sotto_transport::{self as transport, QuicOptions};
use sotto_transport::{ClientError, Pushed, QueueCredentials, RelayClient};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// `GET /metrics` over a plain TCP connection, as Prometheus does; returns the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// Samples of an exposition: `name{labels}` exactly as written → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

/// The value of one series; a missing series fails the test (a renamed metric is a break).
fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("metric {series} missing"))
}

/// Every `(label, value)` pair of every sample.
fn labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        let (inner, _) = rest.split_once('}').unwrap();
        for pair in inner.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            out.push((k.to_owned(), v.trim_matches('"').to_owned()));
        }
    }
    out
}

/// Every textual form an id or key could take in a log or a scrape.
fn forms(bytes: &[u8]) -> Vec<String> {
    vec![
        URL_SAFE_NO_PAD.encode(bytes),
        STANDARD.encode(bytes),
        hex::encode(bytes),
        hex::encode_upper(bytes),
    ]
}

fn relay_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Relay(code)) => code,
        other => panic!("expected a relay error, got {other:?}"),
    }
}

/// A relay address with the same host and port but another key: the handshake fails.
fn impostor(addr: &RelayAddress) -> RelayAddress {
    RelayAddress {
        key: RelayStaticKey::generate(&mut rand::rngs::OsRng).public(),
        ..addr.clone()
    }
}

/// A full queue round trip: create, send, subscribe, receive, acknowledge.
async fn round_trip(
    c: &RelayClient,
    pushes: &mut tokio::sync::mpsc::Receiver<Pushed>,
    body: &[u8],
) -> QueueCredentials {
    let creds = c.create_queue(None).await.unwrap();
    c.send(creds.sender_id, None, 0, body.to_vec())
        .await
        .unwrap();
    c.subscribe(&creds).await.unwrap();
    let Pushed::Msg { msg, .. } = next_push(pushes).await else {
        panic!("expected MSG")
    };
    let opened = msg.open(&creds).unwrap();
    assert_eq!(opened.body, body);
    assert!(c.ack(&creds, opened.msg_id).await.unwrap());
    creds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_a_real_session_and_names_nobody() {
    let relay = TestRelay::start_with(|c| {
        c.metrics = "127.0.0.1:0".into();
        // Real delays (short), so the scheduler's histogram and pool gauge move too.
        c.delivery.mode = "poisson".into();
        c.delivery.mean = Duration::from_millis(20);
        c.delivery.cap = Duration::from_millis(100);
    })
    .await;
    let metrics_addr = relay.running().metrics_addr.unwrap();
    assert_ne!(metrics_addr.port(), 0, "the bound port is reported");

    let ep = endpoint();
    let client_addr = ep.local_addr().unwrap();
    let (c, mut pushes) = RelayClient::connect(&ep, &relay.address(), &client_options())
        .await
        .unwrap();
    let creds = round_trip(&c, &mut pushes, b"metrics test body").await;
    // A failed AUTH: GET signed with the wrong key.
    let wrong = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    let r = c
        .request(Some(creds.recipient_id.into()), Cmd::Get, Some(&wrong))
        .await;
    assert_eq!(relay_err(r), ErrorCode::Auth);
    // A failed handshake: a client that pinned another key.
    let bad = RelayClient::connect(&ep, &impostor(&relay.address()), &client_options()).await;
    assert!(matches!(
        bad,
        Err(ClientError::Transport(
            sotto_transport::TransportError::IdentityMismatch
        ))
    ));

    // Gauges are refreshed every two seconds and the failed handshake is counted when the
    // relay gives up on it, so poll (bounded) until everything has moved.
    let mut text = String::new();
    for _ in 0..400 {
        text = scrape(metrics_addr).await;
        let s = samples(&text);
        if value(&s, "sotto_queues") >= 1.0
            && value(&s, "sotto_handshakes_total{result=\"failed\"}") >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = samples(&text);
    for cmd in ["NEW", "SEND", "SUB", "ACK", "GET"] {
        assert!(
            value(&s, &format!("sotto_commands_total{{command=\"{cmd}\"}}")) >= 1.0,
            "{cmd}"
        );
    }
    assert!(value(&s, "sotto_errors_total{code=\"AUTH\"}") >= 1.0);
    assert!(value(&s, "sotto_handshakes_total{result=\"ok\"}") >= 1.0);
    assert!(value(&s, "sotto_handshakes_total{result=\"failed\"}") >= 1.0);
    assert!(
        value(&s, "sotto_sessions") >= 1.0,
        "the client is still connected"
    );
    assert!(value(&s, "sotto_queues") >= 1.0);
    assert!(value(&s, "sotto_stored_messages") >= 0.0);
    assert!(value(&s, "sotto_messages_sent_total") >= 1.0);
    assert!(value(&s, "sotto_messages_delivered_total") >= 1.0);
    assert!(value(&s, "sotto_messages_acked_total") >= 1.0);
    assert!(value(&s, "sotto_messages_expired_total") >= 0.0);
    assert!(value(&s, "sotto_bytes_in_total") > 0.0);
    assert!(value(&s, "sotto_bytes_out_total") > 0.0);
    assert!(value(&s, "sotto_scheduler_pool_size") >= 0.0);
    assert!(value(&s, "sotto_delivery_delay_seconds_count") >= 1.0);
    assert!(value(&s, "sotto_store_commit_seconds_count") > 0.0);
    assert!(value(&s, "sotto_store_commit_batch_size_count") > 0.0);
    assert!(value(&s, "sotto_store_relaxed_commits_total") >= 0.0);
    assert_eq!(
        value(&s, "sotto_sessions_tcp"),
        0.0,
        "the client came over QUIC"
    );
    for limit in sotto_relay::metrics::LIMITS {
        value(
            &s,
            &format!("sotto_rate_limited_total{{limit=\"{limit}\"}}"),
        );
    }

    // Nothing in the scrape names a queue or a client.
    for (k, v) in labels(&text) {
        assert!(
            ["command", "code", "limit", "result", "le"].contains(&k.as_str()),
            "unexpected label {k}"
        );
        if k != "le" {
            assert!(
                v.chars().all(|c| c.is_ascii_alphabetic() || c == '_'),
                "label {k}=\"{v}\" is not a fixed name"
            );
        }
    }
    for id in [&creds.recipient_id.0[..], &creds.sender_id.0[..]] {
        for form in forms(id) {
            assert!(!text.contains(&form), "a queue id appears in /metrics");
        }
    }
    assert!(!text.contains(&client_addr.to_string()));
    assert!(!text.contains(&format!(":{}", client_addr.port())));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("sotto_"), "{line}");
    }
    c.close().await;
}

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_does_not_stop_another_client() {
    const FLOODERS: usize = 50;
    let relay = TestRelay::start_with(|c| {
        c.limits.max_sessions_per_ip = 8;
        c.limits.handshakes_per_ip_per_s = 5;
        c.limits.commands_per_session_per_s = 100;
        c.limits.new_per_session_per_min = 5;
    })
    .await;
    let addr = relay.address();
    let m = relay.running().metrics.clone();
    let limited = |name: &str| m.rate_limited.with_label_values(&[name]).get();
    let total_limited = || {
        sotto_relay::metrics::LIMITS
            .iter()
            .map(|l| m.rate_limited.with_label_values(&[l]).get())
            .sum::<u64>()
    };

    // The flood: one source address (127.0.0.1), fifty tasks, each opening a session as
    // fast as it can and, once in, firing NEWs and PINGs without pause.
    let stop = CancellationToken::new();
    let flood_ep = endpoint();
    let limited_answers = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for _ in 0..FLOODERS {
        let (stop, ep, addr) = (stop.clone(), flood_ep.clone(), addr.clone());
        let limited_answers = limited_answers.clone();
        flooders.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Ok((c, pushes)) = RelayClient::connect(&ep, &addr, &client_options()).await
                else {
                    continue; // refused: try again at once
                };
                drop(pushes);
                while !stop.is_cancelled() {
                    let burst = (0..32).map(|k| {
                        let c = c.clone();
                        async move {
                            if k % 8 == 0 {
                                c.create_queue(None).await.map(|_| ())
                            } else {
                                c.ping().await
                            }
                        }
                    });
                    let results = futures_util::future::join_all(burst).await;
                    let n = results
                        .iter()
                        .filter(|r| matches!(r, Err(ClientError::Relay(ErrorCode::Limited))))
                        .count();
                    limited_answers.fetch_add(n as u64, Ordering::Relaxed);
                    if c.is_closed() {
                        break;
                    }
                }
                c.close().await;
            }
        }));
    }
    eventually("the flood hits the limits", async || {
        limited("commands_per_session") > 0
            && limited("max_sessions_per_ip") + limited("handshakes_per_ip") > 0
    })
    .await;

    // Meanwhile a client from another address (127.0.0.2) uses the relay normally.
    let before = total_limited();
    let started = tokio::time::Instant::now();
    let good = async {
        let ep =
            transport::client_endpoint("127.0.0.2:0".parse().unwrap(), &QuicOptions::default())
                .unwrap();
        let (c, mut pushes) = RelayClient::connect(&ep, &addr, &client_options())
            .await
            .unwrap();
        round_trip(&c, &mut pushes, b"through the flood").await;
        c.close().await;
    };
    // A bound against hanging, not a performance threshold.
    tokio::time::timeout(Duration::from_secs(60), good)
        .await
        .expect("the second client could not use the relay during the flood");
    let during = total_limited() - before;
    println!(
        "second client: connect + NEW + SEND + SUB + MSG + ACK in {:?}, {during} refusals meanwhile",
        started.elapsed()
    );
    assert!(during > 0, "the flood was still being limited meanwhile");

    stop.cancel();
    for f in flooders {
        f.await.unwrap();
    }
    assert!(
        limited_answers.load(Ordering::Relaxed) > 0,
        "flooders saw LIMITED"
    );
    assert!(limited("new_per_session") > 0);
    assert!(m.errors.with_label_values(&["LIMITED"]).get() > 0);

    // The relay is unharmed (asked from a third address: 127.0.0.1 may still be over its
    // handshake budget, which is the limit doing its job).
    let ep = transport::client_endpoint("127.0.0.3:0".parse().unwrap(), &QuicOptions::default())
        .unwrap();
    let (c, _p) = RelayClient::connect(&ep, &addr, &client_options())
        .await
        .unwrap();
    c.ping().await.unwrap();
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_and_subscriptions_are_limited_per_session() {
    let relay = TestRelay::start_with(|c| {
        c.limits.forwards_per_session_per_s = 1;
        c.limits.subscriptions_per_session = 2;
    })
    .await;
    let m = relay.running().metrics.clone();
    let (c, _p, _e) = connect(&relay.address()).await;

    // FWD: burst 2, then LIMITED; an allowed one is refused (forwarding not implemented).
    let fwd = || Cmd::Fwd {
        relay: relay.address(),
        sealed: vec![0; sotto_protocol::command::SEALED_LEN],
    };
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(relay_err(c.request(None, fwd(), None).await));
    }
    assert!(codes.contains(&ErrorCode::Limited), "{codes:?}");
    assert!(codes.contains(&ErrorCode::FwdRefused), "{codes:?}");
    assert!(
        m.rate_limited
            .with_label_values(&["forwards_per_session"])
            .get()
            >= 1
    );

    // Subscriptions: the third queue is refused, re-subscribing a held one is not.
    let mut creds = Vec::new();
    for _ in 0..3 {
        creds.push(c.create_queue(None).await.unwrap());
    }
    c.subscribe(&creds[0]).await.unwrap();
    c.subscribe(&creds[1]).await.unwrap();
    assert_eq!(relay_err(c.subscribe(&creds[2]).await), ErrorCode::Limited);
    c.subscribe(&creds[0]).await.unwrap();
    assert_eq!(
        m.rate_limited
            .with_label_values(&["subscriptions_per_session"])
            .get(),
        1
    );
    c.ping().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Logs and the process (the real binary)
// ---------------------------------------------------------------------------------------

/// The `sotto-relay` binary running `run`.
/// Starts `sotto-relay run --data <data> --listen 127.0.0.1:0 --metrics off` with
/// `RUST_LOG=trace` (everything, dependencies included) and `env`, and reads the address
/// it prints.
fn spawn_relay_in(data: &std::path::Path, env: &[(&str, &str)]) -> RelayProcess {
    let mut cmd = process::relay_command(data, &["--listen", "127.0.0.1:0", "--metrics", "off"]);
    cmd.env("RUST_LOG", "trace").envs(env.iter().copied());
    process::spawn(cmd, data).unwrap_or_else(|e| panic!("relay did not start:\n{e}"))
}

/// Every form the relay's secrets (its key files) could take in a log.
fn secret_forms(relay: &RelayProcess) -> Vec<String> {
    let mut out = Vec::new();
    for f in [
        sotto_relay::datadir::RELAY_KEY_FILE,
        sotto_relay::datadir::STORAGE_KEY_FILE,
    ] {
        let text = std::fs::read_to_string(relay.data.join(f)).unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).unwrap();
        out.push(text.trim().to_owned());
        out.extend(forms(&bytes));
    }
    out
}

/// What a client from 127.0.0.2 does against the relay process: a full round trip, a wrong
/// signature, a handshake against the wrong key. Returns the client's address, the queue and
/// the message body.
async fn drive_session(addr: &RelayAddress, body: &[u8]) -> (SocketAddr, QueueCredentials) {
    let ep = transport::client_endpoint("127.0.0.2:0".parse().unwrap(), &QuicOptions::default())
        .unwrap();
    let client_addr = ep.local_addr().unwrap();
    let (c, mut pushes) = RelayClient::connect(&ep, addr, &client_options())
        .await
        .unwrap();
    let creds = round_trip(&c, &mut pushes, body).await;
    let wrong = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    let r = c
        .request(Some(creds.recipient_id.into()), Cmd::Get, Some(&wrong))
        .await;
    assert_eq!(relay_err(r), ErrorCode::Auth);
    assert!(
        RelayClient::connect(&ep, &impostor(addr), &client_options())
            .await
            .is_err()
    );
    c.close().await;
    ep.wait_idle().await;
    (client_addr, creds)
}

const FAST_DELIVERY: [(&str, &str); 2] = [
    ("SOTTO_RELAY_DELIVERY_MEAN", "50ms"),
    ("SOTTO_RELAY_DELIVERY_CAP", "200ms"),
];

/// `run --delivery-mode/--delivery-mean/--delivery-cap/--cover-rate` override the
/// environment, as `--listen` does: with an hour's delay in the environment, a SEND is
/// held (GET answers nothing); with `--delivery-mode off` on top, GET gets it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_flags_of_run_override_the_environment() {
    let slow = [
        ("SOTTO_RELAY_DELIVERY_MEAN", "1h"),
        ("SOTTO_RELAY_DELIVERY_CAP", "2h"),
    ];
    for (flags, held) in [
        (&[][..], true),
        (&["--delivery-mode", "off", "--cover-rate", "0"][..], false),
        (
            &["--delivery-mean", "1ms", "--delivery-cap", "2ms"][..],
            false,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("relay");
        let mut args = vec!["--listen", "127.0.0.1:0", "--metrics", "off"];
        args.extend_from_slice(flags);
        let mut cmd = process::relay_command(&data, &args);
        cmd.envs(slow);
        let relay = process::spawn(cmd, &data).unwrap_or_else(|e| panic!("{e}"));
        let (c, _pushes, _e) = connect(&relay.address).await;
        let creds = c.create_queue(None).await.unwrap();
        c.send(creds.sender_id, None, 0, b"flag".to_vec())
            .await
            .unwrap();
        if held {
            assert!(c.get(&creds).await.unwrap().is_none(), "{flags:?}");
        } else {
            eventually("the message is released", async || {
                c.get(&creds).await.unwrap().is_some()
            })
            .await;
        }
        c.close().await;
        let (status, log) = relay.terminate();
        assert!(status.success(), "{status:?}\n{log}");
    }
}

/// `sotto-relay address` prints what config.toml and its environment say, and warns, naming
/// it, when the relay last started with another address (here: `--listen-tcp`, which adds
/// the `?tcp` hint, and the port `--listen` chose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_warns_when_the_relay_served_another_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let tcp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp = format!("127.0.0.1:{tcp_port}");
    let cmd = process::relay_command(
        &data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "off",
            "--listen-tcp",
            &tcp,
        ],
    );
    let relay = process::spawn(cmd, &data).unwrap_or_else(|e| panic!("{e}"));
    let served = relay.address.to_string();
    assert!(served.contains("?tcp="), "{served}");
    let (status, log) = relay.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    let mut address = Command::new(env!("CARGO_BIN_EXE_sotto-relay"));
    address.arg("address").arg("--data").arg(&data);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SOTTO_RELAY_")) {
        address.env_remove(k);
    }
    let out = address.output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !stdout.contains("?tcp"),
        "config.toml has no TCP listener: {stdout}"
    );
    assert!(stderr.contains("warning"), "{stderr}");
    assert!(
        stderr.contains(&served),
        "the warning names the served address: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_logs_hold_no_address_id_key_or_message_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay_in(&dir.path().join("relay"), &FAST_DELIVERY);
    assert_ne!(relay.address.port, 0, "run prints the bound port");
    let body = b"MARKER-5d1f-plaintext-message-body".to_vec();
    let (client_addr, creds) = drive_session(&relay.address, &body).await;
    let secrets = secret_forms(&relay);
    let (status, log) = relay.terminate();
    assert!(
        status.success(),
        "SIGTERM must stop the relay cleanly: {status:?}\n{log}"
    );

    // The log really was at debug level and covered the session, so absence means something.
    for expected in [
        "relay serving",
        "session open",
        "handshake failed",
        "shutting down",
        "stopped",
    ] {
        assert!(log.contains(expected), "log lacks `{expected}`:\n{log}");
    }
    assert!(!log.contains("SENSITIVE"));
    // The data directory was created by this run: its database was closed cleanly by
    // `init`, so the first open does not verify every page as after a crash.
    assert!(
        !log.contains("verifying every page checksum"),
        "a database just created is treated as not closed cleanly:\n{log}"
    );
    assert!(
        !log.contains("127.0.0.2"),
        "the client's address is logged:\n{log}"
    );
    assert!(
        !log.contains(&format!(":{}", client_addr.port())),
        "the client's port is logged:\n{log}"
    );
    for id in [&creds.recipient_id.0[..], &creds.sender_id.0[..]] {
        for form in forms(id) {
            assert!(!log.contains(&form), "a queue id is logged:\n{log}");
        }
    }
    let mut body_forms = forms(&body);
    body_forms.push(String::from_utf8(body.clone()).unwrap());
    for form in body_forms {
        assert!(!log.contains(&form), "message bytes are logged:\n{log}");
    }
    for form in secrets {
        assert!(!log.contains(&form), "a relay secret is logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_logging_is_announced_and_shows_what_default_logging_hides() {
    let mut env = FAST_DELIVERY.to_vec();
    env.push(("SOTTO_RELAY_LOG_SENSITIVE", "true"));
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay_in(&dir.path().join("relay"), &env);
    let (_, creds) = drive_session(&relay.address, b"sensitive run").await;
    let (status, log) = relay.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("WARNING: SENSITIVE LOGGING IS ON"),
        "no banner:\n{log}"
    );
    // The positive control for the test above: with the option on, the same session does
    // show the client's address and the queue id, so their absence there is the redaction.
    assert!(log.contains("127.0.0.2"), "{log}");
    assert!(log.contains(&creds.recipient_id.to_string()), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_clients_connected_stops_cleanly_and_keeps_delayed_messages() {
    // Delays long enough that the message is still in the delay pool at the stop.
    let slow = [
        ("SOTTO_RELAY_DELIVERY_MEAN", "2s"),
        ("SOTTO_RELAY_DELIVERY_CAP", "3s"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let relay = spawn_relay_in(&data, &slow);
    let (recipient, mut pushes, _e1) = connect(&relay.address).await;
    let (sender, _p, _e2) = connect(&relay.address).await;
    let creds = recipient.create_queue(None).await.unwrap();
    recipient.subscribe(&creds).await.unwrap();
    sender
        .send(creds.sender_id, None, 0, b"kept across a stop".to_vec())
        .await
        .unwrap();

    let (status, log) = relay.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    // The connected clients were told, not left to time out.
    assert!(matches!(next_push(&mut pushes).await, Pushed::Closed(_)));
    assert!(sender.ping().await.is_err());

    // After a restart the message is delivered (by the restored scheduler, or at once if
    // its release time passed while the relay was down).
    let relay = spawn_relay_in(&data, &slow);
    let (c, mut pushes, _e3) = connect(&relay.address).await;
    let creds = QueueCredentials {
        relay: relay.address.clone(),
        ..creds
    };
    c.subscribe(&creds).await.unwrap();
    let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG")
    };
    assert_eq!(msg.open(&creds).unwrap().body, b"kept across a stop");
    c.close().await;
    let (status, _) = relay.terminate();
    assert!(status.success());
}

#[test]
fn a_relay_that_cannot_start_exits_with_failure_for_systemd_to_restart() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sotto-relay"))
        .arg("run")
        .arg("--data")
        .arg(dir.path().join("relay"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics", "off"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot listen on UDP"), "{stderr}");
    // `Restart=on-failure` restarts exactly on a non-zero exit or a signal; the unit must
    // keep saying so.
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/sotto-relay.service"),
    )
    .unwrap();
    assert!(unit.lines().any(|l| l.trim() == "Restart=on-failure"));
    assert!(unit.lines().any(|l| l.trim() == "KillSignal=SIGTERM"));
    let stop_timeout: u64 = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    let budget = sotto_relay::server::SHUTDOWN_SESSIONS
        + sotto_relay::server::SHUTDOWN_IDLE
        + sotto_relay::server::SHUTDOWN_STORE;
    assert!(
        budget < Duration::from_secs(stop_timeout),
        "the relay's shutdown budget {budget:?} must fit TimeoutStopSec={stop_timeout}"
    );
}

// ---------------------------------------------------------------------------------------
// Documentation
// ---------------------------------------------------------------------------------------

fn operator_doc() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operator.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn operator_doc_lists_every_config_key_metric_and_limit() {
    let doc = operator_doc();
    for key in sotto_relay::config::KEYS {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/operator.md lacks config key `{key}`"
        );
        let var = sotto_relay::config::env_var(key);
        assert!(doc.contains(&var), "docs/operator.md lacks {var}");
    }
    let m = sotto_relay::metrics::Metrics::new().unwrap();
    for family in m.registry.gather() {
        assert!(
            doc.contains(&format!("`{}`", family.name())),
            "docs/operator.md lacks metric `{}`",
            family.name()
        );
    }
    for limit in sotto_relay::metrics::LIMITS {
        assert!(
            doc.contains(&format!("`{limit}`")),
            "docs/operator.md lacks limit label `{limit}`"
        );
    }
    for section in [
        "## Limits",
        "## Metrics",
        "## Logging",
        "## systemd",
        "## UDP 443",
        "## Private relays",
        "## Upgrading",
        "## What the operator can and cannot see",
        "## Configuration reference",
    ] {
        assert!(doc.contains(section), "docs/operator.md lacks {section}");
    }
}
