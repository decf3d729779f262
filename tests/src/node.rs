//! cairn nodes under test: [`TestNode`] runs one in-process (the `cairn`
//! crate's own wiring, `cairn::node::Node`), [`ChildNode`] as a child
//! process (`cairn-under-test node`). Both keep their data directory when
//! the test fails ([`TestDir`]).
//!
//! Decisions:
//! - A node starts its own nats-server on a port that server picks
//!   (`nats.listen = 127.0.0.1:0`) unless the test points it at one
//!   (`nats.urls`, e.g. a [`crate::NatsServer`] with accounts).
//! - A test ends a node with [`TestNode::shutdown`] (graceful, as SIGTERM
//!   would) or [`TestNode::stop`] (the same, keeping its configuration and
//!   data directory to start it again). A node dropped without either — a
//!   test that panicked — is torn down by `Node`'s own drop, which stops
//!   its nats-server.

use std::{
    ops::Deref,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use cairn::{
    config::{NatsConfig, NodeConfig},
    node::Node,
};
use cairn_actors::schedule::Clock;
use cairn_storage::Store;
use nix::sys::signal::Signal;

use crate::{
    client::Client,
    process::{read_line_matching, ChildGuard, Cli},
    wait::WAIT,
};

/// A temp directory kept (and its path printed) when the test that owns it
/// fails, so its node data, upstreams and logs can be inspected.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// A fresh directory.
    pub fn new() -> Self {
        Self {
            dir: Some(tempfile::tempdir().expect("temp dir")),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }

    /// `path/child`.
    pub fn join(&self, child: impl AsRef<Path>) -> PathBuf {
        self.path().join(child)
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!("test failed: its files are kept in {}", path.display());
            }
        }
    }
}

/// How to start a [`TestNode`]: a [`NodeConfig`] (its own nats-server on a
/// port of the server's choosing, unless configured otherwise), a clock,
/// and a data directory.
#[derive(Debug)]
pub struct TestNodeBuilder {
    config: NodeConfig,
    clock: Option<Arc<dyn Clock>>,
    /// The data directory when the builder owns it.
    owned: Option<TestDir>,
}

impl TestNodeBuilder {
    /// Defaults, with data in a fresh [`TestDir`].
    pub fn new() -> Self {
        let owned = TestDir::new();
        let mut builder = Self::in_dir(owned.path());
        builder.owned = Some(owned);
        builder
    }

    /// Defaults, with data in `data_dir` (the test keeps it, e.g. to start
    /// another node on it or to seed it beforehand).
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            config: NodeConfig {
                data_dir: data_dir.to_path_buf(),
                nats: NatsConfig {
                    listen: "127.0.0.1:0".to_owned(),
                    ..Default::default()
                },
                http: cairn::config::HttpSection {
                    listen: "127.0.0.1:0".to_owned(),
                },
                ..Default::default()
            },
            clock: None,
            owned: None,
        }
    }

    /// Changes the configuration.
    pub fn configure(mut self, change: impl FnOnce(&mut NodeConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// The sync managers follow `clock` (e.g. a `ManualClock`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The configuration as it stands.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Starts the node (inside an actix system); fails the test when it
    /// does not start.
    pub async fn start(self) -> TestNode {
        let started = match &self.clock {
            Some(clock) => Node::start_with_clock(self.config.clone(), clock.clone()).await,
            None => Node::start(self.config.clone()).await,
        };
        let node = started.unwrap_or_else(|e| {
            panic!(
                "the node on {} did not start: {e:#}",
                self.config.data_dir.display()
            )
        });
        let client = Client::new(node.client.clone());
        TestNode {
            node: Some(node),
            client,
            builder: Some(self),
        }
    }
}

impl Default for TestNodeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A cairn node running in this process, with a [`Client`] on its
/// connection. Derefs to [`Node`] for its store, actors and NATS URL (its
/// `client` field is the raw connection: use [`TestNode::client`]).
#[derive(Debug)]
pub struct TestNode {
    node: Option<Node>,
    client: Client,
    builder: Option<TestNodeBuilder>,
}

impl TestNode {
    /// A node with the defaults and a fresh data directory.
    pub async fn start() -> Self {
        TestNodeBuilder::new().start().await
    }

    /// How to start one otherwise.
    pub fn builder() -> TestNodeBuilder {
        TestNodeBuilder::new()
    }

    /// The typed client on the node's own connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The node.
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("running until shut down")
    }

    /// Its store.
    pub fn store(&self) -> &Store {
        &self.node().store
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.builder.as_ref().expect("present").config.data_dir
    }

    /// Stops the node gracefully.
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// Stops the node gracefully; what it was started with, to start it
    /// again on the same data.
    pub async fn stop(mut self) -> TestNodeBuilder {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
        self.builder.take().expect("present")
    }
}

impl Deref for TestNode {
    type Target = Node;

    fn deref(&self) -> &Node {
        self.node()
    }
}

/// A `cairn node` child process (the real binary), killed with its
/// nats-server on drop.
#[derive(Debug)]
pub struct ChildNode {
    guard: ChildGuard,
    url: String,
    ready: String,
    /// The rest of its standard output (kept open: a node must not find
    /// its stdout closed).
    _stdout: std::sync::mpsc::Receiver<String>,
}

