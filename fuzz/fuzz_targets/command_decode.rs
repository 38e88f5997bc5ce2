//! Any bytes: `Command::decode` never panics, and whatever decodes re-encodes to exactly
//! the same bytes (one encoding per command) and passes `validate`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::Command;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Command::decode(data) {
        assert_eq!(c.to_bytes(), data, "decode ∘ encode must be the identity");
        assert!(c.validate().is_ok());
    }
});
