//! Writing package revisions to Git as Porch does: trees with a package's
//! subtree replaced, commits, and ref updates pushed to the upstream
//! together.
//!
//! Everything is built in the local mirror (objects only; its refs stay the
//! upstream's until the next fetch) and then pushed. libgit2 pushes from
//! local refs, so each pushed commit gets a scratch ref
//! `refs/cairn/push/<n>` for the duration of the push. Pushes are never
//! forced: libgit2 refuses a ref update that is not a fast-forward of what
//! the upstream advertised at push time, which is reported as
//! [`OriginError::Moved`] so the caller can fetch, re-apply and retry; a
//! refusal by the upstream itself (a hook, permissions) is
//! [`OriginError::Rejected`].
//!
//! [`create_branch`] (registrations with "create branch") writes the same
//! way: a commit built in the mirror, then pushed.
//!
//! Who a commit names follows Porch ([`Identity`]): the committer is always
//! the node's own identity ([`WriteConfig::committer`], Porch's
//! `Package Orchestration Service <porch@kpt.dev>` by default), the author
//! the repository's `git.author`/`git.email` if set, else the principal,
//! else the committer; the principal also goes into a `Cairn-Principal:`
//! trailer. How a transiently failed push is retried is the caller's
//! ([`WriteConfig::retry_delay`], [`OriginError::is_transient`]).

use std::{collections::BTreeMap, time::Duration};

use git2::{ErrorCode, Oid, PushOptions, Repository, Signature};
use tracing::info;

use super::{
    error::{map_git_error, OriginError},
    git::GitCache,
    names,
    remote::{callbacks, Credentials},
};

/// The files of a package: path relative to the package → content.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Why a resource path cannot be written, if it cannot: it must be
/// relative, without empty, `.` or `..` segments, NUL or control
/// characters, segments Git refuses as tree entries (`.git` in any case
/// and its NTFS/HFS+ aliases, see [`names::tree_entry`]), and at most
/// 4096 bytes.
pub fn check_resource_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a resource path is empty".into());
    }
    if path.len() > 4096 {
        return Err(format!(
            "resource path of {} bytes (at most 4096)",
            path.len()
        ));
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} is absolute"));
    }
    if path.chars().any(|c| c == '\0' || c.is_control()) {
        return Err(format!("{path:?} holds a NUL or control character"));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(format!("{path:?} has an empty segment")),
            "." | ".." => return Err(format!("{path:?} must not contain {segment:?}")),
            _ => {}
        }
        if let Some(why) = names::tree_entry(segment) {
            return Err(format!("{path:?} must not contain {segment:?} ({why})"));
        }
    }
    Ok(())
}

/// Why `files` cannot be one tree, if they cannot: a path below another
/// file (`a` and `a/b`). Answers the path refused and why.
pub fn check_file_tree(files: &Files) -> Result<(), (String, String)> {
    for path in files.keys() {
        let mut prefix = path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if files.contains_key(parent) {
                return Err((
                    path.clone(),
                    format!("{path:?} is below the file {parent:?}"),
                ));
            }
            prefix = parent;
        }
    }
    Ok(())
}

/// The tree of `files` (nested directories as needed).
pub fn files_tree(repo: &Repository, files: &Files) -> Result<Oid, OriginError> {
    let mut root = Dir::default();
    for (path, content) in files {
        check_resource_path(path).map_err(OriginError::Git)?;
        let blob = repo.blob(content).map_err(map_git_error)?;
        let mut dir = &mut root;
        let mut segments = path.split('/').peekable();
        while let Some(segment) = segments.next() {
            if segments.peek().is_none() {
                if dir.dirs.contains_key(segment) {
                    return Err(OriginError::Git(format!(
                        "{path:?} is both a file and a directory"
                    )));
                }
                dir.files.insert(segment.to_owned(), blob);
            } else {
                if dir.files.contains_key(segment) {
                    return Err(OriginError::Git(format!(
                        "{path:?} is below a file of the same name"
                    )));
                }
                dir = dir.dirs.entry(segment.to_owned()).or_default();
            }
        }
    }
    root.write(repo)
}

