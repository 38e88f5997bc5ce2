//! Network adversaries on loopback, bounded in count and time: handshake floods, thousands
//! of half-open sessions, random bytes after a valid handshake, valid frames full of invalid
//! commands, a NEW flood and frames with the largest number of transmissions.
//!
//! In every scenario a well-behaved client on another source address (127.0.0.2; the
//! attackers use 127.0.0.1) keeps completing create → send → receive → ACK round trips,
//! each on a fresh connection, while the attack runs; and the process's resident memory
//! (relay and attackers together: the relay runs in this process) stays under
//! [`MEMORY_BOUND`] above where it started. The figures each test prints are collected in
//! `docs/reliability.md` ("Network adversaries").

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng as _, RngCore as _};
use sotto_protocol::{
    Command, CorrId, EntityId, ErrorCode, FRAME_LEN, Frame, FrameBuilder, Initiator, RelayAddress,
    Response, Session, Transmission,
};
use sotto_transport::{self as transport, QuicOptions};
use sotto_transport::{ClientError, Pushed, RelayClient};
use tokio_util::sync::CancellationToken;

/// How much the process's resident memory may grow during one attack. Generous on purpose
/// (tests share the process and run side by side); the measured figures are far below and
/// are what `docs/reliability.md` reports.
const MEMORY_BOUND_MIB: u64 = 512;
const MEMORY_BOUND: u64 = MEMORY_BOUND_MIB << 20;

/// Round trips the good client must complete while each attack runs.
const GOOD_ROUND_TRIPS: usize = 3;

// ---------------------------------------------------------------------------------------
// Measurement and the good client
// ---------------------------------------------------------------------------------------

/// Resident set size of this process, bytes (`VmRSS` in `/proc/self/status`).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Samples RSS every 50 ms until stopped; returns the highest value seen.
fn sample_peak(stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = rss();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return peak.max(rss()),
                _ = tick.tick() => peak = peak.max(rss()),
            }
        }
    })
}

/// One round trip from 127.0.0.2 on a fresh connection: connect, NEW, SEND, SUB, MSG, ACK.
async fn good_round_trip(addr: &RelayAddress, n: usize) {
    let ep = transport::client_endpoint("127.0.0.2:0".parse().unwrap(), &QuicOptions::default())
        .unwrap();
    let (c, mut pushes) = RelayClient::connect(&ep, addr, &client_options())
        .await
        .unwrap();
    let creds = c.create_queue(None).await.unwrap();
    let body = format!("good client round trip {n}").into_bytes();
    c.send(creds.sender_id, None, 0, body.clone())
        .await
        .unwrap();
    c.subscribe(&creds).await.unwrap();
    let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG")
    };
    let m = msg.open(&creds).unwrap();
    assert_eq!(m.body, body);
    assert!(c.ack(&creds, m.msg_id).await.unwrap());
    c.close().await;
}

/// Figures of one attack.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug, for the report
struct Figures {
    rss_before_mib: u64,
    rss_peak_mib: u64,
    rss_growth_mib: u64,
    good_round_trips: usize,
    slowest_round_trip: Duration,
    attack_duration: Duration,
}

/// An attack in progress: its stop signal, the memory sampler, the starting point.
struct Attack {
    stop: CancellationToken,
    sampler: tokio::task::JoinHandle<u64>,
    rss_before: u64,
    started: Instant,
    slowest: Duration,
    round_trips: usize,
}

impl Attack {
    fn begin() -> Self {
        let stop = CancellationToken::new();
        Attack {
            rss_before: rss(),
            sampler: sample_peak(stop.child_token()),
            stop,
            started: Instant::now(),
            slowest: Duration::ZERO,
            round_trips: 0,
        }
    }

    fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The good client's round trips, each bounded (a hang fails the test; the time is a
    /// figure, not a threshold).
    async fn good_client(&mut self, addr: &RelayAddress) {
        for n in 0..GOOD_ROUND_TRIPS {
            let t = Instant::now();
            tokio::time::timeout(Duration::from_secs(60), good_round_trip(addr, n))
                .await
                .unwrap_or_else(|_| panic!("the good client's round trip {n} hung under attack"));
            self.slowest = self.slowest.max(t.elapsed());
            self.round_trips += 1;
        }
    }

