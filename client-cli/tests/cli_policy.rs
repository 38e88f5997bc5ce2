//! `sotto listen --policy …` against real relays, by counting: the frames a relay received
//! from a paced listen are exactly the ticks listen reports, whether or not messages are
//! sent (real messages take the place of cover frames, they never add frames); loops sent
//! through a relay come back, are never shown as messages, and their queue is made once and
//! used again after a restart.
//!
//! Rates are high (20 frames a second) so that the tests are quick; nothing here depends on
//! how long anything takes, only on counts. Before the relay paces its answers, it answers
//! PACE with ERR SYNTAX: listen says so and goes on paced, and the counts are the same.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod agent_support;

use std::time::Duration;

use agent_support::cli::{Profile, interrupt};
use agent_support::{RECEIVE_BOUND, TestRelay};
use sotto_protocol::FRAME_LEN;

/// The pacing of these tests: 20 frames a second, relay cover once a second (the relay's
/// shortest PACE gap by default).
const FAST: &[&str] = &["--policy", "off", "--pace-rate", "20", "--relay-cover", "1"];

fn running(r: &TestRelay) -> &sotto_relay::RunningRelay {
    r.relay.as_ref().unwrap()
}

/// Frames the relay has read from all its sessions.
fn frames_in(r: &TestRelay) -> u64 {
    running(r).metrics.bytes_in.get() / FRAME_LEN as u64
}

/// Frames the relay has sent to all its sessions.
fn frames_out(r: &TestRelay) -> u64 {
    running(r).metrics.bytes_out.get() / FRAME_LEN as u64
}

/// RFWD commands the relay has executed (what another relay forwarded to it).
fn rfwd_count(r: &TestRelay) -> u64 {
    running(r)
        .metrics
        .commands
        .with_label_values(&["RFWD"])
        .get()
}

