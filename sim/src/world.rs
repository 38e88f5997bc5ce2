//! The simulated network: users, relays, queues and messages, in virtual time.
//!
//! A discrete-event loop over one heap of timed events. What it models, and how (the full
//! list is in `docs/sim.md`):
//!
//! - **Relays** hold queues and delay every stored message with the relay's own code: a
//!   [`DelaySampler`] draws the release time and a [`Scheduler`] holds the message until
//!   then (the same types the relay's scheduler task drives). A queue delivers one message
//!   at a time to its subscribed, connected owner and the next one after the ACK (relay
//!   § 12); a queue holds at most `quota` messages (a SEND beyond is refused and counted).
//!   A forwarding relay holds each FWD for a delay drawn by another [`DelaySampler`]
//!   (protocol § 10a.3). A paced session's answers ride in frames the relay sends anyway,
//!   so they add none (PACE, protocol § 9.2); an unpaced session's answers are frames of
//!   their own.
//! - **Clients** are connected during sessions (or always). A paced client's link sends one
//!   frame per tick of its [`Pacer`], a message or pending ACKs in place of cover; loops come
//!   from its [`LoopSchedule`]. An unpaced client sends each message and each ACK at once,
//!   on a link to the queue's relay (or to its own relay, through FWD), with optional
//!   additive cover.
//! - **People** write new messages while online (Poisson, modulated by their diurnal
//!   rhythm), to contacts chosen by weight, and reply to what they read with some probability
//!   after a think time. Messages written while the writer is offline are not modelled.
//!
//! Everything that crosses a link is reported to the [`Observer`] with its ground truth;
//! the world never decides what an adversary sees. Same scenario, same seed, same events.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use sotto_timing::exp::{exp_delay, poisson_gap};
use sotto_timing::policy::ECHO_DELAY;
use sotto_timing::{DelaySampler, LoopSchedule, Pacer, Scheduler, TrafficPolicy};

use crate::observe::{Down, MsgInfo, Observer, Up};
use crate::population::Population;
use crate::rng::{Stream, rng_for};
use crate::scenario::Scenario;

/// How long an unpaced ACK's OK waits for a frame to ride in before it takes its own
/// (the relay's `LAZY_ANSWER_DELAY`).
const LAZY_ANSWER_MS: u64 = 5;

/// An event, ordered by time then insertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A user's client connects or disconnects (`epoch` guards against stale events: each connect and disconnect starts a new epoch).
    Session { user: u32, epoch: u32 },
    /// The next candidate time for a user to start writing.
    Write { user: u32, epoch: u32 },
    /// A user's reply to `to` is written.
    Reply { user: u32, to: u32, epoch: u32 },
    /// A paced client's tick.
    Tick { user: u32, epoch: u32 },
    /// A loop is due.
    Loop { user: u32, epoch: u32 },
    /// A relay cover frame towards a connected user (paced: its PACE ticks).
    Cover { user: u32, epoch: u32 },
    /// Additive client cover (unpaced clients).
    ClientCover { user: u32, epoch: u32 },
    /// A message arrives at the relay holding its queue.
    Arrive {
        relay: u32,
        msg: u32,
        via_relay: bool,
    },
    /// A FWD arrives at the sender's relay.
    ArriveFwd { relay: u32, msg: u32 },
    /// A forwarding relay sends the message on.
    Forward { relay: u32, msg: u32 },
    /// A relay's scheduler has something due.
    Wake { relay: u32 },
    /// An ACK reaches the relay.
    Ack { queue: u32, msg: u32 },
    /// A paced client answers a relay cover frame that has reached it.
    Echo { user: u32, epoch: u32 },
    /// A pushed message reaches its recipient.
    Deliver { user: u32, msg: u32, epoch: u32 },
    /// An unpaced answer frame leaves the relay towards a user.
    Answer { user: u32, relay: u32 },
}

