//! `sotto … --through RELAY` and `sotto relay through`: contact set-up and messages reach
//! the contact's relay through a relay of the sender's choosing (FWD, `docs/protocol.md`
//! § 10a), so that the contact's relay sees that relay instead of the sender.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod agent_support;

use std::path::{Path, PathBuf};

use agent_support::TestRelay;

/// Bound on `recv` runs waiting for something (each returns after a quiet second).
const RECV_ATTEMPTS: usize = 20;

struct Profile {
    home: PathBuf,
}

impl Profile {
    fn new(root: &Path, name: &str) -> Self {
        Self {
            home: root.join(name),
        }
    }

    /// Runs `sotto --home HOME args…`; expects success and returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sotto"));
        cmd.arg("--home")
            .arg(&self.home)
            .args(args)
            .env("SOTTO_PASSPHRASE", "correct horse battery staple")
            .env("SOTTO_AUTO_DELAY", "0")
            .env("SOTTO_TIMEOUT", "3")
            .stdin(std::process::Stdio::null());
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "sotto {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `recv` until `want` appears in its output (collected over runs).
    async fn recv_until(&self, want: &str) -> String {
        let mut all = String::new();
        for _ in 0..RECV_ATTEMPTS {
            all.push_str(&self.ok(&["recv", "--wait", "10", "--idle", "1"]).await);
            if all.contains(want) {
                return all;
            }
        }
        panic!("{want:?} never arrived; got {all:?}");
    }

    /// Runs `recv` until the contact `name` is connected.
    async fn recv_until_connected(&self, name: &str) {
        for _ in 0..RECV_ATTEMPTS {
            self.ok(&["recv", "--wait", "10", "--idle", "1"]).await;
            let out = self.ok(&["contacts", "--json"]).await;
            let connected = out
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .any(|v| v["name"] == name && v["status"] == "connected");
            if connected {
                return;
            }
        }
        panic!("{name} never connected");
    }
}

fn rfwd_count(relay: &TestRelay) -> u64 {
    relay
        .relay
        .as_ref()
        .unwrap()
        .metrics
        .commands
        .with_label_values(&["RFWD"])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_up_and_messages_go_through_the_chosen_relay() {
    let alice_relay = TestRelay::start().await;
    let bob_relay = TestRelay::start().await;
    // The relay Bob sends through, on its own loopback address.
    let through = TestRelay::start_with(|c| {
        c.listen = "127.0.0.3:0".parse().unwrap();
        c.host = "127.0.0.3".into();
        c.forwarding.allow_private = true;
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let alice = Profile::new(root.path(), "alice");
    let bob = Profile::new(root.path(), "bob");
    alice.ok(&["init"]).await;
    bob.ok(&["init"]).await;
    alice
        .ok(&["relay", "add", &alice_relay.address().to_string()])
        .await;
    bob.ok(&["relay", "add", &bob_relay.address().to_string()])
        .await;
    let t = through.address().to_string();
    bob.ok(&["relay", "add", &t]).await;
    assert_eq!(
        bob.ok(&["relay", "through"]).await.trim(),
        "sending directly"
    );
    assert_eq!(
        bob.ok(&["relay", "through", &t]).await.trim(),
        format!("sending through {t}")
    );

    // Bob's SKEY and HELLO to Alice's queue go through the chosen relay.
    let link = alice.ok(&["invite", "--name", "bob"]).await;
    bob.ok(&["accept", link.trim(), "--name", "alice"]).await;
    assert!(rfwd_count(&alice_relay) >= 2, "set-up went directly");
    alice.recv_until_connected("bob").await;
    bob.recv_until_connected("alice").await;

    let before = rfwd_count(&alice_relay);
    bob.ok(&["send", "alice", "through the relay of my choosing"])
        .await;
    assert!(
        alice
            .recv_until("bob: through the relay of my choosing")
            .await
            .contains("bob: through the relay of my choosing")
    );
    assert_eq!(rfwd_count(&alice_relay), before + 1);

    // Directly again by default; `--through` for one command.
    bob.ok(&["relay", "through", "--off"]).await;
    bob.ok(&["send", "alice", "direct"]).await;
    assert_eq!(rfwd_count(&alice_relay), before + 1);
    bob.ok(&["send", "alice", "once more through", "--through", &t])
        .await;
    assert_eq!(rfwd_count(&alice_relay), before + 2);
    let got = alice.recv_until("bob: once more through").await;
    assert!(got.contains("bob: direct"), "{got}");
    // The forwarding relay executed nothing itself.
    assert_eq!(rfwd_count(&through), 0);
}
