//! S3-only behaviours of S3Storage: what goes on the wire (Content-MD5 and nothing else, equal
//! part sizes, no batch deletes), faults (a body corrupted in transit, throttling, a cancelled
//! upload), error messages with hints, key validation and the sweep of stale uploads. They run
//! against the in-process server and, where no request log or fault is needed, the external one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use guardian::storage::s3::S3Options;
use guardian::storage::{body_channel, PutMode, Storage, StorageError, CHUNK_SIZE};

use crate::s3_server::{external, unique_prefix, S3Server, S3Target};
use crate::storage::{key, keys, noise, put_chunks};

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
        [
            (1, 5 << 20),
            (2, 5 << 20),
            (3, 5 << 20),
            (4, 5 << 20),
            (5, 5)
        ],
        "part sizes"
    );
    let puts: Vec<&Logged> = reqs
        .iter()
        .filter(|r| r.is_upload_part() || r.is_put_object())
        .collect();
    assert_eq!(puts.len(), 6, "{reqs:#?}");
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
    assert_eq!(puts[5].header("if-none-match"), Some("*"));
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
                .unwrap_or_else(|e| panic!("{k}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_off_mid_way_resumes_where_it_stopped() {
    let server = S3Server::start();
    let store: Arc<dyn Storage> = Arc::new(server.target.store("p", None).await);
    let data = noise(3 * CHUNK_SIZE + 17, 9);
    let k = key("db/x/db.sqlite.gz");
    put_chunks(&store, &k, data.clone(), None).await.unwrap();
    server.faults.lock().unwrap().cut_gets = 2;
    let mut body = store.get_stream(&k).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = body.recv().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        got == data,
        "resumed download differs ({} of {} bytes)",
        got.len(),
        data.len()
    );
    let gets: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.is_get_object())
        .collect();
    assert_eq!(gets.len(), 3, "{gets:#?}");
    // The first GET asks for the first 4 MiB range (the whole object here), with no If-Match
    // (there is no ETag to pin yet); each resume asks for the rest of that range only.
    assert_eq!(gets[0].header("range"), Some("bytes=0-4194303"));
    assert!(gets[0].header("if-match").is_none());
    let last = format!("-{}", data.len() - 1);
    for g in &gets[1..] {
        let range = g.header("range").unwrap();
        assert!(
            range.starts_with("bytes=") && range.ends_with(&last) && !range.starts_with("bytes=0-"),
            "{range}"
        );
        assert!(
            g.header("if-match").is_some(),
            "a resume must pin the object version"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_keeps_breaking_ends_with_an_error_not_short_data() {
    let server = S3Server::start();
    let store: Arc<dyn Storage> = Arc::new(server.target.store("p", None).await);
    let k = key("db/x/db.sqlite.gz");
    put_chunks(&store, &k, noise(2 * CHUNK_SIZE, 10), None)
        .await
        .unwrap();
    server.faults.lock().unwrap().cut_gets = 1_000;
    let mut body = store.get_stream(&k).await.unwrap();
    let mut err = None;
    while let Some(chunk) = body.recv().await {
        if let Err(e) = chunk {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("the body must end with an error, never just stop");
    assert_eq!(e.kind(), std::io::ErrorKind::Other, "{e}");
    assert!(
        e.to_string().contains("broke off") && e.to_string().contains("kept breaking"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_conditional_puts_gets_check_then_write() {
    let server = S3Server::start();
    server.faults.lock().unwrap().refuse_if_none_match = true;
    let store: Arc<dyn Storage> = Arc::new(server.target.store("p", None).await);
    let k = key("db/id/manifest.json");
    store
        .put_bytes(&k, Bytes::from_static(b"first"), PutMode::IfAbsent)
        .await
        .unwrap();
    let e = store
        .put_bytes(&k, Bytes::from_static(b"second"), PutMode::IfAbsent)
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::AlreadyExists { .. }), "{e}");
    assert_eq!(&store.get_bytes(&k, 100).await.unwrap()[..], b"first");
    let refused = server
        .requests()
        .iter()
        .filter(|r| r.is_put_object() && r.header("if-none-match").is_some())
        .count();
    assert_eq!(refused, 2, "each write tried the conditional PUT first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_object_read_is_retried_when_the_connection_breaks() {
    let server = S3Server::start();
    let store: Arc<dyn Storage> = Arc::new(server.target.store("p", None).await);
    let k = key("db/x/manifest.json");
    let body = Bytes::from(noise(10_000, 11));
    store
        .put_bytes(&k, body.clone(), PutMode::IfAbsent)
        .await
        .unwrap();
    server.faults.lock().unwrap().cut_any_gets = 2;
    assert_eq!(store.get_bytes(&k, 1 << 20).await.unwrap(), body);
    server.faults.lock().unwrap().cut_any_gets = 1_000;
    let e = store.get_bytes(&k, 1 << 20).await.unwrap_err();
    assert!(matches!(e, StorageError::Remote { .. }), "{e}");
    assert!(!e.is_not_found());
}
