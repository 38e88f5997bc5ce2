//! Faults a cheap machine produces: a full disk, SIGKILL at random moments under load, a
//! damaged or mismatched data directory. What each test shows is what an operator (or a
//! user) would notice if it broke: an OK for a message that is then lost, a relay that stays
//! broken after the disk has room again, a relay that starts over with an empty store.
//!
//! The long run of the SIGKILL loop is `#[ignore]`d here and documented in
//! `docs/reliability.md`:
//! `SOTTO_FAULT_ITERATIONS=200 cargo test --release -p sotto-relay --test faults -- --ignored`.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{self, RelayProcess};
use common::*;
use rand::{Rng as _, SeedableRng as _};
use sotto_protocol::{ErrorCode, MAX_BODY};
use sotto_relay::datadir;
use sotto_transport::{ClientError, Pushed, QueueCredentials};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------------------

/// A tmpfs of a fixed size mounted on a temporary directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (e.g. `"8m"`), or `None` where mounting is not allowed (not
    /// root, no `mount`, a container without the capability).
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a relay that a failing test left running must not keep the mount busy.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn body(tag: u64) -> Vec<u8> {
    // Full-size bodies, as real clients send (padded): they fill the disk fastest.
    let mut b = vec![0xa5; MAX_BODY];
    b[..8].copy_from_slice(&tag.to_be_bytes());
    b
}

fn tag_of(body: &[u8]) -> u64 {
    u64::from_be_bytes(body[..8].try_into().unwrap())
}

/// Receives and acknowledges every message of `creds` with GET; returns their tags.
async fn drain(c: &sotto_transport::RelayClient, creds: &QueueCredentials) -> Vec<u64> {
    let mut tags = Vec::new();
    while let Some(m) = c.get(creds).await.unwrap() {
        tags.push(tag_of(&m.body));
        assert!(c.ack(creds, m.msg_id).await.unwrap());
    }
    tags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_sends_keeps_serving_reads_and_recovers_by_itself() {
    let Some(fs) = SmallFs::mount("8m") else {
        eprintln!(
            "SKIPPED disk_full test: this machine does not allow mounting a tmpfs (needs root). \
             Run the suite as root to cover it."
        );
        return;
    };
    let data = fs.path().join("relay");
    datadir::init(&data, &datadir::InitOptions::default()).unwrap();
    // A file that takes room now and is deleted later: "space returns".
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).unwrap();

    let mut config = test_config();
    config.queues.quota = 100_000;
    // The default reserve (64 MiB) is larger than this whole file system.
    config.store.reserve_mib = 1;
    let relay = sotto_relay::start(&data, config.clone()).await.unwrap();
    let (c, _pushes, _e) = connect(&relay.address).await;
    let creds = c.create_queue(None).await.unwrap();

    // Fill the disk: every SEND is either OK or ERR STORE, never anything else.
    let mut ok: Vec<u64> = Vec::new();
    let mut refused = 0u32;
    let mut tag = 0u64;
    while refused == 0 {
        assert!(tag < 2000, "8 MiB never filled up");
        match c.send(creds.sender_id, None, 0, body(tag)).await {
            Ok(()) => ok.push(tag),
            Err(ClientError::Relay(ErrorCode::Store)) => refused += 1,
            Err(e) => panic!("SEND {tag} on a full disk: expected OK or STORE, got {e:?}"),
        }
        tag += 1;
    }
    assert!(!ok.is_empty(), "nothing fitted before the disk was full");
    eprintln!(
        "disk full after {} OK sends ({} bytes each)",
        ok.len(),
        MAX_BODY
    );
    // Still full: more SENDs are refused, none is acknowledged.
    for _ in 0..5 {
        let r = c.send(creds.sender_id, None, 0, body(tag)).await;
        tag += 1;
        match r {
            Err(ClientError::Relay(ErrorCode::Store)) => refused += 1,
            Ok(()) => ok.push(tag - 1), // a batch that happened to fit is fine, if kept
            Err(e) => panic!("expected STORE, got {e:?}"),
        }
    }
    // Reads keep working on the full disk: GET, SUB, PING, a new session.
    c.ping().await.unwrap();
    let first = c.get(&creds).await.unwrap().expect("a stored message");
    assert_eq!(tag_of(&first.body), ok[0]);
    let (c2, mut pushes2, _e2) = connect(&relay.address).await;
    c2.subscribe(&creds).await.unwrap();
    let Pushed::Msg { msg, .. } = next_push(&mut pushes2).await else {
        panic!("expected MSG")
    };
    assert_eq!(tag_of(&msg.open(&creds).unwrap().body), ok[0]);
    c2.close().await;

    // Space returns: the same running relay accepts SENDs again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let mut after = Vec::new();
    for _ in 0..20 {
        c.send(creds.sender_id, None, 0, body(tag))
            .await
            .unwrap_or_else(|e| panic!("SEND after space returned: {e:?}"));
        after.push(tag);
        tag += 1;
    }
    ok.extend(&after);
    eprintln!("{refused} SENDs refused with STORE; recovered without restart");
    c.close().await;
    relay.shutdown().await;

    // After a clean restart every acknowledged message is there exactly once, and nothing
    // that was refused.
    let relay = sotto_relay::start(&data, config).await.unwrap();
    let (c, _p, _e) = connect(&relay.address).await;
    let creds = QueueCredentials {
        relay: relay.address.clone(),
        ..creds
    };
    let got = drain(&c, &creds).await;
    let unique: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a message was delivered twice");
    let ok_set: HashSet<u64> = ok.iter().copied().collect();
    let lost: Vec<_> = ok_set.difference(&unique).collect();
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    let phantom: Vec<_> = unique.difference(&ok_set).collect();
    assert!(
        phantom.is_empty(),
        "refused messages were stored: {phantom:?}"
    );
    c.close().await;
    relay.shutdown().await;
    drop(fs);
}

