//! Real `nats-server` processes: one server ([`NatsServer`]) or a cluster
//! of three routed on loopback ([`NatsCluster`]), each built from a
//! [`NatsServerConfig`] (accounts and users for auth) with JetStream in a
//! temp directory.
//!
//! Decisions:
//! - Ports are picked by the server (`-1` in the config) and read back from
//!   its log, never probed beforehand (a probed port can be taken by another
//!   test meanwhile). Only a restart reuses the ports a server had.
//! - A cluster is started seed-first: the first server listens for routes on
//!   a port of its choosing (its config names a placeholder route,
//!   `127.0.0.1:1`, because a JetStream cluster refuses to start without
//!   one; nothing listens there and the server just keeps retrying it); the
//!   other two route to it and learn each other by gossip.
//! - Readiness is read, never guessed: "Server is ready" (and "Listening
//!   for route connections") in the log, then — for a cluster — each
//!   server's monitoring port: `/routez` shows the two other servers and
//!   `/jsz` a JetStream meta leader whose peers are all current.
//! - Every process is SIGKILLed and reaped on drop, also while a test
//!   panics. A server spawns no children of its own, so it stays in the
//!   test's process group: when nextest kills a test that timed out, it
//!   kills the test's group and the servers with it.
//! - The configuration syntax is that of nats-server 2.9 (Debian 12's),
//!   which later releases accept too.
//! - It lives in the `cairn` library, not in the test harness, because the
//!   cluster benchmarks (`cairn bench cluster-…`) run the same cluster; the
//!   harness re-exports it. `start`/`with_config` panic with the reason (what
//!   a test wants); the benchmarks use [`NatsCluster::try_start`].

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;

/// How long a server may take to say it is ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a cluster may take to route and elect a JetStream meta leader.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take before the server is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines kept for error messages.
const LOG_LINES_MAX: usize = 60;

/// What a server runs with: JetStream (always on) and its directory,
/// accounts with users, exports and imports.
#[derive(Debug, Clone, Default)]
pub struct NatsServerConfig {
    /// Accounts; none: no authentication.
    pub accounts: Vec<Account>,
    /// The JetStream directory (`store_dir`; the server keeps its data in
    /// `<store_dir>/jetstream`). Default: a temp directory. A node's own
    /// server uses `<data-dir>/nats`; pointing a server there reads what
    /// the node published. Ignored by [`NatsCluster`].
    pub store_dir: Option<PathBuf>,
    /// The largest message the server takes, in bytes (`max_payload`).
    /// Default: the server's (1 MiB).
    pub max_payload_bytes: Option<usize>,
}

impl NatsServerConfig {
    /// No authentication.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an account.
    pub fn account(mut self, account: Account) -> Self {
        self.accounts.push(account);
        self
    }

    /// JetStream data in `dir` rather than a temp directory.
    pub fn store_dir(mut self, dir: &Path) -> Self {
        self.store_dir = Some(dir.to_path_buf());
        self
    }

    /// Messages of up to `bytes` (`max_payload`) rather than 1 MiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = Some(bytes);
        self
    }
}

/// A NATS account: users, service exports and imports, JetStream.
#[derive(Debug, Clone)]
pub struct Account {
    /// Its name.
    pub name: String,
    /// Whether it may use JetStream.
    pub jetstream: bool,
    /// `(user, password)`.
    pub users: Vec<(String, String)>,
    /// Subjects exported as services.
    pub service_exports: Vec<String>,
    /// `(from account, subject, share)`: services imported, `share` passing
    /// the requester's identity on (`Nats-Request-Info`).
    pub service_imports: Vec<(String, String, bool)>,
}

impl Account {
    /// An account without users, exports, imports or JetStream.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            jetstream: false,
            users: Vec::new(),
            service_exports: Vec::new(),
            service_imports: Vec::new(),
        }
    }

    /// Lets the account use JetStream.
    pub fn jetstream(mut self) -> Self {
        self.jetstream = true;
        self
    }

    /// Adds a user.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.users.push((user.to_owned(), password.to_owned()));
        self
    }

    /// Exports `subject` as a service.
    pub fn export_service(mut self, subject: &str) -> Self {
        self.service_exports.push(subject.to_owned());
        self
    }

    /// Imports service `subject` from `account`; `share`: with the
    /// requester's identity.
    pub fn import_service(mut self, account: &str, subject: &str, share: bool) -> Self {
        self.service_imports
            .push((account.to_owned(), subject.to_owned(), share));
        self
    }
}

/// A string as a config-file literal (quoted, escaped).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