    /// Stops the attackers, waits for them (bounded), checks the memory bound.
    async fn end<T>(self, name: &str, tasks: Vec<tokio::task::JoinHandle<T>>) -> (Figures, Vec<T>) {
        self.stop.cancel();
        let mut out = Vec::new();
        for t in tasks {
            out.push(
                tokio::time::timeout(Duration::from_secs(60), t)
                    .await
                    .expect("an attacker did not stop")
                    .unwrap(),
            );
        }
        let peak = self.sampler.await.unwrap();
        let growth = peak.saturating_sub(self.rss_before);
        let f = Figures {
            rss_before_mib: self.rss_before >> 20,
            rss_peak_mib: peak >> 20,
            rss_growth_mib: growth >> 20,
            good_round_trips: self.round_trips,
            slowest_round_trip: self.slowest,
            attack_duration: self.started.elapsed(),
        };
        println!("{name}: {f:?}");
        assert!(
            growth < MEMORY_BOUND,
            "{name}: memory grew by {} MiB (bound {MEMORY_BOUND_MIB} MiB)",
            growth >> 20
        );
        assert!(f.good_round_trips >= GOOD_ROUND_TRIPS);
        (f, out)
    }
}

// ---------------------------------------------------------------------------------------
// Raw sessions (hand-driven Noise over a QUIC stream)
// ---------------------------------------------------------------------------------------

/// A QUIC connection with its stream open and nothing sent yet.
async fn raw_stream(
    ep: &quinn::Endpoint,
    relay: &TestRelay,
) -> Option<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = ep
        .connect(relay.running().local_addr, "127.0.0.1")
        .ok()?
        .await
        .ok()?;
    let (send, recv) = conn.open_bi().await.ok()?;
    Some((conn, send, recv))
}

/// A completed Noise handshake, driven by hand.
struct RawSession {
    session: Session,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    conn: quinn::Connection,
}

async fn handshaken(ep: &quinn::Endpoint, relay: &TestRelay) -> Option<RawSession> {
    let (conn, mut send, mut recv) = raw_stream(ep, relay).await?;
    let (init, m1) = Initiator::start(&relay.address().key, &mut rand::rngs::OsRng).ok()?;
    send.write_all(&m1).await.ok()?;
    let mut m2 = vec![0u8; FRAME_LEN];
    recv.read_exact(&mut m2).await.ok()?;
    let session = init.finish(&m2).ok()?;
    Some(RawSession {
        session,
        send,
        recv,
        conn,
    })
}

impl RawSession {
    async fn send_frame(&mut self, plaintext: &[u8]) -> bool {
        let Ok(rec) = self.session.send.encrypt_frame(plaintext) else {
            return false;
        };
        self.send.write_all(&rec).await.is_ok()
    }

    /// Reads one frame's transmissions; `None` when the relay closed the session.
    async fn recv_frame(&mut self) -> Option<Vec<Transmission>> {
        let mut rec = vec![0u8; FRAME_LEN];
        self.recv.read_exact(&mut rec).await.ok()?;
        Frame::decode(&self.session.recv.decrypt_frame(&rec).ok()?).ok()
    }
}

/// An endpoint for attackers, on 127.0.0.1.
fn attacker_endpoint() -> quinn::Endpoint {
    endpoint()
}

fn metric(relay: &TestRelay, family: &str, label: &str) -> u64 {
    let m = &relay.running().metrics;
    match family {
        "handshakes" => m.handshakes.with_label_values(&[label]).get(),
        "rate_limited" => m.rate_limited.with_label_values(&[label]).get(),
        "errors" => m.errors.with_label_values(&[label]).get(),
        _ => unreachable!("unknown family {family}"),
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// Many attackers doing complete QUIC + Noise handshakes as fast as they can, closing, and
/// starting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood() {
    const TASKS: usize = 16;
    const ATTEMPTS_PER_TASK: usize = 150;
    let relay = TestRelay::start_with(|c| {
        c.limits.handshakes_per_ip_per_s = 50;
        c.limits.max_sessions_per_ip = 32;
    })
    .await;
    let addr = relay.address();
    let mut attack = Attack::begin();
    let ep = attacker_endpoint();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (stop, ep, addr) = (attack.token(), ep.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u64, 0u64);
            // Bounded by count: runs to the end even once the good client is done.
            let _ = stop;
            for _ in 0..ATTEMPTS_PER_TASK {
                match RelayClient::connect(&ep, &addr, &client_options()).await {
                    Ok((c, _)) => {
                        ok += 1;
                        c.close().await;
                    }
                    Err(_) => refused += 1,
                }
            }
            (ok, refused)
        }));
    }
    eventually("the flood hits the handshake limit", async || {
        metric(&relay, "rate_limited", "handshakes_per_ip") > 0
    })
    .await;
    attack.good_client(&addr).await;
    let (_, results) = attack.end("handshake flood", tasks).await;
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let refused: u64 = results.iter().map(|r| r.1).sum();
    println!(
        "handshake flood: {ok} attacker handshakes completed, {refused} refused; relay counted \
         {} ok, {} refused by handshakes_per_ip, {} by max_sessions_per_ip",
        metric(&relay, "handshakes", "ok"),
        metric(&relay, "rate_limited", "handshakes_per_ip"),
        metric(&relay, "rate_limited", "max_sessions_per_ip"),
    );
    assert!(ok > 0 && refused > 0);
}

