//! Test harness for cairn's integration suites: real parts only.
//!
//! # Layout
//! - [`NatsServer`] — a real `nats-server -js` on a dynamic port with a temp
//!   JetStream directory; killed on drop; can be stopped and restarted on
//!   the same port and directory.
//! - [`TempStore`] — a real RocksDB store in a temp directory.
//! - [`events`] — builders for sample events.
//! - [`free_port`], [`read_line_matching`]: helpers for child processes.
//!
//! The suites live in `tests/tests/*.rs`; the child programs they spawn in
//! `src/bin/` (`cairn-under-test` is the real CLI, `cairn-crash-appender` an
//! appender that reports every acknowledged append).

use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use cairn::local_nats::LocalNatsServer;
use cairn_storage::{views::default_views, Store, StoreConfig};

/// A real nats-server with JetStream, on a dynamic port.
#[derive(Debug)]
pub struct NatsServer {
    server: LocalNatsServer,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let server = LocalNatsServer::start("nats-server", listen, &dir.path().join("jetstream"))
            .expect("nats-server must be installed (apt-get install nats-server)");
        Self { server, _dir: dir }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts it again on the same port and JetStream directory.
    pub fn restart(&mut self) {
        self.server.restart().expect("restart nats-server");
    }
}

/// A store in a temp directory.
#[derive(Debug)]
pub struct TempStore {
    /// The store.
    pub store: Store,
    /// Its directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl TempStore {
    /// Opens a fresh store with the default views.
    pub fn open() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(StoreConfig::new(dir.path().join("store")), default_views())
            .expect("open store");
        Self { store, dir }
    }
}

/// Sample events.
pub mod service;

pub mod events {
    use cairn_events::{
        envelope::event,
        v1::{
            event::Payload, Event, GitSpec, RepositoryClosed, RepositoryRegistered, RepositorySpec,
            RepositorySpecChanged,
        },
    };

    /// A git repository spec.
    pub fn spec(namespace: &str, name: &str, branch: &str) -> RepositorySpec {
        RepositorySpec {
            namespace: namespace.into(),
            name: name.into(),
            r#type: "git".into(),
            git: Some(GitSpec {
                url: format!("file:///srv/git/{name}.git"),
                branch: branch.into(),
                directory: "/".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `RepositoryRegistered`.
    pub fn registered(namespace: &str, name: &str) -> Event {
        event(Payload::RepositoryRegistered(RepositoryRegistered {
            spec: Some(spec(namespace, name, "main")),
        }))
    }

    /// `RepositorySpecChanged` to `branch`.
    pub fn spec_changed(namespace: &str, name: &str, branch: &str) -> Event {
        event(Payload::RepositorySpecChanged(RepositorySpecChanged {
            spec: Some(spec(namespace, name, branch)),
        }))
    }

    /// `RepositoryClosed`.
    pub fn closed(reason: &str) -> Event {
        event(Payload::RepositoryClosed(RepositoryClosed {
            reason: reason.into(),
        }))
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing
/// test never leaves a node running.
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Waits for the child to exit by itself.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Reads lines from `reader` on a thread; returns the first line matching
/// `pred` within `timeout` (with everything read so far on failure), and a
/// receiver of the lines that follow.
pub fn read_line_matching(
    reader: impl Read + Send + 'static,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Result<(String, mpsc::Receiver<String>), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if pred(&line) => return Ok((line, rx)),
            Ok(line) => seen.push(line),
            Err(e) => return Err(format!("{e:?}; output so far:\n{}", seen.join("\n"))),
        }
    }
}

/// Lines of `reader`, read on a thread and delivered to async code.
pub fn async_lines(
    reader: impl Read + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line from [`async_lines`], or a panic after `timeout`.
pub async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    timeout: Duration,
) -> String {
    tokio::time::timeout(timeout, lines.recv())
        .await
        .expect("timed out waiting for a line")
        .expect("the process closed its output")
}

/// The workspace's `../shared` directory (Porch fixtures and docs).
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}
