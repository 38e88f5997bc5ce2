//! The router: which session is subscribed to which queue. A newer SUB takes a queue over
//! (the old session gets END), a DEL ends it, and a released message wakes its subscriber.
//!
//! What it owns: the subscription map and each session's [`Inbox`] of coalesced events, so
//! that a slow session never blocks the router and memory stays bounded by subscriptions.
//! What it does not: delivery itself (the session reads the store when woken, see
//! `session::recipient`) or the release times (the scheduler's).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use super::lock;
use crate::scheduler::Released;
use crate::store::QueueRef;

/// Which session is subscribed to which queue.
#[derive(Default)]
pub(super) struct Router {
    subs: Mutex<HashMap<QueueRef, Arc<Inbox>>>,
}

/// Events for one session, coalesced so that a slow session never blocks the router and
/// memory stays bounded by its subscriptions.
pub(super) struct Inbox {
    session: u64,
    /// Subscribed queues that may have a message to deliver (at most one entry per queue).
    pub(super) wake: Mutex<HashSet<QueueRef>>,
    /// Subscribed queues another session took over or deleted (at most one entry per queue).
    pub(super) end: Mutex<HashSet<QueueRef>>,
    /// Wakes the session's loop when either set gains an entry.
    pub(super) notify: Notify,
}

impl Inbox {
    /// An empty inbox for session `session`.
    pub(super) fn new(session: u64) -> Self {
        Self {
            session,
            wake: Mutex::new(HashSet::new()),
            end: Mutex::new(HashSet::new()),
            notify: Notify::new(),
        }
    }
}

impl Router {
    /// Subscribes `inbox` to `q`; the previous subscriber (another session) gets END.
    pub(super) fn subscribe(&self, q: QueueRef, inbox: &Arc<Inbox>) {
        let old = lock(&self.subs).insert(q, inbox.clone());
        if let Some(old) = old.filter(|o| o.session != inbox.session) {
            lock(&old.end).insert(q);
            old.notify.notify_one();
        }
    }

    /// Removes `q` if `session` holds it.
    pub(super) fn unsubscribe(&self, q: &QueueRef, session: u64) {
        let mut subs = lock(&self.subs);
        if subs.get(q).is_some_and(|i| i.session == session) {
            subs.remove(q);
        }
    }

    /// Ends the subscription to a deleted queue; the subscriber (if another session) gets END.
    pub(super) fn end(&self, q: &QueueRef, by_session: u64) {
        let old = lock(&self.subs).remove(q);
        if let Some(old) = old.filter(|o| o.session != by_session) {
            lock(&old.end).insert(*q);
            old.notify.notify_one();
        }
    }

    /// Tells the subscriber of `q` (if any) that a message may be available.
    fn wake(&self, q: &QueueRef) {
        let inbox = lock(&self.subs).get(q).cloned();
        if let Some(inbox) = inbox {
            lock(&inbox.wake).insert(*q);
            inbox.notify.notify_one();
        }
    }

    /// Wakes the subscriber of every message the scheduler releases, until the scheduler
    /// ends.
    pub(super) async fn wake_released(
        &self,
        mut released: mpsc::Receiver<Vec<Released<QueueRef>>>,
    ) {
        while let Some(batch) = released.recv().await {
            for r in batch {
                self.wake(&r.item);
            }
        }
    }
}
