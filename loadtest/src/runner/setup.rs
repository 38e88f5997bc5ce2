//! Setting up a relay run: per relay, `connections` receiver sessions that create the
//! queues — queue `q` lives on relay `q mod R` and is served by receiver session
//! `(q div R) mod N` of that relay — secure each with a fresh sender key and subscribe;
//! then `connections` sender sessions, which subscribe to nothing.
//!
//! It does not start the receive loops or send anything: [`super::receive`] and
//! [`super::dispatch`] do, and the ceiling run sets itself up in [`super`].

use std::sync::Arc;

use anyhow::{Context as _, bail};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use sotto_protocol::{AuthSecretKey, RelayAddress};
use sotto_transport::{ClientOptions, Pushed, RelayClient};
use tokio::sync::mpsc;

use super::Options;
use super::connections::{Sessions, connect_relay};
use super::dispatch::RelayQueue;

/// Queue setups (NEW, KEY, SUB) in flight at once.
const SETUP_CONCURRENCY: usize = 64;

/// A receiver session and what its relay pushes to it.
pub(super) type Receiver = (RelayClient, mpsc::Receiver<Pushed>);

/// Connects the receiver sessions of every relay and sets up the queues on them. Returns
/// the receivers (relay by relay) and the queues, indexed by queue number.
///
/// # Errors
/// If a session cannot connect or a queue cannot be created, secured or subscribed to.
pub(super) async fn receivers_and_queues(
    opts: &Options,
    relays: &[RelayAddress],
    copts: &ClientOptions,
    sessions: &mut Sessions,
) -> anyhow::Result<(Vec<Receiver>, Vec<RelayQueue>)> {
    let n = opts.connections;
    let r_count = relays.len().max(1);
    let password = opts.create_password.as_deref().map(str::as_bytes);
    let mut receivers: Vec<Vec<Receiver>> = Vec::new();
    for relay in relays {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(connect_relay(relay, copts, sessions).await?);
        }
        receivers.push(v);
    }
    let mut queues: Vec<Option<RelayQueue>> = vec![None; opts.queues as usize];
    let mut keep = |done: anyhow::Result<(u32, RelayQueue)>| -> anyhow::Result<()> {
        let (q, rq) = done?;
        if let Some(slot) = queues.get_mut(q as usize) {
            *slot = Some(rq);
        }
        Ok(())
    };
    let mut pending = FuturesUnordered::new();
    for q in 0..opts.queues {
        let relay = q as usize % r_count;
        let local = (q as usize / r_count) % n as usize;
        let client = receivers
            .get(relay)
            .and_then(|v| v.get(local))
            .map(|(c, _)| c.clone())
            .context("receiver session missing")?;
        let recipient = relay as u32 * n + local as u32;
        pending.push(setup_queue(client, password, q, relay, recipient));
        if pending.len() >= SETUP_CONCURRENCY
            && let Some(done) = pending.next().await
        {
            keep(done)?;
        }
    }
    while let Some(done) = pending.next().await {
        keep(done)?;
    }
    let queues: Vec<RelayQueue> = queues.into_iter().flatten().collect();
    if queues.len() != opts.queues as usize {
        bail!("not every queue was created");
    }
    Ok((receivers.into_iter().flatten().collect(), queues))
}

/// Connects the sender sessions: `senders[relay][i]`.
///
/// # Errors
/// If a session cannot connect.
pub(super) async fn connect_senders(
    opts: &Options,
    relays: &[RelayAddress],
    copts: &ClientOptions,
    sessions: &mut Sessions,
) -> anyhow::Result<Vec<Vec<RelayClient>>> {
    let mut senders: Vec<Vec<RelayClient>> = Vec::new();
    for relay in relays {
        let mut v = Vec::new();
        for _ in 0..opts.connections {
            let (c, rx) = connect_relay(relay, copts, sessions).await?;
            drop(rx); // senders subscribe to nothing; pushes would be discarded (counted)
            v.push(c);
        }
        senders.push(v);
    }
    Ok(senders)
}

/// Creates queue `q` on `client`'s relay, secures it with a fresh sender key and subscribes.
async fn setup_queue(
    client: RelayClient,
    password: Option<&[u8]>,
    q: u32,
    relay: usize,
    recipient: u32,
) -> anyhow::Result<(u32, RelayQueue)> {
    let creds = client
        .create_queue(password)
        .await
        .context("cannot create a queue (a private relay needs --create-password)")?;
    let sender_key = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    client
        .secure(&creds, sender_key.public())
        .await
        .context("cannot secure a queue")?;
    client
        .subscribe(&creds)
        .await
        .context("cannot subscribe to a queue")?;
    Ok((
        q,
        RelayQueue {
            relay,
            recipient,
            sender_key: Arc::new(sender_key),
            creds: Arc::new(creds),
        },
    ))
}