/// The global budget (`store.max_mib`): one source cannot make the store hold more. At it
/// NEW and SEND answer STORE (one log line, not one per command), GET and ACK go on, and
/// draining makes room again. Needs no mount, so it runs everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_budget_refuses_new_and_send_and_draining_makes_room() {
    let relay = TestRelay::start_with(|c| {
        c.queues.quota = 100_000;
        c.store.max_mib = 1;
    })
    .await;
    let (c, _p, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    let mut ok = 0u64;
    loop {
        assert!(ok < 1000, "the budget never applied");
        match c.send(creds.sender_id, None, 0, body(ok)).await {
            Ok(()) => ok += 1,
            Err(ClientError::Relay(ErrorCode::Store)) => break,
            Err(e) => panic!("SEND {ok}: expected OK or STORE, got {e:?}"),
        }
    }
    // 1 MiB at ≈ 16.4 KiB per message.
    let fits = (1u64 << 20) / sotto_relay::store::STORED_MESSAGE_BYTES;
    assert!(
        (fits - 1..=fits + 1).contains(&ok),
        "{ok} messages fitted, not ≈ {fits}"
    );
    assert!(matches!(
        c.create_queue(None).await,
        Err(ClientError::Relay(ErrorCode::Store))
    ));
    for i in 0..10 {
        let m = c.get(&creds).await.unwrap().expect("a stored message");
        assert_eq!(tag_of(&m.body), i);
        assert!(c.ack(&creds, m.msg_id).await.unwrap());
    }
    c.send(creds.sender_id, None, 0, body(ok))
        .await
        .expect("SEND after deliveries made room");
    c.create_queue(None)
        .await
        .expect("NEW after deliveries made room");
    c.close().await;
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let st = rustix::fs::statvfs(dir).unwrap();
    st.f_bavail * st.f_frsize
}

