//! The two tasks of a [`super::RelayClient`] session and the state they share with its
//! handles.
//!
//! The **writer task** owns the [`FrameSender`]. Unpaced ([`write_loop`]), it batches queued
//! transmissions into frames as they come (a cover request is a frame of its own); paced
//! ([`paced_write_loop`]), it sends exactly one frame at each tick of a
//! [`sotto_timing::Pacer`] — the queued transmissions that fit ([`fill_tick`]), or a cover
//! frame — plus, with echo, one frame filled the same way [`super::ECHO_DELAY`] after each
//! frame the reader received, and tells each request when its transmission left. The **reader task** owns the
//! [`FrameReceiver`], routes answers to their waiting request by correlation id, pushes
//! MSG/END, and counts cover. [`Shared`] holds the table of waiting requests, the subscribed
//! queues, the counters and what the relay said to PACE; the module documentation of
//! [`super`] gives the bounds. Nothing here knows what a request means: that is
//! [`super::RelayClient`]'s.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use quinn::VarInt;
use rand::rngs::OsRng;
use sotto_protocol::{
    CorrId, DecodeError, ErrorCode, Frame, FrameBuilder, RecipientId, Response, Transmission,
};
use sotto_timing::pacing::{Pacer, PacingPolicy, Tick};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ClientError, ECHO_DELAY, Pushed, RelayPacing, SealedMessage};
use crate::{CLOSE_PROTOCOL, FrameReceiver, FrameSender, Link, TransportError};

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) cover_sent: AtomicU64,
    pub(super) cover_skipped: AtomicU64,
    pub(super) cover_received: AtomicU64,
    pub(super) late_answers: AtomicU64,
    pub(super) pushes_discarded: AtomicU64,
    pub(super) unexpected: AtomicU64,
    /// Paced ticks written that carried real transmissions ([`sotto_timing::Pacer`]'s
    /// count, stored once the frame is written).
    pub(super) real_ticks: AtomicU64,
    /// Paced ticks written as cover.
    pub(super) cover_ticks: AtomicU64,
    /// Paced gaps drawn at the burst rate.
    pub(super) burst_gaps: AtomicU64,
    /// Echo frames written.
    pub(super) echoes: AtomicU64,
    /// Received frames not echoed (the echo queue was full).
    pub(super) echoes_dropped: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Requests waiting for their answer, by correlation id.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    pub(super) by_corr: HashMap<u64, oneshot::Sender<Response>>,
    /// Set once the session ended; no waiter is registered after that.
    pub(super) closed: bool,
}

/// State shared by the handles and the reader task.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) waiters: Mutex<Waiters>,
    pub(super) counters: Counters,
    /// Queues this session holds the subscription of (SUB answered OK, no END or DEL
    /// since): their ACKs need no signature (`docs/protocol.md` § ACK).
    pub(super) subscribed: Mutex<HashSet<RecipientId>>,
    /// What the relay said to PACE ([`RelayPacing`], encoded by [`pacing_code`]).
    pub(super) relay_pacing: AtomicU8,
    /// Correlation id of this session's PACE (0: none). The reader records its answer
    /// before routing it, so that any later answer finds the relay's decision known.
    pub(super) pace_corr: AtomicU64,
}

impl Shared {
    pub(super) fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // insert/remove operations), so a poisoned lock is still usable.
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn subscribed(&self) -> MutexGuard<'_, HashSet<RecipientId>> {
        // Single insert/remove/contains operations: a poisoned lock is still consistent.
        self.subscribed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the session for requests: every waiter sees its sender dropped (→ `Closed`).
    pub(super) fn close(&self) {
        let mut w = self.waiters();
        w.closed = true;
        w.by_corr.clear();
    }

    pub(super) fn relay_pacing(&self) -> RelayPacing {
        pacing_from_code(self.relay_pacing.load(Ordering::Relaxed))
    }

    pub(super) fn set_relay_pacing(&self, p: RelayPacing) {
        self.relay_pacing.store(pacing_code(p), Ordering::Relaxed);
    }
}

/// [`RelayPacing`] as a byte (for an atomic): the code of a refusal rides in the high bits.
pub(super) fn pacing_code(p: RelayPacing) -> u8 {
    match p {
        RelayPacing::NotAsked => 0,
        RelayPacing::Asked => 1,
        RelayPacing::Accepted => 2,
        // Error codes are 1..=14 (`docs/protocol.md` § 9.4): shifted, they stay apart.
        RelayPacing::Refused(code) => 3 | ((code as u8) << 2),
    }
}

