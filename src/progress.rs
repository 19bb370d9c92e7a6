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

    /// Start a step without a byte count that is expected to take about `expected` (measured
    /// by a drill): on a terminal its spinner shows the time left, or how much longer it takes.
    pub(crate) fn start_timed(step: &'static str, db: &str, expected: Duration) -> Self {
        let progress = Progress::start(step, db, None);
        if let Some(bar) = &progress.bar {
            let style = ProgressStyle::with_template("{prefix} {spinner} {elapsed} ({left})")
                .expect("valid template")
                .with_key(
                    "left",
                    move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&time_left(expected, state.elapsed()));
                    },
                );
            bar.set_style(style);
        }
        progress
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

/// `eta 12s`, or `3s over the estimate` once `expected` has passed.
fn time_left(expected: Duration, elapsed: Duration) -> String {
    match expected.checked_sub(elapsed) {
        Some(left) => format!("eta {}s", left.as_secs() + 1),
        None => format!("{}s over the estimate", (elapsed - expected).as_secs()),
    }
}

/// Say `message` about `db` before a long operation: on stderr on a terminal, else as a log line.
pub(crate) fn note(db: &str, message: &str) {
    if INTERACTIVE.load(Ordering::Relaxed) {
        eprintln!("{db}: {message}");
    } else {
        tracing::info!(db = %db, "{message}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_counts_down_then_says_how_far_over_it_is() {
        let s = Duration::from_secs;
        assert_eq!(time_left(s(10), Duration::from_millis(2500)), "eta 8s");
        assert_eq!(time_left(s(10), s(10)), "eta 1s");
        assert_eq!(time_left(s(10), s(13)), "3s over the estimate");
    }
}