#[derive(Default)]
struct Dir {
    files: BTreeMap<String, Oid>,
    dirs: BTreeMap<String, Dir>,
}

impl Dir {
    fn write(&self, repo: &Repository) -> Result<Oid, OriginError> {
        let mut builder = repo.treebuilder(None).map_err(map_git_error)?;
        for (name, blob) in &self.files {
            builder
                .insert(name, *blob, 0o100644)
                .map_err(map_git_error)?;
        }
        for (name, dir) in &self.dirs {
            builder
                .insert(name, dir.write(repo)?, 0o040000)
                .map_err(map_git_error)?;
        }
        builder.write().map_err(map_git_error)
    }
}

/// Root tree `root` (none: empty) with the directory at `path` (segments
/// separated by `/`, non-empty) replaced by tree `subtree`, or removed when
/// `subtree` is `None`. Directories left empty by a removal are removed too.
pub fn with_subtree(
    repo: &Repository,
    root: Option<Oid>,
    path: &str,
    subtree: Option<Oid>,
) -> Result<Oid, OriginError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        return Err(OriginError::Git("a package path is empty".into()));
    }
    Ok(replace(repo, root, &segments, subtree)?.unwrap_or(empty_tree(repo)?))
}

fn empty_tree(repo: &Repository) -> Result<Oid, OriginError> {
    repo.treebuilder(None)
        .and_then(|b| b.write())
        .map_err(map_git_error)
}

/// `tree` with `segments` replaced; `None` when the result is empty.
fn replace(
    repo: &Repository,
    tree: Option<Oid>,
    segments: &[&str],
    subtree: Option<Oid>,
) -> Result<Option<Oid>, OriginError> {
    let (first, rest) = segments.split_first().expect("segments are not empty");
    let tree = tree
        .map(|id| repo.find_tree(id))
        .transpose()
        .map_err(map_git_error)?;
    let mut builder = repo.treebuilder(tree.as_ref()).map_err(map_git_error)?;
    let new = if rest.is_empty() {
        subtree
    } else {
        let child = tree
            .as_ref()
            .and_then(|t| t.get_name(first))
            .filter(|e| e.kind() == Some(git2::ObjectType::Tree))
            .map(|e| e.id());
        replace(repo, child, rest, subtree)?
    };
    match new {
        Some(id) => {
            builder.insert(first, id, 0o040000).map_err(map_git_error)?;
        }
        None => {
            if builder.get(first).map_err(map_git_error)?.is_some() {
                builder.remove(first).map_err(map_git_error)?;
            }
        }
    }
    if builder.is_empty() {
        return Ok(None);
    }
    builder.write().map(Some).map_err(map_git_error)
}

/// A name and an email, as a commit's author or committer line holds
/// them. The email may be empty (Porch writes `<>` when a repository has
/// `git.author` but no `git.email`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// Name.
    pub name: String,
    /// Email; may be empty.
    pub email: String,
}

impl Author {
    /// `name <email>`, as given.
    pub fn new(name: &str, email: &str) -> Self {
        Self {
            name: name.to_owned(),
            email: email.to_owned(),
        }
    }

    /// Porch's own signature (`porchSignatureName`/`porchSignatureEmail`):
    /// `Package Orchestration Service <porch@kpt.dev>`, cairn's default
    /// committer ([`WriteConfig::committer`]).
    pub fn porch() -> Self {
        Self::new(PORCH_SIGNATURE_NAME, PORCH_SIGNATURE_EMAIL)
    }
}

/// The name of Porch's signature.
pub const PORCH_SIGNATURE_NAME: &str = "Package Orchestration Service";
/// The email of Porch's signature.
pub const PORCH_SIGNATURE_EMAIL: &str = "porch@kpt.dev";

