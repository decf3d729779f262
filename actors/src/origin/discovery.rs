//! Porch-compatible discovery of package revisions in a local repository.
//!
//! The rules (see `porch-testdata/EXPECTED.md` for the acceptance listing):
//! - A package is a directory holding a regular-file `Kptfile`. Packages do
//!   not nest: below a package directory everything (including another
//!   `Kptfile`) belongs to that package. Only the registered directory is
//!   searched; a `Kptfile` directly in it names no package and is ignored.
//! - Registered branch: each package on its tip is revision `-1`, workspace =
//!   branch name, Published. Publishing info comes from the newest commit in
//!   the branch history carrying a `kpt:` annotation for the package.
//! - Tag `<path>/<pkg>/vN` (lightweight or annotated): revision N, Published,
//!   workspace = the `workspaceName` annotated on the tagged commit for the
//!   package, else `vN`; publishing info = author of the tagged commit.
//! - Branch `drafts/<path>/<pkg>/<ws>`: revision 0, Draft; `proposed/…`:
//!   revision 0, Proposed; no publishing info.
//! - Branch `deletionProposed/<path>/<pkg>/<vN or branch>` turns the matching
//!   published revision (or placeholder) into DeletionProposed.
//! - Tasks: Porch's `loadTasks` rule. The `kpt:` annotations of the
//!   revision's history matching package and workspace are read newest
//!   first by committer time (children before parents); a task of a type
//!   that creates a revision (`init`, `edit`, `clone`, `upgrade`) replaces
//!   the one found so far, and `init` or `clone` ends the walk. The history
//!   is therefore at most one task, the revision's creation, as Porch
//!   reports it (its `TestApproveDraftWithHistory` asserts one task on the
//!   `drafts-repository` fixture's `init, eval, patch, eval` history).
//!   `-1` placeholders have none: Porch looks for the branch name as their
//!   workspace, which no annotation carries, so a Porch reading the
//!   repository lists `[]` for them.
//! - Labels and annotations: `metadata.labels` and `metadata.annotations`
//!   of the package's Kptfile (as Porch's `PackageMetadata`).
//! - Any other ref adds nothing; refs whose package is missing are skipped.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use git2::{ObjectType, Oid, Repository, RepositoryOpenFlags, Sort, Tree, TreeWalkMode};
use time::OffsetDateTime;
use tracing::warn;

use super::annotation::{parse_message, Annotation, Task};
use super::error::{map_git_error, OriginError};

/// Bound on the commits one history walk visits (task history, publishing
/// info). Histories longer than this are cut, with a warning.
const HISTORY_WALK_COMMITS_MAX: usize = 100_000;

/// Version of the rules above: what discovery reads from the same refs.
/// Bump it with every change that lists the same upstream differently
/// (another field read, a rule changed): a sync folds it into the refs
/// digest it records, so a repository synced under older rules is
/// discovered again once (not skipped as unchanged) and its revisions
/// whose content under the new rules differs are `Modified`.
///
/// - 1 (no version in the digest): every task back to `init`/`clone`;
///   placeholders with their approval's tasks; Kptfile labels.
/// - 2: Porch's `loadTasks` (at most the creating task, none on
///   placeholders); Kptfile annotations.
pub const RULES_VERSION: u32 = 2;

/// Task types that can create a package revision (Porch's
/// `validFirstTaskTypes`): the only ones a task history reports.
const FIRST_TASK_TYPES: [&str; 4] = ["init", "edit", "clone", "upgrade"];

/// Bound on the files one package may hold; beyond it discovery fails rather
/// than loading an unbounded amount into memory.
const PACKAGE_FILES_MAX: usize = 10_000;

/// Result of [`discover`].
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// Commit (hex) of the registered branch; `None` when the branch does not
    /// exist (the caller decides whether that is
    /// [`OriginError::BranchMissing`]). Tags and drafts are listed either way.
    pub branch_commit: Option<String>,
    /// Every package revision, sorted by (path, package, revision, workspace,
    /// lifecycle).
    pub revisions: Vec<DiscoveredRevision>,
    /// Tags, drafts and proposals read.
    pub refs_read: usize,
}

/// One package revision as found in Git.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredRevision {
    /// Package path relative to the registered directory, without the package
    /// name; `""` for top-level packages.
    pub path: String,
    /// Package name: the last path segment.
    pub package: String,
    /// Branch name for `-1` placeholders, the draft's workspace for drafts and
    /// proposals, the annotated workspace (else `vN`) for published revisions.
    pub workspace: String,
    /// `-1` placeholder, `0` draft or proposal, `N` published.
    pub revision: i64,
    /// Lifecycle from the ref layout.
    pub lifecycle: Lifecycle,
    /// Commit (hex) the revision's content comes from.
    pub commit: String,
    /// Every file below the package directory: path relative to it → the
    /// Git blob holding its content. Contents are not loaded here: a large
    /// repository's would not fit in memory at once (see
    /// [`super::Blobs`]).
    pub resources: Arc<BTreeMap<String, Oid>>,
    /// Email of the publisher, for published revisions where known.
    pub published_by: Option<String>,
    /// When it was published, RFC 3339 UTC (`2022-08-26T22:47:35Z`).
    pub published_at: Option<String>,
    /// Task history: the task that created the revision (`init`, `edit`,
    /// `clone` or `upgrade`), or none (see the module docs).
    pub tasks: Vec<Task>,
    /// `metadata.labels` of the package's Kptfile; empty if it has none or
    /// does not parse.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations` of the package's Kptfile; empty if it has
    /// none or does not parse.
    pub annotations: BTreeMap<String, String>,
    /// True for the highest published revision (N > 0) of each package.
    pub latest: bool,
}

/// Lifecycle of a package revision: the events' enum (one definition for
/// the whole node). Discovery reads it from the ref layout: `drafts/…`
/// Draft, `proposed/…` Proposed, a tag or the registered branch
/// Published, and Published with a `deletionProposed/…` branch
/// DeletionProposed.
pub use cairn_events::revision::Lifecycle;

/// Lists the Porch package revisions in the local repository at `repo` for
/// the registered `branch` and `directory` (`""` or `"/"` = whole
/// repository; `"catalog/gcp"` or `"/catalog/gcp/"` = only below it, with
/// paths reported relative to it). A directory that does not exist lists
/// nothing. Malformed annotations and Kptfiles never fail discovery.
pub fn discover(path: &Path, branch: &str, directory: &str) -> Result<Discovery, OriginError> {
    discover_on(path, branch, directory, None, None, None)
}

/// [`discover`] of the revisions of `packages` only (full package paths in
/// the repository, as their refs name them, see [`package_of_ref`]):
/// their placeholders, tags, drafts and proposals; only their refs are
/// read. What an incremental sync reads when only such refs changed, and
/// what a lifecycle command reads back after writing a package.
pub fn discover_packages(
    path: &Path,
    branch: &str,
    directory: &str,
    packages: &HashSet<String>,
) -> Result<Discovery, OriginError> {
    discover_on(path, branch, directory, None, Some(packages), None)
}

/// [`discover`] of what one write to `package` (full path) can have
/// changed: the revisions of the refs in `refs` (full names of its tags,
/// drafts and proposals; others are ignored) and its placeholder. Only
/// those refs are read, so the cost does not grow with the package's other
/// revisions — except `latest`, which is set as a full discovery would
/// (on the package's highest published revision) by looking at the names
/// of all its tags. (A tag whose commit lacks the package, which a full
/// discovery skips, still counts there.)
pub fn discover_refs(
    path: &Path,
    branch: &str,
    directory: &str,
    package: &str,
    refs: &HashSet<String>,
) -> Result<Discovery, OriginError> {
    let only = HashSet::from([package.to_owned()]);
    discover_on(path, branch, directory, None, Some(&only), Some(refs))
}