/// A message in flight or stored.
#[derive(Debug, Clone, Copy)]
struct Msg {
    info: MsgInfo,
    queue: u32,
    /// Delivered at least once (later pushes are redeliveries).
    delivered: bool,
    /// When it left its author (ms).
    left_at: u64,
    /// When its relay released it (ms).
    released_at: u64,
    /// Its recipient was connected when it was released.
    online_at_release: bool,
}

/// A queue on a relay, owned by its recipient.
#[derive(Debug, Default)]
struct Queue {
    owner: u32,
    relay: u32,
    /// Released, not yet delivered.
    released: VecDeque<u32>,
    /// Delivered, not yet acknowledged.
    in_flight: Option<u32>,
    /// Stored messages, released or not (for the quota).
    stored: u32,
}

#[derive(Debug)]
struct Relay {
    pool: Scheduler<u32>,
    release: DelaySampler<ChaCha20Rng>,
    forward: DelaySampler<ChaCha20Rng>,
    /// When the pending wake event is due (a wake at another time is stale).
    wake_at: Option<u64>,
}

#[derive(Debug)]
struct User {
    online: bool,
    epoch: u32,
    rng: ChaCha20Rng,
    pacer: Option<Pacer<ChaCha20Rng>>,
    loops: Option<LoopSchedule<ChaCha20Rng>>,
    cover_rng: ChaCha20Rng,
    /// Messages waiting for a tick (paced).
    outbox: VecDeque<u32>,
    /// ACKs waiting for a tick (paced): (queue, message).
    acks: Vec<(u32, u32)>,
    /// Queues this user receives on (one per contact, then its loop queue).
    owned: Vec<u32>,
    /// For each contact (same order as the profile), the queue this user sends to.
    send_to: Vec<u32>,
    loop_queue: u32,
    online_ms: u64,
    since: u64,
}

/// What a run measured besides the adversary's view.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RunStats {
    /// Messages written (loops excluded).
    pub written: u64,
    /// Of which delivered.
    pub delivered: u64,
    /// Loops sent.
    pub loops_sent: u64,
    /// Loops back.
    pub loops_delivered: u64,
    /// SENDs refused for the quota.
    pub quota_refused: u64,
    /// Client → relay frames.
    pub up_frames: u64,
    /// Relay → client frames.
    pub down_frames: u64,
    /// Relay → relay frames (forwarded messages).
    pub relay_frames: u64,
    /// Total connected time of all users, ms.
    pub online_ms: u64,
    /// Write-to-first-delivery latencies of messages, ms (sorted at the end).
    pub latencies_ms: Vec<u64>,
    /// Latencies of the messages whose recipient was connected when they were released:
    /// what the network and the policy cost, without waiting for the recipient (sorted).
    pub connected_latencies_ms: Vec<u64>,
    /// Of which: waiting to leave the author (paced outbox), ms (sorted).
    pub outbox_ms: Vec<u64>,
    /// Of which: leaving to release (network, forwarding and release delays), ms (sorted).
    pub relay_ms: Vec<u64>,
    /// Of which: release to delivery (recipient offline, or the queue's previous message
    /// not yet acknowledged), ms (sorted).
    pub push_ms: Vec<u64>,
    /// Events processed.
    pub events: u64,
}

/// The simulated network.
#[derive(Debug)]
pub struct World<'a> {
    scen: &'a Scenario,
    pop: &'a Population,
    policy: TrafficPolicy,
    forward: bool,
    now: u64,
    horizon: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    users: Vec<User>,
    relays: Vec<Relay>,
    queues: Vec<Queue>,
    msgs: Vec<Msg>,
    free: Vec<u32>,
    stats: RunStats,
}

