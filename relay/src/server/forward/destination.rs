//! The destination side of forwarding: RFWD, a request another relay forwards for its
//! client (`docs/protocol.md` § 10a.4). Opens the sealed request with this relay's static
//! key, checks its expiry and the replay memory, runs the SEND or SKEY inside with the same
//! checks and effect as in a session (`server::commands`), and seals the answer.
//!
//! What it does not: the replay memory's storage (the store's `fwd_seen` tables), or
//! forwarding onwards — an RFWD is never forwarded further, so chains and loops cannot
//! arise.

use sotto_protocol::{
    AuthPublicKey, Command, DecodeError, EntityId, ErrorCode, Response, Transmission,
};

use crate::server::Shared;
use crate::server::commands::{
    prepare_send, prepare_sender_key, simple_write, store_error, store_send,
};
use crate::server::unix_ms;
use crate::store::{WriteOp, WriteOutcome};

/// The destination's processing of RFWD, in the order of `docs/protocol.md` § 10a.4. Errors
/// before execution are returned unsealed; the inner command's answer is sealed.
pub(in crate::server) async fn execute_forwarded(
    shared: &Shared,
    session: u64,
    sealed: &[u8],
) -> Response {
    use sotto_protocol::forward::{self, ForwardError};
    let opened = match forward::open_request(&shared.key, sealed) {
        Ok(o) => o,
        Err(ForwardError::Malformed(_)) => return Response::Err(ErrorCode::Syntax),
        Err(_) => return Response::Err(ErrorCode::Auth),
    };
    let now = unix_ms() / 1000;
    if !forward::expiry_acceptable(opened.expiry, now) {
        return Response::Err(ErrorCode::Replay);
    }
    // Durably remembered before anything else happens, so a replay can have no effect even
    // across a crash.
    let op = WriteOp::RecordForward {
        ephemeral: opened.ephemeral,
        expiry: opened.expiry,
        now,
    };
    match shared.store.write(op).await {
        Ok(WriteOutcome::Done) => {}
        Ok(WriteOutcome::Replayed) => return Response::Err(ErrorCode::Replay),
        Ok(WriteOutcome::ForwardMemoryFull) => {
            tracing::warn!("replay memory of forwarded requests is full; refusing RFWD");
            return Response::Err(ErrorCode::Limited);
        }
        Ok(_) => return Response::Err(ErrorCode::Internal),
        Err(e) => return store_error(&e),
    }
    let t = &opened.transmission;
    let inner = execute_inner(shared, session, t, &opened.handshake_hash).await;
    let answer = shared.answer(t.corr_id, t.entity, &inner);
    match opened.answer_key.seal(&answer, &mut rand::rngs::OsRng) {
        Ok(sealed) => Response::FwdAnswer { sealed },
        Err(e) => {
            tracing::error!(error = %e, "cannot seal the answer to a forwarded command");
            Response::Err(ErrorCode::Internal)
        }
    }
}

/// The SEND or SKEY inside an RFWD, with the sealed request's handshake hash as the
/// signature binding.
async fn execute_inner(
    shared: &Shared,
    session: u64,
    t: &Transmission,
    hash: &[u8; 32],
) -> Response {
    let cmd = match t.decode_command() {
        Ok(c) => c,
        Err(DecodeError::TooLong { .. }) => return Response::Err(ErrorCode::Large),
        Err(_) => return Response::Err(ErrorCode::Syntax),
    };
    if matches!(cmd, Command::Send { .. } | Command::SKey { .. }) {
        shared
            .metrics
            .commands
            .with_label_values(&[cmd.name()])
            .inc();
    }
    if shared.config.log.sensitive {
        // Only with `log.sensitive`: ids identify queues (see docs/operator.md).
        tracing::debug!(
            session,
            command = cmd.name(),
            entity = %t.entity.map(|e| e.to_string()).unwrap_or_default(),
            "forwarded command"
        );
    }
    match (cmd, t.entity) {
        (Command::Send { flags, body }, Some(e)) => {
            forwarded_send(shared, t, e, flags, body, hash).await
        }
        (Command::SKey { sender_key }, Some(e)) => {
            forwarded_sender_key(shared, t, e, sender_key, hash).await
        }
        _ => Response::Err(ErrorCode::Syntax),
    }
}

/// A forwarded SEND: the same checks and effect as a SEND in a session (§ 9.2), with the
/// same work for unknown and known queues.
async fn forwarded_send(
    shared: &Shared,
    t: &Transmission,
    e: EntityId,
    flags: u8,
    body: Vec<u8>,
    hash: &[u8; 32],
) -> Response {
    match prepare_send(shared, t, e, flags, body, hash, None) {
        Ok(prepared) => store_send(shared, prepared).await,
        Err(resp) => resp,
    }
}

/// A forwarded SKEY: signed by the key it installs, over the sealed request's hash.
async fn forwarded_sender_key(
    shared: &Shared,
    t: &Transmission,
    e: EntityId,
    key: AuthPublicKey,
    hash: &[u8; 32],
) -> Response {
    match prepare_sender_key(shared, t, e, key, hash) {
        Ok(queue) => simple_write(&shared.store, WriteOp::SetSenderKey { queue, key }).await,
        Err(resp) => resp,
    }
}
