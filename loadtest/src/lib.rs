//! `sotto-loadtest`: how fast a Sotto relay configuration is, and how much its timing still
//! leaks.
//!
//! - [`workload`]: the seeded workload and the verifiable body format;
//! - [`runner`]: embedded or remote relays, sessions, dispatch, receipt, the ceiling run;
//! - [`ceiling`]: the plain QUIC forwarder that measures this machine's physical ceiling;
//! - [`metrics`]: every measurement as a pure function over timestamp records;
//! - [`report`], [`plot`]: JSON, table, CSV and SVG output;
//! - [`cpu`]: CPU accounting;
//! - [`sessions`]: idle sessions against a running relay (memory and handshake cost).
//!
//! The definitions behind every number are in `docs/loadtest.md`.

pub mod ceiling;
pub mod cpu;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod runner;
pub mod sessions;
pub mod workload;

pub use report::Report;
pub use runner::{DelayKind, Options, Outcome, create_queues, run_ceiling, run_compare, run_relay};
