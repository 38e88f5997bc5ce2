//! A session's two I/O tasks: the reader (records → decoded frames for the session loop)
//! and the writer (transmissions → greedily batched frames, lazy answers held for a frame
//! that goes out anyway, cover frames while the session has subscriptions).
//!
//! The writer also owns the session's **pace** (PACE, `docs/protocol.md` § 9.2): once the
//! session loop tells it a gap, it sends one frame at each tick of a Poisson process
//! ([`sotto_timing::pacing::Pacer`], the same tick code as the client's), holds every answer
//! for the next frame (the lazy-answer mechanism with no deadline but the next tick), sends
//! pushed MSG and END at once with the held answers that fit, and stops the relay-wide cover.
//!
//! What it owns: framing, the pace and the byte, cover and tick counters. What it does not:
//! the meaning of any transmission (the session loop's), or the records' encryption and
//! transport (the transport's [`FrameSender`]/[`FrameReceiver`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use sotto_protocol::{FRAME_PLAINTEXT_LEN, Frame, FrameBuilder, Transmission};
use sotto_timing::pacing::{Pacer, PacingPolicy, Tick};
use sotto_transport::{self as transport, FrameReceiver, FrameSender, Link};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::server::Shared;

/// How long a session's writer may hold an answer nobody waits on to act (the OK of an ACK
/// on a subscription) for a frame it can ride in, before sending it in a frame of its own.
/// A subscriber under load sends it with the next MSG; an idle one gets it after this.
/// Saves a 16 KiB record (12 padded datagrams, two AEAD passes) per delivered message at
/// moderate rates (`docs/benchmarks.md`, target 2).
const LAZY_ANSWER_DELAY: Duration = Duration::from_millis(5);

/// Answers a writer holds at most.
///
/// - Unpaced, only lazy answers are held (≈ 35 bytes each, so they always fit one frame);
///   more are sent as ordinary transmissions.
/// - Paced, every answer is held, and answers can be large (a GET's MSG or a FWD_ANSWER,
///   ≤ 15.6 KiB each): at most ≈ 4 MiB per session. At the bound the writer takes nothing
///   more from its queue until a tick has sent some: the queue ([`super::OUT_QUEUE`], another
///   ≤ 4 MiB) fills, the session loop waits to hand over its next answer and stops reading
///   the client's frames, and QUIC flow control stops the client. A paced session's worst
///   case is thus ≈ 8 MiB of answers between loop and wire instead of ≈ 4 MiB.
const LAZY_PER_FRAME: usize = 256;

/// One item for a session's writer.
pub(super) enum Outgoing {
    /// An answer to a command of this session. Held for the next tick on a paced session.
    Answer {
        /// The transmission.
        t: Transmission,
        /// Unpaced, may wait up to [`LAZY_ANSWER_DELAY`] for a frame that goes out anyway.
        lazy: bool,
    },
    /// A pushed MSG or END (correlation id zero): sent when it occurs, paced or not, with
    /// the held answers that fit.
    Push(Transmission),
    /// The session's pace from now on (PACE accepted, or refused or `0`: unpaced). Comes
    /// before PACE's own answer, so that the answer is held under the new pace, or sent at
    /// once when pacing ends.
    Pace {
        /// Mean gap between ticks in milliseconds; 0 turns pacing off and flushes what is
        /// held.
        gap_ms: u32,
    },
}

impl Outgoing {
    /// The transmission it carries, if any.
    fn transmission(&self) -> Option<&Transmission> {
        match self {
            Outgoing::Answer { t, .. } | Outgoing::Push(t) => Some(t),
            Outgoing::Pace { .. } => None,
        }
    }
}

/// Reads records, decodes frames, and hands their transmissions to the session loop. A
/// malformed or undecryptable record, and a frame that does not decode (§ 7, § 8 header
/// rules), end the session with a protocol-error close (`docs/protocol.md` § 4: code 1; the
/// transport closes for records, this closes for frames).
pub(super) async fn read_frames(
    mut receiver: FrameReceiver,
    connection: Link,
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
                        // At once: what the session would still send is of no use to a
                        // broken peer, and the orderly close at the session's end (code 0)
                        // must not be what it sees.
                        connection.close(transport::CLOSE_PROTOCOL.into(), b"");
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
                if matches!(e, transport::TransportError::RecordTimeout(_)) {
                    shared.limited("record_timeout");
                }
                tracing::debug!(error = %e, "session read ended");
                return;
            }
        }
    }
}

