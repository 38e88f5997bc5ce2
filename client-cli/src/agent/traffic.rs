//! The traffic policy in the agent (`docs/client.md` § Traffic policy): the relays a
//! receiving agent keeps paced links to, loop cover — one loop queue per relay it receives
//! on, a Poisson [`LoopSchedule`] and a [`LoopMonitor`] per relay, loop messages sent
//! through the same links and the same FWD-or-direct route as messages — and the counters
//! `sotto listen` reports ([`TrafficStats`]).
//!
//! It does not pace anything itself (the links' writers do, `sotto_transport::client`), and
//! it does not decide what an overdue loop means (`sotto_timing::loops`): it only turns
//! one into an [`Event::LoopOverdue`]. Requests it makes while receiving run in the
//! receive loop's background set ([`Background`]), so that a loop waiting for a tick (and
//! its answer for the relay's next frame) never holds up receiving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::Duration;

use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::Serialize;
use sotto_protocol::{AuthSecretKey, RelayAddress};
use sotto_timing::TrafficPolicy;
use sotto_timing::loops::{LoopMonitor, LoopPolicy, LoopSchedule, LoopStats};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::net::LinkTraffic;
use super::secret::Secret32;
use super::state::{LoopQueue, RecvQueue};
use super::timing::next_backoff;
use super::{Agent, AgentError, Event, wire};
use crate::client::{ClientError, QueueCredentials, RelayPacing, SealedMessage};

/// What a receiving agent's links did: frames per relay, and its loops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficStats {
    /// One entry per relay the agent connected to.
    pub relays: Vec<RelayTraffic>,
    /// Loops of every receive run of this agent.
    pub loops: LoopTotals,
}

/// Frames sent to one relay, over every connection made to it. Exact once the links are
/// closed ([`Agent::disconnect`]): each paced session is then ended only after its relay has
/// read every frame counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayTraffic {
    /// The relay (`host:port`).
    pub relay: String,
    /// Frames sent on paced sessions: every tick, real or cover, and every echo.
    pub frames: u64,
    /// Ticks that carried real transmissions.
    pub real_ticks: u64,
    /// Ticks that were cover.
    pub cover_ticks: u64,
    /// Echo frames: one per frame received from the relay (policies with `echo`), real or
    /// cover.
    pub echoes: u64,
    /// Connections made.
    pub sessions: u64,
    /// What the relay said to PACE on the last connection: `accepted`, `asked` (no answer
    /// yet), `not asked`, or the error code it refused with (e.g. `SYNTAX`, a relay older
    /// than PACE).
    pub pace: String,
}

/// Loop counters ([`sotto_timing::loops::LoopStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LoopTotals {
    /// Loops sent.
    pub sent: u64,
    /// Loops that came back.
    pub returned: u64,
    /// Loops reported overdue.
    pub overdue: u64,
    /// Loops whose send failed (never left; not reported overdue).
    pub failed: u64,
    /// Loop messages that were not outstanding (from an earlier run, or late).
    pub unexpected: u64,
}

impl LoopTotals {
    fn add(&mut self, s: LoopStats) {
        self.sent += s.sent;
        self.returned += s.returned;
        self.overdue += s.overdue;
        self.failed += s.failed;
        self.unexpected += s.unexpected;
    }
}

/// A request of the receive loop that runs in the background, and what became of it.
pub(super) enum Background {
    /// An ACK (paced links: its answer waits for the relay's next frame).
    Acked(Result<bool, ClientError>),
    /// A loop message to the loop queue on `relay`.
    LoopSent {
        relay: String,
        id: u64,
        result: Result<(), ClientError>,
    },
    /// A loop queue made on `relay` (NEW, then KEY: `secured` says whether KEY worked).
    LoopQueueMade {
        relay: String,
        result: Result<LoopQueue, ClientError>,
    },
    /// KEY again for the unsecured loop queue on `relay`.
    LoopQueueSecured {
        relay: String,
        result: Result<(), ClientError>,
    },
}