/// Fills the file system holding `dir` to the last byte with a file; returns its path.
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler-all");
    let mut f = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 4096, 512, 1] {
        let buf = vec![7u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

/// The audit's attack (issue 22, H1): one source fills the disk, then keeps sending NEW and
/// SEND while a recipient drains its queue with GET and ACK. Before: every failing batch
/// reopened the database with a full checksum pass, GETs answered INTERNAL meanwhile, and
/// each reopen undid the ACKs already answered, so the same messages came again and again.
/// Now: the relay refuses NEW and SEND before the disk is full (its reserve), then, with the
/// disk filled to the last byte by someone else, GETs keep answering, every ACKed message
/// is delivered once and never again (not even after a restart), and the same relay takes
/// NEW and SEND again once the disk has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_keeps_reads_and_acks_and_one_source_cannot_fill_it() {
    let Some(fs) = SmallFs::mount("32m") else {
        eprintln!(
            "SKIPPED full-disk attack test: this machine does not allow mounting a tmpfs (needs root). \
             Run the suite as root to cover it."
        );
        return;
    };
    let started = std::time::Instant::now();
    let data = fs.path().join("relay");
    datadir::init(&data, &datadir::InitOptions::default()).unwrap();
    let reserve: u64 = 2 << 20;
    // Room that the operator frees at the end ("space returns").
    let other_files = fs.path().join("other-files");
    std::fs::write(&other_files, vec![1u8; 6 << 20]).unwrap();
    let mut config = test_config();
    config.queues.quota = 100_000;
    config.store.reserve_mib = reserve >> 20;
    let relay = sotto_relay::start(&data, config.clone()).await.unwrap();
    let (a, _pa, _ea) = connect(&relay.address).await;
    let creds = a.create_queue(None).await.unwrap();
    let own = a.create_queue(None).await.unwrap();

    // One source sends until refused: the relay stops it while the disk still has room.
    let mut ok: Vec<u64> = Vec::new();
    let mut tag = 0u64;
    loop {
        assert!(tag < 3000, "24 MiB never filled up");
        match a.send(creds.sender_id, None, 0, body(tag)).await {
            Ok(()) => ok.push(tag),
            Err(ClientError::Relay(ErrorCode::Store)) => break,
            Err(e) => panic!("SEND {tag}: expected OK or STORE, got {e:?}"),
        }
        tag += 1;
    }
    let free = free_bytes(fs.path());
    eprintln!(
        "one source: {} SENDs OK, then STORE with {} KiB still free",
        ok.len(),
        free >> 10
    );
    // The check runs before each commit: the last batch may take a little of the reserve.
    assert!(
        free >= reserve / 2,
        "the relay let one source fill the disk ({free} bytes left)"
    );
    let reserve_file = data.join(format!(
        "{}{}",
        datadir::DB_FILE,
        sotto_relay::store::RESERVE_SUFFIX
    ));
    assert_eq!(std::fs::metadata(&reserve_file).unwrap().len(), reserve);
    assert!(
        matches!(
            a.create_queue(None).await,
            Err(ClientError::Relay(ErrorCode::Store))
        ),
        "NEW on a full store"
    );

    // Someone else takes the rest, to the last byte.
    let filler = fill_up(fs.path());
    assert_eq!(free_bytes(fs.path()), 0);

    // The source keeps trying NEW and SEND; another session drains with GET and ACK.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let (stop, address) = (stop.clone(), relay.address.clone());
        // Into its own queue: once deliveries have freed room inside the file, some may fit.
        let sender = own.sender_id;
        tokio::spawn(async move {
            let (c, _p, _e) = connect(&address).await;
            let mut tries = 0u64;
            let mut other = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for r in [
                    c.create_queue(None).await.map(|_| ()),
                    c.send(sender, None, 0, body(1 << 40)).await,
                ] {
                    tries += 1;
                    match r {
                        // NEW also meets its per-session rate limit.
                        Ok(()) | Err(ClientError::Relay(ErrorCode::Store | ErrorCode::Limited)) => {
                        }
                        other_answer => other.push(format!("{other_answer:?}")),
                    }
                }
            }
            c.close().await;
            (tries, other)
        })
    };
    let (b, _pb, _eb) = connect(&relay.address).await;
    let mut delivered: HashMap<u64, usize> = HashMap::new();
    let mut gets = 0u64;
    loop {
        gets += 1;
        let m = match b.get(&creds).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => panic!("GET {gets} on a full disk: {e:?}"),
        };
        *delivered.entry(tag_of(&m.body)).or_default() += 1;
        assert!(
            delivered.values().sum::<usize>() <= 2 * ok.len(),
            "ACKed messages keep coming back"
        );
        // ACK answers OK (deleted) or STORE; never undone silently.
        match b.ack(&creds, m.msg_id).await {
            Ok(true) => {}
            other => panic!("ACK on a full disk: {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (tries, other) = attacker.await.unwrap();
    let deliveries: usize = delivered.values().sum();
    let again: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "disk full: {gets} GETs answered, {deliveries} deliveries of {} messages, \
         {tries} NEW/SEND tried, {} other answers",
        delivered.len(),
        other.len()
    );
    assert!(
        other.is_empty(),
        "NEW/SEND on a full disk: {:?}",
        &other[..other.len().min(5)]
    );
    assert!(
        again.is_empty(),
        "ACKed messages delivered again: {again:?}"
    );
    let wanted: HashSet<u64> = ok.iter().copied().collect();
    let got: HashSet<u64> = delivered.keys().copied().collect();
    assert_eq!(got, wanted, "every stored message, once");

    // Space returns: the same relay takes NEW and SEND again.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&other_files).unwrap();
    eventually("SEND accepted again", async || {
        a.send(creds.sender_id, None, 0, body(tag + 1))
            .await
            .is_ok()
    })
    .await;
    let (n, _pn, _en) = connect(&relay.address).await;
    n.create_queue(None).await.expect("NEW accepted again");
    n.close().await;
    assert_eq!(tag_of(&b.get(&creds).await.unwrap().unwrap().body), tag + 1);
    a.close().await;
    b.close().await;
    relay.shutdown().await;

    // After a restart nothing ACKed comes back.
    let relay = sotto_relay::start(&data, config).await.unwrap();
    let (c, _p, _e) = connect(&relay.address).await;
    let creds = QueueCredentials {
        relay: relay.address.clone(),
        ..creds
    };
    assert_eq!(drain(&c, &creds).await, vec![tag + 1], "ACKs undone");
    c.close().await;
    relay.shutdown().await;
    eprintln!("took {:?}", started.elapsed());
    drop(fs);
}

