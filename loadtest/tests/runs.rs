//! Small end-to-end runs: an embedded relay (real QUIC, real store in a temporary
//! directory), the ceiling forwarder, queue creation, and the binary's outputs.

use std::process::Command;

use sotto_loadtest::{DelayKind, Options, create_queues, run_ceiling, run_relay};

fn small(delay: DelayKind) -> Options {
    Options {
        queues: 8,
        connections: 2,
        messages: Some(200),
        window: 64,
        delay,
        delay_mean: std::time::Duration::from_millis(50),
        ..Options::default()
    }
}

/// Every key `docs/loadtest.md` promises, as JSON pointers.
const KEYS: &[&str] = &[
    "/sent",
    "/delivered",
    "/lost",
    "/duplicated",
    "/corrupted",
    "/elapsed_s",
    "/throughput_msgs_per_s",
    "/throughput_mib_per_s",
    "/latency_ms/p50",
    "/latency_ms/p90",
    "/latency_ms/p99",
    "/latency_ms/p999",
    "/latency_ms/max",
    "/ok_latency_ms/p50",
    "/ok_latency_ms/p90",
    "/ok_latency_ms/p99",
    "/ok_latency_ms/p999",
    "/ok_latency_ms/max",
    "/delay_model/mode",
    "/delay_model/mean_ms",
    "/delay_ks_distance",
    "/pool_size/median",
    "/pool_size/p1",
    "/adversary/top1",
    "/adversary/top10",
    "/adversary/mrr",
    "/adversary/baseline_top1",
    "/entropy_bits",
    "/effective_anonymity_set",
    "/frame_sizes_distinct",
    "/cpu_us_per_msg",
    "/ceiling_msgs_per_s",
    "/relay_to_ceiling_ratio",
];

