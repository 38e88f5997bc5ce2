//! Sotto relay: anonymous unidirectional queues over QUIC + Noise, with a durable encrypted
//! store and delayed delivery.
//!
//! The binary `sotto-relay` is a thin CLI over [`server::start`]; the library exists so that
//! integration tests and the load tester can run a real relay in-process.

pub mod abuse;
pub mod config;
pub mod datadir;
pub mod metrics;
pub mod scheduler;
pub mod server;
pub mod store;

pub use config::Config;
/// The FWD pool, kept at its old path (it lives in [`server::forward`]).
pub use server::forward;
pub use server::{RunningRelay, start};
