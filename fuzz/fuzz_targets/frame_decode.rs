//! Frame plaintext: the input, zero-padded or cut to `FRAME_PLAINTEXT_LEN`, never panics
//! `Frame::decode`; whatever decodes is rebuilt by `FrameBuilder` into exactly the same
//! plaintext (decode ∘ encode = id), and the raw input is refused unless it has exactly the
//! frame length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::{FRAME_PLAINTEXT_LEN, Frame, FrameBuilder};

fuzz_target!(|data: &[u8]| {
    if data.len() != FRAME_PLAINTEXT_LEN {
        assert!(Frame::decode(data).is_err(), "wrong length must be refused");
    }
    let mut plaintext = data.to_vec();
    plaintext.resize(FRAME_PLAINTEXT_LEN, 0);
    if let Ok(ts) = Frame::decode(&plaintext) {
        let mut b = FrameBuilder::new();
        for t in &ts {
            assert!(b.push(t), "a decoded transmission must fit again");
        }
        assert_eq!(
            b.finish(),
            plaintext,
            "decode ∘ encode must be the identity"
        );
        for t in &ts {
            if let Ok(c) = t.decode_command() {
                assert_eq!(c.to_bytes(), t.payload);
            }
            if let Ok(r) = t.decode_response() {
                assert_eq!(r.to_bytes(), t.payload);
            }
        }
    }
});
