//! Helpers shared by the relay's integration tests: a real relay on 127.0.0.1:0 with a real
//! redb file in a temporary directory, and real QUIC clients.
#![allow(dead_code, clippy::unwrap_used, clippy::field_reassign_with_default)]

use std::time::Duration;

use sotto_client::transport::{self, QuicOptions};
use sotto_client::{ClientOptions, Pushed, RelayClient};
use sotto_protocol::RelayAddress;
use sotto_relay::config::Config;
use sotto_relay::{RunningRelay, datadir};
use tokio::sync::mpsc;

/// A relay in a temporary data directory.
pub struct TestRelay {
    pub relay: Option<RunningRelay>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

/// A configuration for tests: loopback, ephemeral port, no metrics, immediate delivery.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics = "off".into();
    c.delivery.mode = "off".into();
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
        old.shutdown().await;
        let mut config = self.config.clone();
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
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
