//! A paced `RelayClient` over real QUIC on 127.0.0.1 against a small in-test responder that
//! counts every frame it reads: the frames the responder received are exactly the client's
//! ticks, with and without requests (real transmissions replace cover, they never add
//! frames), PACE is the first transmission and a refusal leaves the session paced, and
//! cover requests do nothing on a paced session. No relay needed.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::OsRng;
use sotto_protocol::address::Host;
use sotto_protocol::{
    Command, ErrorCode, Frame, FrameBuilder, RelayAddress, RelayStaticKey, Response, Transmission,
};
use sotto_timing::pacing::PacingPolicy;
use sotto_transport::client::{ClientOptions, RelayClient, RelayPacing};
use sotto_transport::{self as transport, FramedConnection, QuicOptions};
use tokio::sync::mpsc;

const TEST_BOUND: Duration = Duration::from_secs(120);
const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
/// Ticks per second of the clients here: fast, so that the tests are quick.
const RATE: f64 = 50.0;
/// Bound on `finish`: the responder closes as soon as it has read the end of the stream.
const FINISH_BOUND: Duration = Duration::from_secs(10);

/// How the responder answers PACE.
#[derive(Clone, Copy)]
enum PaceAnswer {
    Ok,
    Refuse(ErrorCode),
}

/// What the responder read from the client, one entry per frame.
#[derive(Debug)]
struct FrameSeen {
    /// Names of the commands in it ("DROP" for cover).
    commands: Vec<&'static str>,
    /// The gap of a PACE in it.
    pace_gap_ms: Option<u32>,
}

struct Responder {
    address: RelayAddress,
    frames: mpsc::UnboundedReceiver<FrameSeen>,
    /// Frames read, all sessions.
    count: Arc<AtomicU64>,
    /// Frames sent, all sessions.
    sent: Arc<AtomicU64>,
    _endpoint: quinn::Endpoint,
}

fn spawn_responder(pace: PaceAnswer) -> Responder {
    let key = RelayStaticKey::generate(&mut OsRng);
    let opts = QuicOptions::default();
    let (cert, tls_key) = transport::self_signed_cert("relay.test").unwrap();
    let endpoint = quinn::Endpoint::server(
        transport::server_config(cert, tls_key, &opts).unwrap(),
        LOCALHOST,
    )
    .unwrap();
    let address = RelayAddress {
        key: key.public(),
        host: Host::Ipv4(Ipv4Addr::LOCALHOST),
        port: endpoint.local_addr().unwrap().port(),
        tcp: None,
    };
    let (tx, frames) = mpsc::unbounded_channel();
    let count = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let ep = endpoint.clone();
    let counter = count.clone();
    let sent_counter = sent.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let key = key.clone();
            let tx = tx.clone();
            let counter = counter.clone();
            let sent = sent_counter.clone();
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                let framed = transport::accept(conn, &key, Duration::from_secs(10))
                    .await
                    .unwrap();
                respond(framed, pace, tx, counter, sent).await;
            });
        }
    });
    Responder {
        address,
        frames,
        count,
        sent,
        _endpoint: endpoint,
    }
}

/// Counts and reports every frame, answers PING and PACE at once, and closes the
/// connection once the client has ended its stream (as the relay does).
async fn respond(
    framed: FramedConnection,
    pace: PaceAnswer,
    seen: mpsc::UnboundedSender<FrameSeen>,
    count: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
) {
    let FramedConnection {
        mut sender,
        mut receiver,
        connection,
        ..
    } = framed;
    while let Ok(Some(plaintext)) = receiver.recv_frame().await {
        count.fetch_add(1, Ordering::SeqCst);
        let mut answers = FrameBuilder::new();
        let mut frame = FrameSeen {
            commands: Vec::new(),
            pace_gap_ms: None,
        };
        for t in Frame::decode(&plaintext).unwrap() {
            let cmd = t.decode_command().unwrap();
            frame.commands.push(cmd.name());
            let answer = match cmd {
                Command::Drop => continue,
                Command::Ping => Response::Pong,
                Command::Pace { gap_ms } => {
                    frame.pace_gap_ms = Some(gap_ms);
                    match pace {
                        PaceAnswer::Ok => Response::Ok,
                        PaceAnswer::Refuse(code) => Response::Err(code),
                    }
                }
                _ => Response::Err(ErrorCode::Prohibited),
            };
            assert!(answers.push(&Transmission::response(t.corr_id, None, &answer)));
        }
        let _ = seen.send(frame);
        if !answers.is_empty() {
            if sender.send_frame(answers.finish()).await.is_err() {
                return;
            }
            sent.fetch_add(1, Ordering::SeqCst);
        }
    }
    connection.close(0u32.into(), b"");
}

