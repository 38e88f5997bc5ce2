//! What the deployment files promise, checked against real relays: the Grafana dashboard
//! (`deploy/grafana/sotto-relay.json`) names only series a real relay exports, with the
//! labels it exports, and shows every metric family; two relays initialised as
//! `docs/operator.md` ("Several relays on one host") says run side by side.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::process;
use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// Series name → the label names it is exported with.
fn series(text: &str) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((n, rest)) => (n, rest.split_once('}').unwrap().0),
            None => (line.split_once(' ').unwrap().0, ""),
        };
        let e = out.entry(name.to_owned()).or_default();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            e.insert(pair.split_once('=').unwrap().0.to_owned());
        }
    }
    out
}

/// Every `sotto_…` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sotto_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// `sum by (LABEL) (rate(METRIC…` pairs in an expression.
fn grouped_by(expr: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in expr.split("by (").skip(1) {
        let (label, after) = part.split_once(')').unwrap();
        if label == "le" {
            continue;
        }
        let metric = metric_names(after).into_iter().next().unwrap();
        out.push((label.to_owned(), metric));
    }
    out
}

/// Every string under a key named `key`, anywhere in the document.
fn strings_at(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if let (true, Some(s)) = (k == key, v.as_str()) {
                    out.push(s.to_owned());
                }
                strings_at(v, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings_at(v, key, out)),
        _ => {}
    }
}

fn dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/sotto-relay.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_metric_and_only_what_a_real_relay_exports() {
    let relay = TestRelay::start_with(|c| c.metrics = "127.0.0.1:0".into()).await;
    // A little traffic, so that the scrape is one of a relay at work.
    let (c, _pushes, _ep) = connect(&relay.address()).await;
    let q = c.create_queue(None).await.unwrap();
    c.send(q.sender_id, None, 0, vec![1; 32]).await.unwrap();
    c.close().await;
    let exported = series(&scrape(relay.running().metrics_addr.unwrap()).await);

    let d = dashboard();
    assert_eq!(d["uid"], "sotto-relay");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel `{title}` has no query");
        assert!(
            !p["description"].as_str().unwrap().is_empty(),
            "panel `{title}` has no description"
        );
    }

    let mut exprs = Vec::new();
    strings_at(&d, "expr", &mut exprs);
    strings_at(&d, "definition", &mut exprs);
    let mut used = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            assert!(
                exported.contains_key(&name),
                "the dashboard queries `{name}`, which the relay does not export (in `{e}`)"
            );
            used.insert(name);
        }
        for (label, metric) in grouped_by(e) {
            assert!(
                exported[&metric].contains(&label),
                "the dashboard groups `{metric}` by `{label}`, a label it does not have"
            );
        }
    }
    let m = sotto_relay::metrics::Metrics::new().unwrap();
    for family in m.registry.gather() {
        let f = family.name();
        assert!(
            used.iter().any(|u| u == f
                || [f, "_bucket"].concat() == *u
                || [f, "_sum"].concat() == *u
                || [f, "_count"].concat() == *u),
            "the dashboard does not show `{f}`"
        );
    }
}

/// A TCP and UDP port pair, and the same 10 above, all free now.
fn free_ports() -> u16 {
    (21_000u16..31_000)
        .step_by(37)
        .find(|p| {
            [*p, p + 10].iter().all(|q| {
                std::net::UdpSocket::bind(("127.0.0.1", *q)).is_ok()
                    && std::net::TcpListener::bind(("127.0.0.1", q + 1)).is_ok()
            })
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_initialised_as_documented_run_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports();
    let mut running = Vec::new();
    for (name, p) in [("a", port), ("b", port + 10)] {
        let data = dir.path().join(name);
        let out = Command::new(env!("CARGO_BIN_EXE_sotto-relay"))
            .args(["init", "--data"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{p}")])
            .env_remove("SOTTO_RELAY_METRICS")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // `run` with nothing but the data directory, as the guide does.
        let relay = process::spawn(process::relay_command(&data, &[]), &data)
            .unwrap_or_else(|e| panic!("relay {name} did not start:\n{e}"));
        assert_eq!(relay.address.port, p);
        running.push((relay, p + 1));
    }
    for (_, metrics) in &running {
        let text = scrape(SocketAddr::from(([127, 0, 0, 1], *metrics))).await;
        assert!(text.contains("sotto_sessions"));
    }
    // A third relay given the first one's metrics address: the clear error.
    let data = dir.path().join("c");
    let clash = format!("127.0.0.1:{}", port + 1);
    let err = process::spawn(
        process::relay_command(&data, &["--listen", "127.0.0.1:0", "--metrics", &clash]),
        &data,
    )
    .err()
    .expect("a relay on a taken metrics port must not start");
    assert!(
        err.contains(&format!("cannot serve metrics on {clash}")) && err.contains("--metrics off"),
        "{err}"
    );
    for (relay, _) in running {
        let (status, _) = relay.terminate();
        assert!(status.success());
    }
}
