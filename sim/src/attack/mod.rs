//! The adversary: what it sees of the simulated network, three disclosure attacks over it,
//! and how many messages each needs to link a target to her contact.
//!
//! **What it sees** ([`Visibility`]): a global passive observer sees every frame on every
//! link — client ⇄ relay and relay → relay — with its time and its two ends, never what it
//! carries (every frame is 16 KiB of ciphertext). With `adversary.relay` set it also runs
//! that relay: for frames on its links it sees what they carry (cover, SEND, FWD, ACK,
//! answers), which queue a message lands in, and which client's FWD each of its RFWDs came
//! from. All rules about what may be used are in this file; the attacks below only get
//! observations that passed them.
//!
//! **Attacks**, each scoring every user `j` as Alice's candidate contact:
//!
//! - [`sda`]: the statistical disclosure attack (Danezis 2003), with the weighting by
//!   messages sent per round of Mathewson & Dingledine (2004): the mean of the receiving
//!   activity in rounds where Alice sends, minus the background mean.
//! - [`timing`]: a Bayesian timing disclosure attack. Each frame a user receives gets, for
//!   each target, the posterior probability that it carries the target's message, from the
//!   delay distributions the adversary knows (exponential, with the configured means) chained
//!   through the forwarding relay and the destination relay, over every frame that could have
//!   caused it — the per-message posterior of Serjantov & Danezis (2002) and Troncoso et al.
//!   (2008), accumulated over messages like SDA, with the same background subtraction.
//! - [`reply`]: a two-sided attack on conversations (after Danezis, Diaz & Troncoso, "Two-sided
//!   statistical disclosure attack", PET 2007): frames received by `j` shortly after frames
//!   received by Alice (replies) score `j`, with an exponential kernel.
//!
//! **Metric**: for each target, at each checkpoint (the n-th message from Alice to Bob
//! delivered, n growing geometrically), each attack ranks Bob among Bob and every user who
//! is not Alice's contact (her other contacts are links too, and telling them apart by volume
//! is not what the attacks are for).
//! *Messages-to-link* of a target is the first checkpoint from which Bob stays ranked first
//! until the end of the run; [`Summary`] gives its median and 10th percentile over targets,
//! and the smallest n at which at least 90 % of the targets that reached n have Bob first.

pub mod kernel;
pub mod reply;
pub mod sda;
pub mod timing;

use rand::seq::SliceRandom;
use serde::Serialize;

use crate::observe::{Down, MsgInfo, Observer, Up};
use crate::population::Population;
use crate::rng::{Stream, rng_for};
use crate::scenario::Scenario;

/// The attacks, in report order.
pub const ATTACKS: [&str; 3] = ["sda", "timing", "reply"];

/// What the adversary may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    /// The relay the adversary runs, if any.
    pub relay: Option<u32>,
    /// Relay → relay frames are hidden in constant cover (`relays.link_cover`).
    pub relay_links_covered: bool,
}

impl Visibility {
    /// Whether the content of frames on links of `relay` is visible.
    pub fn inside(&self, relay: u32) -> bool {
        self.relay == Some(relay)
    }
}

/// One target: Alice and the contact the attacks must find.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Target {
    /// Alice.
    pub alice: u32,
    /// Bob: Alice's most-written-to contact.
    pub bob: u32,
    /// Alice's other contacts: not candidates.
    #[serde(skip)]
    pub others: Vec<u32>,
    /// Alice's client never disconnects (her presence gives nothing away).
    #[serde(default)]
    pub always_online: bool,
    /// Messages from Alice to Bob delivered so far.
    pub delivered: u64,
    /// Ranks of Bob at each checkpoint.
    pub checkpoints: Vec<Checkpoint>,
}

/// Bob's rank under each attack when the n-th message from Alice to Bob was delivered.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Messages from Alice to Bob delivered.
    pub messages: u64,
    /// Simulated time, ms.
    pub at_ms: u64,
    /// Bob's rank (1 = first) under each attack of [`ATTACKS`].
    pub ranks: [u32; 3],
}