/// The full path in the repository of package `package` at `path` below
/// the registered `directory` (the form [`package_of_ref`] answers).
pub fn package_path(directory: &str, path: &str, package: &str) -> String {
    [directory.trim_matches('/'), path.trim_matches('/'), package]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

/// The package (full path in the repository) a tag `<path>/<pkg>/vN` or a
/// branch `drafts/…` / `proposed/…` / `deletionProposed/…` belongs to;
/// `None` for any other ref.
pub fn package_of_ref(name: &str) -> Option<&str> {
    if let Some(key) = name.strip_prefix("refs/heads/deletionProposed/") {
        return key.rsplit_once('/').map(|(package, _)| package);
    }
    match classify(name)? {
        RefKind::Tag { package, .. } | RefKind::Unpublished { package, .. } => Some(package),
    }
}

/// [`discover`] on `threads` threads (`None`: one below
/// [`PARALLEL_REFS_MIN`] refs, else the available cores up to
/// [`THREADS_MAX`]): the whole stream collected and sorted.
fn discover_on(
    path: &Path,
    branch: &str,
    directory: &str,
    threads: Option<usize>,
    only: Option<&HashSet<String>>,
    refs: Option<&HashSet<String>>,
) -> Result<Discovery, OriginError> {
    let mut stream = DiscoveryStream::open_on(path, branch, directory, threads, only, refs)?;
    let mut revisions = Vec::new();
    loop {
        let batch = stream.next_batch(usize::MAX)?;
        if batch.is_empty() {
            break;
        }
        revisions.extend(batch);
    }
    revisions.sort_by(|a, b| {
        (&a.path, &a.package, a.revision, &a.workspace, a.lifecycle).cmp(&(
            &b.path,
            &b.package,
            b.revision,
            &b.workspace,
            b.lifecycle,
        ))
    });
    Ok(Discovery {
        branch_commit: stream.branch_commit(),
        revisions,
        refs_read: stream.refs_read(),
    })
}

fn open(path: &Path) -> Result<Repository, OriginError> {
    Repository::open_ext(
        path,
        RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&std::ffi::OsStr>(),
    )
    .map_err(map_git_error)
}

/// Refs below which discovery stays on one thread.
const PARALLEL_REFS_MIN: usize = 512;
/// Most threads one discovery uses.
const THREADS_MAX: usize = 4;
/// Package trees whose file listing one discoverer keeps for reuse
/// (revisions often share a tree); past it the cache starts over, so a
/// discovery's memory does not grow with the repository.
const TREE_CACHE_MAX_TREES: usize = 4096;
/// Kptfile blobs whose parsed metadata one discoverer keeps: a package's
/// Kptfile seldom changes between its revisions, while its other files
/// (hence its tree) do, so most package trees need no parse of their own.
/// Past it the cache starts over.
const KPTFILE_CACHE_MAX_BLOBS: usize = 4096;
/// Commits beyond the history index whose parsed annotations one
/// discoverer keeps; past it the cache starts over.
const ANNOTATION_CACHE_MAX_COMMITS: usize = 16_384;
/// Refs a discovery reads through one repository handle before it opens
/// the repository again. libgit2 caches every commit and tree read through
/// a handle until the handle goes (up to 256 MiB for the process, counted
/// as raw sizes; in memory several times that): a discovery of 100,000
/// revisions left ~80 MiB there. Opening again every so many refs keeps
/// what the cache is good for — the commits and upper trees each batch
/// reads again and again — and drops the package trees read once (with
/// the cache off, reading took twice as long; at 8192 two syncs of
/// 100,000 revisions peaked ~10 MiB higher than at 2048, no faster).
const HANDLE_REFS_MAX: usize = 2048;

/// How a ref contributes to the listing.
enum RefKind<'a> {
    Tag {
        package: &'a str,
        revision: i64,
    },
    Unpublished {
        package: &'a str,
        workspace: &'a str,
        lifecycle: Lifecycle,
    },
}

/// Where a ref goes in a stream: by package; within one, tags from the
/// highest revision down, then drafts and proposals by workspace, a
/// proposal before a draft of the same workspace. So the first revision
/// a package yields under a name is the one a full listing would keep for
/// that name (the highest revision, then the furthest lifecycle), and its
/// first tag that yields a revision is its latest.
fn ref_order(name: &str) -> (&str, u8, Reverse<i64>, &str, Reverse<Lifecycle>) {
    match classify(name) {
        Some(RefKind::Tag { package, revision }) => (
            package,
            0,
            Reverse(revision),
            "",
            Reverse(Lifecycle::Published),
        ),
        Some(RefKind::Unpublished {
            package,
            workspace,
            lifecycle,
        }) => (package, 1, Reverse(0), workspace, Reverse(lifecycle)),
        None => ("", 2, Reverse(0), "", Reverse(Lifecycle::Draft)),
    }
}

/// A discovery that hands out its package revisions in batches
/// ([`DiscoveryStream::next_batch`]) instead of collecting them all: what
/// a sync of a large repository holds at once is one batch, not the
/// repository. Opening it reads what the batches need and what is small
/// next to the revisions — the ref names, the history index (one entry per
/// commit), the deletion markers; each batch then reads its revisions'
/// trees, tasks and publishing info.
///
/// Order: the tags, drafts and proposals by package (see [`ref_order`]),
/// then the placeholders of the packages on the registered branch, by
/// package. Batches are deterministic: the same repository yields the same
/// batches for the same sizes. Each revision's `latest` is final when it is
/// handed out.
pub struct DiscoveryStream {
    main: Discoverer,
    /// The other threads' discoverers (own repository handles and caches),
    /// opened for the first batch large enough to split.
    helpers: Vec<Discoverer>,
    threads: usize,
    path: std::path::PathBuf,
    branch_commit: Option<Oid>,
    /// Tags, drafts and proposals to read, in [`ref_order`].
    refs: Vec<(String, Oid)>,
    next_ref: usize,
    deletion_proposed: HashSet<String>,
    /// Packages to read (all when `None`), sorted.
    only: Option<Vec<String>>,
    /// Placeholders to read: listed once the refs are done.
    placeholders: Option<Vec<(String, Oid)>>,
    next_placeholder: usize,
    /// With `only_refs` ([`discover_refs`]): each package's highest tag by
    /// name, which decides `latest` there.
    highest_tag: Option<HashMap<String, i64>>,
    /// Packages (path, name) whose latest revision was handed out.
    latest_done: HashSet<(String, String)>,
    refs_read: usize,
    /// Refs and placeholders read since the handles were opened.
    read_since_open: usize,
    /// Refs and placeholders read through the handles before they are
    /// opened again ([`HANDLE_REFS_MAX`]; tests lower it).
    handle_refs_max: usize,
}

impl std::fmt::Debug for DiscoveryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryStream")
            .field("path", &self.path)
            .field("refs", &self.refs.len())
            .field("next_ref", &self.next_ref)
            .field("next_placeholder", &self.next_placeholder)
            .finish_non_exhaustive()
    }
}

