//! Exactly-once bookkeeping: the [`Collector`], the one piece of state the dispatcher, the
//! SEND tasks and the receive loops share.
//!
//! It holds one record per planned message, behind a mutex held only to update a record
//! (about 80 bytes per message sent), and resolves each message once — when it is first
//! delivered or its SEND fails — returning its slot of the in-flight window and counting
//! it. Later deliveries of the same message are counted as duplicates in its record, never
//! resolved again. It also keeps the run's clock (microseconds on a monotonic clock from
//! the start of dispatch), the cover frames' times and a bounded list of distinct errors.
//!
//! It does not send, receive or compute metrics: it is filled by the other rooms and read
//! once, as a [`Tally`], by [`super::outcome`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::metrics::MessageRecord;
use crate::workload::{Planned, verify_body};

/// Distinct error messages kept for the report.
const MAX_ERRORS: usize = 8;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single field update: a poisoned lock holds usable data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first [`MAX_ERRORS`] distinct error messages of a run.
#[derive(Debug, Default)]
pub(super) struct ErrorLog(Mutex<BTreeSet<String>>);

impl ErrorLog {
    /// Keeps `e` if fewer than [`MAX_ERRORS`] distinct messages are kept.
    pub(super) fn record(&self, e: impl std::fmt::Display) {
        let mut errors = lock(&self.0);
        if errors.len() < MAX_ERRORS {
            errors.insert(e.to_string());
        }
    }

    /// The messages kept, sorted.
    pub(super) fn list(&self) -> Vec<String> {
        lock(&self.0).iter().cloned().collect()
    }
}

/// One record and whether it has been resolved (delivered, or its SEND failed).
#[derive(Debug, Default)]
struct Slot {
    rec: MessageRecord,
    resolved: bool,
}

/// Shared by the dispatcher, the SEND tasks and the receive loops.
#[derive(Debug)]
pub(super) struct Collector {
    start: OnceLock<Instant>,
    slots: Mutex<Vec<Slot>>,
    corrupted: AtomicU64,
    ack_failed: AtomicU64,
    /// Messages resolved so far (the drain and the progress bar wait on it).
    resolved: watch::Sender<u64>,
    /// Free slots of the in-flight window: the dispatcher takes one per message (and
    /// forgets the permit), resolving the message returns it.
    pub(super) window: Semaphore,
    cover: Mutex<Vec<u64>>,
    errors: ErrorLog,
    /// ACKs in flight (at most one per queue), waited for before the sessions close.
    pub(super) acks: TaskTracker,
}

/// What a run's [`Collector`] holds once it is over.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    /// One record per message, indexed by sequence number.
    pub(super) records: Vec<MessageRecord>,
    /// Bodies that failed verification, or arrived for no message of this run.
    pub(super) corrupted: u64,
    /// ACKs that failed.
    pub(super) ack_failed: u64,
    /// When each client cover frame was sent (µs).
    pub(super) cover: Vec<u64>,
    /// Distinct error messages.
    pub(super) errors: Vec<String>,
}

impl Collector {
    pub(super) fn new(window: usize) -> Self {
        Self {
            start: OnceLock::new(),
            slots: Mutex::new(Vec::new()),
            corrupted: AtomicU64::new(0),
            ack_failed: AtomicU64::new(0),
            resolved: watch::channel(0).0,
            window: Semaphore::new(window.min(Semaphore::MAX_PERMITS)),
            cover: Mutex::new(Vec::new()),
            errors: ErrorLog::default(),
            acks: TaskTracker::new(),
        }
    }

