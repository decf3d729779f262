//! A local `nats-server -js` child process.
//!
//! Used by a node with no NATS URL configured, by the benchmarks, and by the
//! test harness. Readiness is read from the server's own log ("Server is
//! ready"), not guessed with sleeps; the client port is taken from its
//! "Listening for client connections on …" line, so port 0 (any free port)
//! works. The child is stopped (SIGTERM, then SIGKILL) on drop.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tracing::{debug, info, warn};

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
    /// Spawning or I/O failed.
    #[error("nats-server: {0}")]
    Io(#[from] std::io::Error),
}

/// A running `nats-server -js` child.
#[derive(Debug)]
pub struct LocalNatsServer {
    child: Child,
    addr: SocketAddr,
    binary: String,
    store_dir: PathBuf,
}

impl LocalNatsServer {
    /// Starts `binary -js` listening on `listen` (port 0: any free port)
    /// with its JetStream data in `store_dir`, and waits until it is ready.
    pub fn start(
        binary: &str,
        listen: SocketAddr,
        store_dir: &Path,
    ) -> Result<Self, LocalNatsError> {
        if listen.port() != 0 {
            match TcpListener::bind(listen) {
                Ok(probe) => drop(probe),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(LocalNatsError::PortInUse { addr: listen })
                }
                Err(e) => return Err(e.into()),
            }
        }
        std::fs::create_dir_all(store_dir)?;
        let port = if listen.port() == 0 {
            "-1".to_owned()
        } else {
            listen.port().to_string()
        };
        let mut child = Command::new(binary)
            .args(["-js", "-a", &listen.ip().to_string(), "-p", &port, "-sd"])
            .arg(store_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => LocalNatsError::NotInstalled {
                    binary: binary.to_owned(),
                },
                _ => LocalNatsError::Io(e),
            })?;
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

    /// Stops the server (SIGTERM, SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
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
