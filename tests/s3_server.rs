//! The S3 servers tests run against, and how to point guardian at them.
//!
//! - [`S3Server`]: an in-process server per test (s3s + s3s-fs on `127.0.0.1:0`, SigV4 checked
//!   with [`ACCESS_KEY`]/[`SECRET_KEY`]) with a log of every request and simple fault injection
//!   (corrupt a body, answer 503), so tests can see what guardian puts on the wire.
//! - [`external`]: an independently written server (moto, Garage, MinIO) described by the
//!   `GUARDIAN_TEST_S3_*` variables (see `tests/README.md`); `None` when they are not set.

#![allow(dead_code)] // each test module uses a different part of the harness

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use guardian::storage::s3::{S3Config, S3Options, S3Storage};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tempfile::TempDir;

/// Access key of the in-process server.
pub const ACCESS_KEY: &str = "GUARDIANTESTACCESSKEY";
/// Secret of the in-process server: a canary that must never show up in any output.
pub const SECRET_KEY: &str = "canary-secret-5f1e9a7c3b2d4e6f8a0b";
/// The bucket every in-process server has.
pub const BUCKET: &str = "guardian-test";

/// Where an S3 store lives and how to log in to it.
#[derive(Debug, Clone)]
pub struct S3Target {
    /// A label for messages: "in-process", "moto", "garage".
    pub name: String,
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Whether the server refuses a second PUT with `If-None-Match: *` (Garage does not).
    pub if_none_match: bool,
    /// Whether the server lists multipart uploads (s3s-fs answers 501).
    pub lists_uploads: bool,
}

impl S3Target {
    /// The S3 store config for this target under `prefix`.
    pub fn storage_config(&self, prefix: &str) -> S3Config {
        S3Config {
            region: Some(self.region.clone()),
            ..S3Config::new(&self.bucket, prefix, Some(&self.endpoint))
        }
    }

    /// The same table as TOML.
    pub fn storage_toml(&self, prefix: &str) -> String {
        format!(
            "[storage]\nkind = \"s3\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\nregion = \"{}\"\nendpoint = \"{}\"\nforce_path_style = true\n",
            self.bucket, self.region, self.endpoint
        )
    }

    /// An S3Storage under `prefix` logged in with this target's keys (or `secret` instead).
    pub async fn store(&self, prefix: &str, secret: Option<&str>) -> S3Storage {
        let creds = Credentials::new(
            &self.access_key,
            secret.unwrap_or(&self.secret_key),
            None,
            None,
            "guardian-tests",
        );
        let opts = S3Options {
            credentials: Some(creds),
            ..S3Options::default()
        };
        S3Storage::connect(&self.storage_config(prefix), opts)
            .await
            .unwrap()
    }

    /// A plain SDK client for the test's own reads and writes behind guardian's back.
    pub fn raw_client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "raw",
            ))
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Give a `guardian` command this target's credentials through the standard AWS
    /// variables, and nothing from the machine's own AWS set-up.
    pub fn credentials_env(&self, cmd: &mut Command) {
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_CONFIG_FILE", "/nonexistent/guardian-test-aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/guardian-test-aws-credentials",
            )
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
}

/// A unique prefix for one test, so tests can share a bucket.
pub fn unique_prefix(test: &str) -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    format!("t-{test}-{}", hex::encode(b)).replace('_', "-")
}

/// The external server from `GUARDIAN_TEST_S3_*`, if configured. When it is not, the caller's
/// part against it is skipped, and says so ([`crate::util::skip`]: a failure under `CI=true`).
#[track_caller]
pub fn external() -> Option<S3Target> {
    let Some(endpoint) = std::env::var("GUARDIAN_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    else {
        crate::util::skip(
            "GUARDIAN_TEST_S3_ENDPOINT is not set, so the external S3 server was not tested \
             (scripts/s3-server.sh start; source target/s3-server/env; see tests/README.md)",
        );
        return None;
    };
    let var =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    Some(S3Target {
        name: var("GUARDIAN_TEST_S3_NAME", "external"),
        endpoint,
        bucket: var("GUARDIAN_TEST_S3_BUCKET", "guardian-test"),
        region: var("GUARDIAN_TEST_S3_REGION", "us-east-1"),
        access_key: std::env::var("GUARDIAN_TEST_S3_ACCESS_KEY")
            .expect("GUARDIAN_TEST_S3_ACCESS_KEY is set"),
        secret_key: std::env::var("GUARDIAN_TEST_S3_SECRET_KEY")
            .expect("GUARDIAN_TEST_S3_SECRET_KEY is set"),
        if_none_match: var("GUARDIAN_TEST_S3_IF_NONE_MATCH", "honoured") != "ignored",
        lists_uploads: var("GUARDIAN_TEST_S3_LISTS_UPLOADS", "yes") != "no",
    })
}

