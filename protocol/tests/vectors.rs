//! The test vectors of `docs/protocol.md` are reproduced by this crate, byte for byte.
//!
//! The spec holds fenced blocks opened by ```` ```vector <name> ```` and closed by
//! ```` ``` ````. Inside, each line is `key = value`; a value is lower-case hex or a
//! double-quoted UTF-8 string; a line starting with whitespace continues the previous value;
//! `#` starts a comment line. This test recomputes every block from the same fixed inputs
//! and requires the spec to hold exactly the computed keys and values, so spec and code
//! cannot drift apart.
//!
//! To regenerate after a deliberate wire change: `SOTTO_PRINT_VECTORS=1 cargo test -p
//! sotto-protocol --test vectors -- --nocapture` prints every block in the spec's format.

use std::collections::BTreeMap;

use ml_kem::kem::Encapsulate as _;
use ml_kem::{EncapsulateDeterministic as _, EncodedSizeUser as _, KemCore as _, MlKem768};
use sotto_protocol::address::Host;
use sotto_protocol::command::{FLAG_NOTIFY, SEALED_LEN};
use sotto_protocol::forward;
use sotto_protocol::noise::{FixedInitiatorKeys, FixedResponderKeys, NOISE_PARAMS, prologue};
use sotto_protocol::seal::BodySealKey;
use sotto_protocol::transmission::{SIGNATURE_CONTEXT, signing_digest};
use sotto_protocol::{
    AuthSecretKey, Command, CorrId, DhSecretKey, EntityId, ErrorCode, FRAME_PLAINTEXT_LEN, Frame,
    FrameBuilder, Initiator, MessageId, QueueAddress, RecipientId, RelayAddress, RelayStaticKey,
    Responder, Response, SenderId, Transmission,
};