/// Who a lifecycle command's commits name, by Porch's rule
/// (`storeCommit`, `makeUserInfoProvider`): the committer is always the
/// node's own identity; the author is the repository's `git.author` /
/// `git.email` when either is set (the email standing in for a missing
/// name), else the principal (as name and email), else the committer.
/// The principal itself goes into a `Cairn-Principal:` trailer
/// ([`Identity::trailer`]), whoever the author is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The commits' author.
    pub author: Author,
    /// The commits' committer.
    pub committer: Author,
    /// Who asked (the command's principal, `anonymous` included); empty:
    /// no trailer.
    pub principal: String,
}

impl Identity {
    /// The identity of a command by `principal` (`""` or `anonymous`: no
    /// one in particular) on a repository with `git.author` / `git.email`
    /// `repository`, on a node committing as `committer`. A principal Git
    /// cannot write as an author (see [`names::signature_part`]; a NATS
    /// user name is not checked at the edge) counts as no one.
    pub fn of(repository: &Author, principal: &str, committer: &Author) -> Self {
        let author = if !repository.name.is_empty() || !repository.email.is_empty() {
            let name = if repository.name.is_empty() {
                &repository.email
            } else {
                &repository.name
            };
            Author::new(name, &repository.email)
        } else {
            match principal {
                "" | cairn_events::envelope::ANONYMOUS => committer.clone(),
                p if names::signature_part(p).is_some() => committer.clone(),
                p => Author::new(p, p),
            }
        };
        Self {
            author,
            committer: committer.clone(),
            principal: principal.to_owned(),
        }
    }

    /// The `Cairn-Principal: <principal>` trailer line (no newline), when
    /// there is a principal it can hold (one line: no control
    /// characters).
    pub fn trailer(&self) -> Option<String> {
        (!self.principal.is_empty() && !self.principal.chars().any(char::is_control))
            .then(|| format!("{PRINCIPAL_TRAILER}: {}", self.principal))
    }
}

/// The key of the trailer naming a commit's principal.
pub const PRINCIPAL_TRAILER: &str = "Cairn-Principal";

/// How the node writes to upstreams: its committer identity and how a push
/// that failed transiently is retried ([`OriginError::is_transient`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteConfig {
    /// The committer of every commit cairn writes, and the author of a
    /// branch it creates. Default: Porch's signature ([`Author::porch`]),
    /// so a commit reads the same whichever of the two wrote it.
    pub committer: Author,
    /// How many times a push is tried when it fails transiently (Porch's
    /// `--repo-operation-retry-attempts`). Default: 3.
    pub push_attempts: u32,
    /// The delay before the n-th retry is n times this, n times five times
    /// this after a `pre-receive hook declined` (Porch: 200 ms and 1 s).
    /// Default: 200 ms.
    pub push_retry_delay: Duration,
}

impl Default for WriteConfig {
    fn default() -> Self {
        Self {
            committer: Author::porch(),
            push_attempts: 3,
            push_retry_delay: Duration::from_millis(200),
        }
    }
}

impl WriteConfig {
    /// How long to wait after failed attempt `attempt` (1-based) with
    /// `error` before trying again, as Porch's `pushAndCleanup` does.
    pub fn retry_delay(&self, attempt: u32, error: &OriginError) -> Duration {
        let base = if error.to_string().contains("pre-receive hook declined") {
            self.push_retry_delay * 5
        } else {
            self.push_retry_delay
        };
        base * attempt
    }
}

/// An email libgit2 accepts in place of an empty one, swapped for `<>`
/// in the commit's author line (see [`commit`]).
const EMPTY_EMAIL_STAND_IN: &str = "cairn-empty-email";