/// One request as the in-process server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: hyper::HeaderMap,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    /// The `partNumber` query parameter.
    pub fn part_number(&self) -> Option<u32> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix("partNumber="))
            .and_then(|n| n.parse().ok())
    }

    /// PUT with `partNumber`: UploadPart.
    pub fn is_upload_part(&self) -> bool {
        self.method == "PUT" && self.query.contains("partNumber=")
    }

    /// PUT of a whole object (not a part, not a bucket).
    /// GET of an object (not a listing).
    pub fn is_get_object(&self) -> bool {
        self.method == "GET"
            && !self.query.contains("list-type")
            && !self.query.contains("uploads")
            && self.path.matches('/').count() >= 2
            && !self.path.ends_with('/')
    }

    pub fn is_put_object(&self) -> bool {
        self.method == "PUT"
            && !self.query.contains("partNumber=")
            && self.path.matches('/').count() >= 2
    }
}

/// Faults the in-process server injects, each for a number of matching requests.
#[derive(Debug, Default)]
pub struct Faults {
    /// Flip one byte in the body of this many upcoming PUTs (objects or parts).
    pub corrupt_puts: usize,
    /// Answer this many upcoming requests with `503 SlowDown`.
    pub slow_down: usize,
    /// Break the connection half-way through the body of this many upcoming GETs of data
    /// objects (keys ending in `.gz`).
    pub cut_gets: usize,
    /// The same for GETs of any object (manifests included).
    pub cut_any_gets: usize,
    /// Answer every PUT carrying `If-None-Match` with `501 NotImplemented`.
    pub refuse_if_none_match: bool,
    /// Overwrite despite `If-None-Match: *`, as Garage does. (The header is signed, so it
    /// cannot be dropped: the existing object is removed before the request is served.)
    pub ignore_if_none_match: bool,
    /// Answer GetBucketVersioning with this status (`Enabled`, `Suspended`); s3s-fs itself
    /// answers 501 NotImplemented.
    pub versioning: Option<&'static str>,
    /// Answer GetObjectLockConfiguration with object lock on, GOVERNANCE for 30 days; s3s-fs
    /// itself answers 501 NotImplemented.
    pub object_lock: bool,
    /// Answer every DeleteObject with `403 AccessDenied`, as a bucket policy that protects
    /// backups (or an object lock on the version) does.
    pub deny_deletes: bool,
}