fn pacing_from_code(v: u8) -> RelayPacing {
    match v & 3 {
        0 => RelayPacing::NotAsked,
        1 => RelayPacing::Asked,
        2 => RelayPacing::Accepted,
        _ => RelayPacing::Refused(ErrorCode::from_u8(v >> 2).unwrap_or(ErrorCode::Syntax)),
    }
}

/// Removes a request's waiter when the request finishes in any way (answer, timeout,
/// cancellation).
pub(super) struct WaiterGuard<'a> {
    pub(super) shared: &'a Shared,
    pub(super) corr: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.waiters().by_corr.remove(&self.corr);
    }
}

/// A transmission waiting in the writer's queue.
#[derive(Debug)]
pub(super) struct Queued {
    /// What to send (it fits an empty frame: `request` checks).
    pub(super) t: Transmission,
    /// Told when the frame carrying `t` has been written (paced sessions, whose request
    /// timers start then); dropped unsent if the session ends first.
    pub(super) departed: Option<oneshot::Sender<()>>,
}

/// What the writer task sends.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// A transmission to batch into the next frame.
    Transmission(Queued),
    /// A cover frame (one DROP), sent as a frame of its own. Never queued on a paced
    /// session (its ticks are the cover); a paced writer would discard it.
    Cover,
}

/// How the writer task is told to stop.
#[derive(Debug, Clone)]
pub(super) struct WriterControl {
    /// The session ends now (close, last handle dropped, either task ended).
    pub(super) cancel: CancellationToken,
    /// Stop after the frame being written, end the stream in an orderly way, and leave the
    /// session to the reader until the relay closes it ([`super::RelayClient::finish`]).
    pub(super) finish: CancellationToken,
    /// Cancelled by the writer when it has stopped.
    pub(super) done: CancellationToken,
}

/// How a writer task ended.
enum WriterEnd {
    /// The session is over (cancelled, write failed): close it for requests.
    Session,
    /// The stream was ended in an orderly way; the reader goes on until the relay closes.
    Finished,
}

/// Owns the sending half: batches queued transmissions into frames as they come.
pub(super) async fn write_loop(
    mut sender: FrameSender,
    mut queue: mpsc::Receiver<Outgoing>,
    connection: Link,
    shared: Arc<Shared>,
    control: WriterControl,
) {
    let end = unpaced_frames(&mut sender, &mut queue, &control).await;
    writer_stopped(end, queue, connection, &shared, &control);
}

async fn unpaced_frames(
    sender: &mut FrameSender,
    queue: &mut mpsc::Receiver<Outgoing>,
    control: &WriterControl,
) -> WriterEnd {
    let cancel = &control.cancel;
    let mut carried: Option<Outgoing> = None;
    loop {
        let first = match carried.take() {
            Some(o) => o,
            None => tokio::select! {
                biased;
                _ = cancel.cancelled() => return WriterEnd::Session,
                _ = control.finish.cancelled() => {
                    let _ = sender.shutdown().await;
                    return WriterEnd::Finished;
                }
                o = queue.recv() => match o {
                    Some(o) => o,
                    // Every handle is gone: end the stream in an orderly way.
                    None => {
                        let _ = sender.shutdown().await;
                        return WriterEnd::Session;
                    }
                },
            },
        };
        let frame = match first {
            Outgoing::Cover => FrameBuilder::cover_command(),
            Outgoing::Transmission(Queued { t, .. }) => {
                // Yield once before closing the frame, so that requests other tasks are
                // queueing right now (an ACK per pushed MSG, SENDs of a burst) share this
                // frame: with one MSG per record arriving, ACKs otherwise took a 16 KiB record
                // each (a load run sent 39 % fewer datagrams with this; see
                // docs/benchmarks.md). Costs one scheduler round trip per frame.
                tokio::task::yield_now().await;
                let mut b = FrameBuilder::new();
                // `request` only queues transmissions that fit an empty frame.
                b.push(&t);
                while let Ok(next) = queue.try_recv() {
                    match next {
                        Outgoing::Transmission(q) if b.push(&q.t) => {}
                        other => {
                            carried = Some(other);
                            break;
                        }
                    }
                }
                b.finish()
            }
        };
        let sent = tokio::select! {
            biased;
            _ = cancel.cancelled() => return WriterEnd::Session,
            r = sender.send_frame(frame) => r,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "session writer stopped");
            return WriterEnd::Session;
        }
    }
}