// ---------------------------------------------------------------------------------------
// The relay binary
// ---------------------------------------------------------------------------------------

/// `sotto-relay run` on `data` and `listen`, logging warnings only.
fn relay_command(data: &Path, listen: &str) -> Command {
    let mut cmd = process::relay_command(data, &["--listen", listen, "--metrics", "off"]);
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Starts the relay; `Err(stderr)` if it exits instead of printing its address.
fn spawn_relay(data: &Path, listen: &str, env: &[(&str, &str)]) -> Result<RelayProcess, String> {
    let mut cmd = relay_command(data, listen);
    cmd.envs(env.iter().copied());
    process::spawn(cmd, data)
}

// ---------------------------------------------------------------------------------------
// SIGKILL at random moments under load
// ---------------------------------------------------------------------------------------

/// What a kill loop did, for the test output and `docs/reliability.md`.
#[derive(Debug, Default)]
#[allow(dead_code)] // read through Debug, for the report
struct KillFigures {
    iterations: usize,
    sends_ok: usize,
    sends_failed: usize,
    acks_confirmed: usize,
    /// Confirmed ACKs that a later OK'ed SEND to the same relay process made durable.
    acks_durable_before_kill: usize,
    redelivered_unconfirmed: usize,
    /// Deliveries after a kill of a message whose ACK was confirmed but not yet durable.
    redelivered_after_relaxed_ack: usize,
    drained_at_end: usize,
    lost: usize,
    duplicates: usize,
}

/// Everything the clients observed across all iterations.
#[derive(Default)]
struct Observed {
    /// Tags the relay answered OK to.
    sent_ok: HashSet<u64>,
    /// Tags whose ACK the relay answered OK to: the iteration (relay process) and the ACK's
    /// number in it (1, 2, … in the order the OKs arrived).
    acked: HashMap<u64, (usize, u64)>,
    /// Per finished iteration: ACKs numbered up to this one are durable. The relay commits an
    /// ACK's deletion without fsync, durable at the next durable commit (or within
    /// `RELAXED_COMMIT_BOUND` when idle); a SEND's commit is durable before its OK. So a SEND
    /// issued after an ACK's OK, whose own OK then came, proves that ACK durable: its commit
    /// followed the ACK's. This is causality, not timing.
    durable_acks: Vec<u64>,
    /// Deliveries of a tag whose earlier delivery was not confirmed (allowed: at least once
    /// until the ACK is answered).
    redelivered: usize,
    /// Deliveries, in a later relay process, of a tag whose ACK was confirmed but not proven
    /// durable before the kill (allowed: such an ACK may be undone by the crash).
    redelivered_after_relaxed_ack: usize,
    /// Every tag delivered, with its count.
    delivered: HashMap<u64, usize>,
    sends_failed: usize,
    duplicates_after_ack: Vec<u64>,
}

const SENDERS: u64 = 8;
const KILL_BODY: usize = 4096;

impl Observed {
    /// Whether delivering `tag` in iteration `now` breaks the guarantee: its ACK was
    /// confirmed by this same relay process (the deletion is visible at once), or by an
    /// earlier one and was durable before that one was killed. Counts the allowed
    /// redeliveries.
    fn delivered_after_ack(&mut self, tag: u64, now: usize) -> bool {
        let Some(&(it, n)) = self.acked.get(&tag) else {
            return false;
        };
        if it == now || self.durable_acks.get(it).is_some_and(|&upto| n <= upto) {
            return true;
        }
        self.redelivered_after_relaxed_ack += 1;
        false
    }
}

fn kill_body(tag: u64) -> Vec<u8> {
    let mut b = vec![0x5a; KILL_BODY];
    b[..8].copy_from_slice(&tag.to_be_bytes());
    b
}

/// `iterations` rounds of: start the relay, 8 senders (one queue each) and a recipient
/// subscribed to all eight that ACKs everything, SIGKILL after a random number (seeded) of OK
/// answers to SENDs. Then a final start and a drain of every queue.
async fn kill_loop(iterations: usize, seed: u64) -> KillFigures {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let env = [
        ("SOTTO_RELAY_DELIVERY_MODE", "off"),
        ("SOTTO_RELAY_QUEUES_QUOTA", "1000000"),
    ];
    let first = spawn_relay(&data, "127.0.0.1:0", &env).unwrap_or_else(|e| panic!("{e}"));
    let listen = format!("127.0.0.1:{}", first.address.port);
    let (c, _p, _e) = connect(&first.address).await;
    let mut queues = Vec::new();
    for _ in 0..SENDERS {
        queues.push(c.create_queue(None).await.unwrap());
    }
    let queues = Arc::new(queues);
    c.close().await;
    let obs = Arc::new(Mutex::new(Observed::default()));
    let mut relay = Some(first);

    for it in 0..iterations {
        let proc = match relay.take() {
            Some(p) => p,
            None => spawn_relay(&data, &listen, &env)
                .unwrap_or_else(|e| panic!("iteration {it}: the relay did not restart:\n{e}")),
        };
        let kill_after: usize = rng.gen_range(0..=150);
        let oks = Arc::new((Mutex::new(0usize), Notify::new()));
        // ACKs confirmed by this process so far, and the highest of them that a SEND's OK
        // has since made durable (see `Observed::durable_acks`).
        let acks_confirmed = Arc::new(AtomicU64::new(0));
        let acks_durable = Arc::new(AtomicU64::new(0));

        // The recipient: subscribed to every queue, ACKs each message as it comes (one task
        // per ACK, so the eight queues are served side by side).
        let (rc, mut pushes, re) = connect(&proc.address).await;
        for q in queues.iter() {
            rc.subscribe(q).await.unwrap();
        }
        let recipient = {
            let (rc, queues, obs) = (rc.clone(), queues.clone(), obs.clone());
            let acks_confirmed = acks_confirmed.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                while let Some(p) = pushes.recv().await {
                    let Pushed::Msg { recipient_id, msg } = p else {
                        if matches!(p, Pushed::Closed(_)) {
                            break;
                        }
                        continue;
                    };
                    let creds = queues
                        .iter()
                        .find(|q| q.recipient_id == recipient_id)
                        .unwrap()
                        .clone();
                    let m = msg.open(&creds).unwrap();
                    let tag = tag_of(&m.body);
                    {
                        let mut o = obs.lock().unwrap();
                        if o.delivered_after_ack(tag, it) {
                            o.duplicates_after_ack.push(tag);
                        }
                        let n = o.delivered.entry(tag).or_insert(0);
                        *n += 1;
                        if *n > 1 {
                            o.redelivered += 1;
                        }
                    }
                    let (rc, obs, confirmed) = (rc.clone(), obs.clone(), acks_confirmed.clone());
                    acks.push(tokio::spawn(async move {
                        if let Ok(true) = rc.ack(&creds, m.msg_id).await {
                            let n = confirmed.fetch_add(1, Ordering::SeqCst) + 1;
                            obs.lock().unwrap().acked.insert(tag, (it, n));
                        }
                    }));
                }
                for a in acks {
                    a.await.unwrap();
                }
            })
        };

        // Eight senders, each on its own connection and queue.
        let mut clients = vec![rc];
        let mut endpoints = vec![re];
        let mut tasks = Vec::new();
        for s in 0..SENDERS {
            let (sc, _sp, se) = connect(&proc.address).await;
            clients.push(sc.clone());
            endpoints.push(se);
            let (obs, oks) = (obs.clone(), oks.clone());
            let (confirmed, durable) = (acks_confirmed.clone(), acks_durable.clone());
            let sender = queues[s as usize].sender_id;
            let base = (it as u64 + 1) * 1_000_000_000 + s * 1_000_000;
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let tag = base + i;
                    // Every ACK confirmed before this SEND leaves is durable once it is OK.
                    let covered = confirmed.load(Ordering::SeqCst);
                    match sc.send(sender, None, 0, kill_body(tag)).await {
                        Ok(()) => {
                            durable.fetch_max(covered, Ordering::SeqCst);
                            obs.lock().unwrap().sent_ok.insert(tag);
                            *oks.0.lock().unwrap() += 1;
                            oks.1.notify_one();
                        }
                        Err(_) => {
                            obs.lock().unwrap().sends_failed += 1;
                            return;
                        }
                    }
                }
            }));
        }
        // Wait for the chosen number of OKs (bounded), then SIGKILL at once.
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let notified = oks.1.notified();
                if *oks.0.lock().unwrap() >= kill_after {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("iteration {it}: {kill_after} OKs never came"));
        proc.sigkill();
        let at = *oks.0.lock().unwrap();
        // The dead relay cannot close the connections; end them here so the tasks stop.
        for c in &clients {
            c.close().await;
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap()
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(30), recipient)
            .await
            .unwrap()
            .unwrap();
        obs.lock()
            .unwrap()
            .durable_acks
            .push(acks_durable.load(Ordering::SeqCst));
        drop(endpoints);
        eprintln!("iteration {it}: SIGKILL after {at} OKs (target {kill_after})");
    }

    // Restart, drain what is left (all queues at once), and account for every OK.
    let proc =
        spawn_relay(&data, &listen, &env).unwrap_or_else(|e| panic!("final restart failed:\n{e}"));
    let (c, _p, _e) = connect(&proc.address).await;
    let drains = queues.iter().map(|q| {
        let c = c.clone();
        let q = QueueCredentials {
            relay: proc.address.clone(),
            ..q.clone()
        };
        async move { drain(&c, &q).await }
    });
    let drained: Vec<u64> = futures_util::future::join_all(drains)
        .await
        .into_iter()
        .flatten()
        .collect();
    c.close().await;
    proc.sigkill();

    let mut o = obs.lock().unwrap();
    let mut duplicates = o.duplicates_after_ack.len();
    let mut drained_set = HashSet::new();
    for t in &drained {
        if !drained_set.insert(*t) || o.delivered_after_ack(*t, iterations) {
            duplicates += 1;
        }
    }
    let acks_durable_before_kill = o
        .acked
        .values()
        .filter(|&&(it, n)| o.durable_acks.get(it).is_some_and(|&upto| n <= upto))
        .count();
    // A message counts as delivered once the recipient has had it: its ACK may have been
    // committed with the answer lost to the kill, which is exactly right.
    let lost = o
        .sent_ok
        .iter()
        .filter(|t| !o.delivered.contains_key(t) && !drained_set.contains(t))
        .count();
    // Nothing the senders did not send ever appears.
    for t in o.delivered.keys().chain(drained.iter()) {
        assert!(
            *t >= 1_000_000_000,
            "a message nobody sent was delivered: {t}"
        );
    }
    KillFigures {
        iterations,
        sends_ok: o.sent_ok.len(),
        sends_failed: o.sends_failed,
        acks_confirmed: o.acked.len(),
        acks_durable_before_kill,
        redelivered_unconfirmed: o.redelivered,
        redelivered_after_relaxed_ack: o.redelivered_after_relaxed_ack,
        drained_at_end: drained.len(),
        lost,
        duplicates,
    }
}

