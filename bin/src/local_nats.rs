//! A local `nats-server -js` child process.
//!
//! Used by a node with no NATS URL configured, by the benchmarks, and by the
//! test harness. Readiness is read from the server's own log ("Server is
//! ready"), not guessed with sleeps; the client port is taken from its
//! "Listening for client connections on …" line, so port 0 (any free port)
//! works. The child is stopped (SIGTERM, then SIGKILL) on drop.
//!
//! # The server dies with its node
//! A node killed with SIGKILL runs no destructor, and its nats-server used
//! to outlive it, holding the port, so the node could not start again
//! (`nats.listen … is already in use`). Two things prevent that:
//! - **`PR_SET_PDEATHSIG`**: the child is spawned with SIGTERM as its
//!   parent-death signal, so the kernel stops it when its parent dies.
//!   The kernel's "parent" is the *thread* that forked, not the process:
//!   the child is spawned from a thread of its own (`Spawner`) that lives
//!   exactly as long as the server (a `spawn_blocking` thread would retire
//!   after 10 s idle and take the server with it). SIGTERM rather than
//!   SIGKILL lets the server close its JetStream files; the pid file below
//!   escalates when it lingers. Setting it needs `pre_exec`, the one
//!   `unsafe` block of the workspace (see its SAFETY note).
//! - **A pid file**, `<store_dir>/nats-server.pid` (the node's
//!   `<data-dir>/nats/nats-server.pid`), written at spawn and removed at
//!   stop. At start, a pid file naming a live process whose command line
//!   is this binary serving this very store directory (`-sd <dir>`, the
//!   directory canonicalised) is a server left by an earlier run: it gets
//!   SIGTERM, SIGKILL after [`RECLAIM_TERM_TIMEOUT`], and the start waits
//!   (at most [`RECLAIM_KILL_TIMEOUT`] more) until it is gone. The node
//!   opens its store before this, and the store is locked by a live node,
//!   so a server found this way has no live node behind it. A pid file
//!   naming any other process is stale (the pid was reused) and is only
//!   replaced. Nothing announces the exit of a process that is not our
//!   child (it belongs to init), so the wait polls `/proc` every
//!   [`RECLAIM_POLL`], bounded.
//!
//! `/proc/<pid>/cmdline` and `/proc/<pid>/stat` are read by hand (two
//! reads and a split); a `/proc` crate would add a dependency tree for
//! that.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::{
        prctl,
        signal::{kill, Signal},
    },
    unistd::{getpid, getppid, Pid},
};
use tracing::{debug, info, warn};

/// The pid file's name, in the server's store directory.
pub const PID_FILE: &str = "nats-server.pid";
/// How long a leftover server gets to stop after SIGTERM.
pub const RECLAIM_TERM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leftover server gets to vanish after SIGKILL.
pub const RECLAIM_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two looks at a leftover server.
pub const RECLAIM_POLL: Duration = Duration::from_millis(10);

/// How long a starting server may take to say it is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    /// The program is missing. Install nats-server (Debian: `apt-get install
    /// nats-server`) or configure `nats.urls`.
    #[error("cannot run {binary:?}: not found; install nats-server (apt-get install nats-server) or set nats.urls to an existing server")]
    NotInstalled {
        /// What was run.
        binary: String,
    },
    /// Something already listens on the address.
    #[error("nats.listen {addr} is already in use; stop what listens there, choose another nats.listen, or set nats.urls to use that server")]
    PortInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// The server exited or did not become ready in time.
    #[error("nats-server did not start: {reason}; its last output:\n{output}")]
    Failed {
        /// What happened.
        reason: String,
        /// The last lines it printed.
        output: String,
    },
    /// A server left by an earlier run on the same store directory (named
    /// by its pid file) survived SIGTERM and SIGKILL. Stop that process,
    /// then start again.
    #[error("nats-server {pid} left by an earlier run on {store_dir} did not stop within {waited_ms} ms; stop it, then start again")]
    Leftover {
        /// Its process id.
        pid: i32,
        /// The store directory both use.
        store_dir: PathBuf,
        /// How long it was given.
        waited_ms: u64,
    },
    /// Spawning or I/O failed.
    #[error("nats-server: {0}")]
    Io(#[from] std::io::Error),
}

