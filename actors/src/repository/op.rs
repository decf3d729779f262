//! A lifecycle command and what it leaves: the vocabulary shared by the
//! pure decisions ([`super::decide`]), the command's I/O phase
//! ([`super::command`]) and the messages — a leaf module, so those import
//! it and not each other.

use cairn_events::v1::PackageRevisionRow;

use crate::origin::write::Files;

/// What a new draft starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A `Kptfile` for the package, nothing else (`init` task).
    Init,
    /// These files (a `Kptfile` is added when they hold none; `init` task).
    Files(Files),
    /// A clone of revision `from` (its object name), a published revision
    /// of another package: its files, the `Kptfile` renamed for the new
    /// package and pointing at `from` as its upstream (`clone` task; see
    /// [`crate::origin::kptfile`]).
    Clone {
        /// The revision cloned.
        from: String,
        /// Its files, the `Kptfile` rewritten.
        files: Files,
    },
    /// A copy of revision `from`, a published revision of the **same**
    /// package (a new draft of an existing package, Porch's
    /// `porchctl rpkg copy`): its files verbatim (`edit` task).
    Copy {
        /// The revision copied.
        from: String,
        /// Its files.
        files: Files,
    },
}

impl Source {
    /// The revision it starts from (its object name), for a clone or a
    /// copy.
    pub fn from(&self) -> Option<&str> {
        match self {
            Source::Clone { from, .. } | Source::Copy { from, .. } => Some(from),
            Source::Init | Source::Files(_) => None,
        }
    }
}

/// One lifecycle command (was `Op`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleOp {
    /// A new draft of `package` at `path` in workspace `workspace`.
    Create {
        /// Package path below the registered directory (may be empty).
        path: String,
        /// Package name.
        package: String,
        /// Workspace, unique per package.
        workspace: String,
        /// What it holds.
        source: Source,
    },
    /// A draft's resources replaced, when it is still at `resource_version`.
    Update {
        /// The draft.
        name: String,
        /// Its new files (holding a `Kptfile`).
        files: Files,
        /// The `resource_version` the client read.
        resource_version: u64,
    },
    /// Draft → Proposed.
    Propose(String),
    /// Proposed → Draft.
    Reject(String),
    /// Proposed → Published.
    Approve(String),
    /// Published → DeletionProposed.
    ProposeDelete(String),
    /// DeletionProposed → Published.
    WithdrawDelete(String),
    /// A draft, a proposal, or a revision whose deletion was proposed.
    Delete(String),
}

impl LifecycleOp {
    /// The command's name, as in its endpoint (`create`, `approve`, …).
    pub fn verb(&self) -> &'static str {
        match self {
            LifecycleOp::Create { .. } => "create",
            LifecycleOp::Update { .. } => "update",
            LifecycleOp::Propose(_) => "propose",
            LifecycleOp::Reject(_) => "reject",
            LifecycleOp::Approve(_) => "approve",
            LifecycleOp::ProposeDelete(_) => "propose-delete",
            LifecycleOp::WithdrawDelete(_) => "withdraw-delete",
            LifecycleOp::Delete(_) => "delete",
        }
    }

    /// The object name of the revision the command is about, in
    /// `repository` (a `create`'s is the one it would create).
    pub fn target(&self, repository: &str) -> String {
        match self {
            LifecycleOp::Create {
                path,
                package,
                workspace,
                ..
            } => super::naming::object_name(repository, path, package, workspace),
            LifecycleOp::Update { name, .. }
            | LifecycleOp::Propose(name)
            | LifecycleOp::Reject(name)
            | LifecycleOp::Approve(name)
            | LifecycleOp::ProposeDelete(name)
            | LifecycleOp::WithdrawDelete(name)
            | LifecycleOp::Delete(name) => name.clone(),
        }
    }

    /// The revision a `create` clones or copies (its object name).
    pub fn source(&self) -> Option<&Source> {
        match self {
            LifecycleOp::Create { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What a lifecycle command left (was `Outcome`).
#[derive(Debug, Clone, PartialEq)]
pub enum LifecycleOutcome {
    /// The target revision after the command, as the view now has it.
    Revision(Box<PackageRevisionRow>),
    /// The target revision is gone.
    Deleted(String),
}
