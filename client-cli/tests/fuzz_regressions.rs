//! Inputs found by the fuzz targets in `fuzz/` (see `docs/reliability.md`, "Fuzzing"), kept
//! as regression tests of the normal suite.

#![allow(clippy::unwrap_used)]

use sotto_client::agent::invitation::Invitation;

/// `invitation_parse` found that an invitation whose queue address has upper-case letters
/// in its host name parses, and formats back in lower case: two texts, one invitation.
/// Host names are case-insensitive, so this is the intended normalisation; what must hold
/// is that the canonical link parses to the same invitation and is a fixed point.
#[test]
fn invitation_with_an_upper_case_host_normalises_to_one_canonical_link() {
    let found = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds/invitation_parse/uppercase-host"),
    )
    .unwrap();
    let inv = Invitation::parse(&found).unwrap();
    let link = inv.to_link();
    assert_ne!(link, found.trim(), "the host is printed in lower case");
    let again = Invitation::parse(&link).unwrap();
    assert!(again == inv);
    assert_eq!(again.to_link(), link);
    assert_eq!(inv.queue.relay.host.to_string(), "relay.exampleb7000");
}
