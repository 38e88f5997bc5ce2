//! The statistical disclosure attack (Danezis, "Statistical disclosure attacks", SEC 2003),
//! weighted by the number of messages Alice sends per round (Mathewson & Dingledine,
//! "Practical traffic analysis: extending and resisting statistical disclosure", PET 2004).
//!
//! Time is cut into rounds. In each round the adversary counts Alice's outgoing frames `x`
//! and every user's incoming frames `y_j` (over that round and the next, since a message may
//! arrive after the round it left in). Alice's contacts are where her rounds put more
//! incoming traffic than the background: the score of `j` is
//! `Σ_r x_r·(y_j,r + y_j,r+1) / Σ_r x_r − 2·mean_r(y_j,r)`. Against a client whose link is
//! paced, `x_r` no longer says when Alice writes, only when she is connected: the attack
//! then measures what her presence gives away.

/// The attack's sums.
#[derive(Debug)]
pub struct Sda {
    k: usize,
    round_ms: u64,
    round_end: u64,
    x_cur: Vec<u32>,
    x_prev: Vec<u32>,
    y_cur: Vec<u32>,
    y_prev: Vec<u32>,
    touched_cur: Vec<u32>,
    touched_prev: Vec<u32>,
    /// Σ x·y, user-major (`j·k + target`).
    s: Vec<f64>,
    xsum: Vec<f64>,
    ysum: Vec<f64>,
    rounds: u64,
}

impl Sda {
    /// Sums for `n` users, `k` targets and rounds of `round_ms`.
    pub fn new(n: usize, k: usize, round_ms: u64) -> Self {
        Self {
            k,
            round_ms: round_ms.max(1),
            round_end: round_ms.max(1),
            x_cur: vec![0; k],
            x_prev: vec![0; k],
            y_cur: vec![0; n],
            y_prev: vec![0; n],
            touched_cur: Vec::new(),
            touched_prev: Vec::new(),
            s: vec![0.0; n * k],
            xsum: vec![0.0; k],
            ysum: vec![0.0; n],
            rounds: 0,
        }
    }

    /// An outgoing frame of a user (`target`: its index if it is a target).
    pub fn up(&mut self, t: u64, target: Option<u16>) {
        self.advance(t);
        if let Some(i) = target {
            self.x_cur[usize::from(i)] += 1;
        }
    }

    /// An incoming frame of user `j`.
    pub fn down(&mut self, t: u64, j: usize) {
        self.advance(t);
        if self.y_cur[j] == 0 {
            self.touched_cur.push(j as u32);
        }
        self.y_cur[j] += 1;
    }

    /// Closes every round that ended by `t`.
    pub fn advance(&mut self, t: u64) {
        while t >= self.round_end {
            self.close_round();
            self.round_end += self.round_ms;
        }
    }

    fn close_round(&mut self) {
        let k = self.k;
        let active: Vec<(usize, f64)> = self
            .x_prev
            .iter()
            .enumerate()
            .filter(|(_, x)| **x > 0)
            .map(|(i, x)| (i, f64::from(*x)))
            .collect();
        if !active.is_empty() {
            let prev = std::mem::take(&mut self.touched_prev);
            for &j in &prev {
                let j = j as usize;
                let y = f64::from(self.y_prev[j] + self.y_cur[j]);
                let row = &mut self.s[j * k..(j + 1) * k];
                for &(i, x) in &active {
                    row[i] += x * y;
                }
            }
            for &j in &self.touched_cur {
                let j = j as usize;
                if self.y_prev[j] > 0 {
                    continue;
                }
                let y = f64::from(self.y_cur[j]);
                let row = &mut self.s[j * k..(j + 1) * k];
                for &(i, x) in &active {
                    row[i] += x * y;
                }
            }
            self.touched_prev = prev;
        }
        for (i, x) in self.x_prev.iter().enumerate() {
            self.xsum[i] += f64::from(*x);
        }
        for &j in &self.touched_cur {
            self.ysum[j as usize] += f64::from(self.y_cur[j as usize]);
        }
        self.rounds += 1;
        // Shift: the current round becomes the previous one.
        for &j in &self.touched_prev {
            self.y_prev[j as usize] = 0;
        }
        std::mem::swap(&mut self.y_prev, &mut self.y_cur);
        std::mem::swap(&mut self.touched_prev, &mut self.touched_cur);
        self.touched_cur.clear();
        std::mem::swap(&mut self.x_prev, &mut self.x_cur);
        self.x_cur.iter_mut().for_each(|x| *x = 0);
    }

    /// Target `i`'s score for user `j` over the rounds closed so far.
    pub fn score(&self, i: usize, j: usize) -> f64 {
        let x = self.xsum[i];
        if x <= 0.0 || self.rounds == 0 {
            return 0.0;
        }
        self.s[j * self.k + i] / x - 2.0 * self.ysum[j] / self.rounds as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contact_who_receives_after_alices_rounds_scores_highest() {
        // Alice (target 0) sends in about half the rounds, and user 1 receives in those;
        // user 2 receives in about half the rounds, independently of her; user 3 never.
        let mut s = Sda::new(4, 1, 1000);
        let mut x = 12345u64;
        let mut coin = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 63 == 1
        };
        for r in 0..2000u64 {
            let t = r * 1000 + 10;
            if coin() {
                s.up(t, Some(0));
                s.down(t + 5, 1);
            }
            if coin() {
                s.down(t + 6, 2);
            }
        }
        s.advance(2_000_500);
        let (s1, s2, s3) = (s.score(0, 1), s.score(0, 2), s.score(0, 3));
        assert!((s1 - 0.5).abs() < 0.1, "contact: {s1}");
        assert!(s2.abs() < 0.1, "background cancels: {s2}");
        assert_eq!(s3, 0.0);
    }
}