/// What a tick of a paced writer sends: one frame, and the transmissions that left in it,
/// in the order they were queued.
#[derive(Debug)]
pub(super) struct TickFrame {
    /// The frame's plaintext ([`sotto_protocol::FRAME_PLAINTEXT_LEN`] bytes).
    pub(super) frame: Vec<u8>,
    /// The transmissions in it; empty for a cover frame.
    pub(super) departed: Vec<Queued>,
}

/// The step of one paced tick, without I/O: fills one frame greedily with `carried` (the
/// transmission that did not fit the last tick's frame) and then what `next` yields, in
/// order, stopping at the first transmission that does not fit — it becomes the new
/// `carried` and leads the next tick. With nothing waiting the frame is cover (one DROP).
/// Always exactly one frame, so an observer sees one frame per tick whatever waits.
pub(super) fn fill_tick(
    carried: &mut Option<Queued>,
    mut next: impl FnMut() -> Option<Queued>,
) -> TickFrame {
    let mut b = FrameBuilder::new();
    let mut departed = Vec::new();
    while let Some(q) = carried.take().or_else(&mut next) {
        if b.push(&q.t) {
            departed.push(q);
        } else {
            // Every queued transmission fits an empty frame (`request` checks), so the
            // first one always fits and a tick with a backlog is never cover.
            *carried = Some(q);
            break;
        }
    }
    let frame = if departed.is_empty() {
        FrameBuilder::cover_command()
    } else {
        b.finish()
    };
    TickFrame { frame, departed }
}

/// Owns the sending half of a paced session: one frame at each tick of a [`Pacer`] drawing
/// its gaps from the OS's CSPRNG, real transmissions in place of cover, and, with `echo`
/// (the due times the reader sends), one frame per received frame; never another frame.
pub(super) async fn paced_write_loop(
    mut sender: FrameSender,
    mut queue: mpsc::Receiver<Outgoing>,
    connection: Link,
    shared: Arc<Shared>,
    control: WriterControl,
    policy: PacingPolicy,
    echo: Option<mpsc::Receiver<Instant>>,
) {
    let mut pacer = Pacer::new(policy, OsRng);
    let mut echo = Echoes {
        due: echo,
        next: None,
    };
    let end = paced_frames(
        &mut sender,
        &mut queue,
        &shared,
        &control,
        &mut pacer,
        &mut echo,
    )
    .await;
    writer_stopped(end, queue, connection, &shared, &control);
}

/// The echoes a paced writer owes: the times they are due, in order, from the reader.
struct Echoes {
    /// `None` without echo (or once the reader has gone).
    due: Option<mpsc::Receiver<Instant>>,
    /// The next echo's time, taken from `due`.
    next: Option<Instant>,
}

impl Echoes {
    /// Resolves when the next echo is due; `None` at once without echoes. Cancel-safe: a
    /// due time taken from the channel is kept in `next` until its echo is returned.
    async fn due(&mut self) -> Option<()> {
        loop {
            if let Some(at) = self.next {
                tokio::time::sleep_until(at).await;
                self.next = None;
                return Some(());
            }
            let rx = self.due.as_mut()?;
            match rx.recv().await {
                Some(at) => self.next = Some(at),
                None => {
                    self.due = None;
                    return None;
                }
            }
        }
    }
}

/// Why a paced writer wrote.
enum Wake {
    Tick,
    Echo,
}

