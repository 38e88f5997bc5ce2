//! Scenarios: everything a simulation run depends on, as a TOML file.
//!
//! A scenario names the population (users, relays, contacts, activity, rhythm, sessions), the
//! defences (relay delays, forwarding delay, the client traffic policy) and the adversary
//! (targets, attacks, rounds, whether it also runs a relay). Every field has a default, so a
//! file only says what differs; `scenarios/*.toml` in this crate are the ones the documented
//! results come from. Same scenario and seed, same output, byte for byte.
//!
//! This module owns parsing, defaults and validation; it does not build the population
//! ([`crate::population`]) or run anything.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sotto_timing::{Burst, DelayMode, LoopPolicy, PacingPolicy, TrafficPolicy};

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// Seed of every random choice of the run.
    pub seed: u64,
    /// Simulated time, in days.
    pub days: f64,
    /// Who uses the network.
    pub population: PopulationSpec,
    /// Relay behaviour.
    pub relays: RelaySpec,
    /// What clients do with their links.
    pub client: ClientSpec,
    /// Who watches, and how.
    pub adversary: AdversarySpec,
    /// Network latencies and processing times.
    pub network: NetworkSpec,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "default".into(),
            seed: 1,
            days: 7.0,
            population: PopulationSpec::default(),
            relays: RelaySpec::default(),
            client: ClientSpec::default(),
            adversary: AdversarySpec::default(),
            network: NetworkSpec::default(),
        }
    }
}

/// Users, their contacts, activity and rhythm (see `docs/sim.md` for the model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PopulationSpec {
    /// Number of users.
    pub users: u32,
    /// Mean number of contacts per user (degree `1 + Poisson(mean − 1)`, configuration model).
    pub mean_contacts: f64,
    /// Zipf exponent of how a user's messages spread over its contacts (1: the top contact
    /// gets twice the second's share).
    pub contact_zipf: f64,
    /// Mean messages a user writes per day while online (replies included).
    pub messages_per_day: f64,
    /// Zipf–Mandelbrot activity across users: user of rank r writes ∝ 1/(r + offset)^exponent.
    pub activity_exponent: f64,
    /// Offset of the activity law (larger: flatter head).
    pub activity_offset: f64,
    /// Probability that reading a message makes its recipient reply.
    pub reply_probability: f64,
    /// Mean time from reading to replying, seconds.
    pub reply_think_s: f64,
    /// Diurnal amplitude in [0, 1): activity and the chance of being online are multiplied by
    /// `1 + amplitude · cos(2π (local time − peak) / day)`.
    pub diurnal_amplitude: f64,
    /// Local hour of peak activity.
    pub diurnal_peak_hour: f64,
    /// Standard deviation of users' time-zone offsets, hours (0: one time zone).
    pub timezone_spread_h: f64,
    /// Fraction of users whose client stays connected all the time (desktop daemons).
    pub always_online: f64,
    /// Mean length of an online session of the others, minutes.
    pub session_minutes: f64,
    /// Mean gap between sessions at the diurnal mean, minutes (shorter at peak hours).
    pub offline_minutes: f64,
    /// Relay popularity: users pick their receiving relay with weight ∝ 1/rank^this (0: uniform).
    pub relay_zipf: f64,
}

impl Default for PopulationSpec {
    fn default() -> Self {
        Self {
            users: 10_000,
            mean_contacts: 8.0,
            contact_zipf: 1.0,
            messages_per_day: 40.0,
            activity_exponent: 1.0,
            activity_offset: 100.0,
            reply_probability: 0.5,
            reply_think_s: 60.0,
            diurnal_amplitude: 0.8,
            diurnal_peak_hour: 20.0,
            timezone_spread_h: 1.5,
            always_online: 0.3,
            session_minutes: 20.0,
            offline_minutes: 40.0,
            relay_zipf: 0.0,
        }
    }
}

/// How relays delay, forward and cover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySpec {
    /// Number of relays.
    pub count: u32,
    /// Release delay: `"poisson"`, `"rounds"` or `"off"` (as `delivery.mode`).
    pub delay: String,
    /// Mean release delay (Poisson) or round period (rounds), milliseconds.
    pub delay_mean_ms: u64,
    /// Cap of the Poisson delay, milliseconds.
    pub delay_cap_ms: u64,
    /// Mean delay a forwarding relay holds a FWD before passing it on (0: at once), ms.
    pub forward_delay_mean_ms: u64,
    /// Cap of the forwarding delay, milliseconds.
    pub forward_delay_cap_ms: u64,
    /// Relay-wide cover frames per second to every subscribed session (`delivery.cover_rate`).
    pub cover_rate: f64,
    /// Per-queue message quota.
    pub quota: u32,
    /// Relay → relay links carry a constant stream of frames in which forwarded messages
    /// replace cover (not implemented by the relay: a what-if, to measure what pacing the
    /// relays' own links would buy). The adversary then learns nothing from their timing.
    pub link_cover: bool,
}

