//! Progress of long steps (copy, compress + upload, download + restore).
//!
//! On a terminal (and with text logs) a bar shows bytes and rate on stderr. Otherwise, or with
//! `--log-format json`, each step logs one line when it starts and one when it ends, with its
//! size, duration and rate, so that logs stay greppable and machine-readable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static INTERACTIVE: AtomicBool = AtomicBool::new(false);

/// Choose bars (true) or log lines (false) for the rest of the process.
pub fn set_interactive(on: bool) {
    INTERACTIVE.store(on, Ordering::Relaxed);
}

/// One long step in progress.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    step: &'static str,
    db: String,
    started: Instant,
}

impl Progress {
    /// Start a step of `total` bytes (if known).
    pub(crate) fn start(step: &'static str, db: &str, total: Option<u64>) -> Self {
        let bar = INTERACTIVE.load(Ordering::Relaxed).then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let template = if total.is_some() {
                "{prefix} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
            } else {
                "{prefix} {spinner} {bytes} {binary_bytes_per_sec} {elapsed}"
            };
            bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
            bar.set_prefix(format!("{db}: {step}"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            tracing::info!(db = %db, step, total_bytes = total, "step started");
        }
        Progress {
            bar,
            step,
            db: db.to_string(),
            started: Instant::now(),
        }
    }

    /// Report the position (bytes done).
    pub(crate) fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// End the step; `bytes` is its size for the rate.
    pub(crate) fn finish(self, bytes: u64) {
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let mib_per_s = if secs > 0.0 {
            bytes as f64 / secs / 1048576.0
        } else {
            0.0
        };
        tracing::info!(
            db = %self.db,
            step = self.step,
            bytes,
            seconds = format_args!("{secs:.2}"),
            mib_per_s = format_args!("{mib_per_s:.1}"),
            "step finished"
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress {
    /// The bar, for a helper thread that updates it (None when logging lines).
    pub(crate) fn clone_bar(&self) -> Option<ProgressBar> {
        self.bar.clone()
    }
}