/// Loop cover of one receive run.
pub(super) struct Loops {
    policy: LoopPolicy,
    /// Times given to the schedules and monitors are since this instant.
    origin: Instant,
    /// By relay address text: relays we receive on that have a secured loop queue.
    runs: BTreeMap<String, LoopRun>,
    /// Relays whose loop queue is being made or secured right now.
    busy: HashSet<String>,
    /// Relays where making or securing failed: not before this instant, and the pause.
    retry: HashMap<String, (Instant, Duration)>,
}

/// Loops through one relay.
struct LoopRun {
    relay: RelayAddress,
    queue: LoopQueue,
    schedule: LoopSchedule<OsRng>,
    monitor: LoopMonitor,
    /// When an overdue loop was last reported (at most one report per `overdue_after`).
    warned_overdue: Option<Instant>,
    /// A send failed and was reported; cleared by the next send that works.
    warned_failing: bool,
}

impl Loops {
    /// Loop cover for a run starting now.
    pub(super) fn new(policy: LoopPolicy) -> Self {
        Self {
            policy,
            origin: Instant::now(),
            runs: BTreeMap::new(),
            busy: HashSet::new(),
            retry: HashMap::new(),
        }
    }

    fn since_origin(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }

    /// When the next loop of any relay is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.runs
            .values()
            .filter_map(|r| r.schedule.next_at())
            .min()
            .map(|d| self.origin + d)
    }

    /// Counters of this run, all relays.
    pub(super) fn stats(&self) -> LoopStats {
        let mut t = LoopStats::default();
        for r in self.runs.values() {
            let s = r.monitor.stats();
            t.sent += s.sent;
            t.returned += s.returned;
            t.overdue += s.overdue;
            t.failed += s.failed;
            t.unexpected += s.unexpected;
        }
        t
    }

    fn backoff(&mut self, relay: &str) {
        let pause = next_backoff(self.retry.get(relay).map(|(_, p)| *p));
        self.retry
            .insert(relay.to_owned(), (Instant::now() + pause, pause));
    }

    /// Starts loops through `relay` (text `key`) at `now`, to its secured loop queue.
    fn start(&mut self, key: &str, relay: RelayAddress, queue: LoopQueue, now: Instant) {
        let t = self.since_origin(now);
        self.runs.insert(
            key.to_owned(),
            LoopRun {
                relay,
                queue,
                schedule: LoopSchedule::new(&self.policy, t, OsRng),
                monitor: LoopMonitor::new(),
                warned_overdue: None,
                warned_failing: false,
            },
        );
    }

    /// The relays (text) whose next loop is due at `now`; each is scheduled again.
    fn take_due(&mut self, now: Instant) -> Vec<String> {
        let t = self.since_origin(now);
        self.runs
            .iter_mut()
            .filter_map(|(r, run)| run.schedule.poll_due(t).then(|| r.clone()))
            .collect()
    }

    /// Loop `id` left for `relay` at `now`.
    fn sent(&mut self, relay: &str, id: u64, now: Instant) {
        let t = self.since_origin(now);
        if let Some(run) = self.runs.get_mut(relay) {
            run.monitor.handle_sent(id, t);
        }
    }

    /// What the send of loop `id` through `relay` became; a warning for the first failure
    /// of a row (the loop never left, so it is not counted as overdue).
    fn send_done(
        &mut self,
        relay: &str,
        id: u64,
        result: Result<(), ClientError>,
    ) -> Option<Event> {
        let run = self.runs.get_mut(relay)?;
        match result {
            Ok(()) => {
                run.warned_failing = false;
                None
            }
            Err(e) => {
                run.monitor.handle_failed(id);
                if run.warned_failing {
                    return None;
                }
                run.warned_failing = true;
                Some(Event::Warning {
                    message: format!(
                        "could not send a loop message to relay {}: {e}",
                        run.relay.host_port()
                    ),
                })
            }
        }
    }

    /// A message on the loop queue of `relay` at `now`: whether it was one of our loops on
    /// its way (then counted as returned). Anything else there is ignored; either way it is
    /// never shown.
    pub(super) fn arrived(
        &mut self,
        relay: &str,
        creds: &QueueCredentials,
        envelope_key: &Secret32,
        msg: &SealedMessage,
        now: Instant,
    ) -> bool {
        let t = self.since_origin(now);
        let id = msg
            .open(creds)
            .ok()
            .and_then(|m| wire::open_loop(envelope_key, &m.body));
        match (id, self.runs.get_mut(relay)) {
            (Some(id), Some(run)) => run.monitor.handle_returned(id, t).is_some(),
            _ => false,
        }
    }

    /// The relays with loops overdue at `now`, as events: at most one per relay per
    /// `overdue_after` (every overdue loop is counted).
    fn overdue(&mut self, now: Instant) -> Vec<Event> {
        let t = self.since_origin(now);
        let after = self.policy.overdue_after;
        let mut events = Vec::new();
        for run in self.runs.values_mut() {
            let late = run.monitor.poll_overdue(t, after);
            if late.is_empty() || run.warned_overdue.is_some_and(|w| now < w + after) {
                continue;
            }
            run.warned_overdue = Some(now);
            events.push(Event::LoopOverdue {
                relay: run.relay.host_port(),
                after_secs: after.as_secs(),
            });
        }
        events
    }
}