impl Default for RelaySpec {
    fn default() -> Self {
        Self {
            count: 20,
            delay: "poisson".into(),
            delay_mean_ms: 1000,
            delay_cap_ms: 10_000,
            forward_delay_mean_ms: 1000,
            forward_delay_cap_ms: 10_000,
            cover_rate: 0.0,
            quota: 128,
            link_cover: false,
        }
    }
}

impl RelaySpec {
    /// The release delay as the relay's [`DelayMode`].
    ///
    /// # Errors
    /// An unknown mode name.
    pub fn delay_mode(&self) -> Result<DelayMode, String> {
        mode(&self.delay, self.delay_mean_ms, self.delay_cap_ms)
    }

    /// The forwarding delay as a [`DelayMode`] (Poisson, or off when its mean is 0).
    pub fn forward_mode(&self) -> DelayMode {
        if self.forward_delay_mean_ms == 0 {
            DelayMode::Off
        } else {
            DelayMode::Poisson {
                mean: Duration::from_millis(self.forward_delay_mean_ms),
                cap: Duration::from_millis(self.forward_delay_cap_ms),
            }
        }
    }
}

fn mode(name: &str, mean_ms: u64, cap_ms: u64) -> Result<DelayMode, String> {
    match name {
        "poisson" => Ok(DelayMode::Poisson {
            mean: Duration::from_millis(mean_ms),
            cap: Duration::from_millis(cap_ms),
        }),
        "rounds" => Ok(DelayMode::Rounds {
            period: Duration::from_millis(mean_ms),
        }),
        "off" => Ok(DelayMode::Off),
        other => Err(format!(
            "unknown delay mode `{other}`: poisson, rounds or off"
        )),
    }
}

/// The client's traffic policy and routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSpec {
    /// A named preset of `sotto_timing::TrafficPolicy` (`off`, `desktop`, `low-bandwidth`);
    /// the fields below override it when set.
    pub policy: String,
    /// Pacing rate, frames per second (overrides the preset; 0 turns pacing off).
    pub pacing_rate: Option<f64>,
    /// Burst: speed up while more than this many items wait.
    pub burst_after: Option<usize>,
    /// Burst: rate multiplier.
    pub burst_factor: Option<f64>,
    /// Loops per second (overrides the preset).
    pub loop_rate: Option<f64>,
    /// Relay cover the client asks for, frames per second (overrides the preset).
    pub relay_cover: Option<f64>,
    /// Send through the client's own receiving relay (FWD) instead of connecting to each
    /// contact's relay. Paced clients always do.
    pub forward: bool,
    /// Additive client cover (DROP frames at this Poisson rate on top of real traffic, the
    /// unpaced `start_cover_traffic`), frames per second; unpaced clients only.
    pub additive_cover: f64,
    /// Paced clients answer every frame they receive with one frame at once (its ACKs and
    /// the next waiting message, or cover), besides their ticks.
    pub echo: bool,
}

impl Default for ClientSpec {
    fn default() -> Self {
        Self {
            policy: "off".into(),
            pacing_rate: None,
            burst_after: None,
            burst_factor: None,
            loop_rate: None,
            relay_cover: None,
            forward: false,
            additive_cover: 0.0,
            echo: false,
        }
    }
}

impl ClientSpec {
    /// The resulting traffic policy.
    ///
    /// # Errors
    /// An unknown preset or an invalid pacing policy.
    pub fn traffic_policy(&self) -> Result<TrafficPolicy, String> {
        let mut p = TrafficPolicy::named(&self.policy).ok_or_else(|| {
            format!(
                "unknown client policy `{}`: off, desktop or low-bandwidth",
                self.policy
            )
        })?;
        if let Some(rate) = self.pacing_rate {
            p.send = (rate > 0.0).then(|| PacingPolicy::at_rate(rate));
        }
        if let Some(send) = &mut p.send {
            if let Some(after) = self.burst_after {
                send.burst = Burst {
                    after,
                    factor: self.burst_factor.unwrap_or(send.burst.factor),
                };
            }
            send.validate()?;
        }
        if let Some(rate) = self.loop_rate {
            p.loops = LoopPolicy { rate, ..p.loops };
        }
        if let Some(c) = self.relay_cover {
            p.relay_cover = c;
        }
        Ok(p)
    }
}

