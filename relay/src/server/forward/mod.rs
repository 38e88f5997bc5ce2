//! FWD and RFWD (`docs/protocol.md` § 10a): [`Forwarder`], the origin side — a bounded pool
//! of sessions from this relay to destination relays, the forwarding policy and the mapping
//! of failures to error codes — and the destination side, which executes what another relay
//! forwards. A session's FWD and RFWD commands only hand their sealed blob to these two and
//! run as write futures (`session`).
//!
//! Why here, under `server`: FWD exists only to answer a session's command, and both halves
//! of § 10a belong in one room. The pool does not depend on the rest of the server, though
//! (it takes the relay's endpoint, key and `forwarding` configuration, not the server's
//! shared state), so it could move out whole if anything else came to dial other relays.
//! The path `sotto_relay::forward` is kept as a re-export.

mod destination;
mod origin;

pub(super) use destination::execute_forwarded;
pub use origin::{Forwarder, is_global};
