//! Receiving: the receive loop ([`Agent::receive`]) — subscribing every receive queue
//! and keeping the subscriptions live across broken connections, taking each pushed message
//! in (open, process, persist, show, then ACK), showing texts not shown yet, and doing the
//! outbox items that fall due meanwhile — and the [`Event`]s it reports. With a traffic
//! policy it also keeps the paced links up and runs loop cover (`traffic`).
//!
//! It does not decide what a message means (`inbound`, sans-IO) nor how outbox items are
//! done (`send`).
//!
//! On paced links a request waits for a tick and its answer for the relay's next frame, so
//! there the loop does not wait for ACKs and loop messages: they run in a background set
//! (bounded by the requests' own timeouts and by the links' queues; dropped, unanswered,
//! when the loop returns — an ACK lost so only means the message is delivered again and
//! recognised), and the subscriptions of one round are made concurrently so that they share
//! frames.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::Duration;

use serde::Serialize;
use sotto_protocol::{ErrorCode, RecipientId, RelayAddress};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::inbound::process;
use super::net::{self, NetError};
use super::state::{QueueOwner, RecvQueue, StateError};
use super::store::ReceiverLock;
use super::timing::{millis, next_retry, now_ms};
use super::traffic::{Background, Loops};
use super::wire;
use super::{Agent, AgentError};
use crate::client::{Pushed, QueueCredentials, SealedMessage};

/// How often the receive loop re-reads the profile (new queues to subscribe, outbox items
/// that fell due, broken connections to restore).
const TICK: Duration = Duration::from_millis(250);

/// Something that happened while receiving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A text from a contact, in the order the contact sent it.
    Message {
        /// The contact's name.
        contact: String,
        /// The text.
        text: String,
        /// The contact's sequence number for it.
        seq: u64,
        /// When the relay received it (Unix seconds, rounded by the relay).
        timestamp: u64,
    },
    /// A contact's set-up completed.
    Connected {
        /// The contact's name.
        contact: String,
    },
    /// A rotation of our receive queue for this contact finished (the old queue is
    /// deleted shortly after, as an automatic action).
    Rotated {
        /// The contact's name.
        contact: String,
    },
    /// The contact moved its receive queue (a rotation on its side): our messages go to
    /// the new queue from now on.
    Moved {
        /// The contact's name.
        contact: String,
    },
    /// Messages from this contact never arrived and were given up on.
    Missed {
        /// The contact's name.
        contact: String,
        /// How many.
        count: u64,
    },
    /// A message failed authentication or could not be decrypted, and was dropped.
    Rejected {
        /// The contact's name, when the queue is known to belong to one.
        contact: Option<String>,
    },
    /// Something did not work and is being retried (e.g. a relay is unreachable).
    Warning {
        /// What.
        message: String,
    },
    /// A loop message sent through this relay has not come back within the policy's
    /// `overdue_after` (`docs/client.md` § Traffic policy): the relay (or the one the loop
    /// went through) may be dropping or delaying messages, or the network failed. Reported
    /// at most once per `overdue_after` per relay.
    LoopOverdue {
        /// The relay whose loop queue the loop went to (`host:port`).
        relay: String,
        /// The policy's `overdue_after`, in seconds.
        after_secs: u64,
    },
    /// A relay whose connection was lost, or that was reported unreachable (each a
    /// [`Event::Warning`]), is connected again: its subscriptions (or link) are back, and
    /// the outbox goes on.
    Reconnected {
        /// The relay (`host:port`).
        relay: String,
    },
}

/// How long [`Agent::receive`] runs.
#[derive(Debug, Clone, Default)]
pub struct ReceiveOptions {
    /// Return after this long at most (`None`: until stopped).
    pub wait: Option<Duration>,
    /// Return once every queue is subscribed, nothing arrived for this long, and no outbox
    /// item falls due before `wait` ends (`None`: never for that reason).
    pub idle: Option<Duration>,
    /// Return when cancelled.
    pub stop: Option<CancellationToken>,
    /// **Test hook**: return [`AgentError::StoppedBeforeAck`] right after the first text
    /// has been persisted and shown, without acknowledging it — what a crash at that point
    /// does. The relay then delivers it again and the agent must show it only once.
    pub stop_before_ack: bool,
}