async fn paced_frames(
    sender: &mut FrameSender,
    queue: &mut mpsc::Receiver<Outgoing>,
    shared: &Shared,
    control: &WriterControl,
    pacer: &mut Pacer<OsRng>,
    echo: &mut Echoes,
) -> WriterEnd {
    let cancel = &control.cancel;
    let mut carried: Option<Queued> = None;
    let mut next_tick = Instant::now() + pacer.next_gap(0);
    loop {
        let wake = tokio::select! {
            biased;
            _ = cancel.cancelled() => return WriterEnd::Session,
            _ = control.finish.cancelled() => {
                let _ = sender.shutdown().await;
                return WriterEnd::Finished;
            }
            _ = tokio::time::sleep_until(next_tick) => Wake::Tick,
            Some(()) = echo.due() => Wake::Echo,
        };
        let c = &shared.counters;
        if let Wake::Echo = wake {
            // Filled as a tick is, outside the Poisson process: the pacer neither counts
            // it nor redraws the next tick (memoryless: nothing to catch up).
            let frame = fill_tick(&mut carried, || next_transmission(queue, shared));
            if let Err(end) = write_tick(sender, cancel, frame).await {
                return end;
            }
            bump(&c.echoes);
            continue;
        }
        let backlog = queue.len() + usize::from(carried.is_some());
        let kind = pacer.tick(backlog);
        let tick = fill_tick(&mut carried, || next_transmission(queue, shared));
        debug_assert_eq!(kind == Tick::Real, !tick.departed.is_empty());
        if let Err(end) = write_tick(sender, cancel, tick).await {
            return end;
        }
        let stats = pacer.stats();
        c.real_ticks.store(stats.real, Ordering::Relaxed);
        c.cover_ticks.store(stats.cover, Ordering::Relaxed);
        // Drawn when the frame has left, from the backlog that is left (which only matters
        // with a burst allowance): memoryless, so this is the same Poisson process, and a
        // write slowed by flow control never makes ticks catch up in a burst.
        let backlog = queue.len() + usize::from(carried.is_some());
        next_tick = Instant::now() + pacer.next_gap(backlog);
        c.burst_gaps.store(pacer.stats().burst, Ordering::Relaxed);
    }
}

/// Writes one paced frame and tells each request in it that it has left.
async fn write_tick(
    sender: &mut FrameSender,
    cancel: &CancellationToken,
    tick: TickFrame,
) -> Result<(), WriterEnd> {
    let sent = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(WriterEnd::Session),
        r = sender.send_frame(tick.frame) => r,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "paced session writer stopped");
        return Err(WriterEnd::Session);
    }
    for q in tick.departed {
        if let Some(d) = q.departed {
            // The request may have given up meanwhile: nothing to tell.
            let _ = d.send(());
        }
    }
    Ok(())
}

/// The next queued transmission, if any; cover requests are skipped and counted as
/// skipped cover (never queued on a paced session: its ticks are the cover).
fn next_transmission(queue: &mut mpsc::Receiver<Outgoing>, shared: &Shared) -> Option<Queued> {
    loop {
        match queue.try_recv().ok()? {
            Outgoing::Transmission(q) => return Some(q),
            Outgoing::Cover => bump(&shared.counters.cover_skipped),
        }
    }
}

/// After the writer stopped: on a session end, requests fail and the reader is stopped; on
/// an orderly finish the reader goes on. Either way, what is still queued is dropped (its
/// requests see the departure signal or the session end), and the writer says it is done.
fn writer_stopped(
    end: WriterEnd,
    queue: mpsc::Receiver<Outgoing>,
    connection: Link,
    shared: &Shared,
    control: &WriterControl,
) {
    drop(queue);
    if let WriterEnd::Session = end {
        shared.close();
        control.cancel.cancel();
    }
    control.done.cancel();
    // Nothing more will be written; if the reader is still running it ends too (after a
    // finish, when the relay closes the connection).
    drop(connection);
}

/// Why the reader stopped.
enum ReadEnd {
    /// `close()`, or the last handle dropped.
    Cancelled,
    /// The session failed or ended.
    Failed(ClientError),
}

/// Owns the receiving half: routes answers and pushes events.
pub(super) async fn read_loop(
    mut receiver: FrameReceiver,
    pushed: mpsc::Sender<Pushed>,
    connection: Link,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    echo: Option<mpsc::Sender<Instant>>,
) {
    let end = read_frames(
        &mut receiver,
        &pushed,
        &connection,
        &shared,
        &cancel,
        echo.as_ref(),
    )
    .await;
    shared.close();
    cancel.cancel();
    let reason = match end {
        ReadEnd::Cancelled => ClientError::Closed,
        ReadEnd::Failed(e) => {
            tracing::debug!(error = %e, "session reader stopped");
            e
        }
    };
    // Best effort: a full channel means the caller is not reading; it still sees the
    // channel end once this task drops its sender.
    if pushed.try_send(Pushed::Closed(reason)).is_err() {
        bump(&shared.counters.pushes_discarded);
    }
}

