//! `file://` upstreams, served by the git CLI: `git upload-pack` and
//! `git receive-pack` run as child processes and libgit2 speaks its smart
//! protocol to them over pipes (as it does to the same programs over ssh) —
//! exactly how `git fetch file://…` and `git push file://…` work.
//!
//! Why not libgit2's built-in local transport: it builds every pack in
//! process and recomputes every delta instead of reusing the upstream's,
//! which made a first sync of a repository with thousands of tags several
//! times slower than `git clone --mirror` (see the `sync-first` benchmark
//! in the README). `git` is already a requirement of a node (the quick
//! start installs it); a node without it gets an error naming it.
//!
//! Ownership: Git refuses a repository another Unix user owns ("detected
//! dubious ownership", `safe.directory`), to protect a user from the
//! hooks and configuration of someone else's repository. cairn only
//! *reads* through `git upload-pack`, which runs neither, so each
//! upload-pack is told that this one path is safe (`-c safe.directory=…`,
//! command-line scope: that invocation only, no global configuration
//! touched). `git receive-pack` (pushes, which run the repository's
//! hooks) keeps Git's protection; its refusal is class `auth`
//! (`OriginError::Forbidden`), never `network`.

use std::{
    io::{self, Read, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Once},
    thread::JoinHandle,
};

use git2::{
    transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport},
    Error, ErrorClass, ErrorCode,
};
use parking_lot::Mutex;

/// Makes libgit2 use [`GitCli`] for every `file://` URL of this process.
/// Idempotent.
pub(super) fn register() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `git2::transport::register` must not race with libgit2
        // creating transports. It runs once, from `GitCache::new`, which
        // every cairn fetch and push goes through, so it happens before
        // this process's first transport is created by cairn.
        #[allow(unsafe_code)]
        let registered = unsafe {
            git2::transport::register("file", |remote| Transport::smart(remote, false, GitCli))
        };
        if let Err(e) = registered {
            // Only possible when something else registered "file://" first;
            // libgit2's transport then stays in use, which is correct, only
            // slower.
            tracing::warn!(error = %e, "file:// transport not registered");
        }
    });
}

/// The subtransport: one child process per connection.
struct GitCli;

impl SmartSubtransport for GitCli {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, Error> {
        let path = file_path(url)?;
        if !path.is_dir() {
            // The message libgit2's own local transport gives.
            return Err(Error::new(
                ErrorCode::NotFound,
                ErrorClass::Repository,
                format!("could not find repository at '{}'", path.display()),
            ));
        }
        let program = match action {
            Service::UploadPackLs | Service::UploadPack => "upload-pack",
            Service::ReceivePackLs | Service::ReceivePack => "receive-pack",
        };
        let trusted = match action {
            Service::UploadPackLs | Service::UploadPack => safe_directories(&path),
            Service::ReceivePackLs | Service::ReceivePack => Vec::new(),
        };
        Ok(Box::new(Pipe::spawn(program, path, &trusted)?))
    }

    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// The `safe.directory` values under which Git accepts to serve `path`
/// whoever owns it: the path as given and as resolved (symlinks), each as
/// a bare repository and as a work tree's `.git`.
fn safe_directories(path: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut roots = vec![path.to_path_buf()];
    if let Ok(resolved) = path.canonicalize() {
        if resolved != path {
            roots.push(resolved);
        }
    }
    roots
        .into_iter()
        .flat_map(|root| [root.join(".git"), root])
        .map(|dir| {
            let mut value = std::ffi::OsString::from("safe.directory=");
            value.push(dir.as_os_str());
            value
        })
        .collect()
}

/// The local path a `file://` URL names (percent-decoded, as libgit2 does).
pub(crate) fn file_path(url: &str) -> Result<PathBuf, Error> {
    let invalid = || {
        Error::new(
            ErrorCode::Invalid,
            ErrorClass::Net,
            format!("invalid url {url:?}: expected file:///absolute/path"),
        )
    };
    let rest = url.strip_prefix("file://").ok_or_else(invalid)?;
    if !rest.starts_with('/') {
        return Err(invalid());
    }
    let mut bytes = Vec::with_capacity(rest.len());
    let mut input = rest.bytes();
    while let Some(b) = input.next() {
        if b == b'%' {
            let hex = [input.next(), input.next()];
            let digit = |d: Option<u8>| (d? as char).to_digit(16);
            match (digit(hex[0]), digit(hex[1])) {
                (Some(hi), Some(lo)) => bytes.push((hi * 16 + lo) as u8),
                _ => return Err(invalid()),
            }
        } else {
            bytes.push(b);
        }
    }
    use std::os::unix::ffi::OsStringExt as _;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// A `git <program> <path>` child: reads come from its stdout, writes go
/// to its stdin. Its stderr is collected and becomes the error when it
/// ends unsuccessfully.
struct Pipe {
    program: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Arc<Mutex<Vec<u8>>>,
    drain: Option<JoinHandle<()>>,
}

impl Pipe {
    /// `git [-c <trusted>]… <program> <path>`.
    fn spawn(
        program: &'static str,
        path: PathBuf,
        trusted: &[std::ffi::OsString],
    ) -> Result<Self, Error> {
        let mut command = Command::new("git");
        for value in trusted {
            command.arg("-c").arg(value);
        }
        let mut child = command
            .arg(program)
            .arg(&path)
            // Protocol v0, as libgit2 speaks it; the child must not pick up
            // a repository from the node's environment.
            .env_remove("GIT_PROTOCOL")
            .env_remove("GIT_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::new(
                    ErrorCode::GenericError,
                    ErrorClass::Os,
                    format!("file:// upstreams need the git CLI: cannot run `git {program}`: {e}"),
                )
            })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let drain = child.stderr.take().map(|mut pipe| {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    sink.lock().extend_from_slice(&buf[..n]);
                }
            })
        });
        Ok(Pipe {
            program,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            stderr,
            drain,
        })
    }

    /// The child's failure, once its output ended: its exit status and
    /// what it wrote to stderr.
    fn failure(&mut self) -> Option<io::Error> {
        let status = self.child.wait().ok()?;
        if status.success() {
            return None;
        }
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        let stderr = String::from_utf8_lossy(&self.stderr.lock())
            .trim()
            .to_owned();
        Some(io::Error::other(format!(
            "git {} failed ({status}): {stderr}",
            self.program
        )))
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(stdout) = self.stdout.as_mut() else {
            return Ok(0);
        };
        let n = stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(e) = self.failure() {
                return Err(e);
            }
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.write(buf).map_err(|e| match self.failure() {
                Some(failure) => failure,
                None => e,
            }),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stdin.as_mut().map_or(Ok(()), |stdin| stdin.flush())
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // Closing both ends ends the child: on EOF when it waits for input,
        // on a broken pipe when it is still writing.
        drop(self.stdin.take());
        drop(self.stdout.take());
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_map_to_paths() {
        assert_eq!(
            file_path("file:///srv/git/a%20b.git").unwrap(),
            PathBuf::from("/srv/git/a b.git")
        );
        assert_eq!(
            file_path("file:///srv/x.git").unwrap(),
            PathBuf::from("/srv/x.git")
        );
        assert!(file_path("file://srv/x.git").is_err());
        assert!(file_path("file:///bad%zz").is_err());
        assert!(file_path("https://example.com/x.git").is_err());
    }
}
