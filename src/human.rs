//! Formatting for humans: times, ages, sizes, and an error's cause chain on one line.
//! (A leaf: every layer that prints or alerts uses these.)

use chrono::{DateTime, Utc};

/// RFC 3339 in UTC with a `Z`, second precision.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// "3h 12m ago", or "3h 12m in the future" for a time ahead of the clock.
pub fn ago(secs: i64) -> String {
    if secs < 0 {
        format!("{} in the future", human_age(secs))
    } else {
        format!("{} ago", human_age(secs))
    }
}

/// "3h 12m", "2d 4h", "45s": a length of time for humans (see [`ago`] for ages, which may
/// be in the future).
pub fn human_age(secs: i64) -> String {
    let secs = secs.saturating_abs();
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// "1.2 GiB": a size for humans.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Render an error and its whole cause chain on one line: `a: b: c`.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(src) = cur {
        let s = src.to_string();
        // Some errors (e.g. the AWS SDK's) repeat their source in their own message.
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = src.source();
    }
    out
}
