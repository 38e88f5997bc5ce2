//! The `--create-queues` mode: how fast the relays create queues. NEW requests go out as
//! fast as the window allows, spread over the sessions of every relay; nothing is sent.
//!
//! It shares the run's setup pieces (embedded relay, sessions, progress bar, error log) but
//! none of its message bookkeeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::Options;
use super::accounting::ErrorLog;
use super::connections::{Sessions, connect_relay};
use super::embedded;
use super::progress::Progress;
use crate::cpu::CpuMark;
use crate::report::CreateQueuesReport;

/// Creates `count` queues as fast as the window allows (spread over the receiver sessions of
/// each relay) and reports the rate; the queues stay in the relay (keep them with
/// `--data-dir` for an embedded relay).
///
/// # Errors
/// Setup failures.
pub async fn create_queues(opts: &Options, count: u64) -> anyhow::Result<CreateQueuesReport> {
    opts.validate()?;
    let (embedded, relays) = embedded::targets(opts).await?;
    let copts = opts.client_options();
    let mut sessions = Sessions::default();
    let mut clients = Vec::new();
    for relay in &relays {
        for _ in 0..opts.connections {
            let (c, rx) = connect_relay(relay, &copts, &mut sessions).await?;
            drop(rx);
            clients.push(c);
        }
    }
    let errors = Arc::new(ErrorLog::default());
    let created = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = Progress::counter(opts, count, created.clone());
    let cpu0 = CpuMark::now(embedded.is_some());
    let t0 = Instant::now();
    let window = Arc::new(Semaphore::new(opts.window));
    let password: Option<Arc<Vec<u8>>> = opts
        .create_password
        .as_ref()
        .map(|p| Arc::new(p.as_bytes().to_vec()));
    for i in 0..count {
        let Ok(permit) = window.clone().acquire_owned().await else {
            break;
        };
        let Some(client) = clients
            .get((i % clients.len().max(1) as u64) as usize)
            .cloned()
        else {
            break;
        };
        let (created, failed, errors, password) = (
            created.clone(),
            failed.clone(),
            errors.clone(),
            password.clone(),
        );
        tokio::spawn(async move {
            match client
                .create_queue(password.as_deref().map(Vec::as_slice))
                .await
            {
                Ok(_) => created.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    errors.record(format!("NEW failed: {e}"));
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            drop(permit);
        });
    }
    // Every request has finished once the whole window is free again.
    let _ = window
        .acquire_many(u32::try_from(opts.window).unwrap_or(u32::MAX))
        .await;
    let elapsed_s = t0.elapsed().as_secs_f64().max(1e-6);
    let (cpu, relay_cpu) = cpu0.elapsed();
    progress.finish();
    sessions.close().await;
    let created = created.load(Ordering::Relaxed);
    let per = |d: Duration| (created > 0).then(|| d.as_secs_f64() * 1e6 / created as f64);
    let (stored_queues, db_bytes) = match &embedded {
        Some(e) => e.stored(),
        None => (None, None),
    };
    if let Some(e) = embedded {
        e.stop().await;
    }
    Ok(CreateQueuesReport {
        mode: "create_queues".into(),
        requested: count,
        created,
        failed: failed.load(Ordering::Relaxed),
        elapsed_s,
        queues_per_s: created as f64 / elapsed_s,
        cpu_us_per_queue: per(cpu),
        relay_cpu_us_per_queue: relay_cpu.and_then(per),
        stored_queues,
        db_bytes,
        errors: errors.list(),
    })
}