impl<'a> World<'a> {
    /// Builds the world of `scen` over `pop` (queues for every contact pair, one loop queue
    /// per user).
    ///
    /// # Errors
    /// An invalid delay mode or client policy.
    pub fn new(scen: &'a Scenario, pop: &'a Population) -> Result<Self, String> {
        let policy = scen.client.traffic_policy()?;
        let release_mode = scen.relays.delay_mode()?;
        let forward_mode = scen.relays.forward_mode();
        let seed = scen.seed;
        let relays = (0..pop.relays)
            .map(|r| Relay {
                pool: Scheduler::new(),
                release: DelaySampler::new(
                    release_mode.clone(),
                    rng_for(seed, Stream::Relay, r.into()),
                ),
                forward: DelaySampler::new(
                    forward_mode.clone(),
                    rng_for(seed, Stream::Forward, r.into()),
                ),
                wake_at: None,
            })
            .collect();
        let mut queues = Vec::new();
        // Queue of (owner, sender) at index looked up through each owner's contact list.
        let mut owned: Vec<Vec<u32>> = vec![Vec::new(); pop.users.len()];
        for (owner, profile) in pop.users.iter().enumerate() {
            for _ in &profile.contacts {
                owned[owner].push(queues.len() as u32);
                queues.push(Queue {
                    owner: owner as u32,
                    relay: profile.home,
                    ..Queue::default()
                });
            }
        }
        let mut users: Vec<User> = Vec::with_capacity(pop.users.len());
        for (u, profile) in pop.users.iter().enumerate() {
            let loop_queue = queues.len() as u32;
            queues.push(Queue {
                owner: u as u32,
                relay: profile.home,
                ..Queue::default()
            });
            let mut mine = owned[u].clone();
            mine.push(loop_queue);
            // The queue u sends to on contact c is c's queue for u.
            let send_to = profile
                .contacts
                .iter()
                .map(|&c| {
                    let pos = pop.users[c as usize]
                        .contacts
                        .iter()
                        .position(|&x| x as usize == u)
                        .unwrap_or(0);
                    owned[c as usize][pos]
                })
                .collect();
            let idx = u as u64;
            users.push(User {
                online: false,
                epoch: 0,
                rng: rng_for(seed, Stream::User, idx),
                pacer: policy
                    .send
                    .map(|p| Pacer::new(p, rng_for(seed, Stream::Pacer, idx))),
                loops: policy.loops.is_on().then(|| {
                    LoopSchedule::new(
                        &policy.loops,
                        Duration::ZERO,
                        rng_for(seed, Stream::Loops, idx),
                    )
                }),
                cover_rng: rng_for(seed, Stream::RelayCover, idx),
                outbox: VecDeque::new(),
                acks: Vec::new(),
                owned: mine,
                send_to,
                loop_queue,
                online_ms: 0,
                since: 0,
            });
        }
        Ok(Self {
            scen,
            pop,
            forward: scen.client.forward || policy.send.is_some(),
            policy,
            now: 0,
            horizon: scen.horizon_ms(),
            seq: 0,
            heap: BinaryHeap::new(),
            users,
            relays,
            queues,
            msgs: Vec::new(),
            free: Vec::new(),
            stats: RunStats::default(),
        })
    }

    /// Runs to the horizon, reporting to `obs`; `progress` is called now and then with the
    /// simulated time reached (ms).
    pub fn run(mut self, obs: &mut impl Observer, mut progress: impl FnMut(u64)) -> RunStats {
        for u in 0..self.users.len() as u32 {
            let start_online = self.pop.users[u as usize].always_online || {
                let p = self.scen.population.session_minutes
                    / (self.scen.population.session_minutes + self.scen.population.offline_minutes);
                self.users[u as usize].rng.r#gen::<f64>() < p
            };
            if start_online {
                self.go_online(u, obs);
            } else {
                self.schedule_next_session(u);
            }
        }
        let mut last_progress = 0;
        while let Some(Reverse((t, _, ev))) = self.heap.pop() {
            if t > self.horizon {
                break;
            }
            self.now = t;
            self.stats.events += 1;
            if t >= last_progress + 3_600_000 {
                last_progress = t;
                progress(t);
            }
            self.handle(ev, obs);
        }
        self.now = self.horizon;
        for u in 0..self.users.len() {
            if self.users[u].online {
                self.users[u].online_ms += self.horizon - self.users[u].since;
            }
            self.stats.online_ms += self.users[u].online_ms;
        }
        self.stats.latencies_ms.sort_unstable();
        self.stats.outbox_ms.sort_unstable();
        self.stats.connected_latencies_ms.sort_unstable();
        self.stats.relay_ms.sort_unstable();
        self.stats.push_ms.sort_unstable();
        progress(self.horizon);
        self.stats
    }