fn seed_from_env() -> u64 {
    std::env::var("SOTTO_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen())
}

async fn kill_loop_checked(iterations: usize) {
    let seed = seed_from_env();
    eprintln!(
        "SIGKILL loop: {iterations} iterations, seed {seed} (rerun with SOTTO_FAULT_SEED={seed})"
    );
    let started = std::time::Instant::now();
    let f = kill_loop(iterations, seed).await;
    eprintln!(
        "SIGKILL loop figures (seed {seed}, {:?}): {f:#?}",
        started.elapsed()
    );
    assert_eq!(f.lost, 0, "acknowledged messages lost (seed {seed}): {f:?}");
    assert_eq!(
        f.duplicates, 0,
        "messages delivered again after their ACK was answered and made durable (seed {seed}): {f:?}"
    );
    assert!(f.sends_ok > 0);
    // The duplicate check above covers these ACKs; without any it would check nothing.
    assert!(
        f.acks_durable_before_kill > 0,
        "no ACK was followed by an OK'ed SEND (seed {seed}): {f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    kill_loop_checked(20).await;
}

/// The long run: `SOTTO_FAULT_ITERATIONS=200 cargo test --release -p sotto-relay --test
/// faults -- --ignored` (see `docs/reliability.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run; see docs/reliability.md"]
async fn sigkill_long_run() {
    let n = std::env::var("SOTTO_FAULT_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    kill_loop_checked(n).await;
}

// ---------------------------------------------------------------------------------------
// A damaged data directory: refuse to start, name the file and the fix, touch nothing
// ---------------------------------------------------------------------------------------

const POPULATED_QUEUES: u64 = 4;
const POPULATED_MESSAGES: u64 = 25;

/// A data directory whose store holds queues and messages (written by a relay that then
/// stopped cleanly), with the queues' credentials.
async fn populated() -> (tempfile::TempDir, Vec<QueueCredentials>) {
    let mut relay = TestRelay::start_with(|c| c.queues.quota = 10_000).await;
    let (c, _p, _e) = connect(&relay.address()).await;
    let mut queues = Vec::new();
    for q in 0..POPULATED_QUEUES {
        let creds = c.create_queue(None).await.unwrap();
        for i in 0..POPULATED_MESSAGES {
            c.send(creds.sender_id, None, 0, kill_body(q * 1000 + i))
                .await
                .unwrap();
        }
        queues.push(creds);
    }
    c.close().await;
    relay.stop().await;
    let TestRelay { dir, .. } = relay;
    (dir, queues)
}

/// A freshly initialised data directory (identity, key, empty store): enough for the
/// checks of key files, which never reach the records.
fn initialised_datadir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    datadir::init(dir.path(), &datadir::InitOptions::default()).unwrap();
    dir
}

/// Every file of the directory with its bytes (`None` for a directory).
fn snapshot(dir: &Path) -> HashMap<PathBuf, Option<Vec<u8>>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = if p.is_dir() {
                None
            } else {
                Some(std::fs::read(&p).unwrap())
            };
            (p, bytes)
        })
        .collect()
}

