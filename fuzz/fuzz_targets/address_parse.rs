//! Any text: relay addresses, queue addresses and ids never panic the parsers; whatever
//! parses formats to a canonical text that parses back to the same value and formats to
//! itself (parse ∘ format = id, format is a fixed point).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::{QueueAddress, RecipientId, RelayAddress};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(a) = s.parse::<RelayAddress>() {
        let text = a.to_string();
        let again = text.parse::<RelayAddress>();
        assert_eq!(
            again.as_ref(),
            Ok(&a),
            "parse ∘ format must be the identity"
        );
        assert_eq!(again.map(|b| b.to_string()), Ok(text));
    }
    if let Ok(q) = s.parse::<QueueAddress>() {
        assert_eq!(q.to_string().parse::<QueueAddress>(), Ok(q));
    }
    if let Ok(id) = s.parse::<RecipientId>() {
        assert_eq!(id.to_string(), s, "ids have exactly one text form");
    }
});