    fn at(&mut self, t: u64, ev: Ev) {
        if t <= self.horizon {
            self.seq += 1;
            self.heap.push(Reverse((t, self.seq, ev)));
        }
    }

    fn net(&self) -> (u64, u64, u64) {
        let n = &self.scen.network;
        (n.client_ms, n.relay_ms, n.store_ms)
    }

    fn handle(&mut self, ev: Ev, obs: &mut impl Observer) {
        match ev {
            Ev::Session { user, epoch } => {
                if self.users[user as usize].epoch != epoch {
                    return;
                }
                if self.users[user as usize].online {
                    self.go_offline(user, obs);
                } else {
                    self.go_online(user, obs);
                }
            }
            Ev::Write { user, epoch } => {
                if !self.live(user, epoch) {
                    return;
                }
                self.on_write(user, obs);
            }
            Ev::Reply { user, to, epoch } => {
                if self.live(user, epoch) {
                    self.write_message(user, to, false, obs);
                }
            }
            Ev::Tick { user, epoch } => {
                if self.live(user, epoch) {
                    self.on_tick(user, obs);
                }
            }
            Ev::Loop { user, epoch } => {
                if self.live(user, epoch) {
                    self.on_loop(user, obs);
                }
            }
            Ev::Cover { user, epoch } => {
                if self.live(user, epoch) {
                    let home = self.pop.users[user as usize].home;
                    self.down(obs, user, home, Down::Cover);
                    self.schedule_cover(user);
                    if self.paced(user) && self.policy.echo {
                        let (c, _, _) = self.net();
                        self.at(self.now + c + ms(ECHO_DELAY), Ev::Echo { user, epoch });
                    }
                }
            }
            Ev::Echo { user, epoch } => {
                if self.live(user, epoch) {
                    self.paced_frame(user, obs);
                }
            }
            Ev::ClientCover { user, epoch } => {
                if self.live(user, epoch) {
                    let home = self.pop.users[user as usize].home;
                    self.up(obs, user, home, Up::Cover);
                    let rate = self.scen.client.additive_cover;
                    let gap = ms(poisson_gap(&mut self.users[user as usize].cover_rng, rate));
                    self.at(self.now + gap, Ev::ClientCover { user, epoch });
                }
            }
            Ev::ArriveFwd { relay, msg } => {
                let r = &mut self.relays[relay as usize];
                let at = r.forward.release_at(self.now);
                self.at(at, Ev::Forward { relay, msg });
            }
            Ev::Forward { relay, msg } => {
                let m = self.msgs[msg as usize];
                let dest = self.queues[m.queue as usize].relay;
                self.stats.relay_frames += 1;
                obs.relay_link(self.now, relay, dest, &m.info);
                let (_, rr, _) = self.net();
                self.at(
                    self.now + rr,
                    Ev::Arrive {
                        relay: dest,
                        msg,
                        via_relay: true,
                    },
                );
                // The destination's answer, relayed to an unpaced sender.
                if !self.paced(m.info.from) {
                    let (_, rr, store) = self.net();
                    self.at(
                        self.now + 2 * rr + store,
                        Ev::Answer {
                            user: m.info.from,
                            relay,
                        },
                    );
                }
            }
            Ev::Arrive { relay, msg, .. } => self.on_arrive(relay, msg),
            Ev::Wake { relay } => self.on_wake(relay, obs),
            Ev::Ack { queue, msg } => self.on_ack(queue, msg, obs),
            Ev::Deliver { user, msg, epoch } => self.on_deliver(user, msg, epoch, obs),
            Ev::Answer { user, relay } => {
                if self.users[user as usize].online {
                    self.down(obs, user, relay, Down::Answer);
                }
            }
        }
    }