impl NatsServerConfig {
    fn render_accounts(&self, out: &mut String) {
        if self.accounts.is_empty() {
            return;
        }
        out.push_str("accounts {\n");
        for a in &self.accounts {
            let _ = writeln!(out, "  {}: {{", quoted(&a.name));
            if a.jetstream {
                out.push_str("    jetstream: enabled\n");
            }
            let users: Vec<String> = a
                .users
                .iter()
                .map(|(u, p)| format!("{{user: {}, password: {}}}", quoted(u), quoted(p)))
                .collect();
            let _ = writeln!(out, "    users: [{}]", users.join(", "));
            let exports: Vec<String> = a
                .service_exports
                .iter()
                .map(|s| format!("{{service: {}}}", quoted(s)))
                .collect();
            if !exports.is_empty() {
                let _ = writeln!(out, "    exports: [{}]", exports.join(", "));
            }
            let imports: Vec<String> = a
                .service_imports
                .iter()
                .map(|(from, subject, share)| {
                    format!(
                        "{{service: {{account: {}, subject: {}}}, share: {share}}}",
                        quoted(from),
                        quoted(subject)
                    )
                })
                .collect();
            if !imports.is_empty() {
                let _ = writeln!(out, "    imports: [{}]", imports.join(", "));
            }
            out.push_str("  }\n");
        }
        out.push_str("}\n");
    }
}

/// Ports a server listens on (`None`: let it choose).
#[derive(Debug, Clone, Copy, Default)]
struct Ports {
    client: Option<u16>,
    cluster: Option<u16>,
    monitor: Option<u16>,
}

/// The cluster part of one server's config.
#[derive(Debug, Clone)]
struct ClusterPart {
    name: String,
    routes: Vec<u16>,
}

/// Everything needed to (re)start one server process.
#[derive(Debug, Clone)]
struct Spec {
    server_name: String,
    config: NatsServerConfig,
    store_dir: PathBuf,
    conf_path: PathBuf,
    cluster: Option<ClusterPart>,
}

fn port_or_any(port: Option<u16>) -> String {
    port.map_or_else(|| "-1".to_owned(), |p| p.to_string())
}

impl Spec {
    fn render(&self, ports: Ports) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "server_name: {}", quoted(&self.server_name));
        let _ = writeln!(out, "listen: \"127.0.0.1:{}\"", port_or_any(ports.client));
        let _ = writeln!(out, "http: \"127.0.0.1:{}\"", port_or_any(ports.monitor));
        let _ = writeln!(
            out,
            "jetstream {{ store_dir: {} }}",
            quoted(&self.store_dir.display().to_string())
        );
        if let Some(bytes) = self.config.max_payload_bytes {
            let _ = writeln!(out, "max_payload: {bytes}");
        }
        self.config.render_accounts(&mut out);
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            let _ = writeln!(
                out,
                "cluster {{\n  name: {}\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}",
                quoted(&cluster.name),
                port_or_any(ports.cluster),
                routes.join(", ")
            );
        }
        out
    }
}

/// One running `nats-server -c <conf>` child.
#[derive(Debug)]
struct Process {
    child: Child,
    client: SocketAddr,
    cluster: Option<SocketAddr>,
    monitor: SocketAddr,
    log: mpsc::Receiver<String>,
}

/// The address after `marker` in a log line.
fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    rest.trim().trim_start_matches("http://").parse().ok()
}

