//! Crash durability: a relay process killed with SIGKILL mid-stream loses no message it
//! answered OK to, and delivers each exactly once after restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{self, RelayProcess};
use common::*;

fn spawn_relay(dir: &std::path::Path, listen: &str) -> RelayProcess {
    let mut cmd = process::relay_command(dir, &["--listen", listen, "--metrics", "off"]);
    cmd.env("SOTTO_RELAY_DELIVERY_MODE", "off")
        .env("SOTTO_RELAY_QUEUES_QUOTA", "100000")
        .env("RUST_LOG", "warn");
    process::spawn(cmd, dir).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = spawn_relay(dir.path(), "127.0.0.1:0");
    let port = relay.address.port;
    let (c, _p, _e) = connect(&relay.address).await;
    let creds = c.create_queue(None).await.unwrap();
    let mut acknowledged: HashSet<u64> = HashSet::new();
    let mut next = 0u64;

    for round in 0..3 {
        // Eight concurrent senders, each recording what the relay answered OK to.
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (client, _p, _e) = connect(&relay.address).await;
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let client = client.clone();
            let acked = acked.clone();
            let sender = creds.sender_id;
            let base = next + t * 1_000_000;
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let seq = base + i;
                    match client
                        .send(sender, None, 0, seq.to_be_bytes().to_vec())
                        .await
                    {
                        Ok(()) => acked.lock().unwrap().push(seq),
                        Err(_) => return,
                    }
                }
            }));
        }
        next += 100_000_000;
        eventually("some messages acknowledged", async || {
            acked.lock().unwrap().len() >= 60
        })
        .await;
        // SIGKILL in the middle of the stream.
        relay.sigkill();
        eprintln!(
            "round {round}: killed with {} acknowledged",
            acked.lock().unwrap().len()
        );
        // The dead relay cannot close the connection; end it here so the senders stop.
        client.close().await;
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        acknowledged.extend(acked.lock().unwrap().iter().copied());
        relay = spawn_relay(dir.path(), &format!("127.0.0.1:{port}"));
        let _ = round;
    }

    // Drain: every acknowledged message exactly once.
    let (c, _p, _e) = connect(&relay.address).await;
    let mut seen: Vec<u64> = Vec::new();
    while let Some(m) = c.get(&creds).await.unwrap() {
        seen.push(u64::from_be_bytes(m.body.as_slice().try_into().unwrap()));
        assert!(c.ack(&creds, m.msg_id).await.unwrap());
    }
    let unique: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a message was delivered twice");
    let lost: Vec<_> = acknowledged.difference(&unique).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost", lost.len());
    eprintln!(
        "{} acknowledged, {} delivered",
        acknowledged.len(),
        seen.len()
    );
}
