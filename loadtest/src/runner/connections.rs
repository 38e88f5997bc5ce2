//! The sessions of a run: connecting one to a relay (keeping its QUIC connection, or its
//! TLS-over-TCP link, and its UDP endpoint), reading what crossed the wire since a
//! [`WireMark`], and closing them all at the end.
//!
//! It does not create queues or send anything: [`super::setup`] and [`super::dispatch`] do.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use sotto_protocol::RelayAddress;
use sotto_transport as transport;
use sotto_transport::{ClientOptions, Link, Pushed, RelayClient};
use tokio::sync::mpsc;

use crate::metrics;
use crate::report::WireSummary;

/// Sessions of a run, kept to read their counters and close them.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    connections: Vec<quinn::Connection>,
    /// TLS-over-TCP sessions (`--transport tcp`): bytes only, no datagrams.
    tcp_links: Vec<Link>,
    endpoints: Vec<quinn::Endpoint>,
    relay_clients: Vec<RelayClient>,
}

impl Sessions {
    /// Keeps a QUIC session that was not opened by [`connect_relay`] (a ceiling session).
    pub(super) fn keep_quic(&mut self, connection: quinn::Connection, endpoint: quinn::Endpoint) {
        self.connections.push(connection);
        self.endpoints.push(endpoint);
    }

    /// The sessions' counters now: QUIC `[tx datagrams, tx bytes, rx datagrams, rx bytes,
    /// lost packets]` per connection, TCP `[bytes sent, bytes received]` per link.
    pub(super) fn mark(&self) -> WireMark {
        WireMark {
            quic: self
                .connections
                .iter()
                .map(|c| {
                    let s = c.stats();
                    [
                        s.udp_tx.datagrams,
                        s.udp_tx.bytes,
                        s.udp_rx.datagrams,
                        s.udp_rx.bytes,
                        s.path.lost_packets,
                    ]
                })
                .collect(),
            tcp: self
                .tcp_links
                .iter()
                .map(|l| {
                    let s = l.stats();
                    [s.bytes_sent, s.bytes_received]
                })
                .collect(),
        }
    }

    /// What crossed the wire since `since` (taken when dispatch began, so the handshakes'
    /// datagrams — which QUIC does not pad to the MTU — are not counted), with the distinct
    /// datagram sizes that are consistent with it.
    pub(super) fn wire(&self, since: &WireMark) -> WireSummary {
        let now = self.mark();
        let mut counters = Vec::new();
        let mut w = WireSummary {
            connections: (now.quic.len() + now.tcp.len()) as u64,
            ..WireSummary::default()
        };
        for (i, c) in now.quic.iter().enumerate() {
            let before = since.quic.get(i).copied().unwrap_or_default();
            let [tx_d, tx_b, rx_d, rx_b, lost]: [u64; 5] =
                std::array::from_fn(|k| c[k].saturating_sub(before[k]));
            w.datagrams_tx += tx_d;
            w.bytes_tx += tx_b;
            w.datagrams_rx += rx_d;
            w.bytes_rx += rx_b;
            w.lost_packets += lost;
            counters.push((tx_d, tx_b));
            counters.push((rx_d, rx_b));
        }
        for (i, l) in now.tcp.iter().enumerate() {
            let before = since.tcp.get(i).copied().unwrap_or_default();
            w.bytes_tx += l[0].saturating_sub(before[0]);
            w.bytes_rx += l[1].saturating_sub(before[1]);
        }
        w.sizes = metrics::datagram_sizes(&counters);
        w
    }

    /// Closes every session and waits (up to 2 s each) for the endpoints to go idle.
    pub(super) async fn close(self) {
        for c in &self.relay_clients {
            c.close().await;
        }
        for c in &self.connections {
            c.close(0u32.into(), b"");
        }
        for l in &self.tcp_links {
            l.close(0u32.into(), b"");
        }
        for e in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
        }
    }
}

/// Counters of every session at one instant (see [`Sessions::mark`]).
#[derive(Debug, Clone, Default)]
pub(super) struct WireMark {
    quic: Vec<[u64; 5]>,
    tcp: Vec<[u64; 2]>,
}

/// Connects one session to `relay`, keeping the QUIC connection for its counters.
pub(super) async fn connect_relay(
    relay: &RelayAddress,
    opts: &ClientOptions,
    sessions: &mut Sessions,
) -> anyhow::Result<(RelayClient, mpsc::Receiver<Pushed>)> {
    let bind = SocketAddr::from(([0, 0, 0, 0], 0));
    let endpoint = transport::client_endpoint(bind, &opts.quic)?;
    let config = transport::client_config(&opts.quic)?;
    let framed = transport::dial(&endpoint, Some(config), relay, &opts.dial_options())
        .await
        .with_context(|| format!("cannot connect to the relay at {}", relay.host_port()))?;
    match framed.connection.as_quic() {
        Some(c) => sessions.connections.push(c.clone()),
        None => sessions.tcp_links.push(framed.connection.clone()),
    }
    sessions.endpoints.push(endpoint);
    let (client, rx) = RelayClient::from_framed(framed, relay.clone(), opts);
    sessions.relay_clients.push(client.clone());
    Ok((client, rx))
}
