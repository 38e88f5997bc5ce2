//! Criterion benchmarks of the protocol's hot paths.
//!
//! - `frame/encrypt_decrypt`: one record sealed by one side and opened by the other.
//! - `handshake/respond`: the relay's whole share of a handshake (what a flood costs it).
//! - `handshake/full`: initiator start, responder, initiator finish.
//! - `batch/encode` and `batch/decode`: a frame filled with small transmissions.
//! - `send/verify`: decode a signed SEND transmission and verify its signature.
//! - `send/sign`: build a signed SEND transmission (encode the command, sign it).
//!
//! Results and the machine they came from are recorded in `docs/benchmarks.md`.
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`.

use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use rand::SeedableRng as _;
use rand_chacha::ChaCha20Rng;
use sotto_protocol::{
    AuthSecretKey, Command, CorrId, EntityId, FRAME_LEN, FRAME_PLAINTEXT_LEN, Frame, FrameBuilder,
    Initiator, MAX_BODY, RelayStaticKey, Responder, Transmission,
};

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed([42; 32])
}

fn frames(c: &mut Criterion) {
    let mut rng = rng();
    let relay = RelayStaticKey::generate(&mut rng);
    let (init, m1) = Initiator::start(&relay.public(), &mut rng).expect("message 1");
    let (mut server, m2) = Responder::respond(&relay, &m1, &mut rng).expect("message 2");
    let mut client = init.finish(&m2).expect("session");
    let plaintext = FrameBuilder::cover_command();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(FRAME_LEN as u64));
    g.bench_function("encrypt_decrypt", |b| {
        let mut buf = Vec::with_capacity(FRAME_LEN);
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&plaintext);
            client.send.encrypt_in_place(&mut buf).expect("encrypt");
            server.recv.decrypt_in_place(&mut buf).expect("decrypt");
            black_box(&buf);
        });
    });
    g.finish();
}

fn handshakes(c: &mut Criterion) {
    let mut rng = rng();
    let relay = RelayStaticKey::generate(&mut rng);
    let mut g = c.benchmark_group("handshake");
    g.bench_function("respond", |b| {
        b.iter_batched(
            || {
                Initiator::start(&relay.public(), &mut rng)
                    .expect("message 1")
                    .1
            },
            |m1| {
                let mut rng = ChaCha20Rng::from_seed([7; 32]);
                black_box(Responder::respond(&relay, &m1, &mut rng).expect("message 2"))
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("full", |b| {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        b.iter(|| {
            let (init, m1) = Initiator::start(&relay.public(), &mut rng).expect("message 1");
            let (server, m2) = Responder::respond(&relay, &m1, &mut rng).expect("message 2");
            let client = init.finish(&m2).expect("session");
            black_box((client, server))
        });
    });
    g.finish();
}

fn batches(c: &mut Criterion) {
    // As many PINGs with distinct correlation ids as one frame holds: (16368 − 2) / 13 = 1258.
    let ts: Vec<Transmission> = (0..)
        .map(|i| Transmission::command(CorrId::from_u64(i), None, &Command::Ping))
        .take((FRAME_PLAINTEXT_LEN - 2) / 13)
        .collect();
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(ts.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| {
            let mut fb = FrameBuilder::new();
            for t in &ts {
                if !fb.push(t) {
                    break;
                }
            }
            black_box(fb.finish())
        });
    });
    let mut fb = FrameBuilder::new();
    for t in &ts {
        assert!(fb.push(t), "every PING fits");
    }
    let plaintext = fb.finish();
    g.bench_function("decode", |b| {
        b.iter(|| {
            let decoded = Frame::decode(black_box(&plaintext)).expect("decodes");
            for t in &decoded {
                black_box(t.decode_command().expect("command"));
            }
            black_box(decoded)
        });
    });
    g.finish();
}

fn send(c: &mut Criterion) {
    let key = AuthSecretKey::from_bytes(&[3; 32]);
    let public = key.public();
    let hash = [5u8; 32];
    let entity = Some(EntityId([1; 24]));
    let cmd = Command::Send {
        flags: 0,
        body: vec![0xaa; MAX_BODY],
    };
    let t = Transmission::signed(CorrId::from_u64(1), entity, &cmd, &key, &hash);
    let mut bytes = Vec::new();
    t.encode(&mut bytes);
    let mut g = c.benchmark_group("send");
    g.bench_function("sign", |b| {
        b.iter(|| {
            black_box(Transmission::signed(
                CorrId::from_u64(1),
                entity,
                black_box(&cmd),
                &key,
                &hash,
            ))
        });
    });
    g.bench_function("verify", |b| {
        b.iter(|| {
            let t = Transmission::decode(black_box(&bytes)).expect("decodes");
            assert!(t.verify(&public, &hash));
            black_box(t.decode_command().expect("command"))
        });
    });
    g.finish();
}

criterion_group!(benches, frames, handshakes, batches, send);
criterion_main!(benches);
