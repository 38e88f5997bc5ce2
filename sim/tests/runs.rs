//! Whole simulation runs on small scenarios: determinism, an attack whose outcome is known,
//! and that a defence measurably slows it.

use sotto_sim::{Scenario, run};

fn tiny(adjust: impl FnOnce(&mut Scenario)) -> Scenario {
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/tiny.toml"))
        .expect("tiny.toml");
    let mut s = Scenario::from_toml(&base).expect("scenario");
    adjust(&mut s);
    s.validate().expect("valid");
    s
}

/// No relay delay, no forwarding delay, no client policy.
fn undefended(s: &mut Scenario) {
    s.relays.delay = "off".into();
    s.relays.forward_delay_mean_ms = 0;
    s.client.policy = "off".into();
}

fn json(r: &sotto_sim::RunReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).expect("json");
    // The only field that depends on the machine.
    v.as_object_mut().expect("object").remove("wall_s");
    v
}

#[test]
fn the_same_seed_gives_the_same_report_and_another_seed_another() {
    let s = tiny(|_| {});
    let a = run(&s, |_| {}).unwrap();
    let b = run(&s, |_| {}).unwrap();
    assert_eq!(json(&a), json(&b));
    let mut other = s.clone();
    other.seed = 2;
    let c = run(&other, |_| {}).unwrap();
    assert_ne!(json(&a), json(&c));
    assert!(a.service.delivered > 1000, "{:?}", a.service);
}

/// One Alice, one Bob, bystanders who never write, no delay, no cover: every frame Bob
/// receives follows one of Alice's by exactly the network's latency, and nobody else sends,
/// so the timing attack ranks Bob first from the first message on.
#[test]
fn a_lone_pair_without_defences_is_linked_at_once() {
    let s = tiny(|s| {
        undefended(s);
        s.population.users = 30;
        s.population.always_online = 1.0;
        s.population.messages_per_day = 0.0;
        s.adversary.targets = 30;
    });
    let pop = sotto_sim::population::Population::build(&s.population, s.relays.count, s.seed);
    // Give user 0 (and only user 0) something to say to her top contact.
    let report = run_with_writer(&s, pop);
    let alice = report
        .targets
        .iter()
        .find(|t| t.delivered > 0)
        .expect("alice wrote");
    assert!(alice.delivered >= 10, "{}", alice.delivered);
    let first = alice.checkpoints.first().expect("a checkpoint");
    assert_eq!(first.messages, 1);
    assert_eq!(first.ranks[1], 1, "timing attack: {:?}", alice.checkpoints);
    assert_eq!(
        sotto_sim::attack::link_point(alice, 1).map(|c| c.messages),
        Some(1)
    );
}

fn run_with_writer(
    s: &Scenario,
    mut pop: sotto_sim::population::Population,
) -> sotto_sim::RunReport {
    pop.users[0].write_rate = 20.0 / 3600.0;
    pop.users[0].contact_cdf = vec![1.0; pop.users[0].contacts.len()];
    sotto_sim::run_population(s, pop, |_| {}).expect("valid scenario")
}

#[test]
fn relay_delay_and_pacing_slow_the_attacks_down() {
    let none = run(&tiny(undefended), |_| {}).unwrap();
    let paced = run(&tiny(|s| s.client.policy = "desktop".into()), |_| {}).unwrap();
    let linked = |r: &sotto_sim::RunReport| r.attacks[1].linked;
    assert!(
        linked(&none) > 2 * linked(&paced).max(1),
        "timing attack linked {} without defences, {} with the desktop policy",
        linked(&none),
        linked(&paced)
    );
    // The policy's cost shows: frames flow whether or not anyone writes.
    assert!(paced.service.mb_per_online_day > 20.0 * none.service.mb_per_online_day.max(0.1));
}

#[test]
fn the_relay_pool_is_the_relays_own_code() {
    // The world's relays hold their messages in sotto-timing's Scheduler and draw release
    // times with its DelaySampler: the types are imported, not copied.
    assert_eq!(
        sotto_sim::world::relay_types(),
        (
            std::any::type_name::<sotto_timing::Scheduler<u32>>(),
            std::any::type_name::<sotto_timing::DelaySampler<rand_chacha::ChaCha20Rng>>(),
            std::any::type_name::<sotto_timing::Pacer<rand_chacha::ChaCha20Rng>>(),
        )
    );
}
