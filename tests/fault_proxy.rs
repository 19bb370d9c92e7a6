//! A fault-injecting TCP proxy between guardian and an S3 server on 127.0.0.1.
//!
//! It reads just enough HTTP/1.1 from the client (request line, headers, `Content-Length`) to
//! find where each request starts and ends, so faults hit chosen requests, not whole
//! connections: answer an S3 error itself (500 `InternalError`, 503 `ServiceUnavailable`),
//! reset the connection part-way through the request body, forward the whole request but lose
//! the answer (the write happened; the client never hears of it) or cut it off part-way (a
//! broken download), stall without a word, or hold the request back so the answer comes late. It can also close its port, so that connecting
//! is refused. Answers from the server are piped back byte for byte; nothing is re-signed, so
//! SigV4 still checks every request end to end. Any upstream works: the in-process server or
//! moto.

#![allow(dead_code)] // each test uses a different part of the proxy

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Which requests a [`Rule`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requests {
    Any,
    /// PUT with `partNumber=`: UploadPart.
    UploadPart,
    /// PUT of a whole object (snapshot data or manifest).
    PutObject,
    /// GET of an object.
    GetObject,
    /// GET of an object that is not a manifest (snapshot data).
    GetData,
    /// GET of a listing (objects or multipart uploads).
    List,
    Head,
    /// POST `?uploads`: start a multipart upload.
    StartUpload,
    /// POST `?uploadId=`: complete a multipart upload.
    CompleteUpload,
}

impl Requests {
    fn matches(self, method: &str, target: &str) -> bool {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let listing = method == "GET" && (query.contains("list-type") || query.contains("uploads"));
        match self {
            Requests::Any => true,
            Requests::UploadPart => method == "PUT" && query.contains("partNumber="),
            Requests::PutObject => method == "PUT" && !query.contains("partNumber="),
            Requests::GetObject => method == "GET" && !listing,
            Requests::GetData => {
                let path = target.split_once('?').map_or(target, |(p, _)| p);
                method == "GET" && !listing && !path.ends_with(".json")
            }
            Requests::List => method == "GET" && listing,
            Requests::Head => method == "HEAD",
            Requests::StartUpload => method == "POST" && !query.contains("uploadId="),
            Requests::CompleteUpload => method == "POST" && query.contains("uploadId="),
        }
    }
}

/// What the proxy does to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this HTTP status with an S3 error document, without forwarding; then close.
    Status(u16),
    /// Forward the head and this many body bytes, then reset the connection (RST).
    ResetAfter(usize),
    /// Forward the whole request on a side connection, let the server answer, then reset the
    /// client's connection without passing the answer on.
    LoseAnswer,
    /// The same, but pass on the first this many bytes of the answer (headers included)
    /// before the reset: a download cut off part-way.
    CutAnswer(usize),
    /// Read the request, forward nothing, answer nothing, until the client gives up.
    Stall,
    /// Forward the request this much later (the answer comes late, but it comes).
    Delay(Duration),
}

impl Fault {
    /// A short name for figures: "503", "reset", "lost answer", "stall", "delay".
    pub fn name(&self) -> String {
        match self {
            Fault::Status(s) => s.to_string(),
            Fault::ResetAfter(_) => "reset".into(),
            Fault::LoseAnswer => "lost answer".into(),
            Fault::CutAnswer(_) => "cut answer".into(),
            Fault::Stall => "stall".into(),
            Fault::Delay(_) => "delay".into(),
        }
    }
}

/// Apply `fault` to the next `times` requests matching `to` (`usize::MAX`: for good).
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub to: Requests,
    pub fault: Fault,
    pub times: usize,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    /// Requests seen, and faults injected, since the start.
    requests: usize,
    injected: usize,
    /// Close the port (connections are refused) while set.
    refusing: bool,
    /// Live connections, aborted when the port closes (a store that goes away drops them).
    conns: Vec<tokio::task::AbortHandle>,
}