    fn live(&self, user: u32, epoch: u32) -> bool {
        let u = &self.users[user as usize];
        u.online && u.epoch == epoch
    }

    fn paced(&self, user: u32) -> bool {
        self.users[user as usize].pacer.is_some()
    }

    fn up(&mut self, obs: &mut impl Observer, user: u32, relay: u32, what: Up) {
        self.stats.up_frames += 1;
        obs.up(self.now, user, relay, what);
    }

    fn down(&mut self, obs: &mut impl Observer, user: u32, relay: u32, what: Down) {
        self.stats.down_frames += 1;
        obs.down(self.now, user, relay, what);
    }

    // --- sessions ------------------------------------------------------------------------

    fn go_online(&mut self, user: u32, obs: &mut impl Observer) {
        let now = self.now;
        let u = &mut self.users[user as usize];
        u.online = true;
        u.epoch = u.epoch.wrapping_add(1);
        u.since = now;
        let epoch = u.epoch;
        obs.session(now, user, true);
        if !self.pop.users[user as usize].always_online {
            let mean = self.scen.population.session_minutes * 60_000.0;
            let d = ms(exp_delay(
                &mut self.users[user as usize].rng,
                Duration::from_secs_f64(mean / 1000.0),
                Duration::MAX,
            ));
            self.at(now + d.max(1), Ev::Session { user, epoch });
        }
        self.schedule_write(user);
        if self.paced(user) {
            let backlog = self.backlog(user);
            let gap = self.users[user as usize]
                .pacer
                .as_mut()
                .map_or(u64::MAX, |p| ms(p.next_gap(backlog)));
            self.at(now.saturating_add(gap), Ev::Tick { user, epoch });
            if self.policy.relay_cover > 0.0 {
                self.schedule_cover(user);
            }
        } else {
            if self.scen.relays.cover_rate > 0.0 {
                self.schedule_cover(user);
            }
            if self.scen.client.additive_cover > 0.0 {
                let rate = self.scen.client.additive_cover;
                let gap = ms(poisson_gap(&mut self.users[user as usize].cover_rng, rate));
                self.at(now + gap, Ev::ClientCover { user, epoch });
            }
        }
        if let Some(next) = self.users[user as usize]
            .loops
            .as_ref()
            .and_then(|l| l.next_at())
        {
            self.at(ms(next).max(now), Ev::Loop { user, epoch });
        }
        // Subscriptions resume: every owned queue with released messages pushes one.
        let owned = self.users[user as usize].owned.clone();
        for q in owned {
            self.try_push(q, obs);
        }
    }

    fn go_offline(&mut self, user: u32, obs: &mut impl Observer) {
        let now = self.now;
        let u = &mut self.users[user as usize];
        u.online = false;
        u.epoch = u.epoch.wrapping_add(1);
        u.online_ms += now - u.since;
        u.acks.clear();
        obs.session(now, user, false);
        // Unacknowledged deliveries go back to the front: redelivered on the next SUB.
        for &q in &self.users[user as usize].owned {
            let queue = &mut self.queues[q as usize];
            if let Some(m) = queue.in_flight.take() {
                queue.released.push_front(m);
            }
        }
        self.schedule_next_session(user);
    }

    fn schedule_next_session(&mut self, user: u32) {
        let spec = &self.scen.population;
        let profile = &self.pop.users[user as usize];
        let factor = profile.diurnal(spec, self.now as f64 / 1000.0).max(0.1);
        let mean_s = spec.offline_minutes * 60.0 / factor;
        let epoch = self.users[user as usize].epoch;
        let d = ms(exp_delay(
            &mut self.users[user as usize].rng,
            Duration::from_secs_f64(mean_s),
            Duration::MAX,
        ));
        self.at(self.now + d.max(1), Ev::Session { user, epoch });
    }

