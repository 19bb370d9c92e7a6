//! The storage contract suite (litestream's `RunWithReplicaClient`): one async fn per behaviour
//! every store must have, run against the local store, the in-process S3 server, and the
//! external S3 server when `GUARDIAN_TEST_S3_ENDPOINT` is set. Then S3-only checks: what goes
//! on the wire (Content-MD5, equal parts, no batch deletes), faults, and error messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use guardian::storage::local::LocalStorage;
use guardian::storage::s3::S3Options;
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
    let Some(target) = external() else {
        eprintln!("skipped: GUARDIAN_TEST_S3_ENDPOINT is not set (see tests/README.md)");
        return None;
    };
    let prefix = unique_prefix(test);
    let store = target.store(&prefix, None).await;
    Some(Backend {
        store: Arc::new(store),
        s3: Some((target, prefix)),
        _keep: Box::new(()),
    })
}

fn key(k: &str) -> ObjectKey {
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
async fn put_chunks(
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
async fn read_stream(store: &Arc<dyn Storage>, k: &ObjectKey) -> Vec<u8> {
    let mut body = store.get_stream(k).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = body.recv().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn keys(store: &Arc<dyn Storage>, prefix: &str) -> Vec<String> {
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

/// S3-only behaviours, run against the in-process server and, where they need no fault
/// injection or request log, the external one.
mod s3 {
    use super::*;
    use crate::s3_server::{Logged, ACCESS_KEY};

    async fn targets(test: &str) -> Vec<(S3Target, String, Option<S3Server>)> {
        let server = S3Server::start();
        let mut out = vec![(server.target.clone(), unique_prefix(test), Some(server))];
        if let Some(t) = external() {
            out.push((t, unique_prefix(test), None));
        }
        out
    }

    fn checksum_headers(r: &Logged) -> Vec<String> {
        r.headers
            .keys()
            .map(|h| h.as_str().to_string())
            .filter(|h| {
                h.starts_with("x-amz-checksum")
                    || h == "x-amz-sdk-checksum-algorithm"
                    || h == "x-amz-trailer"
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_use_equal_parts_and_exactly_one_checksum_header() {
        let server = S3Server::start();
        let store: Arc<dyn Storage> = Arc::new(server.target.store("p", None).await);
        let data = noise(20 * 1024 * 1024 + 5, 5);
        put_chunks(&store, &key("db/big"), data, None)
            .await
            .unwrap();
        store
            .put_bytes(
                &key("db/small"),
                Bytes::from_static(b"hi"),
                PutMode::IfAbsent,
            )
            .await
            .unwrap();
        store.delete(&key("db/small")).await.unwrap();

        let reqs = server.requests();
        // Parts go up concurrently: order them by part number.
        let mut parts: Vec<(u32, u64)> = reqs
            .iter()
            .filter(|r| r.is_upload_part())
            .map(|r| (r.part_number().unwrap(), r.content_length().unwrap()))
            .collect();
        parts.sort();
        assert_eq!(
            parts,
            [(1, 8 << 20), (2, 8 << 20), (3, (4 << 20) + 5)],
            "part sizes"
        );
        let puts: Vec<&Logged> = reqs
            .iter()
            .filter(|r| r.is_upload_part() || r.is_put_object())
            .collect();
        assert_eq!(puts.len(), 4, "{reqs:#?}");
        for r in &puts {
            assert!(
                r.header("content-md5").is_some(),
                "no Content-MD5 on {} {}?{}",
                r.method,
                r.path,
                r.query
            );
            assert!(
                checksum_headers(r).is_empty(),
                "extra checksum headers {:?}",
                checksum_headers(r)
            );
        }
        assert_eq!(puts[3].header("if-none-match"), Some("*"));
        assert!(
            !reqs
                .iter()
                .any(|r| r.method == "POST" && r.query.contains("delete")),
            "DeleteObjects must never be used"
        );
        assert!(reqs
            .iter()
            .any(|r| r.method == "DELETE" && r.path.ends_with("/p/db/small")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_part_corrupted_in_transit_is_refused_and_nothing_is_stored() {
        let server = S3Server::start();
        let store: Arc<dyn Storage> = Arc::new(server.target.store("p", None).await);
        server.faults.lock().unwrap().corrupt_puts = 1_000; // every attempt of every part
        let e = put_chunks(&store, &key("db/big"), noise(10 << 20, 6), None)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Remote { .. }), "{e}");
        server.faults.lock().unwrap().corrupt_puts = 0;
        assert!(keys(&store, "").await.is_empty());
        let reqs = server.requests();
        assert!(
            reqs.iter()
                .any(|r| r.method == "DELETE" && r.query.contains("uploadId=")),
            "the multipart upload was not aborted: {reqs:#?}"
        );
        // And a corrupted single PUT, caught by Content-MD5 / the signed payload hash.
        server.faults.lock().unwrap().corrupt_puts = 1_000;
        let e = store
            .put_bytes(
                &key("db/m.json"),
                Bytes::from(vec![b'a'; 100]),
                PutMode::IfAbsent,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Remote { .. }), "{e}");
        server.faults.lock().unwrap().corrupt_puts = 0;
        assert!(keys(&store, "").await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throttling_is_retried_with_backoff() {
        let server = S3Server::start();
        let store: Arc<dyn Storage> = Arc::new(server.target.store("p", None).await);
        server.faults.lock().unwrap().slow_down = 2;
        store
            .put_bytes(
                &key("db/m.json"),
                Bytes::from_static(b"x"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let puts = server
            .requests()
            .iter()
            .filter(|r| r.is_put_object())
            .count();
        assert_eq!(puts, 3, "two 503s, then success");
        // More failures than attempts: a clear error naming the code.
        server.faults.lock().unwrap().slow_down = 100;
        let e = store.get_bytes(&key("db/m.json"), 10).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("SlowDown") && msg.contains("503"), "{msg}");
        assert!(msg.contains("retries"), "{msg}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_credentials_give_one_clear_line() {
        for (target, prefix, _server) in targets("wrong-creds").await {
            let store = target.store(&prefix, Some("not-the-secret")).await;
            let e = store.list("").await.unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, StorageError::Remote { .. }),
                "{}: {msg}",
                target.name
            );
            assert!(
                msg.contains("SignatureDoesNotMatch") || msg.contains("InvalidAccessKeyId"),
                "{}: {msg}",
                target.name
            );
            assert!(
                msg.contains("AWS_SECRET_ACCESS_KEY") || msg.contains("AWS_ACCESS_KEY_ID"),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
            assert!(
                !msg.contains("not-the-secret") && !msg.contains(&target.secret_key),
                "{msg}"
            );

            let mut unknown = target.clone();
            unknown.access_key = "NOSUCHACCESSKEY00000".into();
            let store = unknown.store(&prefix, None).await;
            let e = store.get_bytes(&key("x"), 10).await.unwrap_err();
            assert!(
                e.to_string().contains("InvalidAccessKeyId") || e.to_string().contains("403"),
                "{}: {e}",
                target.name
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_bucket_is_named_with_a_hint() {
        for (mut target, prefix, server) in targets("no-bucket").await {
            target.bucket = "no-such-bucket-for-guardian".into();
            let store = target.store(&prefix, None).await;
            let e = store.list("").await.unwrap_err();
            let msg = e.to_string();
            if server.is_some() {
                assert!(msg.contains("NoSuchBucket"), "{}: {msg}", target.name);
                assert!(msg.contains("storage.bucket"), "{msg}");
            } else {
                // A key whose policy names one bucket gets AccessDenied for any other (as on AWS).
                assert!(
                    msg.contains("NoSuchBucket") || msg.contains("AccessDenied"),
                    "{}: {msg}",
                    target.name
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_endpoint_fails_fast_with_a_hint() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        }; // now closed: connections are refused
        let target = S3Target {
            endpoint: format!("http://127.0.0.1:{port}"),
            ..S3Server::start().target.clone()
        };
        let store = target.store("p", None).await;
        let t = Instant::now();
        let e = store.list("").await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        let msg = e.to_string();
        assert!(msg.contains("storage.endpoint"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_read_back_are_validated() {
        for (target, prefix, server) in targets("bad-keys").await {
            let raw = target.raw_client();
            let mut hostile = vec![
                "market/.hidden",
                "market/a b",
                "market/x/../../y",
                "market/ok",
            ];
            if server.is_none() {
                // Only for servers that really honour encoding-type=url: s3s-fs echoes it but
                // sends raw keys, so a control character breaks its XML and `e%41` reads as `eA`.
                hostile.extend(["market/c\u{1}d", "market/e%41"]);
            }
            for k in hostile {
                raw.put_object()
                    .bucket(&target.bucket)
                    .key(format!("{prefix}/{k}"))
                    .body(Vec::from(&b"z"[..]).into())
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{k}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
                    });
            }
            let store: Arc<dyn Storage> = Arc::new(target.store(&prefix, None).await);
            assert_eq!(
                keys(&store, "market/").await,
                ["market/ok"],
                "{}",
                target.name
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_conditional_write_that_already_landed_succeeds() {
        for (target, prefix, _server) in targets("cond-retry").await {
            let store = target.store(&prefix, None).await;
            let k = key("db/id/manifest.json");
            store
                .put_bytes(&k, Bytes::from_static(b"same"), PutMode::IfAbsent)
                .await
                .unwrap();
            // Same bytes again: what a retry after a lost answer looks like.
            store
                .put_bytes(&k, Bytes::from_static(b"same"), PutMode::IfAbsent)
                .await
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sweep_aborts_stale_multipart_uploads_where_the_server_lists_them() {
        for (target, prefix, _server) in targets("sweep").await {
            let raw = target.raw_client();
            let full = format!("{prefix}/db/20261124T030000Z-00000001/db.sqlite.gz");
            let up = raw
                .create_multipart_upload()
                .bucket(&target.bucket)
                .key(&full)
                .send()
                .await
                .unwrap();
            let opts = S3Options {
                credentials: Some(aws_sdk_s3::config::Credentials::new(
                    &target.access_key,
                    &target.secret_key,
                    None,
                    None,
                    "t",
                )),
                sweep_grace: Duration::ZERO,
            };
            let cfg = target.storage_config(&prefix);
            let store = guardian::storage::s3::S3Storage::connect(&cfg, opts)
                .await
                .unwrap();
            // A store with the default grace leaves a fresh upload alone (where the server
            // reports real start times: moto says every upload began in 2010).
            let listed = raw
                .list_multipart_uploads()
                .bucket(&target.bucket)
                .prefix(&prefix)
                .send()
                .await;
            let fresh = listed.ok().and_then(|l| {
                let t = l.uploads().first()?.initiated()?.secs();
                Some(t > chrono::Utc::now().timestamp() - 3600)
            });
            if fresh != Some(false) {
                let patient = target.store(&prefix, None).await;
                assert_eq!(patient.sweep("db/").await.unwrap(), 0, "{}", target.name);
            }
            let removed = store.sweep("db/").await.unwrap();
            if target.lists_uploads {
                assert_eq!(removed, 1, "{}", target.name);
                let left = raw
                    .list_multipart_uploads()
                    .bucket(&target.bucket)
                    .prefix(&prefix)
                    .send()
                    .await
                    .unwrap();
                assert!(left.uploads().is_empty(), "{}: {left:?}", target.name);
            } else {
                assert_eq!(removed, 0, "{}", target.name);
                // Leave no litter on the server.
                let _ = raw
                    .abort_multipart_upload()
                    .bucket(&target.bucket)
                    .key(&full)
                    .upload_id(up.upload_id().unwrap())
                    .send()
                    .await;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn location_names_bucket_prefix_and_endpoint_but_no_key() {
        let server = S3Server::start();
        let store = server.target.store("prod/guardian", None).await;
        let loc = store.location();
        assert!(
            loc.starts_with("s3://guardian-test/prod/guardian at http://127.0.0.1:"),
            "{loc}"
        );
        assert!(!loc.contains(ACCESS_KEY), "{loc}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_upload_is_aborted_in_the_background() {
        let server = S3Server::start();
        let store: Arc<dyn Storage> = Arc::new(server.target.store("p", None).await);
        let (tx, rx) = body_channel();
        let upload = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.put_stream(&key("db/big"), rx, Some(100 << 20)).await })
        };
        // Ten chunks: the first part (8 MiB) goes up; then the producer stalls, never ending.
        for i in 0..10u64 {
            tx.send(Ok(Bytes::from(noise(CHUNK_SIZE, i + 1))))
                .await
                .unwrap();
        }
        let parts_sent = || server.requests().iter().any(|r| r.is_upload_part());
        let t = Instant::now();
        while !parts_sent() && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(parts_sent(), "no part was uploaded");
        upload.abort(); // what a shutdown that drops the backup future does
        let aborted = || {
            server
                .requests()
                .iter()
                .any(|r| r.method == "DELETE" && r.query.contains("uploadId="))
        };
        let t = Instant::now();
        while !aborted() && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(aborted(), "the dropped multipart upload was not aborted");
        drop(tx);
        assert!(keys(&store, "").await.is_empty());
    }
}
