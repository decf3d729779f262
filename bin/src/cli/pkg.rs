//! `cairn pkg …`: list, inspect, pull, author and publish package revisions.

use std::{io::Write, path::PathBuf};

use clap::{Args, Subcommand};

use super::{names::split_key, Conn};
use crate::client;

#[derive(Debug, Subcommand)]
pub(super) enum PkgCommand {
    /// List package revisions.
    List {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Show a package revision.
    Get {
        /// namespace/name (the Porch object name).
        name: String,
    },
    /// Write a package revision's resources into a directory.
    ///
    /// Into DIR: a new or empty directory, or with --force one whose
    /// contents are replaced. Without DIR (or with `-`): the package as a
    /// kpt ResourceList on stdout, as `porchctl rpkg pull` prints it.
    Pull {
        /// namespace/name (the Porch object name).
        name: String,
        /// Target directory; none or `-` for stdout.
        dir: Option<PathBuf>,
        /// Replace the contents of a non-empty DIR (its `.git` stays).
        #[arg(long)]
        force: bool,
    },
    /// Create a draft: an empty package (a Kptfile), or a copy of a revision.
    Init {
        /// namespace/repository.
        repository: String,
        /// Package path in the repository's directory, e.g. `catalog/app`.
        package: String,
        /// Workspace name, unique per package.
        #[arg(long, short = 'w')]
        workspace: String,
        /// Copy this revision (its object name, same namespace).
        #[arg(long)]
        clone_from: Option<String>,
    },
    /// Replace a draft's resources with the files of a local directory.
    Push {
        /// namespace/name of the draft.
        name: String,
        /// Directory holding the package (its Kptfile at the top).
        dir: PathBuf,
        /// The resource_version the files were based on (default: the
        /// draft's current one).
        #[arg(long)]
        resource_version: Option<u64>,
    },
    /// Draft → Proposed.
    Propose {
        /// namespace/name.
        name: String,
    },
    /// Proposed → Draft.
    Reject {
        /// namespace/name.
        name: String,
    },
    /// Proposed → Published (the next revision number).
    Approve {
        /// namespace/name.
        name: String,
    },
    /// Published → DeletionProposed.
    ProposeDelete {
        /// namespace/name.
        name: String,
    },
    /// DeletionProposed → Published.
    WithdrawDelete {
        /// namespace/name.
        name: String,
    },
    /// Delete a draft, a proposal, or a revision whose deletion was proposed.
    Delete {
        /// namespace/name.
        name: String,
    },
}

/// The `pkgrev.list` filter as flags (`pkg list`, `watch`).
#[derive(Debug, Args)]
pub(super) struct FilterArgs {
    /// Only this namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Only this repository.
    #[arg(long)]
    repository: Option<String>,
    /// Only this package.
    #[arg(long)]
    package: Option<String>,
    /// Only this package path.
    #[arg(long)]
    path: Option<String>,
    /// Only this workspace.
    #[arg(long)]
    workspace: Option<String>,
    /// Only these lifecycles (repeatable).
    #[arg(long)]
    lifecycle: Vec<String>,
    /// Only revisions with this Kptfile label, as key=value (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Only latest revisions.
    #[arg(long)]
    latest: bool,
}

impl FilterArgs {
    /// The filter as the fields of a `pkgrev.list` request.
    pub(super) fn into_json(self) -> serde_json::Map<String, serde_json::Value> {
        let mut filter = serde_json::Map::new();
        let strings = [
            ("namespace", self.namespace),
            ("repository", self.repository),
            ("package", self.package),
            ("path", self.path),
            ("workspace", self.workspace),
        ];
        for (key, value) in strings {
            if let Some(v) = value {
                filter.insert(key.into(), v.into());
            }
        }
        if !self.lifecycle.is_empty() {
            filter.insert("lifecycle".into(), self.lifecycle.into());
        }
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, serde_json::Value> = self
                .labels
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect();
            filter.insert("labels".into(), labels.into());
        }
        if self.latest {
            filter.insert("latest".into(), true.into());
        }
        filter
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?}: expected key=value"))
}

/// Sets `"principal"` in a request body when one was given.
fn with_principal(body: &mut serde_json::Value, principal: &Option<String>) {
    if let Some(p) = principal {
        body["principal"] = p.clone().into();
    }
}

/// One lifecycle transition of `name` (`<namespace>/<name>`) through
/// `endpoint`; prints the revision after it (or what was deleted).
fn transition(
    c: &client::Client,
    out: &mut dyn Write,
    output: client::Output,
    endpoint: &str,
    name: &str,
    principal: &Option<String>,
) -> anyhow::Result<()> {
    let (ns, name) = split_key(name)?;
    let mut body = serde_json::json!({"namespace": ns, "name": name});
    with_principal(&mut body, principal);
    let reply = c.call(endpoint, &body)?;
    if let Some(deleted) = reply["deleted"].as_str() {
        if output == client::Output::Table {
            writeln!(out, "deleted {ns}/{deleted}")?;
            return Ok(());
        }
    }
    client::print(out, output, &reply, None, client::PKG_COLUMNS)
}