impl Agent {
    /// Receives: subscribes to every receive queue, processes messages (decrypts, orders,
    /// de-duplicates, completes contact set-ups and rotations), calls `on_event` for each
    /// [`Event`], does outbox items as they fall due, and restores broken connections.
    /// Each text is persisted, then shown (`on_event`), then marked shown, then
    /// acknowledged. Returns when `opts` say so or `on_event` breaks.
    ///
    /// # Errors
    /// [`StoreError::ReceiverBusy`](super::StoreError::ReceiverBusy); the first relay error
    /// when no queue could be subscribed at all; store errors.
    pub async fn receive<F>(
        &mut self,
        opts: ReceiveOptions,
        mut on_event: F,
    ) -> Result<(), AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let _receiver: ReceiverLock = self.store.lock_receiver()?;
        self.receiving = true;
        let loop_policy = self.opts.traffic.loops;
        let mut loops = loop_policy.is_on().then(|| Loops::new(loop_policy));
        let mut bg: JoinSet<Background> = JoinSet::new();
        let result = self
            .receive_loop(opts, &mut loops, &mut bg, &mut on_event)
            .await;
        if let Some(l) = &loops {
            self.loops_finished(l);
        }
        self.receiving = false;
        result
    }

    async fn receive_loop<F>(
        &mut self,
        opts: ReceiveOptions,
        loops: &mut Option<Loops>,
        bg: &mut JoinSet<Background>,
        on_event: &mut F,
    ) -> Result<(), AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let mut on_event = on_event;
        let start = Instant::now();
        let deadline = opts.wait.map(|w| start + w);
        if self.show_inbox(&mut on_event)?.is_break() {
            return Ok(());
        }
        let mut subs = Subscriptions::default();
        let loops_on = loops.is_some();
        let first = self
            .sync_subscriptions(&mut subs, loops_on, &mut on_event)
            .await?;
        if let Some(e) = first
            && subs.live.is_empty()
        {
            return Err(AgentError::Net(e));
        }
        if self.net.is_paced() {
            self.keep_links(&mut subs, &mut on_event).await?;
        }
        let mut last_activity = Instant::now();
        let stop = opts.stop.clone().unwrap_or_default();
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            if let Some(idle) = opts.idle
                && now.duration_since(last_activity) >= idle
                && subs.complete
                && !self.outbox_due_before(deadline)?
            {
                break;
            }
            let mut tick = deadline.map_or(now + TICK, |d| d.min(now + TICK));
            if let Some(due) = loops.as_ref().and_then(Loops::next_due) {
                tick = tick.min(due);
            }
            enum Step {
                Push(Option<net::Tagged>),
                Background(Background),
                Tick,
                Stop,
            }
            let step = tokio::select! {
                _ = stop.cancelled() => Step::Stop,
                p = self.net.pushes().recv() => Step::Push(p),
                Some(Ok(done)) = bg.join_next(), if !bg.is_empty() => Step::Background(done),
                _ = tokio::time::sleep_until(tick) => Step::Tick,
            };
            match step {
                Step::Stop => break,
                // The agent holds a sender, so the channel never ends.
                Step::Push(None) => break,
                Step::Background(Background::Acked(Err(e))) => {
                    let _ = on_event(&Event::Warning {
                        message: format!("could not acknowledge a message: {e}"),
                    });
                }
                Step::Background(done) => {
                    self.loop_done(loops.as_mut(), done, &mut on_event)?;
                }
                Step::Push(Some(t)) => match t.event {
                    Pushed::Msg { recipient_id, msg } => {
                        last_activity = Instant::now();
                        let flow = self
                            .handle_msg(
                                &t.relay,
                                recipient_id,
                                msg,
                                &opts,
                                loops.as_mut(),
                                bg,
                                &mut on_event,
                            )
                            .await?;
                        if flow.is_break() {
                            break;
                        }
                    }
                    Pushed::End { recipient_id } => {
                        subs.live.remove(&(t.relay.to_string(), recipient_id.0));
                    }
                    Pushed::Closed(_) => {
                        let current = self.net.serial(&t.relay);
                        let text = t.relay.to_string();
                        if current.is_none() || current == Some(t.serial) {
                            self.net.drop_conn(&t.relay).await;
                            // The next round connects again (and says so).
                            if subs.lost.insert(text) {
                                let _ = on_event(&Event::Warning {
                                    message: format!(
                                        "lost the connection to relay {}; reconnecting",
                                        t.relay.host_port()
                                    ),
                                });
                            }
                        } else if subs.lost.insert(text.clone()) {
                            // A new connection already took its place (a request or a
                            // round found this one broken before its end was read here).
                            let _ = on_event(&Event::Warning {
                                message: format!(
                                    "lost the connection to relay {}; reconnecting",
                                    t.relay.host_port()
                                ),
                            });
                            subs.came_back(&text);
                            let _ = on_event(&Event::Reconnected {
                                relay: t.relay.host_port(),
                            });
                        }
                    }
                },
                Step::Tick => {
                    if self.net.is_paced() {
                        self.keep_links(&mut subs, &mut on_event).await?;
                    }
                    self.sync_subscriptions(&mut subs, loops_on, &mut on_event)
                        .await?;
                    self.flush_due(&mut on_event).await?;
                    if let Some(l) = loops.as_mut() {
                        self.loop_tick(l, bg, &mut on_event).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps a link to every relay of [`Agent::paced_relays`] (the send-through relay may
    /// have no queue to subscribe), connecting those that are not connected, with the same
    /// retry pauses as subscriptions.
    async fn keep_links<F>(
        &mut self,
        subs: &mut Subscriptions,
        on_event: &mut F,
    ) -> Result<(), AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let now = Instant::now();
        for relay in self.paced_relays()? {
            let text = relay.to_string();
            if self.net.serial(&relay).is_some()
                || subs.retry.get(&text).is_some_and(|(t, _)| now < *t)
            {
                continue;
            }
            match self.net.client(&relay).await {
                Ok(_) => {
                    subs.retry.remove(&text);
                    if subs.came_back(&text) {
                        let _ = on_event(&Event::Reconnected {
                            relay: relay.host_port(),
                        });
                    }
                }
                Err(e) => {
                    let retry = next_retry(now, subs.retry.get(&text).map(|(_, p)| *p));
                    subs.retry.insert(text.clone(), retry);
                    if subs.down.insert(text) {
                        let _ = on_event(&Event::Warning {
                            message: e.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether an outbox item falls due before `deadline` (`None`: ever).
    fn outbox_due_before(&self, deadline: Option<Instant>) -> Result<bool, AgentError> {
        let st = self.store.read()?;
        let Some(due) = st.next_due_ms() else {
            return Ok(false);
        };
        let Some(deadline) = deadline else {
            return Ok(true);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        Ok(due <= now_ms().saturating_add(millis(left)))
    }

    /// Shows texts that were persisted but not shown (after a crash, or a callback that
    /// broke early), then marks them shown.
    fn show_inbox<F>(&self, on_event: &mut F) -> Result<ControlFlow<()>, AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let st = self.store.read()?;
        let mut shown: Vec<u64> = Vec::new();
        let mut flow = ControlFlow::Continue(());
        'outer: for c in &st.contacts {
            for e in &c.inbox {
                shown.push(e.id);
                flow = on_event(&Event::Message {
                    contact: c.name.clone(),
                    text: e.text.clone(),
                    seq: e.seq,
                    timestamp: e.timestamp,
                });
                if flow.is_break() {
                    break 'outer;
                }
            }
        }
        if !shown.is_empty() {
            self.store.update(|st| {
                for c in &mut st.contacts {
                    c.inbox.retain(|e| !shown.contains(&e.id));
                }
                Ok::<_, AgentError>(())
            })?;
        }
        Ok(flow)
    }

    /// Handles one pushed message: opens it, processes it (`inbound`) and persists the
    /// result, shows what it produced, then acknowledges it.
    #[allow(clippy::too_many_arguments)]
    async fn handle_msg<F>(
        &mut self,
        relay: &RelayAddress,
        recipient_id: RecipientId,
        msg: SealedMessage,
        opts: &ReceiveOptions,
        loops: Option<&mut Loops>,
        bg: &mut JoinSet<Background>,
        on_event: &mut F,
    ) -> Result<ControlFlow<()>, AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let relay_text = relay.to_string();
        let (owner, queue, contact_name) = {
            let st = self.store.read()?;
            if let Some(l) = st.loop_queue(&relay_text)
                && l.queue.recipient_id == recipient_id.0
            {
                // Our own loop coming back: counted, never shown, acknowledged like any
                // message.
                let creds = l.queue.creds()?;
                if let Some(loops) = loops {
                    loops.arrived(
                        &relay_text,
                        &creds,
                        &l.queue.envelope_key,
                        &msg,
                        Instant::now(),
                    );
                }
                self.ack(relay, creds, msg.msg_id, bg, on_event).await;
                return Ok(ControlFlow::Continue(()));
            }
            let Some(owner) = st.owner_of(&relay_text, &recipient_id.0) else {
                // A queue we no longer have (deleted after a rotation): nothing to do.
                return Ok(ControlFlow::Continue(()));
            };
            let queue = st
                .receive_queues()
                .into_iter()
                .find(|q| q.relay == relay_text && q.recipient_id == recipient_id.0)
                .cloned()
                .ok_or(StateError("receive queue"))?;
            let name = match owner {
                QueueOwner::Contact(id) => st.contact(id).map(|c| c.name.clone()),
                QueueOwner::Invitation(_) => None,
            };
            (owner, queue, name)
        };
        let creds = queue.creds()?;
        let msg_id = msg.msg_id;
        let opened = msg.open(&creds).ok().and_then(|m| {
            wire::open_envelope(&queue.envelope_key, &m.body)
                .ok()
                .map(|e| (m.timestamp, e))
        });
        let flow = match opened {
            None => on_event(&Event::Rejected {
                contact: contact_name,
            }),
            Some((timestamp, (olm_type, olm))) => {
                let pickle_key = *self.store.pickle_key();
                let mean = self.opts.auto_delay_mean;
                let outcome = self.store.update(|st| {
                    process(st, &pickle_key, mean, owner, olm_type, &olm, timestamp)
                })?;
                let mut flow = ControlFlow::Continue(());
                for n in &outcome.notices {
                    if on_event(n).is_break() {
                        flow = ControlFlow::Break(());
                    }
                }
                if outcome.contact.is_some() && flow.is_continue() {
                    let had_text = self
                        .store
                        .read()?
                        .contacts
                        .iter()
                        .any(|c| !c.inbox.is_empty());
                    flow = self.show_inbox(on_event)?;
                    if opts.stop_before_ack && had_text {
                        return Err(AgentError::StoppedBeforeAck);
                    }
                }
                flow
            }
        };
        // Persisted (and shown, or buffered in order) before this: now the relay may
        // delete it. A failed ACK only means the message comes again, and is recognised.
        self.ack(relay, creds, msg_id, bg, on_event).await;
        Ok(flow)
    }

    /// Acknowledges a message: at once (with retries on a new connection) on an unpaced
    /// link; in the background on a paced one, where the answer waits for the relay's
    /// next frame.
    async fn ack<F>(
        &mut self,
        relay: &RelayAddress,
        creds: QueueCredentials,
        msg_id: sotto_protocol::MessageId,
        bg: &mut JoinSet<Background>,
        on_event: &mut F,
    ) where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let err = if self.net.is_paced() {
            match self.net.client(relay).await {
                Ok((client, _)) => {
                    bg.spawn(async move { Background::Acked(client.ack(&creds, msg_id).await) });
                    return;
                }
                Err(e) => e,
            }
        } else {
            match self
                .net
                .request(relay, async |c| c.ack(&creds, msg_id).await)
                .await
            {
                Ok(_) => return,
                Err(e) => e,
            }
        };
        let _ = on_event(&Event::Warning {
            message: format!("could not acknowledge a message: {err}"),
        });
    }

    /// Subscribes every receive queue that has no live subscription. Returns the first
    /// relay error of this round, if any (also reported as a warning).
    async fn sync_subscriptions<F>(
        &mut self,
        subs: &mut Subscriptions,
        loops_on: bool,
        on_event: &mut F,
    ) -> Result<Option<NetError>, AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let queues: Vec<RecvQueue> = self.wanted_queues(loops_on)?;
        let wanted: HashSet<(String, [u8; 24])> = queues
            .iter()
            .map(|q| (q.relay.clone(), q.recipient_id))
            .collect();
        subs.live.retain(|k, _| wanted.contains(k));
        let now = Instant::now();
        let mut round = Round {
            first_error: None,
            complete: true,
            failed: HashSet::new(),
            blocked: Vec::new(),
            now,
        };
        if self.net.is_paced() {
            self.subscribe_paced(&queues, subs, &mut round, on_event)
                .await?;
        } else {
            for q in &queues {
                let key = (q.relay.clone(), q.recipient_id);
                let relay = q.relay_address()?;
                let current = self.net.serial(&relay);
                if current.is_some() && subs.live.get(&key).copied() == current {
                    continue;
                }
                round.complete = false;
                if round.failed.contains(&q.relay)
                    || subs.retry.get(&q.relay).is_some_and(|(t, _)| now < *t)
                {
                    continue;
                }
                let creds = q.creds()?;
                let result = self
                    .net
                    .request(&relay, async |c| c.subscribe(&creds).await)
                    .await;
                let serial = self.net.serial(&relay);
                round.record(subs, key, current, serial, result, on_event);
            }
        }
        let Round {
            first_error,
            complete,
            blocked,
            ..
        } = round;
        if !blocked.is_empty() {
            let st = self.store.read()?;
            for (relay, id) in blocked {
                let name = st
                    .contacts
                    .iter()
                    .find(|c| c.recv.iter().any(|q| q.recipient_id == id))
                    .map_or_else(
                        || "a pending invitation".to_owned(),
                        |c| format!("`{}`", c.name),
                    );
                let fix = st
                    .contacts
                    .iter()
                    .find(|c| c.recv.iter().any(|q| q.recipient_id == id))
                    .map_or_else(
                        || "delete the invitation and make a new one on another relay".to_owned(),
                        |c| {
                            format!(
                                "move it to another relay with `sotto rotate {} --via RELAY`",
                                c.name
                            )
                        },
                    );
                let _ = on_event(&Event::Warning {
                    message: format!(
                        "the relay operator of {relay} blocked your queue for {name}: nothing \
                         more arrives on it; {fix}"
                    ),
                });
            }
        }
        subs.complete = complete && first_error.is_none();
        if !subs.complete {
            // Re-check: everything may be live now.
            subs.complete = queues.iter().all(|q| {
                q.relay_address().ok().is_some_and(|r| {
                    let s = self.net.serial(&r);
                    s.is_some() && subs.live.get(&(q.relay.clone(), q.recipient_id)).copied() == s
                })
            });
        }
        Ok(first_error)
    }

    /// The paced form of a subscription round: every queue of a relay that needs SUB is
    /// subscribed at once on that relay's link, so that they share frames (one tick, and
    /// one relay frame for the answers) instead of taking a tick and a relay frame each.
    async fn subscribe_paced<F>(
        &mut self,
        queues: &[RecvQueue],
        subs: &mut Subscriptions,
        round: &mut Round,
        on_event: &mut F,
    ) -> Result<(), AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let mut by_relay: Vec<(RelayAddress, Vec<(QueueKey, QueueCredentials)>)> = Vec::new();
        for q in queues {
            let key = (q.relay.clone(), q.recipient_id);
            let relay = q.relay_address()?;
            let current = self.net.serial(&relay);
            if current.is_some() && subs.live.get(&key).copied() == current {
                continue;
            }
            round.complete = false;
            if subs
                .retry
                .get(&q.relay)
                .is_some_and(|(t, _)| round.now < *t)
            {
                continue;
            }
            let creds = q.creds()?;
            match by_relay.iter_mut().find(|(r, _)| *r == relay) {
                Some((_, todo)) => todo.push((key, creds)),
                None => by_relay.push((relay, vec![(key, creds)])),
            }
        }
        for (relay, todo) in by_relay {
            let (client, serial) = match self.net.client(&relay).await {
                Ok(c) => c,
                Err(e) => {
                    if let Some((key, _)) = todo.into_iter().next() {
                        round.record(subs, key, None, None, Err(e), on_event);
                    }
                    continue;
                }
            };
            let mut set = JoinSet::new();
            for (key, creds) in todo {
                let c = client.clone();
                set.spawn(async move { (key, c.subscribe(&creds).await) });
            }
            let mut broken = false;
            while let Some(Ok((key, result))) = set.join_next().await {
                let result = result.map_err(|e| {
                    broken |= net::session_broken(&e);
                    net::request_error(&relay, e)
                });
                round.record(subs, key, Some(serial), Some(serial), result, on_event);
            }
            if broken {
                self.net.drop_conn(&relay).await;
            }
        }
        Ok(())
    }
}

/// A receive queue in [`Subscriptions::live`]: relay address text and recipient id.
type QueueKey = (String, [u8; 24]);

/// What one subscription round found.
struct Round {
    first_error: Option<NetError>,
    /// Every wanted queue had a live subscription before the round.
    complete: bool,
    /// Relays that failed in this round (their other queues wait for the next one).
    failed: HashSet<String>,
    /// Queues the relay answered BLOCKED for in this round, first time in the run.
    blocked: Vec<QueueKey>,
    now: Instant,
}

impl Round {
    /// Records the outcome of one SUB: `current` is the serial the queue was checked
    /// against, `serial` the connection's after the request.
    fn record<F>(
        &mut self,
        subs: &mut Subscriptions,
        key: QueueKey,
        current: Option<u64>,
        serial: Option<u64>,
        result: Result<(), NetError>,
        on_event: &mut F,
    ) where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let relay = key.0.clone();
        match result {
            Ok(()) => {
                if let Some(serial) = serial {
                    subs.live.insert(key, serial);
                }
                subs.retry.remove(&relay);
                if subs.came_back(&relay) {
                    let _ = on_event(&Event::Reconnected {
                        relay: relay
                            .parse::<RelayAddress>()
                            .map_or(relay.clone(), |r| r.host_port()),
                    });
                }
            }
            Err(e) if e.relay_code() == Some(ErrorCode::Blocked) => {
                // Blocked by the relay's operator: nothing will arrive on it, and asking
                // again changes nothing. Reported once per run (see `sync_subscriptions`).
                subs.live.insert(key.clone(), current.unwrap_or_default());
                if subs.blocked.insert(key.clone()) {
                    self.blocked.push(key);
                }
            }
            Err(e) if e.relay_code() == Some(ErrorCode::Auth) => {
                // The queue is gone (deleted by a rotation in another process, or
                // expired on the relay): nothing to subscribe.
                subs.live.insert(key, current.unwrap_or_default());
            }
            Err(e) => {
                self.failed.insert(relay.clone());
                let retry = next_retry(self.now, subs.retry.get(&relay).map(|(_, p)| *p));
                subs.retry.insert(relay.clone(), retry);
                if subs.down.insert(relay) {
                    let _ = on_event(&Event::Warning {
                        message: e.to_string(),
                    });
                }
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Subscriptions of one receive run: which queues are subscribed on which connection
/// (by serial), and relays to retry later.
#[derive(Default)]
struct Subscriptions {
    live: HashMap<(String, [u8; 24]), u64>,
    retry: HashMap<String, (Instant, Duration)>,
    /// Relays reported unreachable (warned once per outage).
    down: HashSet<String>,
    /// Relays whose connection was lost and not made again yet (warned once).
    lost: HashSet<String>,
    /// Queues their relay's operator blocked (warned once per run).
    blocked: HashSet<QueueKey>,
    /// Every wanted queue has a live subscription.
    complete: bool,
}

impl Subscriptions {
    /// `relay` is connected again: whether it had been reported unreachable or lost (and
    /// so is to be reported back).
    fn came_back(&mut self, relay: &str) -> bool {
        self.down.remove(relay) | self.lost.remove(relay)
    }
}
