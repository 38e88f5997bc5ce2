//! The receiving side: one task per receiver session takes what its relay pushes, records
//! each arrival (the [`Collector`] verifies the body) and spawns its ACK — at most one per
//! queue is outstanding, since the relay delivers one unacknowledged message per queue at a
//! time. The ceiling's receivers only record.
//!
//! It does not decide when a run is over: [`super::drain`] does.

use std::collections::HashMap;
use std::sync::Arc;

use sotto_protocol::RecipientId;
use sotto_transport::{Pushed, QueueCredentials, RelayClient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::accounting::Collector;
use super::dispatch::RelayQueue;
use super::setup::Receiver;
use crate::ceiling::{self, CeilingConnection};

/// Queue number and credentials of each queue of the run, by recipient id.
type ByRecipient = HashMap<RecipientId, (u32, Arc<QueueCredentials>)>;

/// Starts the receive loop of every relay receiver session.
pub(super) fn spawn_relay(
    receivers: Vec<Receiver>,
    queues: &[RelayQueue],
    collector: &Arc<Collector>,
) -> Vec<JoinHandle<()>> {
    let mut by_recipient: ByRecipient = HashMap::new();
    for (q, rq) in queues.iter().enumerate() {
        by_recipient.insert(rq.creds.recipient_id, (q as u32, rq.creds.clone()));
    }
    let by_recipient = Arc::new(by_recipient);
    receivers
        .into_iter()
        .map(|(client, rx)| {
            tokio::spawn(relay_receive_loop(
                client,
                rx,
                by_recipient.clone(),
                collector.clone(),
            ))
        })
        .collect()
}

/// Starts the receive loop of a ceiling receiver session.
pub(super) fn spawn_ceiling(conn: CeilingConnection, collector: &Arc<Collector>) -> JoinHandle<()> {
    let collector = collector.clone();
    tokio::spawn(ceiling::receive(conn, move |queue, body| {
        let at = collector.now_us();
        collector.received(queue, body, at);
    }))
}

async fn relay_receive_loop(
    client: RelayClient,
    mut rx: mpsc::Receiver<Pushed>,
    by_recipient: Arc<ByRecipient>,
    collector: Arc<Collector>,
) {
    while let Some(p) = rx.recv().await {
        match p {
            Pushed::Msg { recipient_id, msg } => {
                let at = collector.now_us();
                let Some((queue, creds)) = by_recipient.get(&recipient_id) else {
                    collector.corrupt("message on a queue this run did not create");
                    continue;
                };
                // The ACK is spawned before the arrival is recorded, so that when the last
                // message resolves its ACK is already tracked and is waited for.
                let opened = msg.open(creds);
                let (client, creds, c) = (client.clone(), creds.clone(), collector.clone());
                collector.acks.spawn(async move {
                    if let Err(e) = client.ack(&creds, msg.msg_id).await {
                        c.ack_failed(e);
                    }
                });
                match opened {
                    Ok(m) => collector.received(*queue, &m.body, at),
                    Err(e) => collector.corrupt(format!("corrupted message: {e}")),
                }
            }
            Pushed::End { .. } => collector.error("a subscription ended during the run"),
            Pushed::Closed(_) => break,
        }
    }
}
