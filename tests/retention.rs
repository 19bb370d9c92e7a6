//! Retention as a pure function: table tests (days, ISO weeks, months, years, verified, failed,
//! future, time zones) and properties that must hold for any history and policy.

use chrono::{DateTime, Duration, Utc};
use guardian::catalog::SnapshotStatus;
use guardian::config::RetentionConfig;
use guardian::retention::{apply_marks, plan, require_proof, Action, Candidate, Plan, Reason};
use proptest::prelude::*;

const NOW: &str = "2026-11-24T12:00:00Z";

fn now() -> DateTime<Utc> {
    NOW.parse().unwrap()
}

/// A snapshot whose id is its time, for readable tables; status u/v/f.
fn s(at: &str, status: char) -> Candidate {
    Candidate {
        id: at.to_string(),
        created_at: at.parse().unwrap(),
        status: match status {
            'u' => SnapshotStatus::Unverified,
            'v' => SnapshotStatus::Verified,
            'f' => SnapshotStatus::Failed,
            _ => unreachable!(),
        },
    }
}

fn policy(keep_last: u32, daily: u32, weekly: u32, monthly: u32, yearly: u32) -> RetentionConfig {
    RetentionConfig {
        keep_last,
        daily,
        weekly,
        monthly,
        yearly,
        keep_delete: None,
    }
}

fn kept(p: &Plan) -> Vec<&str> {
    p.decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.as_str())
        .collect()
}

