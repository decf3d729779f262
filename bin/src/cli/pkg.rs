//! `cairn pkg …`: list, inspect, pull, author and publish package revisions.
//!
//! porchctl's verbs where cairn has them: `get` without a name lists (as
//! `porchctl rpkg get`), `copy` makes a new draft of a package from one of
//! its revisions (`rpkg copy`), `clone` a new package from a revision of
//! any repository in the namespace (`rpkg clone`), `init` without `-w`
//! takes `v1`, `reject` of a DeletionProposed revision withdraws the
//! proposal (as `rpkg reject` does). `propose`, `approve`, `reject`,
//! `propose-delete`, `withdraw-delete` and `delete` take several names:
//! each is tried, every outcome printed, and the command fails if any did.

use std::{collections::BTreeMap, io::Write, path::PathBuf, time::Duration};

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{
    duration_arg,
    names::{self, Key},
    selector::{self, Selector},
    Conn, Global, Principal,
};
use crate::client;

#[derive(Debug, Subcommand)]
pub(super) enum PkgCommand {
    /// List package revisions (of -n's namespace; -A: all).
    List {
        #[command(flatten)]
        list: ListArgs,
        /// How long to wait for each page of the list.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Show package revisions; without NAME, list them (as `list`).
    Get {
        /// NAMESPACE/NAME or NAME (the Porch object name); none: list.
        names: Vec<String>,
        #[command(flatten)]
        list: ListArgs,
        /// How long to wait for each answer.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Write a package revision's resources into a directory.
    ///
    /// Into DIR: a new or empty directory, or with --force one whose
    /// contents are replaced. Without DIR (or with `-`): the package as a
    /// kpt ResourceList on stdout, as `porchctl rpkg pull` prints it.
    Pull {
        /// NAMESPACE/NAME or NAME (the Porch object name).
        name: String,
        /// Target directory; none or `-` for stdout.
        dir: Option<PathBuf>,
        /// Replace the contents of a non-empty DIR (its `.git` stays).
        #[arg(long)]
        force: bool,
        /// How long to wait for each page of the files.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Create a draft: an empty package (a Kptfile), or a copy of a revision.
    Init {
        /// The repository: NAMESPACE/NAME or NAME.
        repository: String,
        /// Package path in the repository's directory, e.g. `catalog/app`.
        package: String,
        /// Workspace name, unique per package.
        #[arg(long, short = 'w', default_value = "v1", value_parser = workspace_arg)]
        workspace: String,
        /// Copy this revision (NAMESPACE/NAME or NAME, in the repository's
        /// namespace).
        #[arg(long)]
        clone_from: Option<String>,
        #[command(flatten)]
        principal: Principal,
        /// How long to wait for the draft to be pushed to the upstream.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// A new draft of a package from one of its revisions, in workspace -w
    /// (`porchctl rpkg copy`).
    Copy {
        /// The revision to copy: NAMESPACE/NAME or NAME.
        source: String,
        /// Workspace of the new draft, unique per package.
        #[arg(long, short = 'w', value_parser = workspace_arg)]
        workspace: String,
        #[command(flatten)]
        principal: Principal,
        /// How long to wait for the draft to be pushed to the upstream.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// A new package, a draft cloned from a revision of any repository of
    /// the namespace (`porchctl rpkg clone`).
    Clone {
        /// The revision to clone: NAMESPACE/NAME or NAME.
        source: String,
        /// The new package's path in the target repository, e.g. `apps/web`.
        package: String,
        /// The target repository: NAMESPACE/NAME or NAME.
        #[arg(long)]
        repository: String,
        /// Workspace of the new draft.
        #[arg(long, short = 'w', default_value = "v1", value_parser = workspace_arg)]
        workspace: String,
        #[command(flatten)]
        principal: Principal,
        /// How long to wait for the draft to be pushed to the upstream.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Replace a draft's resources with the files of a local directory.
    Push {
        /// The draft: NAMESPACE/NAME or NAME.
        name: String,
        /// Directory holding the package (its Kptfile at the top).
        dir: PathBuf,
        /// The resource_version the files were based on (default: the
        /// draft's current one).
        #[arg(long)]
        resource_version: Option<u64>,
        #[command(flatten)]
        principal: Principal,
        /// How long to wait for the files to be pushed to the upstream.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Draft → Proposed.
    Propose(Transition),
    /// Proposed → Draft; DeletionProposed → Published (withdraws the
    /// deletion proposal, as `porchctl rpkg reject` does).
    Reject(Transition),
    /// Proposed → Published (the next revision number).
    Approve(Transition),
    /// Published → DeletionProposed.
    ProposeDelete(Transition),
    /// DeletionProposed → Published.
    WithdrawDelete(Transition),
    /// Delete a draft, a proposal, or a revision whose deletion was proposed.
    #[command(visible_alias = "del")]
    Delete(Transition),
}

/// The arguments of a lifecycle transition.
#[derive(Debug, Args)]
pub(super) struct Transition {
    /// NAMESPACE/NAME or NAME (Porch object names), one or more.
    #[arg(required = true)]
    names: Vec<String>,
    #[command(flatten)]
    principal: Principal,
    /// How long to wait for each revision's change to be pushed to the
    /// upstream.
    #[arg(long, default_value = "120s", value_parser = duration_arg)]
    timeout: Duration,
}

/// What to list and how (`pkg list`, `pkg get` without a name).
#[derive(Debug, Args)]
pub(super) struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Leave the header line out.
    #[arg(long)]
    no_headers: bool,
}

/// The `pkgrev.list` filter as flags (`pkg list`, `watch`).
#[derive(Debug, Args)]
pub(super) struct FilterArgs {
    /// All namespaces (not only -n's).
    #[arg(long, short = 'A')]
    all_namespaces: bool,
    /// Only this repository: NAMESPACE/NAME or NAME.
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
    /// Only these lifecycles: Draft, Proposed, Published, DeletionProposed
    /// (any case; comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_parser = lifecycle_arg)]
    lifecycle: Vec<String>,
    /// Only revisions whose Kptfile labels match, as kubectl's -l:
    /// `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
    /// comma-separated (repeatable).
    #[arg(long = "selector", short = 'l', alias = "label", value_parser = selector::parse)]
    selectors: Vec<Selector>,
    /// Only revisions whose Kptfile annotations hold KEY=VALUE
    /// (repeatable: every pair must hold). cairn's own: Porch selects on
    /// labels only.
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = annotation_arg)]
    annotations: Vec<(String, String)>,
    /// Only latest revisions.
    #[arg(long)]
    latest: bool,
}

/// `--annotation KEY=VALUE`: split at the first `=`; the key must not be
/// empty (the node matches the pair exactly).
fn annotation_arg(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

/// `-w/--workspace`: the node's rule (`service::lifecycle::workspace`),
/// checked here so the error names the flag.
fn workspace_arg(text: &str) -> Result<String, String> {
    cairn_actors::service::lifecycle::workspace("workspace", text)
        .map(|()| text.to_owned())
        .map_err(|e| {
            e.message
                .strip_prefix("workspace: ")
                .unwrap_or(&e.message)
                .to_owned()
        })
}

/// The lifecycles, as the node names them.
const LIFECYCLES: [&str; 4] = ["Draft", "Proposed", "Published", "DeletionProposed"];

/// `--lifecycle`: one of [`LIFECYCLES`] in any case (`-` and `_` ignored).
fn lifecycle_arg(text: &str) -> Result<String, String> {
    let folded: String = text
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    LIFECYCLES
        .iter()
        .find(|l| l.to_ascii_lowercase() == folded)
        .map(|l| (*l).to_owned())
        .ok_or_else(|| format!("expected one of {} (any case)", LIFECYCLES.join(", ")))
}

impl FilterArgs {
    /// The whole selector (every `-l` together).
    fn selector(&self) -> Selector {
        Selector(self.selectors.iter().flat_map(|s| s.0.clone()).collect())
    }

    /// The filter as the fields of a `pkgrev.list` request: the namespace
    /// of `--repository NS/NAME`, else `namespace` unless -A.
    fn request(&self, namespace: &str) -> anyhow::Result<serde_json::Map<String, Value>> {
        let mut filter = serde_json::Map::new();
        let repository = self
            .repository
            .as_deref()
            .map(|r| names::key("--repository", r, namespace))
            .transpose()?;
        match &repository {
            Some(key) if self.all_namespaces && !self.repository_has_namespace() => {
                filter.insert("repository".into(), key.name.clone().into());
            }
            Some(key) => {
                filter.insert("namespace".into(), key.ns.clone().into());
                filter.insert("repository".into(), key.name.clone().into());
            }
            None if self.all_namespaces => {}
            None => {
                filter.insert("namespace".into(), namespace.into());
            }
        }
        let strings = [
            ("package", &self.package),
            ("path", &self.path),
            ("workspace", &self.workspace),
        ];
        for (key, value) in strings {
            if let Some(v) = value {
                filter.insert(key.into(), v.clone().into());
            }
        }
        if !self.lifecycle.is_empty() {
            filter.insert("lifecycle".into(), self.lifecycle.clone().into());
        }
        let labels = self.selector().equalities();
        if !labels.is_empty() {
            let labels: serde_json::Map<String, Value> =
                labels.into_iter().map(|(k, v)| (k, v.into())).collect();
            filter.insert("labels".into(), labels.into());
        }
        if !self.annotations.is_empty() {
            let mut annotations = serde_json::Map::new();
            for (key, value) in &self.annotations {
                if let Some(other) = annotations.insert(key.clone(), value.clone().into()) {
                    if other != *value {
                        bail!("--annotation: {key:?} given twice ({other} and {value:?}); a revision has one value per key");
                    }
                }
            }
            filter.insert("annotations".into(), annotations.into());
        }
        if self.latest {
            filter.insert("latest".into(), true.into());
        }
        Ok(filter)
    }

    fn repository_has_namespace(&self) -> bool {
        self.repository.as_deref().is_some_and(|r| r.contains('/'))
    }

    /// The filter of `cairn watch` (the node filters labels by equality
    /// only, and a watch cannot be filtered afterwards without losing its
    /// transitions).
    pub(super) fn watch_filter(
        &self,
        namespace: &str,
    ) -> anyhow::Result<serde_json::Map<String, Value>> {
        if !self.selector().only_equalities() {
            bail!("-l/--selector: a watch takes only key=value requirements");
        }
        self.request(namespace)
    }
}

/// Sets `"principal"` in a request body when one was given.
fn with_principal(body: &mut Value, principal: &Principal) {
    if let Some(p) = &principal.principal {
        body["principal"] = p.clone().into();
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
            PkgCommand::Copy { .. } => "pkg copy",
            PkgCommand::Clone { .. } => "pkg clone",
            PkgCommand::Push { .. } => "pkg push",
            PkgCommand::Propose(_) => "pkg propose",
            PkgCommand::Reject(_) => "pkg reject",
            PkgCommand::Approve(_) => "pkg approve",
            PkgCommand::ProposeDelete(_) => "pkg propose-delete",
            PkgCommand::WithdrawDelete(_) => "pkg withdraw-delete",
            PkgCommand::Delete(_) => "pkg delete",
        }
    }

    /// Its `--timeout`.
    fn timeout(&self) -> Duration {
        match self {
            PkgCommand::List { timeout, .. }
            | PkgCommand::Get { timeout, .. }
            | PkgCommand::Pull { timeout, .. }
            | PkgCommand::Init { timeout, .. }
            | PkgCommand::Copy { timeout, .. }
            | PkgCommand::Clone { timeout, .. }
            | PkgCommand::Push { timeout, .. } => *timeout,
            PkgCommand::Propose(t)
            | PkgCommand::Reject(t)
            | PkgCommand::Approve(t)
            | PkgCommand::ProposeDelete(t)
            | PkgCommand::WithdrawDelete(t)
            | PkgCommand::Delete(t) => t.timeout,
        }
    }
}

/// The package revision `key` (`pkgrev.get`).
fn get(c: &client::Client, key: &Key) -> anyhow::Result<Value> {
    Ok(c.call("pkgrev.get", &key.body())?)
}

/// Every revision `list` selects, page after page (the selector applied
/// here too: the node filters labels by equality only).
fn list(c: &client::Client, list: &ListArgs, namespace: &str) -> anyhow::Result<Vec<Value>> {
    let mut body = Value::Object(list.filter.request(namespace)?);
    let selector = list.filter.selector();
    let mut items = Vec::new();
    for _ in 0..client::LIST_PAGES_MAX {
        let reply = c.call("pkgrev.list", &body)?;
        items.extend(
            reply["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|item| selector.matches(&labels_of(item)))
                .cloned(),
        );
        match reply["continue"].as_str() {
            Some(token) => body["continue"] = token.into(),
            None => return Ok(items),
        }
    }
    bail!("pkgrev.list: more than {} pages", client::LIST_PAGES_MAX)
}

fn labels_of(item: &Value) -> BTreeMap<String, String> {
    item["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// Prints listed revisions: the NAMESPACE column with -A, none of a
/// header with --no-headers; an empty list says so on stderr.
fn print_list(
    out: &mut dyn Write,
    output: client::Output,
    items: Vec<Value>,
    list: &ListArgs,
    namespace: &str,
) -> anyhow::Result<()> {
    if items.is_empty() && matches!(output, client::Output::Table | client::Output::Wide) {
        if list.filter.all_namespaces {
            eprintln!("No package revisions found.");
        } else {
            eprintln!("No package revisions found in namespace {namespace}.");
        }
    }
    client::show(
        out,
        output,
        &json!({ "items": items }),
        Some("items"),
        client::View {
            columns: client::PKG_COLUMNS,
            wide: client::PKG_WIDE_COLUMNS,
            headers: !list.no_headers,
            namespace: list.filter.all_namespaces,
        },
    )
}

/// Runs `cairn pkg <command>` against the node of `global`.
pub(super) fn run(
    global: &Global,
    conn: Conn,
    command: PkgCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let c = client::Client::connect(&global.target(), command.timeout(), command.name())?;
    let ns = global.namespace.as_str();
    let output = conn.output;
    match command {
        PkgCommand::List { list: args, .. } => {
            let items = list(&c, &args, ns)?;
            print_list(out, output, items, &args, ns)
        }
        PkgCommand::Get {
            names, list: args, ..
        } => {
            if names.is_empty() {
                let items = list(&c, &args, ns)?;
                return print_list(out, output, items, &args, ns);
            }
            let mut items = Vec::new();
            for name in &names {
                items.push(get(&c, &names::key("NAME", name, ns)?)?);
            }
            match <[Value; 1]>::try_from(items) {
                Ok([one]) => client::show(
                    out,
                    output,
                    &one,
                    None,
                    client::View {
                        columns: client::PKG_COLUMNS,
                        wide: client::PKG_WIDE_COLUMNS,
                        headers: !args.no_headers,
                        namespace: false,
                    },
                ),
                Err(items) => print_list(out, output, items, &args, ns),
            }
        }
        PkgCommand::Pull {
            name, dir, force, ..
        } => {
            let key = names::key("NAME", &name, ns)?;
            let dir = dir.filter(|d| d.as_os_str() != "-");
            if let Some(dir) = &dir {
                // Checked before anything is read, again before writing.
                client::check_pull_target(dir, force)?;
            }
            let files = c.resources(&key.ns, &key.name)?;
            let Some(dir) = dir else {
                write!(out, "{}", client::resource_list(&files)?)?;
                return Ok(());
            };
            let n = client::replace_resources(&dir, &files, force)?;
            writeln!(out, "pulled {n} files of {key} into {}", dir.display())?;
            Ok(())
        }
        PkgCommand::Init {
            repository,
            package,
            workspace,
            clone_from,
            principal,
            ..
        } => {
            let repository = names::key("REPOSITORY", &repository, ns)?;
            let mut body = create_body(&repository, &package, &workspace);
            if let Some(from) = clone_from {
                let from = names::key("--clone-from", &from, &repository.ns)?;
                body["clone_from"] = same_namespace("--clone-from", &from, &repository)?.into();
            }
            with_principal(&mut body, &principal);
            let reply = c.call("pkgrev.create", &body)?;
            client::print(out, output, &reply, None, client::PKG_COLUMNS)
        }
        PkgCommand::Copy {
            source,
            workspace,
            principal,
            ..
        } => {
            let source = names::key("SOURCE", &source, ns)?;
            let from = get(&c, &source)?;
            let text = |k: &str| from[k].as_str().unwrap_or_default().to_owned();
            let mut body = json!({"namespace": source.ns, "repository": text("repository"),
                "path": text("path"), "package": text("package"), "workspace": workspace,
                "clone_from": source.name});
            with_principal(&mut body, &principal);
            let reply = c.call("pkgrev.create", &body)?;
            client::print(out, output, &reply, None, client::PKG_COLUMNS)
        }
        PkgCommand::Clone {
            source,
            package,
            repository,
            workspace,
            principal,
            ..
        } => {
            let repository = names::key("--repository", &repository, ns)?;
            let source = names::key("SOURCE", &source, &repository.ns)?;
            let mut body = create_body(&repository, &package, &workspace);
            body["clone_from"] = same_namespace("SOURCE", &source, &repository)?.into();
            with_principal(&mut body, &principal);
            let reply = c.call("pkgrev.create", &body)?;
            client::print(out, output, &reply, None, client::PKG_COLUMNS)
        }
        PkgCommand::Push {
            name,
            dir,
            resource_version,
            principal,
            ..
        } => {
            let key = names::key("NAME", &name, ns)?;
            let (text, binary) = client::read_resources(&dir)?;
            let count = text.len() + binary.len();
            let resource_version = match resource_version {
                Some(v) => Value::from(v),
                None => get(&c, &key)?["resource_version"].clone(),
            };
            let mut body = json!({"namespace": key.ns, "name": key.name,
                "resources": text, "resource_version": resource_version});
            if !binary.is_empty() {
                body["binary"] = Value::Object(binary);
            }
            with_principal(&mut body, &principal);
            let reply = c.call("pkgrev.update", &body)?;
            if matches!(output, client::Output::Json | client::Output::Yaml) {
                return client::print(out, output, &reply, None, client::PKG_COLUMNS);
            }
            writeln!(
                out,
                "pushed {count} files from {} to {key} (resource_version {})",
                dir.display(),
                reply["resource_version"].as_str().unwrap_or_default()
            )?;
            Ok(())
        }
        PkgCommand::Propose(t) => transitions(&c, out, output, "pkgrev.propose", t, ns),
        PkgCommand::Reject(t) => transitions(&c, out, output, "pkgrev.reject", t, ns),
        PkgCommand::Approve(t) => transitions(&c, out, output, "pkgrev.approve", t, ns),
        PkgCommand::ProposeDelete(t) => {
            transitions(&c, out, output, "pkgrev.propose-delete", t, ns)
        }
        PkgCommand::WithdrawDelete(t) => {
            transitions(&c, out, output, "pkgrev.withdraw-delete", t, ns)
        }
        PkgCommand::Delete(t) => transitions(&c, out, output, "pkgrev.delete", t, ns),
    }
}

/// A `pkgrev.create` body: a draft of `package` (`path/…/package`) in
/// `repository`, workspace `workspace`.
fn create_body(repository: &Key, package: &str, workspace: &str) -> Value {
    let package = package.trim_matches('/');
    let (path, package) = package.rsplit_once('/').unwrap_or(("", package));
    json!({"namespace": repository.ns, "repository": repository.name,
        "path": path, "package": package, "workspace": workspace})
}

/// `source`'s name when it is in `target`'s namespace (the node clones
/// within one namespace); an error naming `what` otherwise.
fn same_namespace(what: &str, source: &Key, target: &Key) -> anyhow::Result<String> {
    if source.ns != target.ns {
        bail!(
            "{what} {source}: in namespace {}, but the draft is created in {} (cairn clones within one namespace)",
            source.ns,
            target.ns
        );
    }
    Ok(source.name.clone())
}

/// One lifecycle transition of each name through `endpoint`; prints the
/// revisions after them (or what was deleted), then fails if any failed.
/// `reject` of a DeletionProposed revision withdraws its deletion
/// proposal instead (as `porchctl rpkg reject` does).
fn transitions(
    c: &client::Client,
    out: &mut dyn Write,
    output: client::Output,
    endpoint: &str,
    t: Transition,
    namespace: &str,
) -> anyhow::Result<()> {
    let mut changed = Vec::new();
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    for name in &t.names {
        let outcome = (|| -> anyhow::Result<Value> {
            let key = names::key("NAME", name, namespace)?;
            let mut endpoint = endpoint;
            if endpoint == "pkgrev.reject"
                && get(c, &key)?["lifecycle"].as_str() == Some("DeletionProposed")
            {
                eprintln!(
                    "{key} is DeletionProposed: withdrawing its deletion proposal (as `cairn pkg withdraw-delete {key}`)"
                );
                endpoint = "pkgrev.withdraw-delete";
            }
            let mut body = key.body();
            with_principal(&mut body, &t.principal);
            let mut reply = c.call(endpoint, &body)?;
            if let Some(name) = reply["deleted"].as_str() {
                reply["deleted"] = format!("{}/{name}", key.ns).into();
            }
            Ok(reply)
        })();
        match outcome {
            Ok(reply) if reply.get("deleted").is_some() => deleted.push(reply),
            Ok(reply) => changed.push(reply),
            Err(e) => failed.push(format!("{name}: {e:#}")),
        }
    }
    match output {
        client::Output::Table | client::Output::Wide => {
            for d in &deleted {
                writeln!(out, "deleted {}", d["deleted"].as_str().unwrap_or_default())?;
            }
            if !changed.is_empty() {
                client::print(
                    out,
                    output,
                    &json!({ "items": changed }),
                    Some("items"),
                    client::PKG_COLUMNS,
                )?;
            }
        }
        _ => {
            let all: Vec<Value> = changed.into_iter().chain(deleted).collect();
            match <[Value; 1]>::try_from(all) {
                Ok([one]) => client::print(out, output, &one, None, client::PKG_COLUMNS)?,
                Err(all) if all.is_empty() => {}
                Err(all) => client::print(
                    out,
                    output,
                    &json!({ "items": all }),
                    Some("items"),
                    client::PKG_COLUMNS,
                )?,
            }
        }
    }
    match failed.len() {
        0 => Ok(()),
        1 if t.names.len() == 1 => {
            let only = failed.remove(0);
            Err(anyhow::anyhow!(
                "{}",
                only.split_once(": ")
                    .map_or(only.as_str(), |(_, e)| e)
                    .to_owned()
            ))
        }
        n => Err(anyhow::anyhow!(
            "{n} of {} failed:\n{}",
            t.names.len(),
            failed.join("\n")
        )),
    }
}
