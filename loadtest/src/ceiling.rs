//! The physical ceiling: the same sessions and the same 16 KiB records over bare QUIC
//! streams, through a plain in-process forwarder with no Noise, no storage and no
//! scheduling.
//!
//! This module owns the forwarder and the ceiling's client halves. It uses the relay's QUIC
//! settings ([`sotto_transport::server_config`] / `client_config`, padding and MTU
//! included), so the only differences from a relay run are the work a relay does per
//! record: Noise, parsing, signatures, the durable store, the delay, ACKs.
//!
//! # Wire format (every record is exactly [`FRAME_LEN`] bytes, zero-padded)
//!
//! - hello (first record of each stream, client → forwarder): `role u8` (1 sender,
//!   2 receiver), `index u32`;
//! - data (sender → forwarder → receiver): `queue u32, seq u64, len u16, body[len]`;
//! - ok (forwarder → sender) and ack (receiver → forwarder): `count u16, seq u64 × count`
//!   (greedily batched).
//!
//! The forwarder routes a data record for queue `q` to receiver `q mod receivers` — the
//! assignment the relay runs use — and answers the sender with the sequence number.
//! Receivers acknowledge what they receive with ack records, which the forwarder reads and
//! discards: relay receivers send an ACK per message too, and it keeps every connection's
//! traffic ack-eliciting in both directions. (A receiver that only ever sends QUIC ACKs,
//! padded to the MTU, stalls for ~10 s at a time under bulk load — the padding stall
//! described in `sotto_transport::transport`; measured here before this was added.)
//!
//! # Bounds
//!
//! Per receiver, [`ROUTE_QUEUE`] records (4 MiB) wait for its stream; per sender (and per
//! receiver, for acks), [`OK_QUEUE`] sequence numbers (32 KiB) wait for a record; a sender's
//! reads stop while
//! its receiver's queue is full, so QUIC flow control pushes back on the sender.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use sotto_protocol::FRAME_LEN;
use sotto_transport::{self as transport, QuicOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Records waiting for one receiver's stream (≤ 256 × 16 KiB = 4 MiB).
pub const ROUTE_QUEUE: usize = 256;

/// Sequence numbers waiting for one sender's OK record.
pub const OK_QUEUE: usize = 4096;

/// Records a ceiling sender queues for its stream (≤ 64 × 16 KiB = 1 MiB).
pub const SEND_QUEUE: usize = 64;

/// Bytes before the body in a data record.
pub const DATA_HEADER: usize = 4 + 8 + 2;

/// Largest body a data record carries.
pub const MAX_DATA_BODY: usize = FRAME_LEN - DATA_HEADER;

const ROLE_SENDER: u8 = 1;
const ROLE_RECEIVER: u8 = 2;

/// Most sequence numbers one OK record carries.
const OK_PER_RECORD: usize = (FRAME_LEN - 2) / 8;

/// How long a ceiling SEND waits for its OK.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);

type Route = Arc<Mutex<Vec<Option<mpsc::Sender<Vec<u8>>>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single inserts/removals: a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The in-process plain forwarder.
#[derive(Debug)]
pub struct Forwarder {
    /// Where it listens (UDP, loopback).
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    cancel: CancellationToken,
    tracker: TaskTracker,
    registered: watch::Receiver<u32>,
}

impl Forwarder {
    /// Starts a forwarder on `127.0.0.1:0` for `receivers` receiver sessions.
    ///
    /// # Errors
    /// If the certificate, the QUIC configuration or the socket cannot be made.
    pub fn start(receivers: u32, quic: &QuicOptions) -> anyhow::Result<Self> {
        let (cert, key) = transport::self_signed_cert("localhost")?;
        let config = transport::server_config(cert, key, quic)?;
        let endpoint = quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("cannot bind the ceiling forwarder")?;
        let addr = endpoint.local_addr()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (reg_tx, registered) = watch::channel(0u32);
        let routes: Route = Arc::new(Mutex::new(vec![None; receivers.max(1) as usize]));
        tracker.spawn(accept_loop(
            endpoint.clone(),
            routes,
            reg_tx,
            cancel.clone(),
            tracker.clone(),
        ));
        Ok(Self {
            addr,
            endpoint,
            cancel,
            tracker,
            registered,
        })
    }

    /// Waits until `n` receivers have registered.
    ///
    /// # Errors
    /// If the forwarder stopped first.
    pub async fn wait_receivers(&mut self, n: u32) -> anyhow::Result<()> {
        self.registered
            .wait_for(|&r| r >= n)
            .await
            .map(|_| ())
            .map_err(|_| anyhow::anyhow!("the ceiling forwarder stopped"))
    }

    /// Stops the forwarder and waits for its tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.endpoint.close(0u32.into(), b"");
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    routes: Route,
    registered: watch::Sender<u32>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let registered = Arc::new(registered);
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let (routes, registered, cancel) = (routes.clone(), registered.clone(), cancel.clone());
        tracker.spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            let mut hello = vec![0u8; FRAME_LEN];
            if recv.read_exact(&mut hello).await.is_err() {
                return;
            }
            let index = u32_at(&hello, 1);
            let run = async {
                match hello.first() {
                    Some(&ROLE_RECEIVER) => {
                        serve_receiver(send, recv, index, &routes, &registered).await;
                    }
                    Some(&ROLE_SENDER) => serve_sender(send, recv, &routes).await,
                    _ => {}
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                () = run => {}
            }
            conn.close(0u32.into(), b"");
        });
    }
}

