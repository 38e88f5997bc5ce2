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

/// A port P free for UDP and TCP with P + 1 free for TCP, and the same for P + 10.
/// Tests in this binary run in parallel: each call starts its search past the last one's.
fn free_ports() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        21_000 + rand::random::<u16>() % 4_000,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    std::iter::repeat_with(|| NEXT.fetch_add(37, Ordering::SeqCst))
        .take(1_000)
        .find(|p| {
            [*p, p + 10].iter().all(|q| {
                std::net::UdpSocket::bind(("127.0.0.1", *q)).is_ok()
                    && std::net::TcpListener::bind(("127.0.0.1", *q)).is_ok()
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

/// The package's example config (`deploy/debian/config.toml`): valid as shipped, valid with
/// every key uncommented, and then exactly the defaults, with every key the relay accepts.
#[test]
fn the_example_config_is_valid_and_holds_every_key_at_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/debian/config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let load = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(sotto_relay::config::CONFIG_FILE), text).unwrap();
        sotto_relay::config::Config::load(
            dir.path(),
            |_| None,
            &sotto_relay::config::Overrides::default(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let defaults = sotto_relay::config::Config::default();
    assert!(load(&text) == defaults);
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(kv)
                if kv.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                }) =>
            {
                kv
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        load(&uncommented) == defaults,
        "deploy/debian/config.toml: a value is not the default"
    );
    for key in sotto_relay::config::KEYS {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            text.contains(&format!("# {leaf} = ")),
            "deploy/debian/config.toml lacks `{key}`"
        );
    }
}

/// The package's unit keeps the sandbox of `systemd/sotto-relay.service` line for line; only
/// the paths and the user differ (a system user from sysusers.d instead of `DynamicUser`).
#[test]
fn the_package_unit_keeps_the_hardened_units_sandbox() {
    let read = |p: &str| {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap();
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
    };
    let plain = read("../systemd/sotto-relay.service");
    let packaged = read("../deploy/debian/sotto-relay.service");
    let differs = |l: &String| {
        [
            "ExecStart=",
            "DynamicUser=",
            "User=",
            "Group=",
            "Documentation=",
        ]
        .iter()
        .any(|k| l.starts_with(k))
    };
    let a: BTreeSet<_> = plain.iter().filter(|l| !differs(l)).collect();
    let b: BTreeSet<_> = packaged.iter().filter(|l| !differs(l)).collect();
    assert_eq!(a, b, "the two units' sandboxes differ");
    assert!(packaged.contains("ExecStart=/usr/bin/sotto-relay run --data /var/lib/sotto-relay"));
    assert!(packaged.contains("User=sotto-relay") && packaged.contains("Group=sotto-relay"));
    let sysusers = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/debian/sysusers.conf"),
    )
    .unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u sotto-relay ")));
}

/// `sotto-relay check` (the container's HEALTHCHECK): 0 while the relay answers, 1 with a
/// reason once it is stopped.
#[test]
fn check_pings_the_running_relay_and_fails_when_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r");
    let port = free_ports();
    let tool = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sotto-relay"))
            .args(args)
            .arg("--data")
            .arg(&data)
            .env_remove("SOTTO_RELAY_LISTEN")
            .output()
            .unwrap()
    };
    let init = tool(&["init", "--listen", &format!("127.0.0.1:{port}")]);
    assert!(init.status.success(), "{init:?}");
    let relay = process::spawn(process::relay_command(&data, &["--metrics", "off"]), &data)
        .unwrap_or_else(|e| panic!("{e}"));
    let ok = tool(&["check"]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok: the relay answered PING"));
    let (status, _) = relay.terminate();
    assert!(status.success());
    let gone = tool(&["check", "--timeout", "2s"]);
    assert!(!gone.status.success());
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(
        err.contains("cannot reach the relay") || err.contains("no answer within"),
        "{err}"
    );
}

/// The `Containerfile`, as far as it can be checked without a container engine (none runs
/// where this project's CI does, and base images cannot be fetched there): two stages, a
/// non-root numeric user, the data volume, UDP and TCP ports, a HEALTHCHECK through
/// `sotto-relay check`, only environment variables the relay knows — and then the image's
/// environment and command, run as they are (data directory and ports moved to free ones),
/// with its HEALTHCHECK command passing against it.
#[test]
fn the_containerfile_runs_the_relay_as_its_environment_and_healthcheck_say() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Containerfile"))
            .unwrap();
    // Instructions, continuation lines joined.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instr: Vec<(String, String)> = joined
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.trim().split_once(' ').unwrap();
            (k.to_owned(), v.trim().to_owned())
        })
        .collect();
    let all = |k: &str| -> Vec<&str> {
        instr
            .iter()
            .filter(|(i, _)| i == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(all("FROM").len(), 2, "multi-stage");
    let user = all("USER")[0];
    assert!(
        user.split(':')
            .all(|p| p.parse::<u32>().is_ok_and(|u| u != 0)),
        "USER {user}: numeric and not root"
    );
    assert_eq!(all("VOLUME"), vec!["[\"/data\"]"]);
    let exposed = all("EXPOSE").join(" ");
    for p in ["5443/udp", "5443/tcp", "5444/tcp"] {
        assert!(exposed.contains(p), "EXPOSE lacks {p}");
    }
    let health = all("HEALTHCHECK")[0];
    let cmd_json = health.split_once("CMD ").unwrap().1;
    let health_cmd: Vec<String> = serde_json::from_str(cmd_json).unwrap();
    assert_eq!(health_cmd[..2], ["/usr/bin/sotto-relay", "check"]);
    let entry: Vec<String> = serde_json::from_str(all("ENTRYPOINT")[0]).unwrap();
    let cmd: Vec<String> = serde_json::from_str(all("CMD")[0]).unwrap();
    assert_eq!(entry, ["/usr/bin/sotto-relay"]);
    let env: Vec<(String, String)> = all("ENV")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let known: Vec<String> = sotto_relay::config::KEYS
        .iter()
        .map(|k| sotto_relay::config::env_var(k))
        .chain(["SOTTO_RELAY_DATA".to_owned(), "RUST_LOG".to_owned()])
        .collect();
    for (k, _) in &env {
        assert!(
            known.contains(k),
            "the Containerfile sets {k}, which the relay does not read"
        );
    }

    // The image's environment and command, with /data and its ports moved.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_ports();
    let moved = |v: &str| {
        v.replace("/data", data.to_str().unwrap())
            .replace("0.0.0.0:5443", &format!("127.0.0.1:{port}"))
            .replace("0.0.0.0:5444", &format!("127.0.0.1:{}", port + 1))
    };
    let run = |args: &[String]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sotto-relay"));
        c.args(args).stdin(std::process::Stdio::null());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SOTTO_RELAY_")) {
            c.env_remove(k);
        }
        for (k, v) in &env {
            c.env(k, moved(v));
        }
        c
    };
    let relay = process::spawn(run(&cmd), &data).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(relay.address.port, port);
    assert_eq!(
        relay.address.tcp_port(),
        port,
        "TLS over TCP on the same port"
    );
    let health = run(&health_cmd[1..]).output().unwrap();
    assert!(health.status.success(), "HEALTHCHECK failed: {health:?}");
    let (status, _) = relay.terminate();
    assert!(status.success());
    assert!(data.join(sotto_relay::datadir::RELAY_KEY_FILE).exists());
}