/// The thread a server was spawned from, kept alive (parked on a channel)
/// for as long as the server runs: `PR_SET_PDEATHSIG` fires when the
/// thread that forked the child exits (see the module docs). Dropping it
/// ends the thread.
#[derive(Debug)]
pub(crate) struct Spawner {
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Spawns `command` from a new thread; the child gets SIGTERM when
    /// that thread (or the whole process) dies.
    pub(crate) fn spawn(mut command: Command) -> std::io::Result<(Self, Child)> {
        let parent = getpid();
        // SAFETY: the closure runs in the forked child before exec, where
        // only async-signal-safe calls are allowed: it makes two system
        // calls (prctl, getppid) and builds an io::Error from an errno,
        // which does not allocate. It touches no lock and no memory of the
        // parent.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                prctl::set_pdeathsig(Signal::SIGTERM)?;
                // The parent died before the signal was armed: nobody
                // would stop this server.
                if getppid() != parent {
                    return Err(Errno::ESRCH.into());
                }
                Ok(())
            });
        }
        let (child_tx, child_rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("nats-server-parent".into())
            .spawn(move || {
                let spawned = command.spawn();
                let running = spawned.is_ok();
                if child_tx.send(spawned).is_ok() && running {
                    // Until the server is stopped (or the node dies).
                    let _ = released.recv();
                }
            })?;
        let child = child_rx
            .recv()
            .map_err(|_| std::io::Error::other("the nats-server spawning thread ended"))??;
        Ok((
            Self {
                release: Some(release),
                thread: Some(thread),
            },
            child,
        ))
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`…); `None` when
/// there is no such process.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state …"; comm may hold spaces and parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether `pid` runs (a zombie has exited: it only waits to be reaped).
fn is_running(pid: i32) -> bool {
    matches!(process_state(pid), Some(state) if state != 'Z' && state != 'X')
}

/// Whether `pid` is `binary` (compared by file name) serving `store_dir`
/// (`-sd <store_dir>` on its command line).
fn serves_store(pid: i32, binary: &str, store_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&OsStr> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(OsStr::from_bytes)
        .collect();
    let program = args.first().and_then(|a| Path::new(a).file_name());
    program.is_some()
        && program == Path::new(binary).file_name()
        && args
            .windows(2)
            .any(|w| w[0] == "-sd" && Path::new(w[1]) == store_dir)
}

/// Waits until `pid` no longer runs, at most `timeout`.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_running(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(RECLAIM_POLL);
    }
}

/// Stops the server a pid file in `store_dir` names, if it is a live
/// `binary` serving that directory (see the module docs); removes the
/// pid file.
fn reclaim(binary: &str, store_dir: &Path) -> Result<(), LocalNatsError> {
    let pid_file = store_dir.join(PID_FILE);
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let pid = text.trim().parse::<i32>().ok().filter(|p| *p > 0);
    match pid {
        Some(pid) if is_running(pid) && serves_store(pid, binary, store_dir) => {
            warn!(pid, store = %store_dir.display(), "a nats-server left by an earlier run still serves this data directory; stopping it");
            let target = Pid::from_raw(pid);
            let _ = kill(target, Signal::SIGTERM);
            if !wait_gone(pid, RECLAIM_TERM_TIMEOUT) {
                warn!(pid, "the leftover nats-server ignored SIGTERM; killing it");
                let _ = kill(target, Signal::SIGKILL);
                if !wait_gone(pid, RECLAIM_KILL_TIMEOUT) {
                    return Err(LocalNatsError::Leftover {
                        pid,
                        store_dir: store_dir.to_path_buf(),
                        waited_ms: (RECLAIM_TERM_TIMEOUT + RECLAIM_KILL_TIMEOUT).as_millis() as u64,
                    });
                }
            }
            info!(pid, "leftover nats-server stopped");
        }
        _ => {
            debug!(file = %pid_file.display(), content = %text.trim(), "stale nats-server pid file")
        }
    }
    std::fs::remove_file(&pid_file)?;
    Ok(())
}

/// Writes `pid` to `store_dir`'s pid file (a temp file renamed over it, so
/// a reader never sees half of it).
fn write_pid_file(store_dir: &Path, pid: u32) -> std::io::Result<()> {
    let tmp = store_dir.join(format!("{PID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, store_dir.join(PID_FILE))
}

/// Removes `store_dir`'s pid file if it still names `pid`.
fn remove_pid_file(store_dir: &Path, pid: u32) {
    let path = store_dir.join(PID_FILE);
    let named = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    if named == Some(pid) {
        if let Err(e) = std::fs::remove_file(&path) {
            warn!(file = %path.display(), error = %e, "cannot remove the nats-server pid file");
        }
    }
}

/// A running `nats-server -js` child.
#[derive(Debug)]
pub struct LocalNatsServer {
    child: Child,
    addr: SocketAddr,
    binary: String,
    store_dir: PathBuf,
    // Dropped after `Drop::drop` reaped the child (fields drop after it).
    _spawner: Spawner,
}

impl LocalNatsServer {
    /// Starts `binary -js` listening on `listen` (port 0: any free port)
    /// with its JetStream data in `store_dir`, and waits until it is ready;
    /// first stops a server an earlier run left on `store_dir` (see the
    /// module docs).
    pub fn start(
        binary: &str,
        listen: SocketAddr,
        store_dir: &Path,
    ) -> Result<Self, LocalNatsError> {
        std::fs::create_dir_all(store_dir)?;
        // Absolute, so that the command line identifies the directory
        // whatever the working directory of the next run.
        let store_dir = &store_dir.canonicalize()?;
        reclaim(binary, store_dir)?;
        if listen.port() != 0 {
            match TcpListener::bind(listen) {
                Ok(probe) => drop(probe),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(LocalNatsError::PortInUse { addr: listen })
                }
                Err(e) => return Err(e.into()),
            }
        }
        let port = if listen.port() == 0 {
            "-1".to_owned()
        } else {
            listen.port().to_string()
        };
        let mut command = Command::new(binary);
        command
            .args(["-js", "-a", &listen.ip().to_string(), "-p", &port, "-sd"])
            .arg(store_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (spawner, mut child) = Spawner::spawn(command).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LocalNatsError::NotInstalled {
                binary: binary.to_owned(),
            },
            _ => LocalNatsError::Io(e),
        })?;
        if let Err(e) = write_pid_file(store_dir, child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("nats-server-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    debug!(target: "nats_server", "{line}");
                    // After start-up nobody listens; keep draining the pipe.
                    let _ = tx.send(line);
                }
            })?;

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut output: Vec<String> = Vec::new();
        let mut addr = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                        addr = rest.trim().parse::<SocketAddr>().ok();
                    }
                    let ready = line.contains("Server is ready");
                    output.push(line);
                    if output.len() > 40 {
                        output.remove(0);
                    }
                    if ready {
                        break;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    remove_pid_file(store_dir, child.id());
                    let reason = match e {
                        mpsc::RecvTimeoutError::Timeout => {
                            format!("not ready after {}s", READY_TIMEOUT.as_secs())
                        }
                        mpsc::RecvTimeoutError::Disconnected => "it exited".to_owned(),
                    };
                    return Err(LocalNatsError::Failed {
                        reason,
                        output: output.join("\n"),
                    });
                }
            }
        }
        let Some(mut addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            remove_pid_file(store_dir, child.id());
            return Err(LocalNatsError::Failed {
                reason: "no client port in its log".into(),
                output: output.join("\n"),
            });
        };
        if addr.ip().is_unspecified() {
            addr.set_ip(listen.ip());
        }
        info!(%addr, pid = child.id(), store = %store_dir.display(), "local nats-server started");
        Ok(Self {
            child,
            addr,
            binary: binary.to_owned(),
            store_dir: store_dir.to_path_buf(),
            _spawner: spawner,
        })
    }

    /// The client URL, `nats://ip:port`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The JetStream store directory (canonical), where the pid file is.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Stops the server (SIGTERM, SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            remove_pid_file(&self.store_dir, self.child.id());
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    remove_pid_file(&self.store_dir, self.child.id());
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            warn!(
                pid = self.child.id(),
                "nats-server ignored SIGTERM; killing it"
            );
        }
        self.kill();
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_pid_file(&self.store_dir, self.child.id());
    }

    /// Starts the server again on the same address and JetStream directory
    /// (after [`Self::stop`] or [`Self::kill`]).
    pub fn restart(&mut self) -> Result<(), LocalNatsError> {
        self.stop();
        let again = Self::start(&self.binary, self.addr, &self.store_dir)?;
        // The old child was reaped by stop(), so dropping it does nothing.
        drop(std::mem::replace(self, again));
        Ok(())
    }
}