fn paced(relay_cover: f64) -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(30),
        pacing: Some(PacingPolicy::at_rate(RATE)),
        relay_cover,
        ..ClientOptions::default()
    }
}

async fn connect(r: &Responder, opts: &ClientOptions) -> RelayClient {
    let ep = transport::client_endpoint(LOCALHOST, &opts.quic).unwrap();
    let (client, pushed) = RelayClient::connect(&ep, &r.address, opts).await.unwrap();
    drop(pushed);
    client
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("did not complete within the test bound")
}

/// Waits until the responder has read `n` more frames; returns them.
async fn frames(r: &mut Responder, n: usize) -> Vec<FrameSeen> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(r.frames.recv().await.unwrap());
    }
    out
}

#[tokio::test]
async fn an_idle_paced_client_sends_exactly_its_ticks_all_cover() {
    bounded(async {
        let mut r = spawn_responder(PaceAnswer::Ok);
        // No relay cover asked for: no PACE, nothing real at all.
        let client = connect(&r, &paced(0.0)).await;
        assert!(client.is_paced());
        assert_eq!(client.relay_pacing(), RelayPacing::NotAsked);
        for f in frames(&mut r, 30).await {
            assert_eq!(f.commands, ["DROP"]);
        }
        client.finish(FINISH_BOUND).await;
        let stats = client.stats();
        assert_eq!(r.count.load(Ordering::SeqCst), stats.ticks());
        assert_eq!(stats.real_ticks, 0);
        assert!(stats.cover_ticks >= 30);
        assert_eq!(stats.cover_sent, 0);
        assert!(client.is_closed());
    })
    .await;
}

#[tokio::test]
async fn requests_replace_cover_and_never_add_frames() {
    bounded(async {
        let mut r = spawn_responder(PaceAnswer::Ok);
        let client = connect(&r, &paced(2.0)).await;
        // PACE is the session's first transmission, with gap round(1000 / 2) ms.
        let first = frames(&mut r, 1).await.remove(0);
        assert_eq!(first.commands, ["PACE"]);
        assert_eq!(first.pace_gap_ms, Some(500));
        // Requests one after the other, and a burst of concurrent ones that share frames.
        for _ in 0..10 {
            client.ping().await.unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let c = client.clone();
            tasks.spawn(async move { c.ping().await });
        }
        while let Some(res) = tasks.join_next().await {
            res.unwrap().unwrap();
        }
        assert_eq!(client.relay_pacing(), RelayPacing::Accepted);
        client.finish(FINISH_BOUND).await;
        let stats = client.stats();
        let received = r.count.load(Ordering::SeqCst);
        assert_eq!(received, stats.ticks(), "one frame per tick, no more");
        // Every PING left in a tick of its own or shared one; no frame mixes cover in.
        let mut pings = 0;
        let mut real_frames = 1;
        while let Ok(f) = r.frames.try_recv() {
            if f.commands != ["DROP"] {
                assert!(f.commands.iter().all(|c| *c == "PING"), "{f:?}");
                pings += f.commands.len();
                real_frames += 1;
            }
        }
        assert_eq!(pings, 110);
        assert_eq!(stats.real_ticks, real_frames);
        assert_eq!(stats.requests, 111, "PACE and the PINGs");
        assert_eq!(stats.late_answers, 0);
    })
    .await;
}

