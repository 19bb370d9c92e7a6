//! The storage contract suite (litestream's `RunWithReplicaClient`): one async fn per behaviour
//! every store must have, run against the local store, the in-process S3 server, and the
//! external S3 server when `GUARDIAN_TEST_S3_ENDPOINT` is set. S3-only checks are in
//! `s3_storage.rs`.

use std::sync::Arc;

use bytes::Bytes;
use guardian::storage::local::LocalStorage;
use guardian::storage::{body_channel, ObjectKey, PutMode, Storage, StorageError, CHUNK_SIZE};
use sha2::{Digest, Sha256};

use crate::s3_server::{external, unique_prefix, S3Server, S3Target};

/// A store under test, with whatever keeps it alive.
pub struct Backend {
    pub store: Arc<dyn Storage>,
    /// The S3 server and prefix behind `store`, for S3 stores.
    pub s3: Option<(S3Target, String)>,
    _keep: Box<dyn std::any::Any + Send>,
}

fn local() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    Some(Backend {
        store: Arc::new(LocalStorage::new(dir.path().join("store"))),
        s3: None,
        _keep: Box::new(dir),
    })
}

async fn in_process(test: &str) -> Option<Backend> {
    let server = S3Server::start();
    let prefix = unique_prefix(test);
    let store = server.target.store(&prefix, None).await;
    Some(Backend {
        store: Arc::new(store),
        s3: Some((server.target.clone(), prefix)),
        _keep: Box::new(server),
    })
}

async fn external_s3(test: &str) -> Option<Backend> {
    let target = external()?;
    let prefix = unique_prefix(test);
    let store = target.store(&prefix, None).await;
    Some(Backend {
        store: Arc::new(store),
        s3: Some((target, prefix)),
        _keep: Box::new(()),
    })
}

