//! Property tests for every codec of the wire protocol.
//!
//! Round trips: every [`Command`] and [`Response`] variant, [`Transmission`]s, frames built
//! from random batches, relay and queue addresses. Rejections: every strict prefix of an
//! encoding is an error, random and mutated bytes never panic (and whatever decodes
//! re-encodes to the same bytes), wrong frame lengths, unknown tags, over-long fields, bad
//! and replayed signatures, and handshakes with the wrong relay key or tampered messages.
//! The `fuzz/` targets assert the same invariants on coverage-guided input.

use proptest::prelude::*;
use proptest::sample::select;
use rand::SeedableRng as _;
use rand_chacha::ChaCha20Rng;
use sotto_protocol::address::{Host, MAX_ADDRESS_LEN};
use sotto_protocol::command::{FLAG_NOTIFY, MAX_PASSWORD_LEN, MAX_SEALED_BODY, SEALED_LEN};
use sotto_protocol::keys::SIGNATURE_LEN;
use sotto_protocol::{
    AuthPublicKey, AuthSecretKey, Command, CorrId, DecodeError, DhPublicKey, EntityId, ErrorCode,
    FRAME_LEN, FRAME_PLAINTEXT_LEN, Frame, FrameBuilder, HandshakeError, Initiator, MAX_BODY,
    MessageId, QueueAddress, RecipientId, RelayAddress, RelayPublicKey, RelayStaticKey, Responder,
    Response, SenderId, Transmission,
};

/// Every tag byte a command may start with.
const COMMAND_TAGS: std::ops::RangeInclusive<u8> = 0x01..=0x0e;
/// Every tag byte a response may start with.
const RESPONSE_TAGS: [u8; 9] = [0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x8c];

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// `len` pseudo-random bytes from a seed: large fields without generating each byte.
fn expand(seed: [u8; 32], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new_keyed(&seed)
        .finalize_xof()
        .fill(&mut out);
    out
}

fn bytes_up_to(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Small values, byte by byte, including the empty one.
        proptest::collection::vec(any::<u8>(), 0..=max.min(64)),
        // Anything up to the limit, and exactly the limit.
        (any::<[u8; 32]>(), 0..=max).prop_map(|(s, n)| expand(s, n)),
        any::<[u8; 32]>().prop_map(move |s| expand(s, max)),
    ]
}

fn auth_key() -> impl Strategy<Value = AuthPublicKey> {
    any::<[u8; 32]>().prop_map(|s| AuthSecretKey::from_bytes(&s).public())
}

fn dh_key() -> impl Strategy<Value = DhPublicKey> {
    any::<[u8; 32]>().prop_map(DhPublicKey)
}

fn host() -> impl Strategy<Value = Host> {
    let label = "[a-z]([a-z0-9-]{0,61}[a-z0-9])?";
    let domain = proptest::collection::vec(label, 1..=4)
        .prop_map(|ls| ls.join("."))
        .prop_filter("DNS names are at most 253 bytes", |d| d.len() <= 253)
        .prop_map(Host::Domain);
    prop_oneof![
        domain,
        any::<[u8; 4]>().prop_map(|b| Host::Ipv4(b.into())),
        any::<[u8; 16]>().prop_map(|b| Host::Ipv6(b.into())),
    ]
}

fn relay_address() -> impl Strategy<Value = RelayAddress> {
    (
        any::<[u8; 32]>(),
        host(),
        1..=u16::MAX,
        proptest::option::of(1..=u16::MAX),
    )
        .prop_map(|(k, host, port, tcp)| RelayAddress {
            key: RelayPublicKey(k),
            host,
            port,
            tcp,
        })
}

