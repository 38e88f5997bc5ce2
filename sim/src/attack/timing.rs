//! The Bayesian timing disclosure attack, chained through relays.
//!
//! The adversary knows the delay distributions (forwarding delay, release delay: both
//! exponential with the configured means, plus the fixed network and storage times). For
//! every frame a relay sends towards a user it computes, for each target, the posterior
//! probability that the frame carries a message of that target:
//!
//! 1. a client frame reaching relay `h` could be a FWD; each relay → relay frame `h → B` that
//!    leaves later gets the posterior `P(from target) = Σ_target frames K_fwd / Σ_all frames
//!    K_fwd` over the client frames that reached `h` before it;
//! 2. a frame relay `B` sends to a user could carry any message that entered `B` before it,
//!    directly from a client or from another relay; its posterior is the kernel-weighted
//!    mixture of the posteriors of those entering frames under `K_release`.
//!
//! Both are kept in O(targets) per frame with [`Decay`]. Inside a relay it runs, the
//! adversary replaces a posterior by what it knows (a FWD's origin; the message a stored
//! frame becomes). Scores add the posteriors of the frames each user receives; the
//! background (the mean posterior per frame on that relay) is subtracted as in SDA.

use std::collections::HashMap;

use super::kernel::{Contribution, Decay, Pending};
use crate::scenario::Scenario;

/// Below this a posterior is dropped from a sparse vector.
const TINY: f64 = 1e-12;

/// The attack's state.
#[derive(Debug)]
pub struct Timing {
    k: usize,
    fwd: Vec<Decay>,
    fwd_pending: Vec<Pending>,
    rel: Vec<Decay>,
    rel_pending: Vec<Pending>,
    client_ms: u64,
    relay_ms: u64,
    store_ms: u64,
    /// Posteriors of messages stored at the adversary's relay, by message id.
    tracked: HashMap<u32, Vec<(u16, f64)>>,
    score: Vec<f64>,
    bg: Vec<f64>,
    bg_frames: Vec<u64>,
    /// Frames each target received (left out of her own background).
    own_frames: Vec<u64>,
}

impl Timing {
    /// State for `relays` relays, `n` users and `k` targets, with the kernels of `scen`.
    pub fn new(scen: &Scenario, relays: usize, n: usize, k: usize) -> Self {
        let fwd_mean = scen.relays.forward_delay_mean_ms as f64;
        let rel_mean = match scen.relays.delay_mode() {
            Ok(mode) => mode.expected_delay().as_secs_f64() * 1000.0,
            Err(_) => 1.0,
        };
        Self {
            k,
            fwd: (0..relays).map(|_| Decay::new(fwd_mean, k)).collect(),
            fwd_pending: (0..relays).map(|_| Pending::default()).collect(),
            rel: (0..relays).map(|_| Decay::new(rel_mean, k)).collect(),
            rel_pending: (0..relays).map(|_| Pending::default()).collect(),
            client_ms: scen.network.client_ms,
            relay_ms: scen.network.relay_ms,
            store_ms: scen.network.store_ms,
            tracked: HashMap::new(),
            score: vec![0.0; n * k],
            bg: vec![0.0; relays * k],
            bg_frames: vec![0; relays],
            own_frames: vec![0; k],
        }
    }

    /// A client frame sent at `t` towards `relay` by a user who is target `target` (if any).
    /// `exact`: the adversary runs the relay and this frame is a SEND of message `m`.
    pub fn client_frame(&mut self, t: u64, relay: u32, target: Option<u16>, exact: Option<u32>) {
        let r = relay as usize;
        let who: Vec<(u16, f64)> = target.map(|i| vec![(i, 1.0)]).unwrap_or_default();
        let arrives = t + self.client_ms;
        if let Some(m) = exact {
            // Known to be a message; if it is stored here its origin is known exactly.
            self.tracked.insert(m, who.clone());
        }
        self.fwd_pending[r].push(
            0,
            Contribution {
                at_ms: arrives,
                total: 1.0,
                targets: who.clone(),
            },
        );
        self.rel_pending[r].push(
            0,
            Contribution {
                at_ms: arrives + self.store_ms,
                total: 1.0,
                targets: who,
            },
        );
    }

    /// A forwarded message leaves relay `from` for `to` at `t`. `origin`: the adversary runs
    /// `from` and knows the FWD's client (its target index, if a target). `track`: the
    /// adversary runs `to` and will know which message this frame becomes.
    pub fn relay_frame(
        &mut self,
        t: u64,
        from: u32,
        to: u32,
        origin: Option<Option<u16>>,
        track: Option<u32>,
    ) {
        let (f, d) = (from as usize, to as usize);
        let posterior: Vec<(u16, f64)> = match origin {
            Some(o) => o.map(|i| vec![(i, 1.0)]).unwrap_or_default(),
            None => {
                self.fwd_pending[f].apply_due(t, &mut self.fwd[f]);
                (0..self.k)
                    .filter_map(|i| {
                        let p = self.fwd[f].ratio(i);
                        (p > TINY).then_some((i as u16, p))
                    })
                    .collect()
            }
        };
        if let Some(m) = track {
            self.tracked.insert(m, posterior.clone());
        }
        self.rel_pending[d].push(
            1,
            Contribution {
                at_ms: t + self.relay_ms + self.store_ms,
                total: 1.0,
                targets: posterior,
            },
        );
    }

    /// User `j` (target `own`, if it is one) received a frame from `relay` at `t`; `exact`:
    /// the adversary runs the relay and the frame pushes message `m`.
    pub fn received(&mut self, t: u64, j: usize, own: Option<u16>, relay: u32, exact: Option<u32>) {
        let r = relay as usize;
        let k = self.k;
        let row = &mut self.score[j * k..(j + 1) * k];
        let bg = &mut self.bg[r * k..(r + 1) * k];
        match exact {
            Some(m) => {
                for (i, p) in self.tracked.remove(&m).unwrap_or_default() {
                    row[usize::from(i)] += p;
                    if own != Some(i) {
                        bg[usize::from(i)] += p;
                    }
                }
            }
            None => {
                self.rel_pending[r].apply_due(t, &mut self.rel[r]);
                let d = &self.rel[r];
                if d.z > 0.0 {
                    let inv = 1.0 / d.z;
                    for (i, v) in d.per.iter().enumerate() {
                        let p = v * inv;
                        row[i] += p;
                        if own != Some(i as u16) {
                            bg[i] += p;
                        }
                    }
                }
            }
        }
        self.bg_frames[r] += 1;
        if let Some(i) = own {
            self.own_frames[usize::from(i)] += 1;
        }
    }

    /// Target `i`'s score for user `j` (who receives on `relay` and received `n_j` frames):
    /// the posteriors of `j`'s frames minus `n_j` times the mean posterior of the other
    /// frames of that relay (neither `j`'s nor Alice's own, which would hide the signal on a
    /// relay they dominate).
    pub fn score(&self, i: usize, j: usize, relay: u32, n_j: u32, alice_frames_here: bool) -> f64 {
        let r = relay as usize;
        let mine = self.score[j * self.k + i];
        let mut frames = self.bg_frames[r] as f64 - f64::from(n_j);
        if alice_frames_here {
            frames -= self.own_frames[i] as f64;
        }
        let others = self.bg[r * self.k + i] - mine;
        let mean = if frames > 0.0 {
            (others / frames).max(0.0)
        } else {
            0.0
        };
        mine - f64::from(n_j) * mean
    }
}
