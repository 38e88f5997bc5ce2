//! The `sotto` binary driven as a person would: one profile directory per person, a fixed
//! test passphrase, no automatic-send delay, a short network timeout, nothing inherited
//! from the environment that would change what is tested (`SOTTO_SOCKS5`, the test hook
//! `SOTTO_TEST_STOP_BEFORE_ACK`).

use std::path::{Path, PathBuf};
use std::process::Output;

/// How many `recv` runs a test allows for something to arrive (each returns after a quiet
/// second, `--idle 1`); a bound so a failure ends the test, not a timing assumption.
pub const RECV_ATTEMPTS: usize = 20;

/// One person's profile.
pub struct Profile {
    pub home: PathBuf,
}

impl Profile {
    pub fn new(root: &Path, name: &str) -> Self {
        Self {
            home: root.join(name),
        }
    }

    /// Runs `sotto --home HOME args…` with the passphrase and extra environment.
    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sotto"));
        cmd.arg("--home")
            .arg(&self.home)
            .args(args)
            .env("SOTTO_PASSPHRASE", "correct horse battery staple")
            .env("SOTTO_AUTO_DELAY", "0")
            .env("SOTTO_TIMEOUT", "3")
            .env_remove("SOTTO_TEST_STOP_BEFORE_ACK")
            .env_remove("SOTTO_SOCKS5")
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// Starts `sotto --home HOME args…` (e.g. `listen`) with its output piped; end it with
    /// [`interrupt`].
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_env(args, &[])
    }

    /// [`Profile::spawn`] with extra environment.
    pub fn spawn_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sotto"));
        cmd.arg("--home")
            .arg(&self.home)
            .args(args)
            .env("SOTTO_PASSPHRASE", "correct horse battery staple")
            .env("SOTTO_AUTO_DELAY", "0")
            .env("SOTTO_TIMEOUT", "3")
            .env_remove("SOTTO_TEST_STOP_BEFORE_ACK")
            .env_remove("SOTTO_SOCKS5")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    /// Runs and expects success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "sotto {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(!out.status.success(), "sotto {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs and expects failure with one line on stderr; returns that line.
    pub async fn fails_in_one_line(&self, args: &[&str]) -> String {
        let err = self.fails(args).await;
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        err
    }

    /// Runs `recv` (with `args`) until `want` appears in its output (collected over runs).
    pub async fn recv_until(&self, args: &[&str], want: &str) -> String {
        let mut all = String::new();
        for _ in 0..RECV_ATTEMPTS {
            let mut a = vec!["recv", "--wait", "10", "--idle", "1"];
            a.extend_from_slice(args);
            all.push_str(&self.ok(&a).await);
            if all.contains(want) {
                return all;
            }
        }
        panic!("{want:?} never arrived; got {all:?}");
    }

    /// Runs `recv` until the contact `name` is connected.
    pub async fn recv_until_connected(&self, name: &str) {
        for _ in 0..RECV_ATTEMPTS {
            self.ok(&["recv", "--wait", "10", "--idle", "1"]).await;
            if self.contact_status(name).await == "connected" {
                return;
            }
        }
        panic!("{name} never connected");
    }

    /// A contact's status from `contacts --json` (empty if there is no such contact).
    pub async fn contact_status(&self, name: &str) -> String {
        let out = self.ok(&["contacts", "--json"]).await;
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["name"] == name)
            .map(|v| v["status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// Ends a spawned `sotto` as Ctrl-C does (SIGINT) and returns its output once it exited.
pub async fn interrupt(child: std::process::Child) -> Output {
    signal(child.id(), "INT");
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// Sends signal `name` (`INT`, `TERM`, `KILL`, `STOP`, `CONT`) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}