impl Agent {
    /// The traffic policy of this agent ([`super::AgentOptions::traffic`]).
    pub fn traffic_policy(&self) -> &TrafficPolicy {
        &self.opts.traffic
    }

    /// Frames sent to each relay so far and the loops of every receive run. Exact after
    /// [`Agent::disconnect`].
    pub fn traffic_stats(&self) -> TrafficStats {
        let relays = self
            .net
            .traffic()
            .into_iter()
            .map(|(relay, t): (RelayAddress, LinkTraffic)| RelayTraffic {
                relay: relay.host_port(),
                frames: t.real_ticks + t.cover_ticks + t.echoes,
                real_ticks: t.real_ticks,
                cover_ticks: t.cover_ticks,
                echoes: t.echoes,
                sessions: t.sessions,
                pace: match t.pace {
                    Some(RelayPacing::Accepted) => "accepted".into(),
                    Some(RelayPacing::Asked) => "asked".into(),
                    Some(RelayPacing::Refused(code)) => code.name().into(),
                    Some(RelayPacing::NotAsked) | None => "not asked".into(),
                },
            })
            .collect();
        let mut loops = LoopTotals::default();
        loops.add(self.loop_stats);
        TrafficStats { relays, loops }
    }

    /// Closes every connection — paced ones in an orderly way, once their relay has read
    /// every frame sent — and keeps the agent usable (the next request connects again).
    /// Queued transmissions not yet sent are dropped; outbox items stay in the profile.
    pub async fn disconnect(&mut self) {
        self.net.close_all().await;
    }

    /// The relays a receiving agent with a pacing policy keeps links to: those it receives
    /// on, and the relay its sends go through. Links to them exist whether or not anything
    /// is sent, so that a link appearing says nothing about a send.
    pub(super) fn paced_relays(&self) -> Result<Vec<RelayAddress>, AgentError> {
        let st = self.store.read()?;
        let mut relays: Vec<RelayAddress> = st
            .receive_relays()
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect();
        if let Some(t) = self.effective_through()
            && !relays.contains(&t)
        {
            relays.push(t);
        }
        Ok(relays)
    }

    /// The queues the receive loop subscribes: every receive queue, and with loops on the
    /// loop queues of the relays we receive on.
    pub(super) fn wanted_queues(&self, loops_on: bool) -> Result<Vec<RecvQueue>, AgentError> {
        let st = self.store.read()?;
        let mut queues: Vec<RecvQueue> = st.receive_queues().into_iter().cloned().collect();
        if loops_on {
            let relays = st.receive_relays();
            queues.extend(
                st.loops
                    .iter()
                    .filter(|l| relays.contains(&l.queue.relay))
                    .map(|l| l.queue.clone()),
            );
        }
        Ok(queues)
    }

