//! The relays a run targets: the `--relay` addresses, or else a relay embedded in this
//! process on its own runtime (its threads are named `sotto-relay*`, which is how its CPU
//! time is told apart from the tester's) with a data directory that is temporary unless
//! `--data-dir` names one.
//!
//! It does not connect to the relays: [`super::connections`] does.

use std::path::PathBuf;

use anyhow::Context as _;
use sotto_protocol::RelayAddress;
use sotto_relay::{RunningRelay, datadir};

use super::Options;

/// An embedded relay on its own runtime.
pub(super) struct Embedded {
    relay: Option<RunningRelay>,
    runtime: Option<tokio::runtime::Runtime>,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// The relays to target: `opts.relays`, or the address of an embedded relay started for
/// the run when there are none (stop it with [`Embedded::stop`] when the run is over).
pub(super) async fn targets(
    opts: &Options,
) -> anyhow::Result<(Option<Embedded>, Vec<RelayAddress>)> {
    let embedded = if opts.relays.is_empty() {
        Some(Embedded::start(opts).await?)
    } else {
        None
    };
    let relays: Vec<RelayAddress> = match &embedded {
        Some(e) => e.address().into_iter().collect(),
        None => opts.relays.clone(),
    };
    Ok((embedded, relays))
}

impl Embedded {
    async fn start(opts: &Options) -> anyhow::Result<Self> {
        let config = opts.embedded_config()?;
        let (dir, temp) = match &opts.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().context("cannot create a temporary directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        if !datadir::has_identity(&dir) {
            datadir::init(&dir, &datadir::InitOptions::default())?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sotto-relay")
            .enable_all()
            .build()
            .context("cannot start the embedded relay's runtime")?;
        let d = dir.clone();
        let relay = runtime
            .spawn(async move { sotto_relay::start(&d, config).await })
            .await
            .context("the embedded relay's start task failed")??;
        Ok(Self {
            relay: Some(relay),
            runtime: Some(runtime),
            dir,
            _temp: temp,
        })
    }

    fn address(&self) -> Option<RelayAddress> {
        self.relay.as_ref().map(|r| r.address.clone())
    }

    /// Queues in the relay's store, and the size of its database file in bytes (each
    /// `None` where it cannot be read).
    pub(super) fn stored(&self) -> (Option<u64>, Option<u64>) {
        (
            self.relay
                .as_ref()
                .and_then(|r| r.store.counts().ok())
                .map(|(q, _)| q),
            std::fs::metadata(self.dir.join(datadir::DB_FILE))
                .ok()
                .map(|m| m.len()),
        )
    }

    /// Shuts the relay down and then its runtime.
    pub(super) async fn stop(mut self) {
        if let (Some(relay), Some(rt)) = (self.relay.take(), self.runtime.as_ref()) {
            let _ = rt.spawn(relay.shutdown()).await;
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