impl DiscoveryStream {
    /// A stream of the revisions [`discover`] lists (of `only`'s packages,
    /// full paths, when given — [`discover_packages`]).
    pub fn open(
        path: &Path,
        branch: &str,
        directory: &str,
        only: Option<&HashSet<String>>,
    ) -> Result<Self, OriginError> {
        Self::open_on(path, branch, directory, None, only, None)
    }

    fn open_on(
        path: &Path,
        branch: &str,
        directory: &str,
        threads: Option<usize>,
        only: Option<&HashSet<String>>,
        only_refs: Option<&HashSet<String>>,
    ) -> Result<Self, OriginError> {
        let mut main = Discoverer {
            repo: open(path)?,
            branch: branch.to_owned(),
            directory: directory.trim_matches('/').to_owned(),
            annotations: Arc::default(),
            local_annotations: HashMap::new(),
            resources: HashMap::new(),
            kptfiles: HashMap::new(),
            history: Arc::default(),
        };
        let main_ref = format!("refs/heads/{branch}");
        let mut highest_tag: HashMap<String, i64> = HashMap::new();
        let mut tip = None;
        let mut others = Vec::new();
        let mut deletion_proposed = HashSet::new();
        for reference in main.repo.references().map_err(map_git_error)? {
            let reference = reference.map_err(map_git_error)?;
            let Ok(name) = reference.name() else {
                continue;
            };
            if !(name.starts_with("refs/heads/") || name.starts_with("refs/tags/")) {
                continue;
            }
            let Ok(commit) = reference.peel_to_commit() else {
                continue; // tag of a tree or blob
            };
            if name == main_ref {
                tip = Some(commit.id());
            } else if let Some(key) = name.strip_prefix("refs/heads/deletionProposed/") {
                deletion_proposed.insert(key.to_owned());
            } else if only.is_none_or(|only| {
                package_of_ref(name).is_some_and(|package| only.contains(package))
            }) {
                if let Some(only_refs) = only_refs {
                    if let Some(RefKind::Tag { package, revision }) = classify(name) {
                        let highest = highest_tag.entry(package.to_owned()).or_default();
                        *highest = (*highest).max(revision);
                    }
                    if !only_refs.contains(name) {
                        continue;
                    }
                }
                others.push((name.to_owned(), commit.id()));
            }
        }
        let refs_read = others.len();
        let starts: Vec<Oid> = tip
            .into_iter()
            .chain(others.iter().map(|(_, c)| *c))
            .collect();
        let started = std::time::Instant::now();
        main.index_history(&starts, tip)?;
        // Refs that name no revision are dropped here; the rest sorted so
        // each package's revisions come together, best first.
        others.retain(|(name, _)| classify(name).is_some());
        // (Keys computed once per ref: comparing would parse each name
        // again at every comparison.)
        others.sort_by_cached_key(|(name, _)| {
            let (package, class, revision, workspace, lifecycle) = ref_order(name);
            (
                package.to_owned(),
                class,
                revision,
                workspace.to_owned(),
                lifecycle,
                name.clone(),
            )
        });
        let threads = threads.unwrap_or_else(|| {
            if others.len() < PARALLEL_REFS_MIN {
                1
            } else {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(THREADS_MAX))
            }
        });
        tracing::debug!(
            threads,
            refs = others.len(),
            index_ms = started.elapsed().as_millis(),
            "discovery opened"
        );
        let only = only.map(|only| {
            let mut packages: Vec<String> = only.iter().cloned().collect();
            packages.sort();
            packages
        });
        Ok(Self {
            main,
            helpers: Vec::new(),
            threads,
            path: path.to_path_buf(),
            branch_commit: tip,
            refs: others,
            next_ref: 0,
            deletion_proposed,
            only,
            placeholders: None,
            next_placeholder: 0,
            highest_tag: only_refs.map(|_| highest_tag),
            latest_done: HashSet::new(),
            refs_read,
            read_since_open: 0,
            handle_refs_max: HANDLE_REFS_MAX,
        })
    }

    /// Commit (hex) of the registered branch; `None` when it does not exist.
    pub fn branch_commit(&self) -> Option<String> {
        self.branch_commit.map(|c| c.to_string())
    }

    /// Tags, drafts and proposals this discovery reads.
    pub fn refs_read(&self) -> usize {
        self.refs_read
    }

    /// The next at most `max_revisions` (at least one) revisions; none once
    /// every revision was handed out.
    pub fn next_batch(
        &mut self,
        max_revisions: usize,
    ) -> Result<Vec<DiscoveredRevision>, OriginError> {
        let max_revisions = max_revisions.max(1);
        if self.read_since_open >= self.handle_refs_max {
            self.reopen()?;
        }
        let mut out = Vec::new();
        // Refs that yield no revision (a tag of a commit without the
        // package) leave room in the batch: read on until it is full.
        while out.len() < max_revisions && self.next_ref < self.refs.len() {
            let end = self
                .next_ref
                .saturating_add(max_revisions - out.len())
                .min(self.refs.len());
            let found = self.read_refs(self.next_ref, end)?;
            self.read_since_open += end - self.next_ref;
            self.next_ref = end;
            for mut revision in found.into_iter().flatten() {
                self.set_latest(&mut revision);
                out.push(revision);
            }
        }
        if out.len() < max_revisions && self.next_ref == self.refs.len() {
            if self.placeholders.is_none() {
                self.placeholders = Some(self.list_placeholders()?);
            }
            let placeholders = self.placeholders.as_deref().unwrap_or_default();
            let end = self
                .next_placeholder
                .saturating_add(max_revisions - out.len())
                .min(placeholders.len());
            let tip = self.branch_commit;
            for (package, tree) in &placeholders[self.next_placeholder..end] {
                let Some(tip) = tip else { break };
                let dp_key = format!("{package}/{}", self.main.branch);
                let lifecycle = if self.deletion_proposed.contains(&dp_key) {
                    Lifecycle::DeletionProposed
                } else {
                    Lifecycle::Published
                };
                out.push(self.main.placeholder(package, *tree, tip, lifecycle)?);
            }
            self.read_since_open += end - self.next_placeholder;
            self.next_placeholder = end;
        }
        Ok(out)
    }

    /// Opens the repository again for every handle (see
    /// [`HANDLE_REFS_MAX`]), keeping the discoverers' own caches.
    fn reopen(&mut self) -> Result<(), OriginError> {
        self.main.repo = open(&self.path)?;
        for helper in &mut self.helpers {
            helper.repo = open(&self.path)?;
        }
        self.read_since_open = 0;
        Ok(())
    }

    /// The revisions of refs `start..end` (`None` for a ref that yields
    /// none), in order; on several threads when there are enough.
    fn read_refs(
        &mut self,
        start: usize,
        end: usize,
    ) -> Result<Vec<Option<DiscoveredRevision>>, OriginError> {
        let refs = &self.refs[start..end];
        let deletion_proposed = &self.deletion_proposed;
        if self.threads <= 1 || refs.len() < PARALLEL_REFS_MIN {
            return refs
                .iter()
                .map(|(name, commit)| self.main.read_ref(name, *commit, deletion_proposed))
                .collect();
        }
        while self.helpers.len() + 1 < self.threads {
            self.helpers.push(Discoverer {
                repo: open(&self.path)?,
                branch: self.main.branch.clone(),
                directory: self.main.directory.clone(),
                annotations: self.main.annotations.clone(),
                local_annotations: HashMap::new(),
                resources: HashMap::new(),
                kptfiles: HashMap::new(),
                history: self.main.history.clone(),
            });
        }
        // Each ref is independent given the index: split them over
        // threads, each with its own repository handle and caches.
        let parts = std::thread::scope(|scope| {
            let workers: Vec<_> = std::iter::once(&mut self.main)
                .chain(self.helpers.iter_mut())
                .zip(refs.chunks(refs.len().div_ceil(self.threads)))
                .map(|(discoverer, part)| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(name, commit)| {
                                discoverer.read_ref(name, *commit, deletion_proposed)
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(OriginError::Git("a discovery thread panicked".into()))
                    })
                })
                .collect::<Vec<_>>()
        });
        let mut out = Vec::with_capacity(refs.len());
        for part in parts {
            out.extend(part?);
        }
        Ok(out)
    }

    /// Sets `latest` on a revision as it is handed out: on a package's
    /// first published revision N > 0 (its highest, see [`ref_order`]);
    /// with `only_refs`, on its highest tag by name.
    fn set_latest(&mut self, revision: &mut DiscoveredRevision) {
        if !(revision.revision > 0 && revision.lifecycle.is_published()) {
            return;
        }
        revision.latest = match &self.highest_tag {
            Some(highest) => {
                let full = package_path(&self.main.directory, &revision.path, &revision.package);
                highest.get(&full) == Some(&revision.revision)
            }
            None => self
                .latest_done
                .insert((revision.path.clone(), revision.package.clone())),
        };
    }

    /// The packages (full path, tree) whose placeholders to read.
    fn list_placeholders(&self) -> Result<Vec<(String, Oid)>, OriginError> {
        let Some(tip) = self.branch_commit else {
            return Ok(Vec::new());
        };
        let mut found = match &self.only {
            None => self.main.packages_on(tip)?,
            Some(only) => {
                let mut found = Vec::new();
                for package in only {
                    if let Some(tree) = self.main.package_at(tip, package)? {
                        found.push((package.clone(), tree));
                    }
                }
                found
            }
        };
        found.sort();
        Ok(found)
    }
}