/// The adversary, fed by the world.
#[derive(Debug)]
pub struct Adversary {
    vis: Visibility,
    users: usize,
    homes: Vec<u32>,
    targets: Vec<Target>,
    /// Target index of each user as Alice.
    target_of: Vec<Option<u16>>,
    next_checkpoint: Vec<u64>,
    growth: f64,
    /// Frames each user received that could carry a message.
    received: Vec<u32>,
    sda: sda::Sda,
    timing: timing::Timing,
    reply: reply::Reply,
}

impl Adversary {
    /// An adversary for `scen` over `pop`, with its targets drawn from the seed.
    pub fn new(scen: &Scenario, pop: &Population) -> Self {
        let n = pop.users.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(&mut rng_for(scen.seed, Stream::Targets, 0));
        if scen.adversary.targets_from == "active" {
            // Expected messages to the top contact: writing rate × the top contact's share.
            let to_bob = |u: u32| {
                let p = &pop.users[u as usize];
                p.write_rate * p.contact_cdf.first().copied().unwrap_or(0.0)
            };
            order.sort_by(|&a, &b| to_bob(b).total_cmp(&to_bob(a)));
        }
        let targets: Vec<Target> = order
            .into_iter()
            .take(scen.adversary.targets as usize)
            .filter_map(|a| {
                let contacts = &pop.users[a as usize].contacts;
                let bob = *contacts.first()?;
                Some(Target {
                    alice: a,
                    bob,
                    others: contacts.get(1..).unwrap_or_default().to_vec(),
                    always_online: pop.users[a as usize].always_online,
                    delivered: 0,
                    checkpoints: Vec::new(),
                })
            })
            .collect();
        let mut target_of = vec![None; n];
        for (i, t) in targets.iter().enumerate() {
            target_of[t.alice as usize] = Some(i as u16);
        }
        let k = targets.len();
        let homes = pop.users.iter().map(|u| u.home).collect();
        Self {
            vis: Visibility {
                relay: scen.adversary.relay,
                relay_links_covered: scen.relays.link_cover,
            },
            users: n,
            homes,
            next_checkpoint: vec![1; k],
            growth: scen.adversary.checkpoint_growth,
            received: vec![0; n],
            sda: sda::Sda::new(n, k, (scen.adversary.round_s * 1000.0) as u64),
            timing: timing::Timing::new(scen, pop.relays as usize, n, k),
            reply: reply::Reply::new(scen.adversary.reply_kernel_s * 1000.0, n, k),
            targets,
            target_of,
        }
    }

    /// The targets and their checkpoints so far.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Takes a last checkpoint for every target at time `t` (the end of the run), so that a
    /// target's final rank is known even between checkpoints.
    pub fn finish(&mut self, t: u64) -> Vec<Target> {
        self.sda.advance(t);
        for i in 0..self.targets.len() {
            let n = self.targets[i].delivered;
            if self.targets[i]
                .checkpoints
                .last()
                .is_none_or(|c| c.messages != n || c.at_ms != t)
                && n > 0
            {
                let ranks = self.ranks(i);
                self.targets[i].checkpoints.push(Checkpoint {
                    messages: n,
                    at_ms: t,
                    ranks,
                });
            }
        }
        std::mem::take(&mut self.targets)
    }

    /// Bob's rank under each attack for target `i`, now.
    fn ranks(&self, i: usize) -> [u32; 3] {
        let t = &self.targets[i];
        let (a, b) = (t.alice as usize, t.bob as usize);
        let mut out = [0u32; 3];
        for (k, slot) in out.iter_mut().enumerate() {
            let score = |j: usize| -> f64 {
                match k {
                    0 => self.sda.score(i, j),
                    1 => self.timing.score(
                        i,
                        j,
                        self.homes[j],
                        self.received[j],
                        self.homes[j] == self.homes[a],
                    ),
                    _ => self.reply.score(i, j, self.received[j]),
                }
            };
            let bob = score(b);
            let better = (0..self.users)
                .filter(|&j| j != a && j != b && !t.others.contains(&(j as u32)))
                .filter(|&j| score(j) >= bob)
                .count();
            *slot = 1 + better as u32;
        }
        out
    }
}

