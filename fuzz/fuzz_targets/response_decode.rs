//! Any bytes: `Response::decode` never panics, and whatever decodes re-encodes to exactly
//! the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::Response;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Response::decode(data) {
        assert_eq!(r.to_bytes(), data, "decode ∘ encode must be the identity");
    }
});
