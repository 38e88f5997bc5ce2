//! Idle sessions: how much a relay pays, in memory and handshake CPU, for clients that
//! connect and then say nothing.
//!
//! [`idle_sessions`] opens `sessions` sessions to one running relay (QUIC and the Noise
//! handshake, nothing else), keeps them open with QUIC keep-alives for `hold`, and reads the
//! relay process's resident memory and CPU time from `/proc/<pid>` before, after the
//! handshakes, after the hold and after closing. It sends no command at all, so what it
//! measures is the cost of a session, not of queues or messages.
//!
//! The relay must run in its own process (its memory is read from `/proc`, so an embedded
//! relay would count the tester's own sessions too) with limits raised for one source:
//! `limits.max_sessions`, `limits.max_sessions_per_ip`, `limits.handshakes_per_ip_per_s`. The
//! tester multiplexes [`SESSIONS_PER_ENDPOINT`] sessions over each UDP socket, so it needs
//! only `sessions / 1000` file descriptors.
//!
//! This module owns nothing the other modes use; it reads no clock but the monotonic one.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use serde::Serialize;
use sotto_protocol::RelayAddress;
use sotto_transport::{self as transport, FramedConnection, QuicOptions};

/// Sessions sharing one client UDP socket (quinn multiplexes connections by id).
pub const SESSIONS_PER_ENDPOINT: usize = 1000;

/// Linux's `USER_HZ`: the unit of `utime`/`stime` in `/proc/<pid>/stat` (100 on every
/// mainstream architecture; the kernel exports it as `CLK_TCK`).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// What an idle-sessions run needs.
#[derive(Debug, Clone)]
pub struct IdleSessionsOptions {
    /// The relay (a running one: `--relay`).
    pub relay: RelayAddress,
    /// Its process id, to read memory and CPU time (`None`: not measured).
    pub relay_pid: Option<u32>,
    /// Sessions to open.
    pub sessions: u64,
    /// Handshakes in progress at once.
    pub concurrency: usize,
    /// How long to keep the sessions open (idle, QUIC keep-alives only) before measuring
    /// again and closing them.
    pub hold: Duration,
    /// Transport settings of the tester's connections.
    pub quic: QuicOptions,
    /// Bound on one handshake.
    pub connect_timeout: Duration,
}

/// Resident memory and CPU time of a process, from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcSample {
    /// `VmRSS` in KiB.
    pub rss_kib: u64,
    /// `RssAnon` in KiB (heap and stacks: what sessions allocate).
    pub rss_anon_kib: u64,
    /// user + system CPU time, seconds (10 ms resolution).
    pub cpu_s: f64,
}

impl ProcSample {
    /// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
    ///
    /// # Errors
    /// If the process does not exist or the files cannot be parsed.
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status (is --relay-pid right?)"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        Ok(Self {
            rss_kib: field("VmRSS:").context("no VmRSS in /proc/<pid>/status")?,
            rss_anon_kib: field("RssAnon:").unwrap_or(0),
            cpu_s: parse_stat_cpu(&stat).context("cannot parse /proc/<pid>/stat")?,
        })
    }
}

/// user + system time (seconds) from the text of `/proc/<pid>/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS_PER_S)
}

/// The outcome of [`idle_sessions`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleSessionsReport {
    /// Always `"idle_sessions"`.
    pub mode: String,
    /// Sessions requested.
    pub requested: u64,
    /// Sessions whose handshake completed.
    pub opened: u64,
    /// Handshakes that failed.
    pub failed: u64,
    /// Sessions still open after the hold (the others were closed by the relay or the
    /// network).
    pub open_after_hold: u64,
    /// Wall time of all handshakes, seconds.
    pub handshake_s: f64,
    /// Completed handshakes per second of wall time (tester and relay sharing the machine).
    pub handshakes_per_s: f64,
    /// Relay CPU per completed handshake (QUIC + TLS + Noise + session setup), µs.
    pub relay_cpu_us_per_handshake: Option<f64>,
    /// Handshakes one relay core completes per second: `1e6 / relay_cpu_us_per_handshake`.
    pub handshakes_per_s_per_core: Option<f64>,
    /// Relay process before any session.
    pub before: Option<ProcSample>,
    /// Right after the last handshake.
    pub after_handshakes: Option<ProcSample>,
    /// After the hold, sessions still open.
    pub after_hold: Option<ProcSample>,
    /// After every session was closed and the relay had 3 s to notice.
    pub after_close: Option<ProcSample>,
    /// `(after_hold.rss − before.rss) / open_after_hold`, bytes per session.
    pub rss_bytes_per_session: Option<f64>,
    /// The same for anonymous memory (heap and stacks).
    pub rss_anon_bytes_per_session: Option<f64>,
    /// Relay CPU per session per second while idle (keep-alives, timers), µs.
    pub relay_idle_cpu_us_per_session_s: Option<f64>,
    /// Distinct error messages seen.
    pub errors: Vec<String>,
}