impl Observer for Adversary {
    fn up(&mut self, t: u64, user: u32, relay: u32, what: Up) {
        let inside = self.vis.inside(relay);
        // Inside its relay the adversary drops what it knows carries no message.
        if inside && matches!(what, Up::Cover | Up::Ack) {
            return;
        }
        let target = self.target_of[user as usize];
        self.sda.up(t, target);
        // A SEND into the adversary's relay: it will know which stored message it becomes.
        let exact = match what {
            Up::Send(m) if inside => Some(m),
            _ => None,
        };
        self.timing.client_frame(t, relay, target, exact);
    }

    fn down(&mut self, t: u64, user: u32, relay: u32, what: Down) {
        let inside = self.vis.inside(relay);
        let exact = match what {
            Down::Cover | Down::Answer if inside => return,
            Down::Msg(m) if inside => Some(m),
            _ => None,
        };
        let j = user as usize;
        self.received[j] += 1;
        self.sda.down(t, j);
        let own = self.target_of[j];
        self.timing.received(t, j, own, relay, exact);
        self.reply.received(t, j, own);
    }

    fn relay_link(&mut self, t: u64, from: u32, to: u32, msg: &MsgInfo) {
        if self.vis.relay_links_covered && !self.vis.inside(from) && !self.vis.inside(to) {
            // A constant stream: when a forwarded message crossed is not observable.
            return;
        }
        // Running `from`, the adversary knows which client's FWD this is; running `to`, it
        // knows which stored message it becomes.
        let origin = self
            .vis
            .inside(from)
            .then(|| self.target_of[msg.from as usize]);
        let track = self.vis.inside(to).then_some(msg.id);
        self.timing.relay_frame(t, from, to, origin, track);
    }

    fn sent(&mut self, _t: u64, _msg: &MsgInfo) {}

    fn delivered(&mut self, t: u64, msg: &MsgInfo) {
        let Some(i) = self.target_of[msg.from as usize] else {
            return;
        };
        let i = usize::from(i);
        if msg.is_loop || self.targets[i].bob != msg.to {
            return;
        }
        self.targets[i].delivered += 1;
        let n = self.targets[i].delivered;
        if n >= self.next_checkpoint[i] {
            self.sda.advance(t);
            let ranks = self.ranks(i);
            self.targets[i].checkpoints.push(Checkpoint {
                messages: n,
                at_ms: t,
                ranks,
            });
            let next = ((n as f64) * self.growth).ceil() as u64;
            self.next_checkpoint[i] = next.max(n + 1);
        }
    }

    fn session(&mut self, _t: u64, _user: u32, _online: bool) {}
}

/// Messages-to-link of one target under one attack: the first checkpoint from which Bob
/// stays first to the end, or `None` if he is not first at the end.
pub fn link_point(t: &Target, attack: usize) -> Option<&Checkpoint> {
    let cps = &t.checkpoints;
    let last_bad = cps.iter().rposition(|c| c.ranks[attack] != 1);
    match last_bad {
        None => cps.first(),
        Some(i) => cps.get(i + 1),
    }
}

/// One attack's result over all targets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Attack name.
    pub attack: String,
    /// Targets scored (with at least one message to Bob delivered).
    pub targets: usize,
    /// Targets linked by the end of the run.
    pub linked: usize,
    /// Median messages-to-link (`None`: fewer than half the targets were linked).
    pub median_messages: Option<u64>,
    /// 10th percentile of messages-to-link (the fastest-linked tenth).
    pub p10_messages: Option<u64>,
    /// Smallest n at which ≥ 90 % of the targets with ≥ n delivered messages have Bob
    /// first (`None`: never within the run), and how many targets reached that n.
    pub n90_messages: Option<u64>,
    /// Targets behind `n90_messages`.
    pub n90_support: usize,
    /// Median days from the start to the link, over linked targets.
    pub median_days_to_link: Option<f64>,
    /// Median messages Alice sent Bob during the run, over targets.
    pub median_messages_sent: u64,
}

