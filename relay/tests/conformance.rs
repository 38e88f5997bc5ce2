//! Conformance: what `docs/protocol.md` says a relay does, read on the wire of a real relay
//! over real QUIC. Each test is named in the document's conformance section (§ 17), and
//! each guards a rule that an implementation written from the document alone relies on.

#![allow(clippy::unwrap_used)]

mod common;

use common::raw::RawSession;
use common::*;
use sotto_protocol::{
    Command, CorrId, FRAME_LEN, FRAME_PLAINTEXT_LEN, FrameBuilder, Response, Transmission,
};

/// QUIC application error code of a protocol violation (§ 4).
const CLOSE_PROTOCOL: u64 = 1;

/// A frame plaintext holding `transmission` (already encoded, with any length prefix it
/// should have) after a count of 1, zero-padded to full length.
fn frame_with(bytes: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; FRAME_PLAINTEXT_LEN];
    p[..2].copy_from_slice(&1u16.to_be_bytes());
    p[2..2 + bytes.len()].copy_from_slice(bytes);
    p
}

/// `len ‖ transmission` for a transmission whose header fields are given raw.
fn prefixed(t: &[u8]) -> Vec<u8> {
    let mut v = (t.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(t);
    v
}

/// A PING transmission with a raw signed flag and entity length (no entity bytes beyond
/// what `entity` gives).
fn ping_header(signed: u8, entity_len: u8, entity: &[u8]) -> Vec<u8> {
    let mut t = vec![signed];
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    t.push(entity_len);
    t.extend_from_slice(entity);
    t.push(0x0b);
    t
}

/// § 4, § 7, § 8: every error at the frame or transmission-header level ends the session
/// with QUIC application error code 1, as record-level errors do; nothing is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_and_header_errors_close_with_code_1() {
    let relay = TestRelay::start().await;
    let mut padding = FrameBuilder::new();
    assert!(padding.push(&Transmission::command(
        CorrId::from_u64(1),
        None,
        &Command::Ping
    )));
    let mut padding = padding.finish();
    *padding.last_mut().unwrap() = 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // count 1, length 0xffff: runs past the end of the frame.
        ("length past the end", {
            let mut p = vec![0u8; FRAME_PLAINTEXT_LEN];
            p[..4].copy_from_slice(&[0, 1, 0xff, 0xff]);
            p
        }),
        // count 0xffff: more transmissions than the frame holds.
        ("count past the end", {
            let mut p = vec![0u8; FRAME_PLAINTEXT_LEN];
            p[..2].copy_from_slice(&[0xff, 0xff]);
            p
        }),
        ("non-zero padding", padding),
        ("signed = 2", frame_with(&prefixed(&ping_header(2, 0, &[])))),
        (
            "entity length 5",
            frame_with(&prefixed(&ping_header(0, 5, &[1, 2, 3, 4, 5]))),
        ),
        ("empty payload", {
            let mut t = ping_header(0, 0, &[]);
            t.pop();
            frame_with(&prefixed(&t))
        }),
        ("zero-length transmission", frame_with(&prefixed(&[]))),
    ];
    for (what, plaintext) in cases {
        let mut s = RawSession::open(&relay).await;
        // A PING in the same flight, before the bad frame, so that the close is not a
        // reaction to an idle session.
        s.send(&[Transmission::command(
            CorrId::from_u64(9),
            None,
            &Command::Ping,
        )])
        .await;
        s.send_plaintext(&plaintext).await;
        assert_eq!(s.close_code().await, Some(CLOSE_PROTOCOL), "{what}");
    }
    // Record level, for comparison (already so): a unit that does not decrypt, and a stream
    // that ends inside a unit.
    let mut s = RawSession::open(&relay).await;
    s.send_raw(&vec![9u8; FRAME_LEN]).await;
    assert_eq!(
        s.close_code().await,
        Some(CLOSE_PROTOCOL),
        "undecryptable unit"
    );
    let mut s = RawSession::open(&relay).await;
    s.send_raw(&[7u8; 1000]).await;
    s.finish();
    assert_eq!(
        s.close_code().await,
        Some(CLOSE_PROTOCOL),
        "stream ends inside a unit"
    );
    // The relay still serves a well-behaved session.
    let mut s = RawSession::open(&relay).await;
    let pong = s
        .request(Transmission::command(
            CorrId::from_u64(1),
            None,
            &Command::Ping,
        ))
        .await;
    assert_eq!(pong, Response::Pong);
}
