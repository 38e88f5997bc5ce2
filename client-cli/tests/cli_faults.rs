//! The `sotto` binary under relay faults, with the relay as a process of its own that the
//! tests kill (SIGKILL), freeze (SIGSTOP / SIGCONT) and restart on the same port and data
//! directory, and `sotto` processes ended by real signals: an interrupted or killed send
//! never locks the contact, a send to a dead relay ends within its timeout and says so,
//! `listen` reconnects, and every message is received exactly once, in order.
//!
//! The relay process is this test binary again, running the ignored helper
//! [`relay_process`] (so it is the relay library on a real port, in a real data directory,
//! with nothing shared with the test but the directory).

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod agent_support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agent_support::cli::{Profile, signal};
use rand::{Rng as _, SeedableRng as _};

const RELAY_DIR_ENV: &str = "SOTTO_TEST_RELAY_PROCESS_DIR";
const RELAY_PORT_ENV: &str = "SOTTO_TEST_RELAY_PROCESS_PORT";
const LISTENING: &str = "RELAY-LISTENING ";

/// Bound on anything a test waits for (a process to exit, a relay to start, a line to be
/// printed): a hang fails the test instead of holding CI. Not a performance threshold.
/// A `listen` notices a killed relay after the QUIC idle timeout (30 s), so it is 120 s.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The relay as a child process on a fixed port and data directory.
struct RelayProcess {
    child: Option<Child>,
    /// Kept so that the relay never writes into a closed pipe.
    _stdout: Option<BufReader<std::process::ChildStdout>>,
    dir: tempfile::TempDir,
    port: u16,
    address: String,
}

impl RelayProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        sotto_relay::datadir::init(dir.path(), &sotto_relay::datadir::InitOptions::default())
            .unwrap();
        let (child, stdout, port, address) = spawn_relay(dir.path(), 0);
        Self {
            child: Some(child),
            _stdout: Some(stdout),
            dir,
            port,
            address,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, and waits for it to be gone.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        self._stdout = None;
    }

    /// Starts it again on the same port and data directory (after [`RelayProcess::kill`]).
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let (child, stdout, port, address) = spawn_relay(self.dir.path(), self.port);
        assert_eq!((port, &address), (self.port, &self.address));
        self.child = Some(child);
        self._stdout = Some(stdout);
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // A frozen relay must be thawed to die cleanly; SIGKILL works either way.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts [`relay_process`] on `dir` and `port` (0: any) and waits for it to listen.
fn spawn_relay(
    dir: &Path,
    port: u16,
) -> (Child, BufReader<std::process::ChildStdout>, u16, String) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "relay_process",
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(RELAY_DIR_ENV, dir)
        .env(RELAY_PORT_ENV, port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = tx.send(None);
                return None;
            }
            // libtest may have printed `test relay_process ... ` before it on the line.
            if let Some((_, rest)) = line.trim_end().split_once(LISTENING) {
                let _ = tx.send(Some(rest.to_owned()));
                return Some(stdout);
            }
        }
    });
    let Ok(Some(rest)) = rx.recv_timeout(HANG_GUARD) else {
        let _ = child.kill();
        panic!("the relay process did not start");
    };
    let stdout = reader.join().unwrap().unwrap();
    let (port, address) = rest.split_once(' ').unwrap();
    (child, stdout, port.parse().unwrap(), address.to_owned())
}

/// The relay of the tests in this file, in a process of its own: the relay library on
/// 127.0.0.1 and the port in `SOTTO_TEST_RELAY_PROCESS_PORT`, in the data directory
/// `SOTTO_TEST_RELAY_PROCESS_DIR`, delivering at once; prints its port and address, then
/// runs until killed.
#[test]
#[ignore = "helper: the relay process of the other tests in this file"]
fn relay_process() {
    let Some(dir) = std::env::var_os(RELAY_DIR_ENV) else {
        return;
    };
    let port: u16 = std::env::var(RELAY_PORT_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut config = sotto_relay::config::Config {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            metrics: "off".into(),
            ..sotto_relay::config::Config::default()
        };
        config.delivery.mode = "off".into();
        let relay = sotto_relay::start(Path::new(&dir), config).await.unwrap();
        let mut out = std::io::stdout();
        writeln!(
            out,
            "{LISTENING}{} {}",
            relay.local_addr.port(),
            relay.address
        )
        .unwrap();
        out.flush().unwrap();
        std::future::pending::<()>().await;
    });
}

