//! The proven recovery time: how long the restore of the last passed drill took, and the
//! estimates built on it (`restore --dry-run`, the ETA of a restore on a terminal).
//!
//! A drill does what `guardian restore` does with every check (download, decompression, both
//! SHA-256s, `integrity_check`) into a scratch file, and records how long that took as
//! `restore_seconds` (records written before that field are read from their `download` and
//! `integrity_check` steps). This module reads it back; it never runs anything itself.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::config::CheckKind;
use crate::human::rfc3339;
use crate::storage::Storage;

/// What the newest passed drill measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProvenRto {
    /// The snapshot the drill restored.
    pub snapshot: String,
    /// When the drill ran.
    pub drilled_at: String,
    #[serde(skip)]
    pub drilled_at_time: DateTime<Utc>,
    /// Its raw (database) size.
    pub raw_bytes: u64,
    /// The restore with every check: download, decompression, both SHA-256s, `integrity_check`.
    pub restore_seconds: f64,
    /// The part of it that was `integrity_check`.
    pub check_seconds: f64,
}

/// How long a restore is expected to take, from a [`ProvenRto`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub seconds: f64,
    /// The SQLite check's share of it (`None`: not measured for this check).
    pub check_seconds: Option<f64>,
    /// True when the figure is an upper bound (a `quick_check` restore, estimated from a
    /// drill's `integrity_check`).
    pub at_most: bool,
    /// What it is based on.
    pub basis: ProvenRto,
}

impl ProvenRto {
    /// The expected duration of a restore of `raw_bytes` with `check`: the drill's times
    /// scaled by size (restore time grows linearly with size; see docs/PERFORMANCE.md).
    pub fn estimate(&self, raw_bytes: u64, check: Option<CheckKind>) -> Estimate {
        let scale = if self.raw_bytes == 0 {
            1.0
        } else {
            raw_bytes as f64 / self.raw_bytes as f64
        };
        let data = (self.restore_seconds - self.check_seconds).max(0.0) * scale;
        let check_full = self.check_seconds * scale;
        let (seconds, check_seconds, at_most) = match check {
            Some(CheckKind::IntegrityCheck) => (data + check_full, Some(check_full), false),
            // quick_check does part of integrity_check's work: the latter bounds it.
            Some(CheckKind::QuickCheck) => (data + check_full, None, true),
            None => (data, None, false),
        };
        Estimate {
            seconds,
            check_seconds,
            at_most,
            basis: self.clone(),
        }
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (the drill at {} restored {} with every check in {})",
            if self.at_most { "at most" } else { "about" },
            seconds(self.seconds),
            self.basis.drilled_at,
            crate::human::human_bytes(self.basis.raw_bytes),
            seconds(self.basis.restore_seconds),
        )
    }
}

/// `12.3 s`, `4 min 05 s`.
pub fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        let whole = s.round() as u64;
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

/// The newest passed drill of `catalog` that recorded its restore time, read from its record.
/// `None` when no drill passed, or its record cannot be read (then there is no proof).
pub async fn proven(store: &Arc<dyn Storage>, catalog: &Catalog) -> Option<ProvenRto> {
    let (entry, mark) = catalog
        .snapshots
        .iter()
        .filter_map(|s| s.last_drill.as_ref().map(|d| (s, d)))
        .filter(|(_, d)| d.ok)
        .max_by_key(|(_, d)| d.at)?;
    let raw_bytes = entry.manifest.as_ref()?.raw_len;
    let bytes = store.get_bytes(&mark.key, 1 << 20).await.ok()?;
    let record: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let (restore_seconds, check_seconds) = times(&record)?;
    Some(ProvenRto {
        snapshot: entry.key.id.to_string(),
        drilled_at: rfc3339(mark.at),
        drilled_at_time: mark.at,
        raw_bytes,
        restore_seconds,
        check_seconds,
    })
}

/// `(restore_seconds, integrity_check seconds)` of a drill record: its `restore_seconds`, or
/// for a record written before that field, the sum of its `download` and `integrity_check`
/// steps.
fn times(record: &serde_json::Value) -> Option<(f64, f64)> {
    let step = |name: &str| {
        record["steps"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["seconds"].as_f64())
    };
    let check = step("integrity_check")?;
    let restore = match record["restore_seconds"].as_f64() {
        Some(s) => s,
        None => step("download")? + check,
    };
    Some((restore, check))
}

/// The expected duration of the SQLite check step, for its progress bar.
pub fn check_duration(estimate: Option<&Estimate>) -> Option<Duration> {
    estimate
        .and_then(|e| e.check_seconds)
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rto() -> ProvenRto {
        ProvenRto {
            snapshot: "20260101T000000Z-00000000".into(),
            drilled_at: "2026-01-01T01:00:00Z".into(),
            drilled_at_time: "2026-01-01T01:00:00Z".parse().unwrap(),
            raw_bytes: 1 << 30,
            restore_seconds: 10.0,
            check_seconds: 6.0,
        }
    }

    #[test]
    fn estimates_scale_with_size_and_follow_the_check() {
        let e = rto().estimate(2 << 30, Some(CheckKind::IntegrityCheck));
        assert_eq!(
            (e.seconds, e.check_seconds, e.at_most),
            (20.0, Some(12.0), false)
        );
        let e = rto().estimate(1 << 29, Some(CheckKind::QuickCheck));
        assert_eq!((e.seconds, e.check_seconds, e.at_most), (5.0, None, true));
        let e = rto().estimate(1 << 30, None);
        assert_eq!((e.seconds, e.at_most), (4.0, false));
        assert_eq!(
            rto().estimate(1 << 30, Some(CheckKind::IntegrityCheck)).to_string(),
            "about 10.0 s (the drill at 2026-01-01T01:00:00Z restored 1.0 GiB with every check in 10.0 s)"
        );
        assert_eq!(seconds(245.4), "4 min 05 s");
    }

    #[test]
    fn older_records_are_read_from_their_steps() {
        let old = serde_json::json!({"seconds": 30.0, "steps": [
            {"name": "download", "seconds": 3.0}, {"name": "integrity_check", "seconds": 5.0},
            {"name": "compare", "seconds": 20.0}]});
        assert_eq!(times(&old), Some((8.0, 5.0)));
        let new = serde_json::json!({"restore_seconds": 7.5, "steps": [
            {"name": "download", "seconds": 3.0}, {"name": "integrity_check", "seconds": 4.0}]});
        assert_eq!(times(&new), Some((7.5, 4.0)));
        assert_eq!(times(&serde_json::json!({"steps": []})), None);
    }
}