/// One vector block: ordered `(key, value)` pairs, values already in their text form.
#[derive(Default)]
struct Block(Vec<(&'static str, String)>);

impl Block {
    fn hex(&mut self, k: &'static str, v: impl AsRef<[u8]>) -> &mut Self {
        self.0.push((k, hex::encode(v)));
        self
    }

    fn text(&mut self, k: &'static str, v: impl std::fmt::Display) -> &mut Self {
        self.0.push((k, format!("\"{v}\"")));
        self
    }

    fn blake3(&mut self, k: &'static str, v: &[u8]) -> &mut Self {
        self.hex(k, blake3::hash(v).as_bytes())
    }
}

/// `n` bytes counting up from `start` (wrapping): recognisable fixed inputs.
fn seq<const N: usize>(start: u8) -> [u8; N] {
    let mut b = [0u8; N];
    for (i, x) in b.iter_mut().enumerate() {
        *x = start.wrapping_add(i as u8);
    }
    b
}

fn relay_key() -> RelayStaticKey {
    RelayStaticKey::from_bytes(seq(0x00))
}

fn recipient_auth() -> AuthSecretKey {
    AuthSecretKey::from_bytes(&seq(0xc0))
}

fn sender_auth() -> AuthSecretKey {
    AuthSecretKey::from_bytes(&seq(0xe0))
}

fn relay_queue_dh() -> DhSecretKey {
    DhSecretKey::from_bytes(seq(0x50))
}

fn recipient_dh() -> DhSecretKey {
    DhSecretKey::from_bytes(seq(0x70))
}

fn recipient_id() -> RecipientId {
    RecipientId(seq(0x01))
}

fn sender_id() -> SenderId {
    SenderId(seq(0x31))
}

fn message_id() -> MessageId {
    MessageId(seq(0x91))
}

fn addresses() -> Block {
    let relay = relay_key();
    let mut b = Block::default();
    b.hex("relay_static_secret", relay.secret_bytes())
        .hex("relay_public", relay.public().as_bytes());
    let a = RelayAddress {
        key: relay.public(),
        host: "relay.example.org".parse().expect("valid host"),
        port: sotto_protocol::DEFAULT_PORT,
        tcp: None,
    };
    b.text("address_default_port", &a);
    let a6 = RelayAddress {
        key: relay.public(),
        host: Host::Ipv6("2001:db8::1".parse().expect("valid IPv6")),
        port: 7000,
        tcp: None,
    };
    b.text("address_ipv6_port_7000", &a6);
    let tcp_same = RelayAddress {
        tcp: Some(sotto_protocol::DEFAULT_PORT),
        ..a.clone()
    };
    b.text("address_tcp_same_port", &tcp_same);
    let tcp_other = RelayAddress {
        tcp: Some(443),
        ..a6.clone()
    };
    b.text("address_tcp_port_443", &tcp_other);
    let q = QueueAddress {
        relay: a,
        sender_id: sender_id(),
    };
    b.hex("sender_id", sender_id().as_bytes())
        .text("sender_id_text", sender_id())
        .text("queue_address", &q);
    b
}

fn commands() -> Block {
    let mut b = Block::default();
    b.hex("recipient_auth_seed", *recipient_auth().to_bytes())
        .hex(
            "recipient_auth_public",
            recipient_auth().public().to_bytes(),
        )
        .hex("recipient_dh_secret", *recipient_dh().to_bytes())
        .hex("recipient_dh_public", recipient_dh().public().as_bytes())
        .hex("sender_auth_seed", *sender_auth().to_bytes())
        .hex("sender_auth_public", sender_auth().public().to_bytes())
        .hex("relay_queue_dh_secret", *relay_queue_dh().to_bytes())
        .hex(
            "relay_queue_dh_public",
            relay_queue_dh().public().as_bytes(),
        )
        .hex("recipient_id", recipient_id().as_bytes())
        .hex("sender_id", sender_id().as_bytes())
        .hex("msg_id", message_id().as_bytes());
    let new = |password: &[u8]| Command::New {
        recipient_auth_key: recipient_auth().public(),
        recipient_dh_key: recipient_dh().public(),
        password: password.to_vec(),
    };
    let cmds: [(&'static str, Command); 13] = [
        ("cmd_new", new(b"")),
        ("cmd_new_password_hunter2", new(b"hunter2")),
        (
            "cmd_key",
            Command::Key {
                sender_key: sender_auth().public(),
            },
        ),
        (
            "cmd_skey",
            Command::SKey {
                sender_key: sender_auth().public(),
            },
        ),
        (
            "cmd_send_notify_hello",
            Command::Send {
                flags: FLAG_NOTIFY,
                body: b"hello".to_vec(),
            },
        ),
        ("cmd_sub", Command::Sub),
        ("cmd_get", Command::Get),
        (
            "cmd_ack",
            Command::Ack {
                msg_id: message_id(),
            },
        ),
        ("cmd_off", Command::Off),
        ("cmd_del", Command::Del),
        ("cmd_ping", Command::Ping),
        ("cmd_drop", Command::Drop),
        ("cmd_pace_100s", Command::Pace { gap_ms: 100_000 }),
    ];
    for (k, c) in cmds {
        let bytes = c.to_bytes();
        assert_eq!(Command::decode(&bytes).as_ref(), Ok(&c), "{k} round trip");
        b.hex(k, bytes);
    }
    let resps: [(&'static str, Response); 11] = [
        (
            "resp_ids",
            Response::Ids {
                recipient_id: recipient_id(),
                sender_id: sender_id(),
                relay_dh_key: relay_queue_dh().public(),
            },
        ),
        ("resp_ok", Response::Ok),
        (
            "resp_msg",
            Response::Msg {
                msg_id: message_id(),
                timestamp: 1_700_000_000,
                flags: 0,
                sealed_body: vec![0xab; 20],
            },
        ),
        ("resp_no_msg", Response::NoMsg),
        ("resp_end", Response::End),
        ("resp_pong", Response::Pong),
        ("resp_err_auth", Response::Err(ErrorCode::Auth)),
        ("resp_err_quota", Response::Err(ErrorCode::Quota)),
        ("resp_err_store", Response::Err(ErrorCode::Store)),
        ("resp_err_blocked", Response::Err(ErrorCode::Blocked)),
        ("resp_drop", Response::Drop),
    ];
    for (k, r) in resps {
        let bytes = r.to_bytes();
        assert_eq!(Response::decode(&bytes).as_ref(), Ok(&r), "{k} round trip");
        b.hex(k, bytes);
    }
    b
}

fn signed_send_frame() -> Block {
    let hash: [u8; 32] = seq(0x10);
    let corr = CorrId::from_u64(7);
    let entity = EntityId::from(sender_id());
    let cmd = Command::Send {
        flags: FLAG_NOTIFY,
        body: b"hello".to_vec(),
    };
    let t = Transmission::signed(corr, Some(entity), &cmd, &sender_auth(), &hash);
    // The digest's preimage written out from § 8, and the digest computed one-shot from it.
    let mut input = hash.to_vec();
    input.extend_from_slice(&corr.0);
    input.push(24);
    input.extend_from_slice(entity.as_bytes());
    input.extend_from_slice(&cmd.to_bytes());
    let digest = blake3::derive_key(SIGNATURE_CONTEXT, &input);
    assert_eq!(
        signing_digest(&hash, corr, Some(&entity), &cmd.to_bytes()),
        digest
    );
    let signature = t.signature.expect("signed");
    assert!(sender_auth().public().verify(&digest, &signature));
    assert!(t.verify(&sender_auth().public(), &hash));
    let mut enc = Vec::new();
    t.encode(&mut enc);
    assert_eq!(Transmission::decode(&enc).as_ref(), Ok(&t));
    let mut fb = FrameBuilder::new();
    assert!(fb.push(&t));
    let frame = fb.finish();
    assert_eq!(Frame::decode(&frame), Ok(vec![t.clone()]));
    let used = 2 + 2 + enc.len();
    assert!(frame[used..].iter().all(|b| *b == 0));

    let mut b = Block::default();
    b.hex("sender_auth_seed", *sender_auth().to_bytes())
        .hex("sender_auth_public", sender_auth().public().to_bytes())
        .hex("handshake_hash", hash)
        .hex("corr_id", corr.0)
        .hex("entity", entity.as_bytes())
        .hex("command", cmd.to_bytes())
        .text("signing_context", SIGNATURE_CONTEXT)
        .hex("signing_digest_input", &input)
        .hex("signing_digest", digest)
        .hex("signature", signature)
        .hex("transmission", &enc)
        .hex("frame_head", &frame[..used])
        .blake3("frame_blake3", &frame);
    b
}

fn sealed_msg() -> Block {
    let relay = relay_queue_dh();
    let recipient = recipient_dh();
    let key = BodySealKey::derive(&relay, &recipient.public()).expect("contributory");
    let key2 = BodySealKey::derive(&recipient, &relay.public()).expect("contributory");
    assert_eq!(key.as_bytes(), key2.as_bytes());
    let shared = relay
        .diffie_hellman(&recipient.public())
        .expect("contributory");
    let body = b"end-to-end ciphertext".to_vec();
    let sealed = key.seal(&message_id(), &body);
    assert_eq!(key2.open(&message_id(), &sealed).as_ref(), Ok(&body));
    let msg = Response::Msg {
        msg_id: message_id(),
        timestamp: 1_700_000_000,
        flags: FLAG_NOTIFY,
        sealed_body: sealed.clone(),
    };
    let t = Transmission::response(CorrId::NONE, Some(recipient_id().into()), &msg);
    let mut enc = Vec::new();
    t.encode(&mut enc);

    let mut b = Block::default();
    b.hex("relay_queue_dh_secret", *relay.to_bytes())
        .hex("relay_queue_dh_public", relay.public().as_bytes())
        .hex("recipient_dh_secret", *recipient.to_bytes())
        .hex("recipient_dh_public", recipient.public().as_bytes())
        .hex("x25519_shared", *shared)
        .hex("seal_key", key.as_bytes())
        .hex("msg_id", message_id().as_bytes())
        .hex("body", &body)
        .hex("sealed_body", &sealed)
        .text("timestamp", 1_700_000_000u64)
        .hex("msg_response", msg.to_bytes())
        .hex("recipient_id", recipient_id().as_bytes())
        .hex("msg_transmission", &enc);
    b
}

fn handshake() -> Block {
    let relay = relay_key();
    let ik = FixedInitiatorKeys {
        ephemeral: seq(0x20),
        kem_d: seq(0x40),
        kem_z: seq(0x60),
    };
    let rk = FixedResponderKeys {
        ephemeral: seq(0x80),
        kem_m: seq(0xa0),
    };
    let (init, m1) = Initiator::start_fixed(&relay.public(), &ik).expect("message 1");
    let (mut server, m2) = Responder::respond_fixed(&relay, &m1, &rk).expect("message 2");
    let mut client = init.finish(&m2).expect("handshake completes");
    assert_eq!(client.handshake_hash, server.handshake_hash);

    // Informative intermediates, computed with the ML-KEM library directly.
    let (_dk, ek) = MlKem768::generate_deterministic(&ik.kem_d.into(), &ik.kem_z.into());
    let (ct, ss) = ek
        .encapsulate_deterministic(&rk.kem_m.into())
        .expect("encapsulation");
    assert_eq!(&m2[..1088], ct.as_slice());
    // A fresh random encapsulation against the same key must differ (sanity of the fixture).
    let (ct_rand, _) = ek
        .encapsulate(&mut rand::rngs::OsRng)
        .expect("encapsulation");
    assert_ne!(ct_rand.as_slice(), ct.as_slice());

    let c1 = FrameBuilder::cover_command();
    let r1 = FrameBuilder::cover_response();
    let rec_c = client.send.encrypt_frame(&c1).expect("encrypt");
    let rec_r = server.send.encrypt_frame(&r1).expect("encrypt");
    assert_eq!(server.recv.decrypt_frame(&rec_c).as_ref(), Ok(&c1));
    assert_eq!(client.recv.decrypt_frame(&rec_r).as_ref(), Ok(&r1));

    let eph_pub = |s: [u8; 32]| *DhSecretKey::from_bytes(s).public().as_bytes();
    let mut b = Block::default();
    b.text("protocol_name", NOISE_PARAMS)
        .hex("prologue", prologue())
        .hex("relay_static_secret", relay.secret_bytes())
        .hex("relay_static_public", relay.public().as_bytes())
        .hex("initiator_ephemeral_secret", ik.ephemeral)
        .hex("initiator_ephemeral_public", eph_pub(ik.ephemeral))
        .hex("kem_d", ik.kem_d)
        .hex("kem_z", ik.kem_z)
        .hex("kem_ek_head", &ek.as_bytes()[..32])
        .blake3("kem_ek_blake3", ek.as_bytes().as_slice())
        .hex("responder_ephemeral_secret", rk.ephemeral)
        .hex("responder_ephemeral_public", eph_pub(rk.ephemeral))
        .hex("kem_m", rk.kem_m)
        .blake3("kem_ciphertext_blake3", ct.as_slice())
        .hex("kem_shared_secret", ss.as_slice())
        .hex("msg1_head", &m1[..64])
        .blake3("msg1_blake3", &m1)
        .hex("msg2_head", &m2[..64])
        .hex("msg2_noise_head", &m2[1088..1088 + 64])
        .blake3("msg2_blake3", &m2)
        .hex("handshake_hash", client.handshake_hash)
        .hex("client_record1_plaintext_head", &c1[..16])
        .hex("client_record1_head", &rec_c[..32])
        .blake3("client_record1_blake3", &rec_c)
        .hex("relay_record1_plaintext_head", &r1[..16])
        .hex("relay_record1_head", &rec_r[..32])
        .blake3("relay_record1_blake3", &rec_r);
    b
}

fn forward() -> Block {
    let relay = relay_key();
    let ephemeral: [u8; 32] = seq(0x20);
    let expiry: u64 = 1_700_000_300;
    let corr = CorrId::from_u64(7);
    let entity = EntityId::from(sender_id());
    let cmd = Command::Send {
        flags: FLAG_NOTIFY,
        body: b"hello".to_vec(),
    };
    let sealer = forward::Sealer::start_fixed(&relay.public(), &ephemeral).expect("sealer");
    let hash = *sealer.handshake_hash();
    let t = Transmission::signed(corr, Some(entity), &cmd, &sender_auth(), &hash);
    let mut enc = Vec::new();
    t.encode(&mut enc);
    let mut plain_head = expiry.to_be_bytes().to_vec();
    plain_head.extend_from_slice(&u16::try_from(enc.len()).expect("short").to_be_bytes());
    plain_head.extend_from_slice(&enc);
    let (sealed, answer_key) = sealer.seal(expiry, &t).expect("seal");
    assert_eq!(sealed.len(), SEALED_LEN);

    let opened = forward::open_request(&relay, &sealed).expect("opens");
    assert_eq!(opened.handshake_hash, hash);
    assert_eq!(opened.expiry, expiry);
    assert_eq!(opened.transmission, t);
    assert!(t.verify(&sender_auth().public(), &hash));
    let digest = signing_digest(&hash, corr, Some(&entity), &cmd.to_bytes());
    assert!(
        sender_auth()
            .public()
            .verify(&digest, &t.signature.expect("signed"))
    );
    assert_eq!(opened.answer_key.as_bytes(), answer_key.as_bytes());

    let answer = Transmission::response(corr, Some(entity), &Response::Ok);
    let mut answer_enc = Vec::new();
    answer.encode(&mut answer_enc);
    let nonce: [u8; 24] = seq(0xa0);
    let sealed_answer = opened
        .answer_key
        .seal_with_nonce(&answer, &nonce)
        .expect("seal answer");
    assert_eq!(answer_key.open(&sealed_answer).as_ref(), Ok(&answer));

    // Parsed rather than built, so the vector does not depend on RelayAddress's fields.
    let destination: RelayAddress =
        format!("sotto://{}@relay.example.org", relay.public().to_base64())
            .parse()
            .expect("valid address");
    let fwd = Command::Fwd {
        relay: destination,
        sealed: sealed.clone(),
    };
    let rfwd = Command::RFwd {
        sealed: sealed.clone(),
    };
    let fwd_answer = Response::FwdAnswer {
        sealed: sealed_answer.clone(),
    };
    for c in [&fwd, &rfwd] {
        assert_eq!(Command::decode(&c.to_bytes()).as_ref(), Ok(c));
    }
    assert_eq!(
        Response::decode(&fwd_answer.to_bytes()).as_ref(),
        Ok(&fwd_answer)
    );
    let (fwd_b, rfwd_b, answer_b) = (fwd.to_bytes(), rfwd.to_bytes(), fwd_answer.to_bytes());
    let head = |b: &[u8], n: usize| b[..n].to_vec();
    // Up to the start of the sealed blob, plus its first 16 bytes.
    let sealed_at = fwd_b.len() - SEALED_LEN;

    let eph_pub = *DhSecretKey::from_bytes(ephemeral).public().as_bytes();
    let mut b = Block::default();
    b.text("protocol_name", forward::FORWARD_NOISE_PARAMS)
        .hex("prologue", forward::forward_prologue())
        .hex("relay_static_secret", relay.secret_bytes())
        .hex("relay_static_public", relay.public().as_bytes())
        .hex("ephemeral_secret", ephemeral)
        .hex("ephemeral_public", eph_pub)
        .hex("handshake_hash", hash)
        .text("expiry", expiry)
        .hex("sender_auth_seed", *sender_auth().to_bytes())
        .hex("corr_id", corr.0)
        .hex("entity", entity.as_bytes())
        .hex("command", cmd.to_bytes())
        .hex("inner_signing_digest", digest)
        .hex("inner_transmission", &enc)
        .hex("request_plaintext_head", &plain_head)
        .hex("sealed_head", &sealed[..80])
        .blake3("sealed_blake3", &sealed)
        .hex("answer_key", answer_key.as_bytes())
        .hex("answer_transmission", &answer_enc)
        .hex("answer_nonce", nonce)
        .hex("sealed_answer_head", &sealed_answer[..64])
        .blake3("sealed_answer_blake3", &sealed_answer)
        .hex("cmd_fwd_head", head(&fwd_b, sealed_at + 16))
        .blake3("cmd_fwd_blake3", &fwd_b)
        .hex("cmd_rfwd_head", head(&rfwd_b, 3 + 16))
        .blake3("cmd_rfwd_blake3", &rfwd_b)
        .hex("resp_fwd_answer_head", head(&answer_b, 3 + 16))
        .blake3("resp_fwd_answer_blake3", &answer_b);
    b
}

fn computed() -> Vec<(&'static str, Block)> {
    vec![
        ("addresses", addresses()),
        ("commands", commands()),
        ("signed-send-frame", signed_send_frame()),
        ("sealed-msg", sealed_msg()),
        ("handshake", handshake()),
        ("forward", forward()),
    ]
}

/// Wraps a value for the spec: hex over 64 characters continues on indented lines.
fn render(name: &str, block: &Block) -> String {
    let mut s = format!("```vector {name}\n");
    for (k, v) in &block.0 {
        if v.starts_with('"') || v.len() <= 64 {
            s.push_str(&format!("{k} = {v}\n"));
        } else {
            s.push_str(&format!("{k} =\n"));
            for chunk in v.as_bytes().chunks(64) {
                s.push_str("    ");
                s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                s.push('\n');
            }
        }
    }
    s.push_str("```\n");
    s
}

/// Parses every vector block of the spec into `name → key → value`.
fn parse_spec(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim_end().strip_prefix("```vector ") else {
            continue;
        };
        let mut block: BTreeMap<String, String> = BTreeMap::new();
        let mut last: Option<String> = None;
        for l in lines.by_ref() {
            if l.trim_end() == "```" {
                break;
            }
            if l.trim().is_empty() || l.trim_start().starts_with('#') {
                continue;
            }
            if l.starts_with(char::is_whitespace) {
                let k = last
                    .as_ref()
                    .unwrap_or_else(|| panic!("continuation first: {l}"));
                block
                    .get_mut(k)
                    .unwrap_or_else(|| panic!("no key {k}"))
                    .push_str(l.trim());
                continue;
            }
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("vector line without `=`: {l}"));
            let k = k.trim().to_owned();
            assert!(
                block.insert(k.clone(), v.trim().to_owned()).is_none(),
                "duplicate key {k} in vector {name}"
            );
            last = Some(k);
        }
        assert!(
            out.insert(name.trim().to_owned(), block).is_none(),
            "duplicate vector {name}"
        );
    }
    out
}

fn spec_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn spec_vectors_match_the_code() {
    let computed = computed();
    if std::env::var_os("SOTTO_PRINT_VECTORS").is_some() {
        for (name, block) in &computed {
            println!("{}", render(name, block));
        }
    }
    let spec = parse_spec(&spec_text());
    let mut failures = Vec::new();
    for (name, block) in &computed {
        let Some(doc) = spec.get(*name) else {
            failures.push(format!("vector `{name}` is missing from the spec"));
            continue;
        };
        for (k, v) in &block.0 {
            match doc.get(*k) {
                None => failures.push(format!("{name}: key `{k}` missing from the spec")),
                Some(d) if d != v => {
                    failures.push(format!("{name}: `{k}` is {d} in the spec, code gives {v}"))
                }
                Some(_) => {}
            }
        }
        for k in doc.keys() {
            if !block.0.iter().any(|(c, _)| c == k) {
                failures.push(format!(
                    "{name}: spec has key `{k}` the code does not check"
                ));
            }
        }
    }
    for name in spec.keys() {
        if !computed.iter().any(|(c, _)| c == name) {
            failures.push(format!("spec has vector `{name}` that no test checks"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn text_vectors_parse_back_to_the_same_values() {
    let spec = parse_spec(&spec_text());
    let Some(a) = spec.get("addresses") else {
        panic!("addresses vector missing");
    };
    let unquote = |k: &str| a[k].trim_matches('"').to_owned();
    let relay: RelayAddress = unquote("address_default_port").parse().expect("parses");
    assert_eq!(hex::encode(relay.key.as_bytes()), a["relay_public"]);
    let q: QueueAddress = unquote("queue_address").parse().expect("parses");
    assert_eq!(q.relay, relay);
    assert_eq!(hex::encode(q.sender_id.as_bytes()), a["sender_id"]);
    let r6: RelayAddress = unquote("address_ipv6_port_7000").parse().expect("parses");
    assert_eq!(r6.port, 7000);
    let t: RelayAddress = unquote("address_tcp_same_port").parse().expect("parses");
    assert_eq!((t.port, t.tcp), (sotto_protocol::DEFAULT_PORT, Some(5443)));
    let t: RelayAddress = unquote("address_tcp_port_443").parse().expect("parses");
    assert_eq!((t.port, t.tcp), (7000, Some(443)));
}

#[test]
fn frame_plaintext_len_is_what_the_spec_states() {
    assert_eq!(FRAME_PLAINTEXT_LEN, 16_368);
}