/// The line a node prints once it serves: `cairn node ready: NATS <url> …`.
pub const READY_PREFIX: &str = "cairn node ready: NATS ";

/// The environment variable that makes a `cairn-under-test` node kill
/// itself (SIGKILL, as `kill -9` would) right after the N-th chunk of a
/// sync committed: `N` in decimal. For crash tests of chunked syncs.
pub const KILL_AFTER_SYNC_CHUNKS: &str = "CAIRN_TEST_KILL_AFTER_SYNC_CHUNKS";

impl ChildNode {
    /// A command for `cairn node --data-dir <data_dir> <args>`: no NATS URL
    /// from the environment, warnings only, output piped.
    pub fn command(cli: &Cli, data_dir: &Path, args: &[&str]) -> Command {
        let mut command = cli.command();
        command
            .args(["node", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("CAIRN_NATS__URLS")
            // A port of the system's choosing: tests run side by side.
            .env("CAIRN_HTTP__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts `cairn node` on `data_dir` with its own nats-server on a
    /// port that server picks, and waits (bounded) for its ready line.
    pub fn start(cli: &Cli, data_dir: &Path) -> Self {
        Self::start_with(cli, data_dir, &["--nats-listen", "127.0.0.1:0"])
    }

    /// [`Self::start`] with other arguments.
    pub fn start_with(cli: &Cli, data_dir: &Path, args: &[&str]) -> Self {
        Self::start_with_env(cli, data_dir, args, &[])
    }

    /// [`Self::start_with`] with environment variables set for the node
    /// (configuration as `CAIRN_…`, or a test hook of `cairn-under-test`
    /// such as [`KILL_AFTER_SYNC_CHUNKS`]).
    pub fn start_with_env(cli: &Cli, data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Self::command(cli, data_dir, args);
        command.envs(env.iter().copied());
        Self::start_command(command)
    }

    /// Starts `cairn node` as cluster node `node_id` on the NATS at `url`
    /// (a server of a [`crate::NatsCluster`]), with `env` besides, and
    /// waits (bounded) for its ready line — printed once it caught up with
    /// the cluster's log and joined.
    pub fn start_in_cluster(
        cli: &Cli,
        data_dir: &Path,
        url: &str,
        node_id: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Self::command(cli, data_dir, &[]);
        command
            .env("CAIRN_NATS__URLS", url)
            .env("CAIRN_CLUSTER__ENABLED", "true")
            .env("CAIRN_CLUSTER__NODE_ID", node_id)
            .envs(env.iter().copied());
        Self::start_command(command)
    }

    /// Starts `command` (from [`Self::command`], e.g. with more
    /// environment) and waits (bounded) for its ready line.
    pub fn start_command(mut command: Command) -> Self {
        // Its log goes where the test's output goes.
        let mut guard = ChildGuard::spawn(command.stderr(Stdio::inherit()));
        let stdout = guard.0.stdout.take().expect("stdout is piped");
        let (ready, rest) = read_line_matching(stdout, WAIT, |l| l.starts_with(READY_PREFIX))
            .unwrap_or_else(|e| panic!("the node did not say it was ready: {e}"));
        let url = ready[READY_PREFIX.len()..]
            .split_whitespace()
            .next()
            .expect("a URL after the prefix")
            .to_owned();
        Self {
            guard,
            url,
            ready,
            _stdout: rest,
        }
    }

    /// The NATS URL from its ready line.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its ready line.
    pub fn ready_line(&self) -> &str {
        &self.ready
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.guard.id()
    }

    /// Pids of the processes it started (its nats-server).
    pub fn children(&self) -> Vec<u32> {
        crate::process::descendants(self.id())
    }

    /// Sends `signal` to the node (SIGSTOP/SIGCONT to pause and resume it).
    pub fn signal(&self, signal: Signal) {
        self.guard.signal(signal);
    }

    /// SIGKILL of the node alone, as a crash would: what it started is
    /// left to fend for itself. Reaps it; its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        self.guard.signal(Signal::SIGKILL);
        self.guard.wait_timeout(WAIT)
    }

    /// SIGTERM, then its exit status (bounded by `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.guard.signal(Signal::SIGTERM);
        self.guard.wait_timeout(timeout)
    }

    /// Waits (bounded by `timeout`) for the node to exit by itself — a
    /// crash a test provoked — and kills what it started (its nats-server,
    /// which a node that died without shutting down leaves behind), so
    /// another node can start on its data directory. Its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let below = self.children();
        let status = self.guard.wait_timeout(timeout);
        for pid in below {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_dir_is_kept_when_its_test_panics_and_removed_otherwise() {
        let kept = std::panic::catch_unwind(|| {
            let dir = TestDir::new();
            std::fs::write(dir.join("log"), "what happened").unwrap();
            panic!("{}", dir.path().display());
        })
        .unwrap_err()
        .downcast::<String>()
        .unwrap();
        let kept = PathBuf::from(*kept);
        assert_eq!(
            std::fs::read_to_string(kept.join("log")).unwrap(),
            "what happened"
        );
        std::fs::remove_dir_all(&kept).unwrap();

        let dir = TestDir::new();
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }
}