/// A relay process, and Alice and Bob, contacts through it (both receive on it), with
/// their profiles in the directory returned.
async fn alice_and_bob() -> (RelayProcess, tempfile::TempDir, Profile, Profile) {
    let relay = RelayProcess::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Profile::new(root.path(), "alice");
    let bob = Profile::new(root.path(), "bob");
    for p in [&alice, &bob] {
        p.ok(&["init"]).await;
        p.ok(&["relay", "add", &relay.address]).await;
    }
    let link = alice.ok(&["invite", "--name", "bob"]).await;
    bob.ok(&["accept", link.trim(), "--name", "alice"]).await;
    alice.recv_until_connected("bob").await;
    bob.recv_until_connected("alice").await;
    (relay, root, alice, bob)
}

/// Waits (bounded) for a child to exit; returns its output.
async fn finish(child: Child) -> Output {
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    tokio::time::timeout(HANG_GUARD, waited)
        .await
        .expect("the process did not exit")
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until process `pid` holds a lock of the profile in `home` as a sender (it wrote
/// itself into the contact's outbox lock file).
async fn holds_outbox_lock(home: &Path, pid: u32) {
    let me = format!("{pid} send");
    let until = Instant::now() + HANG_GUARD;
    loop {
        let held = std::fs::read_dir(home)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("outbox-") && n.ends_with(".lock"))
            })
            .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.trim() == me));
        if held {
            return;
        }
        assert!(Instant::now() < until, "process {pid} never took the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives (as Bob) until `last` arrived from Alice; asserts that `expected` arrived in
/// that order, each exactly once, and nothing else from her.
async fn bob_receives_exactly(bob: &Profile, expected: &[String]) {
    let last = expected.last().unwrap();
    let got = bob.recv_until(&[], &format!("alice: {last}")).await;
    let texts: Vec<&str> = got
        .lines()
        .filter_map(|l| l.strip_prefix("alice: "))
        .collect();
    assert_eq!(texts, expected, "each message once, in order");
}

/// Five rounds of: a `send` running while the relay is SIGKILLed at a random moment, the
/// relay restarted on the same port and directory, three more sends. The sends after each
/// restart all succeed (nothing left by the killed one holds the contact), and in the end
/// Bob has every message — those whose send exited 0 and those the killed rounds left
/// queued — exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_survive_a_relay_killed_and_restarted_in_a_loop() {
    let seed: u64 = std::env::var("SOTTO_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18);
    eprintln!("seed {seed} (SOTTO_TEST_SEED)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut relay, _root, alice, bob) = alice_and_bob().await;

    let mut sent = Vec::new();
    let mut exit_zero = 0;
    for round in 0..5 {
        let text = format!("round {round}: sent while the relay was killed");
        let send = alice.spawn(&["send", "bob", &text]);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..600))).await;
        relay.kill();
        let out = finish(send).await;
        if out.status.success() {
            exit_zero += 1;
        } else {
            let err = stderr(&out);
            assert!(err.contains("stays queued"), "round {round}: {err}");
        }
        sent.push(text);
        relay.restart();
        let mut ok = 0;
        for k in 0..3 {
            let text = format!("round {round}: sent after the restart, {k}");
            let out = alice
                .run_env(&["send", "bob", &text], &[("SOTTO_TIMEOUT", "20")])
                .await;
            if out.status.success() {
                ok += 1;
            } else {
                eprintln!("round {round}, send {k}: {}", stderr(&out));
            }
            sent.push(text);
        }
        assert_eq!(ok, 3, "round {round}: sends after the restart failed");
    }
    eprintln!("sends during a kill that still exited 0: {exit_zero} of 5");
    bob_receives_exactly(&bob, &sent).await;
    assert!(!alice.ok(&["contacts"]).await.contains("queued"));
}

/// A `send` SIGKILLed while it holds the contact's outbox lock (its relay frozen): while it
/// lives, another `send` says at once which process holds the contact and that its message
/// stays queued; once it is dead, the next `send` goes through without waiting for
/// anything, and every message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_send_never_locks_the_contact() {
    let (relay, _root, alice, bob) = alice_and_bob().await;

    signal(relay.pid(), "STOP");
    let held = alice.spawn_env(
        &["send", "bob", "sent by the process that is killed"],
        &[("SOTTO_TIMEOUT", "60")],
    );
    let held_pid = held.id();
    holds_outbox_lock(&alice.home, held_pid).await;

    let err = alice
        .fails_in_one_line(&["send", "bob", "sent while the contact is held"])
        .await;
    assert!(
        err.contains(&format!("another `sotto send` (process {held_pid})"))
            && err.contains("stays queued"),
        "{err}"
    );

    signal(held_pid, "KILL");
    let out = finish(held).await;
    assert!(!out.status.success());
    signal(relay.pid(), "CONT");

    let out = alice
        .run_env(
            &["send", "bob", "sent after the kill"],
            &[("SOTTO_TIMEOUT", "20")],
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "nothing waited for");
    bob_receives_exactly(
        &bob,
        &[
            "sent by the process that is killed".into(),
            "sent while the contact is held".into(),
            "sent after the kill".into(),
        ],
    )
    .await;
}