impl IdleSessionsReport {
    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let opt = |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.d$}"));
        let rss = |s: &Option<ProcSample>| {
            s.map_or_else(
                || "-".into(),
                |s| {
                    format!(
                        "{:.1} MiB (anon {:.1} MiB)",
                        mib(s.rss_kib),
                        mib(s.rss_anon_kib)
                    )
                },
            )
        };
        let _ = writeln!(o, "sotto-loadtest — idle sessions");
        let _ = writeln!(
            o,
            "  sessions               requested {}  opened {}  failed {}  open after hold {}",
            self.requested, self.opened, self.failed, self.open_after_hold
        );
        let _ = writeln!(
            o,
            "  handshakes             {:.0}/s over {:.2} s  relay cpu {} µs each  → {} per core per s",
            self.handshakes_per_s,
            self.handshake_s,
            opt(self.relay_cpu_us_per_handshake, 1),
            opt(self.handshakes_per_s_per_core, 0)
        );
        let _ = writeln!(o, "  relay rss before       {}", rss(&self.before));
        let _ = writeln!(
            o,
            "  relay rss handshaken   {}",
            rss(&self.after_handshakes)
        );
        let _ = writeln!(o, "  relay rss after hold   {}", rss(&self.after_hold));
        let _ = writeln!(o, "  relay rss after close  {}", rss(&self.after_close));
        let _ = writeln!(
            o,
            "  per session            {} bytes rss  ({} bytes anon)  idle cpu {} µs/s",
            opt(self.rss_bytes_per_session, 0),
            opt(self.rss_anon_bytes_per_session, 0),
            opt(self.relay_idle_cpu_us_per_session_s, 2)
        );
        for e in &self.errors {
            let _ = writeln!(o, "  error                  {e}");
        }
        o
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Opens `opts.sessions` idle sessions to a running relay and measures what they cost it.
///
/// # Errors
/// Bad options, an unreadable `/proc/<pid>`, or a client endpoint that cannot be bound.
/// Failed handshakes are counted in the report, not errors.
pub async fn idle_sessions(opts: &IdleSessionsOptions) -> anyhow::Result<IdleSessionsReport> {
    if opts.sessions == 0 || opts.concurrency == 0 {
        bail!("--idle-sessions and the concurrency must be at least 1");
    }
    let sample = |pid: Option<u32>| pid.map(ProcSample::read).transpose();
    let before = sample(opts.relay_pid)?;
    let endpoints_needed = usize::try_from(opts.sessions)
        .unwrap_or(usize::MAX)
        .div_ceil(SESSIONS_PER_ENDPOINT);
    let bind = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut endpoints = Vec::with_capacity(endpoints_needed);
    for _ in 0..endpoints_needed {
        endpoints.push(transport::client_endpoint(bind, &opts.quic)?);
    }
    let relay = Arc::new(opts.relay.clone());
    let mut sessions: Vec<FramedConnection> = Vec::new();
    let mut errors = std::collections::BTreeSet::new();
    let mut failed = 0u64;
    let mut pending = FuturesUnordered::new();
    let t0 = Instant::now();
    let mut next = 0u64;
    while next < opts.sessions || !pending.is_empty() {
        while next < opts.sessions && pending.len() < opts.concurrency {
            let i = usize::try_from(next).unwrap_or(usize::MAX);
            let Some(endpoint) = endpoints.get(i / SESSIONS_PER_ENDPOINT).cloned() else {
                break;
            };
            let (relay, timeout) = (relay.clone(), opts.connect_timeout);
            pending.push(async move { transport::connect(&endpoint, &relay, timeout).await });
            next += 1;
        }
        match pending.next().await {
            Some(Ok(s)) => sessions.push(s),
            Some(Err(e)) => {
                failed += 1;
                if errors.len() < 8 {
                    errors.insert(e.to_string());
                }
            }
            None => break,
        }
    }
    let handshake_s = t0.elapsed().as_secs_f64().max(1e-6);
    let after_handshakes = sample(opts.relay_pid)?;
    let opened = sessions.len() as u64;
    tokio::time::sleep(opts.hold).await;
    let after_hold = sample(opts.relay_pid)?;
    let open_after_hold = sessions
        .iter()
        .filter(|s| {
            s.connection
                .as_quic()
                .is_none_or(|c| c.close_reason().is_none())
        })
        .count() as u64;
    for s in &sessions {
        s.connection.close(transport::CLOSE_NORMAL.into(), b"");
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(5), e.wait_idle()).await;
    }
    drop(sessions);
    // Give the relay time to notice the closes and free the sessions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_close = sample(opts.relay_pid)?;

    let per_session = |f: fn(&ProcSample) -> u64| match (before, after_hold) {
        (Some(b), Some(a)) if open_after_hold > 0 => {
            Some((f(&a) as f64 - f(&b) as f64) * 1024.0 / open_after_hold as f64)
        }
        _ => None,
    };
    let cpu_per_handshake = match (before, after_handshakes) {
        (Some(b), Some(a)) if opened > 0 => Some((a.cpu_s - b.cpu_s) * 1e6 / opened as f64),
        _ => None,
    };
    let idle_cpu = match (after_handshakes, after_hold) {
        (Some(a), Some(b)) if open_after_hold > 0 && !opts.hold.is_zero() => {
            Some((b.cpu_s - a.cpu_s) * 1e6 / open_after_hold as f64 / opts.hold.as_secs_f64())
        }
        _ => None,
    };
    Ok(IdleSessionsReport {
        mode: "idle_sessions".into(),
        requested: opts.sessions,
        opened,
        failed,
        open_after_hold,
        handshake_s,
        handshakes_per_s: opened as f64 / handshake_s,
        relay_cpu_us_per_handshake: cpu_per_handshake,
        handshakes_per_s_per_core: cpu_per_handshake.filter(|c| *c > 0.0).map(|c| 1e6 / c),
        before,
        after_handshakes,
        after_hold,
        after_close,
        rss_bytes_per_session: per_session(|s| s.rss_kib),
        rss_anon_bytes_per_session: per_session(|s| s.rss_anon_kib),
        relay_idle_cpu_us_per_session_s: idle_cpu,
        errors: errors.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_counts_fields_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat = "1234 (we ird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = ProcSample::read(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
