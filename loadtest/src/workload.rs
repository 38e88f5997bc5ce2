//! The workload: which message goes to which queue from which session, when, and with what
//! body — all a pure function of the seed.
//!
//! This module owns workload generation and the body format that makes delivery verifiable.
//! It does no I/O and reads no clock: arrival times are offsets from the start of a run.
//!
//! # Body format
//!
//! ```text
//! offset  0  seq         u64 little-endian
//! offset  8  queue       u32 little-endian (index of the queue the message was sent to)
//! offset 12  checksum    32 bytes: BLAKE3 of bytes [0, 12) ‖ [44, len)
//! offset 44  filler      BLAKE3-XOF keyed by the seed, over seq: deterministic, incompressible
//! ```
//!
//! A received body is *intact* when it is at least [`HEADER_LEN`] bytes, its checksum
//! matches and its queue field names the queue it arrived on; its sequence number is then
//! trusted. Anything else is *corrupted*.

use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;

/// Bytes of the header every body starts with (seq, queue, checksum).
pub const HEADER_LEN: usize = 8 + 4 + 32;

/// What a run sends: the parameters that, with the seed, fix every message.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    /// Seed of every random choice (same seed → same workload).
    pub seed: u64,
    /// Number of queues; each message goes to one chosen uniformly at random.
    pub queues: u32,
    /// Number of sender sessions; each message is sent by one chosen uniformly at random.
    pub senders: u32,
    /// Total arrival rate in messages per second (Poisson arrivals); `0` = no schedule, as
    /// fast as the in-flight window allows.
    pub rate: f64,
    /// Stop after this many messages (`None`: unbounded, the runner stops on duration).
    pub messages: Option<u64>,
    /// With a rate, stop generating arrivals after this offset.
    pub duration: Option<Duration>,
}

/// One message of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Sequence number, from 0.
    pub seq: u64,
    /// Queue index in `0..queues`.
    pub queue: u32,
    /// Sender session index in `0..senders`.
    pub sender: u32,
    /// Planned send time as an offset from the start of the run (`None` without a rate).
    pub at: Option<Duration>,
}

/// Iterator over the planned messages of a [`WorkloadSpec`].
#[derive(Debug, Clone)]
pub struct Workload {
    spec: WorkloadSpec,
    rng: ChaCha20Rng,
    next_seq: u64,
    clock_s: f64,
}

impl Workload {
    /// The workload of `spec`. Queue and sender counts of zero are treated as one.
    pub fn new(spec: WorkloadSpec) -> Self {
        let rng = ChaCha20Rng::seed_from_u64(spec.seed);
        Self {
            spec,
            rng,
            next_seq: 0,
            clock_s: 0.0,
        }
    }
}

impl Iterator for Workload {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.spec.messages.is_some_and(|m| self.next_seq >= m) {
            return None;
        }
        let queue = self.rng.gen_range(0..self.spec.queues.max(1));
        let sender = self.rng.gen_range(0..self.spec.senders.max(1));
        let at = if self.spec.rate > 0.0 && self.spec.rate.is_finite() {
            // Exponential gaps (a Poisson arrival process).
            let u: f64 = self.rng.r#gen();
            self.clock_s += sotto_timing::exp::exp_quantile(1.0 / self.spec.rate, u);
            let at = Duration::try_from_secs_f64(self.clock_s).unwrap_or(Duration::MAX);
            if self.spec.duration.is_some_and(|d| at > d) {
                return None;
            }
            Some(at)
        } else {
            None
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        Some(Planned {
            seq,
            queue,
            sender,
            at,
        })
    }
}

/// Why a received body is not intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// Shorter than the header.
    #[error("body shorter than the header")]
    Short,
    /// The checksum does not match the contents.
    #[error("checksum mismatch")]
    Checksum,
    /// Intact, but it arrived on another queue than the one it was sent to.
    #[error("message arrived on the wrong queue")]
    WrongQueue,
}

