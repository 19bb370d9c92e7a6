//! What `guardian doctor` asks of a store: checks as data, one line each, and the probes every
//! backend shares (a probe object under the store's root: put, get, list, conditional put,
//! delete). Each backend's [`Storage::diagnose`] runs these plus its own (S3: credentials,
//! multipart, stale uploads, clock skew, versioning); `doctor` never names a backend.
//!
//! Checks never fail the caller: a failing check is reported and the next one still runs where
//! it can. Nothing is changed that the probe did not create.

use bytes::Bytes;
use chrono::Utc;

use super::{ObjectKey, PutMode, Storage, StorageError};
use crate::human::chain;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Works, but something deserves attention (guardian stays correct).
    Warn,
    Fail,
}

impl Verdict {
    /// `pass`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    /// One line: what was checked, or what is wrong and what to do.
    pub detail: String,
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    pub checks: Vec<Check>,
}

impl Checks {
    /// Record a check; the detail is folded onto one line, whatever the error text looks like.
    pub fn add(&mut self, name: impl Into<String>, verdict: Verdict, detail: impl Into<String>) {
        let detail = detail
            .into()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        self.checks.push(Check {
            name: name.into(),
            verdict,
            detail,
        });
    }

    pub fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Verdict::Pass, detail);
    }

    pub fn warn(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Verdict::Warn, detail);
    }

    pub fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Verdict::Fail, detail);
    }

    /// True if any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }
}

/// The probe object of one `doctor` run.
pub(crate) struct Probe {
    pub key: ObjectKey,
    body: Bytes,
}

impl Probe {
    fn new() -> Probe {
        let name = format!("guardian-doctor-{}", crate::durable::random_hex(4));
        Probe {
            key: ObjectKey::new(name).expect("probe names are valid keys"),
            body: Bytes::from(format!(
                "guardian doctor probe {}\n",
                Utc::now().to_rfc3339()
            )),
        }
    }

    /// A second key for a probe of this run (`{probe}-{suffix}`).
    pub fn sibling(&self, suffix: &str) -> ObjectKey {
        ObjectKey::new(format!("{}-{suffix}", self.key)).expect("probe names are valid keys")
    }
}

/// The probes every store runs: write, read, list, conditional write, delete of a probe object.
/// Returns false if the store cannot even be written (later probes would only repeat that).
pub(crate) async fn objects<S: Storage + ?Sized>(store: &S, r: &mut Checks) -> bool {
    let Some(probe) = write_read_list(store, r).await else {
        return false;
    };
    if create_if_absent(store, &probe, r).await {
        let outcome = match store
            .put_bytes(
                &probe.key,
                Bytes::from_static(OTHER_BODY),
                PutMode::IfAbsent,
            )
            .await
        {
            Err(StorageError::AlreadyExists { .. }) => Conditional::Refused,
            Ok(()) => Conditional::Overwrote,
            Err(e) => Conditional::Failed(chain(&e)),
        };
        report_conditional(r, outcome, false);
    }
    delete(store, &probe, r).await;
    true
}

/// A body that differs from the probe's, for the overwrite test.
pub(crate) const OTHER_BODY: &[u8] = b"a different body\n";

/// Put the probe object, read it back, find it in a listing. `None` if it could not be written.
pub(crate) async fn write_read_list<S: Storage + ?Sized>(
    store: &S,
    r: &mut Checks,
) -> Option<Probe> {
    let probe = Probe::new();
    let (key, body) = (&probe.key, &probe.body);
    let loc = store.location();
    if let Err(e) = store.put_bytes(key, body.clone(), PutMode::Overwrite).await {
        r.fail("write", chain(&e));
        return None;
    }
    r.pass("write", format!("put {key} ({} B) in {loc}", body.len()));

    match store.get_bytes(key, 1 << 20).await {
        Ok(b) if b == *body => r.pass("read", format!("got {key} back unchanged")),
        Ok(b) => r.fail(
            "read",
            format!(
                "got {} B back for {key}, not the {} B written",
                b.len(),
                body.len()
            ),
        ),
        Err(e) => r.fail("read", chain(&e)),
    }

    match store.list(key.as_str()).await {
        Ok(list) if list.iter().any(|m| m.key == *key) => {
            r.pass("list", format!("{key} is listed"))
        }
        Ok(_) => r.fail("list", format!("{key} was written but is not listed")),
        Err(e) => r.fail("list", chain(&e)),
    }
    Some(probe)
}

/// The name of the conditional-write check.
pub(crate) const CONDITIONAL: &str = "conditional writes";

/// Does a create-if-absent write of a new key work (every manifest is written so)? Returns
/// false, with a failed check, if it does not.
pub(crate) async fn create_if_absent<S: Storage + ?Sized>(
    store: &S,
    probe: &Probe,
    r: &mut Checks,
) -> bool {
    let fresh = probe.sibling("new");
    match store
        .put_bytes(&fresh, Bytes::from_static(b"1"), PutMode::IfAbsent)
        .await
    {
        Ok(()) => {
            let _ = store.delete(&fresh).await;
            true
        }
        Err(e) => {
            r.fail(
                CONDITIONAL,
                format!(
                    "a create-if-absent PUT (used for every manifest) failed: {}",
                    chain(&e)
                ),
            );
            false
        }
    }
}

/// What a server did with a conditional PUT on an existing key.
pub(crate) enum Conditional {
    Refused,
    Overwrote,
    Unsupported,
    Failed(String),
}

/// Report what a second create-if-absent write of an existing key did; `on_s3`: the server
/// itself was asked with `If-None-Match: *`.
pub(crate) fn report_conditional(r: &mut Checks, outcome: Conditional, on_s3: bool) {
    match outcome {
        Conditional::Refused if on_s3 => {
            r.pass(
                CONDITIONAL,
                "a second PUT with If-None-Match: * was refused (412)",
            );
        }
        Conditional::Refused => r.pass(CONDITIONAL, "a second create-if-absent write was refused"),
        Conditional::Overwrote => r.warn(
            CONDITIONAL,
            "the server ignored If-None-Match: * and overwrote an existing object (Garage does); \
             guardian stays safe (every snapshot key is new), but two guardians racing on one \
             snapshot id would not be detected",
        ),
        Conditional::Unsupported => r.warn(
            CONDITIONAL,
            "the server refuses If-None-Match: * (501 NotImplemented); guardian checks that a \
             manifest's key is free before writing it, which is not atomic against a second \
             guardian racing on the same snapshot id",
        ),
        Conditional::Failed(e) => r.fail(CONDITIONAL, e),
    }
}

/// Delete the probe object and check that it is gone.
pub(crate) async fn delete<S: Storage + ?Sized>(store: &S, probe: &Probe, r: &mut Checks) {
    let key = &probe.key;
    match store.delete(key).await {
        Ok(()) => match store.get_bytes(key, 1 << 20).await {
            Err(e) if e.is_not_found() => r.pass("delete", format!("deleted {key}; it is gone")),
            Ok(_) => r.fail(
                "delete",
                format!("{key} is still there after a successful delete"),
            ),
            Err(e) => r.fail("delete", chain(&e)),
        },
        Err(e) => r.fail("delete", chain(&e)),
    }
}