    /// Microseconds since the run's clock started (the first call starts it).
    pub(super) fn now_us(&self) -> u64 {
        let start = self.start.get_or_init(Instant::now);
        u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Keeps an error message for the report.
    pub(super) fn error(&self, e: impl std::fmt::Display) {
        self.errors.record(e);
    }

    /// Counts a corrupted (or foreign) message and keeps why.
    pub(super) fn corrupt(&self, e: impl std::fmt::Display) {
        self.corrupted.fetch_add(1, Ordering::Relaxed);
        self.error(e);
    }

    /// Counts a failed ACK and keeps why.
    pub(super) fn ack_failed(&self, e: impl std::fmt::Display) {
        self.ack_failed.fetch_add(1, Ordering::Relaxed);
        self.error(format!("ACK failed: {e}"));
    }

    /// Records that a client cover frame was sent at `at`.
    pub(super) fn cover_sent(&self, at: u64) {
        lock(&self.cover).push(at);
    }

    /// Watches the number of messages resolved.
    pub(super) fn subscribe_resolved(&self) -> watch::Receiver<u64> {
        self.resolved.subscribe()
    }

    /// Adds the record of message `p` (planned in sequence order).
    pub(super) fn plan(&self, p: &Planned, sender: u32, recipient: u32) {
        let mut slots = lock(&self.slots);
        debug_assert_eq!(slots.len() as u64, p.seq);
        slots.push(Slot {
            rec: MessageRecord {
                seq: p.seq,
                queue: p.queue,
                sender,
                recipient,
                ..MessageRecord::default()
            },
            resolved: false,
        });
    }

    /// Updates the record of `seq` with `f` (nothing if there is none); if this resolves it
    /// for the first time, frees its window slot and counts it.
    fn with_slot(&self, seq: u64, f: impl FnOnce(&mut Slot) -> bool) {
        let newly_resolved = {
            let mut slots = lock(&self.slots);
            let Some(slot) = usize::try_from(seq).ok().and_then(|i| slots.get_mut(i)) else {
                return;
            };
            let was = slot.resolved;
            f(slot);
            !was && slot.resolved
        };
        if newly_resolved {
            self.window.add_permits(1);
            self.resolved.send_modify(|n| *n += 1);
        }
    }

    /// The SEND of `seq` entered its session at `at`.
    pub(super) fn sent(&self, seq: u64, at: u64) {
        self.with_slot(seq, |s| {
            s.rec.sent_at_us = Some(at);
            false
        });
    }

    /// The SEND of `seq` was answered OK (now).
    pub(super) fn ok(&self, seq: u64) {
        let now = self.now_us();
        self.with_slot(seq, |s| {
            s.rec.ok_at_us = Some(now);
            false
        });
    }

    /// The SEND of `seq` failed: the message is resolved, as not delivered.
    pub(super) fn failed(&self, seq: u64, e: impl std::fmt::Display) {
        self.error(format!("SEND failed: {e}"));
        self.with_slot(seq, |s| {
            s.rec.send_failed = true;
            s.resolved = true;
            true
        });
    }

    /// A body arrived on `queue` at `at`; verifies and records it.
    pub(super) fn received(&self, queue: u32, body: &[u8], at: u64) {
        let seq = match verify_body(body, queue) {
            Ok(seq) => seq,
            Err(e) => {
                self.corrupt(format!("corrupted message: {e}"));
                return;
            }
        };
        let mut known = false;
        self.with_slot(seq, |s| {
            known = true;
            s.rec.deliveries += 1;
            if s.rec.received_at_us.is_none() {
                s.rec.received_at_us = Some(at);
            }
            s.resolved = true;
            true
        });
        if !known {
            // An intact body with a sequence number this run never planned.
            self.corrupt("message with an unknown sequence number");
        }
    }

    /// Everything recorded so far.
    pub(super) fn tally(&self) -> Tally {
        Tally {
            records: lock(&self.slots).iter().map(|s| s.rec.clone()).collect(),
            corrupted: self.corrupted.load(Ordering::Relaxed),
            ack_failed: self.ack_failed.load(Ordering::Relaxed),
            cover: lock(&self.cover).clone(),
            errors: self.errors.list(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::make_body;

    fn planned(seq: u64, queue: u32) -> Planned {
        Planned {
            seq,
            queue,
            sender: 0,
            at: None,
        }
    }

    #[test]
    fn a_message_resolves_once_however_often_it_arrives() {
        let c = Collector::new(4);
        // The dispatcher's side: one slot taken for the message.
        if let Ok(permit) = c.window.try_acquire() {
            permit.forget();
        }
        c.plan(&planned(0, 3), 0, 1);
        let body = make_body(7, 0, 3, 64);
        c.received(3, &body, 10);
        c.received(3, &body, 20);
        let t = c.tally();
        assert_eq!(t.records[0].deliveries, 2);
        assert_eq!(t.records[0].received_at_us, Some(10));
        assert_eq!(*c.subscribe_resolved().borrow(), 1);
        assert_eq!(c.window.available_permits(), 4);
        assert_eq!(t.corrupted, 0);
    }

    #[test]
    fn a_failed_send_resolves_and_a_foreign_body_is_corrupt() {
        let c = Collector::new(2);
        c.plan(&planned(0, 0), 0, 0);
        c.failed(0, "boom");
        c.failed(0, "boom");
        // Intact, but for a sequence number never planned.
        c.received(1, &make_body(7, 5, 1, 64), 1);
        // Sealed for another queue.
        c.received(2, &make_body(7, 0, 1, 64), 1);
        let t = c.tally();
        assert!(t.records[0].send_failed);
        assert_eq!(*c.subscribe_resolved().borrow(), 1);
        assert_eq!(t.corrupted, 2);
        assert_eq!(t.errors.len(), 3);
    }

    #[test]
    fn the_error_log_keeps_the_first_distinct_messages() {
        let log = ErrorLog::default();
        for i in 0..20 {
            log.record(format!("e{:02}", i % 10));
        }
        assert_eq!(log.list().len(), MAX_ERRORS);
        assert_eq!(log.list()[0], "e00");
    }
}