/// Summaries of every attack.
pub fn summarise(targets: &[Target]) -> Vec<Summary> {
    let scored: Vec<&Target> = targets.iter().filter(|t| t.delivered > 0).collect();
    (0..ATTACKS.len())
        .map(|k| {
            let mut links: Vec<Option<u64>> = scored
                .iter()
                .map(|t| link_point(t, k).map(|c| c.messages))
                .collect();
            links.sort_by_key(|l| l.unwrap_or(u64::MAX));
            let pick = |q: f64| -> Option<u64> {
                if links.is_empty() {
                    return None;
                }
                let idx = ((links.len() as f64 * q).ceil() as usize).clamp(1, links.len()) - 1;
                links[idx]
            };
            let mut days: Vec<f64> = scored
                .iter()
                .filter_map(|t| link_point(t, k).map(|c| c.at_ms as f64 / 86_400_000.0))
                .collect();
            days.sort_by(f64::total_cmp);
            let (n90, support) = n90(&scored, k);
            let mut sent: Vec<u64> = scored.iter().map(|t| t.delivered).collect();
            sent.sort_unstable();
            Summary {
                attack: ATTACKS[k].to_owned(),
                targets: scored.len(),
                linked: links.iter().filter(|l| l.is_some()).count(),
                median_messages: pick(0.5),
                p10_messages: pick(0.1),
                n90_messages: n90,
                n90_support: support,
                median_days_to_link: (days.len() * 2 >= scored.len().max(1))
                    .then(|| days.get(days.len() / 2).copied())
                    .flatten(),
                median_messages_sent: sent.get(sent.len() / 2).copied().unwrap_or(0),
            }
        })
        .collect()
}

/// The smallest checkpoint count n at which at least 90 % of the targets that reached n had
/// Bob first, over at least 10 such targets.
fn n90(targets: &[&Target], k: usize) -> (Option<u64>, usize) {
    let mut counts: Vec<u64> = targets
        .iter()
        .flat_map(|t| t.checkpoints.iter().map(|c| c.messages))
        .collect();
    counts.sort_unstable();
    counts.dedup();
    for n in counts {
        let at: Vec<bool> = targets
            .iter()
            .filter_map(|t| t.checkpoints.iter().find(|c| c.messages == n))
            .map(|c| c.ranks[k] == 1)
            .collect();
        if at.len() >= 10 && at.iter().filter(|&&b| b).count() * 10 >= at.len() * 9 {
            return (Some(n), at.len());
        }
    }
    (None, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(ranks: &[(u64, u32)]) -> Target {
        Target {
            alice: 0,
            bob: 1,
            others: Vec::new(),
            always_online: false,
            delivered: ranks.last().map_or(0, |r| r.0),
            checkpoints: ranks
                .iter()
                .map(|&(messages, r)| Checkpoint {
                    messages,
                    at_ms: messages * 1000,
                    ranks: [r, r, r],
                })
                .collect(),
        }
    }

    #[test]
    fn the_link_point_is_where_bob_stays_first() {
        assert_eq!(
            link_point(&target(&[(1, 3), (2, 1), (3, 2), (4, 1), (5, 1)]), 0).map(|c| c.messages),
            Some(4)
        );
        assert_eq!(
            link_point(&target(&[(1, 1), (2, 1)]), 0).map(|c| c.messages),
            Some(1)
        );
        assert_eq!(link_point(&target(&[(1, 1), (2, 5)]), 0), None);
        assert_eq!(link_point(&target(&[]), 0), None);
    }

    #[test]
    fn summaries_count_links_and_the_ninety_percent_point() {
        let mut ts: Vec<Target> = (0..20).map(|_| target(&[(1, 2), (2, 1), (3, 1)])).collect();
        ts.push(target(&[(1, 4), (2, 4), (3, 4)]));
        let s = &summarise(&ts)[0];
        assert_eq!((s.targets, s.linked), (21, 20));
        assert_eq!(s.median_messages, Some(2));
        // At n = 2, 20 of 21 have Bob first (95 %).
        assert_eq!((s.n90_messages, s.n90_support), (Some(2), 21));
    }
}
