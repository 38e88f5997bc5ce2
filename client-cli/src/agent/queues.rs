//! Our receive queues on relays: creating one (NEW, with the create password a private
//! relay needs) and deleting one (DEL), for invitations, accepting, rotating and deleting
//! contacts and for the outbox's deletions after a rotation.
//!
//! It does not record queues in the profile: the callers do, before anything refers to a
//! new queue.

use sotto_protocol::{ErrorCode, RelayAddress};

use super::net::NetError;
use super::state::RecvQueue;
use super::{Agent, AgentError};
use crate::client::QueueCredentials;

impl Agent {
    /// Creates a receive queue on `relay` (NEW), with the create password saved for it.
    pub(super) async fn create_queue(
        &mut self,
        relay: &RelayAddress,
    ) -> Result<QueueCredentials, AgentError> {
        let text = relay.to_string();
        let password = zeroize::Zeroizing::new(
            self.store
                .read()?
                .create_passwords
                .get(&text)
                .cloned()
                .unwrap_or_default(),
        );
        let pw = (!password.is_empty()).then(|| password.as_bytes());
        match self
            .net
            .request(relay, async |c| c.create_queue(pw).await)
            .await
        {
            Ok(creds) => Ok(creds),
            // NEW is refused with AUTH only for a missing or wrong create password.
            Err(e) if e.relay_code() == Some(ErrorCode::Auth) => Err(AgentError::CreateRefused {
                relay: text,
                had_password: pw.is_some(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes one of our receive queues (DEL); a queue that is already gone counts as
    /// deleted.
    pub(super) async fn delete_queue(&mut self, q: &RecvQueue) -> Result<(), NetError> {
        let creds = q.creds().map_err(|_| NetError::Request {
            relay: q.relay.clone(),
            source: crate::client::ClientError::UnexpectedResponse("unusable stored queue"),
        })?;
        let relay = creds.relay.clone();
        match self
            .net
            .request(&relay, async |c| c.delete(&creds).await)
            .await
        {
            // Already gone, or blocked by the relay's operator (unusable, and only the
            // operator can remove it).
            Err(e) if matches!(e.relay_code(), Some(ErrorCode::Auth | ErrorCode::Blocked)) => {
                Ok(())
            }
            r => r,
        }
    }

    /// Deletes a queue if the relay can be reached, ignoring any failure.
    pub(super) async fn delete_queue_best_effort(&mut self, creds: &QueueCredentials) {
        let relay = creds.relay.clone();
        let _ = self
            .net
            .request(&relay, async |c| c.delete(creds).await)
            .await;
    }

    /// `res` unchanged, but a failure first deletes the queue `creds` just created (best
    /// effort): it was never recorded, so nothing would ever use or delete it.
    pub(super) async fn delete_queue_on_error<T>(
        &mut self,
        creds: &QueueCredentials,
        res: Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        if res.is_err() {
            self.delete_queue_best_effort(creds).await;
        }
        res
    }
}
