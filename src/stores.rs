//! Several stores: what each of a database's stores holds, merged per snapshot.
//!
//! Every store is read on its own ([`catalog::load`]); one that cannot be read (down,
//! misconfigured, no permission) keeps its error and never fails the others. A snapshot has
//! the same id and manifest in every store that took it, so the merged view lines the stores
//! up by id: per snapshot, per store, the copy is present, damaged (its catalog entry is
//! `failed`), missing, or unknown because the store could not be read.
//!
//! Readers (`list`, `restore`, `restore --table`, `diff`, `drill`) pick a snapshot over the
//! merged view ([`Merged::combined`]: one entry per snapshot, its best copy), then read it from
//! the stores that hold a copy, in config order ([`Merged::holders`]), falling back to the next
//! store's copy when one fails its checks or its store cannot be reached.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::catalog::{self, Catalog, SnapshotEntry, SnapshotStatus};
use crate::error::{Error, Result};
use crate::storage::NamedStore;

/// One store's catalog of a database, or why it could not be read.
#[derive(Debug)]
pub struct StoreCatalog {
    pub store: NamedStore,
    pub catalog: Result<Catalog>,
}

/// What one store holds of one snapshot.
#[derive(Debug, Clone, Copy)]
pub enum Copy<'a> {
    /// A copy whose manifest and objects passed the catalog's checks (not `failed`).
    Present(&'a SnapshotEntry),
    /// A copy the catalog found `failed` (manifest unreadable, object missing, failed drill).
    Damaged(&'a SnapshotEntry),
    /// The store holds no manifest of this snapshot.
    Missing,
    /// The store could not be read: nothing is known.
    Unreadable(&'a Error),
}

impl Copy<'_> {
    /// `present`, `damaged`, `missing` or `unreadable` (`list --json`'s `stores`).
    pub fn word(&self) -> &'static str {
        match self {
            Copy::Present(_) => "present",
            Copy::Damaged(_) => "damaged",
            Copy::Missing => "missing",
            Copy::Unreadable(_) => "unreadable",
        }
    }
}

/// One snapshot id across the stores.
#[derive(Debug, Clone)]
pub struct MergedSnapshot {
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// Per store (config order): the index of its entry in that store's catalog.
    slots: Vec<Option<usize>>,
}

/// A database's snapshots across its stores, newest first.
#[derive(Debug)]
pub struct Merged {
    pub db: String,
    /// Every store asked, in config order.
    pub stores: Vec<StoreCatalog>,
    pub snapshots: Vec<MergedSnapshot>,
}