#[tokio::test]
async fn a_relay_that_refuses_pace_leaves_the_session_paced() {
    bounded(async {
        let mut r = spawn_responder(PaceAnswer::Refuse(ErrorCode::Syntax));
        let client = connect(&r, &paced(1.0)).await;
        assert_eq!(frames(&mut r, 1).await[0].commands, ["PACE"]);
        client.ping().await.unwrap();
        assert_eq!(
            client.relay_pacing(),
            RelayPacing::Refused(ErrorCode::Syntax)
        );
        // Cover requests do nothing: the ticks are the cover.
        client.send_cover().await.unwrap();
        client.start_cover_traffic(100.0).await.unwrap();
        let before = client.stats().ticks();
        // Ticks go on.
        frames(&mut r, 20).await;
        client.finish(FINISH_BOUND).await;
        let stats = client.stats();
        assert!(stats.ticks() > before, "ticks go on");
        assert_eq!(r.count.load(Ordering::SeqCst), stats.ticks());
        assert_eq!(stats.real_ticks, 2, "PACE, then the PING");
        assert_eq!(stats.cover_sent, 0);
    })
    .await;
}

#[tokio::test]
async fn an_invalid_pacing_policy_is_refused_before_connecting() {
    let r = spawn_responder(PaceAnswer::Ok);
    let opts = ClientOptions {
        pacing: Some(PacingPolicy::at_rate(0.0)),
        ..ClientOptions::default()
    };
    let ep = transport::client_endpoint(LOCALHOST, &opts.quic).unwrap();
    let err = RelayClient::connect(&ep, &r.address, &opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pacing rate"), "{err}");
    assert_eq!(r.count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn echo_answers_each_received_frame_with_one_frame_that_carries_what_waits() {
    bounded(async {
        let mut r = spawn_responder(PaceAnswer::Ok);
        // Slow ticks (mean 2 s), so that a request queued right after an answer leaves in
        // that answer's echo (200 ms later) unless a tick comes first (about 1 in 10).
        let opts = ClientOptions {
            pacing: Some(PacingPolicy::at_rate(0.5)),
            echo: true,
            ..paced(0.0)
        };
        let client = connect(&r, &opts).await;
        for _ in 0..10 {
            client.ping().await.unwrap();
        }
        // The last PONG's echo is due 200 ms after it arrived.
        while client.stats().echoes < r.sent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.finish(FINISH_BOUND).await;
        let stats = client.stats();
        let sent = r.sent.load(Ordering::SeqCst);
        assert_eq!(sent, 10, "one PONG frame per PING");
        assert_eq!(stats.echoes, sent, "one echo per received frame");
        assert_eq!(stats.echoes_dropped, 0);
        assert_eq!(
            r.count.load(Ordering::SeqCst),
            stats.frames(),
            "the responder read the ticks and the echoes, nothing else"
        );
        let mut ping_frames = 0;
        while let Ok(f) = r.frames.try_recv() {
            if f.commands != ["DROP"] {
                assert_eq!(f.commands, ["PING"], "{f:?}");
                ping_frames += 1;
            }
        }
        assert_eq!(ping_frames, 10);
        assert!(
            ping_frames > stats.real_ticks,
            "echoes carried PINGs: {ping_frames} frames with a PING, {} real ticks",
            stats.real_ticks
        );
    })
    .await;
}

#[tokio::test]
async fn without_echo_received_frames_get_no_answer_frames() {
    bounded(async {
        let r = spawn_responder(PaceAnswer::Ok);
        let client = connect(&r, &paced(0.0)).await;
        for _ in 0..10 {
            client.ping().await.unwrap();
        }
        client.finish(FINISH_BOUND).await;
        let stats = client.stats();
        assert_eq!(stats.echoes, 0);
        assert_eq!(r.count.load(Ordering::SeqCst), stats.ticks());
    })
    .await;
}
