//! What every command and the service work with: the loaded config, the opened store and the
//! encryption keys. Built once by `main` (or a test) and handed down; the job runner
//! (`jobs.rs`) adds the notifier and, in the service, the metrics.

use std::sync::Arc;

use crate::config::Config;
use crate::crypto::Keys;
use crate::error::Result;
use crate::storage::{self, Storage};

/// The loaded config and opened store every command works with.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Storage>,
    /// Encryption keys from `[encryption]` (empty when snapshots are not encrypted).
    pub keys: Keys,
}

impl App {
    /// Load the keys and open the store `config` names.
    ///
    /// # Errors
    /// When a key file cannot be read or the store cannot be opened.
    pub async fn open(config: Config) -> Result<App> {
        let keys = Keys::load(config.encryption.as_ref())?;
        let store = storage::open(&config.storage).await?;
        Ok(App {
            config,
            store,
            keys,
        })
    }
}
