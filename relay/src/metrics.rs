//! Prometheus metrics and their HTTP endpoint.
//!
//! Every name is prefixed `sotto_`. Labels are only from fixed, small sets (command names,
//! error codes, limit names): never a queue id, key or client address, so a scrape reveals
//! nothing about who uses the relay. The endpoint is a minimal HTTP/1.1 responder for
//! `GET /metrics` on the configured (loopback by default) address.

use std::net::SocketAddr;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// Every `limit` label of [`Metrics::rate_limited`], each the name of what was exceeded.
/// They are exported at zero from the start, so a dashboard can tell "never hit" from
/// "not scraped".
pub const LIMITS: &[&str] = &[
    "handshakes_per_ip",
    "tracked_sources",
    "max_sessions",
    "max_sessions_per_ip",
    "commands_per_session",
    "new_per_session",
    "subscriptions_per_session",
    "forwards_per_session",
    "min_pace_gap",
    "idle_session",
    "record_timeout",
];

/// Every `result` label of [`Metrics::handshakes`].
pub const HANDSHAKE_RESULTS: &[&str] = &["ok", "failed", "timeout", "retry"];

/// Most scrapes served at once; further connections are closed unanswered.
const MAX_SCRAPERS: usize = 16;

/// All relay metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry they live in.
    pub registry: Registry,
    /// Open sessions (handshake completed).
    pub sessions: IntGauge,
    /// Handshakes by result ([`HANDSHAKE_RESULTS`]: `ok`, `failed`, `timeout`, and `retry`
    /// when an unvalidated source was asked to prove its address first).
    pub handshakes: IntCounterVec,
    /// Commands by kind.
    pub commands: IntCounterVec,
    /// Error answers by code.
    pub errors: IntCounterVec,
    /// Queues stored.
    pub queues: IntGauge,
    /// Messages stored.
    pub stored_messages: IntGauge,
    /// Queues blocked by the operator.
    pub blocked_queues: IntGauge,
    /// Messages accepted (SEND answered OK).
    pub messages_sent: IntCounter,
    /// Messages delivered (MSG sent).
    pub messages_delivered: IntCounter,
    /// Messages acknowledged (deleted).
    pub messages_acked: IntCounter,
    /// Messages removed by TTL.
    pub messages_expired: IntCounter,
    /// Queues removed for idleness.
    pub queues_expired: IntCounter,
    /// Record bytes received.
    pub bytes_in: IntCounter,
    /// Record bytes sent.
    pub bytes_out: IntCounter,
    /// Cover frames sent by the relay.
    pub cover_sent: IntCounter,
    /// Cover (DROP) frames received.
    pub cover_received: IntCounter,
    /// Sessions paced right now (PACE with a gap above zero).
    pub paced_sessions: IntGauge,
    /// Frames sent at the ticks of paced sessions, whether they carried answers or were cover.
    pub pace_ticks: IntCounter,
    /// Ticks of paced sessions that carried no answer (cover frames). Not counted in
    /// `cover_sent`, which is the relay-wide cover of unpaced sessions.
    pub pace_cover: IntCounter,
    /// Forwarding delays (`forwarding.delay_mean`) waited out in full before a FWD went on.
    pub forward_delay_seconds: Histogram,
    /// FWDs waiting out their forwarding delay right now.
    pub forward_delayed: IntGauge,
    /// FWDs whose forwarding delay was cut short by shutdown (answered `ERR UNREACHABLE`,
    /// nothing forwarded).
    pub forward_delays_cut: IntCounter,
    /// Messages waiting for release.
    pub pool_size: IntGauge,
    /// Realised delays.
    pub delay_seconds: Histogram,
    /// Durable commit latency.
    pub commit_seconds: Histogram,
    /// Writes per commit.
    pub commit_batch: Histogram,
    /// Commits made without fsync (ACK deletions, expiry).
    pub relaxed_commits: IntCounter,
    /// 1 while the store is full and refuses new queues and messages.
    pub store_full: IntGauge,
    /// 1 once the store is read-only after a failed disk write or fsync.
    pub store_read_only: IntGauge,
    /// Open sessions over TLS/TCP (counted in `sessions` too).
    pub sessions_tcp: IntGauge,
    /// Refusals by limit name ([`LIMITS`]).
    pub rate_limited: IntCounterVec,
    /// Sessions closed for a protocol violation (malformed or undecryptable record).
    pub protocol_errors: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// Only if two metrics share a name (a programming error caught by tests).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(format!("sotto_{name}"), help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(format!("sotto_{name}"), help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter_vec =
            |name: &str, help: &str, label: &str| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(format!("sotto_{name}"), help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<Histogram> {
                let h = Histogram::with_opts(
                    HistogramOpts::new(format!("sotto_{name}"), help).buckets(buckets),
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let m = Metrics {
            sessions: gauge("sessions", "Open sessions")?,
            handshakes: counter_vec("handshakes_total", "Handshakes by result", "result")?,
            commands: counter_vec("commands_total", "Commands received by kind", "command")?,
            errors: counter_vec("errors_total", "Error answers by code", "code")?,
            queues: gauge("queues", "Queues stored")?,
            stored_messages: gauge("stored_messages", "Messages stored (released or not)")?,
            blocked_queues: gauge(
                "blocked_queues",
                "Queues blocked by the operator (sotto-relay block)",
            )?,
            messages_sent: counter(
                "messages_sent_total",
                "Messages accepted (SEND answered OK)",
            )?,
            messages_delivered: counter(
                "messages_delivered_total",
                "MSG transmissions sent to recipients",
            )?,
            messages_acked: counter("messages_acked_total", "Messages acknowledged and deleted")?,
            messages_expired: counter("messages_expired_total", "Messages deleted by TTL")?,
            queues_expired: counter("queues_expired_total", "Idle queues deleted")?,
            bytes_in: counter("bytes_in_total", "Record bytes received")?,
            bytes_out: counter("bytes_out_total", "Record bytes sent")?,
            cover_sent: counter(
                "cover_frames_sent_total",
                "Cover frames sent to subscribed sessions",
            )?,
            cover_received: counter(
                "cover_frames_received_total",
                "Cover (DROP) frames received",
            )?,
            paced_sessions: gauge(
                "paced_sessions",
                "Sessions paced by PACE (a frame at each tick, answers held for it)",
            )?,
            pace_ticks: counter(
                "pace_ticks_total",
                "Frames sent at the ticks of paced sessions (answers or cover)",
            )?,
            pace_cover: counter(
                "pace_cover_frames_total",
                "Ticks of paced sessions that carried no answer (cover)",
            )?,
            forward_delay_seconds: histogram(
                "forward_delay_seconds",
                "Forwarding delay a FWD was held for before it was forwarded",
                prometheus::exponential_buckets(0.01, 2.0, 16)?,
            )?,
            forward_delayed: gauge("forward_delayed", "FWDs waiting out their forwarding delay")?,
            forward_delays_cut: counter(
                "forward_delays_cut_total",
                "FWDs whose forwarding delay was cut short by shutdown (not forwarded)",
            )?,
            pool_size: gauge(
                "scheduler_pool_size",
                "Messages waiting for their release time",
            )?,
            delay_seconds: histogram(
                "delivery_delay_seconds",
                "Realised delay between storing a message and releasing it",
                prometheus::exponential_buckets(0.01, 2.0, 16)?,
            )?,
            commit_seconds: histogram(
                "store_commit_seconds",
                "Durable commit latency",
                prometheus::exponential_buckets(0.0002, 2.0, 16)?,
            )?,
            commit_batch: histogram(
                "store_commit_batch_size",
                "Writes grouped into one commit",
                prometheus::exponential_buckets(1.0, 2.0, 12)?,
            )?,
            relaxed_commits: counter(
                "store_relaxed_commits_total",
                "Commits without fsync (ACK deletions, expiry), durable with the next durable commit or within 250 ms",
            )?,
            store_full: gauge(
                "store_full",
                "1 while the store is full (store.max_mib reached, or less free disk than store.reserve_mib): NEW and SEND answer STORE, reads and deletions go on",
            )?,
            store_read_only: gauge(
                "store_read_only",
                "1 once a write or fsync of the database failed without the disk being full: every write answers STORE until the relay is restarted",
            )?,
            sessions_tcp: gauge(
                "sessions_tcp",
                "Open sessions over TLS/TCP, the fallback for networks that block UDP (included in sotto_sessions)",
            )?,
            rate_limited: counter_vec("rate_limited_total", "Refusals by limit", "limit")?,
            protocol_errors: counter(
                "protocol_errors_total",
                "Sessions closed for a malformed or undecryptable record",
            )?,
            registry,
        };
        for limit in LIMITS {
            m.rate_limited.with_label_values(&[limit]);
        }
        for result in HANDSHAKE_RESULTS {
            m.handshakes.with_label_values(&[result]);
        }
        for code in sotto_protocol::ErrorCode::ALL {
            m.errors.with_label_values(&[code.name()]);
        }
        Ok(m)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Largest request head read from a scraper.
const MAX_REQUEST: usize = 8192;

/// Serves `GET /metrics` on `addr` until `shutdown`.
///
/// # Errors
/// If the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let scrapers = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((mut sock, _)) = accepted else {
                // Out of descriptors or similar: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let Ok(permit) = scrapers.clone().try_acquire_owned() else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = vec![0u8; MAX_REQUEST];
                let mut n = 0;
                let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while n < buf.len() {
                        match sock.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let response = if head.starts_with("GET /metrics ")
                    || head.starts_with("GET /metrics?")
                {
                    let body = metrics.render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_register_and_render_with_prefix() {
        let m = Metrics::new().unwrap();
        m.commands.with_label_values(&["SEND"]).inc();
        let text = m.render();
        assert!(text.contains("sotto_commands_total{command=\"SEND\"} 1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("sotto_"), "{line}");
        }
        assert!(text.contains("sotto_rate_limited_total{limit=\"forwards_per_session\"} 0"));
        assert!(text.contains("sotto_errors_total{code=\"LIMITED\"} 0"));
    }

    #[test]
    fn every_limit_the_server_counts_is_listed() {
        // Every file of the server that may count a refusal.
        let server = [
            include_str!("server/mod.rs"),
            include_str!("server/listener.rs"),
            include_str!("server/session/mod.rs"),
            include_str!("server/session/recipient.rs"),
            include_str!("server/session/frames.rs"),
            include_str!("server/commands.rs"),
            include_str!("server/router.rs"),
            include_str!("server/maintenance.rs"),
            include_str!("server/supervise.rs"),
            include_str!("server/forward/destination.rs"),
            include_str!("server/forward/origin.rs"),
        ]
        .concat();
        let mut found = 0;
        for part in server.split("limited(\"").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(LIMITS.contains(&name), "limit `{name}` missing from LIMITS");
            found += 1;
        }
        assert!(
            found >= LIMITS.len(),
            "{found} limit sites for {} names",
            LIMITS.len()
        );
    }
}