/// Batches transmissions greedily into frames; sends cover frames at the configured rate
/// while the session has subscriptions; paces the session when told (see the module docs).
pub(super) async fn write_frames(
    sender: FrameSender,
    mut rx: mpsc::Receiver<Box<Outgoing>>,
    shared: Arc<Shared>,
    subscribed: Arc<AtomicUsize>,
) {
    let cover_rate = shared.config.delivery.cover_rate;
    let mut rng = StdRng::from_entropy();
    let cover_at = (cover_rate > 0.0).then(|| next_cover(&mut rng, cover_rate));
    let mut w = Writer {
        sender,
        shared,
        subscribed,
        rng,
        cover_rate,
        cover_at,
        held: VecDeque::new(),
        lazy_deadline: None,
        paced: None,
        carry: None,
    };
    if w.run(&mut rx).await.is_err() {
        return;
    }
    // Answers still held go out before the stream ends, paced or not: the session is over.
    w.paced = None;
    if w.flush().await.is_err() {
        return;
    }
    // Waits for the end of the stream to reach the network (TCP: `close_notify`), so the
    // session's close right after cannot cut it off.
    let _ = w.sender.shutdown().await;
}

/// When the next relay-wide cover frame is due.
fn next_cover(rng: &mut StdRng, rate: f64) -> Instant {
    Instant::now() + sotto_timing::exp::poisson_gap(rng, rate)
}

