//! Any bytes: `Transmission::decode` never panics; whatever decodes re-encodes to the same
//! bytes with `encoded_len` equal to their length, and its payload, if it decodes as a
//! command or response, re-encodes to the same payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::Transmission;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Transmission::decode(data) {
        let mut out = Vec::new();
        t.encode(&mut out);
        assert_eq!(out, data, "decode ∘ encode must be the identity");
        assert_eq!(t.encoded_len(), data.len());
        assert!(!t.payload.is_empty());
        if let Ok(c) = t.decode_command() {
            assert_eq!(c.to_bytes(), t.payload);
        }
        if let Ok(r) = t.decode_response() {
            assert_eq!(r.to_bytes(), t.payload);
        }
    }
});