async fn serve_receiver(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    index: u32,
    routes: &Route,
    registered: &watch::Sender<u32>,
) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(ROUTE_QUEUE);
    {
        let mut r = lock(routes);
        let Some(slot) = r.get_mut(index as usize) else {
            return;
        };
        *slot = Some(tx);
    }
    registered.send_modify(|n| *n += 1);
    let forward = async move {
        while let Some(frame) = rx.recv().await {
            if send.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    };
    // Ack records from the receiver are read and discarded.
    let discard = async move {
        let mut frame = vec![0u8; FRAME_LEN];
        while recv.read_exact(&mut frame).await.is_ok() {}
    };
    tokio::join!(forward, discard);
}

async fn serve_sender(mut send: quinn::SendStream, mut recv: quinn::RecvStream, routes: &Route) {
    let (ok_tx, mut ok_rx) = mpsc::channel::<u64>(OK_QUEUE);
    let oks = async move {
        while let Some(first) = ok_rx.recv().await {
            let mut seqs = vec![first];
            while seqs.len() < OK_PER_RECORD {
                match ok_rx.try_recv() {
                    Ok(s) => seqs.push(s),
                    Err(_) => break,
                }
            }
            if send.write_all(&ok_record(&seqs)).await.is_err() {
                break;
            }
        }
    };
    let forward = async move {
        let receivers = lock(routes).len().max(1) as u32;
        loop {
            let mut frame = vec![0u8; FRAME_LEN];
            if recv.read_exact(&mut frame).await.is_err() {
                break;
            }
            let queue = u32_at(&frame, 0);
            let seq = u64_at(&frame, 4);
            let route = lock(routes)
                .get((queue % receivers) as usize)
                .cloned()
                .flatten();
            if let Some(route) = route
                && route.send(frame).await.is_err()
            {
                break;
            }
            if ok_tx.send(seq).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(oks, forward);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn hello_record(role: u8, index: u32) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    f[0] = role;
    f[1..5].copy_from_slice(&index.to_le_bytes());
    f
}

fn ok_record(seqs: &[u64]) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    let n = seqs.len().min(OK_PER_RECORD);
    f[..2].copy_from_slice(&(n as u16).to_le_bytes());
    for (i, s) in seqs.iter().take(n).enumerate() {
        f[2 + 8 * i..10 + 8 * i].copy_from_slice(&s.to_le_bytes());
    }
    f
}

/// Builds a data record.
///
/// # Errors
/// A body longer than [`MAX_DATA_BODY`].
pub fn data_record(queue: u32, seq: u64, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    if body.len() > MAX_DATA_BODY {
        bail!("body of {} bytes does not fit a record", body.len());
    }
    let mut f = vec![0u8; FRAME_LEN];
    f[..4].copy_from_slice(&queue.to_le_bytes());
    f[4..12].copy_from_slice(&seq.to_le_bytes());
    f[12..14].copy_from_slice(&(body.len() as u16).to_le_bytes());
    f[DATA_HEADER..DATA_HEADER + body.len()].copy_from_slice(body);
    Ok(f)
}

/// Parses a data record into `(queue, body)`; `None` if its length field is impossible.
pub fn parse_data(frame: &[u8]) -> Option<(u32, &[u8])> {
    let len = usize::from(u16::from_le_bytes([*frame.get(12)?, *frame.get(13)?]));
    Some((u32_at(frame, 0), frame.get(DATA_HEADER..DATA_HEADER + len)?))
}

/// A client connection to the forwarder: the endpoint, the connection and its stream.
#[derive(Debug)]
pub struct CeilingConnection {
    /// Its own UDP endpoint (one socket per session, as in relay runs).
    pub endpoint: quinn::Endpoint,
    /// The QUIC connection (for datagram counters).
    pub connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// Connects to the forwarder as a sender (`receiver = false`) or receiver, with `index`.
///
/// # Errors
/// If the connection or the stream cannot be opened.
pub async fn connect(
    addr: SocketAddr,
    quic: &QuicOptions,
    receiver: bool,
    index: u32,
) -> anyhow::Result<CeilingConnection> {
    let endpoint = transport::client_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), quic)?;
    let connection = endpoint
        .connect(addr, "127.0.0.1")?
        .await
        .context("cannot connect to the ceiling forwarder")?;
    let (mut send, recv) = connection.open_bi().await?;
    let role = if receiver { ROLE_RECEIVER } else { ROLE_SENDER };
    send.write_all(&hello_record(role, index)).await?;
    Ok(CeilingConnection {
        endpoint,
        connection,
        send,
        recv,
    })
}

