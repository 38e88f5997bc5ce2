//! `sotto-sim`: a discrete-event simulator of a Sotto network in virtual time, and the
//! disclosure attacks a long-term global observer runs over it.
//!
//! Nothing here opens a socket. The relays' delays, pools and forwarding delays, and the
//! clients' pacing and loops, are the real code (`sotto-timing`: [`sotto_timing::delay`],
//! [`sotto_timing::pacing`], [`sotto_timing::loops`]); the rest of a relay (queues, one
//! message in flight per queue, quotas, PACE's held answers) is modelled as
//! `docs/protocol.md` specifies it, in [`world`].
//!
//! - [`scenario`]: what a run depends on (TOML, every field defaulted);
//! - [`population`]: users, contacts, activity, time zones;
//! - [`world`]: the event loop;
//! - [`observe`]: what crosses the links, reported with its ground truth;
//! - [`attack`]: what the adversary may see, the attacks, messages-to-link;
//! - [`report`]: JSON, CSV and SVG;
//! - [`validate`]: the small scenario also run through real relays by the load tester.
//!
//! Same scenario and seed, same report (but for the wall-clock time it took). The model and
//! its limits are in `docs/sim.md`.

pub mod attack;
pub mod observe;
pub mod population;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod validate;
pub mod world;

use std::time::Instant;

pub use report::RunReport;
pub use scenario::Scenario;

/// Runs `scen` to its horizon; `progress` gets the simulated milliseconds reached now and then.
///
/// # Errors
/// An invalid scenario.
pub fn run(scen: &Scenario, progress: impl FnMut(u64)) -> Result<RunReport, String> {
    scen.validate()?;
    let pop = population::Population::build(&scen.population, scen.relays.count, scen.seed);
    run_population(scen, pop, progress)
}

/// As [`run`], over a population built (and possibly adjusted) by the caller.
///
/// # Errors
/// An invalid scenario.
pub fn run_population(
    scen: &Scenario,
    pop: population::Population,
    progress: impl FnMut(u64),
) -> Result<RunReport, String> {
    scen.validate()?;
    let started = Instant::now();
    let mut adversary = attack::Adversary::new(scen, &pop);
    let world = world::World::new(scen, &pop)?;
    let stats = world.run(&mut adversary, progress);
    let targets = adversary.finish(scen.horizon_ms());
    Ok(RunReport {
        scenario: scen.clone(),
        attacks: attack::summarise(&targets),
        attacks_always_online: attack::summarise(
            &targets
                .iter()
                .filter(|t| t.always_online)
                .cloned()
                .collect::<Vec<_>>(),
        ),
        attacks_in_sessions: attack::summarise(
            &targets
                .iter()
                .filter(|t| !t.always_online)
                .cloned()
                .collect::<Vec<_>>(),
        ),
        service: report::Service::from_stats(&stats, scen.population.users, scen.days),
        targets,
        wall_s: started.elapsed().as_secs_f64(),
    })
}