fn flags() -> impl Strategy<Value = u8> {
    select(vec![0, FLAG_NOTIFY])
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (auth_key(), dh_key(), bytes_up_to(MAX_PASSWORD_LEN)).prop_map(|(a, d, p)| {
            Command::New {
                recipient_auth_key: a,
                recipient_dh_key: d,
                password: p,
            }
        }),
        auth_key().prop_map(|k| Command::Key { sender_key: k }),
        auth_key().prop_map(|k| Command::SKey { sender_key: k }),
        (flags(), bytes_up_to(MAX_BODY)).prop_map(|(flags, body)| Command::Send { flags, body }),
        Just(Command::Sub),
        Just(Command::Get),
        any::<[u8; 24]>().prop_map(|m| Command::Ack {
            msg_id: MessageId(m)
        }),
        Just(Command::Off),
        Just(Command::Del),
        (relay_address(), any::<[u8; 32]>()).prop_map(|(relay, s)| Command::Fwd {
            relay,
            sealed: expand(s, SEALED_LEN),
        }),
        Just(Command::Ping),
        Just(Command::Drop),
        any::<u32>().prop_map(|gap_ms| Command::Pace { gap_ms }),
        any::<[u8; 32]>().prop_map(|s| Command::RFwd {
            sealed: expand(s, SEALED_LEN),
        }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<[u8; 24]>(), any::<[u8; 24]>(), dh_key()).prop_map(|(r, s, d)| Response::Ids {
            recipient_id: RecipientId(r),
            sender_id: SenderId(s),
            relay_dh_key: d,
        }),
        Just(Response::Ok),
        (
            any::<[u8; 24]>(),
            any::<u64>(),
            flags(),
            bytes_up_to(MAX_SEALED_BODY)
        )
            .prop_map(|(m, timestamp, flags, sealed_body)| Response::Msg {
                msg_id: MessageId(m),
                timestamp,
                flags,
                sealed_body,
            }),
        Just(Response::NoMsg),
        Just(Response::End),
        Just(Response::Pong),
        select(ErrorCode::ALL.to_vec()).prop_map(Response::Err),
        any::<[u8; 32]>().prop_map(|s| Response::FwdAnswer {
            sealed: expand(s, SEALED_LEN)
        }),
        Just(Response::Drop),
    ]
}

/// Commands with small bodies: for tests that do work per byte of the encoding.
fn small_command() -> impl Strategy<Value = Command> {
    command().prop_filter("small encoding", |c| c.to_bytes().len() <= 600)
}

fn small_response() -> impl Strategy<Value = Response> {
    response().prop_filter("small encoding", |r| r.to_bytes().len() <= 600)
}

fn transmission_with(
    payload: impl Strategy<Value = Vec<u8>>,
) -> impl Strategy<Value = Transmission> {
    (
        proptest::option::of(any::<[u8; SIGNATURE_LEN]>()),
        any::<[u8; 8]>(),
        proptest::option::of(any::<[u8; 24]>()),
        payload,
    )
        .prop_map(|(signature, corr, entity, payload)| Transmission {
            signature,
            corr_id: CorrId(corr),
            entity: entity.map(EntityId),
            payload,
        })
}

fn transmission() -> impl Strategy<Value = Transmission> {
    prop_oneof![
        transmission_with(command().prop_map(|c| c.to_bytes())),
        transmission_with(response().prop_map(|r| r.to_bytes())),
    ]
}

fn small_transmission() -> impl Strategy<Value = Transmission> {
    prop_oneof![
        transmission_with(small_command().prop_map(|c| c.to_bytes())),
        transmission_with(small_response().prop_map(|r| r.to_bytes())),
    ]
}

fn encode_transmission(t: &Transmission) -> Vec<u8> {
    let mut v = Vec::new();
    t.encode(&mut v);
    v
}

