//! The two tasks of a [`super::RelayClient`] session and the state they share with its
//! handles.
//!
//! The **writer task** owns the [`FrameSender`] and batches queued transmissions into frames
//! (a cover request is a frame of its own); the **reader task** owns the [`FrameReceiver`],
//! routes answers to their waiting request by correlation id, pushes MSG/END, and counts
//! cover. [`Shared`] holds the table of waiting requests and the subscribed queues; the
//! module documentation of [`super`] gives the bounds. Nothing here knows what a request
//! means: that is [`super::RelayClient`]'s.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use quinn::VarInt;
use sotto_protocol::{
    CorrId, DecodeError, Frame, FrameBuilder, RecipientId, Response, Transmission,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{ClientError, Pushed, SealedMessage};
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

/// What the writer task sends.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// A transmission to batch into the next frame.
    Transmission(Transmission),
    /// A cover frame (one DROP), sent as a frame of its own.
    Cover,
}

/// Owns the sending half: batches queued transmissions into frames.
pub(super) async fn write_loop(
    mut sender: FrameSender,
    mut queue: mpsc::Receiver<Outgoing>,
    connection: Link,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut carried: Option<Outgoing> = None;
    loop {
        let first = match carried.take() {
            Some(o) => o,
            None => tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                o = queue.recv() => match o {
                    Some(o) => o,
                    // Every handle is gone: end the stream in an orderly way.
                    None => {
                        let _ = sender.shutdown().await;
                        break;
                    }
                },
            },
        };
        let frame = match first {
            Outgoing::Cover => FrameBuilder::cover_command(),
            Outgoing::Transmission(t) => {
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
                        Outgoing::Transmission(t) if b.push(&t) => {}
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
            _ = cancel.cancelled() => break,
            r = sender.send_frame(frame) => r,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "session writer stopped");
            break;
        }
    }
    shared.close();
    cancel.cancel();
    // Nothing more will be written; if the reader is still running it ends too.
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
) {
    let end = read_frames(&mut receiver, &pushed, &connection, &shared, &cancel).await;
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
                let waiter = shared.waiters().by_corr.remove(&t.corr_id.as_u64());
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