struct Discoverer {
    repo: Repository,
    branch: String,
    /// Registered directory without leading or trailing `/`; `""` = root.
    directory: String,
    /// Parsed annotations per commit, of every commit the history index
    /// visited (shared, read-only once the index is built).
    annotations: Arc<HashMap<Oid, Arc<[Annotation]>>>,
    /// Parsed annotations of commits beyond the index (bounded by
    /// [`ANNOTATION_CACHE_MAX_COMMITS`]).
    local_annotations: HashMap<Oid, Arc<[Annotation]>>,
    /// Files and Kptfile metadata per package tree: revisions often share
    /// a tree (bounded by [`TREE_CACHE_MAX_TREES`]).
    resources: HashMap<Oid, PackageTree>,
    /// Kptfile metadata per Kptfile blob (bounded by
    /// [`KPTFILE_CACHE_MAX_BLOBS`]).
    kptfiles: HashMap<Oid, Arc<KptfileMetadata>>,
    /// The history, indexed once (see [`History`]); shared by the threads
    /// of one discovery.
    history: Arc<History>,
}

/// The repository's history, indexed by one walk per discovery: every
/// commit reachable from a ref gets its position in one topological,
/// newest-first order (children before parents, committer time breaking
/// ties), and each package the positions of the commits annotated for it.
/// A lookup "newest annotated ancestor of X for package P" then visits only
/// P's annotated commits instead of walking the history from X — which, done
/// for every revision, cost revisions × history.
///
/// Ancestry between two commits of the registered branch's first-parent
/// chain (where approvals and tags live) is a comparison of chain indexes;
/// only commits off that chain (drafts, proposals) ask libgit2.
#[derive(Default)]
struct History {
    position: HashMap<Oid, usize>,
    annotated: HashMap<String, Vec<(usize, Oid)>>,
    /// First-parent chain of the registered branch: commit → index (0 = tip).
    chain: HashMap<Oid, usize>,
}

impl Discoverer {
    /// The revision of one tag, draft or proposal, if it yields one.
    fn read_ref(
        &mut self,
        name: &str,
        commit: Oid,
        deletion_proposed: &HashSet<String>,
    ) -> Result<Option<DiscoveredRevision>, OriginError> {
        let Some(kind) = classify(name) else {
            return Ok(None);
        };
        match kind {
            RefKind::Tag { package, revision } => {
                let dp_key = format!("{package}/v{revision}");
                let lifecycle = if deletion_proposed.contains(&dp_key) {
                    Lifecycle::DeletionProposed
                } else {
                    Lifecycle::Published
                };
                self.tagged(package, revision, commit, lifecycle)
            }
            RefKind::Unpublished {
                package,
                workspace,
                lifecycle,
            } => self.unpublished(package, workspace, commit, lifecycle),
        }
    }
    /// Packages (full path, tree) on commit `tip` below the directory.
    fn packages_on(&self, tip: Oid) -> Result<Vec<(String, Oid)>, OriginError> {
        let commit = self.repo.find_commit(tip).map_err(map_git_error)?;
        let root = commit.tree().map_err(map_git_error)?;
        let Some(start) = self.subtree(&root, &self.directory)? else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        let mut stack = vec![(start, self.directory.to_owned(), true)];
        while let Some((tree_id, path, is_start)) = stack.pop() {
            let tree = self.repo.find_tree(tree_id).map_err(map_git_error)?;
            if !is_start && has_kptfile(&tree) {
                found.push((path, tree_id));
                continue;
            }
            for entry in tree.iter() {
                if entry.kind() != Some(ObjectType::Tree) {
                    continue;
                }
                let Ok(name) = entry.name() else {
                    continue;
                };
                stack.push((entry.id(), join(&path, name), false));
            }
        }
        Ok(found)
    }

    /// The tree at `path` below `root` (`""` = root), if it is a directory.
    fn subtree(&self, root: &Tree<'_>, path: &str) -> Result<Option<Oid>, OriginError> {
        if path.is_empty() {
            return Ok(Some(root.id()));
        }
        match root.get_path(Path::new(path)) {
            Ok(entry) if entry.kind() == Some(ObjectType::Tree) => Ok(Some(entry.id())),
            Ok(_) => Ok(None),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(map_git_error(e)),
        }
    }

    /// The package tree at `package` (full path) on `commit`, if the package
    /// exists there and lies in the directory without being nested in
    /// another package.
    fn package_at(&self, commit: Oid, package: &str) -> Result<Option<Oid>, OriginError> {
        if !self.contains(package) {
            return Ok(None);
        }
        let commit = self.repo.find_commit(commit).map_err(map_git_error)?;
        let root = commit.tree().map_err(map_git_error)?;
        let Some(tree_id) = self.subtree(&root, package)? else {
            return Ok(None);
        };
        let tree = self.repo.find_tree(tree_id).map_err(map_git_error)?;
        if !has_kptfile(&tree) {
            return Ok(None);
        }
        // Ancestors strictly between the directory and the package.
        let relative = self.relative(package);
        let mut ancestor = self.directory.to_owned();
        let segments: Vec<&str> = relative.split('/').collect();
        for segment in &segments[..segments.len() - 1] {
            ancestor = join(&ancestor, segment);
            if let Some(id) = self.subtree(&root, &ancestor)? {
                let t = self.repo.find_tree(id).map_err(map_git_error)?;
                if has_kptfile(&t) {
                    return Ok(None);
                }
            }
        }
        Ok(Some(tree_id))
    }