/// The adversary: what it sees and which attacks it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdversarySpec {
    /// Number of target users (Alice), each with her most-written-to contact as Bob.
    pub targets: u32,
    /// How targets are drawn: `"all"` (uniformly from all users) or `"active"` (the users
    /// who write most to their top contact: they reach high message counts within a run).
    pub targets_from: String,
    /// Round length of the statistical disclosure attack, seconds.
    pub round_s: f64,
    /// Mean of the reply kernel of the two-sided attack, seconds.
    pub reply_kernel_s: f64,
    /// The adversary also runs this relay (index), seeing inside its frames.
    pub relay: Option<u32>,
    /// Checkpoints grow by this factor (messages from Alice to Bob at which ranks are taken).
    pub checkpoint_growth: f64,
}

impl Default for AdversarySpec {
    fn default() -> Self {
        Self {
            targets: 128,
            targets_from: "all".into(),
            round_s: 600.0,
            reply_kernel_s: 120.0,
            relay: None,
            checkpoint_growth: 1.25,
        }
    }
}

/// One-way latencies and processing times the simulation assumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// Client ⇄ relay one-way latency, ms.
    pub client_ms: u64,
    /// Relay ⇄ relay one-way latency, ms.
    pub relay_ms: u64,
    /// From a SEND's arrival to its durable commit (group commit), ms.
    pub store_ms: u64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            client_ms: 20,
            relay_ms: 10,
            store_ms: 2,
        }
    }
}

impl Scenario {
    /// Parses a scenario from TOML.
    ///
    /// # Errors
    /// Malformed TOML, an unknown field, or a value [`Scenario::validate`] refuses.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// A sentence naming the first offending field.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.population;
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_owned()) };
        check(
            self.days > 0.0 && self.days <= 365.0,
            "days must be in (0, 365]",
        )?;
        check(
            p.users >= 2 && p.users <= 1_000_000,
            "population.users must be 2 to 1000000",
        )?;
        check(
            p.mean_contacts >= 1.0 && p.mean_contacts < f64::from(p.users),
            "population.mean_contacts must be at least 1 and below users",
        )?;
        check(
            p.messages_per_day >= 0.0,
            "population.messages_per_day must be ≥ 0",
        )?;
        check(
            (0.0..1.0).contains(&p.diurnal_amplitude),
            "population.diurnal_amplitude must be in [0, 1)",
        )?;
        check(
            (0.0..=1.0).contains(&p.always_online) && (0.0..=1.0).contains(&p.reply_probability),
            "population.always_online and reply_probability must be in [0, 1]",
        )?;
        check(
            p.session_minutes > 0.0 && p.offline_minutes > 0.0,
            "population.session_minutes and offline_minutes must be positive",
        )?;
        check(
            self.relays.count >= 1 && self.relays.count <= 1000,
            "relays.count must be 1 to 1000",
        )?;
        self.relays.delay_mode()?;
        self.client.traffic_policy()?;
        check(
            self.adversary.targets >= 1,
            "adversary.targets must be at least 1",
        )?;
        check(
            matches!(self.adversary.targets_from.as_str(), "all" | "active"),
            "adversary.targets_from must be all or active",
        )?;
        check(
            self.adversary.round_s > 0.0,
            "adversary.round_s must be positive",
        )?;
        check(
            self.adversary.checkpoint_growth > 1.0,
            "adversary.checkpoint_growth must be above 1",
        )?;
        if let Some(r) = self.adversary.relay {
            check(
                r < self.relays.count,
                "adversary.relay must name a relay (0-based)",
            )?;
        }
        Ok(())
    }

    /// Simulated time in milliseconds.
    pub fn horizon_ms(&self) -> u64 {
        (self.days * 86_400_000.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let s = Scenario::default();
        s.validate().unwrap();
        let text = toml::to_string(&s).unwrap();
        assert_eq!(Scenario::from_toml(&text).unwrap(), s);
    }

    #[test]
    fn a_file_says_only_what_differs_and_unknown_fields_are_refused() {
        let s = Scenario::from_toml("name = \"x\"\n[population]\nusers = 50\n").unwrap();
        assert_eq!(s.population.users, 50);
        assert_eq!(s.relays, RelaySpec::default());
        assert!(Scenario::from_toml("[population]\nuser = 50\n").is_err());
        assert!(Scenario::from_toml("[relays]\ndelay = \"fast\"\n").is_err());
        assert!(
            Scenario::from_toml("[client]\npolicy = \"desktop\"\npacing_rate = 1000.0\n").is_err()
        );
    }

    #[test]
    fn overrides_change_the_preset() {
        let c = ClientSpec {
            policy: "desktop".into(),
            pacing_rate: Some(0.5),
            loop_rate: Some(0.0),
            ..ClientSpec::default()
        };
        let p = c.traffic_policy().unwrap();
        assert_eq!(p.send.unwrap().rate, 0.5);
        assert!(!p.loops.is_on());
        let off = ClientSpec {
            policy: "desktop".into(),
            pacing_rate: Some(0.0),
            ..ClientSpec::default()
        };
        assert!(off.traffic_policy().unwrap().send.is_none());
    }
}
