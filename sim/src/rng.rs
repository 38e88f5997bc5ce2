//! Seeded, independent random streams: one per purpose and index, so that adding a user or an
//! attack does not shift every other draw of the run.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// What a stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Building the population.
    Population = 1,
    /// A user's writing, replies, sessions and choices (index: user).
    User = 2,
    /// A user's pacer (index: user).
    Pacer = 3,
    /// A user's loop schedule (index: user).
    Loops = 4,
    /// A relay's release delays (index: relay).
    Relay = 5,
    /// A relay's forwarding delays (index: relay).
    Forward = 6,
    /// A relay's cover towards one user (index: user).
    RelayCover = 7,
    /// Choosing targets.
    Targets = 8,
}

/// The generator of stream `kind`, number `index`, of the run seeded with `seed`.
pub fn rng_for(seed: u64, kind: Stream, index: u64) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(((kind as u64) << 40) | (index & ((1 << 40) - 1)));
    rng
}
