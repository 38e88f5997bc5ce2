//! AUTH timing: does a refused SEND take the same time whether or not the queue exists?
//!
//! A real relay runs in this process (loopback QUIC, the real store in a temporary
//! directory); one client session sends signed SENDs of full-size bodies:
//!
//! - `existing_queue_wrong_signature`: to a secured queue's sender id, signed with the wrong
//!   key → `ERR AUTH`;
//! - `unknown_sender_id`: to a random sender id, signed → `ERR AUTH` (the relay verifies
//!   against a dummy key so that the signature check is paid either way);
//! - `valid_send` (reference): correctly signed → `OK` after a durable commit;
//! - in the interleaved pass also recipient commands: a GET on a queue that is not secured
//!   yet (no sender key), signed with the wrong key, against a GET on a random recipient id
//!   → both `ERR AUTH`.
//!
//! First an interleaved pass (the three cases in turn, so drift hits them equally) reports
//! mean, median and p99 of each and the difference between the two AUTH cases; then
//! criterion measures each case on its own. Results: `docs/benchmarks.md` ("AUTH timing").
//!
//! Run: `cargo bench -p sotto-relay --bench auth_timing` (`-- --quick` for a short run).
//! `SOTTO_AUTH_TIMING_SAMPLES` sets the size of the interleaved pass (default 20 000 each).
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sotto_protocol::{AuthSecretKey, ErrorCode, MAX_BODY, SenderId};
use sotto_transport::{self as transport, QuicOptions};
use sotto_transport::{ClientError, ClientOptions, RelayClient};

struct Bench {
    rt: tokio::runtime::Runtime,
    client: RelayClient,
    sender_id: SenderId,
    sender_key: AuthSecretKey,
    wrong_key: AuthSecretKey,
    /// A queue not secured yet, with the wrong recipient key.
    unsecured_wrong: sotto_transport::QueueCredentials,
    /// Another secured queue and its key, for the valid SENDs: a SEND that passes puts its
    /// queue in the session's sender-key cache, which would then answer the wrong-signature
    /// case without a store lookup.
    valid: (SenderId, AuthSecretKey),
    _relay: sotto_relay::RunningRelay,
    _endpoint: quinn::Endpoint,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        sotto_relay::datadir::init(dir.path(), &Default::default()).expect("init");
        let mut config = sotto_relay::config::Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            metrics: "off".into(),
            ..Default::default()
        };
        config.delivery.mode = "off".into();
        config.queues.quota = u32::MAX;
        config.limits.commands_per_session_per_s = 1_000_000;
        let (relay, endpoint, client, sender_id, sender_key, (unsecured_wrong, valid)) = rt
            .block_on(async {
                let relay = sotto_relay::start(dir.path(), config).await.expect("relay");
                let endpoint = transport::client_endpoint(
                    "127.0.0.1:0".parse().expect("address"),
                    &QuicOptions::default(),
                )
                .expect("endpoint");
                let opts = ClientOptions {
                    connect_timeout: Duration::from_secs(10),
                    request_timeout: Duration::from_secs(20),
                    ..ClientOptions::default()
                };
                let (client, pushes) = RelayClient::connect(&endpoint, &relay.address, &opts)
                    .await
                    .expect("connect");
                drop(pushes);
                let (sender_id, sender_key) = secured_queue(&client).await;
                let mut unsecured = client.create_queue(None).await.expect("NEW");
                unsecured.recipient_key = AuthSecretKey::generate(&mut rand::rngs::OsRng);
                let valid = secured_queue(&client).await;
                (
                    relay,
                    endpoint,
                    client,
                    sender_id,
                    sender_key,
                    (unsecured, valid),
                )
            });
        Bench {
            rt,
            client,
            sender_id,
            sender_key,
            wrong_key: AuthSecretKey::generate(&mut rand::rngs::OsRng),
            unsecured_wrong,
            valid,
            _relay: relay,
            _endpoint: endpoint,
            _dir: dir,
        }
    }

    /// One SEND (or GET) of case `case`; returns its round-trip time.
    fn once(&self, case: Case) -> Duration {
        if let Case::RecipientUnsecured | Case::RecipientUnknown = case {
            let mut creds = self.unsecured_wrong.clone();
            if let Case::RecipientUnknown = case {
                creds.recipient_id = sotto_protocol::RecipientId::random(&mut rand::rngs::OsRng);
            }
            let started = Instant::now();
            let r = self.rt.block_on(self.client.get(&creds));
            let took = started.elapsed();
            match r {
                Err(ClientError::Relay(ErrorCode::Auth)) => {}
                other => panic!("{case:?}: unexpected answer {other:?}"),
            }
            return took;
        }
        let body = vec![0x33; MAX_BODY];
        let (id, key, want_ok) = match case {
            Case::WrongSignature => (self.sender_id, &self.wrong_key, false),
            Case::UnknownId => (
                SenderId::random(&mut rand::rngs::OsRng),
                &self.sender_key,
                false,
            ),
            Case::Valid => (self.valid.0, &self.valid.1, true),
            Case::RecipientUnsecured | Case::RecipientUnknown => unreachable!("GET above"),
        };
        let started = Instant::now();
        let r = self.rt.block_on(self.client.send(id, Some(key), 0, body));
        let took = started.elapsed();
        match (r, want_ok) {
            (Ok(()), true) | (Err(ClientError::Relay(ErrorCode::Auth)), false) => {}
            (other, _) => panic!("{case:?}: unexpected answer {other:?}"),
        }
        took
    }
}

