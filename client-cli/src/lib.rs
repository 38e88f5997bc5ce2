//! Sotto client library: the contact agent ([`agent`]) behind the `sotto` CLI.
//!
//! A contact is two queues, each on a relay chosen by its recipient; messages are
//! Olm-encrypted (vodozemac), padded to the maximum body, and the profile is encrypted at
//! rest. The session with one relay ([`RelayClient`]) and the transport under it come from
//! [`sotto_transport`], re-exported here as [`transport`] and [`client`] (and the traffic
//! policies from [`sotto_timing`], as [`timing`]) so that an embedding application needs one
//! dependency.

pub mod agent;

pub use sotto_timing as timing;
pub use sotto_transport as transport;
pub use sotto_transport::client;
pub use sotto_transport::{
    ClientError, ClientOptions, FramedConnection, Link, LinkKind, Pushed, QueueCredentials,
    QuicOptions, RelayClient, Socks5Proxy, TransportChoice, TransportError,
};