/// Reads data records from a receiver connection until it ends, calling `on_data` for each
/// and acknowledging each with an ack record (batched greedily).
pub async fn receive(conn: CeilingConnection, mut on_data: impl FnMut(u32, &[u8])) {
    let CeilingConnection {
        mut send, mut recv, ..
    } = conn;
    let (ack_tx, mut ack_rx) = mpsc::channel::<u64>(OK_QUEUE);
    let acks = tokio::spawn(async move {
        while let Some(first) = ack_rx.recv().await {
            let mut seqs = vec![first];
            while seqs.len() < OK_PER_RECORD {
                match ack_rx.try_recv() {
                    Ok(s) => seqs.push(s),
                    Err(_) => break,
                }
            }
            if send.write_all(&ok_record(&seqs)).await.is_err() {
                break;
            }
        }
    });
    loop {
        let mut frame = vec![0u8; FRAME_LEN];
        if recv.read_exact(&mut frame).await.is_err() {
            break;
        }
        match parse_data(&frame) {
            Some((queue, body)) => on_data(queue, body),
            None => on_data(u32::MAX, &[]),
        }
        if ack_tx.send(u64_at(&frame, 4)).await.is_err() {
            break;
        }
    }
    drop(ack_tx);
    let _ = acks.await;
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// The sending half of a ceiling sender session: queues data records and resolves each
/// SEND when its OK arrives.
#[derive(Debug, Clone)]
pub struct CeilingSender {
    out: mpsc::Sender<Vec<u8>>,
    waiters: Waiters,
    /// The QUIC connection.
    pub connection: quinn::Connection,
}

impl CeilingSender {
    /// Starts the writer and reader tasks of a sender connection; they end when the
    /// connection closes.
    pub fn start(conn: CeilingConnection) -> Self {
        let CeilingConnection {
            connection,
            mut send,
            mut recv,
            endpoint: _,
        } = conn;
        let (out, mut rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
        let waiters: Waiters = Arc::default();
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if send.write_all(&f).await.is_err() {
                    break;
                }
            }
        });
        let w = waiters.clone();
        tokio::spawn(async move {
            loop {
                let mut frame = vec![0u8; FRAME_LEN];
                if recv.read_exact(&mut frame).await.is_err() {
                    break;
                }
                let n = usize::from(u16::from_le_bytes([frame[0], frame[1]])).min(OK_PER_RECORD);
                let mut w = lock(&w);
                for i in 0..n {
                    if let Some(tx) = w.remove(&u64_at(&frame, 2 + 8 * i)) {
                        let _ = tx.send(());
                    }
                }
            }
            lock(&w).clear();
        });
        Self {
            out,
            waiters,
            connection,
        }
    }

    /// Sends one data record and waits for its OK.
    ///
    /// # Errors
    /// A body that does not fit, a closed connection, or no OK within 20 s.
    pub async fn send(&self, queue: u32, seq: u64, body: &[u8]) -> anyhow::Result<()> {
        let record = data_record(queue, seq, body)?;
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(seq, tx);
        let result = tokio::time::timeout(SEND_TIMEOUT, async {
            self.out
                .send(record)
                .await
                .map_err(|_| anyhow::anyhow!("ceiling connection closed"))?;
            rx.await
                .map_err(|_| anyhow::anyhow!("ceiling connection closed"))
        })
        .await;
        lock(&self.waiters).remove(&seq);
        result.map_err(|_| anyhow::anyhow!("no OK from the ceiling forwarder in time"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = data_record(7, 99, b"hello").unwrap();
        assert_eq!(r.len(), FRAME_LEN);
        assert_eq!(parse_data(&r), Some((7, &b"hello"[..])));
        assert!(data_record(0, 0, &vec![0; MAX_DATA_BODY + 1]).is_err());
        const { assert!(MAX_DATA_BODY >= sotto_protocol::MAX_BODY) };
        let mut bad = r.clone();
        bad[12] = 0xff;
        bad[13] = 0xff;
        assert_eq!(parse_data(&bad), None);
        let ok = ok_record(&[1, 2, 3]);
        assert_eq!(ok.len(), FRAME_LEN);
        assert_eq!(u64_at(&ok, 2 + 8 * 2), 3);
        assert_eq!(hello_record(ROLE_RECEIVER, 5)[0], ROLE_RECEIVER);
    }
}
