//! What commands print: result lines on stdout, error lines on stderr, and what happens when
//! nobody reads them any more. (Logs and progress bars are `tracing` and `progress`.)
//!
//! `println!` panics when a write fails, and a write fails as soon as the reader has gone:
//! `guardian list | head -1` closes the pipe after one line, and because Rust ignores SIGPIPE
//! the next write returns EPIPE. Here a closed stdout (EPIPE) quietly drops the rest of the
//! output, as ripgrep exits quietly on a broken pipe, but the command still finishes its work:
//! the backup of the next database must not be skipped because nobody reads the ids, and the
//! exit code is the command's own. Any other write error (a full disk under
//! `list --json > file`) is remembered and reported once by `main` with exit code 2, so that
//! a truncated result never passes for a complete one.
//!
//! Error lines on stderr are best effort: when stderr is gone there is nobody left to tell.
//! They read `guardian: error: {what failed}: {why}; {the fix}` (and `guardian: warning: …`);
//! with `--log-format json` each is one JSON object like the log lines around it
//! (`{"timestamp": …, "level": "ERROR", "message": …, "target": "guardian"}`), so that every
//! line on stderr parses as JSON.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Set by `main` for `--log-format json`: error lines are JSON objects.
static JSON: AtomicBool = AtomicBool::new(false);
/// Set once stdout returned EPIPE: later lines are dropped without trying.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// The first write error on stdout other than EPIPE.
static STDOUT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Print one line on stdout (see the module doc for what happens when that fails).
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Print a failure on stderr: `guardian: error: …` (see the module doc).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::error(format_args!($($arg)*))
    };
}
pub(crate) use errln;

/// Print a warning on stderr: `guardian: warning: …` (see the module doc).
macro_rules! warnln {
    ($($arg:tt)*) => {
        $crate::output::warning(format_args!($($arg)*))
    };
}
pub(crate) use warnln;

/// A result as pretty JSON on stdout (`--json`); the value is guardian's own data, so it
/// always serializes.
pub(crate) fn json(value: &impl serde::Serialize) {
    line(format_args!(
        "{}",
        serde_json::to_string_pretty(value).expect("guardian's results serialize")
    ));
}

/// Write error and warning lines as JSON objects (`--log-format json`).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Write `args` and a newline to stdout. Never panics.
pub(crate) fn line(args: fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        failed(&e);
    }
}

/// Write `bytes` to stdout as they are (`diff --sql`: text values may hold any byte). Never
/// panics.
pub(crate) fn raw(bytes: &[u8]) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = std::io::stdout().lock().write_all(bytes) {
        failed(&e);
    }
}

/// Say on stderr that something failed: `guardian: error: {message}`, or its JSON object.
pub fn error(message: impl fmt::Display) {
    stderr_line("ERROR", "error", &message.to_string());
}

/// Warn on stderr: `guardian: warning: {message}`, or its JSON object.
pub(crate) fn warning(message: impl fmt::Display) {
    stderr_line("WARN", "warning", &message.to_string());
}

/// Write one line to stderr. Never panics; a closed stderr is ignored.
fn stderr_line(level: &str, word: &str, message: &str) {
    let line = if JSON.load(Ordering::Relaxed) {
        serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": level,
            "message": message,
            "target": "guardian",
        })
        .to_string()
    } else {
        format!("guardian: {word}: {message}")
    };
    let mut err = std::io::stderr().lock();
    let _ = err
        .write_all(line.as_bytes())
        .and_then(|()| err.write_all(b"\n"));
}

fn failed(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        return;
    }
    let mut first = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
    first.get_or_insert_with(|| e.to_string());
}

/// Flush stdout and return the first write error that was not EPIPE, if any: the output
/// the caller asked for is incomplete, and `main` must say so.
pub fn finish() -> Option<String> {
    if !STDOUT_CLOSED.load(Ordering::Relaxed) {
        if let Err(e) = std::io::stdout().lock().flush() {
            failed(&e);
        }
    }
    STDOUT_ERROR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}
