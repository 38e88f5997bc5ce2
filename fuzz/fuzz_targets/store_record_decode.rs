//! The relay store's record codecs (`sotto_relay::store`), on the plaintext that the
//! storage key's AEAD protects: any bytes never panic `decode_queue_record`,
//! `MessageHeader::decode` or `decode_legacy_message`; queue records and message headers
//! re-encode to exactly the input (decode ∘ encode is the identity), and a version 1
//! message's body is within `MAX_BODY`.
//!
//! The first input byte picks the codec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_relay::store::{
    MessageHeader, decode_legacy_message, decode_queue_record, encode_queue_record,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(rec) = decode_queue_record(rest) {
                assert_eq!(
                    encode_queue_record(&rec),
                    rest,
                    "queue record: decode ∘ encode must be the identity"
                );
            }
        }
        1 => {
            if let Ok(h) = MessageHeader::decode(rest) {
                assert_eq!(
                    h.encode().as_slice(),
                    rest,
                    "message header: decode ∘ encode must be the identity"
                );
            }
        }
        _ => {
            if let Ok((_, body)) = decode_legacy_message(rest) {
                assert!(body.len() <= sotto_protocol::MAX_BODY);
            }
        }
    }
});
