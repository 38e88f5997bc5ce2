//! The simulated population: users, their relays, contacts, activity and time zones.
//!
//! Built once from a [`PopulationSpec`] and a seed, then read-only. The model (documented in
//! `docs/sim.md`):
//!
//! - **Contacts**: degrees `1 + Poisson(mean − 1)`, paired by the configuration model
//!   (self-pairs and repeated pairs dropped), so contact is mutual. A user's contacts are in
//!   a random preference order and get its messages with Zipf weights `1/rank^s`: the first
//!   contact is the user's "Bob", the one the attacks try to find.
//! - **Activity**: a user's writing rate while online is Zipf–Mandelbrot across users,
//!   `∝ 1/(r + offset)^exponent` for a random rank `r`, scaled so that the population mean is
//!   `messages_per_day` (replies included: new conversations start at `(1 − reply
//!   probability)` of it).
//! - **Rhythm**: each user has a time-zone offset (normal, `timezone_spread_h`); activity and
//!   session starts follow `1 + A·cos(2π(local time − peak)/day)`.
//! - **Relays**: each user receives on one relay, chosen with weight `1/rank^relay_zipf`.
//!
//! This module owns those choices; it does not simulate time ([`crate::world`]).

use rand::Rng;
use rand::seq::SliceRandom;

use crate::rng::{Stream, rng_for};
use crate::scenario::PopulationSpec;

/// One user's fixed traits.
#[derive(Debug, Clone, PartialEq)]
pub struct UserProfile {
    /// The relay the user receives on (and, when forwarding, sends through).
    pub home: u32,
    /// Contacts in preference order (the first gets the most messages).
    pub contacts: Vec<u32>,
    /// Cumulative probabilities of choosing each contact, the last one 1.
    pub contact_cdf: Vec<f64>,
    /// Rate of starting a new message while online, at the diurnal mean, per second.
    pub write_rate: f64,
    /// Local time minus simulation time, seconds.
    pub tz_offset_s: f64,
    /// Connected for the whole run.
    pub always_online: bool,
}

impl UserProfile {
    /// Picks a contact by weight, given a uniform `u` in `[0, 1)`.
    pub fn pick_contact(&self, u: f64) -> Option<u32> {
        let i = self.contact_cdf.partition_point(|&c| c <= u);
        self.contacts
            .get(i.min(self.contacts.len().saturating_sub(1)))
            .copied()
    }

    /// The user's diurnal factor at simulation time `t_s` seconds.
    pub fn diurnal(&self, spec: &PopulationSpec, t_s: f64) -> f64 {
        diurnal(spec, t_s + self.tz_offset_s)
    }
}

/// `1 + A·cos(2π(local − peak)/day)` at local time `local_s` seconds.
pub fn diurnal(spec: &PopulationSpec, local_s: f64) -> f64 {
    let phase = (local_s / 3600.0 - spec.diurnal_peak_hour) / 24.0;
    1.0 + spec.diurnal_amplitude * (std::f64::consts::TAU * phase).cos()
}

/// Everybody.
#[derive(Debug, Clone, PartialEq)]
pub struct Population {
    /// Users by index.
    pub users: Vec<UserProfile>,
    /// Number of relays.
    pub relays: u32,
}

impl Population {
    /// Builds the population of `spec` over `relays` relays, from `seed`.
    pub fn build(spec: &PopulationSpec, relays: u32, seed: u64) -> Self {
        let n = spec.users as usize;
        let mut rng = rng_for(seed, Stream::Population, 0);
        let contacts = contact_graph(spec, n, &mut rng);
        // Activity ranks: a random permutation.
        let mut ranks: Vec<usize> = (1..=n).collect();
        ranks.shuffle(&mut rng);
        let weight =
            |r: usize| 1.0 / (r as f64 + spec.activity_offset).powf(spec.activity_exponent);
        let mean_w = (1..=n).map(weight).sum::<f64>() / n as f64;
        let new_per_s = spec.messages_per_day * (1.0 - spec.reply_probability) / 86_400.0;
        let relay_cdf = cdf((1..=relays as usize).map(|r| 1.0 / (r as f64).powf(spec.relay_zipf)));
        let users = contacts
            .into_iter()
            .zip(ranks)
            .map(|(mut mine, rank)| {
                mine.shuffle(&mut rng);
                let contact_cdf =
                    cdf((1..=mine.len()).map(|r| 1.0 / (r as f64).powf(spec.contact_zipf)));
                let u: f64 = rng.r#gen();
                let home = relay_cdf
                    .partition_point(|&c| c <= u)
                    .min(relays as usize - 1) as u32;
                UserProfile {
                    home,
                    contacts: mine,
                    contact_cdf,
                    write_rate: new_per_s * weight(rank) / mean_w,
                    tz_offset_s: normal(&mut rng) * spec.timezone_spread_h * 3600.0,
                    always_online: rng.r#gen::<f64>() < spec.always_online,
                }
            })
            .collect();
        Population { users, relays }
    }

