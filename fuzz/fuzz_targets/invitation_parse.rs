//! Invitation links (`sotto_client::agent::invitation`): any text never panics
//! `Invitation::parse`; whatever parses formats back (`to_link`) to a link that parses to the
//! same invitation and formats to itself (the canonical form is a fixed point); and the
//! input differs from the canonical link only where the embedded queue address may be
//! written differently: its host name's letter case (host names are case-insensitive and
//! printed in lower case — found by this target, see docs/reliability.md). Every other byte
//! (version, id, keys, lengths) has exactly one text form.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use sotto_client::agent::invitation::{Invitation, PREFIX};

/// Version, id, three keys, queue length.
const FIXED_LEN: usize = 1 + 16 + 32 + 32 + 32 + 2;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(inv) = Invitation::parse(text) else {
        return;
    };
    let link = inv.to_link();
    let again = Invitation::parse(&link).expect("a formatted invitation must parse");
    assert!(again == inv, "a formatted invitation must parse to itself");
    assert_eq!(again.to_link(), link, "the canonical form must be a fixed point");
    let raw = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s.trim().strip_prefix(PREFIX).expect("prefix"))
            .expect("base64url")
    };
    let (given, canonical) = (raw(text), raw(&link));
    assert_eq!(given.len(), canonical.len());
    assert_eq!(given[..FIXED_LEN], canonical[..FIXED_LEN], "fixed fields");
    assert!(
        given[FIXED_LEN..].eq_ignore_ascii_case(&canonical[FIXED_LEN..]),
        "the queue address may differ only in letter case"
    );
});
