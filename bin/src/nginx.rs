//! Debian's nginx, started with a configuration of our own in a temp
//! directory, on a loopback port, killed when dropped: the real origin of
//! the artifact tests (static files with `ETag` and `Last-Modified`) and,
//! in `cairn bench artifact`, both the origin and the peer (`proxy_cache`).
//!
//! nginx cannot listen on port 0 and tell which port it got, so a free
//! port is taken from the system (bind, read, release) and nginx binds it
//! right after; a start that fails (the port was taken in between) is
//! retried on another port, a bounded number of times.
//!
//! One process (`master_process off`, `daemon off`), so killing the child
//! stops nginx whole; logs and temp paths stay in the temp directory.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// How long nginx gets to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Ports tried before giving up.
const START_ATTEMPTS_MAX: usize = 5;

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves the files under `root` (with `ETag` and `Last-Modified`,
    /// nginx's defaults for static files).
    pub fn serve_files(root: &Path) -> anyhow::Result<Self> {
        let root = root.display().to_string();
        Self::start(|_dir| format!("location / {{ root {root}; }}"))
    }

    /// Starts nginx whose one `server` holds what `server_body` returns for
    /// the temp directory it runs in (e.g. `location / { … }`).
    pub fn start(server_body: impl Fn(&Path) -> String) -> anyhow::Result<Self> {
        Self::start_with(|_| String::new(), server_body)
    }

    /// [`Self::start`] with `http_extra` (for the temp directory) in the
    /// `http` block, e.g. a `proxy_cache_path`.
    pub fn start_with(
        http_extra: impl Fn(&Path) -> String,
        server_body: impl Fn(&Path) -> String,
    ) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS_MAX {
            match Self::start_once(&http_extra, &server_body) {
                Ok(n) => return Ok(n),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn start_once(
        http_extra: &impl Fn(&Path) -> String,
        server_body: &impl Fn(&Path) -> String,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("nginx temp dir")?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let d = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log {d}/access.log;\n  sendfile on;\n  keepalive_requests 100000;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {extra}\n  server {{\n    listen {addr};\n    {body}\n  }}\n}}\n",
            extra = http_extra(dir.path()),
            body = server_body(dir.path()),
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config)?;
        let child = Command::new(binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} (apt-get install nginx)", binary().display()))?;
        let mut nginx = Self { child, addr, dir };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                let log =
                    std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}) before accepting connections: {log}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                bail!("nginx did not accept connections on {addr} within {READY_WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines nginx logged so far (`GET /a HTTP/1.1` …), one per
    /// request it answered.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| Some(l.split('"').nth(1)?.to_owned()))
            .collect()
    }

    /// Its temp directory (configuration, logs, cache).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nginx binary: `$CAIRN_NGINX`, else Debian's `/usr/sbin/nginx`.
pub fn binary() -> PathBuf {
    std::env::var_os("CAIRN_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}