    /// Number of contact pairs (each counted once).
    pub fn pairs(&self) -> usize {
        self.users.iter().map(|u| u.contacts.len()).sum::<usize>() / 2
    }
}

/// Mutual contacts by the configuration model.
fn contact_graph(spec: &PopulationSpec, n: usize, rng: &mut impl Rng) -> Vec<Vec<u32>> {
    let extra = (spec.mean_contacts - 1.0).max(0.0);
    let mut stubs: Vec<u32> = Vec::new();
    for u in 0..n {
        let d = (1 + poisson(rng, extra)).min(n - 1);
        stubs.extend(std::iter::repeat_n(u as u32, d));
    }
    stubs.shuffle(rng);
    let mut contacts: Vec<Vec<u32>> = vec![Vec::new(); n];
    for pair in stubs.chunks_exact(2) {
        let (a, b) = (pair[0], pair[1]);
        if a == b || contacts[a as usize].contains(&b) {
            continue;
        }
        contacts[a as usize].push(b);
        contacts[b as usize].push(a);
    }
    // A user left alone by the pairing gets one random contact, so every user can write.
    for u in 0..n {
        if contacts[u].is_empty() {
            let mut v = rng.gen_range(0..n - 1);
            if v >= u {
                v += 1;
            }
            contacts[u].push(v as u32);
            contacts[v].push(u as u32);
        }
    }
    contacts
}

/// Normalised cumulative sums of `weights`.
fn cdf(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    let mut out: Vec<f64> = weights
        .map(|w| {
            acc += w;
            acc
        })
        .collect();
    for c in &mut out {
        *c /= acc;
    }
    if let Some(last) = out.last_mut() {
        *last = 1.0;
    }
    out
}

/// A Poisson draw by inversion (means up to a few hundred).
fn poisson(rng: &mut impl Rng, mean: f64) -> usize {
    if mean <= 0.0 {
        return 0;
    }
    let (mut k, mut p) = (0usize, (-mean).exp());
    let mut s = p;
    let u: f64 = rng.r#gen();
    while u > s && k < 10_000 {
        k += 1;
        p *= mean / k as f64;
        s += p;
    }
    k
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.r#gen::<f64>();
    let u2: f64 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(users: u32) -> PopulationSpec {
        PopulationSpec {
            users,
            ..PopulationSpec::default()
        }
    }

    #[test]
    fn contacts_are_mutual_and_every_user_has_one() {
        let p = Population::build(&spec(2000), 5, 1);
        for (u, profile) in p.users.iter().enumerate() {
            assert!(!profile.contacts.is_empty());
            for &c in &profile.contacts {
                assert_ne!(c as usize, u);
                assert!(p.users[c as usize].contacts.contains(&(u as u32)));
            }
            assert!(profile.home < 5);
            assert_eq!(profile.contact_cdf.last(), Some(&1.0));
        }
        let mean = p.pairs() as f64 * 2.0 / 2000.0;
        assert!((7.0..8.5).contains(&mean), "{mean}");
    }

    #[test]
    fn activity_has_the_configured_mean_and_the_same_seed_builds_the_same() {
        let s = spec(5000);
        let p = Population::build(&s, 3, 7);
        let mean = p.users.iter().map(|u| u.write_rate).sum::<f64>() / 5000.0 * 86_400.0;
        assert!((mean - 20.0).abs() < 1e-6, "{mean}");
        assert_eq!(p, Population::build(&s, 3, 7));
        assert_ne!(p, Population::build(&s, 3, 8));
    }

    #[test]
    fn the_top_contact_gets_the_largest_share() {
        let p = Population::build(&spec(500), 2, 3);
        let u = p.users.iter().find(|u| u.contacts.len() >= 3).unwrap();
        let n = 100_000;
        let firsts = (0..n)
            .filter(|i| u.pick_contact((*i as f64 + 0.5) / n as f64) == Some(u.contacts[0]))
            .count();
        let share = firsts as f64 / n as f64;
        let h: f64 = (1..=u.contacts.len()).map(|r| 1.0 / r as f64).sum();
        assert!((share - 1.0 / h).abs() < 0.01, "{share}");
    }

    #[test]
    fn the_diurnal_factor_peaks_at_the_peak_hour() {
        let s = PopulationSpec::default();
        assert!((diurnal(&s, 20.0 * 3600.0) - 1.8).abs() < 1e-9);
        assert!((diurnal(&s, 8.0 * 3600.0) - 0.2).abs() < 1e-9);
    }
}