    /// Whether `package` (full path) lies strictly below the directory.
    fn contains(&self, package: &str) -> bool {
        if package.is_empty() {
            return false;
        }
        if self.directory.is_empty() {
            return true;
        }
        package
            .strip_prefix(self.directory.as_str())
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
    }

    fn relative<'p>(&self, package: &'p str) -> &'p str {
        if self.directory.is_empty() {
            package
        } else {
            &package[self.directory.len() + 1..]
        }
    }

    fn placeholder(
        &mut self,
        package: &str,
        tree: Oid,
        tip: Oid,
        lifecycle: Lifecycle,
    ) -> Result<DiscoveredRevision, OriginError> {
        // The newest commit on the branch annotated for this package is the
        // approval that put it there: it gives publisher and time.
        let mut published = PublishInfo::default();
        self.walk(tip, package, |commit, annotations| {
            if annotations.iter().any(|a| a.package == package) {
                published = publish_info(commit);
                true
            } else {
                false
            }
        })?;
        // No task history: Porch reads a placeholder's tasks for the
        // workspace named after the branch, which no annotation carries
        // (see the module docs).
        let workspace = self.branch.to_owned();
        self.revision(
            package,
            tree,
            tip,
            -1,
            workspace,
            lifecycle,
            published,
            Vec::new(),
        )
    }

    fn tagged(
        &mut self,
        package: &str,
        revision: i64,
        commit: Oid,
        lifecycle: Lifecycle,
    ) -> Result<Option<DiscoveredRevision>, OriginError> {
        let Some(tree) = self.package_at(commit, package)? else {
            return Ok(None);
        };
        let c = self.repo.find_commit(commit).map_err(map_git_error)?;
        let annotations = annotations_of(&self.annotations, &mut self.local_annotations, &c);
        let annotated = annotated_workspace(&annotations, package);
        let published = publish_info(&c);
        drop(c);
        let tasks = self.tasks(commit, package, &annotated)?;
        let workspace = if annotated.is_empty() {
            format!("v{revision}")
        } else {
            annotated
        };
        self.revision(
            package, tree, commit, revision, workspace, lifecycle, published, tasks,
        )
        .map(Some)
    }

    fn unpublished(
        &mut self,
        package: &str,
        workspace: &str,
        commit: Oid,
        lifecycle: Lifecycle,
    ) -> Result<Option<DiscoveredRevision>, OriginError> {
        let Some(tree) = self.package_at(commit, package)? else {
            return Ok(None);
        };
        let tasks = self.tasks(commit, package, workspace)?;
        self.revision(
            package,
            tree,
            commit,
            0,
            workspace.to_owned(),
            lifecycle,
            PublishInfo::default(),
            tasks,
        )
        .map(Some)
    }

    #[allow(clippy::too_many_arguments)]
    fn revision(
        &mut self,
        package: &str,
        tree: Oid,
        commit: Oid,
        revision: i64,
        workspace: String,
        lifecycle: Lifecycle,
        published: PublishInfo,
        tasks: Vec<Task>,
    ) -> Result<DiscoveredRevision, OriginError> {
        let PackageTree {
            files: resources,
            metadata,
        } = self.resources_of(tree)?;
        let KptfileMetadata {
            labels,
            annotations,
        } = Arc::unwrap_or_clone(metadata);
        let (path, name) = match self.relative(package).rsplit_once('/') {
            Some((path, name)) => (path.to_owned(), name.to_owned()),
            None => (String::new(), self.relative(package).to_owned()),
        };
        let published = if lifecycle.is_published() {
            published
        } else {
            PublishInfo::default()
        };
        Ok(DiscoveredRevision {
            path,
            package: name,
            workspace,
            revision,
            lifecycle,
            commit: commit.to_string(),
            resources,
            published_by: published.by,
            published_at: published.at,
            tasks,
            labels,
            annotations,
            latest: false,
        })
    }

    /// Task history of `package` in `workspace` from `start`, as Porch's
    /// `loadTasks` (`pkg/externalrepo/git/git.go`) reads it: the commits
    /// annotated for the package are walked newest first; a task of a type
    /// that can start a revision (`init`, `edit`, `clone`, `upgrade`:
    /// Porch's `IsValidFirstTaskType`) replaces what was found so far, and
    /// `init` or `clone` ends the walk. So the history is at most one task:
    /// the one that created the revision; `eval`, `patch`, `render` and
    /// the like never show. An annotation matches on its `workspaceName`,
    /// or — for annotations written before workspaces existed — on its
    /// `revision` when it has no `workspaceName`.
    fn tasks(
        &mut self,
        start: Oid,
        package: &str,
        workspace: &str,
    ) -> Result<Vec<Task>, OriginError> {
        let mut first = None;
        self.walk(start, package, |_, annotations| {
            for a in annotations {
                let workspace_matches = a.workspace_name == workspace
                    || (a.workspace_name.is_empty() && a.revision == workspace);
                if a.package != package || !workspace_matches {
                    continue;
                }
                let Some(task) = &a.task else { continue };
                if FIRST_TASK_TYPES.contains(&task.r#type.as_str()) {
                    first = Some(task.clone());
                }
                if task.r#type == "init" || task.r#type == "clone" {
                    return true; // the revision starts here
                }
            }
            false
        })?;
        Ok(first.into_iter().collect())
    }

    /// Builds [`History`] with one walk from every ref.
    fn index_history(&mut self, starts: &[Oid], tip: Option<Oid>) -> Result<(), OriginError> {
        let mut history = History::default();
        if let Some(tip) = tip {
            let mut walk = self.repo.revwalk().map_err(map_git_error)?;
            walk.simplify_first_parent().map_err(map_git_error)?;
            walk.push(tip).map_err(map_git_error)?;
            for (index, oid) in walk.enumerate().take(HISTORY_WALK_COMMITS_MAX) {
                history.chain.insert(oid.map_err(map_git_error)?, index);
            }
        }
        let mut indexed = HashMap::new();
        let mut walk = self.repo.revwalk().map_err(map_git_error)?;
        // Committer time, but never a parent before its children: commits
        // made within one second (Porch writes several) keep their order.
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::TIME)
            .map_err(map_git_error)?;
        for start in starts {
            walk.push(*start).map_err(map_git_error)?;
        }
        for (position, oid) in walk.enumerate() {
            if position >= HISTORY_WALK_COMMITS_MAX {
                warn!(
                    commits_max = HISTORY_WALK_COMMITS_MAX,
                    "history index cut short"
                );
                break;
            }
            let oid = oid.map_err(map_git_error)?;
            history.position.insert(oid, position);
            let commit = self.repo.find_commit(oid).map_err(map_git_error)?;
            let annotations: Arc<[Annotation]> =
                parse_message(&String::from_utf8_lossy(commit.message_bytes())).into();
            indexed.insert(oid, annotations.clone());
            let mut packages: Vec<&str> = annotations.iter().map(|a| a.package.as_str()).collect();
            packages.sort_unstable();
            packages.dedup();
            for package in packages {
                history
                    .annotated
                    .entry(package.to_owned())
                    .or_default()
                    .push((position, oid));
            }
        }
        self.history = Arc::new(history);
        // Every indexed commit's annotations, for all threads to read.
        self.annotations = Arc::new(indexed);
        Ok(())
    }

    /// Visits the commits annotated for `package` that are `start` or its
    /// ancestors, newest first (children before parents), until `visit`
    /// returns true.
    fn walk(
        &mut self,
        start: Oid,
        package: &str,
        mut visit: impl FnMut(&git2::Commit<'_>, &[Annotation]) -> bool,
    ) -> Result<(), OriginError> {
        let Some(&from) = self.history.position.get(&start) else {
            return Ok(());
        };
        let candidates: Vec<Oid> = self
            .history
            .annotated
            .get(package)
            .map(|commits| {
                commits
                    .iter()
                    .filter(|(p, _)| *p >= from)
                    .map(|(_, oid)| *oid)
                    .collect()
            })
            .unwrap_or_default();
        let start_on_chain = self.history.chain.get(&start).copied();
        for oid in candidates {
            let reachable = match (start_on_chain, self.history.chain.get(&oid)) {
                _ if oid == start => true,
                (Some(s), Some(c)) => *c > s,
                _ => self
                    .repo
                    .graph_descendant_of(start, oid)
                    .map_err(map_git_error)?,
            };
            if !reachable {
                continue;
            }
            let commit = self.repo.find_commit(oid).map_err(map_git_error)?;
            let annotations =
                annotations_of(&self.annotations, &mut self.local_annotations, &commit);
            if visit(&commit, &annotations) {
                break;
            }
        }
        Ok(())
    }

    /// The metadata of Kptfile blob `kptfile`, parsed once per discoverer
    /// (see [`KPTFILE_CACHE_MAX_BLOBS`]).
    fn kptfile_metadata_of(&mut self, kptfile: Oid) -> Result<Arc<KptfileMetadata>, OriginError> {
        if let Some(found) = self.kptfiles.get(&kptfile) {
            return Ok(found.clone());
        }
        let blob = self.repo.find_blob(kptfile).map_err(map_git_error)?;
        let metadata = Arc::new(kptfile_metadata(blob.content()));
        if self.kptfiles.len() >= KPTFILE_CACHE_MAX_BLOBS {
            self.kptfiles.clear();
        }
        self.kptfiles.insert(kptfile, metadata.clone());
        Ok(metadata)
    }

    fn resources_of(&mut self, tree_id: Oid) -> Result<PackageTree, OriginError> {
        if let Some(found) = self.resources.get(&tree_id) {
            return Ok(found.clone());
        }
        let tree = self.repo.find_tree(tree_id).map_err(map_git_error)?;
        let mut files = BTreeMap::new();
        let mut failure = None;
        let walked = tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() != Some(ObjectType::Blob) {
                return git2::TreeWalkResult::Ok; // trees, submodules
            }
            let Ok(name) = entry.name() else {
                return git2::TreeWalkResult::Ok; // not UTF-8: cannot be named
            };
            if files.len() >= PACKAGE_FILES_MAX {
                failure = Some(OriginError::Git(format!(
                    "package tree {tree_id} holds more than {PACKAGE_FILES_MAX} files"
                )));
                return git2::TreeWalkResult::Abort;
            }
            files.insert(format!("{dir}{name}"), entry.id());
            git2::TreeWalkResult::Ok
        });
        // An abort from the callback surfaces as an error of the walk; the
        // callback's own reason is the one worth reporting.
        if let Some(e) = failure {
            return Err(e);
        }
        walked.map_err(map_git_error)?;
        drop(tree);
        let metadata = match files.get("Kptfile") {
            Some(kptfile) => self.kptfile_metadata_of(*kptfile)?,
            None => Arc::default(),
        };
        let found = PackageTree {
            files: Arc::new(files),
            metadata,
        };
        if self.resources.len() >= TREE_CACHE_MAX_TREES {
            self.resources.clear();
        }
        self.resources.insert(tree_id, found.clone());
        Ok(found)
    }
}