async fn read_frames(
    receiver: &mut FrameReceiver,
    pushed: &mpsc::Sender<Pushed>,
    connection: &Link,
    shared: &Shared,
    cancel: &CancellationToken,
    echo: Option<&mpsc::Sender<Instant>>,
) -> ReadEnd {
    loop {
        let frame = tokio::select! {
            biased;
            _ = cancel.cancelled() => return ReadEnd::Cancelled,
            f = receiver.recv_frame() => f,
        };
        let plaintext = match frame {
            Ok(Some(p)) => p,
            Ok(None) => return ReadEnd::Failed(ClientError::Closed),
            Err(TransportError::Closed) => return ReadEnd::Failed(ClientError::Closed),
            Err(e) => return ReadEnd::Failed(ClientError::Transport(e)),
        };
        // Every frame read is echoed, whatever it holds (even one that fails to decode:
        // the session ends then anyway).
        if let Some(echo) = echo
            && echo.try_send(Instant::now() + ECHO_DELAY).is_err()
        {
            bump(&shared.counters.echoes_dropped);
        }
        let transmissions = match Frame::decode(&plaintext) {
            Ok(ts) => ts,
            Err(e) => return protocol_failure(connection, e),
        };
        for t in transmissions {
            let answer = match t.decode_response() {
                Ok(r) => r,
                Err(e) => return protocol_failure(connection, e),
            };
            if let Response::Drop = answer {
                bump(&shared.counters.cover_received);
                continue;
            }
            if t.corr_id != CorrId::NONE {
                let corr = t.corr_id.as_u64();
                if corr == shared.pace_corr.load(Ordering::Relaxed) {
                    match &answer {
                        Response::Ok => shared.set_relay_pacing(RelayPacing::Accepted),
                        Response::Err(code) => {
                            shared.set_relay_pacing(RelayPacing::Refused(*code));
                        }
                        _ => {}
                    }
                }
                let waiter = shared.waiters().by_corr.remove(&corr);
                let delivered = waiter.is_some_and(|w| w.send(answer).is_ok());
                if !delivered {
                    bump(&shared.counters.late_answers);
                }
                continue;
            }
            let event = match (answer, t.entity) {
                (
                    Response::Msg {
                        msg_id,
                        timestamp,
                        flags,
                        sealed_body,
                    },
                    Some(entity),
                ) => Pushed::Msg {
                    recipient_id: entity.into(),
                    msg: SealedMessage {
                        msg_id,
                        timestamp,
                        flags,
                        sealed_body,
                    },
                },
                (Response::End, Some(entity)) => {
                    shared.subscribed().remove(&RecipientId::from(entity));
                    Pushed::End {
                        recipient_id: entity.into(),
                    }
                }
                _ => {
                    bump(&shared.counters.unexpected);
                    continue;
                }
            };
            // Waiting here is the backpressure: flow control then slows the relay.
            let sent = tokio::select! {
                biased;
                _ = cancel.cancelled() => return ReadEnd::Cancelled,
                r = pushed.send(event) => r,
            };
            if sent.is_err() {
                bump(&shared.counters.pushes_discarded);
            }
        }
    }
}