/// Builds a frame greedily; returns what went in and the plaintext.
fn build_frame(ts: &[Transmission]) -> (Vec<Transmission>, Vec<u8>) {
    let mut b = FrameBuilder::new();
    let mut added = Vec::new();
    for t in ts {
        if b.push(t) {
            added.push(t.clone());
        } else {
            // Greedy: a transmission that did not fit is refused without side effects.
            assert!(!b.fits(t));
        }
    }
    assert_eq!(b.len(), added.len());
    (added, b.finish())
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn command_round_trips(c in command()) {
        let bytes = c.to_bytes();
        prop_assert_eq!(Command::decode(&bytes), Ok(c.clone()));
        prop_assert!(c.validate().is_ok());
        // Every command, even a maximal one, fits one frame when signed and addressed.
        let t = Transmission {
            signature: Some([0; SIGNATURE_LEN]),
            corr_id: CorrId::from_u64(1),
            entity: Some(EntityId([0; 24])),
            payload: bytes,
        };
        prop_assert!(FrameBuilder::fits_empty(&t));
    }

    #[test]
    fn response_round_trips(r in response()) {
        let bytes = r.to_bytes();
        prop_assert_eq!(Response::decode(&bytes), Ok(r));
        let t = Transmission { signature: None, corr_id: CorrId::NONE, entity: Some(EntityId([0; 24])), payload: bytes };
        prop_assert!(FrameBuilder::fits_empty(&t));
    }

    #[test]
    fn transmission_round_trips(t in transmission()) {
        let bytes = encode_transmission(&t);
        prop_assert_eq!(bytes.len(), t.encoded_len());
        prop_assert_eq!(Transmission::decode(&bytes), Ok(t));
    }

    #[test]
    fn frames_of_random_batches_round_trip(ts in proptest::collection::vec(small_transmission(), 0..80)) {
        let (added, plaintext) = build_frame(&ts);
        prop_assert_eq!(plaintext.len(), FRAME_PLAINTEXT_LEN);
        let used: usize = 2 + added.iter().map(|t| 2 + t.encoded_len()).sum::<usize>();
        prop_assert!(plaintext[used..].iter().all(|b| *b == 0));
        prop_assert_eq!(Frame::decode(&plaintext), Ok(added));
    }

    #[test]
    fn frames_of_large_transmissions_round_trip(ts in proptest::collection::vec(transmission(), 1..4)) {
        let (added, plaintext) = build_frame(&ts);
        prop_assert!(!added.is_empty(), "the first transmission always fits an empty frame");
        prop_assert_eq!(Frame::decode(&plaintext), Ok(added));
    }

    #[test]
    fn relay_addresses_round_trip(a in relay_address()) {
        let text = a.to_string();
        prop_assert!(text.len() <= MAX_ADDRESS_LEN);
        prop_assert_eq!(text.parse::<RelayAddress>(), Ok(a.clone()));
        // A canonical address is also accepted with its default port spelled out.
        if a.port == sotto_protocol::DEFAULT_PORT {
            let (base, hint) = text.split_at(text.find('?').unwrap_or(text.len()));
            let explicit = format!("{base}:{}{hint}", a.port);
            prop_assert_eq!(explicit.parse::<RelayAddress>(), Ok(a));
        }
    }

    #[test]
    fn queue_addresses_round_trip(a in relay_address(), id in any::<[u8; 24]>()) {
        let q = QueueAddress { relay: a, sender_id: SenderId(id) };
        prop_assert_eq!(q.to_string().parse::<QueueAddress>(), Ok(q));
    }

    #[test]
    fn ids_round_trip_through_text(id in any::<[u8; 24]>()) {
        let r = RecipientId(id);
        prop_assert_eq!(r.to_string().len(), 32);
        prop_assert_eq!(r.to_string().parse::<RecipientId>(), Ok(r));
    }
}