/// Thousands of half-open sessions: QUIC connected and the stream opened but message 1
/// never sent, or message 1 cut short. Each holds its place under the caps until
/// `limits.handshake_timeout`, then is dropped; the attacker keeps opening new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_half_open_sessions_time_out() {
    const TARGET: u64 = 2000;
    const PER_IP: usize = 600;
    let relay = TestRelay::start_with(|c| {
        c.limits.handshake_timeout = Duration::from_secs(2);
        c.limits.max_sessions_per_ip = PER_IP;
        c.limits.handshakes_per_ip_per_s = 100_000;
    })
    .await;
    let addr = relay.address();
    let mut attack = Attack::begin();
    let admitted = Arc::new(AtomicU64::new(0));
    let relay_addr = relay.running().local_addr;
    let key = addr.key;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (stop, admitted) = (attack.token(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            let ep = attacker_endpoint();
            let mut held = Vec::new();
            let mut refused = 0u64;
            let mut i = 0u64;
            while !stop.is_cancelled() && admitted.load(Ordering::Relaxed) < TARGET {
                i += 1;
                let Ok(connecting) = ep.connect(relay_addr, "127.0.0.1") else {
                    refused += 1;
                    continue;
                };
                let Ok(conn) = connecting.await else {
                    refused += 1;
                    // Refused by the per-source cap: let some of ours time out first.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                };
                admitted.fetch_add(1, Ordering::Relaxed);
                let Ok((mut send, recv)) = conn.open_bi().await else {
                    continue;
                };
                if (i + t).is_multiple_of(2) {
                    // Message 1 cut short: a prefix of a genuine one.
                    if let Ok((_, m1)) = Initiator::start(&key, &mut rand::rngs::OsRng) {
                        let _ = send.write_all(&m1[..1000]).await;
                    }
                }
                held.push((conn, send, recv));
            }
            // Hold them until the end of the attack, so the relay, not the attacker, ends them.
            stop.cancelled().await;
            let n = held.len();
            for (c, _, _) in held {
                c.close(0u32.into(), b"");
            }
            ep.wait_idle().await;
            (n as u64, refused)
        }));
    }
    eventually("half-open sessions time out", async || {
        metric(&relay, "handshakes", "timeout") >= PER_IP as u64
    })
    .await;
    attack.good_client(&addr).await;
    // Run until the target number of half-open sessions was admitted (bounded).
    tokio::time::timeout(Duration::from_secs(90), async {
        while admitted.load(Ordering::Relaxed) < TARGET {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the attackers could not open their half-open sessions");
    attack.good_client(&addr).await;
    let (_, results) = attack.end("half-open sessions", tasks).await;
    let refused: u64 = results.iter().map(|r| r.1).sum();
    // Every admitted half-open session ended: by the timeout, or (those still waiting when
    // the attackers gave up) as a failed handshake.
    let admitted_n = admitted.load(Ordering::Relaxed);
    eventually("every half-open session ended", async || {
        metric(&relay, "handshakes", "timeout") + metric(&relay, "handshakes", "failed")
            >= admitted_n
    })
    .await;
    assert_eq!(
        metric(&relay, "handshakes", "ok"),
        2 * GOOD_ROUND_TRIPS as u64
    );
    println!(
        "half-open: {admitted_n} admitted, {refused} refused at the client; relay: {} timed \
         out, {} failed, {} refused by max_sessions_per_ip",
        metric(&relay, "handshakes", "timeout"),
        metric(&relay, "handshakes", "failed"),
        metric(&relay, "rate_limited", "max_sessions_per_ip"),
    );
    assert!(metric(&relay, "rate_limited", "max_sessions_per_ip") > 0);
}

/// Random bytes (random lengths) after a completed handshake: the relay closes each such
/// session without answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_after_a_valid_handshake() {
    const SESSIONS: usize = 200;
    let relay = TestRelay::start_with(|c| c.limits.handshakes_per_ip_per_s = 10_000).await;
    let addr = relay.address();
    let mut attack = Attack::begin();
    let closed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, closed) = (attack.token(), closed.clone());
        let relay_addr = relay.running().local_addr;
        let key = addr.key;
        tasks.push(tokio::spawn(async move {
            let ep = attacker_endpoint();
            // Bounded by count: runs to the end even once the good client is done.
            let _ = stop;
            for _ in 0..SESSIONS / 8 {
                let Some(mut s) = handshaken_to(&ep, relay_addr, &key).await else {
                    continue;
                };
                let len = rand::thread_rng().gen_range(1..3 * FRAME_LEN);
                let mut junk = vec![0u8; len];
                rand::thread_rng().fill_bytes(&mut junk);
                let _ = s.send.write_all(&junk).await;
                let _ = s.send.finish();
                // The relay must close the session and answer nothing.
                let mut buf = vec![0u8; FRAME_LEN];
                match tokio::time::timeout(Duration::from_secs(30), s.recv.read_exact(&mut buf))
                    .await
                {
                    Ok(Err(_)) => {
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(())) => panic!("the relay answered random bytes with a record"),
                    Err(_) => panic!("the relay kept a session of random bytes open"),
                }
                s.conn.close(0u32.into(), b"");
            }
        }));
    }
    attack.good_client(&addr).await;
    let _ = attack.end("random bytes after handshake", tasks).await;
    let closed = closed.load(Ordering::Relaxed);
    println!(
        "random bytes: {closed} sessions closed by the relay, protocol errors counted {}",
        relay.running().metrics.protocol_errors.get()
    );
    assert_eq!(
        closed as usize, SESSIONS,
        "every session of random bytes was closed"
    );
}

