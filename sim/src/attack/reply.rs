//! The reply attack: receiving shortly after Alice received (two-sided disclosure, after
//! Danezis, Diaz & Troncoso, "Two-sided statistical disclosure attack", PET 2007).
//!
//! People answer what they read. When Bob writes to Alice and she replies, Bob receives a
//! minute or so after Alice did, whatever pacing hides about when either of them sends. Each
//! frame `j` receives scores `j` for target Alice by an exponentially decaying sum over the
//! frames Alice received before it; the expected share (background) is subtracted as in SDA.

use super::kernel::Decay;

/// The attack's sums.
#[derive(Debug)]
pub struct Reply {
    k: usize,
    recent: Decay,
    score: Vec<f64>,
    bg: Vec<f64>,
    frames: u64,
    /// Frames each target received (left out of her own background).
    own_frames: Vec<u64>,
}

impl Reply {
    /// Sums for `n` users and `k` targets with a kernel of mean `mean_ms`.
    pub fn new(mean_ms: f64, n: usize, k: usize) -> Self {
        Self {
            k,
            recent: Decay::new(mean_ms, k),
            score: vec![0.0; n * k],
            bg: vec![0.0; k],
            frames: 0,
            own_frames: vec![0; k],
        }
    }

    /// User `j` (target `own`, if it is one) received a frame at `t`.
    pub fn received(&mut self, t: u64, j: usize, own: Option<u16>) {
        let f = self.recent.factor_at(t as f64);
        let k = self.k;
        let row = &mut self.score[j * k..(j + 1) * k];
        for (i, (v, b)) in self.recent.per.iter().zip(self.bg.iter_mut()).enumerate() {
            if own != Some(i as u16) {
                let w = v * f;
                row[i] += w;
                *b += w;
            }
        }
        self.frames += 1;
        if let Some(i) = own {
            self.own_frames[usize::from(i)] += 1;
        }
        if let Some(i) = own {
            self.recent.add(t as f64, 0.0, &[(i, 1.0)]);
        }
    }

    /// Target `i`'s score for user `j`, who received `n_j` frames: their kernel sums minus
    /// `n_j` times the mean over everybody else's frames (neither `j`'s nor Alice's).
    pub fn score(&self, i: usize, j: usize, n_j: u32) -> f64 {
        let mine = self.score[j * self.k + i];
        let frames = self.frames as f64 - f64::from(n_j) - self.own_frames[i] as f64;
        let mean = if frames > 0.0 {
            ((self.bg[i] - mine) / frames).max(0.0)
        } else {
            0.0
        };
        mine - f64::from(n_j) * mean
    }
}
