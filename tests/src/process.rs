//! Child processes: a guard that kills a child and everything it started,
//! line readers with deadlines, the `cairn` CLI run with a timeout, and a
//! port that refuses connections.
//!
//! Decision: a child node starts a nats-server of its own; killing only the
//! node (SIGKILL runs no destructor) leaves that server to stop by itself
//! (its parent-death signal, SIGTERM). [`ChildGuard`] does not rely on
//! that: it finds the child's descendants in `/proc` and kills them too, so
//! a failing test leaves nothing behind even when that signal is what
//! failed. [`PidGuard`] does the same for a process the test did not start
//! as its child (e.g. the server of a node a test killed on purpose). Children stay in the test's process group, so when
//! nextest kills a test that timed out, its group — children included —
//! goes with it.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::wait::{wait_until_blocking, within, WAIT};

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` runs: it exists and is no zombie (a zombie has exited and
/// only waits to be reaped, by init when its parent died).
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// A process this test did not start as its child (e.g. a node's
/// nats-server, left to init when the node was killed), SIGKILLed on drop
/// if it still runs with the command it had when the guard was made, so a
/// failing test does not leave it behind (and a reused pid is left alone).
#[derive(Debug)]
pub struct PidGuard {
    pid: u32,
    cmdline: Option<Vec<u8>>,
}

impl PidGuard {
    /// Guards `pid` as it runs now.
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            cmdline: std::fs::read(format!("/proc/{pid}/cmdline")).ok(),
        }
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        let now = std::fs::read(format!("/proc/{}/cmdline", self.pid)).ok();
        if is_running(self.pid) && now.is_some() && now == self.cmdline {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

/// Every live descendant of `root` (children first, then theirs).
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pairs: Vec<(u32, u32)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(pairs.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// A child process killed (SIGKILL), with every process it started, and
/// reaped when dropped, so a failing test never leaves a node or its
/// nats-server running.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Spawns `command`.
    pub fn spawn(command: &mut Command) -> Self {
        Self(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {command:?}: {e}")),
        )
    }

    /// Waits for the child to exit by itself, at most `timeout`; kills it
    /// and fails the test when it does not.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        // Nothing announces a child's exit but the exit itself: poll
        // try_wait, bounded.
        let exited = wait_until_blocking(timeout, || match self.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("running".to_owned()),
            Err(e) => Err(e.to_string()),
        });
        match exited {
            Ok(status) => status,
            Err(last) => {
                self.kill_all();
                panic!("pid {} did not exit within {timeout:?} ({last})", self.id());
            }
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.id() as i32), signal).expect("signal the child");
    }

    /// Kills the child and its descendants; reaps the child.
    pub fn kill_all(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        // Collected before the kill: afterwards they belong to init.
        let below = descendants(self.id());
        let _ = self.0.kill();
        for pid in below {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_all();
    }
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
    within("a line of output", timeout, lines.recv())
        .await
        .expect("the process closed its output")
}

/// What a CLI run printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Whether it exited with 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// The `cairn` CLI (the `cairn-under-test` binary; see [`crate::cairn_cli`]),
/// every run bounded by a timeout.
#[derive(Debug, Clone)]
pub struct Cli {
    binary: PathBuf,
    timeout: Duration,
}

impl Cli {
    /// The CLI at `binary`; runs time out after [`WAIT`].
    pub fn new(binary: impl AsRef<Path>) -> Self {
        Self {
            binary: binary.as_ref().to_path_buf(),
            timeout: WAIT,
        }
    }

    /// The binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// A command running the CLI (for children the test drives itself;
    /// wrap them in a [`ChildGuard`]).
    pub fn command(&self) -> Command {
        Command::new(&self.binary)
    }

    /// Runs the CLI with `args` to its end (off the async threads, killed
    /// after the timeout); what it printed.
    pub async fn run<I, S>(&self, args: I) -> CliOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.run_env(args, &[], &[]).await
    }

    /// [`Self::run`] with environment variables `set` and without those
    /// of `unset`.
    pub async fn run_env<I, S>(&self, args: I, set: &[(&str, &str)], unset: &[&str]) -> CliOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = tokio::process::Command::new(&self.binary);
        command.args(args).kill_on_drop(true);
        for name in unset {
            command.env_remove(name);
        }
        for (name, value) in set {
            command.env(name, value);
        }
        let what = format!("{command:?} to finish");
        let out: Output = within(&what, self.timeout, command.output())
            .await
            .unwrap_or_else(|e| panic!("running {}: {e}", self.binary.display()));
        CliOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// [`Self::run`] for code without a runtime.
    pub fn run_blocking<I, S>(&self, args: I) -> CliOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(self.run(args))
    }
}

/// A loopback port bound but not listening: connections to it are refused,
/// and no other process can take it while this lives (unlike a probed
/// "free" port).
#[derive(Debug)]
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Binds one.
    pub fn bind() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind a loopback port");
        let addr = socket.local_addr().expect("its address");
        Self {
            _socket: socket,
            addr,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_refuses_connections() {
        let port = ClosedPort::bind();
        let err = std::net::TcpStream::connect(("127.0.0.1", port.port())).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn dropping_a_guard_kills_the_child_and_its_children() {
        let mut guard = ChildGuard::spawn(
            Command::new("sh")
                .args(["-c", "sleep 600 & echo $!; wait"])
                .stdout(std::process::Stdio::piped()),
        );
        let (line, _) = read_line_matching(guard.0.stdout.take().unwrap(), WAIT, |_| true).unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        assert_eq!(descendants(guard.id()), [grandchild]);
        drop(guard);
        // Killed: gone, or a zombie until init reaps it.
        let state = crate::wait::wait_until_blocking(WAIT, || {
            let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|s| {
                    s.rsplit_once(')')
                        .unwrap()
                        .1
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .to_owned()
                })
                .unwrap_or_else(|_| "gone".to_owned());
            if state == "gone" || state == "Z" {
                Ok(state)
            } else {
                Err(state)
            }
        });
        assert!(state.is_ok(), "the grandchild is still {state:?}");
    }
}
