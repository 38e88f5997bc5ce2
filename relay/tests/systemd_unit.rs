//! Checks on the shipped hardened unit, `systemd/sotto-relay.service`.
//!
//! The text checks always run: they pin what an operator relies on (the command
//! line, the data directory, the unprivileged user, the capability set).
//! The `systemd-analyze` checks run only where that tool is installed (`.ci/run`
//! installs it); elsewhere they print why they were skipped and pass.
//!
//! This file deliberately does not use the relay crate: it tests a shipped file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Highest `systemd-analyze security` exposure level the unit may have
/// (0.0 = fully locked down, 10.0 = unprotected; up to 1.9 is rated "OK").
const MAX_EXPOSURE: f64 = 1.5;

/// The exact command line the unit must start.
const EXEC_START: &str = "ExecStart=/usr/local/bin/sotto-relay run --data /var/lib/sotto-relay";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("systemd")
        .join("sotto-relay.service")
}

fn unit_text() -> String {
    let path = unit_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Effective `Key=value` assignments of the unit, comments and sections dropped.
fn assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn value_of<'a>(assignments: &'a [(String, String)], key: &str) -> Option<&'a str> {
    assignments
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `true` when `systemd-analyze` can be run; otherwise prints the skip reason.
fn have_systemd_analyze(check: &str) -> bool {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            println!("skipped {check}: systemd-analyze not installed");
            false
        }
    }
}

fn combined_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn unit_runs_the_relay_as_a_dynamic_user_with_a_private_state_directory() {
    let text = unit_text();
    let a = assignments(&text);
    assert!(
        text.lines().any(|l| l.trim() == EXEC_START),
        "the unit must contain `{EXEC_START}`"
    );
    assert_eq!(value_of(&a, "Type"), Some("simple"));
    assert_eq!(value_of(&a, "DynamicUser"), Some("yes"));
    assert_eq!(value_of(&a, "StateDirectory"), Some("sotto-relay"));
    assert_eq!(value_of(&a, "StateDirectoryMode"), Some("0700"));
    assert_eq!(value_of(&a, "UMask"), Some("0077"));
    assert_eq!(value_of(&a, "Restart"), Some("on-failure"));
    assert_eq!(value_of(&a, "KillSignal"), Some("SIGTERM"));
    assert_eq!(value_of(&a, "ProtectSystem"), Some("strict"));
    assert_eq!(value_of(&a, "NoNewPrivileges"), Some("yes"));
}

#[test]
fn unit_keeps_only_the_capability_to_bind_low_ports() {
    let a = assignments(&unit_text());
    assert_eq!(
        value_of(&a, "CapabilityBoundingSet"),
        Some("CAP_NET_BIND_SERVICE")
    );
    assert_eq!(
        value_of(&a, "AmbientCapabilities"),
        Some("CAP_NET_BIND_SERVICE")
    );
    // A private user namespace would make CAP_NET_BIND_SERVICE useless for the
    // host's network namespace, and the relay could not bind UDP 443.
    let private_users = value_of(&a, "PrivateUsers").unwrap_or("no");
    assert!(
        matches!(private_users, "no" | "false" | "0" | "off"),
        "PrivateUsers={private_users} breaks binding ports below 1024"
    );
}

#[test]
fn systemd_analyze_security_rates_the_unit_at_most_1_5() {
    if !have_systemd_analyze("security check") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze security: {e}"));
    let text = combined_output(&out);
    if text.contains("unrecognized option") {
        // systemd < 250 has no --offline mode.
        println!("skipped security check: this systemd-analyze has no --offline mode");
        return;
    }
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in systemd-analyze output:\n{text}"));
    let level: f64 = line
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse exposure level from {line:?}"));
    println!("systemd-analyze security: {}", line.trim());
    assert!(
        level <= MAX_EXPOSURE,
        "exposure level {level} > {MAX_EXPOSURE}; full report:\n{text}"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if !have_systemd_analyze("verify check") {
        return;
    }
    // `verify` insists that ExecStart's binary exists and is executable, and the
    // relay is not installed at /usr/local/bin here. Check a copy of the unit,
    // under the same name, whose ExecStart points at this test's own executable
    // (which always exists); every other line is verified as shipped.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no current exe: {e}"));
    let text = unit_text();
    assert!(text.contains(EXEC_START), "unexpected ExecStart line");
    let replaced = text.replace(
        "ExecStart=/usr/local/bin/sotto-relay",
        &format!("ExecStart=\"{}\"", exe.display()),
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}"));
    let copy = dir.path().join("sotto-relay.service");
    std::fs::write(&copy, replaced).unwrap_or_else(|e| panic!("cannot write unit copy: {e}"));

    let out = Command::new("systemd-analyze")
        .args(["verify", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze verify: {e}"));
    let text = combined_output(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // verify exits 0 on directives it ignores ("Unknown key", "Failed to parse
    // ..., ignoring"): any message about our unit is a defect.
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sotto-relay.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complained about the unit:\n{}",
        complaints.join("\n")
    );
}