    /// One step of loop cover, at a tick of the receive loop: makes (or secures) loop
    /// queues on relays we receive on that have none, starts a schedule for each secured
    /// one, sends the loops that are due and reports those overdue.
    ///
    /// # Errors
    /// Store errors.
    pub(super) async fn loop_tick<F>(
        &mut self,
        loops: &mut Loops,
        bg: &mut JoinSet<Background>,
        on_event: &mut F,
    ) -> Result<(), AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let now = Instant::now();
        let st = self.store.read()?;
        let relays = st.receive_relays();
        loops.runs.retain(|r, _| relays.contains(r));
        for relay in &relays {
            if loops.runs.contains_key(relay)
                || loops.busy.contains(relay)
                || loops.retry.get(relay).is_some_and(|(t, _)| now < *t)
            {
                continue;
            }
            let Ok(address) = relay.parse::<RelayAddress>() else {
                continue;
            };
            match st.loop_queue(relay) {
                Some(l) if l.secured => loops.start(relay, address, l.clone(), now),
                Some(l) => {
                    let Ok(client) = self.net.client(&address).await.map(|(c, _)| c) else {
                        loops.backoff(relay);
                        continue;
                    };
                    let (queue, relay) = (l.queue.clone(), relay.clone());
                    let key = AuthSecretKey::from_bytes(l.sender_key.expose()).public();
                    loops.busy.insert(relay.clone());
                    bg.spawn(async move {
                        let result = match queue.creds() {
                            Ok(creds) => client.secure(&creds, key).await,
                            Err(_) => Err(ClientError::UnexpectedResponse("stored loop queue")),
                        };
                        Background::LoopQueueSecured { relay, result }
                    });
                }
                None => {
                    let Ok(client) = self.net.client(&address).await.map(|(c, _)| c) else {
                        loops.backoff(relay);
                        continue;
                    };
                    let password = st.create_passwords.get(relay).cloned();
                    let relay = relay.clone();
                    loops.busy.insert(relay.clone());
                    bg.spawn(async move {
                        let result = make_loop_queue(&client, password).await;
                        Background::LoopQueueMade { relay, result }
                    });
                }
            }
        }
        drop(st);
        for relay in loops.take_due(now) {
            self.send_loop(loops, &relay, bg).await;
        }
        for e in loops.overdue(now) {
            let _ = on_event(&e);
        }
        Ok(())
    }

    /// Sends one loop to the loop queue on `relay`, by the same route as a message to a
    /// queue there (through the send-through relay, or directly on that relay's link), in
    /// the background.
    async fn send_loop(&mut self, loops: &mut Loops, relay: &str, bg: &mut JoinSet<Background>) {
        let Some(run) = loops.runs.get(relay) else {
            return;
        };
        let id = OsRng.next_u64();
        let Ok(body) = wire::seal_loop(&run.queue.queue.envelope_key, id) else {
            return;
        };
        if let Some(tap) = &self.opts.send_tap {
            tap(&body);
        }
        let dest = run.relay.clone();
        let key = AuthSecretKey::from_bytes(run.queue.sender_key.expose());
        let sender_id = sotto_protocol::SenderId(run.queue.queue.sender_id);
        let via = self.through_for(&dest);
        loops.sent(relay, id, Instant::now());
        let client = match self.net.client(via.as_ref().unwrap_or(&dest)).await {
            Ok((c, _)) => c,
            // No link now: this loop fails (counted, warned once), the schedule goes on.
            Err(_) => {
                let relay = relay.to_owned();
                bg.spawn(async move {
                    Background::LoopSent {
                        relay,
                        id,
                        result: Err(ClientError::Closed),
                    }
                });
                return;
            }
        };
        let relay = relay.to_owned();
        bg.spawn(async move {
            let result = match via {
                Some(_) => {
                    client
                        .send_through(&dest, sender_id, Some(&key), 0, body)
                        .await
                }
                None => client.send(sender_id, Some(&key), 0, body).await,
            };
            Background::LoopSent { relay, id, result }
        });
    }

    /// Takes in what a background loop request did.
    pub(super) fn loop_done<F>(
        &mut self,
        loops: Option<&mut Loops>,
        done: Background,
        on_event: &mut F,
    ) -> Result<(), AgentError>
    where
        F: FnMut(&Event) -> ControlFlow<()>,
    {
        let Some(loops) = loops else {
            return Ok(());
        };
        match done {
            Background::Acked(_) => {}
            Background::LoopSent { relay, id, result } => {
                if let Some(e) = loops.send_done(&relay, id, result) {
                    let _ = on_event(&e);
                }
            }
            Background::LoopQueueMade { relay, result } => {
                loops.busy.remove(&relay);
                match result {
                    Ok(queue) => {
                        self.store.update(|st| {
                            st.loops.retain(|l| l.queue.relay != relay);
                            st.loops.push(queue.clone());
                            Ok::<_, AgentError>(())
                        })?;
                        if !queue.secured {
                            loops.backoff(&relay);
                        }
                    }
                    Err(e) => {
                        loops.backoff(&relay);
                        let _ = on_event(&Event::Warning {
                            message: format!("could not make a loop queue on relay {relay}: {e}"),
                        });
                    }
                }
            }
            Background::LoopQueueSecured { relay, result } => {
                loops.busy.remove(&relay);
                match result {
                    Ok(()) => {
                        self.store.update(|st| {
                            if let Some(l) = st.loops.iter_mut().find(|l| l.queue.relay == relay) {
                                l.secured = true;
                            }
                            Ok::<_, AgentError>(())
                        })?;
                    }
                    Err(_) => loops.backoff(&relay),
                }
            }
        }
        Ok(())
    }

    /// Adds a finished run's loop counters to the agent's.
    pub(super) fn loops_finished(&mut self, loops: &Loops) {
        let s = loops.stats();
        let t = &mut self.loop_stats;
        t.sent += s.sent;
        t.returned += s.returned;
        t.overdue += s.overdue;
        t.failed += s.failed;
        t.unexpected += s.unexpected;
    }
}