fn reasons(p: &Plan, id: &str) -> Vec<String> {
    p.decisions
        .iter()
        .find(|d| d.id == id)
        .unwrap()
        .reasons
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn retention_tables() {
    struct Case {
        name: &'static str,
        snaps: Vec<Candidate>,
        policy: RetentionConfig,
        tz: &'static str,
        kept: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "keep_last keeps the newest n",
            snaps: vec![
                s("2026-11-20T03:00:00Z", 'u'),
                s("2026-11-21T03:00:00Z", 'u'),
                s("2026-11-22T03:00:00Z", 'u'),
                s("2026-11-23T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(3, 0, 0, 0, 0),
            tz: "UTC",
            kept: vec![
                "2026-11-24T03:00:00Z",
                "2026-11-23T03:00:00Z",
                "2026-11-22T03:00:00Z",
            ],
        },
        Case {
            name: "daily keeps the newest of each day",
            snaps: vec![
                s("2026-11-21T03:00:00Z", 'u'),
                s("2026-11-22T03:00:00Z", 'u'),
                s("2026-11-22T15:00:00Z", 'u'),
                s("2026-11-23T03:00:00Z", 'u'),
                s("2026-11-23T15:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(0, 3, 0, 0, 0),
            tz: "UTC",
            kept: vec![
                "2026-11-24T03:00:00Z",
                "2026-11-23T15:00:00Z",
                "2026-11-22T15:00:00Z",
            ],
        },
        Case {
            name: "daily counts days that have a snapshot, not calendar days (restic)",
            snaps: vec![
                s("2026-11-01T03:00:00Z", 'u'),
                s("2026-11-02T03:00:00Z", 'u'),
                s("2026-11-20T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(0, 3, 0, 0, 0),
            tz: "UTC",
            kept: vec![
                "2026-11-24T03:00:00Z",
                "2026-11-20T03:00:00Z",
                "2026-11-02T03:00:00Z",
            ],
        },
        Case {
            // 2026-11-22 is a Sunday (ISO week 47), 2026-11-23 a Monday (week 48).
            name: "weekly uses ISO weeks starting on Monday",
            snaps: vec![
                s("2026-11-14T03:00:00Z", 'u'),
                s("2026-11-21T03:00:00Z", 'u'),
                s("2026-11-22T03:00:00Z", 'u'),
                s("2026-11-23T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(0, 0, 2, 0, 0),
            tz: "UTC",
            kept: vec!["2026-11-24T03:00:00Z", "2026-11-22T03:00:00Z"],
        },
        Case {
            name: "monthly keeps the newest of each month",
            snaps: vec![
                s("2026-08-31T03:00:00Z", 'u'),
                s("2026-09-01T03:00:00Z", 'u'),
                s("2026-09-30T03:00:00Z", 'u'),
                s("2026-10-01T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(0, 0, 0, 3, 0),
            tz: "UTC",
            kept: vec![
                "2026-11-24T03:00:00Z",
                "2026-10-01T03:00:00Z",
                "2026-09-30T03:00:00Z",
            ],
        },
        Case {
            name: "yearly keeps the newest of each year",
            snaps: vec![
                s("2024-12-31T03:00:00Z", 'u'),
                s("2025-01-01T03:00:00Z", 'u'),
                s("2025-12-31T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(0, 0, 0, 0, 2),
            tz: "UTC",
            kept: vec!["2026-11-24T03:00:00Z", "2025-12-31T03:00:00Z"],
        },
        Case {
            name: "rules are a union",
            snaps: vec![
                s("2026-09-15T03:00:00Z", 'u'),
                s("2026-10-15T03:00:00Z", 'u'),
                s("2026-11-22T03:00:00Z", 'u'),
                s("2026-11-23T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(1, 2, 0, 2, 0),
            tz: "UTC",
            kept: vec![
                "2026-11-24T03:00:00Z",
                "2026-11-23T03:00:00Z",
                "2026-10-15T03:00:00Z",
            ],
        },
        Case {
            name: "the newest verified snapshot is kept beyond the policy",
            snaps: vec![
                s("2026-11-20T03:00:00Z", 'v'),
                s("2026-11-21T03:00:00Z", 'v'),
                s("2026-11-22T03:00:00Z", 'u'),
                s("2026-11-23T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(2, 0, 0, 0, 0),
            tz: "UTC",
            kept: vec![
                "2026-11-24T03:00:00Z",
                "2026-11-23T03:00:00Z",
                "2026-11-21T03:00:00Z",
            ],
        },
        Case {
            name:
                "failed snapshots fill no slot; kept as evidence while newer than the oldest kept",
            snaps: vec![
                s("2026-11-20T03:00:00Z", 'f'),
                s("2026-11-21T03:00:00Z", 'u'),
                s("2026-11-22T03:00:00Z", 'u'),
                s("2026-11-23T03:00:00Z", 'f'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(2, 0, 0, 0, 0),
            tz: "UTC",
            kept: vec![
                "2026-11-24T03:00:00Z",
                "2026-11-23T03:00:00Z",
                "2026-11-22T03:00:00Z",
            ],
        },
        Case {
            name: "when the newest snapshot failed nothing is deleted",
            snaps: vec![
                s("2026-11-20T03:00:00Z", 'u'),
                s("2026-11-21T03:00:00Z", 'u'),
                s("2026-11-22T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'f'),
            ],
            policy: policy(1, 0, 0, 0, 0),
            tz: "UTC",
            kept: vec![
                "2026-11-24T03:00:00Z",
                "2026-11-22T03:00:00Z",
                "2026-11-21T03:00:00Z",
                "2026-11-20T03:00:00Z",
            ],
        },
        Case {
            name: "an empty policy deletes nothing",
            snaps: vec![
                s("2026-11-20T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
            ],
            policy: policy(0, 0, 0, 0, 0),
            tz: "UTC",
            kept: vec!["2026-11-24T03:00:00Z", "2026-11-20T03:00:00Z"],
        },
        Case {
            name: "future snapshots are never deleted and fill no slot",
            snaps: vec![
                s("2026-11-22T03:00:00Z", 'u'),
                s("2026-11-23T03:00:00Z", 'u'),
                s("2026-11-24T03:00:00Z", 'u'),
                s("2030-01-01T00:00:00Z", 'u'),
                s("2031-01-01T00:00:00Z", 'f'),
            ],
            policy: policy(1, 0, 0, 0, 0),
            tz: "UTC",
            kept: vec![
                "2031-01-01T00:00:00Z",
                "2030-01-01T00:00:00Z",
                "2026-11-24T03:00:00Z",
            ],
        },
        Case {
            // 22:30Z and 23:30Z on the 23rd are 23:30 on the 23rd and 00:30 on the 24th in Paris.
            name: "calendar days follow the database's time zone (UTC)",
            snaps: vec![
                s("2026-11-23T22:30:00Z", 'u'),
                s("2026-11-23T23:30:00Z", 'u'),
            ],
            policy: policy(0, 5, 0, 0, 0),
            tz: "UTC",
            kept: vec!["2026-11-23T23:30:00Z"],
        },
        Case {
            name: "calendar days follow the database's time zone (Paris)",
            snaps: vec![
                s("2026-11-23T22:30:00Z", 'u'),
                s("2026-11-23T23:30:00Z", 'u'),
            ],
            policy: policy(0, 5, 0, 0, 0),
            tz: "Europe/Paris",
            kept: vec!["2026-11-23T23:30:00Z", "2026-11-23T22:30:00Z"],
        },
        Case {
            name: "no snapshots, nothing to do",
            snaps: vec![],
            policy: policy(3, 7, 4, 12, 0),
            tz: "UTC",
            kept: vec![],
        },
    ];
    for c in cases {
        // Input order must not matter.
        let mut shuffled = c.snaps.clone();
        shuffled.reverse();
        let p = plan(&shuffled, &c.policy, c.tz.parse().unwrap(), now());
        assert_eq!(kept(&p), c.kept, "case: {}", c.name);
        assert_eq!(p.decisions.len(), c.snaps.len(), "case: {}", c.name);
    }
}

#[test]
fn every_decision_says_why() {
    let snaps = vec![
        s("2026-10-15T03:00:00Z", 'u'),
        s("2026-11-20T03:00:00Z", 'v'),
        s("2026-11-23T03:00:00Z", 'f'),
        s("2026-11-24T03:00:00Z", 'u'),
    ];
    let p = plan(&snaps, &policy(1, 1, 0, 0, 0), chrono_tz::UTC, now());
    assert_eq!(
        reasons(&p, "2026-11-24T03:00:00Z"),
        ["last 1", "daily 2026-11-24"]
    );
    assert_eq!(reasons(&p, "2026-11-20T03:00:00Z"), ["newest verified"]);
    assert!(reasons(&p, "2026-11-23T03:00:00Z")[0].starts_with("failed; kept as evidence"));
    assert_eq!(reasons(&p, "2026-10-15T03:00:00Z"), ["no rule keeps it"]);
    assert!(p.hold.is_none());

    let held = plan(&snaps, &policy(0, 0, 0, 0, 0), chrono_tz::UTC, now());
    assert!(held.hold.as_deref().unwrap().contains("no retention rule"));
    let failed_newest = plan(
        &[
            s("2026-11-24T03:00:00Z", 'f'),
            s("2026-11-01T03:00:00Z", 'u'),
        ],
        &policy(1, 0, 0, 0, 0),
        chrono_tz::UTC,
        now(),
    );
    assert!(
        failed_newest.hold.as_deref().unwrap().contains("is failed"),
        "{failed_newest:?}"
    );
    assert!(failed_newest
        .decisions
        .iter()
        .all(|d| d.keep && d.reasons == [Reason::Hold]));
}

#[test]
fn nothing_is_deleted_unless_a_newer_snapshot_passed_integrity_check() {
    let snaps = vec![
        s("2026-11-20T03:00:00Z", 'u'),
        s("2026-11-21T03:00:00Z", 'u'),
        s("2026-11-22T03:00:00Z", 'u'),
        s("2026-11-23T03:00:00Z", 'u'),
        s("2026-11-24T03:00:00Z", 'u'),
        // Dated in the future and "proven": it proves nothing.
        s("2026-11-30T03:00:00Z", 'u'),
    ];
    let kept_ids = |p: &Plan| -> Vec<String> {
        p.decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id[..10].to_string())
            .collect()
    };
    // keep_last 1 keeps 11-24 (and the future one); the rest need a newer proven snapshot.
    for (proven, kept) in [
        // No proof at all: nothing goes.
        (
            &[][..],
            &[
                "2026-11-30",
                "2026-11-24",
                "2026-11-23",
                "2026-11-22",
                "2026-11-21",
                "2026-11-20",
            ][..],
        ),
        (
            &["2026-11-30T03:00:00Z"][..],
            &[
                "2026-11-30",
                "2026-11-24",
                "2026-11-23",
                "2026-11-22",
                "2026-11-21",
                "2026-11-20",
            ][..],
        ),
        // 11-22 proven: it stays (nothing newer is proven), the older ones may go.
        (
            &["2026-11-22T03:00:00Z"][..],
            &["2026-11-30", "2026-11-24", "2026-11-23", "2026-11-22"][..],
        ),
        // The newest proven: everything the policy lets go, goes.
        (
            &["2026-11-24T03:00:00Z", "2026-11-20T03:00:00Z"][..],
            &["2026-11-30", "2026-11-24"][..],
        ),
    ] {
        let mut p = plan(&snaps, &policy(1, 0, 0, 0, 0), chrono_tz::UTC, now());
        require_proof(&mut p, &|id: &str| proven.contains(&id), "market");
        assert_eq!(kept_ids(&p), kept, "proven: {proven:?}");
        assert_eq!(p.unproven.is_some(), kept.len() > 2, "{p:?}");
        assert!(p
            .decisions
            .iter()
            .filter(|d| d.keep && !d.reasons.contains(&Reason::Last(1)))
            .all(|d| d.reasons.contains(&Reason::Unproven) || d.reasons.contains(&Reason::Future)));
    }
}

#[test]
fn deletion_is_mark_then_delete_after_keep_delete_and_a_kept_snapshot_is_unmarked() {
    let snaps = vec![
        s("2026-11-22T03:00:00Z", 'u'),
        s("2026-11-23T03:00:00Z", 'u'),
        s("2026-11-24T03:00:00Z", 'u'),
    ];
    let day = Duration::hours(24);
    let marked = |id: &str| match &id[..10] {
        // Marked two days ago: its time is up.
        "2026-11-22" => Some(now() - day * 2),
        // Marked an hour ago: it waits.
        "2026-11-23" => Some(now() - Duration::hours(1)),
        // Kept by the policy, yet marked: un-marked.
        "2026-11-24" => Some(now() - Duration::hours(1)),
        _ => None,
    };
    let mut p = plan(&snaps, &policy(1, 0, 0, 0, 0), chrono_tz::UTC, now());
    apply_marks(&mut p, &marked, day, now());
    let action = |id: &str| {
        p.decisions
            .iter()
            .find(|d| d.id.starts_with(id))
            .unwrap()
            .action
    };
    assert_eq!(action("2026-11-22"), Action::Delete);
    assert_eq!(action("2026-11-23"), Action::Wait);
    assert_eq!(action("2026-11-24"), Action::Unmark);
    assert_eq!(p.deletions().count(), 1);
    // Unmarked ones are marked first; keep_delete 0 deletes at once; a huge one never expires.
    for (kd, expect) in [
        (day, Action::Mark),
        (Duration::zero(), Action::Delete),
        (Duration::MAX, Action::Mark),
    ] {
        let mut p = plan(&snaps, &policy(1, 0, 0, 0, 0), chrono_tz::UTC, now());
        apply_marks(&mut p, &|_| None, kd, now());
        assert_eq!(p.decisions[1].action, expect, "keep_delete {kd}");
        assert_eq!(p.decisions[0].action, Action::Keep);
    }
}

fn arb_history() -> impl Strategy<Value = Vec<Candidate>> {
    // Up to 40 snapshots over ~400 days before NOW and a few after it.
    proptest::collection::vec((-400 * 24i64..48, 0u8..3), 0..40).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (hours, st))| Candidate {
                id: format!("s{i:03}"),
                created_at: now() + Duration::hours(hours) + Duration::seconds(i as i64),
                status: [
                    SnapshotStatus::Unverified,
                    SnapshotStatus::Verified,
                    SnapshotStatus::Failed,
                ][st as usize],
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn safety_properties_hold_for_any_history(
        snaps in arb_history(),
        p in (0u32..4, 0u32..8, 0u32..5, 0u32..13, 0u32..3),
        tz in prop::sample::select(vec!["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]),
    ) {
        let policy = policy(p.0, p.1, p.2, p.3, p.4);
        let plan = plan(&snaps, &policy, tz.parse().unwrap(), now());
        let by_id = |id: &str| plan.decisions.iter().find(|d| d.id == id).unwrap();
        // Nothing dated in the future is deleted.
        for c in snaps.iter().filter(|c| c.created_at > now()) {
            prop_assert!(by_id(&c.id).keep);
        }
        let mut past: Vec<&Candidate> = snaps.iter().filter(|c| c.created_at <= now()).collect();
        past.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        if policy.is_empty() || past.first().is_some_and(|c| c.status == SnapshotStatus::Failed) {
            prop_assert!(plan.hold.is_some());
            prop_assert!(plan.decisions.iter().all(|d| d.keep));
        } else {
            // The newest usable snapshot and the newest verified one are always kept.
            if let Some(newest) = past.iter().find(|c| c.status != SnapshotStatus::Failed) {
                prop_assert!(by_id(&newest.id).keep);
            }
            if let Some(v) = past.iter().find(|c| c.status == SnapshotStatus::Verified) {
                prop_assert!(by_id(&v.id).keep);
            }
        }
        for d in &plan.decisions {
            prop_assert!(!d.reasons.is_empty());
            prop_assert_eq!(d.keep, !d.reasons.contains(&Reason::Expired));
        }
        // keep_last alone never keeps fewer good snapshots than asked (when they exist).
        let good = past.iter().filter(|c| c.status != SnapshotStatus::Failed).count();
        let kept_good = plan.decisions.iter().filter(|d| d.keep && d.status != SnapshotStatus::Failed && d.created_at <= now()).count();
        prop_assert!(kept_good >= good.min(policy.keep_last as usize));
    }

    #[test]
    fn a_deleted_snapshot_always_has_a_newer_kept_proven_one(
        snaps in arb_history(),
        proven_bits in proptest::collection::vec(any::<bool>(), 40),
        p in (0u32..4, 0u32..8, 0u32..5, 0u32..13, 0u32..3),
    ) {
        let proven: Vec<String> = snaps
            .iter()
            .enumerate()
            .filter(|(i, c)| proven_bits[*i] && c.status != SnapshotStatus::Failed)
            .map(|(_, c)| c.id.clone())
            .collect();
        let mut plan = plan(&snaps, &policy(p.0, p.1, p.2, p.3, p.4), chrono_tz::UTC, now());
        require_proof(&mut plan, &|id: &str| proven.iter().any(|p| p == id), "market");
        for d in plan.decisions.iter().filter(|d| !d.keep) {
            prop_assert!(
                plan.decisions.iter().any(|n| n.keep
                    && n.created_at > d.created_at
                    && n.created_at <= now()
                    && proven.contains(&n.id)),
                "{} deleted with no newer kept proven snapshot", d.id
            );
        }
    }
}