/// A commit of `tree` with `parents` (objects only; no ref moves),
/// authored and committed as `identity` says, both at the same time.
///
/// libgit2 refuses a signature with an empty email, which Porch writes
/// (`author porch <> …`) for a repository with `git.author` and no
/// `git.email`: such a commit is built by libgit2 with a stand-in email,
/// whose author line is then rewritten to `<>` and the object written
/// as is.
pub fn commit(
    repo: &Repository,
    tree: Oid,
    parents: &[Oid],
    message: &str,
    identity: &Identity,
) -> Result<Oid, OriginError> {
    let committer = Signature::now(&identity.committer.name, &identity.committer.email)
        .map_err(map_git_error)?;
    let empty_email = identity.author.email.is_empty();
    let author_email = if empty_email {
        EMPTY_EMAIL_STAND_IN
    } else {
        identity.author.email.as_str()
    };
    let author = Signature::new(&identity.author.name, author_email, &committer.when())
        .map_err(map_git_error)?;
    let tree = repo.find_tree(tree).map_err(map_git_error)?;
    let parents = parents
        .iter()
        .map(|id| repo.find_commit(*id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_git_error)?;
    let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
    if !empty_email {
        return repo
            .commit(None, &author, &committer, message, &tree, &parents)
            .map_err(map_git_error);
    }
    let buffer = repo
        .commit_create_buffer(&author, &committer, message, &tree, &parents)
        .map_err(map_git_error)?;
    let mut stand_in = b"\nauthor ".to_vec();
    stand_in.extend_from_slice(author.name_bytes());
    let mut empty = stand_in.clone();
    stand_in.extend_from_slice(format!(" <{EMPTY_EMAIL_STAND_IN}> ").as_bytes());
    empty.extend_from_slice(b" <> ");
    let at = buffer
        .windows(stand_in.len())
        .position(|w| w == stand_in.as_slice())
        .ok_or_else(|| OriginError::Git("no author line in a commit libgit2 built".into()))?;
    let mut object = buffer[..at].to_vec();
    object.extend_from_slice(&empty);
    object.extend_from_slice(&buffer[at + stand_in.len()..]);
    repo.odb()
        .and_then(|odb| odb.write(git2::ObjectType::Commit, &object))
        .map_err(map_git_error)
}

/// One ref update of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefChange {
    /// Create or fast-forward `name` (a full ref name) to `to`.
    Set {
        /// The ref.
        name: String,
        /// Its new commit.
        to: Oid,
    },
    /// Delete `name`.
    Delete {
        /// The ref.
        name: String,
    },
}

/// Pushes `changes` to `url` in one push. Nothing is forced: an update
/// that is not a fast-forward is [`OriginError::Moved`]; a ref the upstream
/// refuses is [`OriginError::Rejected`] naming it.
pub fn push_changes(
    repo: &Repository,
    url: &str,
    credentials: Option<&Credentials>,
    changes: &[RefChange],
) -> Result<(), OriginError> {
    let _span = tracing::info_span!("git.push", refs = changes.len()).entered();
    let mut scratch = Vec::new();
    let mut refspecs = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        match change {
            RefChange::Set { name, to } => {
                let local = format!("refs/cairn/push/{i}");
                scratch.push(
                    repo.reference(&local, *to, true, "cairn: push")
                        .map_err(map_git_error)?,
                );
                refspecs.push(format!("{local}:{name}"));
            }
            RefChange::Delete { name } => refspecs.push(format!(":{name}")),
        }
    }
    let result = push_refspecs(repo, url, credentials, &refspecs);
    for mut reference in scratch {
        let _ = reference.delete();
    }
    result
}

/// Creates `branch` upstream at `url` with one initial commit with an empty
/// tree, authored and committed by `committer` (the node's committer
/// identity: Porch's `createBranch` signs with its own signature whatever
/// the repository's author), and pushes it (for registrations with
/// "create branch" on a repository lacking the branch). A no-op when the
/// branch already exists upstream. Fetches first, so the mirror is current
/// afterwards.
pub fn create_branch(
    cache: &GitCache,
    url: &str,
    branch: &str,
    committer: &Author,
    credentials: Option<&Credentials>,
) -> Result<(), OriginError> {
    let ref_name = format!("refs/heads/{branch}");
    if branch.is_empty() || !git2::Reference::is_valid_name(&ref_name) {
        return Err(OriginError::Git(format!("invalid branch name {branch:?}")));
    }
    let outcome = cache.fetch(url, credentials)?;
    if outcome.raw.contains_key(&ref_name) {
        return Ok(());
    }
    let repo = Repository::open_bare(cache.mirror_path(url)).map_err(map_git_error)?;
    let signature = Signature::now(&committer.name, &committer.email).map_err(map_git_error)?;
    let tree_id = repo
        .treebuilder(None)
        .and_then(|b| b.write())
        .map_err(map_git_error)?;
    let tree = repo.find_tree(tree_id).map_err(map_git_error)?;
    let message = format!("Initial commit: Creating {branch} branch\n");
    let commit = repo
        .commit(None, &signature, &signature, &message, &tree, &[])
        .map_err(map_git_error)?;
    // libgit2 pushes from a local ref, so the mirror gets the branch first;
    // it is rolled back if the push fails, keeping the mirror truthful.
    let mut local = repo
        .reference(&ref_name, commit, false, "cairn: create branch")
        .map_err(map_git_error)?;
    if let Err(e) = push_refspecs(&repo, url, credentials, &[format!("{ref_name}:{ref_name}")]) {
        let _ = local.delete();
        return Err(e);
    }
    info!(branch, commit = %commit, "created branch upstream");
    Ok(())
}

