//! The relay store's record codecs (`sotto_relay::store`), on the plaintext that the
//! storage key's AEAD protects: any bytes never panic `decode_queue_record` or
//! `decode_message`, and whatever decodes re-encodes to exactly the input (decode ∘ encode
//! is the identity), with the release time carried through and the body within `MAX_BODY`.
//!
//! The first input byte picks the codec; for messages the next eight bytes are the release
//! time (stored beside the record, not inside it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_relay::store::{decode_message, decode_queue_record, encode_message, encode_queue_record};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(rec) = decode_queue_record(rest) {
            assert_eq!(
                encode_queue_record(&rec),
                rest,
                "queue record: decode ∘ encode must be the identity"
            );
        }
    } else {
        let Some((release, rest)) = rest.split_first_chunk::<8>() else {
            return;
        };
        let release = u64::from_be_bytes(*release);
        if let Ok(m) = decode_message(rest, release) {
            assert_eq!(m.release_at_ms, release);
            assert!(m.body.len() <= sotto_protocol::MAX_BODY);
            assert_eq!(
                encode_message(&m),
                rest,
                "message: decode ∘ encode must be the identity"
            );
        }
    }
});
