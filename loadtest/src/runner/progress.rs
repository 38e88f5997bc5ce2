//! The progress bar: drawn on standard error when it is a terminal and `--progress` is on
//! (the default of the binary), hidden otherwise. It counts resolved messages in a run, or
//! created queues in `--create-queues`.
//!
//! It only reads counters; nothing it does affects a run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Options;
use super::accounting::Collector;

/// A progress bar and the task that updates it.
pub(super) struct Progress {
    bar: indicatif::ProgressBar,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn bar(opts: &Options, len: Option<u64>) -> indicatif::ProgressBar {
        use std::io::IsTerminal as _;
        if !(opts.progress && std::io::stderr().is_terminal()) {
            return indicatif::ProgressBar::hidden();
        }
        let bar = match len {
            Some(l) => indicatif::ProgressBar::new(l),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    }

    /// A bar of the messages resolved in a run (a spinner with `--duration`).
    pub(super) fn start(opts: &Options, collector: &Arc<Collector>) -> Self {
        let bar = Self::bar(opts, opts.messages.filter(|_| opts.duration.is_none()));
        if bar.is_hidden() {
            return Self { bar, task: None };
        }
        let (b, rx) = (bar.clone(), collector.subscribe_resolved());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            loop {
                let done = *rx.borrow();
                b.set_position(done);
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                b.set_message(format!("resolved, {rate:.0} msg/s"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            bar,
            task: Some(task),
        }
    }

    /// A bar of `count` up to `len`.
    pub(super) fn counter(opts: &Options, len: u64, count: Arc<AtomicU64>) -> Self {
        let bar = Self::bar(opts, Some(len));
        if bar.is_hidden() {
            return Self { bar, task: None };
        }
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                b.set_position(count.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            bar,
            task: Some(task),
        }
    }

    /// Stops updating and clears the bar.
    pub(super) fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}