/// Waits (bounded) until `cond` holds; a bound on a count, not a timing assumption.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + RECEIVE_BOUND;
    while !cond() {
        assert!(tokio::time::Instant::now() < end, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the relay has no session left: everything its clients sent is counted.
async fn idle(r: &TestRelay) {
    until("the relay's sessions ended", || {
        running(r).metrics.sessions.get() == 0
    })
    .await;
}

/// A relay and Alice's profile with a pending invitation on it: a queue she receives on, so
/// that listen holds a link to that relay. The directory holds the profile.
async fn receiving_on_one_relay() -> (TestRelay, tempfile::TempDir, Profile) {
    let r1 = TestRelay::start().await;
    let root = tempfile::tempdir().unwrap();
    let alice = Profile::new(root.path(), "alice");
    alice.ok(&["init"]).await;
    alice.ok(&["relay", "add", &r1.address().to_string()]).await;
    alice.ok(&["invite", "--name", "bob"]).await;
    (r1, root, alice)
}

/// Interrupts a `listen --json`, checks it exited cleanly, waits until `relay` has counted
/// everything it sent, and returns its JSON lines and its stderr.
async fn stop(listen: std::process::Child, relay: &TestRelay) -> (Vec<serde_json::Value>, String) {
    let out = interrupt(listen).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    idle(relay).await;
    (
        json_lines(&out.stdout),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON lines of a listen's stdout.
fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The last line of `listen --json` under a policy: what it sent.
fn traffic(lines: &[serde_json::Value]) -> &serde_json::Value {
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "traffic", "{lines:?}");
    last
}

/// What listen reports for `relay`: (frames, real ticks).
fn sent_to(traffic: &serde_json::Value, relay: &TestRelay) -> (u64, u64) {
    let hp = relay.address().host_port();
    let r = traffic["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["relay"] == hp.as_str())
        .unwrap_or_else(|| panic!("no entry for {hp}: {traffic}"));
    (
        r["frames"].as_u64().unwrap(),
        r["real_ticks"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_with_a_policy_keeps_its_frame_rate_whether_or_not_messages_are_sent() {
    // Alice receives on and sends through r1 (the policy's default: her own relay); Bob
    // receives on r2, so that nothing but Alice's listen talks to r1 while it runs.
    let r1 = TestRelay::start_with(|c| {
        c.listen = "127.0.0.3:0".parse().unwrap();
        c.host = "127.0.0.3".into();
        c.forwarding.allow_private = true;
    })
    .await;
    let r2 = TestRelay::start().await;
    let root = tempfile::tempdir().unwrap();
    let alice = Profile::new(root.path(), "alice");
    let bob = Profile::new(root.path(), "bob");
    alice.ok(&["init"]).await;
    bob.ok(&["init"]).await;
    alice.ok(&["relay", "add", &r1.address().to_string()]).await;
    bob.ok(&["relay", "add", &r2.address().to_string()]).await;
    let link = alice.ok(&["invite", "--name", "bob"]).await;
    bob.ok(&["accept", link.trim(), "--name", "alice"]).await;
    alice.recv_until_connected("bob").await;
    bob.recv_until_connected("alice").await;

    // Nobody sends: listen's frames are its ticks, the PACE and the SUB in place of cover.
    idle(&r1).await;
    let before = frames_in(&r1);
    let mut args = vec!["listen", "--json"];
    args.extend_from_slice(FAST);
    let listen = alice.spawn(&args);
    until("40 frames from listen", || frames_in(&r1) >= before + 40).await;
    let (lines, stderr) = stop(listen, &r1).await;
    let (ticks, real) = sent_to(traffic(&lines), &r1);
    assert_eq!(
        frames_in(&r1) - before,
        ticks,
        "the relay read exactly listen's ticks"
    );
    assert!(ticks >= 40 && real >= 1, "{ticks} ticks, {real} real");
    assert!(
        stderr.contains("traffic policy: a frame 20 a second"),
        "{stderr}"
    );

    // Alice sends five messages while listen runs (`send --queue` leaves them to it): they
    // go out in ticks, through r1, and still the relay reads exactly the ticks.
    let before = frames_in(&r1);
    let forwarded = rfwd_count(&r2);
    let listen = alice.spawn(&args);
    for i in 0..5 {
        alice
            .ok(&["send", "--queue", "bob", &format!("paced message {i}")])
            .await;
    }
    let got = bob.recv_until(&[], "paced message 4").await;
    for i in 0..5 {
        assert_eq!(
            got.matches(&format!("alice: paced message {i}")).count(),
            1,
            "{got}"
        );
    }
    let (lines, _) = stop(listen, &r1).await;
    let (ticks, real) = sent_to(traffic(&lines), &r1);
    assert_eq!(
        frames_in(&r1) - before,
        ticks,
        "messages took the place of cover: no frame was added"
    );
    // PACE and SUB, and each FWD (a frame-sized transmission) in a tick of its own.
    assert!(real >= 6, "{real} real ticks");
    // Sent through Alice's own relay, on the paced link listen holds anyway.
    assert!(
        rfwd_count(&r2) >= forwarded + 5,
        "the messages did not go through r1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_come_back_unshown_and_their_queue_is_made_once() {
    let (r1, _root, alice) = receiving_on_one_relay().await;
    let m = &running(&r1).metrics;
    let news = || m.commands.with_label_values(&["NEW"]).get();
    assert_eq!(news(), 1);

    let args = [
        "listen",
        "--json",
        "--policy",
        "off",
        "--pace-rate",
        "20",
        "--loop-rate",
        "5",
    ];
    for run in 0..2 {
        let acked = m.messages_acked.get();
        let listen = alice.spawn(&args);
        // Loops are the only messages on r1: each one acknowledged came back.
        until("three loops back", || m.messages_acked.get() >= acked + 3).await;
        let out = interrupt(listen).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = json_lines(&out.stdout);
        let loops = &traffic(&lines)["loops"];
        assert!(
            loops["returned"].as_u64().unwrap() >= 1,
            "run {run}: {loops}"
        );
        assert!(loops["sent"].as_u64().unwrap() >= loops["returned"].as_u64().unwrap());
        assert_eq!(loops["overdue"], 0, "run {run}: {loops}");
        assert!(
            lines.iter().all(|l| l["event"] != "message"),
            "a loop was shown: {lines:?}"
        );
        // The loop queue was made in the first run (NEW, KEY) and used again in the second.
        assert_eq!(news(), 2, "run {run}");
        idle(&r1).await;
    }
    assert_eq!(m.commands.with_label_values(&["KEY"]).get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_by_default_echoes_each_frame_of_its_relay_and_adds_nothing_else() {
    let (r1, _root, alice) = receiving_on_one_relay().await;
    idle(&r1).await;

    // No --policy: the default (desktop), with its rates made fast and no loops. Its echo
    // answers each frame of the relay (PACE's and SUB's answers, the relay's cover).
    let before = frames_in(&r1);
    let out_before = frames_out(&r1);
    let listen = alice.spawn(&[
        "listen",
        "--json",
        "--pace-rate",
        "20",
        "--relay-cover",
        "1",
        "--loop-rate",
        "0",
    ]);
    // Four frames from the relay, then twenty more ticks (a second, five echo delays) so
    // that their echoes are due before listen stops.
    until("four frames from the relay", || {
        frames_out(&r1) >= out_before + 4
    })
    .await;
    let ticks_then = frames_in(&r1);
    until("twenty more frames from listen", || {
        frames_in(&r1) >= ticks_then + 20
    })
    .await;
    let (lines, _) = stop(listen, &r1).await;
    let t = traffic(&lines);
    let (frames, _) = sent_to(t, &r1);
    let r = &t["relays"][0];
    let (real, cover, echoes) = (
        r["real_ticks"].as_u64().unwrap(),
        r["cover_ticks"].as_u64().unwrap(),
        r["echoes"].as_u64().unwrap(),
    );
    assert_eq!(frames, real + cover + echoes, "{t}");
    assert_eq!(
        frames_in(&r1) - before,
        frames,
        "the relay read the ticks and the echoes, nothing else"
    );
    assert!(
        echoes >= 4,
        "one echo for each of the relay's first four frames: {t}"
    );
    assert!(
        echoes <= frames_out(&r1) - out_before,
        "never more echoes than frames: {t}"
    );
}
