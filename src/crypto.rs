//! Optional client-side encryption of snapshots with age (<https://age-encryption.org>).
//!
//! With `[encryption] recipients` set, every stored object is `age(gzip(database))`: nothing
//! unencrypted leaves the machine. Restores and drills decrypt with the identities in
//! `identity_file`; a snapshot that is encrypted to nobody we hold a key for fails closed with
//! a clear error, and a tampered ciphertext fails age's authenticated STREAM check. By hand:
//! `age -d -i key.txt db.sqlite.gz.age | gunzip > db.sqlite`.
//!
//! This module owns key loading; the streaming itself lives in `archive`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::config::EncryptionConfig;
use crate::error::{Error, Result};

/// The keys guardian holds: recipients to encrypt to, identities to decrypt with.
#[derive(Clone, Default)]
pub struct Keys {
    pub recipients: Arc<Vec<age::x25519::Recipient>>,
    pub identities: Arc<Vec<age::x25519::Identity>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Keys")
            .field("recipients", &self.recipients.len())
            .field("identities", &self.identities.len())
            .finish()
    }
}

impl Keys {
    /// Load the keys a config names (none when `[encryption]` is absent).
    pub fn load(cfg: Option<&EncryptionConfig>) -> Result<Keys> {
        let Some(cfg) = cfg else {
            return Ok(Keys::default());
        };
        let mut recipients = Vec::new();
        for (i, r) in cfg.recipients.iter().enumerate() {
            let rec = age::x25519::Recipient::from_str(r).map_err(|e| {
                Error::Config(format!(
                    "encryption.recipients[{i}]: not an age recipient (age1...): {e}"
                ))
            })?;
            recipients.push(rec);
        }
        let identities = match &cfg.identity_file {
            Some(path) => read_identities(path)?,
            None => Vec::new(),
        };
        if recipients.is_empty() {
            // An identity alone: encrypt to its own public key.
            recipients = identities.iter().map(|i| i.to_public()).collect();
        }
        Ok(Keys {
            recipients: Arc::new(recipients),
            identities: Arc::new(identities),
        })
    }

    /// True when new snapshots are encrypted.
    pub fn encrypts(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// The SHA-256 of the recipients (sorted, one per line) new snapshots are encrypted to;
    /// `None` when they are not encrypted. Recorded in manifests, so that an incremental is
    /// never encrypted to other recipients than the objects it is built on.
    pub fn recipients_sha256(&self) -> Option<crate::manifest::Sha256Hex> {
        use sha2::Digest;
        if !self.encrypts() {
            return None;
        }
        let mut all: Vec<String> = self.recipients.iter().map(ToString::to_string).collect();
        all.sort();
        Some(crate::manifest::Sha256Hex::from_digest(
            &sha2::Sha256::digest(all.join("\n").as_bytes()),
        ))
    }

    /// An age encryptor for one new object.
    pub fn encryptor(&self) -> Option<age::Encryptor> {
        if !self.encrypts() {
            return None;
        }
        let recipients = self.recipients.iter().map(|r| r as &dyn age::Recipient);
        Some(age::Encryptor::with_recipients(recipients).expect("x25519 recipients are compatible"))
    }

    /// The identities to decrypt with, or a clear error when there are none.
    pub fn decryption_identities(&self, what: &str) -> Result<Arc<Vec<age::x25519::Identity>>> {
        if self.identities.is_empty() {
            return Err(Error::Config(format!(
                "{what} is encrypted with age; set encryption.identity_file to the identity (AGE-SECRET-KEY-1...) it was encrypted to"
            )));
        }
        Ok(Arc::clone(&self.identities))
    }
}

/// Read `AGE-SECRET-KEY-1...` lines (comments and blank lines allowed), as age's identity files.
fn read_identities(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io("read encryption.identity_file", path, e))?;
    crate::config::warn_if_readable_by_others(path, "encryption.identity_file");
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The error says where, never what: the line is secret.
        let id = age::x25519::Identity::from_str(line).map_err(|_| {
            Error::Config(format!(
                "encryption.identity_file {}: line {} is not an age identity (AGE-SECRET-KEY-1...)",
                path.display(),
                n + 1
            ))
        })?;
        out.push(id);
    }
    if out.is_empty() {
        return Err(Error::Config(format!(
            "encryption.identity_file {}: no identity in the file",
            path.display()
        )));
    }
    Ok(out)
}