impl Process {
    fn start(spec: &Spec, ports: Ports) -> Result<Process, String> {
        std::fs::create_dir_all(&spec.store_dir).map_err(|e| e.to_string())?;
        std::fs::write(&spec.conf_path, spec.render(ports)).map_err(|e| e.to_string())?;
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&spec.conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!("cannot run nats-server ({e}); install it: apt-get install nats-server")
            })?;
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            // Drains the pipe for the server's whole life, so it never
            // blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut process = Process {
            child,
            client: "0.0.0.0:0".parse().expect("address"),
            cluster: None,
            monitor: "0.0.0.0:0".parse().expect("address"),
            log,
        };
        match process.read_ready(spec.cluster.is_some()) {
            Ok(()) => Ok(process),
            Err(e) => {
                process.kill();
                Err(format!(
                    "nats-server {} did not start: {e}\nits config:\n{}",
                    spec.server_name,
                    spec.render(ports)
                ))
            }
        }
    }

    /// Reads the log until the server is ready (and, in a cluster, listens
    /// for routes); takes the ports from it.
    fn read_ready(&mut self, clustered: bool) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen: Vec<String> = Vec::new();
        let (mut client, mut cluster, mut monitor, mut ready) = (None, None, None, false);
        while !(ready && client.is_some() && monitor.is_some() && (!clustered || cluster.is_some()))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.log.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "not ready after {START_TIMEOUT:?}; its log:\n{}",
                        seen.join("\n")
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("it exited; its log:\n{}", seen.join("\n")))
                }
            };
            client = client.or(addr_after(&line, "Listening for client connections on "));
            cluster = cluster.or(addr_after(&line, "Listening for route connections on "));
            monitor = monitor.or(addr_after(&line, "Starting http monitor on "));
            ready |= line.contains("Server is ready");
            seen.push(line);
            if seen.len() > LOG_LINES_MAX {
                seen.remove(0);
            }
        }
        self.client = client.expect("checked above");
        self.cluster = cluster;
        self.monitor = monitor.expect("checked above");
        Ok(())
    }

    /// The ports a restart keeps: the client's and the routes' (what
    /// clients and the other servers know); the monitoring port is picked
    /// anew.
    fn ports(&self) -> Ports {
        Ports {
            client: Some(self.client.port()),
            cluster: self.cluster.map(|a| a.port()),
            monitor: None,
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; reaps the child.
    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        if kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).is_ok() {
            // Waiting for the child to exit: nothing announces it but the
            // exit itself, so poll try_wait (bounded).
            let done = wait_until_blocking(STOP_TIMEOUT, || {
                if self.running() {
                    Err("still running".to_owned())
                } else {
                    Ok(())
                }
            });
            if done.is_ok() {
                return;
            }
        }
        self.kill();
    }

    /// SIGKILL, as a crash would; reaps the child.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GETs `path` from the monitoring port; the JSON body.
    fn monitor(&self, path: &str) -> Result<Value, String> {
        let mut stream = TcpStream::connect_timeout(&self.monitor, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| e.to_string())?;
        let (_, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP body in {response:?}"))?;
        serde_json::from_str(body).map_err(|e| format!("{path}: {e}: {body}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real nats-server with JetStream on a port of its choosing; killed on
/// drop.
#[derive(Debug)]
pub struct NatsServer {
    spec: Spec,
    process: Process,
    // Last: the directory goes after the process that writes into it.
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// A server without authentication.
    pub fn start() -> Self {
        Self::with_config(NatsServerConfig::default())
    }

    /// A server with `config`.
    pub fn with_config(config: NatsServerConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = Spec {
            server_name: "test".to_owned(),
            store_dir: config
                .store_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("jetstream")),
            config,
            conf_path: dir.path().join("nats.conf"),
            cluster: None,
        };
        let process = Process::start(&spec, Ports::default()).unwrap_or_else(|e| panic!("{e}"));
        Self {
            spec,
            process,
            _dir: dir,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.process.client)
    }

    /// `nats://user:password@127.0.0.1:<port>`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@{}", self.process.client)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.process.client
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.spec.store_dir
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again on the same ports and JetStream directory.
    pub fn restart(&mut self) {
        self.process.stop();
        let ports = self.process.ports();
        self.process = Process::start(&self.spec, ports).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Three nats-servers routed into one cluster on loopback, with clustered
/// JetStream; every server is killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    specs: Vec<Spec>,
    processes: Vec<Option<Process>>,
    /// Ports of killed servers, for their restart.
    stopped_ports: Vec<Option<Ports>>,
    // Last: the directories go after the processes.
    _dir: tempfile::TempDir,
}

/// Servers in a [`NatsCluster`].
pub const CLUSTER_SIZE: usize = 3;

impl NatsCluster {
    /// A cluster without authentication, ready (see [`Self::wait_ready`]).
    pub fn start() -> Self {
        Self::with_config(NatsServerConfig::default())
    }

    /// A cluster whose servers all run with `config`, ready.
    pub fn with_config(config: NatsServerConfig) -> Self {
        Self::try_start(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::with_config`], answering why the cluster did not start.
    pub fn try_start(config: NatsServerConfig) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let spec = |i: usize, routes: Vec<u16>| Spec {
            server_name: format!("n{}", i + 1),
            config: config.clone(),
            store_dir: dir.path().join(format!("n{}", i + 1)).join("jetstream"),
            conf_path: dir.path().join(format!("n{}.conf", i + 1)),
            cluster: Some(ClusterPart {
                name: "cairn-test".to_owned(),
                routes,
            }),
        };
        // The seed: a placeholder route (see the module docs).
        let seed_spec = spec(0, vec![1]);
        let seed = Process::start(&seed_spec, Ports::default())?;
        let seed_port = seed
            .cluster
            .ok_or("the seed server does not listen for routes")?
            .port();
        let mut specs = vec![seed_spec];
        let mut processes = vec![Some(seed)];
        for i in 1..CLUSTER_SIZE {
            let s = spec(i, vec![seed_port]);
            processes.push(Some(Process::start(&s, Ports::default())?));
            specs.push(s);
        }
        // From now on every server routes to the two others (used by
        // restarts, which keep each server's ports).
        let cluster_ports: Vec<u16> = processes
            .iter()
            .map(|p| {
                p.as_ref()
                    .and_then(|p| p.cluster)
                    .expect("cluster port")
                    .port()
            })
            .collect();
        for (i, s) in specs.iter_mut().enumerate() {
            if let Some(c) = s.cluster.as_mut() {
                c.routes = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| *p)
                    .collect();
            }
        }
        let cluster = Self {
            specs,
            processes,
            stopped_ports: vec![None; CLUSTER_SIZE],
            _dir: dir,
        };
        cluster
            .wait_ready(CLUSTER_TIMEOUT)
            .map_err(|e| format!("the nats cluster did not form: {e}"))?;
        Ok(cluster)
    }

    fn process(&self, i: usize) -> &Process {
        self.processes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("server {i} is stopped"))
    }

    /// `nats://127.0.0.1:<port>` of server `i` (0, 1 or 2).
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}", self.process(i).client)
    }

    /// The URLs of the running servers, comma-separated (what
    /// `async_nats::connect` and `nats.urls` take).
    pub fn urls(&self) -> String {
        self.processes
            .iter()
            .flatten()
            .map(|p| format!("nats://{}", p.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Process ids of the running servers.
    pub fn pids(&self) -> Vec<u32> {
        self.processes
            .iter()
            .flatten()
            .map(|p| p.child.id())
            .collect()
    }

    /// Server `i`'s name (`n1`, `n2`, `n3`).
    pub fn server_name(&self, i: usize) -> &str {
        &self.specs[i].server_name
    }

    /// Waits until every running server routes to all the others and
    /// JetStream has a meta leader whose peers are all current; on timeout
    /// the error says what was last seen.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let running: Vec<&Process> = self.processes.iter().flatten().collect();
        let want_routes = running.len().saturating_sub(1);
        wait_until_blocking(timeout, || {
            let mut leader = None;
            for p in &running {
                let routez = p.monitor("/routez")?;
                let routes = routez["num_routes"].as_u64().unwrap_or(0) as usize;
                if routes < want_routes {
                    return Err(format!(
                        "{} has {routes} routes, want {want_routes}",
                        p.client
                    ));
                }
                let jsz = p.monitor("/jsz")?;
                let meta = &jsz["meta_cluster"];
                match meta["leader"].as_str() {
                    Some(l) if !l.is_empty() => leader = Some(l.to_owned()),
                    _ => return Err(format!("{} knows no meta leader: {meta}", p.client)),
                }
            }
            let leader = leader.ok_or("no server running")?;
            let index = self
                .specs
                .iter()
                .position(|s| s.server_name == leader)
                .ok_or_else(|| format!("unknown leader {leader}"))?;
            let process = self.processes[index]
                .as_ref()
                .ok_or_else(|| format!("leader {leader} is stopped"))?;
            let jsz = process.monitor("/jsz")?;
            let replicas = jsz["meta_cluster"]["replicas"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let current = replicas
                .iter()
                .filter(|r| r["current"] == Value::Bool(true) && r["offline"] != Value::Bool(true))
                .count();
            if current < running.len() - 1 {
                return Err(format!(
                    "leader {leader} sees {current} current peers: {}",
                    jsz["meta_cluster"]
                ));
            }
            Ok(())
        })
    }

    /// Kills server `i` (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.processes[i].take() {
            p.kill();
            self.stopped_ports[i] = Some(p.ports());
        }
    }

    /// Starts server `i` again, after [`Self::kill`], on its former ports
    /// and JetStream directory, routed to the two others.
    pub fn restart(&mut self, i: usize) {
        let ports = self.stopped_ports[i]
            .take()
            .unwrap_or_else(|| panic!("server {i} is running"));
        self.processes[i] =
            Some(Process::start(&self.specs[i], ports).unwrap_or_else(|e| panic!("{e}")));
    }
}

/// Polls `check` (pauses doubling from 5 ms to 200 ms) until it holds or
/// `timeout` passed; on timeout the last observation is the error. For
/// code without a runtime (process start-up, HTTP monitoring); the test
/// harness re-exports it.
pub fn wait_until_blocking<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let last = match check() {
            Ok(value) => return Ok(value),
            Err(observed) => observed,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