fn assert_has_every_key(json: &serde_json::Value) {
    for k in KEYS {
        assert!(json.pointer(k).is_some(), "missing key {k} in {json:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_relay_delivers_everything_exactly_once() {
    let o = run_relay(&small(DelayKind::Off)).await.unwrap();
    let r = &o.report;
    assert!(r.ok(), "{}", r.to_table());
    assert_eq!(
        (r.counts.sent, r.counts.delivered, r.counts.lost),
        (200, 200, 0)
    );
    assert_eq!((r.counts.duplicated, r.counts.corrupted), (0, 0));
    assert_eq!(r.ack_failed, 0, "{:?}", r.errors);
    assert!(o.records.iter().all(|m| m.received_at_us.is_some()));
    // Padded datagrams at a fixed MTU: one size on the wire.
    assert_eq!(r.frame_sizes_distinct, 1, "{:?}", r.wire);
    assert_eq!(r.wire.sizes, vec![1452]);
    assert_eq!(r.delay_model.mode, "off");
    assert_eq!(r.delay_ks_distance, None);
    assert!(r.cpu_us_per_msg.is_some());
    assert_has_every_key(&serde_json::to_value(r).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_run_over_tls_over_tcp_delivers_everything_exactly_once() {
    let opts = Options {
        transport: sotto_transport::TransportChoice::Tcp,
        ..small(DelayKind::Poisson)
    };
    let o = run_relay(&opts).await.unwrap();
    let r = &o.report;
    assert!(r.ok(), "{}", r.to_table());
    assert_eq!(
        (r.counts.sent, r.counts.delivered, r.counts.lost),
        (200, 200, 0)
    );
    assert_eq!((r.counts.duplicated, r.counts.corrupted), (0, 0));
    assert_eq!(r.ack_failed, 0, "{:?}", r.errors);
    assert_eq!(r.config.transport, "tcp");
    // Every session counted, with TLS bytes and no datagrams.
    assert_eq!(r.wire.connections, 4, "{:?}", r.wire);
    assert!(r.wire.bytes_tx > 200 * 16_406, "{:?}", r.wire);
    assert_eq!((r.wire.datagrams_tx, r.wire.datagrams_rx), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_relay_run_is_verified_and_measured() {
    let o = run_relay(&small(DelayKind::Poisson)).await.unwrap();
    let r = &o.report;
    assert!(r.ok(), "{}", r.to_table());
    assert_eq!(r.counts.delivered, 200);
    assert_eq!(r.delay_model.mode, "poisson");
    assert_eq!(r.delay_model.mean_ms, 50.0);
    let ks = r
        .delay_ks_distance
        .expect("a KS distance for a delayed run");
    assert!((0.0..=1.0).contains(&ks));
    assert_eq!(o.added_delay_ms.len(), 200);
    assert!(r.adversary.top1 >= 0.0 && r.adversary.top1 <= 1.0);
    assert!(r.effective_anonymity_set >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceiling_run_delivers_everything() {
    let o = run_ceiling(&small(DelayKind::Off)).await.unwrap();
    let r = &o.report;
    assert_eq!(r.mode, "ceiling");
    assert!(r.ok(), "{}", r.to_table());
    assert_eq!(r.counts.delivered, 200);
    assert_eq!(r.frame_sizes_distinct, 1, "{:?}", r.wire);
    assert!(r.throughput_msgs_per_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_queues_stores_them_in_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        data_dir: Some(dir.path().to_path_buf()),
        window: 16,
        ..Options::default()
    };
    let r = create_queues(&opts, 40).await.unwrap();
    assert_eq!((r.created, r.failed), (40, 0), "{:?}", r.errors);
    assert_eq!(r.stored_queues, Some(40));
    assert!(r.db_bytes.is_some_and(|b| b > 0));
    // The data directory is kept: a second run adds to it.
    let r = create_queues(&opts, 10).await.unwrap();
    assert_eq!(r.stored_queues, Some(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_spread_over_several_running_relays() {
    let base = small(DelayKind::Off);
    let config = base.embedded_config().unwrap();
    let mut relays = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        sotto_relay::datadir::init(dir.path(), &Default::default()).unwrap();
        relays.push(
            sotto_relay::start(dir.path(), config.clone())
                .await
                .unwrap(),
        );
        dirs.push(dir);
    }
    let opts = Options {
        relays: relays.iter().map(|r| r.address.clone()).collect(),
        messages: Some(100),
        ..base
    };
    let o = run_relay(&opts).await.unwrap();
    assert!(o.report.ok(), "{}", o.report.to_table());
    assert_eq!(o.report.counts.delivered, 100);
    assert!(!o.report.config.embedded);
    // Queue q lives on relay q mod 2; both relays stored and delivered messages.
    for r in &relays {
        assert!(r.metrics.messages_delivered.get() > 0);
    }
    // Two relays × two receiver sessions.
    let recipients: std::collections::BTreeSet<u32> =
        o.records.iter().map(|m| m.recipient).collect();
    assert_eq!(recipients.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert_eq!(o.report.relay_cpu_us_per_msg, None);
    for r in relays {
        r.shutdown().await;
    }
}

#[test]
fn binary_writes_json_csv_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let (json, csv, svg) = (
        dir.path().join("run.json"),
        dir.path().join("run.csv"),
        dir.path().join("run.svg"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sotto-loadtest"))
        .args([
            "--messages",
            "150",
            "--queues",
            "8",
            "--window",
            "32",
            "--delay-mode",
            "poisson",
            "--delay-mean",
            "20",
            "--compare-ceiling",
            "--quiet",
            "--seed",
            "9",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "--quiet prints nothing");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_has_every_key(&v);
    assert_eq!(v["delivered"], 150);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["config"]["seed"], 9);
    assert!(v["ceiling_msgs_per_s"].as_f64().is_some_and(|c| c > 0.0));
    assert!(v["relay_to_ceiling_ratio"].as_f64().is_some());
    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(sotto_loadtest::report::CSV_HEADER));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 150);
    assert!(
        rows.iter()
            .all(|r| r.split(',').count() == 8 && !r.ends_with(','))
    );
    assert!(
        std::fs::read_to_string(&svg)
            .unwrap()
            .contains("Latency CDF")
    );
}

#[test]
fn bad_options_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto-loadtest"))
        .args(["--body-bytes", "10", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--body-bytes"));
}