/// Bytes a transmission takes in a frame: its u16 length prefix and itself
/// (`docs/protocol.md` § 7).
fn frame_cost(t: &Transmission) -> usize {
    2 + t.encoded_len()
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The writer could not send: the connection is gone.
struct Gone;

/// What woke the writer.
enum Event {
    Item(Box<Outgoing>),
    /// The session loop dropped its end: flush and finish.
    Closed,
    /// Unpaced: held lazy answers are due.
    LazyDue,
    /// Unpaced: a relay-wide cover frame is due.
    Cover,
    /// Paced: a tick is due.
    Tick,
    /// Paced: the relay is shutting down.
    Shutdown,
}

/// A paced session's tick process.
struct Paced {
    pacer: Pacer<StdRng>,
    next_tick: Instant,
    /// Counts the session in `sotto_paced_sessions` while it lives.
    _gauge: GaugeGuard,
}

/// Holds one unit of a gauge from creation to drop.
struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn new(g: &IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One session's writer task state.
struct Writer {
    sender: FrameSender,
    shared: Arc<Shared>,
    subscribed: Arc<AtomicUsize>,
    /// Gaps of the relay-wide cover.
    rng: StdRng,
    cover_rate: f64,
    /// Unpaced, with `delivery.cover_rate` on: when the next cover frame is due.
    cover_at: Option<Instant>,
    /// Answers waiting for a frame, oldest first (at most [`LAZY_PER_FRAME`]): unpaced, lazy
    /// answers only; paced, every answer.
    held: VecDeque<Transmission>,
    /// Unpaced: when the held lazy answers must go at the latest.
    lazy_deadline: Option<Instant>,
    /// The tick process while the session is paced.
    paced: Option<Paced>,
    /// An item taken from the queue that did not fit the frame just sent, or that must be
    /// handled on its own (a pace change); handled before anything else.
    carry: Option<Box<Outgoing>>,
}

impl Writer {
    /// Until the session loop drops its end of the queue, or the connection breaks.
    async fn run(&mut self, rx: &mut mpsc::Receiver<Box<Outgoing>>) -> Result<(), Gone> {
        loop {
            let event = match self.carry.take() {
                Some(item) => Event::Item(item),
                None => self.wait(rx).await,
            };
            match event {
                Event::Closed => return Ok(()),
                Event::Item(item) => match *item {
                    Outgoing::Pace { gap_ms } => self.set_pace(gap_ms).await?,
                    Outgoing::Answer { t, .. } if self.paced.is_some() => self.held.push_back(t),
                    Outgoing::Answer { t, lazy: true } if self.held.len() < LAZY_PER_FRAME => {
                        self.held.push_back(t);
                        self.lazy_deadline
                            .get_or_insert_with(|| Instant::now() + LAZY_ANSWER_DELAY);
                    }
                    Outgoing::Push(t) if self.paced.is_some() => self.send_push(t, rx).await?,
                    other => self.send_unpaced(Some(Box::new(other)), rx).await?,
                },
                Event::LazyDue => self.send_unpaced(None, rx).await?,
                Event::Cover => {
                    self.cover_at = Some(next_cover(&mut self.rng, self.cover_rate));
                    if self.subscribed.load(Ordering::Relaxed) > 0 {
                        self.send(FrameBuilder::cover_response()).await?;
                        self.shared.metrics.cover_sent.inc();
                    }
                }
                Event::Tick => self.tick(rx).await?,
                // Held answers must not wait for a tick past the shutdown bounds.
                Event::Shutdown => self.set_pace(0).await?,
            }
        }
    }

    /// The next thing to do.
    async fn wait(&mut self, rx: &mut mpsc::Receiver<Box<Outgoing>>) -> Event {
        let paced = self.paced.is_some();
        // Paced and full: nothing more is taken until a tick sends some (see LAZY_PER_FRAME).
        let take = !(paced && self.held.len() >= LAZY_PER_FRAME);
        let (lazy_due, cover_at, tick_at) = match &self.paced {
            Some(p) => (None, None, Some(p.next_tick)),
            None => (self.lazy_deadline, self.cover_at, None),
        };
        let shutdown = &self.shared.shutdown;
        tokio::select! {
            t = rx.recv(), if take => match t {
                Some(t) => Event::Item(t),
                None => Event::Closed,
            },
            () = sleep_until(lazy_due) => Event::LazyDue,
            () = sleep_until(cover_at) => Event::Cover,
            () = sleep_until(tick_at) => Event::Tick,
            () = shutdown.cancelled(), if paced => Event::Shutdown,
        }
    }

    /// Encrypts and sends one frame.
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), Gone> {
        self.sender.send_frame(frame).await.map_err(|_| Gone)?;
        self.shared
            .metrics
            .bytes_out
            .inc_by(sotto_protocol::FRAME_LEN as u64);
        Ok(())
    }

    /// Paces the session with a mean gap of `gap_ms` from now (a new tick process, also when
    /// it was paced already), or, for 0, stops pacing and sends what is held at once.
    async fn set_pace(&mut self, gap_ms: u32) -> Result<(), Gone> {
        // No new pace once shutdown began: held answers must not wait for a tick.
        if gap_ms > 0 && !self.shared.shutdown.is_cancelled() {
            let mut pacer = Pacer::new(
                PacingPolicy::at_rate(1000.0 / f64::from(gap_ms)),
                StdRng::from_entropy(),
            );
            let next_tick = Instant::now() + pacer.next_gap(self.held.len());
            let gauge = GaugeGuard::new(&self.shared.metrics.paced_sessions);
            // Replacing a pace drops its guard: the gauge counts this session once.
            self.paced = Some(Paced {
                pacer,
                next_tick,
                _gauge: gauge,
            });
            // Lazy answers held so far now wait for the first tick, like every answer.
            self.lazy_deadline = None;
            return Ok(());
        }
        if self.paced.take().is_some() && self.cover_rate > 0.0 {
            self.cover_at = Some(next_cover(&mut self.rng, self.cover_rate));
        }
        self.flush().await
    }

    /// Sends every held answer now, in as many frames as they need, oldest first.
    async fn flush(&mut self) -> Result<(), Gone> {
        self.lazy_deadline = None;
        while !self.held.is_empty() {
            let mut frame = FrameBuilder::new();
            self.fill(&mut frame, 0);
            self.send(frame.finish()).await?;
        }
        Ok(())
    }

    /// Moves held answers into `frame`, oldest first, while they fit with `reserve` bytes
    /// left over; stops at the first that does not (answers keep their order).
    fn fill(&mut self, frame: &mut FrameBuilder, reserve: usize) {
        let mut room = FRAME_PLAINTEXT_LEN.saturating_sub(2 + reserve);
        while let Some(t) = self.held.front() {
            let cost = frame_cost(t);
            if cost > room {
                if frame.is_empty() && reserve == 0 {
                    // Cannot happen: every transmission the relay builds fits an empty frame.
                    tracing::error!("held answer larger than a frame dropped");
                    self.held.pop_front();
                    continue;
                }
                break;
            }
            room -= cost;
            if let Some(t) = self.held.pop_front()
                && !frame.push(&t)
            {
                tracing::error!("held answer does not fit a frame; dropped");
            }
        }
    }

    /// Paced: moves the answers already queued into `held` (up to its bound), so that what
    /// is completing right now rides in the frame about to go; stops at anything else, which
    /// is carried to the next round.
    async fn take_queued_answers(&mut self, rx: &mut mpsc::Receiver<Box<Outgoing>>) {
        // Answers that are completing right now (a group commit answers many SENDs at once)
        // then share this frame.
        tokio::task::yield_now().await;
        while self.carry.is_none() && self.held.len() < LAZY_PER_FRAME {
            match rx.try_recv() {
                Ok(item) => match *item {
                    Outgoing::Answer { t, .. } => self.held.push_back(t),
                    other => self.carry = Some(Box::new(other)),
                },
                Err(_) => break,
            }
        }
    }

    /// Paced: the tick due now sends the held answers that fit, or a cover frame.
    async fn tick(&mut self, rx: &mut mpsc::Receiver<Box<Outgoing>>) -> Result<(), Gone> {
        self.take_queued_answers(rx).await;
        let Some(p) = self.paced.as_mut() else {
            return Ok(());
        };
        let what = p.pacer.tick(self.held.len());
        let frame = match what {
            Tick::Real => {
                let mut frame = FrameBuilder::new();
                self.fill(&mut frame, 0);
                frame.finish()
            }
            Tick::Cover => FrameBuilder::cover_response(),
        };
        // The next gap starts now (memoryless: a tick that was late, e.g. behind flow
        // control, does not cause a burst of ticks to catch up).
        if let Some(p) = self.paced.as_mut() {
            p.next_tick = Instant::now() + p.pacer.next_gap(self.held.len());
        }
        self.shared.metrics.pace_ticks.inc();
        if what == Tick::Cover {
            self.shared.metrics.pace_cover.inc();
        }
        self.send(frame).await
    }

    /// Paced: a pushed MSG or END goes now, after the held answers that fit beside it.
    async fn send_push(
        &mut self,
        push: Transmission,
        rx: &mut mpsc::Receiver<Box<Outgoing>>,
    ) -> Result<(), Gone> {
        self.take_queued_answers(rx).await;
        let mut frame = FrameBuilder::new();
        self.fill(&mut frame, frame_cost(&push));
        if !frame.push(&push) {
            // Cannot happen: room for it was kept, and it fits an empty frame.
            tracing::error!("pushed transmission does not fit a frame; dropped");
        }
        self.send(frame.finish()).await
    }

    /// Unpaced: a frame with the held lazy answers, then `first` (an answer or a push),
    /// then whatever else is queued and fits.
    async fn send_unpaced(
        &mut self,
        first: Option<Box<Outgoing>>,
        rx: &mut mpsc::Receiver<Box<Outgoing>>,
    ) -> Result<(), Gone> {
        // Yield once before closing the frame: answers that are completing right now (a group
        // commit answers many SENDs at once) then share this frame instead of each taking a
        // 16 KiB record of their own (−13 % of the records a loaded relay sends, measured).
        tokio::task::yield_now().await;
        let mut frame = FrameBuilder::new();
        // Held answers are older than anything queued after them, so they go first (answers
        // on one queue keep their order); at most LAZY_PER_FRAME small ones always fit.
        self.fill(&mut frame, 0);
        self.lazy_deadline = None;
        if let Some(first) = first {
            if let Some(t) = first.transmission().filter(|t| frame.fits(t)) {
                frame.push(t);
            } else if frame.is_empty() {
                // Cannot happen: every transmission the relay builds fits an empty frame.
                tracing::error!("transmission larger than a frame dropped");
                return Ok(());
            } else {
                // It starts the next frame, after the held answers this one carries.
                self.carry = Some(first);
            }
        }
        while self.carry.is_none() {
            let Ok(item) = rx.try_recv() else { break };
            if let Some(t) = item.transmission().filter(|t| frame.fits(t)) {
                frame.push(t);
            } else {
                // Does not fit, or a pace change, which must come after the answers before
                // it and before those after it.
                self.carry = Some(item);
            }
        }
        self.send(frame.finish()).await
    }
}