async fn handshaken_to(
    ep: &quinn::Endpoint,
    relay: std::net::SocketAddr,
    key: &sotto_protocol::RelayPublicKey,
) -> Option<RawSession> {
    let conn = ep.connect(relay, "127.0.0.1").ok()?.await.ok()?;
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let (init, m1) = Initiator::start(key, &mut rand::rngs::OsRng).ok()?;
    send.write_all(&m1).await.ok()?;
    let mut m2 = vec![0u8; FRAME_LEN];
    recv.read_exact(&mut m2).await.ok()?;
    let session = init.finish(&m2).ok()?;
    Some(RawSession {
        session,
        send,
        recv,
        conn,
    })
}

/// A random transmission: random signature or none, random entity or none, random payload.
fn random_transmission(rng: &mut impl rand::Rng, corr: u64) -> Transmission {
    let mut payload = vec![0u8; rng.gen_range(1..200)];
    rng.fill_bytes(&mut payload);
    let signature = rng.gen_bool(0.5).then(|| {
        let mut s = [0u8; 64];
        rng.fill_bytes(&mut s);
        s
    });
    let entity = rng.gen_bool(0.5).then(|| {
        let mut e = [0u8; 24];
        rng.fill_bytes(&mut e);
        EntityId(e)
    });
    Transmission {
        signature,
        corr_id: CorrId::from_u64(corr),
        entity,
        payload,
    }
}

