//! The fix a failure line ends with: what to do next, from what failed and why. A message
//! that already says which command to run keeps its own advice.

use crate::error::Error;
use crate::human::chain;

/// `{what failed}: {why}; {the fix}` for `e`, where `job` of `db` failed (both `None` for a
/// command's fatal error).
pub(crate) fn describe(job: Option<&str>, db: Option<&str>, e: &Error) -> String {
    let why = chain(e);
    let what = match (job, db) {
        (Some(job), Some(db)) if e.is_busy() => format!("{job} of {db} skipped: "),
        (Some(job), Some(db)) => format!("{job} of {db} failed: "),
        _ => String::new(),
    };
    match fix(job, db, e, &why) {
        Some(fix) => format!("{what}{why}; {fix}"),
        None => format!("{what}{why}"),
    }
}

/// What to do about `e` (`why` is its message), unless its message already says it.
fn fix(job: Option<&str>, db: Option<&str>, e: &Error, why: &str) -> Option<String> {
    if [
        "guardian restore",
        "guardian backup",
        "guardian doctor",
        "--force",
    ]
    .iter()
    .any(|c| why.contains(c))
    {
        return None;
    }
    let db_arg = db.map_or(String::new(), |db| format!(" --db {db}"));
    Some(match e {
        // One store of several: the fix of what failed there, and the store to check.
        Error::InStore { store, source } => match fix(job, db, source, why)? {
            _ if matches!(**source, Error::Storage(_)) => format!(
                "check store {store} and its credentials with `guardian doctor`; the other stores are not affected"
            ),
            f => f,
        },
        Error::Integrity { .. } if job == Some("backup") => format!(
            "put the newest good snapshot back with `guardian restore --latest{db_arg}` (the damaged file is kept aside)"
        ),
        Error::Integrity { .. } | Error::Damaged { .. } => format!(
            "`guardian restore --latest{db_arg}` skips damaged snapshots; `guardian verify --all{db_arg}` lists them"
        ),
        Error::NoGoodSnapshot(_) => format!("take a snapshot with `guardian backup{db_arg}`"),
        Error::Storage(_) => "check the store and its credentials with `guardian doctor`".into(),
        Error::Sqlite { .. } | Error::Io { .. } => {
            "check the databases, the staging folder and the store with `guardian doctor`".into()
        }
        Error::Busy(_) => {
            "that guardian reports its own outcome; run this again when it has finished".into()
        }
        // Config messages name the key and what it should be; usage errors say what fits; the
        // source, not-a-database, timeout and gone messages say what to do.
        Error::Config(_)
        | Error::Usage(_)
        | Error::Source(_)
        | Error::NotADatabase(_)
        | Error::Timeout(_)
        | Error::Gone(_)
        | Error::InUse(_)
        | Error::ForeignKeys { .. }
        | Error::Unreadable(_)
        | Error::SourceGone { .. }
        | Error::StoresMissed { .. }
        | Error::Cancelled(_)
        | Error::Internal(_)
        | Error::Reported(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_source_points_at_restore_latest() {
        let e = Error::Integrity {
            what: "the copy of market".into(),
            detail: "PRAGMA integrity_check reported: row 3 missing from index ia".into(),
        };
        let line = describe(Some("backup"), Some("market"), &e);
        assert!(line.starts_with("backup of market failed: "), "{line}");
        assert!(
            line.contains("`guardian restore --latest --db market`"),
            "{line}"
        );
    }

    #[test]
    fn advice_in_the_message_is_not_repeated() {
        let e = Error::NoGoodSnapshot(
            "no snapshot passes; guardian restore --snapshot x --check none restores one anyway"
                .into(),
        );
        assert!(!describe(None, None, &e).contains("guardian backup"));
        let e = Error::NoGoodSnapshot("no snapshots of market".into());
        assert!(describe(None, Some("market"), &e)
            .ends_with("take a snapshot with `guardian backup --db market`"));
    }
}