/// A new queue secured with a new sender key: its sender id and that key.
async fn secured_queue(client: &RelayClient) -> (SenderId, AuthSecretKey) {
    let creds = client.create_queue(None).await.expect("NEW");
    let key = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    client.secure(&creds, key.public()).await.expect("KEY");
    (creds.sender_id, key)
}

#[derive(Debug, Clone, Copy)]
enum Case {
    WrongSignature,
    UnknownId,
    Valid,
    RecipientUnsecured,
    RecipientUnknown,
}

fn summary(name: &str, mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    let n = d.len();
    let mean = d.iter().map(|x| us(*x)).sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (us(*x) - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
    println!(
        "{name:<32} n={n:<6} mean {mean:>8.1} µs  p50 {:>8.1} µs  p99 {:>8.1} µs",
        us(d[n / 2]),
        us(d[n * 99 / 100])
    );
    (mean, var / n as f64)
}

fn interleaved(bench: &Bench) {
    let n: usize = std::env::var("SOTTO_AUTH_TIMING_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    // Warm up connections, caches and the store.
    for _ in 0..500 {
        bench.once(Case::WrongSignature);
        bench.once(Case::UnknownId);
    }
    let (mut wrong, mut unknown, mut valid) = (Vec::new(), Vec::new(), Vec::new());
    let (mut r_unsecured, mut r_unknown) = (Vec::new(), Vec::new());
    for i in 0..n {
        wrong.push(bench.once(Case::WrongSignature));
        unknown.push(bench.once(Case::UnknownId));
        r_unsecured.push(bench.once(Case::RecipientUnsecured));
        r_unknown.push(bench.once(Case::RecipientUnknown));
        if i % 10 == 0 {
            valid.push(bench.once(Case::Valid));
        }
    }
    println!("AUTH timing, interleaved pass ({n} samples of each AUTH case):");
    let (m1, se1) = summary("existing queue, wrong signature", wrong);
    let (m2, se2) = summary("unknown sender id", unknown);
    summary("valid SEND (reference)", valid);
    let diff = m1 - m2;
    let t = diff / (se1 + se2).sqrt();
    println!("difference of means (existing − unknown): {diff:+.2} µs (Welch t = {t:.2})");
    let (m3, se3) = summary("GET, unsecured queue, wrong key", r_unsecured);
    let (m4, se4) = summary("GET, unknown recipient id", r_unknown);
    let diff = m3 - m4;
    let t = diff / (se3 + se4).sqrt();
    println!(
        "difference of means (unsecured recipient − unknown): {diff:+.2} µs (Welch t = {t:.2})"
    );
}

fn auth_timing(c: &mut Criterion) {
    let bench = Bench::new();
    interleaved(&bench);
    let mut g = c.benchmark_group("auth_timing");
    g.bench_function("existing_queue_wrong_signature", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| bench.once(Case::WrongSignature)).sum())
    });
    g.bench_function("unknown_sender_id", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| bench.once(Case::UnknownId)).sum())
    });
    g.bench_function("valid_send", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| bench.once(Case::Valid)).sum())
    });
    g.finish();
}

criterion_group!(benches, auth_timing);
criterion_main!(benches);
