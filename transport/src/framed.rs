//! [`FramedConnection`]: an established session's fixed-size encrypted records.
//!
//! Owns the two halves of a session after the handshake — [`FrameSender`] encrypts and
//! writes [`FRAME_LEN`]-byte records, [`FrameReceiver`] reads and decrypts them — over either
//! byte pipe (the private [`Writer`]/[`Reader`] enums hide QUIC streams and TLS halves). It
//! does not know what frames contain ([`sotto_protocol::frame`]) and keeps no state beyond
//! the two ciphers.

use std::time::Duration;

use sotto_protocol::{FRAME_LEN, FRAME_PLAINTEXT_LEN, RecvCipher, SendCipher, Session};

use crate::TransportError;
use crate::link::Link;
use crate::tcp;

/// An established session: the connection, the two halves of its record stream and the
/// Noise handshake hash (which signed commands bind).
#[derive(Debug)]
pub struct FramedConnection {
    /// The connection (for closing it, its stats, or waiting for it to close).
    pub connection: Link,
    /// Writes encrypted records.
    pub sender: FrameSender,
    /// Reads and decrypts records.
    pub receiver: FrameReceiver,
    /// The Noise handshake hash, identical on both ends and unique per session.
    pub handshake_hash: [u8; 32],
}

impl FramedConnection {
    pub(crate) fn new(writer: Writer, reader: Reader, connection: Link, session: Session) -> Self {
        FramedConnection {
            sender: FrameSender {
                writer,
                cipher: session.send,
            },
            receiver: FrameReceiver {
                reader,
                cipher: session.recv,
                connection: connection.clone(),
                record_timeout: None,
            },
            connection,
            handshake_hash: session.handshake_hash,
        }
    }
}

/// The sending byte pipe of a session.
pub(crate) enum Writer {
    Quic(quinn::SendStream),
    Tcp(tcp::TcpWriter),
}

impl Writer {
    /// Writes one whole record (waits while the send buffer is full).
    pub(crate) async fn write_record(&mut self, record: &[u8]) -> Result<(), TransportError> {
        match self {
            Writer::Quic(s) => s
                .write_all(record)
                .await
                .map_err(TransportError::from_write),
            Writer::Tcp(w) => w.write_record(record).await,
        }
    }

    pub(crate) fn finish(&mut self) -> Result<(), TransportError> {
        match self {
            Writer::Quic(s) => s.finish().map_err(|_| TransportError::Closed),
            Writer::Tcp(w) => w.finish(),
        }
    }

    pub(crate) async fn shutdown(&mut self) -> Result<(), TransportError> {
        match self {
            Writer::Quic(s) => {
                s.finish().map_err(|_| TransportError::Closed)?;
                // Until the peer has acknowledged every byte of the stream: a QUIC close
                // discards stream data not yet delivered, so closing right after `finish`
                // could lose the last answers (`docs/protocol.md` § 4, orderly close). Ends
                // early if the connection goes away; callers bound the wait.
                let _ = s.stopped().await;
                Ok(())
            }
            Writer::Tcp(w) => w.shutdown().await,
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Writer::Quic(s) => f.debug_tuple("Quic").field(s).finish(),
            Writer::Tcp(_) => f.write_str("Tcp"),
        }
    }
}

/// The receiving byte pipe of a session.
pub(crate) enum Reader {
    Quic(quinn::RecvStream),
    Tcp(tcp::TcpReader),
}

impl Reader {
    /// Reads exactly one record into `buf`. `Ok(false)` on an orderly end before the first
    /// byte.
    pub(crate) async fn read_record(&mut self, buf: &mut [u8]) -> Result<bool, TransportError> {
        match self {
            Reader::Quic(stream) => match stream.read_exact(buf).await {
                Ok(()) => Ok(true),
                Err(quinn::ReadExactError::FinishedEarly(0)) => Ok(false),
                Err(quinn::ReadExactError::FinishedEarly(n)) => {
                    Err(TransportError::TruncatedRecord(n))
                }
                Err(quinn::ReadExactError::ReadError(e)) => Err(TransportError::from_read(e)),
            },
            Reader::Tcp(r) => r.read_record(buf).await,
        }
    }

    /// Reads one record into a buffer that is allocated only once the record's first bytes
    /// have arrived, so that a session waiting for its peer holds no record buffer (16 KiB
    /// of an idle relay session's ≈ 72 KiB, measured with 10 000 idle sessions; see
    /// `docs/benchmarks.md`). `Ok(None)` on an orderly end before the first byte.
    ///
    /// With `rest_within`, the rest of a record must arrive within that time of its first
    /// bytes, else [`TransportError::RecordTimeout`].
    async fn read_record_owned(
        &mut self,
        rest_within: Option<Duration>,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        match self {
            Reader::Quic(stream) => {
                let first = match stream.read_chunk(FRAME_LEN, true).await {
                    Ok(Some(chunk)) => chunk.bytes,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(TransportError::from_read(e)),
                };
                let n = first.len();
                let mut buf = vec![0u8; FRAME_LEN];
                // `read_chunk` returns at most `FRAME_LEN` bytes, so both slices exist.
                let (head, rest) = buf.split_at_mut(n.min(FRAME_LEN));
                head.copy_from_slice(first.get(..head.len()).unwrap_or_default());
                drop(first);
                match rest_of_record(rest_within, n, stream.read_exact(rest)).await? {
                    Ok(()) => Ok(Some(buf)),
                    Err(quinn::ReadExactError::FinishedEarly(k)) => {
                        Err(TransportError::TruncatedRecord(n + k))
                    }
                    Err(quinn::ReadExactError::ReadError(e)) => Err(TransportError::from_read(e)),
                }
            }
            Reader::Tcp(r) => {
                let mut first = [0u8; 1];
                if !r.read_record(&mut first).await? {
                    return Ok(None);
                }
                let mut buf = vec![0u8; FRAME_LEN];
                let [b0] = first;
                if let Some(b) = buf.first_mut() {
                    *b = b0;
                }
                rest_of_record(rest_within, 1, r.fill(&mut buf, 1)).await??;
                Ok(Some(buf))
            }
        }
    }