/// Valid frames (correctly encrypted, well framed) full of invalid commands. The relay
/// answers each (SYNTAX, AUTH, LARGE, LIMITED…), keeps the session open, and nothing is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_frames_full_of_invalid_commands() {
    const SESSIONS: usize = 4;
    const FRAMES: usize = 40;
    let relay = TestRelay::start_with(|c| {
        c.limits.commands_per_session_per_s = 5000;
        // Random bytes spell a valid PACE about once in 100 000 transmissions (one run sends
        // ≈ 20 000): it would pace the session and hold every later answer for ticks up to
        // an hour apart, which is PACE working, not what this test is about.
        c.delivery.pacing = false;
    })
    .await;
    let addr = relay.address();
    let queues_before = relay.running().store.counts().unwrap().0;
    let mut attack = Attack::begin();
    let ep = attacker_endpoint();
    let mut tasks = Vec::new();
    for _ in 0..SESSIONS {
        let s = handshaken(&ep, &relay).await.unwrap();
        tasks.push(tokio::spawn(invalid_command_session(s, FRAMES)));
    }
    attack.good_client(&addr).await;
    let (_, results) = attack.end("frames of invalid commands", tasks).await;
    let sent: u64 = results.iter().map(|r| r.0).sum();
    let answered: u64 = results.iter().map(|r| r.1).sum();
    let created: u64 = results.iter().map(|r| r.2).sum();
    let queues_after = relay.running().store.counts().unwrap().0;
    println!(
        "invalid commands: {sent} sent in {} frames, {answered} answered, SYNTAX {} AUTH {} \
         LARGE {} LIMITED {}",
        SESSIONS * FRAMES,
        metric(&relay, "errors", "SYNTAX"),
        metric(&relay, "errors", "AUTH"),
        metric(&relay, "errors", "LARGE"),
        metric(&relay, "errors", "LIMITED"),
    );
    // Rejected input changes nothing: only the good client's queues (and any NEW that the
    // random bytes happened to spell, which were answered IDS) exist.
    assert_eq!(
        queues_after - queues_before,
        GOOD_ROUND_TRIPS as u64 + created
    );
    assert!(answered * 10 >= sent * 9, "{answered} of {sent} answered");
}

/// Sends `frames` frames of random transmissions (returns how many) then [`blast`]s them.
async fn invalid_command_session(s: RawSession, frames: usize) -> (u64, u64, u64) {
    let mut sent = 0u64;
    let mut plaintexts = Vec::new();
    {
        let mut rng = rand::thread_rng();
        for _ in 0..frames {
            let mut fb = FrameBuilder::new();
            loop {
                let t = random_transmission(&mut rng, sent + 1);
                if !fb.push(&t) {
                    break;
                }
                sent += 1;
            }
            plaintexts.push(fb.finish());
        }
    }
    let a = blast(s, plaintexts).await;
    (sent, a.answered, a.ids)
}

/// What came back in a [`blast`].
#[derive(Debug, Default)]
struct Answers {
    answered: u64,
    ids: u64,
    pongs: u64,
    limited: u64,
}

/// Sends the frame plaintexts (encrypted, in order) while reading every answer, then a
/// PING with corr id `u64::MAX`; returns when its PONG arrives. Panics if the relay closes
/// the session or stops answering.
async fn blast(s: RawSession, plaintexts: Vec<Vec<u8>>) -> Answers {
    let RawSession {
        session,
        mut send,
        mut recv,
        conn,
    } = s;
    let Session {
        send: mut tx,
        recv: mut rx,
        ..
    } = session;
    let reader = tokio::spawn(async move {
        let mut a = Answers::default();
        let mut rec = vec![0u8; FRAME_LEN];
        loop {
            match tokio::time::timeout(Duration::from_secs(30), recv.read_exact(&mut rec)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the relay closed the session: {e} ({a:?})"),
                Err(_) => panic!("the relay stopped answering ({a:?})"),
            }
            for t in Frame::decode(&rx.decrypt_frame(&rec).unwrap()).unwrap() {
                let r = t.decode_response().unwrap();
                if t.corr_id == CorrId::from_u64(u64::MAX) {
                    // The marker is answered after everything before it (PONG, or LIMITED
                    // when the burst used up the command budget): the session is alive.
                    assert!(
                        matches!(r, Response::Pong | Response::Err(ErrorCode::Limited)),
                        "{r:?}"
                    );
                    return a;
                }
                a.answered += 1;
                match r {
                    Response::Ids { .. } => a.ids += 1,
                    Response::Pong => a.pongs += 1,
                    Response::Err(ErrorCode::Limited) => a.limited += 1,
                    _ => {}
                }
            }
        }
    });
    for p in plaintexts {
        send.write_all(&tx.encrypt_frame(&p).unwrap())
            .await
            .unwrap();
    }
    let mut fb = FrameBuilder::new();
    assert!(fb.push(&Transmission::command(
        CorrId::from_u64(u64::MAX),
        None,
        &Command::Ping
    )));
    send.write_all(&tx.encrypt_frame(&fb.finish()).unwrap())
        .await
        .unwrap();
    let a = reader.await.unwrap();
    conn.close(0u32.into(), b"");
    a
}