/// The parsed annotations of `commit`: from the history index, else from
/// (and into) a discoverer's own bounded cache.
fn annotations_of(
    indexed: &HashMap<Oid, Arc<[Annotation]>>,
    local: &mut HashMap<Oid, Arc<[Annotation]>>,
    commit: &git2::Commit<'_>,
) -> Arc<[Annotation]> {
    if let Some(found) = indexed.get(&commit.id()) {
        return found.clone();
    }
    if local.len() >= ANNOTATION_CACHE_MAX_COMMITS && !local.contains_key(&commit.id()) {
        local.clear();
    }
    local
        .entry(commit.id())
        .or_insert_with(|| parse_message(&String::from_utf8_lossy(commit.message_bytes())).into())
        .clone()
}

/// What discovery keeps of a package tree.
#[derive(Clone)]
struct PackageTree {
    files: Arc<BTreeMap<String, Oid>>,
    metadata: Arc<KptfileMetadata>,
}

/// What discovery reads of a Kptfile's `metadata`: its labels and
/// annotations (Porch's `PackageMetadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KptfileMetadata {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// Publisher and publishing time, both optional.
#[derive(Debug, Default)]
struct PublishInfo {
    by: Option<String>,
    at: Option<String>,
}

fn publish_info(commit: &git2::Commit<'_>) -> PublishInfo {
    let author = commit.author();
    let by = String::from_utf8_lossy(author.email_bytes()).into_owned();
    PublishInfo {
        by: (!by.is_empty()).then_some(by),
        at: Some(rfc3339_utc(author.when().seconds())),
    }
}

/// The first non-empty `workspaceName` annotated for `package`, else `""`.
fn annotated_workspace(annotations: &[Annotation], package: &str) -> String {
    annotations
        .iter()
        .find(|a| a.package == package && !a.workspace_name.is_empty())
        .map(|a| a.workspace_name.clone())
        .unwrap_or_default()
}

/// Sorts a ref name into the kind of revision it makes, if any.
fn classify(name: &str) -> Option<RefKind<'_>> {
    if let Some(tag) = name.strip_prefix("refs/tags/") {
        let (package, revision) = tag.rsplit_once('/')?;
        let revision = parse_revision(revision)?;
        return (!package.is_empty()).then_some(RefKind::Tag { package, revision });
    }
    let branch = name.strip_prefix("refs/heads/")?;
    let (rest, lifecycle) = if let Some(rest) = branch.strip_prefix("drafts/") {
        (rest, Lifecycle::Draft)
    } else if let Some(rest) = branch.strip_prefix("proposed/") {
        (rest, Lifecycle::Proposed)
    } else {
        return None;
    };
    let (package, workspace) = rest.rsplit_once('/')?;
    (!package.is_empty() && !workspace.is_empty()).then_some(RefKind::Unpublished {
        package,
        workspace,
        lifecycle,
    })
}