/// Runs `sotto-relay run` on `data`. If it refuses to start, checks that no file of the
/// data directory was created, removed or changed and returns its stderr.
fn start_or_refusal(data: &Path) -> Result<RelayProcess, String> {
    let before = snapshot(data);
    match spawn_relay(data, "127.0.0.1:0", &[]) {
        Ok(p) => Ok(p),
        Err(stderr) => {
            let after = snapshot(data);
            assert_eq!(
                before.keys().collect::<HashSet<_>>(),
                after.keys().collect::<HashSet<_>>(),
                "files were created or removed"
            );
            for (p, b) in &before {
                assert!(after[p] == *b, "{} was changed", p.display());
            }
            Err(stderr)
        }
    }
}

/// Runs `sotto-relay run` on `data`, expecting it to refuse to start; returns its stderr.
/// Asserts that it exits non-zero, and that no file of the data directory was created,
/// removed or changed.
fn refuses_to_start(data: &Path) -> String {
    let before = snapshot(data);
    let mut child = relay_command(data, "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let pid = child.id();
    std::thread::spawn(move || {
        let mut o = String::new();
        let mut e = String::new();
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((o, e, child.wait()));
    });
    let Ok((stdout, stderr, status)) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("the relay started (or hung) on a damaged data directory");
    };
    let status = status.unwrap();
    assert!(
        !status.success(),
        "the relay must exit non-zero; stdout {stdout:?}, stderr:\n{stderr}"
    );
    assert!(
        stdout.trim().is_empty(),
        "the relay printed an address, so it served: {stdout}"
    );
    let after = snapshot(data);
    assert_eq!(
        before.keys().collect::<HashSet<_>>(),
        after.keys().collect::<HashSet<_>>(),
        "files were created or removed"
    );
    for (p, b) in &before {
        assert!(after[p] == *b, "{} was changed", p.display());
    }
    stderr
}