// ---------------------------------------------------------------------------------------
// Rejections: truncation, random and mutated input
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn every_strict_prefix_of_a_command_is_an_error(c in small_command()) {
        let bytes = c.to_bytes();
        for n in 0..bytes.len() {
            prop_assert!(Command::decode(&bytes[..n]).is_err(), "prefix {} of {}", n, c.name());
        }
    }

    #[test]
    fn every_strict_prefix_of_a_response_is_an_error(r in small_response()) {
        let bytes = r.to_bytes();
        for n in 0..bytes.len() {
            prop_assert!(Response::decode(&bytes[..n]).is_err(), "prefix {} of {}", n, r.name());
        }
    }

    #[test]
    fn every_strict_prefix_of_a_transmission_fails(c in small_command(), signed in any::<bool>(), entity in any::<bool>()) {
        let t = Transmission {
            signature: signed.then_some([7; SIGNATURE_LEN]),
            corr_id: CorrId::from_u64(9),
            entity: entity.then_some(EntityId([3; 24])),
            payload: c.to_bytes(),
        };
        let bytes = encode_transmission(&t);
        for n in 0..bytes.len() {
            // The transmission header may still parse; its payload then cannot.
            let r = Transmission::decode(&bytes[..n]).and_then(|t| t.decode_command());
            prop_assert!(r.is_err(), "prefix {}", n);
        }
    }

    #[test]
    fn random_bytes_never_panic_and_decodes_reencode(
        tag in prop_oneof![COMMAND_TAGS.prop_map(Some), select(RESPONSE_TAGS.to_vec()).prop_map(Some), Just(None)],
        mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        if let Some(t) = tag {
            bytes.insert(0, t);
        }
        if let Ok(c) = Command::decode(&bytes) {
            prop_assert_eq!(c.to_bytes(), bytes.clone());
        }
        if let Ok(r) = Response::decode(&bytes) {
            prop_assert_eq!(r.to_bytes(), bytes.clone());
        }
        if let Ok(t) = Transmission::decode(&bytes) {
            prop_assert_eq!(encode_transmission(&t), bytes.clone());
        }
    }

    #[test]
    fn mutated_encodings_never_panic_and_decodes_reencode(
        t in small_transmission(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let (_, mut frame) = build_frame(&[t]);
        // Mutate only the count, the length prefix and the transmission, not the padding.
        let content = 4 + frame[2..4].iter().fold(0usize, |a, b| a * 256 + usize::from(*b));
        for (i, v) in edits {
            let i = i.index(content);
            frame[i] = v;
        }
        if let Ok(ts) = Frame::decode(&frame) {
            let (added, again) = build_frame(&ts);
            prop_assert_eq!(added.len(), ts.len());
            prop_assert_eq!(again, frame);
            for t in ts {
                if let Ok(c) = t.decode_command() {
                    prop_assert_eq!(c.to_bytes(), t.payload.clone());
                }
                if let Ok(r) = t.decode_response() {
                    prop_assert_eq!(r.to_bytes(), t.payload.clone());
                }
            }
        }
    }

    #[test]
    fn random_frames_never_panic(seed in any::<[u8; 32]>(), count in 0u16..4, zero_tail in any::<bool>()) {
        let mut p = expand(seed, FRAME_PLAINTEXT_LEN);
        p[..2].copy_from_slice(&count.to_be_bytes());
        if zero_tail {
            p[200..].fill(0);
        }
        if let Ok(ts) = Frame::decode(&p) {
            prop_assert_eq!(build_frame(&ts).1, p);
        }
    }

    #[test]
    fn arbitrary_strings_never_panic_and_parses_are_canonical(
        s in prop_oneof![
            "\\PC{0,80}",
            "sotto://[A-Za-z0-9_=-]{40,45}@[a-zA-Z0-9.:\\[\\]-]{0,40}(:[0-9+]{0,6})?(#[A-Za-z0-9_-]{30,34})?",
        ]
    ) {
        if let Ok(a) = s.parse::<RelayAddress>() {
            let text = a.to_string();
            prop_assert_eq!(text.parse::<RelayAddress>(), Ok(a.clone()));
            prop_assert_eq!(text.parse::<RelayAddress>().map(|b| b.to_string()), Ok(text));
        }
        if let Ok(q) = s.parse::<QueueAddress>() {
            prop_assert_eq!(q.to_string().parse::<QueueAddress>(), Ok(q));
        }
    }

    #[test]
    fn unknown_tags_are_rejected(t in any::<u8>(), rest in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut b = vec![t];
        b.extend_from_slice(&rest);
        if !COMMAND_TAGS.contains(&t) {
            prop_assert_eq!(Command::decode(&b), Err(DecodeError::UnknownTag(t)));
        }
        if !RESPONSE_TAGS.contains(&t) {
            prop_assert_eq!(Response::decode(&b), Err(DecodeError::UnknownTag(t)));
        }
    }

    #[test]
    fn wrong_frame_lengths_are_rejected(len in 0usize..(2 * FRAME_LEN)) {
        if len != FRAME_PLAINTEXT_LEN {
            prop_assert_eq!(Frame::decode(&vec![0; len]), Err(DecodeError::WrongFrameLength(len)));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rejections: signatures
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn any_change_to_a_signed_transmission_breaks_its_signature(
        seed in any::<[u8; 32]>(),
        hash in any::<[u8; 32]>(),
        c in small_command(),
        corr in any::<u64>(),
        entity in any::<[u8; 24]>(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let key = AuthSecretKey::from_bytes(&seed);
        let t = Transmission::signed(CorrId::from_u64(corr), Some(EntityId(entity)), &c, &key, &hash);
        prop_assert!(t.verify(&key.public(), &hash));
        let mut bytes = encode_transmission(&t);
        // Skip the signed flag (byte 0): clearing it is "unsigned", checked below.
        let i = 1 + at.index(bytes.len() - 1);
        bytes[i] ^= 1 << bit;
        if let Ok(t2) = Transmission::decode(&bytes) {
            prop_assert!(!t2.verify(&key.public(), &hash), "flipped byte {}", i);
        }
        let unsigned = Transmission { signature: None, ..t };
        prop_assert!(!unsigned.verify(&key.public(), &hash));
    }

    #[test]
    fn signatures_do_not_transfer_between_sessions_or_keys(
        seed in any::<[u8; 32]>(),
        other_seed in any::<[u8; 32]>(),
        h1 in any::<[u8; 32]>(),
        h2 in any::<[u8; 32]>(),
        c in small_command(),
    ) {
        prop_assume!(h1 != h2 && seed != other_seed);
        let key = AuthSecretKey::from_bytes(&seed);
        let t = Transmission::signed(CorrId::from_u64(1), Some(EntityId([1; 24])), &c, &key, &h1);
        prop_assert!(t.verify(&key.public(), &h1));
        prop_assert!(!t.verify(&key.public(), &h2), "replayed in another session");
        prop_assert!(!t.verify(&AuthSecretKey::from_bytes(&other_seed).public(), &h1));
    }
}

// ---------------------------------------------------------------------------------------
// Rejections: handshakes (each case costs a few ML-KEM and X25519 operations)
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn wrong_relay_key_fails_the_handshake(seed in any::<[u8; 32]>(), k1 in any::<[u8; 32]>(), k2 in any::<[u8; 32]>()) {
        let relay = RelayStaticKey::from_bytes(k1);
        let impostor = RelayStaticKey::from_bytes(k2);
        prop_assume!(relay.public() != impostor.public());
        let mut rng = ChaCha20Rng::from_seed(seed);
        let (init, m1) = Initiator::start(&relay.public(), &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // The impostor cannot read message 1 ...
        prop_assert_eq!(Responder::respond(&impostor, &m1, &mut rng).err(), Some(HandshakeError::Decrypt));
        // ... and a message 2 it makes for its own client does not complete ours.
        let (_, m1_for_impostor) = Initiator::start(&impostor.public(), &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (_, m2) = Responder::respond(&impostor, &m1_for_impostor, &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(init.finish(&m2).is_err());
    }

    #[test]
    fn tampered_handshake_messages_never_yield_a_session(
        seed in any::<[u8; 32]>(),
        at1 in any::<prop::sample::Index>(),
        at2 in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let relay = RelayStaticKey::generate(&mut rng);
        let (_, mut m1) = Initiator::start(&relay.public(), &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
        m1[at1.index(FRAME_LEN)] ^= 1 << bit;
        prop_assert!(Responder::respond(&relay, &m1, &mut rng).is_err());

        let (init, m1) = Initiator::start(&relay.public(), &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (_, mut m2) = Responder::respond(&relay, &m1, &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
        m2[at2.index(FRAME_LEN)] ^= 1 << bit;
        prop_assert!(init.finish(&m2).is_err());
    }

    #[test]
    fn garbage_handshake_messages_never_yield_a_session(seed in any::<[u8; 32]>(), len in prop_oneof![Just(FRAME_LEN), 0usize..(FRAME_LEN + 64)]) {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let relay = RelayStaticKey::generate(&mut rng);
        let garbage = expand(seed, len);
        prop_assert!(Responder::respond(&relay, &garbage, &mut rng).is_err());
        let (init, _) = Initiator::start(&relay.public(), &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(init.finish(&garbage).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// Deterministic edge cases
// ---------------------------------------------------------------------------------------

#[test]
fn over_long_fields_are_rejected_with_large_field_errors() {
    let send = Command::Send {
        flags: 0,
        body: vec![0; MAX_BODY + 1],
    };
    assert!(matches!(
        Command::decode(&send.to_bytes()),
        Err(DecodeError::TooLong { field: "body", .. })
    ));
    let new = Command::New {
        recipient_auth_key: AuthSecretKey::from_bytes(&[1; 32]).public(),
        recipient_dh_key: DhPublicKey([2; 32]),
        password: vec![b'x'; MAX_PASSWORD_LEN + 1],
    };
    assert!(matches!(
        Command::decode(&new.to_bytes()),
        Err(DecodeError::TooLong {
            field: "password",
            ..
        })
    ));
    let msg = Response::Msg {
        msg_id: MessageId([0; 24]),
        timestamp: 0,
        flags: 0,
        sealed_body: vec![0; MAX_SEALED_BODY + 1],
    };
    assert!(matches!(
        Response::decode(&msg.to_bytes()),
        Err(DecodeError::TooLong {
            field: "sealed body",
            ..
        })
    ));
    // A FWD blob of any other length than SEALED_LEN is refused (its size must not vary).
    let fwd = Command::Fwd {
        relay: "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@h"
            .parse()
            .expect("valid address"),
        sealed: vec![0; SEALED_LEN - 1],
    };
    assert!(matches!(
        Command::decode(&fwd.to_bytes()),
        Err(DecodeError::BadLength { .. })
    ));
    for len in [0, SEALED_LEN - 1] {
        let rfwd = Command::RFwd {
            sealed: vec![0; len],
        };
        assert!(matches!(
            Command::decode(&rfwd.to_bytes()),
            Err(DecodeError::BadLength { .. })
        ));
    }
    let rfwd = Command::RFwd {
        sealed: vec![0; SEALED_LEN + 1],
    };
    assert!(matches!(
        Command::decode(&rfwd.to_bytes()),
        Err(DecodeError::TooLong { .. })
    ));
}

#[test]
fn max_size_values_reject_every_truncation() {
    let send = Command::Send {
        flags: FLAG_NOTIFY,
        body: vec![0x5a; MAX_BODY],
    };
    let bytes = send.to_bytes();
    for n in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        assert!(Command::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    assert_eq!(Command::decode(&bytes), Ok(send));
}

#[test]
fn non_canonical_fwd_address_is_rejected() {
    let canonical: RelayAddress = "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@h"
        .parse()
        .expect("valid address");
    let fwd = Command::Fwd {
        relay: canonical,
        sealed: vec![0; SEALED_LEN],
    };
    let good = fwd.to_bytes();
    assert_eq!(Command::decode(&good), Ok(fwd));
    // Same address with the default port spelled out: valid text, not canonical.
    let text = format!(
        "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@h:{}",
        sotto_protocol::DEFAULT_PORT
    );
    let mut bad = vec![0x0a];
    bad.extend_from_slice(&u16::try_from(text.len()).expect("short").to_be_bytes());
    bad.extend_from_slice(text.as_bytes());
    bad.extend_from_slice(&u16::try_from(SEALED_LEN).expect("fits").to_be_bytes());
    bad.extend_from_slice(&[0; SEALED_LEN]);
    assert_eq!(
        Command::decode(&bad),
        Err(DecodeError::InvalidValue("relay address"))
    );
}

#[test]
fn the_longest_fwd_address_round_trips() {
    let host = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(host.len(), 253);
    let relay: RelayAddress =
        format!("sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@{host}:65535")
            .parse()
            .expect("valid address");
    assert!(relay.to_string().len() > 255, "needs the u16 length prefix");
    let fwd = Command::Fwd {
        relay,
        sealed: vec![1; SEALED_LEN],
    };
    assert_eq!(Command::decode(&fwd.to_bytes()), Ok(fwd.clone()));
    let t = Transmission::command(CorrId::from_u64(1), None, &fwd);
    assert!(FrameBuilder::fits_empty(&t));
    // A sealed transmission holds a signed SEND with a full body.
    let signed_send = Transmission::signed(
        CorrId::from_u64(1),
        Some(EntityId([1; 24])),
        &Command::Send {
            flags: FLAG_NOTIFY,
            body: vec![0; MAX_BODY],
        },
        &AuthSecretKey::from_bytes(&[1; 32]),
        &[0; 32],
    );
    assert!(signed_send.encoded_len() <= sotto_protocol::forward::MAX_SEALED_TRANSMISSION);
}

#[test]
fn a_transmission_that_does_not_fit_is_refused() {
    let mut b = FrameBuilder::new();
    let big = Transmission::command(
        CorrId::from_u64(1),
        Some(EntityId([0; 24])),
        &Command::Send {
            flags: 0,
            body: vec![0; MAX_BODY],
        },
    );
    assert!(b.push(&big));
    assert!(!b.push(&big), "a second maximal SEND does not fit");
    assert_eq!(b.len(), 1);
    let oversized = Transmission {
        signature: None,
        corr_id: CorrId::NONE,
        entity: None,
        payload: vec![0x0b; FRAME_PLAINTEXT_LEN],
    };
    assert!(!FrameBuilder::fits_empty(&oversized));
    assert!(!FrameBuilder::new().push(&oversized));
}

#[test]
fn records_of_the_wrong_length_are_rejected_before_cryptography() {
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let relay = RelayStaticKey::generate(&mut rng);
    let (init, m1) = Initiator::start(&relay.public(), &mut rng).expect("message 1");
    for len in [0, 1, FRAME_LEN - 1] {
        assert_eq!(
            Responder::respond(&relay, &m1[..len], &mut rng).err(),
            Some(HandshakeError::WrongLength(len))
        );
    }
    let mut long = m1.clone();
    long.push(0);
    assert_eq!(
        Responder::respond(&relay, &long, &mut rng).err(),
        Some(HandshakeError::WrongLength(FRAME_LEN + 1))
    );
    let (mut server, m2) = Responder::respond(&relay, &m1, &mut rng).expect("message 2");
    let mut client = init.finish(&m2).expect("session");
    let rec = client
        .send
        .encrypt_frame(&FrameBuilder::cover_command())
        .expect("encrypt");
    let mut long = rec.clone();
    long.push(0);
    assert_eq!(
        server.recv.decrypt_frame(&long),
        Err(HandshakeError::WrongLength(FRAME_LEN + 1))
    );
    assert_eq!(
        server.recv.decrypt_frame(&rec[..FRAME_LEN - 1]),
        Err(HandshakeError::WrongLength(FRAME_LEN - 1))
    );
}

#[test]
fn signature_verification_is_strict() {
    let key = AuthSecretKey::from_bytes(&[8; 32]);
    let hash = [6u8; 32];
    let t = Transmission::signed(CorrId::from_u64(1), None, &Command::Ping, &key, &hash);
    assert!(t.verify(&key.public(), &hash));
    // S + ℓ is the same scalar but a non-canonical encoding: refused, so that a signature
    // has exactly one valid form.
    const ELL: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut sig = t.signature.expect("signed");
    let mut carry = 0u16;
    for (s, l) in sig[32..].iter_mut().zip(ELL) {
        let v = u16::from(*s) + u16::from(l) + carry;
        *s = v as u8;
        carry = v >> 8;
    }
    let malleated = Transmission {
        signature: Some(sig),
        ..t
    };
    assert!(!malleated.verify(&key.public(), &hash));
    // The identity point is a valid encoding but a small-order key: with R = identity and
    // S = 0 the cofactorless equation holds for every message. Strict verification refuses.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = AuthPublicKey::from_bytes(&identity).expect("decodes as a point");
    let mut forged = [0u8; SIGNATURE_LEN];
    forged[0] = 1;
    let t = Transmission {
        signature: Some(forged),
        corr_id: CorrId::from_u64(1),
        entity: None,
        payload: Command::Ping.to_bytes(),
    };
    assert!(!t.verify(&weak, &hash));
}
