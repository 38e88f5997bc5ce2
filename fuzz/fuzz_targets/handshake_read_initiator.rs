//! The client reading message 2. The first input byte picks a mode:
//! - even: the rest of the input is message 2 as is;
//! - odd: the rest is a list of (offset u16, xor u8) edits applied to the genuine message 2.
//!
//! Invariant: `Initiator::finish` never panics and yields a session only for the genuine,
//! unmodified message 2 (for which it must succeed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::noise::{FixedInitiatorKeys, FixedResponderKeys};
use sotto_protocol::{FRAME_LEN, Initiator, RelayStaticKey, Responder};

fuzz_target!(|data: &[u8]| {
    let relay = RelayStaticKey::from_bytes([1; 32]);
    let ik = FixedInitiatorKeys {
        ephemeral: [2; 32],
        kem_d: [3; 32],
        kem_z: [4; 32],
    };
    let rk = FixedResponderKeys {
        ephemeral: [5; 32],
        kem_m: [6; 32],
    };
    let Ok((init, msg1)) = Initiator::start_fixed(&relay.public(), &ik) else {
        panic!("a fixed handshake must start");
    };
    let Ok((_server, genuine)) = Responder::respond_fixed(&relay, &msg1, &rk) else {
        panic!("the genuine message 1 must be accepted");
    };
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let msg2 = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut m = genuine.clone();
        for e in rest.chunks_exact(3) {
            let at = usize::from(u16::from_be_bytes([e[0], e[1]])) % FRAME_LEN;
            m[at] ^= e[2];
        }
        m
    };
    let result = init.finish(&msg2);
    if msg2 == genuine {
        assert!(result.is_ok(), "the genuine message 2 must be accepted");
    } else {
        assert!(
            result.is_err(),
            "a modified message 2 must never yield a session"
        );
    }
});
