//! What every command and the service work with: the loaded config, the opened stores and the
//! encryption keys. Built once by `main` (or a test) and handed down; the job runner
//! (`jobs.rs`) adds the notifier and, in the service, the metrics.

use crate::config::{Config, DatabaseConfig, StoreConfig};
use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::storage;
pub use crate::storage::NamedStore as Store;

/// The loaded config and opened stores every command works with.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Config,
    /// Every configured store, in config order. Opening one makes no request: a store that
    /// cannot be reached fails the operations that use it, not the others.
    pub stores: Vec<Store>,
    /// Encryption keys from `[encryption]` (empty when snapshots are not encrypted).
    pub keys: Keys,
}

impl App {
    /// Load the keys and open the stores `config` names.
    ///
    /// # Errors
    /// When a key file cannot be read or a store cannot be opened.
    pub async fn open(config: Config) -> Result<App> {
        let keys = Keys::load(config.encryption.as_ref())?;
        let mut stores = Vec::with_capacity(config.stores.len());
        for StoreConfig { name, storage } in &config.stores {
            stores.push(Store {
                name: name.clone(),
                store: storage::open(storage).await?,
            });
        }
        Ok(App {
            config,
            stores,
            keys,
        })
    }

    /// The stores `db` is backed up to, in config order (its `stores`, else every store).
    pub fn stores_of(&self, db: &DatabaseConfig) -> Vec<Store> {
        let names: Vec<&str> = self
            .config
            .stores_of(db)
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        self.stores
            .iter()
            .filter(|s| names.contains(&s.name.as_str()))
            .cloned()
            .collect()
    }

    /// `db`'s stores, or only the one `--store` names.
    ///
    /// # Errors
    /// A usage error when no store of `db` has that name.
    pub fn select_stores(&self, db: &DatabaseConfig, name: Option<&str>) -> Result<Vec<Store>> {
        let all = self.stores_of(db);
        let Some(name) = name else { return Ok(all) };
        match all.iter().find(|s| s.name == name) {
            Some(s) => Ok(vec![s.clone()]),
            None => Err(Error::Usage(format!(
                "no store named {name:?} for database {:?} (its stores: {}); see [[stores]] and databases[].stores in the config",
                db.name,
                all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}