/// SIGINT and SIGTERM end a `send` stuck on a frozen relay with 130 and 143, its message
/// queued; they end `listen` and `recv` with 0. Once the relay runs again, each message
/// arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_end_commands_cleanly_and_lose_nothing() {
    let (relay, _root, alice, bob) = alice_and_bob().await;

    signal(relay.pid(), "STOP");
    for (name, code) in [("INT", 130), ("TERM", 143)] {
        let send = alice.spawn_env(
            &["send", "bob", &format!("interrupted by SIG{name}")],
            &[("SOTTO_TIMEOUT", "60")],
        );
        holds_outbox_lock(&alice.home, send.id()).await;
        signal(send.id(), name);
        let out = finish(send).await;
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert_eq!(
            stderr(&out).trim(),
            "sotto: interrupted; the message stays queued and is sent by the next `sotto send`, `recv` or `listen`"
        );
    }
    for (args, name) in [
        (&["listen", "--policy", "off"][..], "TERM"),
        (&["listen"][..], "INT"),
        (&["recv", "--wait", "60"][..], "INT"),
    ] {
        let child = bob.spawn(args);
        // Let it start connecting to the frozen relay.
        tokio::time::sleep(Duration::from_millis(500)).await;
        signal(child.id(), name);
        let out = finish(child).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    signal(relay.pid(), "CONT");

    alice.ok(&["send", "bob", "after the signals"]).await;
    bob_receives_exactly(
        &bob,
        &[
            "interrupted by SIGINT".into(),
            "interrupted by SIGTERM".into(),
            "after the signals".into(),
        ],
    )
    .await;
}

/// With the relay dead, `send` exits non-zero within its timeout (one timeout, not one per
/// attempt), saying the relay is unreachable and the message queued, and `contacts` shows
/// it queued with the reason; after a restart the next send delivers both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_dead_relay_ends_in_time_and_says_why() {
    let (mut relay, _root, alice, bob) = alice_and_bob().await;
    relay.kill();

    let started = Instant::now();
    let out = alice
        .run_env(
            &["send", "bob", "to a dead relay"],
            &[("SOTTO_TIMEOUT", "5")],
        )
        .await;
    let took = started.elapsed();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("relay 127.0.0.1:{} unreachable", relay.port))
            && err.contains("stays queued"),
        "{err}"
    );
    // Hang guard, not a speed target: before, each of three attempts waited 5 s.
    assert!(took < Duration::from_secs(14), "{took:?}");
    let listed = alice.ok(&["contacts"]).await;
    assert!(
        listed.contains(&format!(
            "(1 queued; last attempt failed: relay 127.0.0.1:{} unreachable",
            relay.port
        )),
        "{listed}"
    );
    let json = alice.ok(&["contacts", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(v["queued"], 1);
    assert!(v["last_failure_at"].as_u64().unwrap() > 0);

    relay.restart();
    alice.ok(&["send", "bob", "after the restart"]).await;
    let listed = alice.ok(&["contacts"]).await;
    assert!(
        !listed.contains("queued") && !listed.contains("failed"),
        "{listed}"
    );
    bob_receives_exactly(
        &bob,
        &["to a dead relay".into(), "after the restart".into()],
    )
    .await;
}

/// A running `listen` whose relay is SIGKILLed and restarted says it lost the connection,
/// reconnects by itself, says so, and shows a message sent after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_reconnects_after_its_relay_restarts() {
    let (mut relay, _root, alice, bob) = alice_and_bob().await;

    let mut listen = bob.spawn(&["listen", "--policy", "off"]);
    let lines = lines_of(listen.stdout.take().unwrap());
    let errors = lines_of(listen.stderr.take().unwrap());
    alice.ok(&["send", "bob", "before the restart"]).await;
    wait_for_line(&lines, "alice: before the restart");

    relay.kill();
    relay.restart();
    alice
        .run_env(
            &["send", "bob", "after the restart"],
            &[("SOTTO_TIMEOUT", "20")],
        )
        .await;
    wait_for_line(&lines, "alice: after the restart");
    let hp = format!("127.0.0.1:{}", relay.port);
    wait_for_line(&errors, &format!("sotto: reconnected to relay {hp}"));

    signal(listen.id(), "INT");
    let status = tokio::task::spawn_blocking(move || listen.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

/// The lines a child prints, as they come.
fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (bounded) for the line `want`; panics with what came instead.
fn wait_for_line(lines: &mpsc::Receiver<String>, want: &str) {
    let until = Instant::now() + HANG_GUARD;
    let mut seen = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(l) if l == want => return,
            Ok(l) => seen.push(l),
            Err(_) => break,
        }
    }
    panic!("{want:?} never came; got {seen:?}");
}