fn push_refspecs(
    repo: &Repository,
    url: &str,
    credentials: Option<&Credentials>,
    refspecs: &[String],
) -> Result<(), OriginError> {
    if url.starts_with("file://") {
        return push_with_git_cli(repo, url, refspecs);
    }
    let mut remote = repo.remote_anonymous(url).map_err(map_git_error)?;
    let mut rejected: Vec<String> = Vec::new();
    {
        let mut callbacks = callbacks(credentials);
        callbacks.push_update_reference(|name, status| {
            if let Some(status) = status {
                rejected.push(format!("{name}: {status}"));
            }
            Ok(())
        });
        let mut options = PushOptions::new();
        options.remote_callbacks(callbacks);
        remote
            .push(refspecs, Some(&mut options))
            .map_err(|e| match e.code() {
                ErrorCode::NotFastForward => OriginError::Moved(e.message().to_owned()),
                _ => map_git_error(e),
            })?;
    }
    if rejected.is_empty() {
        Ok(())
    } else {
        Err(refusal(&rejected))
    }
}

/// Pushes to a `file://` upstream with `git push --atomic` (all updates or
/// none), as fetches from one go through the git CLI too (see
/// `file_transport`). libgit2's push marks the tree of every commit the
/// upstream advertises as already there, a cost that grows with the
/// upstream's tags; `git push` stops at the commits it sends.
fn push_with_git_cli(repo: &Repository, url: &str, refspecs: &[String]) -> Result<(), OriginError> {
    let mut command = std::process::Command::new("git");
    command
        .arg("--git-dir")
        .arg(repo.path())
        .args(["push", "--porcelain", "--atomic", "--no-verify"])
        // A local upstream whose HEAD names a draft branch (Porch's
        // `drafts-repository` fixture does) refuses that branch's deletion
        // — which proposing or deleting the draft needs — with `deletion
        // of the current branch prohibited` (bare) or `branch is currently
        // checked out` (with a work tree). Porch's own Git server applies
        // neither rule to a deletion, so neither does a push of ours to a
        // local path, for this invocation only: the upstream's refs are
        // what Porch would leave; its HEAD then names a deleted branch. An
        // update of a checked-out branch is still refused (its work tree
        // would not follow).
        .arg(if deletes_current_branch(url, refspecs) {
            "--receive-pack=git -c receive.denyDeleteCurrent=ignore -c receive.denyCurrentBranch=ignore receive-pack"
        } else {
            "--receive-pack=git -c receive.denyDeleteCurrent=ignore receive-pack"
        });
    let output = command
        .arg(url)
        .args(refspecs)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| OriginError::Git(format!("running git push: {e} (is git installed?)")))?;
    let (moved, refused) = porcelain_refusals(&String::from_utf8_lossy(&output.stdout));
    if !refused.is_empty() {
        return Err(refusal(&refused));
    }
    if !moved.is_empty() {
        return Err(OriginError::Moved(moved.join("; ")));
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = format!("git push to {url}: {}", stderr.trim());
        // Git refusing another user's repository (`receive-pack` keeps
        // its safe.directory check, see `file_transport`), or files the
        // node may not write: class auth, as for reads.
        let lower = stderr.to_ascii_lowercase();
        if lower.contains("dubious ownership") || lower.contains("permission denied") {
            return Err(OriginError::Forbidden(message));
        }
        return Err(OriginError::Git(message));
    }
    Ok(())
}