/// An in-process S3 server; stops when dropped.
pub struct S3Server {
    pub target: S3Target,
    /// The s3s-fs root: `root/<bucket>/<key>` is each object's file.
    pub root: TempDir,
    pub log: Arc<Mutex<Vec<Logged>>>,
    pub faults: Arc<Mutex<Faults>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    /// Start a server on its own thread and runtime (usable from sync and async tests).
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let root_path = root.path().to_path_buf();
        let thread = {
            let (log, faults) = (Arc::clone(&log), Arc::clone(&faults));
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let sock = tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => match accepted {
                                Ok((sock, _)) => sock,
                                Err(_) => continue,
                            },
                        };
                        let (service, log, faults) =
                            (service.clone(), Arc::clone(&log), Arc::clone(&faults));
                        let root = root_path.clone();
                        let svc = hyper::service::service_fn(move |req| {
                            let (log, faults) = (Arc::clone(&log), Arc::clone(&faults));
                            handle(root.clone(), service.clone(), log, faults, req)
                        });
                        tokio::spawn(async move {
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(sock), svc)
                                    .await;
                        });
                    }
                });
            })
        };
        S3Server {
            target: S3Target {
                name: "in-process".into(),
                endpoint: format!("http://{addr}"),
                bucket: BUCKET.into(),
                region: "us-east-1".into(),
                access_key: ACCESS_KEY.into(),
                secret_key: SECRET_KEY.into(),
                // s3s-fs honours If-None-Match (not atomically under concurrency).
                if_none_match: true,
                lists_uploads: false,
            },
            root,
            log,
            faults,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// The file holding object `key` (a full S3 key, prefix included).
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(
    root: PathBuf,
    service: S3Service,
    log: Arc<Mutex<Vec<Logged>>>,
    faults: Arc<Mutex<Faults>>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, s3s::HttpError> {
    let entry = Logged {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        headers: req.headers().clone(),
    };
    let is_put = entry.method == "PUT" && (entry.is_upload_part() || entry.is_put_object());
    let is_get = entry.is_get_object();
    log.lock().unwrap().push(entry);
    let (slow_down, corrupt, cut) = {
        let mut f = faults.lock().unwrap();
        let asks = |sub: &str| {
            req.uri()
                .query()
                .unwrap_or("")
                .split('&')
                .any(|kv| kv == sub || kv.starts_with(&format!("{sub}=")))
        };
        let bucket_config = |xml: String| {
            Ok(Response::builder()
                .status(200)
                .header("content-type", "application/xml")
                .body(boxed(s3s::Body::from(format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{xml}"
                ))))
                .unwrap())
        };
        const NS: &str = "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"";
        if req.method() == hyper::Method::GET && asks("versioning") {
            if let Some(status) = f.versioning {
                return bucket_config(format!(
                    "<VersioningConfiguration {NS}><Status>{status}</Status></VersioningConfiguration>"
                ));
            }
        }
        if req.method() == hyper::Method::GET && asks("object-lock") && f.object_lock {
            return bucket_config(format!(
                "<ObjectLockConfiguration {NS}><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>30</Days></DefaultRetention></Rule></ObjectLockConfiguration>"
            ));
        }
        if req.method() == hyper::Method::DELETE && f.deny_deletes {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
            return Ok(Response::builder()
                .status(403)
                .header("content-type", "application/xml")
                .body(boxed(s3s::Body::from(xml.to_string())))
                .unwrap());
        }
        if f.refuse_if_none_match && is_put && req.headers().contains_key("if-none-match") {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented.</Message></Error>";
            return Ok(Response::builder()
                .status(501)
                .header("content-type", "application/xml")
                .body(boxed(s3s::Body::from(xml.to_string())))
                .unwrap());
        }
        if f.ignore_if_none_match && is_put && req.headers().contains_key("if-none-match") {
            let _ = std::fs::remove_file(root.join(req.uri().path().trim_start_matches('/')));
        }
        let slow = f.slow_down > 0;
        if slow {
            f.slow_down -= 1;
        }
        let corrupt = !slow && is_put && f.corrupt_puts > 0;
        if corrupt {
            f.corrupt_puts -= 1;
        }
        let data_get = is_get && req.uri().path().ends_with(".gz");
        let cut = !slow && ((data_get && f.cut_gets > 0) || (is_get && f.cut_any_gets > 0));
        if cut {
            if is_get && f.cut_any_gets > 0 {
                f.cut_any_gets -= 1;
            } else {
                f.cut_gets -= 1;
            }
        }
        (slow, corrupt, cut)
    };
    if slow_down {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        return Ok(Response::builder()
            .status(503)
            .header("content-type", "application/xml")
            .body(boxed(s3s::Body::from(xml.to_string())))
            .unwrap());
    }
    if corrupt {
        let (parts, body) = req.into_parts();
        let mut bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default();
        let mid = bytes.len() / 2;
        if let Some(b) = bytes.get_mut(mid) {
            *b ^= 0x01;
        }
        let resp = service
            .call(Request::from_parts(parts, s3s::Body::from(bytes)))
            .await?;
        return Ok(resp.map(boxed));
    }
    let resp = service.call(req.map(s3s::Body::from)).await?;
    if cut {
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let half = bytes.slice(..bytes.len() / 2);
        return Ok(Response::from_parts(
            parts,
            http_body_util::BodyExt::boxed(CutBody(Some(half))),
        ));
    }
    Ok(resp.map(boxed))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

fn boxed(body: s3s::Body) -> BoxBody {
    http_body_util::BodyExt::boxed(body)
}

/// A response body that sends its bytes and then fails: the connection breaks mid-transfer.
struct CutBody(Option<bytes::Bytes>);

impl hyper::body::Body for CutBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, BoxError>>> {
        std::task::Poll::Ready(Some(match self.0.take() {
            Some(data) => Ok(hyper::body::Frame::data(data)),
            None => Err("connection cut by the test server".into()),
        }))
    }
}
