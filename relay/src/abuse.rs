//! Abuse handling: `sotto-relay block`, `unblock` and `blocks list`, run offline against a
//! stopped relay's data directory (see `docs/operator.md`, "Abuse reports").
//!
//! What an operator is given in a report is what a user can see: an invitation link
//! (`sotto:…`, `docs/client.md`) or a queue address (`sotto://…#<sender id>`), rarely a bare
//! id. [`Target::parse`] reads each of them; [`resolve`] turns it into the queue's on-disk
//! reference (the keyed hash of its recipient id). The block list stores only that
//! reference, so the list says nothing about ids without `storage.key`, and nothing here
//! prints or logs an id.
//!
//! Why offline: the store is one redb file that one process holds at a time, and a block is
//! rare and urgent enough that a restart (a few seconds without service; clients reconnect
//! by themselves) is the simpler, safer price than a control socket into the running relay.
//! A running relay makes [`open_offline`] fail with an error that says to stop it first.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sotto_protocol::address::QueueAddress;
use sotto_protocol::ids::ID_LEN;
use sotto_protocol::{RecipientId, RelayPublicKey, SenderId};

use crate::datadir;
use crate::store::{QueueRef, Store, StoreError, StoreOptions, WriteOp, WriteOutcome};

/// What the operator names a queue by.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// The sending side (from an invitation link or a queue address).
    Sender(SenderId),
    /// A bare 24-byte id, base64url: a sender id or a recipient id (tried in that order).
    Id([u8; ID_LEN]),
    /// A block list entry as `blocks list` prints it (64 hex digits).
    Ref(QueueRef),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never an id in a log line or a panic message.
        f.write_str(match self {
            Target::Sender(_) => "Target::Sender(<redacted>)",
            Target::Id(_) => "Target::Id(<redacted>)",
            Target::Ref(_) => "Target::Ref(<redacted>)",
        })
    }
}

/// Invitation layout (`docs/client.md`, "The invitation"): version 1, invitation id (16),
/// identity key (32), one-time key (32), envelope key (32), queue address length (u16 BE),
/// then the queue address.
const INVITATION_FIXED: usize = 1 + 16 + 32 + 32 + 32 + 2;

impl Target {
    /// Parses an invitation link, a queue address, a bare id or a block list entry. When
    /// the text names a relay (links and addresses do), it must be `relay`.
    ///
    /// # Errors
    /// A message saying what is wrong with the text; nothing is looked up.
    pub fn parse(text: &str, relay: &RelayPublicKey) -> anyhow::Result<Target> {
        let text = text.trim();
        if text.starts_with("sotto://") {
            let q: QueueAddress = text
                .parse()
                .map_err(|e| anyhow::anyhow!("malformed queue address: {e}"))?;
            return Self::on_this_relay(q, relay);
        }
        if let Some(rest) = text.strip_prefix("sotto:") {
            return Self::on_this_relay(invitation_queue(rest)?, relay);
        }
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut r = [0u8; 32];
            hex::decode_to_slice(text, &mut r).context("malformed block list entry")?;
            return Ok(Target::Ref(r));
        }
        if let Some(id) = URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .and_then(|b| <[u8; ID_LEN]>::try_from(b.as_slice()).ok())
        {
            return Ok(Target::Id(id));
        }
        bail!(
            "cannot read `{}`: expected an invitation link (sotto:…), a queue address \
             (sotto://…#…), a 32-character base64url queue id, or a 64-hex-digit entry of \
             `sotto-relay blocks list`",
            shorten(text)
        )
    }

    fn on_this_relay(q: QueueAddress, relay: &RelayPublicKey) -> anyhow::Result<Target> {
        if q.relay.key != *relay {
            bail!(
                "this link names the relay {}, not this one: the queue is not stored here \
                 (forward the report to that relay's operator)",
                q.relay
            );
        }
        Ok(Target::Sender(q.sender_id))
    }
}

fn shorten(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// The queue address inside an invitation link (the text after `sotto:`).
fn invitation_queue(rest: &str) -> anyhow::Result<QueueAddress> {
    let bad = |why: &str| anyhow::anyhow!("malformed invitation link: {why}");
    if rest.len() > 4096 {
        return Err(bad("too long"));
    }
    let b = URL_SAFE_NO_PAD
        .decode(rest)
        .map_err(|_| bad("not base64url"))?;
    match b.first() {
        Some(1) => {}
        Some(v) => return Err(bad(&format!("unknown version {v}"))),
        None => return Err(bad("empty")),
    }
    let len = b
        .get(INVITATION_FIXED - 2..INVITATION_FIXED)
        .map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])))
        .ok_or_else(|| bad("too short"))?;
    let q = b
        .get(INVITATION_FIXED..)
        .filter(|q| q.len() == len)
        .ok_or_else(|| bad("length does not add up"))?;
    let q = std::str::from_utf8(q).map_err(|_| bad("queue address is not UTF-8"))?;
    q.parse()
        .map_err(|e| bad(&format!("invalid queue address: {e}")))
}