/// Whether `refspecs` touch the local upstream's current branch (its
/// HEAD), and only to delete it.
fn deletes_current_branch(url: &str, refspecs: &[String]) -> bool {
    // Most pushes delete nothing: then the upstream is not opened.
    if !refspecs
        .iter()
        .any(|r| r.trim_start_matches('+').starts_with(':'))
    {
        return false;
    }
    let head = super::file_transport::file_path(url)
        .ok()
        .and_then(|path| Repository::open(path).ok())
        .and_then(|upstream| {
            let head = upstream.find_reference("HEAD").ok()?;
            head.symbolic_target().ok().flatten().map(str::to_owned)
        });
    let Some(head) = head else {
        return false;
    };
    let mut touching = refspecs
        .iter()
        .map(|r| r.trim_start_matches('+'))
        .filter(|r| r.rsplit_once(':').is_some_and(|(_, to)| to == head))
        .peekable();
    touching.peek().is_some() && touching.all(|r| r.starts_with(':'))
}

/// The error for updates the upstream refused (`<ref>: <reason>` each):
/// the deletion of its current branch says what to do about it, anything
/// else lists the refusals.
fn refusal(refused: &[String]) -> OriginError {
    let current = refused.iter().find_map(|r| {
        r.strip_suffix(": deletion of the current branch prohibited")
            .or_else(|| r.strip_suffix(": refusing to delete the current branch"))
            .or_else(|| r.strip_suffix(": branch is currently checked out"))
    });
    match current {
        Some(branch) => OriginError::Rejected(format!(
            "the upstream refuses to change {branch}: it is the upstream's current branch (HEAD); point the upstream's HEAD at the registered branch (git symbolic-ref HEAD refs/heads/<branch>, or the host's default-branch setting) and retry"
        )),
        None => OriginError::Rejected(refused.join("; ")),
    }
}

/// The refused updates in `git push --porcelain` output (lines
/// `<flag>\t<from>:<to>\t<summary> (<reason>)`, flag `!` for a refusal),
/// as `<ref>: <reason>`: those git refused for not being fast-forwards (or
/// the ref existing already), and those the upstream refused (a hook,
/// permissions). Updates failed only because another one of an atomic
/// push did are left out.
fn porcelain_refusals(stdout: &str) -> (Vec<String>, Vec<String>) {
    let (mut moved, mut refused) = (Vec::new(), Vec::new());
    for line in stdout.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some("!"), Some(refs), Some(summary)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let to = refs.rsplit_once(':').map_or(refs, |(_, to)| to);
        let reason = summary
            .split_once('(')
            .map_or(summary, |(_, r)| r.trim_end_matches(')'))
            .trim();
        // The other updates of a refused atomic push: failed only because
        // of it (the client says "failed", the remote "failure").
        if reason == "atomic push failed" || reason == "atomic push failure" {
            continue;
        }
        if summary.starts_with("[remote rejected]") || summary.starts_with("[remote failure]") {
            refused.push(format!("{to}: {reason}"));
        } else {
            moved.push(format!("{to}: {reason}"));
        }
    }
    (moved, refused)
}

#[cfg(test)]
mod tests {
    #[test]
    fn porcelain_refusals_are_sorted_by_cause() {
        let out = "To file:///up.git\n\
                   =\trefs/cairn/push/0:refs/heads/x\t[up to date]\n\
                   !\trefs/cairn/push/1:refs/heads/main\t[rejected] (non-fast-forward)\n\
                   !\trefs/cairn/push/2:refs/tags/p/v1\t[rejected] (atomic push failed)\n\
                   !\trefs/cairn/push/3:refs/heads/drafts/p/w\t[remote rejected] (pre-receive hook declined)\n\
                   !\trefs/cairn/push/4:refs/heads/proposed/p/w\t[remote rejected] (atomic push failure)\n\
                   Done\n";
        assert_eq!(
            super::porcelain_refusals(out),
            (
                vec!["refs/heads/main: non-fast-forward".to_owned()],
                vec!["refs/heads/drafts/p/w: pre-receive hook declined".to_owned()]
            )
        );
    }

