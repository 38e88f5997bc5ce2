//! Sotto's timing defences, sans-IO: when frames and messages leave, relay and client.
//!
//! An observer who cannot read Sotto's fixed-size encrypted frames can still see *when* they
//! cross each link. This crate decides those times, and nothing else:
//!
//! - [`exp`]: the one exponential draw behind every random delay and gap;
//! - [`delay`]: the relay's release delays ([`delay::DelaySampler`]) and its pool of stored
//!   messages waiting to be released ([`delay::Scheduler`]);
//! - [`pacing`]: a link that sends a Poisson stream of frames, real traffic in place of cover;
//! - [`loops`]: loop cover through a client's own queues, and detection of relays that drop
//!   or hold messages;
//! - [`policy`]: the client's traffic policies as presets, with their bandwidth.
//!
//! Like `sotto-protocol` it does no I/O and never reads a clock: time comes in as an argument
//! (wall-clock milliseconds for release times that survive a restart, [`std::time::Duration`]
//! since an origin of the caller's for everything else). The relay's scheduler task, the
//! client's writer task and the network simulator (`sotto-sim`) all drive these same types,
//! so what the simulator measures is what ships.

pub mod delay;
pub mod exp;
pub mod loops;
pub mod pacing;
pub mod policy;

pub use delay::{DelayMode, DelaySampler, Scheduler, UnixMillis};
pub use loops::{LoopMonitor, LoopPolicy, LoopSchedule};
pub use pacing::{Burst, Pacer, PacingPolicy, Tick};
pub use policy::TrafficPolicy;
