//! Runs a workload against relays (embedded or remote) or the ceiling forwarder, records
//! every message's timestamps, and turns them into a [`Report`](crate::Report).
//!
//! # Shape
//!
//! This module holds the run API ([`run_relay`], [`run_ceiling`], [`run_compare`],
//! [`create_queues()`]) and the order of a run's steps; each step has its own room:
//!
//! - `options`: what a run is asked to do, and the settings derived from it;
//! - `embedded`: the relays targeted, or one embedded in this process;
//! - `connections`: the run's sessions, their wire counters and closing;
//! - `setup`: receiver sessions create, secure and subscribe to the queues, then the
//!   sender sessions connect (every session has its own UDP endpoint);
//! - `dispatch`: one task walks the [`Workload`](crate::workload::Workload), paced by the
//!   rate and the in-flight window, and spawns each SEND; client cover traffic;
//! - `receive`: one task per receiver session records arrivals and ACKs them;
//! - `drain`: waiting for what is still outstanding at the end, in order;
//! - `accounting`: the exactly-once bookkeeping shared by all of them;
//! - `outcome`: the report computed from the records (pure);
//! - `progress`: the progress bar;
//! - `create_queues`: the queue-creation rate mode.
//!
//! Times are microseconds on a monotonic clock from the start of dispatch.
//!
//! This crate is an application whose library target exists for its tests; errors are
//! `anyhow` with context, as in a binary.

mod accounting;
mod connections;
mod create_queues;
mod dispatch;
mod drain;
mod embedded;
mod options;
mod outcome;
mod progress;
mod receive;
mod setup;

use std::sync::Arc;

use sotto_protocol::RelayAddress;
use sotto_transport::RelayClient;
use tokio_util::sync::CancellationToken;

use self::accounting::Collector;
use self::connections::Sessions;
use self::dispatch::Backend;
use self::outcome::Measured;
use self::progress::Progress;
use crate::ceiling::{self, CeilingSender, Forwarder};
use crate::cpu::CpuMark;

pub use self::create_queues::create_queues;
pub use self::options::{DelayKind, MAX_CONNECTIONS, MAX_WINDOW, Options};
pub use self::outcome::Outcome;

/// Runs the workload through relays (embedded when `opts.relays` is empty).
///
/// # Errors
/// Setup failures (an unreachable relay, refused queue creation, bad options). Lost or
/// corrupted messages are not errors: they are in the report.
pub async fn run_relay(opts: &Options) -> anyhow::Result<Outcome> {
    opts.validate()?;
    let (embedded, relays) = embedded::targets(opts).await?;
    let result = run_relay_on(opts, &relays, embedded.is_some()).await;
    if let Some(e) = embedded {
        e.stop().await;
    }
    result
}

async fn run_relay_on(
    opts: &Options,
    relays: &[RelayAddress],
    embedded: bool,
) -> anyhow::Result<Outcome> {
    let copts = opts.client_options();
    let collector = Arc::new(Collector::new(opts.window));
    let mut sessions = Sessions::default();
    let (receivers, queues) =
        setup::receivers_and_queues(opts, relays, &copts, &mut sessions).await?;
    let receive_tasks = receive::spawn_relay(receivers, &queues, &collector);
    let senders = setup::connect_senders(opts, relays, &copts, &mut sessions).await?;
    let cover_clients: Vec<RelayClient> = senders.iter().flatten().cloned().collect();
    let backend = Arc::new(Backend::Relay { senders, queues });

    let cancel = CancellationToken::new();
    let cover_tasks = dispatch::start_cover(opts, &collector, cover_clients, &cancel);
    let mark = sessions.mark();
    let measured = drive(opts, &collector, &backend, embedded).await;
    drain::stop_cover(&cancel, cover_tasks).await;
    drain::wait_acks(&collector).await;
    let wire = sessions.wire(&mark);
    drop(backend);
    sessions.close().await;
    drain::join_receivers(receive_tasks).await;
    Ok(outcome::finish(
        opts,
        "relay",
        collector.tally(),
        &measured,
        wire,
    ))
}

/// Dispatches the workload and waits for it to resolve (or for the drain timeout),
/// measuring the CPU time both take.
async fn drive(
    opts: &Options,
    collector: &Arc<Collector>,
    backend: &Arc<Backend>,
    embedded: bool,
) -> Measured {
    let progress = Progress::start(opts, collector);
    let cpu0 = CpuMark::now(embedded);
    let (dispatched, dispatch_s) = dispatch::dispatch(opts, collector, backend).await;
    drain::until_resolved(collector, dispatched, opts.drain()).await;
    let (cpu, relay_cpu) = cpu0.elapsed();
    progress.finish();
    Measured {
        dispatched,
        dispatch_s,
        cpu,
        relay_cpu,
    }
}

/// Runs the same workload through the in-process plain forwarder (see [`crate::ceiling`]).
///
/// # Errors
/// If the forwarder or a session cannot be set up.
pub async fn run_ceiling(opts: &Options) -> anyhow::Result<Outcome> {
    opts.validate()?;
    let quic = opts.quic();
    let n = opts.connections;
    let mut forwarder = Forwarder::start(n, &quic)?;
    let collector = Arc::new(Collector::new(opts.window));
    let mut sessions = Sessions::default();
    let mut receive_tasks = Vec::new();
    for i in 0..n {
        let conn = ceiling::connect(forwarder.addr, &quic, true, i).await?;
        sessions.keep_quic(conn.connection.clone(), conn.endpoint.clone());
        receive_tasks.push(receive::spawn_ceiling(conn, &collector));
    }
    forwarder.wait_receivers(n).await?;
    let mut senders = Vec::new();
    for i in 0..n {
        let conn = ceiling::connect(forwarder.addr, &quic, false, i).await?;
        sessions.keep_quic(conn.connection.clone(), conn.endpoint.clone());
        senders.push(CeilingSender::start(conn));
    }
    let backend = Arc::new(Backend::Ceiling {
        senders,
        receivers: n,
    });
    let mark = sessions.mark();
    let measured = drive(opts, &collector, &backend, false).await;
    let wire = sessions.wire(&mark);
    drop(backend);
    sessions.close().await;
    forwarder.shutdown().await;
    drain::join_receivers(receive_tasks).await;
    Ok(outcome::finish(
        opts,
        "ceiling",
        collector.tally(),
        &measured,
        wire,
    ))
}

/// Runs the relay workload, then the ceiling, and puts `ceiling_msgs_per_s` and
/// `relay_to_ceiling_ratio` into the relay's report.
///
/// # Errors
/// As [`run_relay`] and [`run_ceiling`].
pub async fn run_compare(opts: &Options) -> anyhow::Result<Outcome> {
    let mut relay = run_relay(opts).await?;
    let ceiling = run_ceiling(opts).await?;
    let c = ceiling.report.throughput_msgs_per_s;
    relay.report.ceiling_msgs_per_s = Some(c);
    relay.report.relay_to_ceiling_ratio = (c > 0.0).then(|| relay.report.throughput_msgs_per_s / c);
    Ok(relay)
}
