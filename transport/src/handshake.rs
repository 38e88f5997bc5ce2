//! The Noise handshake over an open byte pipe, both sides, and the relay's decoy answer.
//!
//! Owns the order of the two handshake records ([`FRAME_LEN`] bytes each, read whole before
//! any cryptography), mapping a message 2 that does not decrypt to
//! [`TransportError::IdentityMismatch`], and the decoy message 2 a relay sends when message 1
//! fails. The cryptography itself is [`sotto_protocol::noise`]; opening the pipe is
//! [`crate::quic`] / [`crate::tcp`].

use rand::rngs::OsRng;
use sotto_protocol::noise::KEM_CT_LEN;
use sotto_protocol::{
    FRAME_LEN, HandshakeError, Initiator, RelayPublicKey, RelayStaticKey, Responder, Session,
};

use crate::TransportError;
use crate::framed::{FramedConnection, Reader, Writer};
use crate::link::Link;

/// Client side of the Noise handshake over an open pipe.
pub(crate) async fn initiate(
    writer: &mut Writer,
    reader: &mut Reader,
    key: &RelayPublicKey,
) -> Result<Session, TransportError> {
    let (initiator, msg1) = Initiator::start(key, &mut OsRng).map_err(TransportError::Handshake)?;
    writer.write_record(&msg1).await?;
    let mut msg2 = vec![0u8; FRAME_LEN];
    if !reader.read_record(&mut msg2).await? {
        return Err(TransportError::Closed);
    }
    initiator.finish(&msg2).map_err(|e| match e {
        // Only the pinned key's holder can produce a message 2 that decrypts.
        HandshakeError::Decrypt => TransportError::IdentityMismatch,
        e => TransportError::Handshake(e),
    })
}

enum AcceptFailure {
    /// Fail and close at once.
    Plain(TransportError),
    /// A decoy message 2 was sent; wait (bounded) for the client to close.
    Decoyed(HandshakeError),
}

impl From<TransportError> for AcceptFailure {
    fn from(e: TransportError) -> Self {
        AcceptFailure::Plain(e)
    }
}

/// Relay side of the Noise handshake over an open pipe: message 1 is read whole (exactly
/// [`FRAME_LEN`] bytes) before any cryptography.
async fn respond(
    writer: &mut Writer,
    reader: &mut Reader,
    key: &RelayStaticKey,
) -> Result<Session, AcceptFailure> {
    let mut msg1 = vec![0u8; FRAME_LEN];
    if !reader.read_record(&mut msg1).await? {
        return Err(TransportError::TruncatedRecord(0).into());
    }
    match Responder::respond(key, &msg1, &mut OsRng) {
        Ok((session, msg2)) => {
            writer.write_record(&msg2).await?;
            Ok(session)
        }
        Err(e) => {
            send_decoy(writer).await;
            Err(AcceptFailure::Decoyed(e))
        }
    }
}

/// Runs [`respond`] until `deadline` and turns the outcome into a session, closing the
/// connection on failure (after letting the client read a decoy, see [`accept`]).
pub(crate) async fn respond_until(
    link: Link,
    mut writer: Writer,
    mut reader: Reader,
    key: &RelayStaticKey,
    deadline: tokio::time::Instant,
) -> Result<FramedConnection, TransportError> {
    let result = tokio::time::timeout_at(deadline, respond(&mut writer, &mut reader, key))
        .await
        .unwrap_or(Err(AcceptFailure::Plain(TransportError::Timeout)));
    match result {
        Ok(session) => Ok(FramedConnection::new(writer, reader, link, session)),
        Err(AcceptFailure::Plain(e)) => {
            link.close_protocol();
            Err(e)
        }
        Err(AcceptFailure::Decoyed(e)) => {
            // Let the client read the decoy and close first: closing now could discard it
            // before the client's application read it, and the client would see a closed
            // connection instead of a message 2 that fails to decrypt.
            let _ = tokio::time::timeout_at(deadline, reader.wait_for_peer_close(&link)).await;
            link.close_protocol();
            Err(TransportError::Handshake(e))
        }
    }
}

/// Answers a message 1 that failed (another relay key, another protocol version, garbage)
/// with random bytes shaped like a message 2. A client then fails exactly as it would
/// against an impostor — its message 2 does not decrypt — and reports
/// [`TransportError::IdentityMismatch`]; nothing else tells the two apart.
async fn send_decoy(writer: &mut Writer) {
    use rand::RngCore as _;
    let mut decoy = vec![0u8; FRAME_LEN];
    OsRng.fill_bytes(&mut decoy);
    // The ephemeral key after the KEM ciphertext is an X25519 public key, whose top bit is
    // always clear.
    if let Some(b) = decoy.get_mut(KEM_CT_LEN + 31) {
        *b &= 0x7f;
    }
    if writer.write_record(&decoy).await.is_ok() {
        let _ = writer.shutdown().await;
    }
}