/// A NEW flood from many sessions: each session gets its burst of NEWs, then LIMITED; the
/// number of queues created is bounded by sessions × burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_flood_is_bounded_per_session() {
    const SESSIONS: usize = 20;
    const BURST: u32 = 10;
    const NEWS_PER_SESSION: usize = 200;
    let relay = TestRelay::start_with(|c| {
        c.limits.new_per_session_per_min = BURST;
        c.limits.handshakes_per_ip_per_s = 1000;
    })
    .await;
    let addr = relay.address();
    let mut attack = Attack::begin();
    let ep = attacker_endpoint();
    let mut tasks = Vec::new();
    for _ in 0..SESSIONS {
        let (c, _p) = RelayClient::connect(&ep, &addr, &client_options())
            .await
            .unwrap();
        let stop = attack.token();
        tasks.push(tokio::spawn(async move {
            let (mut created, mut limited) = (0u64, 0u64);
            for _ in 0..NEWS_PER_SESSION / 20 {
                if stop.is_cancelled() {
                    break;
                }
                let burst = (0..20).map(|_| c.create_queue(None));
                for r in futures_util::future::join_all(burst).await {
                    match r {
                        Ok(_) => created += 1,
                        Err(ClientError::Relay(ErrorCode::Limited)) => limited += 1,
                        Err(e) => panic!("NEW flood: {e:?}"),
                    }
                }
            }
            c.close().await;
            (created, limited)
        }));
    }
    attack.good_client(&addr).await;
    let (_, results) = attack.end("NEW flood", tasks).await;
    let created: u64 = results.iter().map(|r| r.0).sum();
    let limited: u64 = results.iter().map(|r| r.1).sum();
    println!("NEW flood: {created} queues created, {limited} NEWs refused with LIMITED");
    // The burst, plus what refills during the run (BURST per minute per session).
    let minutes = 1 + attack_minutes(&relay);
    assert!(created <= (SESSIONS as u64) * u64::from(BURST) * minutes);
    assert!(limited > 0);
}

fn attack_minutes(_relay: &TestRelay) -> u64 {
    // Every test here runs well under a minute of NEW flood; count one refill to be safe.
    1
}

/// Frames with the largest number of transmissions the format allows, repeated: PINGs
/// (answered, then LIMITED), DROPs (exempt from the command limit, never answered), and a
/// frame whose header claims 65 535 transmissions it does not hold (refused, session closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximal_batch_counts() {
    const FRAMES: usize = 30;
    let relay = TestRelay::start_with(|c| c.limits.commands_per_session_per_s = 2000).await;
    let addr = relay.address();
    let mut attack = Attack::begin();
    let ep = attacker_endpoint();

    // The most transmissions one frame holds: the smallest commands.
    let full_of = |cmd: &Command| {
        let mut fb = FrameBuilder::new();
        let mut n = 0u64;
        while fb.push(&Transmission::command(CorrId::from_u64(n + 1), None, cmd)) {
            n += 1;
        }
        (fb.finish(), n)
    };
    let (pings, per_frame) = full_of(&Command::Ping);
    let (drops, _) = full_of(&Command::Drop);
    println!("maximal batch: a frame holds at most {per_frame} transmissions");

    let mut tasks = Vec::new();
    for kind in 0..3 {
        let s = handshaken(&ep, &relay).await.unwrap();
        let frame = if kind == 0 {
            drops.clone()
        } else {
            pings.clone()
        };
        tasks.push(tokio::spawn(blast(s, vec![frame; FRAMES])));
    }
    // A header that claims more transmissions than the frame holds.
    let mut s = handshaken(&ep, &relay).await.unwrap();
    let mut lying = vec![0u8; sotto_protocol::FRAME_PLAINTEXT_LEN];
    lying[..2].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(s.send_frame(&lying).await);
    assert!(
        s.recv_frame().await.is_none(),
        "a lying frame header must close the session"
    );

    attack.good_client(&addr).await;
    let (_, answers) = attack.end("maximal batch counts", tasks).await;
    println!(
        "maximal batch: {} frames of {per_frame} DROPs (answers: {:?}); 2 × {} frames of \
         {per_frame} PINGs (answers: {:?}, {:?})",
        FRAMES, answers[0], FRAMES, answers[1], answers[2]
    );
    assert_eq!(answers[0].answered, 0, "DROP is never answered");
    for a in &answers[1..] {
        assert_eq!(a.answered, per_frame * FRAMES as u64, "every PING answered");
        assert!(a.limited > 0, "the command limit applied");
        assert_eq!(a.pongs + a.limited, a.answered);
    }
    assert!(relay.running().metrics.cover_received.get() >= per_frame * FRAMES as u64);
}