/// `vN` with N a positive decimal without leading zeros.
fn parse_revision(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('v')?;
    if digits.is_empty()
        || digits.len() > 18
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

fn has_kptfile(tree: &Tree<'_>) -> bool {
    // Like Porch (go-git's IsRegular): an executable or symlinked Kptfile
    // does not make a package.
    tree.get_name("Kptfile").is_some_and(|e| {
        e.kind() == Some(ObjectType::Blob) && matches!(e.filemode(), 0o100644 | 0o100664)
    })
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// `metadata.labels` and `metadata.annotations` of a Kptfile; scalars
/// other than strings are written out as YAML would, other values are
/// skipped; anything unparsable yields neither.
///
/// Only the two maps are built: the rest of the document is skipped as it
/// is read (serde's `IgnoredAny`), not turned into a tree. A Kptfile that
/// names neither word is not parsed at all — the common case used to be
/// no labels, but kpt writes the `config.kubernetes.io/local-config`
/// annotation into most Kptfiles, so most are parsed now, once per
/// package tree (the discoverer caches per tree).
fn kptfile_metadata(kptfile: &[u8]) -> KptfileMetadata {
    let mentions = |word: &[u8]| kptfile.windows(word.len()).any(|w| w == word);
    if !mentions(b"labels") && !mentions(b"annotations") {
        return KptfileMetadata::default();
    }
    /// The part of a Kptfile read: unknown keys are skipped unparsed.
    #[derive(serde::Deserialize)]
    struct Document {
        #[serde(default)]
        metadata: Option<Metadata>,
    }
    #[derive(serde::Deserialize)]
    struct Metadata {
        #[serde(default)]
        labels: Option<serde_yaml::Value>,
        #[serde(default)]
        annotations: Option<serde_yaml::Value>,
    }
    let Ok(Document {
        metadata: Some(metadata),
    }) = serde_yaml::from_slice::<Document>(kptfile)
    else {
        return KptfileMetadata::default();
    };
    KptfileMetadata {
        labels: string_pairs(metadata.labels.as_ref()),
        annotations: string_pairs(metadata.annotations.as_ref()),
    }
}

/// The scalar pairs of a YAML mapping (none when `map` is no mapping).
fn string_pairs(map: Option<&serde_yaml::Value>) -> BTreeMap<String, String> {
    let Some(map) = map.and_then(serde_yaml::Value::as_mapping) else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(k, v)| Some((scalar_string(k)?, scalar_string(v)?)))
        .collect()
}

fn scalar_string(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Seconds in 400 Gregorian years (146 097 days): the calendar repeats
/// after them, leap days included.
const GREGORIAN_CYCLE_SECONDS: i64 = 146_097 * 86_400;

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC,
/// as Porch shows `publishedAt`), for every `i64`, without panicking.
///
/// Git stores any `i64` as a commit time; `time` represents the years
/// -9999..=9999. The date is computed by `time` for the same instant
/// shifted by whole 400-year cycles into 1970..2370, and the shift is added
/// back to the year, so out-of-range times still give the proleptic
/// Gregorian date: more than four digits after 9999, a `-` before year 0
/// (`-001-12-31T23:59:59Z`). Those are not RFC 3339, but a forged commit
/// date must not fail discovery.
fn rfc3339_utc(seconds: i64) -> String {
    let cycles = seconds.div_euclid(GREGORIAN_CYCLE_SECONDS);
    let shifted = seconds.rem_euclid(GREGORIAN_CYCLE_SECONDS);
    // `shifted` lies in 1970..2370, well inside what `time` represents:
    // the fallback is never taken.
    let t = OffsetDateTime::from_unix_timestamp(shifted).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // |cycles| < 7.4e8 for any i64 of seconds: the year cannot overflow.
    let year = i64::from(t.year()) + cycles * 400;
    format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_661_554_055), "2022-08-26T22:47:35Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
    }

    /// The values the hand-written calendar this replaced gave, from leap
    /// days to the ends of `i64`.
    #[test]
    fn formats_leap_days_old_dates_and_out_of_range_times() {
        let cases = [
            // Leap days, and the day after February of a century year that
            // is not a leap year.
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (-2_203_891_200, "1900-03-01T00:00:00Z"),
            (-2_208_988_800, "1900-01-01T00:00:00Z"),
            // The last second of one 400-year cycle and the first of the
            // next, as the shift into 1970..2370 sees them.
            (12_622_780_799, "2369-12-31T23:59:59Z"),
            (12_622_780_800, "2370-01-01T00:00:00Z"),
            (-12_622_780_800, "1570-01-01T00:00:00Z"),
            (-12_622_780_801, "1569-12-31T23:59:59Z"),
            // The edges of four-digit years, and beyond.
            (-62_135_596_800, "0001-01-01T00:00:00Z"),
            (-62_167_219_200, "0000-01-01T00:00:00Z"),
            (-62_167_219_201, "-001-12-31T23:59:59Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (253_402_300_800, "10000-01-01T00:00:00Z"),
            (i64::MAX, "292277026596-12-04T15:30:07Z"),
            (i64::MIN, "-292277022657-01-27T08:29:52Z"),
        ];
        for (seconds, want) in cases {
            assert_eq!(rfc3339_utc(seconds), want, "{seconds}");
        }
    }

    #[test]
    fn classifies_refs() {
        assert!(matches!(
            classify("refs/tags/catalog/gcp/bucket/v12"),
            Some(RefKind::Tag {
                package: "catalog/gcp/bucket",
                revision: 12
            })
        ));
        assert!(matches!(
            classify("refs/heads/proposed/a/b/ws-1"),
            Some(RefKind::Unpublished {
                package: "a/b",
                workspace: "ws-1",
                lifecycle: Lifecycle::Proposed
            })
        ));
        for ignored in [
            "refs/tags/v1",
            "refs/tags/pkg/v0",
            "refs/tags/pkg/v01",
            "refs/tags/pkg/release",
            "refs/heads/blueprint/bp2/v1",
            "refs/heads/drafts/only-one-segment",
        ] {
            assert!(classify(ignored).is_none(), "{ignored}");
        }
    }

    #[test]
    fn threads_split_the_refs_and_find_the_same_revisions() {
        // 300 packages on main, each tagged v1 and v2, one draft each for
        // a third of them: 700 refs, enough for every thread to get some.
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let signature = git2::Signature::now("t", "t@example.com").unwrap();
        let mut root = repo.treebuilder(None).unwrap();
        for i in 0..300 {
            let kptfile = repo
                .blob(format!("kind: Kptfile\nmetadata:\n  name: p{i}\n").as_bytes())
                .unwrap();
            let mut package = repo.treebuilder(None).unwrap();
            package.insert("Kptfile", kptfile, 0o100644).unwrap();
            root.insert(format!("p{i:03}"), package.write().unwrap(), 0o040000)
                .unwrap();
        }
        let tree = repo.find_tree(root.write().unwrap()).unwrap();
        let commit = repo
            .commit(
                Some("refs/heads/main"),
                &signature,
                &signature,
                "all",
                &tree,
                &[],
            )
            .unwrap();
        for i in 0..300 {
            for v in 1..=2 {
                repo.reference(&format!("refs/tags/p{i:03}/v{v}"), commit, false, "")
                    .unwrap();
            }
            if i % 3 == 0 {
                repo.reference(&format!("refs/heads/drafts/p{i:03}/ws"), commit, false, "")
                    .unwrap();
            }
        }
        let one = discover_on(dir.path(), "main", "", Some(1), None, None).unwrap();
        let three = discover_on(dir.path(), "main", "", Some(3), None, None).unwrap();
        assert_eq!(one.revisions.len(), 300 * 3 + 100);
        assert_eq!(one, three);
        let automatic = discover(dir.path(), "main", "").unwrap();
        assert_eq!(one, automatic);
        let latest = one.revisions.iter().filter(|r| r.latest).count();
        assert_eq!(latest, 300);
    }

    /// Small batches, on two threads, with the handles opened again every
    /// 100 refs, hand out exactly what one collected discovery lists —
    /// `latest` included, across batch boundaries.
    #[test]
    fn batches_and_reopened_handles_find_the_same_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let signature = git2::Signature::now("t", "t@example.com").unwrap();
        let mut root = repo.treebuilder(None).unwrap();
        let mut commits = Vec::new();
        for round in 0..3 {
            for i in 0..40 {
                let kptfile = repo
                    .blob(format!("kind: Kptfile\nmetadata:\n  name: p{i}-{round}\n").as_bytes())
                    .unwrap();
                let mut package = repo.treebuilder(None).unwrap();
                package.insert("Kptfile", kptfile, 0o100644).unwrap();
                root.insert(format!("p{i:03}"), package.write().unwrap(), 0o040000)
                    .unwrap();
            }
            let tree = repo.find_tree(root.write().unwrap()).unwrap();
            let parents: Vec<git2::Commit<'_>> = commits
                .last()
                .map(|c| repo.find_commit(*c).unwrap())
                .into_iter()
                .collect();
            let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
            let commit = repo
                .commit(
                    Some("refs/heads/main"),
                    &signature,
                    &signature,
                    &format!("round {round}"),
                    &tree,
                    &parents,
                )
                .unwrap();
            commits.push(commit);
        }
        // Tags v1..v3 on the three rounds, a draft for every other package:
        // 40 × 3 + 20 = 140 refs; plus 40 placeholders.
        for i in 0..40 {
            for (v, commit) in commits.iter().enumerate() {
                repo.reference(&format!("refs/tags/p{i:03}/v{}", v + 1), *commit, false, "")
                    .unwrap();
            }
            if i % 2 == 0 {
                repo.reference(
                    &format!("refs/heads/drafts/p{i:03}/ws"),
                    commits[0],
                    false,
                    "",
                )
                .unwrap();
            }
        }
        let whole = discover(dir.path(), "main", "").unwrap();
        assert_eq!(whole.revisions.len(), 180);
        assert_eq!(whole.revisions.iter().filter(|r| r.latest).count(), 40);

        let mut stream =
            DiscoveryStream::open_on(dir.path(), "main", "", Some(2), None, None).unwrap();
        stream.handle_refs_max = 100;
        let mut batched = Vec::new();
        let mut batches = 0;
        loop {
            let batch = stream.next_batch(7).unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 7);
            batches += 1;
            batched.extend(batch);
        }
        assert_eq!(batches, 180usize.div_ceil(7));
        batched.sort_by(|a, b| {
            (&a.path, &a.package, a.revision, &a.workspace, a.lifecycle).cmp(&(
                &b.path,
                &b.package,
                b.revision,
                &b.workspace,
                b.lifecycle,
            ))
        });
        assert_eq!(batched, whole.revisions);
    }

    /// Porch's `loadTasks` on histories the fixtures do not cover: the
    /// oldest creating task reached wins, `init` and `clone` end the walk,
    /// other workspaces and packages are not looked at.
    #[test]
    fn the_task_history_is_the_task_that_created_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let signature = git2::Signature::now("t", "t@example.com").unwrap();
        let kptfile = repo.blob(b"kind: Kptfile\n").unwrap();
        let mut package = repo.treebuilder(None).unwrap();
        package.insert("Kptfile", kptfile, 0o100644).unwrap();
        let mut root = repo.treebuilder(None).unwrap();
        root.insert("p", package.write().unwrap(), 0o040000)
            .unwrap();
        let tree = repo.find_tree(root.write().unwrap()).unwrap();
        // One chain of commits per case, oldest first, each annotated with
        // (package, workspace, task type); then the task the history must
        // be: its type and the step (index in the chain) that wrote it.
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str, &'static str)],
            Option<(&'static str, usize)>,
        );
        let cases: [Case; 7] = [
            (
                "a",
                &[("p", "a", "init"), ("p", "a", "eval"), ("p", "a", "patch")],
                Some(("init", 0)),
            ),
            // Overwritten on the way back: the oldest creating task wins.
            (
                "b",
                &[
                    ("p", "b", "edit"),
                    ("p", "b", "eval"),
                    ("p", "b", "upgrade"),
                ],
                Some(("edit", 0)),
            ),
            (
                "c",
                &[("p", "c", "clone"), ("p", "c", "edit")],
                Some(("clone", 0)),
            ),
            // Another workspace's init is not this revision's.
            (
                "d",
                &[("p", "other", "init"), ("p", "d", "upgrade")],
                Some(("upgrade", 1)),
            ),
            // The newest init ends the walk.
            (
                "e",
                &[("p", "e", "init"), ("p", "e", "render"), ("p", "e", "init")],
                Some(("init", 2)),
            ),
            ("f", &[("q", "f", "init"), ("p", "f", "eval")], None),
            ("g", &[("p", "g", "patch")], None),
        ];
        for (workspace, history, _) in cases {
            let mut parent: Option<Oid> = None;
            for (i, (package, ws, kind)) in history.iter().enumerate() {
                let message = format!(
                    "step {i}\n\nkpt:{{\"package\":\"{package}\",\"workspaceName\":\"{ws}\",\"task\":{{\"type\":\"{kind}\",\"step\":{i}}}}}\n"
                );
                let parents: Vec<git2::Commit<'_>> = parent
                    .map(|p| repo.find_commit(p).unwrap())
                    .into_iter()
                    .collect();
                let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
                parent = Some(
                    repo.commit(None, &signature, &signature, &message, &tree, &parents)
                        .unwrap(),
                );
            }
            repo.reference(
                &format!("refs/heads/drafts/p/{workspace}"),
                parent.unwrap(),
                false,
                "",
            )
            .unwrap();
        }
        let found = discover(dir.path(), "main", "").unwrap();
        for (workspace, history, want) in cases {
            let revision = found
                .revisions
                .iter()
                .find(|r| r.workspace == workspace)
                .unwrap();
            let got: Vec<(&str, &str)> = revision
                .tasks
                .iter()
                .map(|t| (t.r#type.as_str(), t.raw.as_str()))
                .collect();
            let want_raw =
                want.map(|(kind, step)| format!("{{\"type\":\"{kind}\",\"step\":{step}}}"));
            let want: Vec<(&str, &str)> = want
                .iter()
                .zip(&want_raw)
                .map(|((kind, _), raw)| (*kind, raw.as_str()))
                .collect();
            assert_eq!(got, want, "{workspace}: {history:?}");
        }
    }

    #[test]
    fn kptfile_metadata_tolerates_broken_yaml() {
        let good = b"apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: p\n  labels:\n    tier: gold\n    replicas: 3\n  annotations:\n    config.kubernetes.io/local-config: \"true\"\n    test-annotation: \"true\"\n    nested: {a: b}\n    enabled: true\ninfo:\n  description: d\npipeline:\n  mutators: [{image: x}]\n";
        let pairs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            kptfile_metadata(good),
            KptfileMetadata {
                labels: pairs(&[("replicas", "3"), ("tier", "gold")]),
                annotations: pairs(&[
                    ("config.kubernetes.io/local-config", "true"),
                    ("enabled", "true"),
                    ("test-annotation", "true"),
                ]),
            }
        );
        assert_eq!(
            kptfile_metadata(b"metadata:\n  name: p\n  annotations:\n    a: b\n"),
            KptfileMetadata {
                labels: BTreeMap::new(),
                annotations: pairs(&[("a", "b")]),
            }
        );
        for broken in [
            &b"metadata: [unclosed"[..],
            b"\xff\xfe labels",
            b"metadata: [labels, annotations]\n",
            b"metadata:\n  labels: [a, b]\n  annotations: text\n",
            b"- labels\n",
            b"kind: Kptfile\nmetadata:\n  name: p\n",
        ] {
            assert_eq!(
                kptfile_metadata(broken),
                KptfileMetadata::default(),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }
}