pub fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), incompressible like a gzip stream.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Send `data` as a body in CHUNK_SIZE chunks, optionally failing after `fail_after` bytes.
pub async fn put_chunks(
    store: &Arc<dyn Storage>,
    k: &ObjectKey,
    data: Vec<u8>,
    fail_after: Option<usize>,
) -> Result<u64, StorageError> {
    let (tx, rx) = body_channel();
    let hint = Some(data.len() as u64);
    let producer = tokio::spawn(async move {
        let mut sent = 0;
        for chunk in data.chunks(CHUNK_SIZE) {
            if fail_after.is_some_and(|n| sent >= n) {
                let _ = tx.send(Err(std::io::Error::other("producer failed"))).await;
                return;
            }
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
    });
    let result = store.put_stream(k, rx, hint).await;
    producer.await.unwrap();
    result
}

/// Read a whole object through `get_stream`.
pub async fn read_stream(store: &Arc<dyn Storage>, k: &ObjectKey) -> Vec<u8> {
    let mut body = store.get_stream(k).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = body.recv().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

pub async fn keys(store: &Arc<dyn Storage>, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key.to_string())
        .collect()
}

/// The behaviours every store must have.
mod contract {
    use super::*;

    pub async fn round_trip_stream_and_bytes(b: Backend) {
        let data = noise(3 * CHUNK_SIZE + 123, 1);
        let k = key("db/20261124T030000Z-a1b2c3d4/db.sqlite.gz");
        let n = put_chunks(&b.store, &k, data.clone(), None).await.unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(read_stream(&b.store, &k).await, data);
        assert_eq!(b.store.get_bytes(&k, 1 << 30).await.unwrap(), data);

        let m = key("db/20261124T030000Z-a1b2c3d4/manifest.json");
        b.store
            .put_bytes(&m, Bytes::from_static(b"{\"x\":1}"), PutMode::IfAbsent)
            .await
            .unwrap();
        assert_eq!(&b.store.get_bytes(&m, 100).await.unwrap()[..], b"{\"x\":1}");
        assert_eq!(read_stream(&b.store, &m).await, b"{\"x\":1}");

        // An empty object is an object.
        let e = key("db/empty");
        assert_eq!(put_chunks(&b.store, &e, Vec::new(), None).await.unwrap(), 0);
        assert!(b.store.get_bytes(&e, 10).await.unwrap().is_empty());
        // Streamed too (on S3 it has no byte 0 to ask a range for).
        assert!(read_stream(&b.store, &e).await.is_empty());
        // Exactly one range long, and one byte more (on S3 streams come in 4 MiB ranges).
        for len in [4 << 20, (4 << 20) + 1] {
            let r = key(&format!("db/range-{len}"));
            let data = noise(len, 4);
            put_chunks(&b.store, &r, data.clone(), None).await.unwrap();
            assert!(read_stream(&b.store, &r).await == data, "{len} bytes");
        }
    }

    pub async fn missing_key_is_not_found(b: Backend) {
        let k = key("db/nothing/here");
        let e = b.store.get_stream(&k).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let e = b.store.get_bytes(&k, 100).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().contains("db/nothing/here"), "{e}");
    }

    pub async fn get_bytes_refuses_objects_over_the_limit(b: Backend) {
        let k = key("db/big");
        b.store
            .put_bytes(&k, Bytes::from(vec![7u8; 1000]), PutMode::Overwrite)
            .await
            .unwrap();
        let e = b.store.get_bytes(&k, 999).await.unwrap_err();
        assert!(
            matches!(e, StorageError::TooLarge { limit: 999, .. }),
            "{e}"
        );
        assert_eq!(b.store.get_bytes(&k, 1000).await.unwrap().len(), 1000);
    }

    pub async fn list_is_sorted_and_filtered_by_prefix(b: Backend) {
        for (k, len) in [
            ("a/2", 2),
            ("a/10", 10),
            ("ab/x", 1),
            ("a/1", 1),
            ("b/y", 5),
            ("a/sub/z", 3),
        ] {
            b.store
                .put_bytes(&key(k), Bytes::from(vec![b'x'; len]), PutMode::Overwrite)
                .await
                .unwrap();
        }
        assert_eq!(
            keys(&b.store, "a/").await,
            ["a/1", "a/10", "a/2", "a/sub/z"]
        );
        assert_eq!(
            keys(&b.store, "a").await,
            ["a/1", "a/10", "a/2", "a/sub/z", "ab/x"]
        );
        assert_eq!(keys(&b.store, "").await.len(), 6);
        assert!(keys(&b.store, "zzz/").await.is_empty());
        let metas = b.store.list("a/1").await.unwrap();
        let sizes: Vec<u64> = metas.iter().map(|m| m.size).collect();
        assert_eq!(sizes, [1, 10], "{metas:?}");
        assert!(metas.iter().all(|m| m.modified.is_some()), "{metas:?}");
    }

    pub async fn listing_paginates_past_1000_keys(b: Backend) {
        const N: usize = 1005;
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let store = Arc::clone(&b.store);
            let sem = Arc::clone(&sem);
            tasks.spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let k = key(&format!("many/{i:05}"));
                store
                    .put_bytes(&k, Bytes::from_static(b"."), PutMode::Overwrite)
                    .await
                    .unwrap();
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let listed = keys(&b.store, "many/").await;
        assert_eq!(listed.len(), N);
        let expected: Vec<String> = (0..N).map(|i| format!("many/{i:05}")).collect();
        assert_eq!(listed, expected);
    }

    pub async fn delete_is_idempotent(b: Backend) {
        let k = key("db/x/manifest.json");
        b.store
            .put_bytes(&k, Bytes::from_static(b"1"), PutMode::Overwrite)
            .await
            .unwrap();
        b.store.delete(&k).await.unwrap();
        b.store.delete(&k).await.unwrap();
        b.store.delete(&key("db/never/existed")).await.unwrap();
        assert!(b.store.get_bytes(&k, 10).await.unwrap_err().is_not_found());
        assert!(keys(&b.store, "db/").await.is_empty());
    }

    pub async fn large_object_round_trips(b: Backend) {
        // Three parts of 8 MiB, 8 MiB and the rest on S3.
        let data = noise(20 * 1024 * 1024 + 12_345, 2);
        let want = Sha256::digest(&data);
        let k = key("db/20261124T030000Z-00000001/db.sqlite.gz");
        let n = put_chunks(&b.store, &k, data, None).await.unwrap();
        assert_eq!(n, 20 * 1024 * 1024 + 12_345);
        let got = read_stream(&b.store, &k).await;
        assert_eq!(Sha256::digest(&got), want);
        assert_eq!(b.store.list("db/").await.unwrap()[0].size, n);
    }

    pub async fn aborted_stream_stores_nothing(b: Backend) {
        // Small (one request) and large (multipart, a part already sent).
        for (name, len, fail_after) in [
            ("small", 1000, 0),
            ("large", 12 * 1024 * 1024, 10 * 1024 * 1024),
        ] {
            let k = key(&format!("db/{name}/db.sqlite.gz"));
            let e = put_chunks(&b.store, &k, noise(len, 3), Some(fail_after))
                .await
                .unwrap_err();
            assert!(matches!(e, StorageError::Aborted { .. }), "{name}: {e}");
            assert!(e.to_string().contains("producer failed"), "{e}");
            assert!(
                b.store
                    .get_bytes(&k, 1 << 30)
                    .await
                    .unwrap_err()
                    .is_not_found(),
                "{name}"
            );
        }
        assert!(keys(&b.store, "").await.is_empty());
    }

    pub async fn if_absent_refuses_to_overwrite(b: Backend) {
        let honoured = b.s3.as_ref().is_none_or(|(t, _)| t.if_none_match);
        let k = key("db/20261124T030000Z-a1b2c3d4/manifest.json");
        b.store
            .put_bytes(&k, Bytes::from_static(b"first"), PutMode::IfAbsent)
            .await
            .unwrap();
        let second = b
            .store
            .put_bytes(&k, Bytes::from_static(b"second"), PutMode::IfAbsent)
            .await;
        let stored = b.store.get_bytes(&k, 100).await.unwrap();
        if honoured {
            let e = second.unwrap_err();
            assert!(matches!(e, StorageError::AlreadyExists { .. }), "{e}");
            assert_eq!(&stored[..], b"first");
        } else {
            // Garage ignores If-None-Match and overwrites; `doctor` reports it, and guardian
            // never writes a key twice (ids are unique).
            second.unwrap();
            assert_eq!(&stored[..], b"second");
        }
        b.store
            .put_bytes(&k, Bytes::from_static(b"third"), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(&b.store.get_bytes(&k, 100).await.unwrap()[..], b"third");
    }

    pub async fn sweep_keeps_complete_objects(b: Backend) {
        let k = key("db/x/db.sqlite.gz");
        put_chunks(&b.store, &k, noise(100, 4), None).await.unwrap();
        b.store.sweep("db/").await.unwrap();
        assert_eq!(keys(&b.store, "").await, ["db/x/db.sqlite.gz"]);
    }
}

/// One test per contract behaviour for a backend.
macro_rules! contract_tests {
    ($module:ident, $make:ident) => {
        mod $module {
            use super::*;
            contract_tests!(@each $make;
                round_trip_stream_and_bytes,
                missing_key_is_not_found,
                get_bytes_refuses_objects_over_the_limit,
                list_is_sorted_and_filtered_by_prefix,
                listing_paginates_past_1000_keys,
                delete_is_idempotent,
                large_object_round_trips,
                aborted_stream_stores_nothing,
                if_absent_refuses_to_overwrite,
                sweep_keeps_complete_objects
            );
        }
    };
    (@each $make:ident; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(b) = $make(stringify!($name)).await {
                    contract::$name(b).await;
                }
            }
        )*
    };
}

async fn local_backend(_test: &str) -> Option<Backend> {
    local()
}

contract_tests!(local_store, local_backend);
contract_tests!(in_process_s3, in_process);
contract_tests!(external_s3_server, external_s3);