/// Runs `cairn pkg <command>` against the node of `conn`, acting as `principal`.
pub(super) fn run(
    conn: Conn,
    principal: Option<String>,
    command: PkgCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let c = client::Client::connect(&conn.nats_url, conn.timeout, command.name())?;
    match command {
        PkgCommand::List { filter } => {
            let mut body = serde_json::Value::Object(filter.into_json());
            // Follow continue tokens: print every page as one list.
            let mut items = Vec::new();
            loop {
                let reply = c.call("pkgrev.list", &body)?;
                items.extend(reply["items"].as_array().cloned().unwrap_or_default());
                match reply["continue"].as_str() {
                    Some(token) => body["continue"] = token.into(),
                    None => break,
                }
            }
            client::print(
                out,
                conn.output,
                &serde_json::json!({ "items": items }),
                Some("items"),
                client::PKG_COLUMNS,
            )
        }
        PkgCommand::Get { name } => {
            let (ns, name) = split_key(&name)?;
            let reply = c.call(
                "pkgrev.get",
                &serde_json::json!({"namespace": ns, "name": name}),
            )?;
            client::print(out, conn.output, &reply, None, client::PKG_COLUMNS)
        }
        PkgCommand::Pull { name, dir, force } => {
            let (ns, name) = split_key(&name)?;
            let dir = dir.filter(|d| d.as_os_str() != "-");
            if let Some(dir) = &dir {
                // Checked before anything is read, again before writing.
                client::check_pull_target(dir, force)?;
            }
            let files = c.resources(ns, name)?;
            let Some(dir) = dir else {
                write!(out, "{}", client::resource_list(&files)?)?;
                return Ok(());
            };
            let n = client::replace_resources(&dir, &files, force)?;
            writeln!(
                out,
                "pulled {n} files of {ns}/{name} into {}",
                dir.display()
            )?;
            Ok(())
        }
        PkgCommand::Init {
            repository,
            package,
            workspace,
            clone_from,
        } => {
            let (ns, repository) = split_key(&repository)?;
            let package = package.trim_matches('/');
            let (path, package) = package.rsplit_once('/').unwrap_or(("", package));
            let mut body = serde_json::json!({"namespace": ns, "repository": repository,
                "path": path, "package": package, "workspace": workspace});
            if let Some(from) = clone_from {
                body["clone_from"] = from.into();
            }
            with_principal(&mut body, &principal);
            let reply = c.call("pkgrev.create", &body)?;
            client::print(out, conn.output, &reply, None, client::PKG_COLUMNS)
        }
        PkgCommand::Push {
            name,
            dir,
            resource_version,
        } => {
            let (ns, name) = split_key(&name)?;
            let key = serde_json::json!({"namespace": ns, "name": name});
            let (text, binary) = client::read_resources(&dir)?;
            let count = text.len() + binary.len();
            let resource_version = match resource_version {
                Some(v) => serde_json::Value::from(v),
                None => c.call("pkgrev.get", &key)?["resource_version"].clone(),
            };
            let mut body = serde_json::json!({"namespace": ns, "name": name,
                "resources": text, "resource_version": resource_version});
            if !binary.is_empty() {
                body["binary"] = serde_json::Value::Object(binary);
            }
            with_principal(&mut body, &principal);
            let reply = c.call("pkgrev.update", &body)?;
            if conn.output == client::Output::Json {
                return client::print(out, conn.output, &reply, None, client::PKG_COLUMNS);
            }
            writeln!(
                out,
                "pushed {count} files from {} to {ns}/{name} (resource_version {})",
                dir.display(),
                reply["resource_version"].as_str().unwrap_or_default()
            )?;
            Ok(())
        }
        PkgCommand::Propose { name } => {
            transition(&c, out, conn.output, "pkgrev.propose", &name, &principal)
        }
        PkgCommand::Reject { name } => {
            transition(&c, out, conn.output, "pkgrev.reject", &name, &principal)
        }
        PkgCommand::Approve { name } => {
            transition(&c, out, conn.output, "pkgrev.approve", &name, &principal)
        }
        PkgCommand::ProposeDelete { name } => transition(
            &c,
            out,
            conn.output,
            "pkgrev.propose-delete",
            &name,
            &principal,
        ),
        PkgCommand::WithdrawDelete { name } => transition(
            &c,
            out,
            conn.output,
            "pkgrev.withdraw-delete",
            &name,
            &principal,
        ),
        PkgCommand::Delete { name } => {
            transition(&c, out, conn.output, "pkgrev.delete", &name, &principal)
        }
    }
}

impl PkgCommand {
    /// The command as typed (`pkg push`), for messages.
    fn name(&self) -> &'static str {
        match self {
            PkgCommand::List { .. } => "pkg list",
            PkgCommand::Get { .. } => "pkg get",
            PkgCommand::Pull { .. } => "pkg pull",
            PkgCommand::Init { .. } => "pkg init",
            PkgCommand::Push { .. } => "pkg push",
            PkgCommand::Propose { .. } => "pkg propose",
            PkgCommand::Reject { .. } => "pkg reject",
            PkgCommand::Approve { .. } => "pkg approve",
            PkgCommand::ProposeDelete { .. } => "pkg propose-delete",
            PkgCommand::WithdrawDelete { .. } => "pkg withdraw-delete",
            PkgCommand::Delete { .. } => "pkg delete",
        }
    }
}
