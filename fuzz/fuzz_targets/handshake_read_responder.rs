//! The relay reading message 1. The first input byte picks a mode:
//! - even: the rest of the input is message 1 as is;
//! - odd: the rest is a list of (offset u16, xor u8) edits applied to a genuine message 1.
//!
//! Invariant: `Responder::respond` never panics and yields a session only for the genuine,
//! unmodified message 1 (for which it must succeed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::noise::{FixedInitiatorKeys, FixedResponderKeys};
use sotto_protocol::{FRAME_LEN, Initiator, RelayStaticKey, Responder};

fuzz_target!(|data: &[u8]| {
    let relay = RelayStaticKey::from_bytes([1; 32]);
    let keys = FixedInitiatorKeys {
        ephemeral: [2; 32],
        kem_d: [3; 32],
        kem_z: [4; 32],
    };
    let Ok((_init, genuine)) = Initiator::start_fixed(&relay.public(), &keys) else {
        panic!("a fixed handshake must start");
    };
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let msg1 = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut m = genuine.clone();
        for e in rest.chunks_exact(3) {
            let at = usize::from(u16::from_be_bytes([e[0], e[1]])) % FRAME_LEN;
            m[at] ^= e[2];
        }
        m
    };
    let rk = FixedResponderKeys {
        ephemeral: [5; 32],
        kem_m: [6; 32],
    };
    let result = Responder::respond_fixed(&relay, &msg1, &rk);
    if msg1 == genuine {
        assert!(result.is_ok(), "the genuine message 1 must be accepted");
    } else {
        assert!(
            result.is_err(),
            "a modified message 1 must never yield a session"
        );
    }
});