impl Drop for LocalNatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use nix::sys::wait::{waitpid, WaitStatus};

    use super::*;

    fn any_port() -> SocketAddr {
        "127.0.0.1:0".parse().expect("an address")
    }

    fn pid_in_file(store_dir: &Path) -> Option<u32> {
        std::fs::read_to_string(store_dir.join(PID_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Polls `child` until it exits, at most `timeout` (nothing else
    /// announces a child's exit).
    fn exit_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(RECLAIM_POLL);
        }
    }

    #[test]
    fn the_child_gets_sigterm_when_its_spawning_thread_ends() {
        let mut command = Command::new("sleep");
        command.arg("600");
        let (spawner, mut child) = Spawner::spawn(command).expect("spawn sleep");
        assert_eq!(child.try_wait().expect("try_wait"), None);
        drop(spawner);
        let status = exit_within(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(Signal::SIGTERM as i32)
        );
    }

    #[test]
    fn a_server_left_by_an_earlier_run_is_stopped_and_its_port_taken_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("nats");
        let old = LocalNatsServer::start("nats-server", any_port(), &store).expect("first start");
        let (old_pid, addr, store) = (old.pid(), old.addr(), old.store_dir().to_path_buf());
        assert_eq!(pid_in_file(&store), Some(old_pid));
        // A run that ended without stopping its server (no destructor, the
        // spawning thread kept): the server and its pid file stay.
        std::mem::forget(old);

        let new = LocalNatsServer::start("nats-server", addr, &store).expect("second start");
        assert_eq!(new.addr(), addr, "the same port");
        assert_ne!(new.pid(), old_pid);
        assert_eq!(pid_in_file(&store), Some(new.pid()));
        // The old server was this test's child: reap it. It stopped on the
        // SIGTERM (nats-server exits by itself on it) rather than being
        // killed.
        let status = waitpid(Pid::from_raw(old_pid as i32), None).expect("reap the old server");
        assert!(
            matches!(
                status,
                WaitStatus::Exited(..) | WaitStatus::Signaled(_, Signal::SIGTERM, _)
            ),
            "{status:?}"
        );
        drop(new);
        assert_eq!(pid_in_file(&store), None, "removed when the server stops");
    }

    #[test]
    fn a_pid_file_naming_another_process_is_replaced_and_that_process_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("nats");
        std::fs::create_dir_all(&store).expect("store dir");
        let mut other = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        std::fs::write(store.join(PID_FILE), format!("{}\n", other.id())).expect("pid file");
        let started = LocalNatsServer::start("nats-server", any_port(), &store);
        let still_running = other.try_wait().expect("try_wait").is_none();
        let _ = other.kill();
        let _ = other.wait();
        let server = started.expect("starts");
        assert!(
            still_running,
            "a process that is no nats-server of this store is left alone"
        );
        assert_eq!(pid_in_file(server.store_dir()), Some(server.pid()));
    }
}