    /// Waits until the peer ends the connection (after a decoy message 2).
    pub(crate) async fn wait_for_peer_close(&mut self, link: &Link) {
        match self {
            Reader::Quic(_) => link.closed().await,
            Reader::Tcp(r) => {
                let mut scratch = vec![0u8; FRAME_LEN];
                while let Ok(true) = r.read_record(&mut scratch).await {}
            }
        }
    }
}

/// `read` (the rest of a record whose first `filled` bytes arrived), within `within` if
/// given: past it, [`TransportError::RecordTimeout`].
async fn rest_of_record<T>(
    within: Option<Duration>,
    filled: usize,
    read: impl Future<Output = T>,
) -> Result<T, TransportError> {
    match within {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| TransportError::RecordTimeout(filled)),
        None => Ok(read.await),
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reader::Quic(s) => f.debug_tuple("Quic").field(s).finish(),
            Reader::Tcp(_) => f.write_str("Tcp"),
        }
    }
}

/// Sending half of a session: encrypts frames and writes them as [`FRAME_LEN`]-byte records.
#[derive(Debug)]
pub struct FrameSender {
    writer: Writer,
    cipher: SendCipher,
}

impl FrameSender {
    /// Encrypts `plaintext` (exactly [`FRAME_PLAINTEXT_LEN`] bytes, e.g. from
    /// [`sotto_protocol::FrameBuilder::finish`]) and writes the [`FRAME_LEN`]-byte record.
    ///
    /// Waits while the connection's send buffer is full (backpressure).
    ///
    /// # Errors
    /// [`TransportError::FrameLength`] for a wrong-sized plaintext (nothing is written),
    /// [`TransportError::Record`] if the nonce counter is exhausted,
    /// [`TransportError::Closed`] / [`TransportError::ConnectionLost`] /
    /// [`TransportError::Lost`] when the connection is gone.
    pub async fn send_frame(&mut self, plaintext: Vec<u8>) -> Result<(), TransportError> {
        if plaintext.len() != FRAME_PLAINTEXT_LEN {
            return Err(TransportError::FrameLength(plaintext.len()));
        }
        let mut buf = plaintext;
        self.cipher
            .encrypt_in_place(&mut buf)
            .map_err(TransportError::Record)?;
        debug_assert_eq!(buf.len(), FRAME_LEN);
        self.writer.write_record(&buf).await
    }

    /// Ends the stream after the records written so far (the peer's
    /// [`FrameReceiver::recv_frame`] then returns `Ok(None)`). Synchronous: over TCP the
    /// TLS `close_notify` is sent by a background task; prefer [`FrameSender::shutdown`]
    /// where the caller can wait.
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the stream was already finished or reset.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.writer.finish()
    }

    /// As [`FrameSender::finish`], and waits until the end of the stream has been handed to
    /// the network (over QUIC: every byte of the stream acknowledged by the peer; over TCP:
    /// `close_notify` written and the sending direction shut down), so that closing the
    /// [`Link`] right after it cannot cut it off. The wait lasts until the connection ends
    /// if the peer never acknowledges: callers bound it.
    ///
    /// # Errors
    /// As [`FrameSender::finish`], or a write error.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.writer.shutdown().await
    }
}

/// Receiving half of a session: reads [`FRAME_LEN`]-byte records and decrypts them.
#[derive(Debug)]
pub struct FrameReceiver {
    reader: Reader,
    cipher: RecvCipher,
    connection: Link,
    record_timeout: Option<Duration>,
}

impl FrameReceiver {
    /// Bounds how long the rest of a record may take once its first bytes arrived (`None`,
    /// the default: unbounded). A peer that starts a record and stalls then gets
    /// [`TransportError::RecordTimeout`] and the connection is closed with
    /// [`CLOSE_PROTOCOL`](crate::CLOSE_PROTOCOL): a relay uses it so that a session cannot
    /// hold its place, and a record buffer, by sending part of a record.
    pub fn set_record_timeout(&mut self, timeout: Option<Duration>) {
        self.record_timeout = timeout;
    }

    /// Reads exactly one record and returns its [`FRAME_PLAINTEXT_LEN`]-byte plaintext;
    /// `Ok(None)` when the peer finished the stream at a record boundary.
    ///
    /// Cancel-safety: not cancel-safe (a cancelled call may have consumed part of a record);
    /// drive it from one task.
    ///
    /// # Errors
    /// [`TransportError::TruncatedRecord`] if the stream ends inside a record,
    /// [`TransportError::Record`] if a record fails to decrypt — both close the connection
    /// with [`CLOSE_PROTOCOL`](crate::CLOSE_PROTOCOL), as the protocol requires; [`TransportError::Closed`] /
    /// [`TransportError::ConnectionLost`] / [`TransportError::Lost`] when the connection is
    /// gone.
    pub async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let mut buf = match self.reader.read_record_owned(self.record_timeout).await {
            Ok(Some(buf)) => buf,
            Ok(None) => return Ok(None),
            Err(e) => {
                if matches!(
                    e,
                    TransportError::TruncatedRecord(_) | TransportError::RecordTimeout(_)
                ) {
                    self.connection.close_protocol();
                }
                return Err(e);
            }
        };
        if let Err(e) = self.cipher.decrypt_in_place(&mut buf) {
            self.connection.close_protocol();
            return Err(TransportError::Record(e));
        }
        Ok(Some(buf))
    }
}
