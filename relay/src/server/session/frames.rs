//! A session's two I/O tasks: the reader (records → decoded frames for the session loop)
//! and the writer (transmissions → greedily batched frames, lazy answers held for a frame
//! that goes out anyway, cover frames while the session has subscriptions).
//!
//! What it owns: framing and the byte and cover counters. What it does not: the meaning of
//! any transmission (the session loop's), or the records' encryption and transport (the
//! transport's [`FrameSender`]/[`FrameReceiver`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::SeedableRng as _;
use sotto_protocol::{Frame, FrameBuilder, Transmission};
use sotto_transport::{self as transport, FrameReceiver, FrameSender};
use tokio::sync::mpsc;

use crate::server::Shared;

/// How long a session's writer may hold an answer nobody waits on to act (the OK of an ACK
/// on a subscription) for a frame it can ride in, before sending it in a frame of its own.
/// A subscriber under load sends it with the next MSG; an idle one gets it after this.
/// Saves a 16 KiB record (12 padded datagrams, two AEAD passes) per delivered message at
/// moderate rates (`docs/benchmarks.md`, target 2).
const LAZY_ANSWER_DELAY: Duration = Duration::from_millis(5);

/// Lazy answers a writer holds at most (≈ 35 bytes each, so they always fit one frame);
/// more are sent as ordinary transmissions.
const LAZY_PER_FRAME: usize = 256;

/// One transmission for a session's writer.
pub(super) struct Outgoing {
    /// The transmission.
    pub(super) t: Transmission,
    /// May wait up to [`LAZY_ANSWER_DELAY`] for a frame that goes out anyway.
    pub(super) lazy: bool,
}

/// Reads records, decodes frames, and hands their transmissions to the session loop. A
/// malformed or undecryptable record ends the session (the transport closes the connection
/// with a protocol error).
pub(super) async fn read_frames(
    mut receiver: FrameReceiver,
    tx: mpsc::Sender<Vec<Transmission>>,
    shared: Arc<Shared>,
) {
    loop {
        match receiver.recv_frame().await {
            Ok(Some(plain)) => {
                shared
                    .metrics
                    .bytes_in
                    .inc_by(sotto_protocol::FRAME_LEN as u64);
                match Frame::decode(&plain) {
                    Ok(ts) => {
                        if tx.send(ts).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        shared.metrics.protocol_errors.inc();
                        tracing::debug!(error = %e, "malformed frame; closing session");
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                if matches!(
                    e,
                    transport::TransportError::Record(_)
                        | transport::TransportError::TruncatedRecord(_)
                ) {
                    shared.metrics.protocol_errors.inc();
                }
                tracing::debug!(error = %e, "session read ended");
                return;
            }
        }
    }
}

/// Batches transmissions greedily into frames; sends cover frames at the configured rate
/// while the session has subscriptions.
pub(super) async fn write_frames(
    mut sender: FrameSender,
    mut rx: mpsc::Receiver<Box<Outgoing>>,
    shared: Arc<Shared>,
    subscribed: Arc<AtomicUsize>,
) {
    let cover_rate = shared.config.delivery.cover_rate;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let next_cover = |rng: &mut rand::rngs::StdRng| {
        tokio::time::Instant::now() + sotto_timing::exp::poisson_gap(rng, cover_rate)
    };
    let mut cover_at = (cover_rate > 0.0).then(|| next_cover(&mut rng));
    let mut carry: Option<Box<Outgoing>> = None;
    // Lazy answers waiting for a frame to ride in (at most LAZY_PER_FRAME; beyond that they
    // are sent like any other), and when they must go at the latest.
    let mut lazy: Vec<Box<Outgoing>> = Vec::new();
    let mut lazy_deadline: Option<tokio::time::Instant> = None;
    loop {
        let first = match carry.take() {
            Some(t) => Some(t),
            None => {
                let cover = async {
                    match cover_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                let lazy_due = async {
                    match lazy_deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    t = rx.recv() => match t {
                        Some(t) if t.lazy && lazy.len() < LAZY_PER_FRAME => {
                            lazy.push(t);
                            lazy_deadline.get_or_insert_with(|| {
                                tokio::time::Instant::now() + LAZY_ANSWER_DELAY
                            });
                            continue;
                        }
                        Some(t) => Some(t),
                        None => break,
                    },
                    () = lazy_due => None,
                    () = cover => {
                        cover_at = Some(next_cover(&mut rng));
                        if subscribed.load(Ordering::Relaxed) > 0 {
                            if sender.send_frame(FrameBuilder::cover_response()).await.is_err() {
                                return;
                            }
                            shared.metrics.cover_sent.inc();
                            shared.metrics.bytes_out.inc_by(sotto_protocol::FRAME_LEN as u64);
                        }
                        continue;
                    }
                }
            }
        };
        // Yield once before closing the frame: answers that are completing right now (a group
        // commit answers many SENDs at once) then share this frame instead of each taking a
        // 16 KiB record of their own (−13 % of the records a loaded relay sends, measured).
        tokio::task::yield_now().await;
        let mut frame = FrameBuilder::new();
        // Held answers are older than anything queued after them, so they go first (answers
        // on one queue keep their order); at most LAZY_PER_FRAME small ones always fit.
        for t in lazy.drain(..) {
            if !frame.push(&t.t) {
                tracing::error!("held answer does not fit a frame; dropped");
            }
        }
        if let Some(first) = first
            && !frame.push(&first.t)
        {
            if frame.is_empty() {
                // Cannot happen: every transmission the relay builds fits an empty frame.
                tracing::error!("transmission larger than a frame dropped");
                continue;
            }
            // It starts the next frame, after the held answers this one carries.
            carry = Some(first);
        }
        if carry.is_none() {
            while let Ok(t) = rx.try_recv() {
                if !frame.push(&t.t) {
                    carry = Some(t);
                    break;
                }
            }
        }
        lazy_deadline = None;
        if sender.send_frame(frame.finish()).await.is_err() {
            return;
        }
        shared
            .metrics
            .bytes_out
            .inc_by(sotto_protocol::FRAME_LEN as u64);
    }
    // Answers still held go out before the stream ends.
    if !lazy.is_empty() {
        let mut frame = FrameBuilder::new();
        for t in &lazy {
            if !frame.push(&t.t) {
                break;
            }
        }
        if sender.send_frame(frame.finish()).await.is_ok() {
            shared
                .metrics
                .bytes_out
                .inc_by(sotto_protocol::FRAME_LEN as u64);
        }
    }
    // Waits for the end of the stream to reach the network (TCP: `close_notify`), so the
    // session's close right after cannot cut it off.
    let _ = sender.shutdown().await;
}
