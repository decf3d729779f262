//! [`ScriptedOrigin`]: an HTTP/1.1 origin on a loopback port that answers
//! what the test scripts — status, header fields, bodies, and the ways
//! real origins misbehave (a `Content-Length` larger than the body, a
//! connection reset mid-body, no answer at all) — and records every
//! request it got.
//!
//! Decision: it speaks HTTP/1.1 over a plain `tokio` socket rather than
//! through hyper, because the misbehaviours are exactly what a conforming
//! server library refuses to produce. It reads one request per connection
//! (head, then a `Content-Length` body) and answers with
//! `Connection: close`.
//!
//! A [`Gate`] lets a test hold a reply where it wants — before its head
//! ([`Reply::after`]), or mid-body ([`Body::Held`]) — and release it once
//! it has seen what the cache did meanwhile.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Longest request head read, in bytes.
const HEAD_MAX_BYTES: usize = 64 * 1024;
/// Longest request body read, in bytes.
const BODY_MAX_BYTES: usize = 16 << 20;
/// How long a [`Body::Hang`] holds its connection at most.
const HANG_MAX: Duration = Duration::from_secs(120);

/// A reply's body.
#[derive(Debug, Clone)]
pub enum Body {
    /// These bytes, with a matching `Content-Length`.
    Bytes(Vec<u8>),
    /// `len` bytes of `byte`, streamed in 64 KiB writes.
    Repeat {
        /// The byte.
        byte: u8,
        /// How many.
        len: u64,
    },
    /// `Content-Length: announced`, then only `sent`, then the connection
    /// closes.
    Short {
        /// Bytes sent.
        sent: Vec<u8>,
        /// Bytes announced.
        announced: u64,
    },
    /// `Content-Length: announced`, `sent`, then a TCP reset.
    Reset {
        /// Bytes sent before the reset.
        sent: Vec<u8>,
        /// Bytes announced.
        announced: u64,
    },
    /// No answer at all: the connection is held open.
    Hang,
    /// `Content-Length` of `first` and `rest` together; `first`, then
    /// nothing until `gate` opens, then `rest` — or, with `reset`, a TCP
    /// reset in its place.
    Held {
        /// Bytes sent at once.
        first: Vec<u8>,
        /// What the rest waits for.
        gate: Gate,
        /// Bytes sent once `gate` opens.
        rest: Vec<u8>,
        /// A reset instead of `rest`.
        reset: bool,
    },
}

/// A point where a scripted reply waits until the test opens it (at most
/// [`HANG_MAX`]); clones share it.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }

    /// Opens it: every reply waiting at it goes on, and later ones do not
    /// wait.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let mut opened = self.0.subscribe();
        let _ = tokio::time::timeout(HANG_MAX, opened.wait_for(|o| *o)).await;
    }
}

/// One scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header fields (besides `Content-Length`, `Connection`).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Body,
    /// Nothing is sent until this opens.
    pub after: Option<Gate>,
}

impl Reply {
    /// `status` with `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body.into()),
            after: None,
        }
    }

    /// Sends nothing (the request recorded) until `gate` opens.
    pub fn after(mut self, gate: &Gate) -> Self {
        self.after = Some(gate.clone());
        self
    }

    /// Adds a header field.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Replaces the body.
    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
}

/// One request the origin got.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// Header fields, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Script {
    /// Replies per target: the first is taken while more follow; the last
    /// repeats.
    replies: HashMap<String, VecDeque<Reply>>,
    requests: Vec<Recorded>,
}

/// A scripted origin; its task ends when dropped.
#[derive(Debug)]
pub struct ScriptedOrigin {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedOrigin {
    /// Starts on a port of the system's choosing.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(Mutex::new(Script::default()));
        let shared = script.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let script = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, script).await;
                });
            }
        });
        Self { addr, script, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `target` (path and query) with `reply` from now on.
    pub fn reply(&self, target: &str, reply: Reply) {
        self.replies(target, vec![reply]);
    }

    /// Answers `target` with `replies` in turn, the last one repeating.
    pub fn replies(&self, target: &str, replies: Vec<Reply>) {
        self.script
            .lock()
            .replies
            .insert(target.to_owned(), replies.into());
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.script.lock().requests.clone()
    }

    /// The requests for `target` so far.
    pub fn requests_for(&self, target: &str) -> Vec<Recorded> {
        self.script
            .lock()
            .requests
            .iter()
            .filter(|r| r.target == target)
            .cloned()
            .collect()
    }

    /// How many requests for `target` so far.
    pub fn count(&self, target: &str) -> usize {
        self.requests_for(target).len()
    }
}

async fn serve(mut socket: TcpStream, script: Arc<Mutex<Script>>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > HEAD_MAX_BYTES {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
        .min(BODY_MAX_BYTES);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let reply = {
        let mut script = script.lock();
        script.requests.push(Recorded {
            method: method.clone(),
            target: target.clone(),
            headers,
            body,
        });
        match script.replies.get_mut(&target) {
            Some(queue) if queue.len() > 1 => queue.pop_front(),
            Some(queue) => queue.front().cloned(),
            None => None,
        }
    }
    .unwrap_or_else(|| Reply::new(404, "not scripted"));
    if let Some(gate) = &reply.after {
        gate.passed().await;
    }
    let mut out = format!("HTTP/1.1 {} X\r\nconnection: close\r\n", reply.status);
    for (n, v) in &reply.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    let head_only = method == "HEAD" || reply.status == 304 || reply.status == 204;
    match &reply.body {
        Body::Hang => {
            tokio::time::sleep(HANG_MAX).await;
            return Ok(());
        }
        Body::Bytes(b) => {
            if !head_only || method == "HEAD" {
                out.push_str(&format!("content-length: {}\r\n", b.len()));
            }
            out.push_str("\r\n");
            socket.write_all(out.as_bytes()).await?;
            if !head_only {
                socket.write_all(b).await?;
            }
        }
        Body::Repeat { byte, len } => {
            out.push_str(&format!("content-length: {len}\r\n\r\n"));
            socket.write_all(out.as_bytes()).await?;
            if !head_only {
                let chunk = vec![*byte; 64 * 1024];
                let mut left = *len;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    socket.write_all(&chunk[..n]).await?;
                    left -= n as u64;
                }
            }
        }
        Body::Short { sent, announced } => {
            out.push_str(&format!("content-length: {announced}\r\n\r\n"));
            socket.write_all(out.as_bytes()).await?;
            socket.write_all(sent).await?;
        }
        Body::Held {
            first,
            gate,
            rest,
            reset,
        } => {
            let announced = first.len() + rest.len();
            out.push_str(&format!("content-length: {announced}\r\n\r\n"));
            socket.write_all(out.as_bytes()).await?;
            socket.write_all(first).await?;
            socket.flush().await?;
            gate.passed().await;
            if *reset {
                #[allow(deprecated)]
                socket.set_linger(Some(Duration::ZERO))?;
                drop(socket);
                return Ok(());
            }
            socket.write_all(rest).await?;
        }
        Body::Reset { sent, announced } => {
            out.push_str(&format!("content-length: {announced}\r\n\r\n"));
            socket.write_all(out.as_bytes()).await?;
            socket.write_all(sent).await?;
            socket.flush().await?;
            // A zero linger does not block on drop (only a positive one
            // does): it makes the close a reset, which is the point.
            #[allow(deprecated)]
            socket.set_linger(Some(Duration::ZERO))?;
            drop(socket);
            return Ok(());
        }
    }
    socket.shutdown().await
}