fn protocol_failure(connection: &Link, e: DecodeError) -> ReadEnd {
    connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"");
    ReadEnd::Failed(ClientError::Protocol(e))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;
    use sotto_protocol::{Command, FRAME_PLAINTEXT_LEN, MAX_BODY, SenderId};

    use super::*;
    use crate::client::WRITE_QUEUE;

    /// A transmission numbered `n` (its correlation id): a SEND with a body of `len` bytes,
    /// or a PING for `len` = 0.
    fn queued(n: u64, len: usize) -> Queued {
        let corr = CorrId::from_u64(n);
        let t = if len == 0 {
            Transmission::command(corr, None, &Command::Ping)
        } else {
            let cmd = Command::Send {
                flags: 0,
                body: vec![7; len.min(MAX_BODY)],
            };
            Transmission::command(corr, Some(SenderId([1; 24]).into()), &cmd)
        };
        Queued { t, departed: None }
    }

    /// The correlation ids a frame carries, in order (none for cover).
    fn carried_ids(frame: &[u8]) -> Vec<u64> {
        assert_eq!(frame.len(), FRAME_PLAINTEXT_LEN);
        Frame::decode(frame)
            .unwrap()
            .into_iter()
            .filter(|t| !matches!(t.decode_command(), Ok(Command::Drop)))
            .map(|t| t.corr_id.as_u64())
            .collect()
    }

    #[test]
    fn an_idle_tick_is_one_cover_frame() {
        let mut carried = None;
        let tick = fill_tick(&mut carried, || None);
        assert!(tick.departed.is_empty() && carried.is_none());
        assert_eq!(tick.frame, FrameBuilder::cover_command());
    }

    #[test]
    fn a_tick_takes_what_fits_in_order_and_carries_the_first_that_does_not() {
        let mut queue: VecDeque<Queued> = VecDeque::new();
        // Three PINGs and two full-size SENDs: the PINGs and the first SEND share a frame.
        for (n, len) in [(1, 0), (2, 0), (3, MAX_BODY), (4, MAX_BODY), (5, 0)] {
            queue.push_back(queued(n, len));
        }
        let mut carried = None;
        let first = fill_tick(&mut carried, || queue.pop_front());
        assert_eq!(carried_ids(&first.frame), [1, 2, 3]);
        assert_eq!(carried.as_ref().map(|q| q.t.corr_id.as_u64()), Some(4));
        let second = fill_tick(&mut carried, || queue.pop_front());
        assert_eq!(carried_ids(&second.frame), [4, 5]);
        assert!(carried.is_none() && queue.is_empty());
        let third = fill_tick(&mut carried, || queue.pop_front());
        assert_eq!(third.frame, FrameBuilder::cover_command());
    }

    #[test]
    fn departures_are_signalled_to_the_requests_in_the_frame() {
        let (tx, mut rx) = oneshot::channel();
        let mut carried = Some(Queued {
            departed: Some(tx),
            ..queued(1, 0)
        });
        let tick = fill_tick(&mut carried, || None);
        assert!(rx.try_recv().is_err(), "not before the frame is written");
        for q in tick.departed {
            q.departed.unwrap().send(()).unwrap();
        }
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn pace_answers_round_trip_through_their_byte() {
        let mut all = vec![
            RelayPacing::NotAsked,
            RelayPacing::Asked,
            RelayPacing::Accepted,
        ];
        all.extend(ErrorCode::ALL.map(RelayPacing::Refused));
        for p in all {
            assert_eq!(pacing_from_code(pacing_code(p)), p);
        }
    }

    proptest! {
        /// Whatever the arrival pattern — bursts of full frames, trickles of small commands,
        /// more than the queue holds — a paced writer sends exactly one frame per tick, every
        /// transmission leaves in exactly one tick, in the order it was queued, a tick with a
        /// backlog is never cover (substitution), and the queue never holds more than
        /// WRITE_QUEUE (callers wait for room instead).
        #[test]
        fn one_frame_per_tick_every_transmission_once_in_order(
            arrivals in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![Just(0usize), 1usize..2000, (MAX_BODY - 500)..=MAX_BODY],
                    0..12,
                ),
                1..80,
            ),
            seed in any::<u64>(),
        ) {
            let mut pacer = Pacer::new(PacingPolicy::at_rate(1.0), StdRng::seed_from_u64(seed));
            // The channel, and the callers blocked on it in arrival order (tokio's bounded
            // channel admits waiting senders first come, first served).
            let mut queue: VecDeque<Queued> = VecDeque::new();
            let mut blocked: VecDeque<Queued> = VecDeque::new();
            let mut carried: Option<Queued> = None;
            let (mut next_id, mut frames, mut left) = (1u64, 0u64, Vec::new());
            let total: usize = arrivals.iter().map(Vec::len).sum();
            let mut tick_no = 0usize;
            while left.len() < total {
                for &len in arrivals.get(tick_no).map(Vec::as_slice).unwrap_or_default() {
                    blocked.push_back(queued(next_id, len));
                    next_id += 1;
                }
                while queue.len() < WRITE_QUEUE {
                    let Some(q) = blocked.pop_front() else { break };
                    queue.push_back(q);
                }
                prop_assert!(queue.len() <= WRITE_QUEUE);
                let backlog = queue.len() + usize::from(carried.is_some());
                let kind = pacer.tick(backlog);
                let tick = fill_tick(&mut carried, || queue.pop_front());
                frames += 1;
                let ids = carried_ids(&tick.frame);
                prop_assert_eq!(
                    &ids,
                    &tick.departed.iter().map(|q| q.t.corr_id.as_u64()).collect::<Vec<_>>()
                );
                prop_assert_eq!(kind == Tick::Real, !ids.is_empty());
                prop_assert_eq!(backlog > 0, !ids.is_empty(), "substitution");
                left.extend(ids);
                tick_no += 1;
                prop_assert!(tick_no <= arrivals.len() + total + 1, "the backlog drains");
            }
            prop_assert_eq!(left, (1..next_id).collect::<Vec<_>>());
            prop_assert_eq!(pacer.stats().ticks(), frames);
        }
    }
}
