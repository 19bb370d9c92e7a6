//! LocalStorage: a directory tree, one file per object.
//!
//! Writes go to a dot-named temp file in the destination folder, are fsynced, renamed into place,
//! and the folder is fsynced, so a reader (or a crash) sees the whole object or nothing. Temp
//! files start with a dot, which [`ObjectKey`] never does, so listings never return them.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::config::{InvalidKey, StorageTable};
use super::diagnose::{self, Checks};
use super::{
    body_channel, Body, ObjectKey, ObjectMeta, PutMode, Storage, StorageError, CHUNK_SIZE,
};
use crate::durable::{self, TempGuard};

/// `[storage]` with `kind = "local"`: a folder on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The store's root folder (absolute once the config is loaded).
    pub path: PathBuf,
}

impl LocalConfig {
    /// The keys a local store uses.
    const KEYS: &[&str] = &["path"];

    /// Check the local keys of the table at `at`; keys of other kinds are refused.
    pub(crate) fn from_table(t: &StorageTable, at: &str) -> Result<LocalConfig, InvalidKey> {
        let Some(path) = &t.path else {
            return Err(InvalidKey::new(
                at,
                "path",
                format!("required when {at}.kind = \"local\""),
            ));
        };
        if let Some(key) = t.foreign_key(Self::KEYS) {
            return Err(InvalidKey::new(
                at,
                key,
                format!("only used when {at}.kind = \"s3\"; remove it or set kind = \"s3\""),
            ));
        }
        Ok(LocalConfig { path: path.clone() })
    }
}