    fn schedule_cover(&mut self, user: u32) {
        let rate = if self.paced(user) {
            self.policy.relay_cover
        } else {
            self.scen.relays.cover_rate
        };
        let epoch = self.users[user as usize].epoch;
        let gap = ms(poisson_gap(&mut self.users[user as usize].cover_rng, rate));
        self.at(self.now.saturating_add(gap), Ev::Cover { user, epoch });
    }

    // --- writing ---------------------------------------------------------------------------

    /// Candidate times come at the user's peak rate; each is kept with probability
    /// diurnal / peak (thinning), which gives the diurnal Poisson process.
    fn schedule_write(&mut self, user: u32) {
        let spec = &self.scen.population;
        let peak = self.pop.users[user as usize].write_rate * (1.0 + spec.diurnal_amplitude);
        if peak <= 0.0 {
            return;
        }
        let epoch = self.users[user as usize].epoch;
        let gap = ms(poisson_gap(&mut self.users[user as usize].rng, peak));
        self.at(self.now.saturating_add(gap), Ev::Write { user, epoch });
    }

    fn on_write(&mut self, user: u32, obs: &mut impl Observer) {
        let spec = &self.scen.population;
        let profile = &self.pop.users[user as usize];
        let keep = profile.diurnal(spec, self.now as f64 / 1000.0) / (1.0 + spec.diurnal_amplitude);
        let rng = &mut self.users[user as usize].rng;
        if rng.r#gen::<f64>() < keep {
            let u: f64 = rng.r#gen();
            if let Some(to) = profile.pick_contact(u) {
                self.write_message(user, to, false, obs);
            }
        }
        self.schedule_write(user);
    }

    fn on_loop(&mut self, user: u32, obs: &mut impl Observer) {
        let now = Duration::from_millis(self.now);
        let epoch = self.users[user as usize].epoch;
        let Some(l) = self.users[user as usize].loops.as_mut() else {
            return;
        };
        if l.poll_due(now) {
            self.write_message(user, user, true, obs);
        }
        if let Some(next) = self.users[user as usize]
            .loops
            .as_ref()
            .and_then(|l| l.next_at())
        {
            self.at(ms(next).max(self.now + 1), Ev::Loop { user, epoch });
        }
    }

    fn write_message(&mut self, from: u32, to: u32, is_loop: bool, obs: &mut impl Observer) {
        let queue = if is_loop {
            self.users[from as usize].loop_queue
        } else {
            let profile = &self.pop.users[from as usize];
            let Some(i) = profile.contacts.iter().position(|&c| c == to) else {
                return;
            };
            self.users[from as usize].send_to[i]
        };
        let info = MsgInfo {
            id: 0,
            from,
            to,
            is_loop,
            written_at: self.now,
        };
        let id = self.alloc(Msg {
            info,
            queue,
            delivered: false,
            left_at: 0,
            released_at: 0,
            online_at_release: false,
        });
        if is_loop {
            self.stats.loops_sent += 1;
        } else {
            self.stats.written += 1;
        }
        if self.paced(from) {
            self.users[from as usize].outbox.push_back(id);
        } else {
            self.send_now(from, id, obs);
        }
    }

    fn alloc(&mut self, mut m: Msg) -> u32 {
        match self.free.pop() {
            Some(id) => {
                m.info.id = id;
                self.msgs[id as usize] = m;
                id
            }
            None => {
                let id = self.msgs.len() as u32;
                m.info.id = id;
                self.msgs.push(m);
                id
            }
        }
    }

    /// The message leaves its author now: directly on a link to its queue's relay, or as a
    /// FWD through the author's own relay.
    fn send_now(&mut self, from: u32, msg: u32, obs: &mut impl Observer) {
        self.msgs[msg as usize].left_at = self.now;
        let m = self.msgs[msg as usize];
        let dest = self.queues[m.queue as usize].relay;
        let home = self.pop.users[from as usize].home;
        let (c, _, store) = self.net();
        if self.forward && dest != home {
            self.up(obs, from, home, Up::Fwd(msg));
            obs.sent(self.now, &m.info);
            self.at(self.now + c, Ev::ArriveFwd { relay: home, msg });
        } else {
            self.up(obs, from, dest, Up::Send(msg));
            obs.sent(self.now, &m.info);
            self.at(
                self.now + c,
                Ev::Arrive {
                    relay: dest,
                    msg,
                    via_relay: false,
                },
            );
            if !self.paced(from) {
                self.at(
                    self.now + c + store,
                    Ev::Answer {
                        user: from,
                        relay: dest,
                    },
                );
            }
        }
    }

    fn backlog(&self, user: u32) -> usize {
        let u = &self.users[user as usize];
        u.outbox.len() + u.acks.len()
    }

    /// A paced tick: one frame ([`World::paced_frame`]), then the next tick.
    fn on_tick(&mut self, user: u32, obs: &mut impl Observer) {
        if !self.paced_frame(user, obs) {
            return;
        }
        let epoch = self.users[user as usize].epoch;
        let backlog = self.backlog(user);
        let gap = self.users[user as usize]
            .pacer
            .as_mut()
            .map_or(u64::MAX, |p| ms(p.next_gap(backlog)));
        self.at(
            self.now.saturating_add(gap.max(1)),
            Ev::Tick { user, epoch },
        );
    }

    /// One frame of a paced client, now: the next message and every pending ACK, or cover.
    /// Returns false for an unpaced client (nothing sent).
    fn paced_frame(&mut self, user: u32, obs: &mut impl Observer) -> bool {
        let backlog = self.backlog(user);
        let home = self.pop.users[user as usize].home;
        let tick = self.users[user as usize]
            .pacer
            .as_mut()
            .map(|p| p.tick(backlog));
        match tick {
            Some(sotto_timing::Tick::Real) => {
                let acks = std::mem::take(&mut self.users[user as usize].acks);
                let (c, _, _) = self.net();
                for (queue, msg) in acks {
                    self.at(self.now + c, Ev::Ack { queue, msg });
                }
                match self.users[user as usize].outbox.pop_front() {
                    Some(msg) => self.send_now(user, msg, obs),
                    None => self.up(obs, user, home, Up::Ack),
                }
            }
            Some(sotto_timing::Tick::Cover) => self.up(obs, user, home, Up::Cover),
            None => return false,
        }
        true
    }

    // --- relays ----------------------------------------------------------------------------

    fn on_arrive(&mut self, relay: u32, msg: u32) {
        let m = self.msgs[msg as usize];
        let queue = &mut self.queues[m.queue as usize];
        if queue.stored >= self.scen.relays.quota {
            self.stats.quota_refused += 1;
            self.free.push(msg);
            return;
        }
        queue.stored += 1;
        let (_, _, store) = self.net();
        let stored_at = self.now + store;
        let r = &mut self.relays[relay as usize];
        let release = r.release.release_at(stored_at);
        r.pool.insert(msg, stored_at, release);
        if r.wake_at.is_none_or(|w| release < w) {
            r.wake_at = Some(release);
            self.at(release, Ev::Wake { relay });
        }
    }

    fn on_wake(&mut self, relay: u32, obs: &mut impl Observer) {
        if self.relays[relay as usize].wake_at != Some(self.now) {
            return;
        }
        let due = self.relays[relay as usize]
            .pool
            .pop_due(self.now, usize::MAX);
        for r in due {
            let owner = self.queues[self.msgs[r.item as usize].queue as usize].owner;
            let m = &mut self.msgs[r.item as usize];
            m.released_at = self.now;
            m.online_at_release = self.users[owner as usize].online;
            let q = self.msgs[r.item as usize].queue;
            self.queues[q as usize].released.push_back(r.item);
            self.try_push(q, obs);
        }
        let r = &mut self.relays[relay as usize];
        r.wake_at = r.pool.next_deadline();
        if let Some(w) = r.wake_at {
            self.at(w, Ev::Wake { relay });
        }
    }

    /// Pushes the next released message of queue `q` if its owner is connected and nothing
    /// is in flight. Returns whether a message was pushed.
    fn try_push(&mut self, q: u32, obs: &mut impl Observer) -> bool {
        let queue = &mut self.queues[q as usize];
        let owner = queue.owner;
        if queue.in_flight.is_some() || !self.users[owner as usize].online {
            return false;
        }
        let Some(msg) = queue.released.pop_front() else {
            return false;
        };
        queue.in_flight = Some(msg);
        let relay = queue.relay;
        self.down(obs, owner, relay, Down::Msg(msg));
        let (c, _, _) = self.net();
        let epoch = self.users[owner as usize].epoch;
        self.at(
            self.now + c,
            Ev::Deliver {
                user: owner,
                msg,
                epoch,
            },
        );
        true
    }

    fn on_deliver(&mut self, user: u32, msg: u32, epoch: u32, obs: &mut impl Observer) {
        if !self.live(user, epoch)
            || self.queues[self.msgs[msg as usize].queue as usize].in_flight != Some(msg)
        {
            return;
        }
        let m = self.msgs[msg as usize];
        if !m.delivered {
            self.msgs[msg as usize].delivered = true;
            obs.delivered(self.now, &m.info);
            if m.info.is_loop {
                self.stats.loops_delivered += 1;
            } else {
                self.stats.delivered += 1;
                self.stats
                    .latencies_ms
                    .push(self.now.saturating_sub(m.info.written_at));
                self.stats
                    .outbox_ms
                    .push(m.left_at.saturating_sub(m.info.written_at));
                self.stats
                    .relay_ms
                    .push(m.released_at.saturating_sub(m.left_at));
                self.stats
                    .push_ms
                    .push(self.now.saturating_sub(m.released_at));
                if m.online_at_release {
                    self.stats
                        .connected_latencies_ms
                        .push(self.now.saturating_sub(m.info.written_at));
                }
                let p = self.scen.population.reply_probability;
                let rng = &mut self.users[user as usize].rng;
                if rng.r#gen::<f64>() < p {
                    let think = Duration::from_secs_f64(self.scen.population.reply_think_s);
                    let d = ms(exp_delay(rng, think, think * 20));
                    self.at(
                        self.now + d,
                        Ev::Reply {
                            user,
                            to: m.info.from,
                            epoch,
                        },
                    );
                }
            }
        }
        let queue = m.queue;
        if self.paced(user) {
            self.users[user as usize].acks.push((queue, msg));
            if self.policy.echo {
                // The client's echo, which carries this ACK (`ECHO_DELAY`).
                self.at(self.now + ms(ECHO_DELAY), Ev::Echo { user, epoch });
            }
        } else {
            let relay = self.queues[queue as usize].relay;
            self.up(obs, user, relay, Up::Ack);
            let (c, _, _) = self.net();
            self.at(self.now + c, Ev::Ack { queue, msg });
        }
    }

    fn on_ack(&mut self, q: u32, msg: u32, obs: &mut impl Observer) {
        let queue = &mut self.queues[q as usize];
        if queue.in_flight != Some(msg) {
            return;
        }
        queue.in_flight = None;
        queue.stored = queue.stored.saturating_sub(1);
        let (owner, relay) = (queue.owner, queue.relay);
        self.free.push(msg);
        let pushed = self.try_push(q, obs);
        // An unpaced ACK's OK rides with the next MSG, or takes its own frame.
        if !pushed && !self.paced(owner) && self.users[owner as usize].online {
            self.at(self.now + LAZY_ANSWER_MS, Ev::Answer { user: owner, relay });
        }
    }
}

/// The type names of a relay's pool and release sampler and of a client's pacer, as the
/// world holds them (a test checks they are `sotto-timing`'s).
pub fn relay_types() -> (&'static str, &'static str, &'static str) {
    (
        std::any::type_name::<Scheduler<u32>>(),
        std::any::type_name::<DelaySampler<ChaCha20Rng>>(),
        std::any::type_name::<Pacer<ChaCha20Rng>>(),
    )
}

/// Whole milliseconds of a duration (saturating).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