/// NEW (with the relay's create password, if any), then KEY with a fresh sender key of our
/// own, so that nobody else can write to the queue. A failed KEY still gives the queue
/// (`secured` false: KEY is sent again later).
async fn make_loop_queue(
    client: &crate::RelayClient,
    password: Option<String>,
) -> Result<LoopQueue, ClientError> {
    let password = zeroize::Zeroizing::new(password.unwrap_or_default());
    let pw = (!password.is_empty()).then(|| password.as_bytes());
    let creds = client.create_queue(pw).await?;
    let sender_key = Secret32::random();
    let public = AuthSecretKey::from_bytes(sender_key.expose()).public();
    let secured = client.secure(&creds, public).await.is_ok();
    Ok(LoopQueue {
        queue: RecvQueue::new(&creds, Secret32::random()),
        sender_key,
        secured,
    })
}

#[cfg(test)]
mod tests {
    use sotto_protocol::seal::BodySealKey;
    use sotto_protocol::{DhSecretKey, MessageId, RecipientId, SenderId};

    use super::*;

    const RELAY: &str = "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@relay.test:9";

    /// A secured loop queue as the relay would have made it, and its credentials.
    fn loop_queue() -> (LoopQueue, QueueCredentials, DhSecretKey) {
        let dh_key = DhSecretKey::generate(&mut OsRng);
        let relay_dh = DhSecretKey::generate(&mut OsRng);
        let creds = QueueCredentials {
            relay: RELAY.parse().unwrap(),
            recipient_id: RecipientId([5; 24]),
            sender_id: SenderId([6; 24]),
            recipient_key: AuthSecretKey::generate(&mut OsRng),
            seal_key: BodySealKey::derive(&dh_key, &relay_dh.public()).unwrap(),
            dh_key,
            relay_dh_key: relay_dh.public(),
        };
        let queue = LoopQueue {
            queue: RecvQueue::new(&creds, Secret32::random()),
            sender_key: Secret32::random(),
            secured: true,
        };
        (queue, creds, relay_dh)
    }