impl Merged {
    /// Read the catalog of `db` in every one of `stores` (concurrently) and line them up.
    pub async fn load(stores: &[NamedStore], db: &str) -> Merged {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, s) in stores.iter().enumerate() {
            let (store, db) = (std::sync::Arc::clone(&s.store), db.to_string());
            tasks.spawn(async move { (i, catalog::load(&store, &db).await) });
        }
        let mut loaded: Vec<Option<Result<Catalog>>> = (0..stores.len()).map(|_| None).collect();
        for (i, c) in tasks.join_all().await {
            loaded[i] = Some(c);
        }
        let stores: Vec<StoreCatalog> = stores
            .iter()
            .zip(loaded)
            .map(|(s, c)| StoreCatalog {
                store: s.clone(),
                catalog: c.expect("every task reported"),
            })
            .collect();
        Merged::from_catalogs(db, stores)
    }

    /// Line up catalogs already read (config order).
    pub fn from_catalogs(db: &str, stores: Vec<StoreCatalog>) -> Merged {
        let mut by_id: BTreeMap<String, MergedSnapshot> = BTreeMap::new();
        for (i, sc) in stores.iter().enumerate() {
            let Ok(c) = &sc.catalog else { continue };
            for (j, e) in c.snapshots.iter().enumerate() {
                let m = by_id
                    .entry(e.key.id.to_string())
                    .or_insert_with(|| MergedSnapshot {
                        id: e.key.id.to_string(),
                        created_at: e.created_at,
                        slots: vec![None; stores.len()],
                    });
                m.slots[i] = Some(j);
            }
        }
        let mut snapshots: Vec<MergedSnapshot> = by_id.into_values().collect();
        for s in &mut snapshots {
            // The time of its best copy (a damaged manifest falls back to the id's time).
            s.created_at = best_of(&stores, s).created_at;
        }
        snapshots.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Merged {
            db: db.to_string(),
            stores,
            snapshots,
        }
    }

    /// The stores that could not be read, with their errors (config order).
    pub fn unreadable(&self) -> Vec<(&NamedStore, &Error)> {
        self.stores
            .iter()
            .filter_map(|s| s.catalog.as_ref().err().map(|e| (&s.store, e)))
            .collect()
    }

    /// `self`, unless no store could be read: then the first store's error (with one store,
    /// exactly what a single-store command said).
    ///
    /// # Errors
    /// When every store failed to be read.
    pub fn require_readable(mut self) -> Result<Merged> {
        if self.stores.iter().any(|s| s.catalog.is_ok()) || self.stores.is_empty() {
            return Ok(self);
        }
        let several = self.stores.len() > 1;
        let first = self.stores.swap_remove(0);
        let e = first.catalog.expect_err("no store was readable");
        Err(if several {
            Error::InStore {
                store: first.store.name,
                source: Box::new(e),
            }
        } else {
            e
        })
    }

    /// What each store holds of `s`, in config order.
    pub fn copies<'a>(&'a self, s: &MergedSnapshot) -> Vec<(&'a NamedStore, Copy<'a>)> {
        self.stores
            .iter()
            .zip(&s.slots)
            .map(|(sc, slot)| {
                let copy = match (&sc.catalog, slot) {
                    (Err(e), _) => Copy::Unreadable(e),
                    (Ok(_), None) => Copy::Missing,
                    (Ok(c), Some(j)) => {
                        let e = &c.snapshots[*j];
                        if e.status == SnapshotStatus::Failed || self.differs(s, e) {
                            Copy::Damaged(e)
                        } else {
                            Copy::Present(e)
                        }
                    }
                };
                (&sc.store, copy)
            })
            .collect()
    }

    /// Whether copy `e` of `s` has another manifest than the copy that stands for `s` (its
    /// best one). One backup writes the same manifest to every store and `sync` copies it
    /// as it is, so two manifests for one id mean one copy was changed or damaged: that copy
    /// is not used for `s` (it is damaged, whatever its own checks say).
    pub fn differs(&self, s: &MergedSnapshot, e: &SnapshotEntry) -> bool {
        match (&self.best(s).manifest, &e.manifest) {
            (Some(best), Some(own)) => best != own,
            _ => false,
        }
    }

    /// The entry that stands for `s`: its best copy (verified over unverified over failed),
    /// the first in config order on ties.
    pub fn best(&self, s: &MergedSnapshot) -> &SnapshotEntry {
        best_of(&self.stores, s)
    }

    /// One catalog with one entry per snapshot (its best copy), for choosing a snapshot as a
    /// single store would; then [`Merged::holders`] says where to read it.
    pub fn combined(&self) -> Catalog {
        Catalog {
            db: self.db.clone(),
            snapshots: self
                .snapshots
                .iter()
                .map(|s| self.best(s).clone())
                .collect(),
            orphans: Vec::new(),
            stored_bytes: 0,
        }
    }

    /// The stores holding a copy of snapshot `id` and their entries, in the order to read
    /// them: the good copies in config order, then (unless `good_only`) the damaged ones.
    pub fn holders(&self, id: &str, good_only: bool) -> Vec<(NamedStore, SnapshotEntry)> {
        let Some(s) = self.snapshots.iter().find(|s| s.id == id) else {
            return Vec::new();
        };
        let copies = self.copies(s);
        let good = copies.iter().filter_map(|(st, c)| match c {
            Copy::Present(e) => Some(((*st).clone(), (*e).clone())),
            _ => None,
        });
        let damaged = copies.iter().filter_map(|(st, c)| match c {
            Copy::Damaged(e) if !good_only => Some(((*st).clone(), (*e).clone())),
            _ => None,
        });
        good.chain(damaged).collect()
    }

    /// The stores of `s` in a short form: `near,far(missing)` (each store's name, with the
    /// state of its copy when it is not present).
    pub fn short(&self, s: &MergedSnapshot) -> String {
        self.copies(s)
            .iter()
            .map(|(st, c)| match c {
                Copy::Present(_) => st.name.clone(),
                other => format!("{}({})", st.name, other.word()),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `{"near": "present", "far": "missing"}` for `list --json`.
    pub fn json(&self, s: &MergedSnapshot) -> serde_json::Value {
        self.copies(s)
            .iter()
            .map(|(st, c)| (st.name.clone(), serde_json::Value::from(c.word())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

fn best_of<'a>(stores: &'a [StoreCatalog], s: &MergedSnapshot) -> &'a SnapshotEntry {
    let rank = |e: &SnapshotEntry| match e.status {
        SnapshotStatus::Verified => 0,
        SnapshotStatus::Unverified => 1,
        SnapshotStatus::Failed => 2,
    };
    stores
        .iter()
        .zip(&s.slots)
        .filter_map(|(sc, slot)| {
            let c = sc.catalog.as_ref().ok()?;
            Some(&c.snapshots[(*slot)?])
        })
        .min_by_key(|e| rank(e))
        .expect("a merged snapshot has a copy")
}

/// Names of stores, for messages: `near, far`.
pub fn names(stores: &[NamedStore]) -> String {
    stores
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{SnapshotId, SnapshotKey};

    fn entry(id: &str, status: SnapshotStatus) -> SnapshotEntry {
        let id: SnapshotId = id.parse().unwrap();
        SnapshotEntry {
            created_at: id.time(),
            key: SnapshotKey {
                db: "market".into(),
                id,
            },
            manifest: None,
            data_size: None,
            last_drill: None,
            status,
            problem: None,
            skewed: false,
            proof: None,
            ignored_records: Vec::new(),
            marked_at: None,
        }
    }

    fn store(name: &str) -> NamedStore {
        NamedStore {
            name: name.into(),
            store: std::sync::Arc::new(crate::storage::local::LocalStorage::new(format!(
                "/nonexistent/{name}"
            ))),
        }
    }

    fn catalog(entries: Vec<SnapshotEntry>) -> Result<Catalog> {
        Ok(Catalog {
            db: "market".into(),
            snapshots: entries,
            orphans: Vec::new(),
            stored_bytes: 0,
        })
    }

    const OLD: &str = "20261123T030000Z-00000001";
    const NEW: &str = "20261124T030000Z-00000002";

    fn merged() -> Merged {
        use SnapshotStatus::*;
        Merged::from_catalogs(
            "market",
            vec![
                StoreCatalog {
                    store: store("near"),
                    catalog: catalog(vec![entry(NEW, Failed), entry(OLD, Unverified)]),
                },
                StoreCatalog {
                    store: store("far"),
                    catalog: catalog(vec![entry(NEW, Verified)]),
                },
                StoreCatalog {
                    store: store("down"),
                    catalog: Err(Error::Gone("connection refused".into())),
                },
            ],
        )
    }

    #[test]
    fn each_snapshot_says_what_every_store_holds_newest_first() {
        let m = merged();
        let ids: Vec<&str> = m.snapshots.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, [NEW, OLD]);
        assert_eq!(
            m.short(&m.snapshots[0]),
            "near(damaged),far,down(unreadable)"
        );
        assert_eq!(
            m.short(&m.snapshots[1]),
            "near,far(missing),down(unreadable)"
        );
        assert_eq!(
            m.json(&m.snapshots[1]),
            serde_json::json!({"near": "present", "far": "missing", "down": "unreadable"})
        );
        assert_eq!(m.unreadable().len(), 1);
    }

    #[test]
    fn the_best_copy_stands_for_a_snapshot_and_good_copies_are_read_first() {
        let m = merged();
        // far's verified copy stands for NEW, though near comes first in config order.
        assert_eq!(m.best(&m.snapshots[0]).status, SnapshotStatus::Verified);
        let c = m.combined();
        assert_eq!(c.usable().count(), 2);
        let good: Vec<String> = m
            .holders(NEW, true)
            .into_iter()
            .map(|(s, _)| s.name)
            .collect();
        assert_eq!(good, ["far"]);
        let all: Vec<String> = m
            .holders(NEW, false)
            .into_iter()
            .map(|(s, _)| s.name)
            .collect();
        assert_eq!(all, ["far", "near"]);
        assert!(m.holders("20261125T030000Z-00000003", false).is_empty());
    }

    #[test]
    fn no_readable_store_is_the_first_stores_error() {
        let down = |name: &str| StoreCatalog {
            store: store(name),
            catalog: Err(Error::Gone(format!("{name} is down"))),
        };
        let e = Merged::from_catalogs("market", vec![down("a"), down("b")])
            .require_readable()
            .unwrap_err();
        assert_eq!(crate::error::chain(&e), "store a: a is down");
        // With one store, exactly its error.
        let e = Merged::from_catalogs("market", vec![down("a")])
            .require_readable()
            .unwrap_err();
        assert_eq!(crate::error::chain(&e), "a is down");
        assert!(merged().require_readable().is_ok());
    }
}
