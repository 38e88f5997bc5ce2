//! CPU time of this process and of the embedded relay's threads.
//!
//! Process CPU is `CLOCK_PROCESS_CPUTIME_ID` (user + system time of every thread, the same
//! sum `getrusage(RUSAGE_SELF)` reports, with nanosecond resolution) read through rustix,
//! so the workspace's `unsafe_code = "forbid"` holds. The relay's share is the sum, over
//! the live threads whose name starts with one of the given prefixes, of the first field of
//! `/proc/self/task/<tid>/schedstat` (nanoseconds on CPU) — Linux only, and threads that
//! exited in between are not counted, so it is a lower bound.

use std::time::Duration;

/// Thread-name prefixes of the embedded relay: its runtime's threads and the store writer
/// (Linux truncates thread names to 15 bytes).
pub const RELAY_THREAD_PREFIXES: &[&str] = &["sotto-relay", "sotto-store"];

/// User + system CPU time consumed by this process so far.
pub fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// CPU time of the live threads of this process whose name starts with one of `prefixes`,
/// or `None` where `/proc/self/task` is not readable.
pub fn threads_cpu(prefixes: &[&str]) -> Option<Duration> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = entry.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !prefixes.iter().any(|p| comm.trim_end().starts_with(p)) {
            continue;
        }
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        total = total.saturating_add(ns);
    }
    Some(Duration::from_nanos(total))
}

/// The CPU counters at one instant: this process's, and (when asked for) the embedded
/// relay's threads' (see [`RELAY_THREAD_PREFIXES`]).
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    process: Duration,
    relay: Option<Duration>,
}

impl CpuMark {
    /// The counters now; `relay`: also read the embedded relay's threads.
    pub fn now(relay: bool) -> Self {
        let process = process_cpu();
        let relay = relay.then(|| threads_cpu(RELAY_THREAD_PREFIXES)).flatten();
        Self { process, relay }
    }

    /// CPU time used since the mark: the process's, and the relay threads' (`None` if not
    /// read at the mark, or unreadable now).
    pub fn elapsed(&self) -> (Duration, Option<Duration>) {
        let process = process_cpu().saturating_sub(self.process);
        let relay = self.relay.and_then(|before| {
            threads_cpu(RELAY_THREAD_PREFIXES).map(|after| after.saturating_sub(before))
        });
        (process, relay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_advances_with_work() {
        let before = process_cpu();
        let mut h = blake3::Hasher::new();
        for i in 0..200_000u64 {
            h.update(&i.to_le_bytes());
        }
        assert_ne!(h.finalize().as_bytes(), &[0u8; 32]);
        assert!(process_cpu() > before);
        // The test harness's own threads are found by name.
        assert!(threads_cpu(&["no-such-thread-prefix"]).is_none_or(|d| d.is_zero()));
    }
}
