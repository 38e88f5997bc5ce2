//! Invitation links (`sotto_client::agent::invitation`): any text never panics
//! `Invitation::parse`; whatever parses formats back (`to_link`) to exactly the input with
//! surrounding whitespace removed (one text form per invitation), and the formatted link
//! parses to the same invitation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_client::agent::invitation::Invitation;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(inv) = Invitation::parse(text) {
        let link = inv.to_link();
        assert_eq!(link, text.trim(), "parse ∘ format must be the identity");
        assert!(
            Invitation::parse(&link).is_ok_and(|again| again == inv),
            "a formatted invitation must parse to itself"
        );
    }
});