/// Builds the body of message `seq` to `queue`, `len` bytes long (at least [`HEADER_LEN`];
/// shorter lengths are raised to it).
pub fn make_body(seed: u64, seq: u64, queue: u32, len: usize) -> Vec<u8> {
    let len = len.max(HEADER_LEN);
    let mut body = vec![0u8; len];
    let (header, filler) = body.split_at_mut(HEADER_LEN);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut xof = blake3::Hasher::new_keyed(&key);
    xof.update(&seq.to_le_bytes());
    xof.finalize_xof().fill(filler);
    header[..8].copy_from_slice(&seq.to_le_bytes());
    header[8..12].copy_from_slice(&queue.to_le_bytes());
    let sum = checksum(&body);
    body[12..HEADER_LEN].copy_from_slice(sum.as_bytes());
    body
}

/// Checks a received body that arrived on `queue`; returns its sequence number if intact.
///
/// # Errors
/// [`Corruption`] saying what is wrong.
pub fn verify_body(body: &[u8], queue: u32) -> Result<u64, Corruption> {
    let (Some(seq), Some(q), Some(sum)) = (body.get(..8), body.get(8..12), body.get(12..44)) else {
        return Err(Corruption::Short);
    };
    if checksum(body).as_bytes().as_slice() != sum {
        return Err(Corruption::Checksum);
    }
    let mut q_bytes = [0u8; 4];
    q_bytes.copy_from_slice(q);
    if u32::from_le_bytes(q_bytes) != queue {
        return Err(Corruption::WrongQueue);
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(seq);
    Ok(u64::from_le_bytes(seq_bytes))
}

/// BLAKE3 of everything but the checksum field (the caller guarantees `body.len() ≥ 44`).
fn checksum(body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(body.get(..12).unwrap_or_default());
    h.update(body.get(HEADER_LEN..).unwrap_or_default());
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rate: f64) -> WorkloadSpec {
        WorkloadSpec {
            seed: 7,
            queues: 8,
            senders: 3,
            rate,
            messages: Some(1000),
            duration: None,
        }
    }

    #[test]
    fn same_seed_same_workload_and_bodies() {
        let a: Vec<Planned> = Workload::new(spec(100.0)).collect();
        let b: Vec<Planned> = Workload::new(spec(100.0)).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 1000);
        let c: Vec<Planned> = Workload::new(WorkloadSpec {
            seed: 8,
            ..spec(100.0)
        })
        .collect();
        assert_ne!(a, c);
        assert_eq!(make_body(7, 3, 1, 500), make_body(7, 3, 1, 500));
        assert_ne!(make_body(7, 3, 1, 500), make_body(8, 3, 1, 500));
        // Every queue and sender is used, arrival times increase at about the rate.
        assert!((0..8).all(|q| a.iter().any(|p| p.queue == q)));
        assert!((0..3).all(|s| a.iter().any(|p| p.sender == s)));
        let last = a.last().and_then(|p| p.at).unwrap().as_secs_f64();
        assert!((last - 10.0).abs() < 1.5, "{last}");
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn duration_bounds_scheduled_arrivals() {
        let w = Workload::new(WorkloadSpec {
            messages: None,
            duration: Some(Duration::from_secs(2)),
            ..spec(50.0)
        });
        let n = w.count();
        assert!((60..=140).contains(&n), "{n}");
        let unscheduled = Workload::new(spec(0.0)).next().unwrap();
        assert_eq!(unscheduled.at, None);
    }

    #[test]
    fn bodies_verify_and_corruption_is_detected() {
        let body = make_body(1, 42, 5, sotto_protocol::MAX_BODY);
        assert_eq!(body.len(), sotto_protocol::MAX_BODY);
        assert_eq!(verify_body(&body, 5), Ok(42));
        assert_eq!(verify_body(&body, 4), Err(Corruption::WrongQueue));
        let mut flipped = body.clone();
        flipped[9000] ^= 1;
        assert_eq!(verify_body(&flipped, 5), Err(Corruption::Checksum));
        let mut seq_changed = body.clone();
        seq_changed[0] ^= 1;
        assert_eq!(verify_body(&seq_changed, 5), Err(Corruption::Checksum));
        assert_eq!(verify_body(&body[..20], 5), Err(Corruption::Short));
        assert_eq!(make_body(1, 1, 1, 3).len(), HEADER_LEN);
        assert_eq!(verify_body(&make_body(1, 9, 2, 0), 2), Ok(9));
    }
}
