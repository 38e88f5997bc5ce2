//! Helpers shared by the agent and CLI tests: real relays on 127.0.0.1:0, each with a real
//! data directory, and agents with cheap key derivation and no automatic-send delay.
#![allow(dead_code, clippy::unwrap_used)]

pub mod cli;

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use sotto_client::ClientOptions;
use sotto_client::agent::{Agent, AgentOptions, Event, KdfParams, ReceiveOptions};
use sotto_protocol::RelayAddress;
use sotto_relay::config::Config;
use sotto_relay::{RunningRelay, datadir};

/// Bound on any one receive in a test: a missing message fails the test instead of hanging
/// it. Not a performance threshold.
pub const RECEIVE_BOUND: Duration = Duration::from_secs(60);

/// A relay in a temporary data directory.
pub struct TestRelay {
    pub relay: Option<RunningRelay>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestRelay {
    /// Loopback, ephemeral port, no metrics, immediate delivery.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        datadir::init(dir.path(), &datadir::InitOptions::default()).unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics: "off".into(),
            ..Config::default()
        };
        config.delivery.mode = "off".into();
        tweak(&mut config);
        let relay = sotto_relay::start(dir.path(), config.clone())
            .await
            .unwrap();
        Self {
            relay: Some(relay),
            dir,
            config,
        }
    }

    pub fn address(&self) -> RelayAddress {
        self.relay.as_ref().unwrap().address.clone()
    }

    /// Clean shutdown, then start again on the same directory and port.
    pub async fn restart(&mut self) {
        let old = self.relay.take().unwrap();
        let port = old.local_addr.port();
        old.shutdown().await;
        let mut config = self.config.clone();
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
        self.relay = Some(sotto_relay::start(self.dir.path(), config).await.unwrap());
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await;
        }
    }
}

/// Agent settings for tests: cheap KDF, no automatic delay, short connect timeout.
pub fn options() -> AgentOptions {
    AgentOptions {
        client: ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        },
        auto_delay_mean: Duration::ZERO,
        kdf: KdfParams::INSECURE_FAST,
        send_tap: None,
        send_timeout: None,
        stop_after_send: false,
        traffic: sotto_client::timing::TrafficPolicy::OFF,
    }
}

/// A new profile receiving on `relay` by default.
pub fn agent(home: &Path, relay: &RelayAddress, opts: AgentOptions) -> Agent {
    let a = Agent::create(home, b"test passphrase", opts).unwrap();
    a.add_relay(&relay.to_string()).unwrap();
    a
}

/// Receives until `done` says so (given every event so far), bounded by [`RECEIVE_BOUND`].
pub async fn receive_until(
    agent: &mut Agent,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut events = Vec::new();
    let opts = ReceiveOptions {
        wait: Some(RECEIVE_BOUND),
        ..ReceiveOptions::default()
    };
    if done(&events) {
        return events;
    }
    agent
        .receive(opts, |e| {
            events.push(e.clone());
            if done(&events) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
        .unwrap();
    assert!(
        done(&events),
        "receive ended before the condition: {events:?}"
    );
    events
}

/// Texts received from `contact`, in order.
pub fn texts_from(events: &[Event], contact: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message {
                contact: c, text, ..
            } if c == contact => Some(text.clone()),
            _ => None,
        })
        .collect()
}

pub fn connected(events: &[Event], contact: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Connected { contact: c } if c == contact))
}

/// Makes `alice` and `bob` contacts (alice invites, bob accepts) and completes the set-up
/// on both sides.
pub async fn connect(alice: &mut Agent, bob: &mut Agent) {
    let link = alice.invite(None, Some("bob")).await.unwrap();
    bob.accept(&link, "alice", None).await.unwrap();
    receive_until(alice, |ev| connected(ev, "bob")).await;
    // The inviter's SKEY and READY are automatic sends (delay zero here): do them.
    flush(alice).await;
    receive_until(bob, |ev| connected(ev, "alice")).await;
}

/// Does the agent's due outbox items (automatic sends) now.
pub async fn flush(agent: &mut Agent) {
    agent
        .flush_due(&mut |e: &Event| {
            panic!("unexpected event while flushing: {e:?}");
        })
        .await
        .unwrap();
}

/// Every file under `dir`, recursively, as raw bytes.
pub fn all_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p.display().to_string(), b));
            }
        }
    }
    out
}

/// Asserts that no file under `dir` contains any of `needles`.
///
/// One pass per file finds where any needle could start (a byte some needle starts with),
/// and only those places are compared: the relay's data directory holds its 64 MiB disk
/// reserve, all zeros, which a window-by-window search for each needle took minutes to
/// read in a debug build.
pub fn assert_no_plaintext(dir: &Path, needles: &[String]) {
    let files = all_bytes(dir);
    assert!(!files.is_empty());
    let mut first = [false; 256];
    for n in needles {
        assert!(!n.is_empty());
        first[usize::from(n.as_bytes()[0])] = true;
    }
    for (name, bytes) in &files {
        for (at, b) in bytes.iter().enumerate() {
            if !first[usize::from(*b)] {
                continue;
            }
            for n in needles {
                assert!(
                    !bytes[at..].starts_with(n.as_bytes()),
                    "{name} contains the plaintext {n:?}"
                );
            }
        }
    }
}