    use super::*;

    #[test]
    fn only_a_deletion_of_the_local_upstreams_head_branch_lifts_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let upstream = Repository::init_bare(dir.path()).unwrap();
        upstream.set_head("refs/heads/drafts/p/v1").unwrap();
        let url = format!("file://{}", dir.path().display());
        let specs = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(deletes_current_branch(
            &url,
            &specs(&[":refs/heads/drafts/p/v1"])
        ));
        assert!(deletes_current_branch(
            &url,
            &specs(&[
                "+refs/cairn/push/0:refs/heads/proposed/p/v1",
                ":refs/heads/drafts/p/v1"
            ])
        ));
        assert!(!deletes_current_branch(
            &url,
            &specs(&["refs/cairn/push/0:refs/heads/drafts/p/v1"])
        ));
        assert!(!deletes_current_branch(&url, &specs(&[":refs/heads/main"])));
        assert!(!deletes_current_branch(
            "file:///nonexistent/x.git",
            &specs(&[":refs/heads/drafts/p/v1"])
        ));
    }

    #[test]
    fn a_refused_deletion_of_the_current_branch_says_what_to_do() {
        let refused =
            vec!["refs/heads/drafts/p/v1: deletion of the current branch prohibited".to_owned()];
        assert_eq!(
            refusal(&refused).to_string(),
            "push rejected by the upstream: the upstream refuses to change refs/heads/drafts/p/v1: it is the upstream's current branch (HEAD); point the upstream's HEAD at the registered branch (git symbolic-ref HEAD refs/heads/<branch>, or the host's default-branch setting) and retry"
        );
        let other = vec!["a: hook declined".to_owned(), "b: no".to_owned()];
        assert_eq!(
            refusal(&other).to_string(),
            "push rejected by the upstream: a: hook declined; b: no"
        );
    }

    /// Porch's `makeUserInfoProvider` and `storeCommit` (its tests
    /// `TestCommitAuthor`, `TestCommitWithUser`): the repository's author
    /// first, then the principal, then the committer, who is always the
    /// node.
    #[test]
    fn the_author_follows_porchs_rule_and_the_committer_is_the_node() {
        let node = Author::porch();
        let of = |name: &str, email: &str, principal: &str| {
            let i = Identity::of(&Author::new(name, email), principal, &node);
            assert_eq!(i.committer, node);
            assert_eq!(i.principal, principal);
            (i.author.name, i.author.email)
        };
        let pair = |n: &str, e: &str| (n.to_owned(), e.to_owned());
        assert_eq!(
            of("", "", "kubernetes-admin"),
            pair("kubernetes-admin", "kubernetes-admin")
        );
        assert_eq!(of("porch", "", "ada"), pair("porch", ""));
        assert_eq!(
            of("", "porch@example.com", "ada"),
            pair("porch@example.com", "porch@example.com")
        );
        assert_eq!(
            of("porch", "porch@example.com", "ada"),
            pair("porch", "porch@example.com")
        );
        assert_eq!(
            of("", "", "anonymous"),
            pair(PORCH_SIGNATURE_NAME, PORCH_SIGNATURE_EMAIL)
        );
        assert_eq!(
            of("", "", ""),
            pair(PORCH_SIGNATURE_NAME, PORCH_SIGNATURE_EMAIL)
        );
        // A NATS user name Git cannot write as an author: no one.
        assert_eq!(
            of("", "", "a<b>"),
            pair(PORCH_SIGNATURE_NAME, PORCH_SIGNATURE_EMAIL)
        );
    }

    /// An author with an empty email (a repository with `git.author` and
    /// no `git.email`) is written as Porch writes it, `<>`, which libgit2
    /// alone refuses.
    #[test]
    fn an_empty_author_email_is_written_as_porch_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let tree = files_tree(&repo, &Files::from([("a".to_owned(), b"x".to_vec())])).unwrap();
        let identity = Identity::of(&Author::new("porch", ""), "ada", &Author::porch());
        let id = commit(&repo, tree, &[], "m\n", &identity).unwrap();
        let c = repo.find_commit(id).unwrap();
        let (author, committer) = (c.author(), c.committer());
        assert_eq!(
            (author.name_bytes(), author.email_bytes()),
            (&b"porch"[..], &b""[..])
        );
        assert_eq!(
            (committer.name_bytes(), committer.email_bytes()),
            (
                PORCH_SIGNATURE_NAME.as_bytes(),
                PORCH_SIGNATURE_EMAIL.as_bytes()
            )
        );
        assert_eq!(c.message_bytes(), b"m\n");
        assert_eq!(c.tree_id(), tree);
        let child = commit(&repo, tree, &[id], "n\n", &identity).unwrap();
        assert_eq!(
            repo.find_commit(child)
                .unwrap()
                .parent_ids()
                .collect::<Vec<_>>(),
            [id]
        );
    }

    #[test]
    fn a_retry_waits_longer_each_time_and_longer_after_a_declining_hook() {
        let config = WriteConfig::default();
        let moved = OriginError::Rejected("r: failed to update ref".into());
        let hook = OriginError::Rejected("r: pre-receive hook declined".into());
        assert_eq!(config.retry_delay(1, &moved), Duration::from_millis(200));
        assert_eq!(config.retry_delay(2, &moved), Duration::from_millis(400));
        assert_eq!(config.retry_delay(1, &hook), Duration::from_secs(1));
        assert_eq!(config.retry_delay(2, &hook), Duration::from_secs(2));
    }

    #[test]
    fn resource_paths_are_relative_and_plain() {
        for good in ["Kptfile", "a/b.yaml", "dir/.hidden", "x..y"] {
            assert_eq!(check_resource_path(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "a resource path is empty"),
            ("/etc/passwd", "\"/etc/passwd\" is absolute"),
            ("a/../b", "\"a/../b\" must not contain \"..\""),
            ("./a", "\"./a\" must not contain \".\""),
            ("a//b", "\"a//b\" has an empty segment"),
            ("a/", "\"a/\" has an empty segment"),
            ("a\0b", "\"a\\0b\" holds a NUL or control character"),
            (
                ".git/config",
                "\".git/config\" must not contain \".git\" (Git's own directory, in any case)",
            ),
            (
                "x/.GIT/y",
                "\"x/.GIT/y\" must not contain \".GIT\" (Git's own directory, in any case)",
            ),
            (
                "git~1/config",
                "\"git~1/config\" must not contain \"git~1\" (Git's own directory on NTFS: its 8.3 short name)",
            ),
        ] {
            assert_eq!(check_resource_path(bad).unwrap_err(), why, "{bad:?}");
        }
        assert!(check_resource_path(&"a".repeat(4097)).is_err());
    }

    #[test]
    fn a_file_and_a_directory_of_one_name_conflict() {
        let tree = |paths: &[&str]| -> Files {
            paths.iter().map(|p| (p.to_string(), Vec::new())).collect()
        };
        assert_eq!(check_file_tree(&tree(&["a", "a-b", "b/c", "b/d"])), Ok(()));
        assert_eq!(
            check_file_tree(&tree(&["a", "a-b", "a/b"])),
            Err(("a/b".into(), "\"a/b\" is below the file \"a\"".into()))
        );
        assert_eq!(
            check_file_tree(&tree(&["x/y", "x/y/z/w"])),
            Err((
                "x/y/z/w".into(),
                "\"x/y/z/w\" is below the file \"x/y\"".into()
            ))
        );
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let files: Files = [
            ("a".to_owned(), b"x".to_vec()),
            ("a/b".to_owned(), b"y".to_vec()),
        ]
        .into();
        let err = files_tree(&repo, &files).unwrap_err();
        assert_eq!(
            err.to_string(),
            "git: \"a/b\" is below a file of the same name"
        );
    }
}