/// A store rooted at a local directory (created on first write).
#[derive(Debug, Clone)]
pub struct LocalStorage {
    /// Root folder; every object lives at `root/<key>`.
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStorage { root: root.into() }
    }

    /// The file an object lives in. Safe by construction: keys have no `..` and no leading `/`.
    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(key.components());
        p
    }

    fn io_err(&self, op: &'static str, target: impl ToString, source: io::Error) -> StorageError {
        if source.kind() == io::ErrorKind::NotFound && matches!(op, "read" | "open") {
            return StorageError::NotFound {
                key: target.to_string(),
                location: self.location(),
            };
        }
        StorageError::Io {
            op,
            target: target.to_string(),
            location: self.location(),
            source,
        }
    }

    /// Write a temp file next to `key`'s path with `fill`, fsync it, and publish it.
    fn write_atomic(
        &self,
        key: &ObjectKey,
        mode: PutMode,
        fill: impl FnOnce(&mut File) -> Result<u64, StorageError>,
    ) -> Result<u64, StorageError> {
        let dst = self.path_of(key);
        let dir = durable::parent_dir(&dst).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| self.io_err("create folder for", key, e))?;
        let (mut file, tmp) = durable::create_temp(&dir, key.file_name(), &temp_tag(), 0o600)
            .map_err(|e| self.io_err("create temp file for", key, e))?;
        let guard = TempGuard::new(tmp);
        let n = match fill(&mut file) {
            Ok(n) => n,
            Err(e) => {
                drop(guard);
                self.remove_empty_dirs(&dir);
                return Err(e);
            }
        };
        file.sync_all().map_err(|e| self.io_err("fsync", key, e))?;
        drop(file);
        match mode {
            PutMode::Overwrite => {
                fs::rename(guard.path(), &dst).map_err(|e| self.io_err("rename into", key, e))?
            }
            // link(2) fails if the name exists: an atomic create-if-absent.
            PutMode::IfAbsent => fs::hard_link(guard.path(), &dst).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    StorageError::AlreadyExists {
                        key: key.to_string(),
                        location: self.location(),
                    }
                } else {
                    self.io_err("link into", key, e)
                }
            })?,
        }
        drop(guard); // removes the temp name left after hard_link; a no-op after rename
        durable::sync_dir(&dir).map_err(|e| self.io_err("fsync folder of", key, e))?;
        Ok(n)
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        // Start the walk at the deepest folder the prefix names, so listing one database does not
        // read every other database's folders.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let mut start = self.root.clone();
        for c in dir_part.split('/').filter(|c| !c.is_empty()) {
            if crate::names::validate_component(c).is_err() {
                return Ok(Vec::new());
            }
            start.push(c);
        }
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_err("list", dir.display(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io_err("list", dir.display(), e))?;
                let path = entry.path();
                // symlink_metadata: never follow a link out of the store.
                let meta = match fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(self.io_err("stat", path.display(), e)),
                };
                let Some(key) = self.key_of(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() && key.starts_with(prefix) {
                    match ObjectKey::new(key) {
                        Ok(key) => out.push(ObjectMeta {
                            key,
                            size: meta.len(),
                            modified: meta.modified().ok().map(DateTime::<Utc>::from),
                        }),
                        Err(e) => {
                            tracing::debug!(error = %e, "skipping file that is not an object")
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The key a path under the root stands for, if every component is valid.
    fn key_of(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let parts: Vec<&str> = rel
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<_>>()?;
        if parts
            .iter()
            .any(|p| crate::names::validate_component(p).is_err())
        {
            return None;
        }
        Some(parts.join("/"))
    }
}

#[async_trait::async_trait]
impl Storage for LocalStorage {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        mut body: Body,
        _size_hint: Option<u64>,
    ) -> Result<u64, StorageError> {
        let this = self.clone();
        let key = key.clone();
        spawn_blocking(move || {
            this.write_atomic(&key, PutMode::Overwrite, |file| {
                let mut n = 0u64;
                while let Some(chunk) = body.blocking_recv() {
                    let chunk = chunk.map_err(|e| StorageError::Aborted {
                        key: key.to_string(),
                        location: this.location(),
                        reason: crate::human::chain(&e),
                    })?;
                    file.write_all(&chunk)
                        .map_err(|e| this.io_err("write", &key, e))?;
                    n += chunk.len() as u64;
                }
                Ok(n)
            })
        })
        .await
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let this = self.clone();
        let key = key.clone();
        spawn_blocking(move || {
            this.write_atomic(&key, mode, |file| {
                file.write_all(&bytes)
                    .map_err(|e| this.io_err("write", &key, e))?;
                Ok(bytes.len() as u64)
            })
            .map(|_| ())
        })
        .await
    }

    async fn get_stream(&self, key: &ObjectKey) -> Result<Body, StorageError> {
        let path = self.path_of(key);
        let mut file = File::open(&path).map_err(|e| self.io_err("open", key, e))?;
        let (tx, rx) = body_channel();
        tokio::task::spawn_blocking(move || loop {
            let mut buf = vec![0u8; CHUNK_SIZE];
            match crate::durable::read_full(&mut file, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break; // the reader went away
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn get_bytes(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StorageError> {
        let path = self.path_of(key);
        let file = File::open(&path).map_err(|e| self.io_err("open", key, e))?;
        let mut buf = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.io_err("read", key, e))?;
        if buf.len() as u64 > limit {
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(limit + 1);
            return Err(StorageError::TooLarge {
                key: key.to_string(),
                location: self.location(),
                size,
                limit,
            });
        }
        Ok(Bytes::from(buf))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let this = self.clone();
        let prefix = prefix.to_string();
        spawn_blocking(move || this.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let path = self.path_of(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_err("delete", key, e)),
        }
        let dir = self.remove_empty_dirs(durable::parent_dir(&path));
        durable::sync_dir(&dir).map_err(|e| self.io_err("fsync folder of", key, e))?;
        Ok(())
    }

    async fn diagnose(&self, r: &mut Checks) {
        let root = &self.root;
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => r.pass("folder", format!("{} exists", root.display())),
            Ok(_) => r.fail(
                "folder",
                format!("{} exists but is not a folder", root.display()),
            ),
            Err(_) => r.warn(
                "folder",
                format!("{} does not exist yet; it is created now", root.display()),
            ),
        }
        diagnose::objects(self, r).await;
    }

    async fn sweep(&self, prefix: &str) -> Result<u64, StorageError> {
        let this = self.clone();
        let prefix = prefix.to_string();
        spawn_blocking(move || Ok(this.sweep_blocking(&prefix))).await
    }
}

/// Temp files carry the writer's pid (`.{name}.tmp-{pid}-{random}`), so a sweep can tell a
/// dead writer's leftovers from a live one's. The local store is meant for one host.
fn temp_tag() -> String {
    format!("tmp-{}", std::process::id())
}

impl LocalStorage {
    /// Remove `dir` and its parents while they are empty (a deleted or aborted snapshot leaves
    /// no trace), never the root. Returns the first folder that remains.
    fn remove_empty_dirs(&self, dir: &Path) -> PathBuf {
        let mut dir = dir.to_path_buf();
        while dir != self.root && dir.starts_with(&self.root) {
            if fs::remove_dir(&dir).is_err() {
                break;
            }
            dir = durable::parent_dir(&dir).to_path_buf();
        }
        dir
    }

    fn sweep_blocking(&self, prefix: &str) -> u64 {
        let mut start = self.root.clone();
        start.extend(
            prefix
                .split('/')
                .filter(|c| !c.is_empty() && crate::names::validate_component(c).is_ok()),
        );
        let mut removed = 0;
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix('.'))
                    .and_then(|n| n.split_once(".tmp-"))
                    .and_then(|(_, rest)| rest.split('-').next())
                    .and_then(|p| p.parse::<i32>().ok())
                else {
                    continue;
                };
                if !crate::durable::pid_alive(pid) && fs::remove_file(&path).is_ok() {
                    tracing::info!(path = %path.display(), "removed temp file of an interrupted upload");
                    removed += 1;
                }
            }
        }
        removed
    }
}

async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("storage worker does not panic")
}