fn assert_names(stderr: &str, file: &str, fix: &str) {
    assert!(
        stderr.contains(file),
        "stderr does not name {file}:\n{stderr}"
    );
    assert!(
        stderr.contains(fix),
        "stderr does not say `{fix}`:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_database_refuses_to_start() {
    let (dir, _) = populated().await;
    let db = dir.path().join(datadir::DB_FILE);
    let len = std::fs::metadata(&db).unwrap().len();
    for keep in [len / 2, 4096, 100, 0] {
        let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.set_len(keep).unwrap();
        drop(f);
        let stderr = refuses_to_start(dir.path());
        assert_names(&stderr, "queues.redb", "restore it from your backup");
        assert!(
            stderr.contains("will not start over with an empty store"),
            "{stderr}"
        );
        eprintln!("truncated to {keep} of {len} bytes: {}", stderr.trim());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_storage_key_refuses_to_start() {
    let dir = initialised_datadir();
    // A well-formed key that is not the one the database was written with.
    let other = tempfile::tempdir().unwrap();
    datadir::init(other.path(), &datadir::InitOptions::default()).unwrap();
    std::fs::copy(
        other.path().join(datadir::STORAGE_KEY_FILE),
        dir.path().join(datadir::STORAGE_KEY_FILE),
    )
    .unwrap();
    let stderr = refuses_to_start(dir.path());
    assert_names(&stderr, "storage.key", "restore the matching storage.key");
    assert_names(&stderr, "queues.redb", "from your backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_or_damaged_key_files_refuse_to_start() {
    // As root, permission bits do not stop a read, so "unreadable" is made the way root
    // also meets it: a directory where the file should be (read fails with EISDIR).
    for file in [
        datadir::RELAY_KEY_FILE,
        datadir::STORAGE_KEY_FILE,
        datadir::TLS_KEY_FILE,
        datadir::TLS_CERT_FILE,
    ] {
        let dir = initialised_datadir();
        let p = dir.path().join(file);
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        let stderr = refuses_to_start(dir.path());
        assert_names(&stderr, file, "restore it from your backup");
    }
    for file in [datadir::RELAY_KEY_FILE, datadir::STORAGE_KEY_FILE] {
        let dir = initialised_datadir();
        // Damaged, but private as the relay wrote it: the mode check passes and the
        // content is what is refused.
        let p = dir.path().join(file);
        std::fs::write(&p, "damaged!").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let stderr = refuses_to_start(dir.path());
        assert_names(&stderr, file, "Restore it from your backup");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_files_never_start_an_empty_store() {
    // The database gone, the identity present.
    let dir = initialised_datadir();
    std::fs::remove_file(dir.path().join(datadir::DB_FILE)).unwrap();
    let stderr = refuses_to_start(dir.path());
    assert_names(&stderr, "queues.redb", "restore it from your backup");
    assert!(!dir.path().join(datadir::DB_FILE).exists());

    // The identity gone, the store and its key present: `run` must not initialise a new
    // relay over them (that would replace storage.key and make every message unreadable).
    for file in [datadir::RELAY_KEY_FILE, datadir::STORAGE_KEY_FILE] {
        let dir = initialised_datadir();
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let stderr = refuses_to_start(dir.path());
        assert_names(&stderr, file, "from your backup");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_flipped_database_refuses_to_start_or_serves_only_intact_data() {
    // Flips at spread-out places. redb's integrity check at open (every page checksum of
    // the committed trees) catches a flip in a live page; a flip in a free page harms
    // nothing, and the relay then serves every message intact. A flip that got past both
    // would still fail the records' authentication (XChaCha20-Poly1305) and be answered
    // INTERNAL, never as altered data.
    let (mut refused, mut started) = (0, 0);
    let (original, queues) = populated().await;
    // Pages (4 KiB) that hold anything: the header page aside, these are the pages in use
    // (nothing was ever deleted from this store, so there is little garbage).
    let image = std::fs::read(original.path().join(datadir::DB_FILE)).unwrap();
    let used: Vec<usize> = image
        .chunks(4096)
        .enumerate()
        .skip(1)
        .filter(|(_, p)| p.iter().any(|b| *b != 0))
        .map(|(i, _)| i)
        .collect();
    for k in 0..8usize {
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(original.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        let db = dir.path().join(datadir::DB_FILE);
        let mut bytes = std::fs::read(&db).unwrap();
        // The middle of a used page, spread over all of them.
        let at = used[k * used.len() / 8] * 4096 + 2048;
        for b in &mut bytes[at..at + 16] {
            *b ^= 0xff;
        }
        std::fs::write(&db, &bytes).unwrap();
        match start_or_refusal(dir.path()) {
            Err(stderr) => {
                refused += 1;
                assert_names(&stderr, "queues.redb", "restore it from your backup");
                eprintln!(
                    "flip at {at} of {}: refused: {}",
                    bytes.len(),
                    stderr.trim()
                );
            }
            Ok(proc) => {
                started += 1;
                let (c, _p, _e) = connect(&proc.address).await;
                let drains = queues.iter().map(|creds| {
                    let creds = QueueCredentials {
                        relay: proc.address.clone(),
                        ..creds.clone()
                    };
                    let c = c.clone();
                    async move { drain(&c, &creds).await }
                });
                let mut intact = 0;
                for (q, got) in futures_util::future::join_all(drains)
                    .await
                    .into_iter()
                    .enumerate()
                {
                    let want: Vec<u64> = (0..POPULATED_MESSAGES)
                        .map(|i| q as u64 * 1000 + i)
                        .collect();
                    assert_eq!(got, want, "queue {q} after a flip at {at}");
                    intact += got.len();
                }
                eprintln!(
                    "flip at {at} of {}: started (free page); {intact} messages intact",
                    bytes.len()
                );
                c.close().await;
                proc.sigkill();
            }
        }
    }
    eprintln!("bit flips: {refused} refused at open, {started} in free pages");
}
