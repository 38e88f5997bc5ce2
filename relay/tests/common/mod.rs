//! Helpers shared by the relay's integration tests: a real relay on 127.0.0.1:0 with a real
//! redb file in a temporary directory, and real clients — over QUIC, or over the
//! TLS-over-TCP listener when the suite runs inside `tests/over_tcp.rs` (see [`OVER_TCP`]).
#![allow(dead_code, clippy::unwrap_used, clippy::field_reassign_with_default)]

use std::time::Duration;

pub mod process;
pub mod raw;

use sotto_protocol::RelayAddress;
use sotto_relay::config::Config;
use sotto_relay::{RunningRelay, datadir};
use sotto_transport::{self as transport, QuicOptions};
use sotto_transport::{ClientOptions, Pushed, RelayClient, TransportChoice};
use tokio::sync::mpsc;

/// A relay in a temporary data directory.
pub struct TestRelay {
    pub relay: Option<RunningRelay>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

/// Whether the suites run over TLS + TCP instead of QUIC. `tests/over_tcp.rs` includes the
/// queue and delivery suites again as its own modules; their `mod common;` then lives under
/// `over_tcp::`, which is how this module knows, at compile time, which transport the
/// binary tests. Relays then also listen on TCP and [`client_options`] choose TCP only.
pub const OVER_TCP: bool = starts_with(module_path!(), "over_tcp::");

const fn starts_with(s: &str, prefix: &str) -> bool {
    let (s, p) = (s.as_bytes(), prefix.as_bytes());
    if s.len() < p.len() {
        return false;
    }
    let mut i = 0;
    while i < p.len() {
        if s[i] != p[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A free TCP port below the kernel's ephemeral range (32768–60999 on Linux), so that when a
/// relay restarts on the same port no client connection can have been given it as its local
/// port in the meantime (as can happen with a port from `:0`).
fn free_tcp_port() -> u16 {
    use rand::Rng as _;
    loop {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The transport the suites in this binary use.
pub fn transport() -> TransportChoice {
    if OVER_TCP {
        TransportChoice::Tcp
    } else {
        TransportChoice::Quic
    }
}

/// A configuration for tests: loopback, ephemeral port(s), no metrics, immediate delivery,
/// FWD forwarded at once (the tests of the forwarding delay set their own, see
/// `tests/forward.rs`; the relays run as the binary there keep the default delay).
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    if OVER_TCP {
        c.listen_tcp = format!("127.0.0.1:{}", free_tcp_port());
    }
    c.metrics = "off".into();
    c.delivery.mode = "off".into();
    c.forwarding.delay_mean = Duration::ZERO;
    c
}

impl TestRelay {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        datadir::init(dir.path(), &datadir::InitOptions::default()).unwrap();
        let mut config = test_config();
        tweak(&mut config);
        let relay = sotto_relay::start(dir.path(), config.clone())
            .await
            .unwrap();
        Self {
            relay: Some(relay),
            dir,
            config,
        }
    }

    pub fn address(&self) -> RelayAddress {
        self.relay.as_ref().unwrap().address.clone()
    }

    pub fn running(&self) -> &RunningRelay {
        self.relay.as_ref().unwrap()
    }

    /// Clean shutdown, then start again on the same directory and port.
    pub async fn restart(&mut self) {
        let old = self.relay.take().unwrap();
        let port = old.local_addr.port();
        let tcp_port = old.local_tcp_addr.map(|a| a.port());
        old.shutdown().await;
        let mut config = self.config.clone();
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
        if let Some(p) = tcp_port {
            config.listen_tcp = format!("127.0.0.1:{p}");
        }
        self.relay = Some(sotto_relay::start(self.dir.path(), config).await.unwrap());
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await;
        }
    }
}

pub fn endpoint() -> quinn::Endpoint {
    transport::client_endpoint("127.0.0.1:0".parse().unwrap(), &QuicOptions::default()).unwrap()
}

pub fn client_options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(20),
        quic: QuicOptions::default(),
        transport: transport(),
        ..ClientOptions::default()
    }
}

pub async fn connect(
    addr: &RelayAddress,
) -> (RelayClient, mpsc::Receiver<Pushed>, quinn::Endpoint) {
    let ep = endpoint();
    let (c, rx) = RelayClient::connect(&ep, addr, &client_options())
        .await
        .unwrap();
    (c, rx, ep)
}

/// Waits for the next pushed event (bounded, so a missing push fails instead of hanging).
pub async fn next_push(rx: &mut mpsc::Receiver<Pushed>) -> Pushed {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no push within 20 s")
        .expect("push channel closed")
}

/// Polls `f` until it returns true (bounded).
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