/// A proxy in front of `upstream`; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: put this in `storage.endpoint`.
    pub endpoint: String,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    wake: Arc<tokio::sync::Notify>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Start a proxy to the server at `upstream` (an `http://host:port` endpoint).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream endpoint is http://ip:port");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (st, wk) = (Arc::clone(&state), Arc::clone(&wake));
        rt.spawn(async move {
            let mut listener = Some(TcpListener::from_std(listener).unwrap());
            loop {
                let refusing = st.lock().unwrap().refusing;
                match (&listener, refusing) {
                    (Some(_), true) => {
                        listener = None; // the port closes: connecting is refused
                        for c in std::mem::take(&mut st.lock().unwrap().conns) {
                            c.abort();
                        }
                        continue;
                    }
                    (None, false) => {
                        listener = Some(TcpListener::bind(addr).await.expect("rebind the port"));
                        continue;
                    }
                    (None, true) => {
                        wk.notified().await;
                        continue;
                    }
                    (Some(_), false) => {}
                }
                let l = listener.as_ref().expect("open");
                tokio::select! {
                    _ = wk.notified() => continue,
                    accepted = l.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let st2 = Arc::clone(&st);
                        let task = tokio::spawn(async move {
                            let _ = serve(client, upstream, st2).await;
                        });
                        let mut s = st.lock().unwrap();
                        s.conns.retain(|c| !c.is_finished());
                        s.conns.push(task.abort_handle());
                    }
                }
            }
        });
        FaultProxy {
            endpoint: format!("http://{addr}"),
            addr,
            state,
            wake,
            rt: Some(rt),
        }
    }

    /// Add a rule (rules are tried in the order they were added).
    pub fn inject(&self, to: Requests, fault: Fault, times: usize) {
        self.state
            .lock()
            .unwrap()
            .rules
            .push(Rule { to, fault, times });
    }

    /// Remove every rule and open the port: the store is back.
    pub fn heal(&self) {
        {
            let mut s = self.state.lock().unwrap();
            s.rules.clear();
            s.refusing = false;
        }
        self.wake.notify_one();
    }

    /// Close the port (`true`: new connections are refused, live ones are dropped) or open it.
    pub fn refuse(&self, refusing: bool) {
        self.state.lock().unwrap().refusing = refusing;
        self.wake.notify_one();
        if refusing {
            // Wait until the port is really closed.
            for _ in 0..200 {
                if std::net::TcpStream::connect(self.addr).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("the proxy port did not close");
        }
    }

    /// Requests seen and faults injected so far.
    pub fn counts(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.requests, s.injected)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The fault for the request `method target`, if a rule matches (and count it).
fn pick(state: &Mutex<State>, method: &str, target: &str) -> Option<Fault> {
    let mut s = state.lock().unwrap();
    s.requests += 1;
    let rule = s
        .rules
        .iter_mut()
        .find(|r| r.times > 0 && r.to.matches(method, target))?;
    if rule.times != usize::MAX {
        rule.times -= 1;
    }
    let fault = rule.fault;
    s.injected += 1;
    Some(fault)
}

/// One client connection: requests are parsed and forwarded (or faulted) one by one, answers
/// are piped back by a second task.
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let (mut from_client, to_client) = client.into_split();
    let (from_server, mut to_server) = server.into_split();
    let to_client = Arc::new(tokio::sync::Mutex::new(to_client));
    let answers = tokio::spawn(pipe(from_server, Arc::clone(&to_client)));
    let mut buf = Vec::new();
    loop {
        let Some(head_len) = read_head(&mut from_client, &mut buf).await? else {
            break; // the client closed the connection
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let mut words = head.split_whitespace();
        let (method, target) = (
            words.next().unwrap_or("").to_string(),
            words.next().unwrap_or("").to_string(),
        );
        let lower = head.to_ascii_lowercase();
        if lower.contains("transfer-encoding: chunked") {
            // Not something guardian sends; pass the rest through untouched.
            to_server.write_all(&buf).await?;
            tokio::io::copy(&mut from_client, &mut to_server).await?;
            break;
        }
        let body_len = content_length(&lower);
        let fault = pick(&state, &method, &target);
        match fault {
            None | Some(Fault::Delay(_)) => {
                if let Some(Fault::Delay(d)) = fault {
                    tokio::time::sleep(d).await;
                }
                let (r, w) = (&mut from_client, &mut to_server);
                forward(r, w, &mut buf, head_len, body_len).await?;
            }
            Some(Fault::Status(status)) => {
                drain(&mut from_client, &mut buf, head_len + body_len).await?;
                let code = if status == 503 {
                    "ServiceUnavailable"
                } else {
                    "InternalError"
                };
                let xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
                );
                let answer = format!(
                    "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                    xml.len()
                );
                answers.abort();
                let mut w = to_client.lock().await;
                w.write_all(answer.as_bytes()).await?;
                w.shutdown().await?;
                return Ok(());
            }
            Some(Fault::ResetAfter(n)) => {
                let upto = (head_len + n.min(body_len)).min(buf.len());
                to_server.write_all(&buf[..upto]).await?;
                if head_len + n > buf.len() {
                    let mut rest = (&mut from_client).take((head_len + n - buf.len()) as u64);
                    tokio::io::copy(&mut rest, &mut to_server).await?;
                }
                answers.abort();
                return reset(from_client, to_client).await;
            }
            Some(fault @ (Fault::LoseAnswer | Fault::CutAnswer(_))) => {
                let pass_on = match fault {
                    Fault::CutAnswer(n) => n,
                    _ => 0,
                };
                drain(&mut from_client, &mut buf, head_len + body_len).await?;
                // A side connection, so that the answer never mixes with the main pipe's.
                let mut side = TcpStream::connect(upstream).await?;
                side.write_all(&buf[..head_len + body_len]).await?;
                answers.abort();
                // Wait for the answer to start (the server has acted on the request), pass on
                // what may be passed on, then cut.
                let mut passed = 0;
                let mut chunk = vec![0u8; 64 * 1024];
                while let Ok(Ok(n @ 1..)) =
                    tokio::time::timeout(Duration::from_secs(1), side.read(&mut chunk)).await
                {
                    let take = n.min(pass_on - passed);
                    if take > 0 {
                        to_client.lock().await.write_all(&chunk[..take]).await?;
                        passed += take;
                    }
                    if passed >= pass_on {
                        break;
                    }
                }
                return reset(from_client, to_client).await;
            }
            Some(Fault::Stall) => {
                answers.abort();
                // Say nothing until the client gives up (or ten minutes pass).
                let mut sink = [0u8; 64 * 1024];
                let wait =
                    async { while from_client.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
                let _ = tokio::time::timeout(Duration::from_secs(600), wait).await;
                return Ok(());
            }
        }
    }
    let _ = to_server.shutdown().await;
    let _ = answers.await;
    Ok(())
}

/// Read until `buf` holds a whole request head; its length, or `None` at a clean end of stream.
async fn read_head(r: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(end + 4));
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(lower_head: &str) -> usize {
    lower_head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Read until `buf` holds at least `len` bytes.
async fn drain(r: &mut OwnedReadHalf, buf: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    let mut chunk = [0u8; 64 * 1024];
    while buf.len() < len {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Send one request (head and body) upstream, streaming a large body; keeps whatever of the
/// next request was already read in `buf`.
async fn forward(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    buf: &mut Vec<u8>,
    head_len: usize,
    body_len: usize,
) -> std::io::Result<()> {
    let total = head_len + body_len;
    if buf.len() >= total {
        w.write_all(&buf[..total]).await?;
        buf.drain(..total);
        return Ok(());
    }
    w.write_all(buf).await?;
    let mut rest = r.take((total - buf.len()) as u64);
    let copied = tokio::io::copy(&mut rest, w).await?;
    if copied < (total - buf.len()) as u64 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.clear();
    Ok(())
}

/// Server → client, byte for byte.
async fn pipe(
    mut from_server: OwnedReadHalf,
    to_client: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = from_server.read(&mut chunk).await?;
        let mut w = to_client.lock().await;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&chunk[..n]).await?;
    }
}

/// Reset the client's connection: `SO_LINGER` 0, then close, so the kernel sends RST.
async fn reset(
    from_client: OwnedReadHalf,
    mut to_client: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
) -> std::io::Result<()> {
    // The answer pipe was aborted; wait until it has let go of the write half.
    let to_client = loop {
        match Arc::try_unwrap(to_client) {
            Ok(m) => break m.into_inner(),
            Err(still_shared) => {
                to_client = still_shared;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let stream = from_client
        .reunite(to_client)
        .expect("halves of one stream");
    stream.set_zero_linger()?;
    drop(stream);
    Ok(())
}