/// The reference of the queue `target` names, if the store holds it (for a [`Target::Ref`],
/// also when only the block list holds it).
///
/// # Errors
/// Read failure.
pub fn resolve(store: &Store, target: &Target) -> Result<Option<QueueRef>, StoreError> {
    match target {
        Target::Sender(s) => store.sender_queue_ref(s),
        Target::Id(id) => {
            if let Some(r) = store.sender_queue_ref(&SenderId(*id))? {
                return Ok(Some(r));
            }
            let r = store.queue_ref(&RecipientId(*id));
            Ok(store.queue_by_ref(&r)?.map(|_| r))
        }
        Target::Ref(r) => {
            if store.queue_by_ref(r)?.is_some() || store.blocked()?.iter().any(|(b, _)| b == r) {
                Ok(Some(*r))
            } else {
                Ok(None)
            }
        }
    }
}

/// Opens the store of a stopped relay's data directory.
///
/// # Errors
/// The relay is running (the file is locked), or the directory or store cannot be read.
pub fn open_offline(dir: &Path) -> anyhow::Result<(Store, RelayPublicKey)> {
    let id = datadir::load_identity(dir)?;
    let path = dir.join(datadir::DB_FILE);
    match Store::open(&path, &id.storage_key, StoreOptions::default()) {
        Ok(s) => Ok((s, id.relay_key.public())),
        Err(StoreError::Open { reason, .. }) if reason.to_lowercase().contains("already open") => {
            bail!(
                "the relay is running on {} (its database is locked): stop it first \
                 (`systemctl stop sotto-relay`), run this command again, then start it",
                dir.display()
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// What [`block`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The block list entry (hex of the queue reference).
    pub entry: String,
    /// Messages deleted.
    pub messages: u64,
    /// Whether the queue was blocked already.
    pub already: bool,
}

fn no_queue() -> anyhow::Error {
    anyhow::anyhow!(
        "no queue on this relay has that id: nothing was changed (it may have been deleted by \
         its recipient or expired, or the link is for another queue)"
    )
}

/// Blocks the queue `text` names (see [`Target::parse`]) in a stopped relay's store.
///
/// # Errors
/// Unreadable text, an unknown queue, or a store failure; nothing is changed then.
pub async fn block(store: &Store, relay: &RelayPublicKey, text: &str) -> anyhow::Result<Blocked> {
    let target = Target::parse(text, relay)?;
    let queue = resolve(store, &target)?.ok_or_else(no_queue)?;
    match store
        .write(WriteOp::Block {
            queue,
            now: unix_now(),
        })
        .await?
    {
        WriteOutcome::BlockedNow { messages, already } => Ok(Blocked {
            entry: hex::encode(queue),
            messages,
            already,
        }),
        WriteOutcome::NoQueue => Err(no_queue()),
        other => bail!("unexpected store outcome {other:?}"),
    }
}

/// Lifts the block of the queue `text` names: a link, an id or a `blocks list` entry.
/// Returns the entry.
///
/// # Errors
/// Unreadable text, a queue that is unknown or not blocked, or a store failure; nothing is
/// changed then.
pub async fn unblock(store: &Store, relay: &RelayPublicKey, text: &str) -> anyhow::Result<String> {
    let target = Target::parse(text, relay)?;
    let queue = resolve(store, &target)?.ok_or_else(no_queue)?;
    match store.write(WriteOp::Unblock { queue }).await? {
        WriteOutcome::Done => Ok(hex::encode(queue)),
        WriteOutcome::NotBlocked => {
            bail!("that queue is not blocked: nothing was changed")
        }
        WriteOutcome::NoQueue => Err(no_queue()),
        other => bail!("unexpected store outcome {other:?}"),
    }
}

/// The block list as `blocks list` prints it: a count line, then one line per entry
/// (`<entry> blocked <time, UTC>`).
///
/// # Errors
/// Store read failure.
pub fn list(store: &Store) -> anyhow::Result<String> {
    let entries = store.blocked()?;
    let mut out = format!("{} blocked queue(s)\n", entries.len());
    for (r, at) in entries {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
        out.push_str(&format!(
            "{} blocked {}\n",
            hex::encode(r),
            humantime::format_rfc3339_seconds(t)
        ));
    }
    Ok(out)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