    /// What the relay delivers for a SEND of `body` to the queue: sealed with its DH key.
    fn delivered(relay_dh: &DhSecretKey, queue: &LoopQueue, body: &[u8]) -> SealedMessage {
        let seal = BodySealKey::derive(
            relay_dh,
            &DhSecretKey::from_bytes(*queue.queue.dh_key.expose()).public(),
        )
        .unwrap();
        let msg_id = MessageId(rand::random());
        SealedMessage {
            msg_id,
            timestamp: 0,
            flags: 0,
            sealed_body: seal.seal(&msg_id, body),
        }
    }

    fn policy(rate: f64) -> LoopPolicy {
        LoopPolicy {
            rate,
            overdue_after: Duration::from_secs(600),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn loops_leave_on_schedule_and_their_return_is_counted_not_shown() {
        let (queue, creds, relay_dh) = loop_queue();
        let mut loops = Loops::new(policy(2.0));
        assert_eq!(loops.next_due(), None, "no run, nothing due");
        loops.start(RELAY, RELAY.parse().unwrap(), queue.clone(), Instant::now());
        let due = loops.next_due().unwrap();
        assert!(loops.take_due(Instant::now()).is_empty() || due <= Instant::now());
        tokio::time::sleep_until(due).await;
        assert_eq!(loops.take_due(Instant::now()), [RELAY]);
        assert!(loops.next_due().unwrap() > due, "the next one is scheduled");
        loops.sent(RELAY, 42, Instant::now());

        // Back through the relay: the loop queue's own seal and envelope.
        let body = wire::seal_loop(&queue.queue.envelope_key, 42).unwrap();
        let msg = delivered(&relay_dh, &queue, &body);
        assert!(loops.arrived(
            RELAY,
            &creds,
            &queue.queue.envelope_key,
            &msg,
            Instant::now()
        ));
        // Again (redelivered), a loop never sent, and garbage: not returns.
        assert!(!loops.arrived(
            RELAY,
            &creds,
            &queue.queue.envelope_key,
            &msg,
            Instant::now()
        ));
        let other = delivered(
            &relay_dh,
            &queue,
            &wire::seal_loop(&queue.queue.envelope_key, 7).unwrap(),
        );
        assert!(!loops.arrived(
            RELAY,
            &creds,
            &queue.queue.envelope_key,
            &other,
            Instant::now()
        ));
        let text = delivered(
            &relay_dh,
            &queue,
            &wire::seal_envelope(&queue.queue.envelope_key, 1, b"olm").unwrap(),
        );
        assert!(!loops.arrived(
            RELAY,
            &creds,
            &queue.queue.envelope_key,
            &text,
            Instant::now()
        ));
        let s = loops.stats();
        assert_eq!((s.sent, s.returned, s.unexpected), (1, 1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_loop_is_reported_once_per_window_and_a_failed_send_never() {
        let (queue, _, _) = loop_queue();
        let mut loops = Loops::new(policy(0.001));
        loops.start(RELAY, RELAY.parse().unwrap(), queue, Instant::now());
        loops.sent(RELAY, 1, Instant::now());
        loops.sent(RELAY, 2, Instant::now());
        let failure = loops.send_done(RELAY, 2, Err(ClientError::Timeout));
        assert!(matches!(failure, Some(Event::Warning { .. })));
        assert!(
            loops
                .send_done(RELAY, 3, Err(ClientError::Timeout))
                .is_none(),
            "one warning for a row of failures"
        );
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(loops.overdue(Instant::now()).is_empty());
        loops.sent(RELAY, 4, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            loops.overdue(Instant::now()),
            [Event::LoopOverdue {
                relay: "relay.test:9".into(),
                after_secs: 600,
            }]
        );
        // Loop 4 is late too, within the same window: counted, not reported again.
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(loops.overdue(Instant::now()).is_empty());
        let s = loops.stats();
        assert_eq!((s.sent, s.overdue, s.failed), (3, 2, 1));
        // A later loop that is late after the window: reported again.
        loops.sent(RELAY, 5, Instant::now());
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_eq!(loops.overdue(Instant::now()).len(), 1);
        assert!(loops.send_done(RELAY, 6, Ok(())).is_none());
    }
}
