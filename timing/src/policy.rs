//! Client traffic policies: the send stream, loop cover and the relay cover a client asks
//! for, as named presets with their bandwidth cost.
//!
//! A [`TrafficPolicy`] is what `sotto listen` (and any embedding application) runs while it is
//! connected: its link to each relay is paced ([`crate::pacing`]), it sends loops through its
//! own queues ([`crate::loops`]), and it asks each relay to pace what it sends back (a cover
//! frame at Poisson rate [`TrafficPolicy::relay_cover`], answers held for the next frame the
//! relay sends anyway). `docs/client.md` and `docs/threat-model.md` give the measured leakage
//! and latency of each preset; this module only holds the numbers and the arithmetic.

use std::time::Duration;

use crate::loops::LoopPolicy;
use crate::pacing::PacingPolicy;

/// How long after a received frame its echo leaves ([`TrafficPolicy::echo`]): long enough
/// for a client to queue the ACK of a pushed message (decrypt, store, ACK take a few
/// milliseconds), so that the echo carries it; the same for every frame, so that the echo's
/// timing says nothing about what the received frame held.
pub const ECHO_DELAY: Duration = Duration::from_millis(200);

/// Bytes one 16 KiB record costs on the wire over QUIC with padding: 12 datagrams of the
/// usual Ethernet MTU (1452 bytes) of UDP payload, measured on loopback (`docs/benchmarks.md`).
/// IP and UDP headers and acknowledgements add a few per cent.
pub const WIRE_BYTES_PER_RECORD: u64 = 12 * 1452;

const DAY_S: f64 = 86_400.0;

/// What a client does with its links while connected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficPolicy {
    /// Pacing of every link the client holds (`None`: frames leave as traffic comes, no
    /// cover: today's behaviour of one-shot commands).
    pub send: Option<PacingPolicy>,
    /// Loop cover through the client's own queues.
    pub loops: LoopPolicy,
    /// Cover frames per second the client asks each relay it receives on to send it; answers
    /// to its commands ride in those frames (or in the messages it receives) instead of in
    /// frames of their own. 0: the relay answers at once (an observer then sees which frames
    /// were real by the answers they get).
    pub relay_cover: f64,
    /// Answer every frame received with one frame [`ECHO_DELAY`] later (its ACKs and the
    /// next waiting transmission, or cover), besides the ticks. An ACK then leaves as soon as its message
    /// arrives, so the next message of the queue follows without waiting for a tick; and
    /// since every received frame gets exactly one answer, real or cover, the answers say
    /// nothing the received frames did not already say.
    pub echo: bool,
}

/// Expected bytes a day on one link, both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// Client → relay.
    pub up_bytes: f64,
    /// Relay → client, cover and loops only (messages from contacts come on top).
    pub down_bytes: f64,
}

impl Bandwidth {
    /// Both directions, in megabytes (10^6 bytes).
    pub fn total_mb(&self) -> f64 {
        (self.up_bytes + self.down_bytes) / 1e6
    }
}

impl TrafficPolicy {
    /// No pacing, no loops, no relay cover.
    pub const OFF: TrafficPolicy = TrafficPolicy {
        send: None,
        loops: LoopPolicy::OFF,
        relay_cover: 0.0,
        echo: false,
    };

    /// The default for a desktop client that stays connected: a frame every 14 s on average
    /// towards the relay, a relay cover frame every 80 s and a loop every 15 minutes, every
    /// received frame answered — about 148 MB a day per relay link for a connected client,
    /// and a median delivery latency to a connected recipient of about 10 s. The split
    /// (fewer ticks up, more cover down than the obvious choice) was chosen with the
    /// simulator: cover on the receiving side is what dilutes the reply attack
    /// (`docs/threat-model.md`).
    pub fn desktop() -> Self {
        Self {
            send: Some(PacingPolicy::at_rate(1.0 / 14.0)),
            loops: LoopPolicy {
                rate: 1.0 / 900.0,
                overdue_after: Duration::from_secs(1800),
            },
            relay_cover: 1.0 / 80.0,
            echo: true,
        }
    }

    /// For metered links: a frame every 60 s, a relay cover frame every 10 minutes and a
    /// loop an hour, every received frame answered — about 31 MB a day, at the price of a
    /// median wait of about 40 s before a message leaves.
    pub fn low_bandwidth() -> Self {
        Self {
            send: Some(PacingPolicy::at_rate(1.0 / 60.0)),
            loops: LoopPolicy {
                rate: 1.0 / 3600.0,
                overdue_after: Duration::from_secs(3 * 3600),
            },
            relay_cover: 1.0 / 600.0,
            echo: true,
        }
    }

    /// Looks a preset up by name: `off`, `desktop`, `low-bandwidth`.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "off" => Some(Self::OFF),
            "desktop" => Some(Self::desktop()),
            "low-bandwidth" => Some(Self::low_bandwidth()),
            _ => None,
        }
    }

    /// Expected cover bandwidth of one connected link per day: the paced frames up, the
    /// relay's cover and the returning loops down, and with `echo` one frame up for each of
    /// those (each loop takes a paced frame up; its ACK rides in another, or in its echo).
    /// Messages from contacts come on top (and, with `echo`, their answers).
    pub fn bandwidth_per_day(&self) -> Bandwidth {
        let up_rate = self.send.map_or(0.0, |p| p.rate);
        let loop_rate = if self.loops.is_on() {
            self.loops.rate
        } else {
            0.0
        };
        let down_rate = self.relay_cover + loop_rate;
        let echo_rate = if self.echo { down_rate } else { 0.0 };
        let per = WIRE_BYTES_PER_RECORD as f64 * DAY_S;
        Bandwidth {
            up_bytes: (up_rate + echo_rate) * per,
            down_bytes: down_rate * per,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_cost_what_their_docs_say() {
        for name in ["desktop", "low-bandwidth"] {
            let p = TrafficPolicy::named(name).unwrap();
            p.send.unwrap().validate().unwrap();
            assert!(p.loops.is_on());
        }
        let d = TrafficPolicy::desktop().bandwidth_per_day().total_mb();
        assert!((130.0..150.0).contains(&d), "{d}");
        let l = TrafficPolicy::low_bandwidth()
            .bandwidth_per_day()
            .total_mb();
        assert!((20.0..35.0).contains(&l), "{l}");
        assert_eq!(TrafficPolicy::OFF.bandwidth_per_day().total_mb(), 0.0);
        assert_eq!(TrafficPolicy::named("fast"), None);
    }

    #[test]
    fn a_frame_every_ten_seconds_is_about_150_mb_a_day() {
        let p = TrafficPolicy {
            send: Some(PacingPolicy::at_rate(0.1)),
            ..TrafficPolicy::OFF
        };
        let mb = p.bandwidth_per_day().total_mb();
        assert!((150.0..151.0).contains(&mb), "{mb}");
    }
}
