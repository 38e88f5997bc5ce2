//! `sotto --socks5 HOST:PORT` and `sotto relay proxy`: every relay connection goes through
//! a SOCKS5 proxy (Tor's, in real use; a small one written here), which resolves the relay's
//! host name — a name that does not resolve at all, so nothing works unless the client
//! leaves it to the proxy — and `.onion` relays are refused without one.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod agent_support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use agent_support::TestRelay;
use agent_support::cli::Profile;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A SOCKS5 proxy that connects every CONNECT to 127.0.0.1 at the requested port and
/// records the requested host names (only DOMAINNAME requests are accepted).
async fn spawn_socks5() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let names = Arc::new(Mutex::new(Vec::new()));
    let log = names.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(session(s, log.clone()));
        }
    });
    (addr, names)
}

async fn session(mut s: TcpStream, log: Arc<Mutex<Vec<String>>>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.unwrap();
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await.unwrap();
    s.write_all(&[5, 0]).await.unwrap();
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await.unwrap();
    assert_eq!(req, [5, 1, 0, 3], "CONNECT with a DOMAINNAME");
    let mut name = vec![0u8; s.read_u8().await.unwrap() as usize];
    s.read_exact(&mut name).await.unwrap();
    let port = s.read_u16().await.unwrap();
    log.lock().unwrap().push(String::from_utf8(name).unwrap());
    let mut upstream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0])
        .await
        .unwrap();
    let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
}

fn profile(root: &Path) -> Profile {
    Profile {
        home: root.join("alice"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_are_reached_through_the_proxy_with_names_the_client_never_resolves() {
    // `relay.test` does not resolve (RFC 2606), so only the proxy can use it.
    let relay = TestRelay::start_with(|c| {
        c.host = "relay.test".into();
        c.listen_tcp = "127.0.0.1:0".into();
    })
    .await;
    let addr = relay.address().to_string();
    assert!(
        addr.contains("@relay.test:") && addr.contains("?tcp="),
        "{addr}"
    );
    let (proxy, names) = spawn_socks5().await;
    let root = tempfile::tempdir().unwrap();
    let alice = profile(root.path());
    alice.ok(&["init"]).await;
    alice.ok(&["relay", "add", &addr]).await;

    assert_eq!(
        alice.ok(&["relay", "proxy"]).await.trim(),
        "connecting to relays directly"
    );
    // For one command.
    alice
        .ok(&["--socks5", &proxy, "invite", "--name", "bob"])
        .await;
    assert_eq!(names.lock().unwrap().as_slice(), ["relay.test"]);
    // As the profile's setting.
    assert_eq!(
        alice.ok(&["relay", "proxy", &proxy]).await.trim(),
        format!("connecting to relays through the SOCKS5 proxy {proxy}")
    );
    alice.ok(&["invite", "--name", "carol"]).await;
    assert_eq!(names.lock().unwrap().len(), 2);
    // Off again: the name cannot be resolved here, so the relay is out of reach.
    alice.ok(&["relay", "proxy", "--off"]).await;
    let err = alice.fails(&["invite", "--name", "dave"]).await;
    assert!(
        err.contains("unreachable") || err.contains("resolve"),
        "{err}"
    );
    assert_eq!(names.lock().unwrap().len(), 2);
    // A malformed proxy address is a usage error that says what to write.
    let err = alice.fails(&["--socks5", "9050", "relay", "list"]).await;
    assert!(
        err.contains("HOST:PORT") || err.contains("127.0.0.1:9050"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_udp_cannot_reach_is_used_over_tcp_with_a_notice() {
    let relay = TestRelay::start_with(|c| c.listen_tcp = "127.0.0.1:0".into()).await;
    let r = relay.relay.as_ref().unwrap();
    // The address names a UDP port that swallows everything (UDP "blocked"), and the
    // relay's real TCP port.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut addr = relay.address();
    addr.port = black_hole.local_addr().unwrap().port();
    addr.tcp = r.local_tcp_addr.map(|a| a.port());
    let root = tempfile::tempdir().unwrap();
    let alice = profile(root.path());
    alice.ok(&["init"]).await;
    alice.ok(&["relay", "add", &addr.to_string()]).await;
    let out = alice.run(&["invite", "--name", "bob"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sotto:"));
    assert!(
        err.contains("unreachable over UDP (QUIC); using TCP"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onion_relays_need_the_proxy() {
    let onion = "sottocliexxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.onion";
    let relay = TestRelay::start_with(|c| {
        c.host = onion.into();
        c.listen_tcp = "127.0.0.1:0".into();
    })
    .await;
    let addr = relay.address().to_string();
    let root = tempfile::tempdir().unwrap();
    let alice = profile(root.path());
    alice.ok(&["init"]).await;
    alice.ok(&["relay", "add", &addr]).await;
    let err = alice.fails(&["invite", "--name", "bob"]).await;
    assert!(
        err.contains(".onion") && err.contains("--socks5"),
        "refused with advice: {err}"
    );
    let (proxy, names) = spawn_socks5().await;
    alice
        .ok(&["--socks5", &proxy, "invite", "--name", "bob"])
        .await;
    assert_eq!(names.lock().unwrap().as_slice(), [onion]);
}
