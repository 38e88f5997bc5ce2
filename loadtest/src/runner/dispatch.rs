//! The sending side: where SENDs go ([`Backend`]: relay sessions or ceiling senders), the
//! dispatcher that walks the [`Workload`] — pacing each message to its planned time (with
//! `--rate`) and to a free slot of the in-flight window (`--window`), recording it and
//! spawning its SEND — and the client cover traffic of the sender sessions.
//!
//! The window bounds messages sent and not yet delivered (or failed), so memory and the
//! relay's per-queue quota stay bounded whatever the rate; a slot is returned by the
//! [`Collector`] when the message resolves.
//!
//! It does not connect sessions or wait for deliveries: [`super::setup`] and
//! [`super::drain`] do.

use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng as _;
use sotto_protocol::AuthSecretKey;
use sotto_transport::{QueueCredentials, RelayClient};
use tokio_util::sync::CancellationToken;

use super::Options;
use super::accounting::Collector;
use crate::ceiling::CeilingSender;
use crate::workload::{Planned, Workload, WorkloadSpec, make_body};

/// A queue as the SEND side uses it.
#[derive(Debug, Clone)]
pub(super) struct RelayQueue {
    /// Index of the relay it lives on.
    pub(super) relay: usize,
    /// Global index of the receiver session subscribed to it.
    pub(super) recipient: u32,
    pub(super) sender_key: Arc<AuthSecretKey>,
    pub(super) creds: Arc<QueueCredentials>,
}

/// Where SENDs go.
#[derive(Debug)]
pub(super) enum Backend {
    Relay {
        /// `senders[relay][i]`.
        senders: Vec<Vec<RelayClient>>,
        queues: Vec<RelayQueue>,
    },
    Ceiling {
        senders: Vec<CeilingSender>,
        receivers: u32,
    },
}

impl Backend {
    /// Global (sender session, recipient session) of a planned message.
    fn sessions(&self, p: &Planned, n: u32) -> (u32, u32) {
        match self {
            Backend::Relay { queues, .. } => {
                let q = queues.get(p.queue as usize);
                let relay = q.map_or(0, |q| q.relay) as u32;
                (relay * n + p.sender, q.map_or(0, |q| q.recipient))
            }
            Backend::Ceiling { receivers, .. } => (p.sender, p.queue % (*receivers).max(1)),
        }
    }

    async fn send(&self, p: &Planned, body: Vec<u8>) -> Result<(), String> {
        match self {
            Backend::Relay { senders, queues } => {
                let q = queues.get(p.queue as usize).ok_or("no such queue")?;
                let client = senders
                    .get(q.relay)
                    .and_then(|s| s.get(p.sender as usize))
                    .ok_or("no such sender session")?;
                client
                    .send(q.creds.sender_id, Some(&q.sender_key), 0, body)
                    .await
                    .map_err(|e| e.to_string())
            }
            Backend::Ceiling { senders, .. } => {
                let s = senders
                    .get(p.sender as usize)
                    .ok_or("no such sender session")?;
                s.send(p.queue, p.seq, &body)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Dispatches the workload of `opts` until it ends, the window closes or `--duration` is
/// over; returns the messages dispatched and the seconds it took. The run's clock starts
/// here.
pub(super) async fn dispatch(
    opts: &Options,
    collector: &Arc<Collector>,
    backend: &Arc<Backend>,
) -> (u64, f64) {
    let spec = WorkloadSpec {
        seed: opts.seed,
        queues: opts.queues,
        senders: opts.connections,
        rate: opts.rate,
        messages: opts.messages,
        duration: opts.duration,
    };
    let t0 = Instant::now();
    let _ = collector.now_us(); // the run's clock starts here
    let deadline = opts
        .duration
        .map(|d| tokio::time::Instant::from_std(t0 + d));
    let mut dispatched = 0u64;
    for p in Workload::new(spec) {
        if let Some(at) = p.at {
            tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + at)).await;
        }
        let permit = match deadline {
            Some(d) => tokio::select! {
                p = collector.window.acquire() => p,
                () = tokio::time::sleep_until(d) => break,
            },
            None => collector.window.acquire().await,
        };
        match permit {
            // Returned by the collector when the message resolves.
            Ok(p) => p.forget(),
            Err(_) => break,
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            collector.window.add_permits(1);
            break;
        }
        let (sender, recipient) = backend.sessions(&p, opts.connections);
        collector.plan(&p, sender, recipient);
        dispatched += 1;
        let (collector, backend) = (collector.clone(), backend.clone());
        let (seed, len) = (opts.seed, opts.body_bytes);
        tokio::spawn(async move {
            let body = make_body(seed, p.seq, p.queue, len);
            collector.sent(p.seq, collector.now_us());
            match backend.send(&p, body).await {
                Ok(()) => collector.ok(p.seq),
                Err(e) => collector.failed(p.seq, e),
            }
        });
    }
    (dispatched, t0.elapsed().as_secs_f64())
}

/// Client cover traffic: each sender session sends DROP frames as a Poisson process of
/// `cover_rate`, and the time each enters is recorded (the adversary sees it as a send).
pub(super) fn start_cover(
    opts: &Options,
    collector: &Arc<Collector>,
    clients: Vec<RelayClient>,
    cancel: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    if opts.cover_rate <= 0.0 {
        return Vec::new();
    }
    clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let (collector, cancel, rate) = (collector.clone(), cancel.clone(), opts.cover_rate);
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(
                opts.seed ^ 0xC0FE_u64.wrapping_mul(i as u64 + 1),
            );
            tokio::spawn(async move {
                loop {
                    let gap = sotto_timing::exp::poisson_gap(&mut rng, rate);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        () = tokio::time::sleep(gap) => {}
                    }
                    let at = collector.now_us();
                    if client.send_cover().await.is_err() {
                        return;
                    }
                    collector.cover_sent(at);
                }
            })
        })
        .collect()
}
