//! Sotto client library.
//!
//! - [`transport`]: the Noise framed connection over QUIC or TLS + TCP (optionally through
//!   a SOCKS5 proxy such as Tor), shared with the relay and the load tester (they depend on
//!   this crate with `default-features = false`).
//! - [`client`]: [`client::RelayClient`], request/response and pushed messages over one
//!   session with a relay.
//!
//! The contact agent and the `sotto` CLI live behind the default `agent` feature; nothing in
//! the modules above depends on it.

#[cfg(feature = "agent")]
pub mod agent;
pub mod client;
pub mod transport;

pub use client::{ClientError, ClientOptions, Pushed, QueueCredentials, RelayClient};
pub use transport::{
    FramedConnection, Link, LinkKind, QuicOptions, Socks5Proxy, TransportChoice, TransportError,
};
