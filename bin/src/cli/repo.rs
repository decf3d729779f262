//! `cairn repo …`: register, inspect, sync and update repositories.
//!
//! Aliases as porchctl users type them: `reg`, `unreg`, `get` without a
//! name lists. `sync` takes several names, or `--all` (of -n's namespace;
//! with -A of all); `--run-once 5m` asks for one sync in five minutes
//! (the repository's `run_once_at`, its schedule kept) instead of now.

use std::{io::Write, time::Duration};

use clap::{Args, Subcommand};
use serde_json::json;

use super::{duration_arg, names, Conn, Global, Principal};
use crate::client;

#[derive(Debug, Subcommand)]
pub(super) enum RepoCommand {
    /// Register a Git repository (waits for its first sync unless --no-wait).
    #[command(visible_alias = "reg")]
    Register {
        /// NAMESPACE/NAME or NAME, e.g. team-a/blueprints.
        repository: String,
        /// Upstream URL (file://, http://, https://).
        #[arg(long)]
        url: String,
        /// Branch.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Directory inside the repository.
        #[arg(long, default_value = "/")]
        directory: String,
        /// Create the branch when it does not exist.
        #[arg(long)]
        create_branch: bool,
        /// Name of the secret with credentials.
        #[arg(long)]
        secret_ref: Option<String>,
        /// A deployment repository.
        #[arg(long)]
        deployment: bool,
        /// Answer at once, sync in the background.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        principal: Principal,
        /// How long to wait for the registration and its first sync (only
        /// the registration with --no-wait); past it, the command says how
        /// far it got.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Unregister a repository (its package revisions leave the cache).
    #[command(visible_alias = "unreg")]
    Unregister {
        /// NAMESPACE/NAME or NAME.
        repository: String,
        #[command(flatten)]
        principal: Principal,
        /// How long to wait for its revisions to be deleted and its stream
        /// closed; past it, the command says how far it got.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Show repositories and their status; without NAME, list them.
    Get {
        /// NAMESPACE/NAME or NAME; none: list (as `list`).
        repositories: Vec<String>,
        #[command(flatten)]
        list: RepoListArgs,
        /// How long to wait for the node's answer.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// List repositories (of -n's namespace; -A: all).
    List {
        #[command(flatten)]
        list: RepoListArgs,
        /// How long to wait for the node's answer.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Fetch and reconcile now (in the background unless --wait).
    Sync {
        /// NAMESPACE/NAME or NAME, one or more (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        repositories: Vec<String>,
        /// Every repository of -n's namespace (with -A: of all).
        #[arg(long)]
        all: bool,
        /// With --all: of all namespaces.
        #[arg(long, short = 'A', requires = "all")]
        all_namespaces: bool,
        /// Wait for each sync: show its progress, then what it changed.
        #[arg(long, conflicts_with = "run_once")]
        wait: bool,
        /// Not now: one sync after this long (e.g. 5m), as the
        /// repository's run_once_at; its schedule stays.
        #[arg(long, value_parser = duration_arg, value_name = "DURATION")]
        run_once: Option<Duration>,
        #[command(flatten)]
        principal: Principal,
        /// With --wait: how long to wait for each sync; without: for the
        /// node to take each request.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Change a repository's sync spec: what is given changes, the rest
    /// stays (at least one flag).
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
    Update {
        /// NAMESPACE/NAME or NAME.
        repository: String,
        /// 5-field cron schedule (UTC), e.g. "*/10 * * * *".
        #[arg(long, group = "change", conflicts_with = "clear_schedule")]
        schedule: Option<String>,
        /// Drop the cron schedule: back to the node's interval.
        #[arg(long, group = "change")]
        clear_schedule: bool,
        /// One sync at this RFC 3339 time, e.g. 2026-12-01T02:00:00Z.
        #[arg(long, group = "change")]
        run_once_at: Option<String>,
        #[command(flatten)]
        principal: Principal,
        /// How long to wait for the node to record the change.
        #[arg(long, default_value = "120s", value_parser = duration_arg)]
        timeout: Duration,
    },
}

/// What `repo list` shows.
#[derive(Debug, Args)]
pub(super) struct RepoListArgs {
    /// All namespaces (not only -n's).
    #[arg(long, short = 'A')]
    all_namespaces: bool,
    /// Leave the header line out.
    #[arg(long)]
    no_headers: bool,
}

impl RepoCommand {
    /// The command as typed (`repo register`), for messages.
    fn name(&self) -> &'static str {
        match self {
            RepoCommand::Register { .. } => "repo register",
            RepoCommand::Unregister { .. } => "repo unregister",
            RepoCommand::Get { .. } => "repo get",
            RepoCommand::List { .. } => "repo list",
            RepoCommand::Sync { .. } => "repo sync",
            RepoCommand::Update { .. } => "repo update",
        }
    }

    /// Its `--timeout`.
    fn timeout(&self) -> Duration {
        match self {
            RepoCommand::Register { timeout, .. }
            | RepoCommand::Unregister { timeout, .. }
            | RepoCommand::Get { timeout, .. }
            | RepoCommand::List { timeout, .. }
            | RepoCommand::Sync { timeout, .. }
            | RepoCommand::Update { timeout, .. } => *timeout,
        }
    }
}

/// Sets `"principal"` in a request body when one was given.
fn with_principal(body: &mut serde_json::Value, principal: &Principal) {
    if let Some(p) = &principal.principal {
        body["principal"] = p.clone().into();
    }
}

/// Lists repositories as `args` say.
fn list(
    c: &client::Client,
    out: &mut dyn Write,
    output: client::Output,
    args: &RepoListArgs,
    namespace: &str,
) -> anyhow::Result<()> {
    let body = if args.all_namespaces {
        json!({})
    } else {
        json!({ "namespace": namespace })
    };
    let reply = c.call("repo.list", &body)?;
    if reply["items"].as_array().is_some_and(Vec::is_empty)
        && matches!(output, client::Output::Table | client::Output::Wide)
    {
        if args.all_namespaces {
            eprintln!("No repositories found.");
        } else {
            eprintln!("No repositories found in namespace {namespace}.");
        }
    }
    client::show(
        out,
        output,
        &reply,
        Some("items"),
        client::View {
            columns: client::REPO_COLUMNS,
            wide: client::REPO_WIDE_COLUMNS,
            headers: !args.no_headers,
            namespace: false,
        },
    )
}

/// Runs `cairn repo <command>` against the node of `global`.
pub(super) fn run(
    global: &Global,
    conn: Conn,
    command: RepoCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let c = client::Client::connect(&global.target(), command.timeout(), command.name())?;
    let namespace = global.namespace.as_str();
    match command {
        RepoCommand::Register {
            repository,
            url,
            branch,
            directory,
            create_branch,
            secret_ref,
            deployment,
            no_wait,
            principal,
            ..
        } => {
            let key = names::key("REPOSITORY", &repository, namespace)?;
            let (ns, name) = (key.ns.as_str(), key.name.as_str());
            let mut body = client::register_body(
                ns,
                name,
                &url,
                &branch,
                &directory,
                create_branch,
                secret_ref.as_deref(),
                deployment,
                !no_wait,
            );
            with_principal(&mut body, &principal);
            let (result, seen) = c.call_with_progress(
                "repo.register",
                &body,
                ns,
                name,
                PROGRESS_AFTER,
                &mut std::io::stderr(),
            );
            let reply = match result {
                Ok(reply) => reply,
                Err(e @ client::CallError::NoReply { .. }) => {
                    return Err(after_timeout(&c, e, ns, name, &seen, Pending::Register))
                }
                Err(e) => return Err(e.into()),
            };
            client::print(out, conn.output, &reply, None, client::REPO_COLUMNS)?;
            // Registered, but its first sync failed: say so, hint
            // the fix where one is known, and exit non-zero.
            if let Some(error) = reply["sync"].get("error") {
                let hint = match reply["status"]["error_class"].as_str() {
                    Some("missing") => format!(
                        "\nhint: the branch does not exist upstream; to have cairn create it: cairn repo unregister {ns}/{name} && cairn repo register {ns}/{name} --url {url} --branch {branch} --create-branch"
                    ),
                    Some("auth") => "\nhint: check the repository's --secret-ref, the node's secrets, and that the node's user may read the upstream".to_owned(),
                    _ => String::new(),
                };
                anyhow::bail!(
                    "{ns}/{name} is registered, but its first sync failed: {}: {}{hint}",
                    error["code"],
                    client::cli_words(error["message"].as_str().unwrap_or_default())
                );
            }
            Ok(())
        }
        RepoCommand::Unregister {
            repository,
            principal,
            ..
        } => {
            let key = names::key("REPOSITORY", &repository, namespace)?;
            let (ns, name) = (key.ns.as_str(), key.name.as_str());
            let mut body = key.body();
            with_principal(&mut body, &principal);
            let (result, seen) = c.call_with_progress(
                "repo.unregister",
                &body,
                ns,
                name,
                PROGRESS_AFTER,
                &mut std::io::stderr(),
            );
            let reply = match result {
                Ok(reply) => reply,
                Err(e @ client::CallError::NoReply { .. }) => {
                    return Err(after_timeout(&c, e, ns, name, &seen, Pending::Unregister))
                }
                Err(e) => return Err(e.into()),
            };
            client::print(
                out,
                conn.output,
                &reply,
                None,
                &[("UNREGISTERED", "/unregistered")],
            )
        }
        RepoCommand::Get {
            repositories,
            list: args,
            ..
        } => {
            if repositories.is_empty() {
                return list(&c, out, conn.output, &args, namespace);
            }
            let mut items = Vec::new();
            for repository in &repositories {
                let key = names::key("REPOSITORY", repository, namespace)?;
                items.push(c.call("repo.get", &key.body())?);
            }
            match <[serde_json::Value; 1]>::try_from(items) {
                Ok([one]) => client::show(
                    out,
                    conn.output,
                    &one,
                    None,
                    client::View {
                        columns: client::REPO_COLUMNS,
                        wide: client::REPO_WIDE_COLUMNS,
                        headers: !args.no_headers,
                        namespace: false,
                    },
                ),
                Err(items) => client::show(
                    out,
                    conn.output,
                    &json!({ "items": items }),
                    Some("items"),
                    client::View {
                        columns: client::REPO_COLUMNS,
                        wide: client::REPO_WIDE_COLUMNS,
                        headers: !args.no_headers,
                        namespace: false,
                    },
                ),
            }
        }
        RepoCommand::List { list: args, .. } => list(&c, out, conn.output, &args, namespace),
        RepoCommand::Sync {
            repositories,
            all,
            all_namespaces,
            wait,
            run_once,
            principal,
            ..
        } => {
            let keys = if all {
                let body = if all_namespaces {
                    json!({})
                } else {
                    json!({ "namespace": namespace })
                };
                let listed = c.call("repo.list", &body)?;
                let keys: Vec<names::Key> = listed["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| names::Key {
                        ns: r["namespace"].as_str().unwrap_or_default().to_owned(),
                        name: r["name"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect();
                if keys.is_empty() {
                    eprintln!("No repositories to sync.");
                }
                keys
            } else {
                repositories
                    .iter()
                    .map(|r| names::key("REPOSITORY", r, namespace))
                    .collect::<anyhow::Result<_>>()?
            };
            let mut replies = Vec::new();
            let mut failed = Vec::new();
            for key in &keys {
                match sync_one(&c, key, wait, run_once, &principal) {
                    Ok(reply) => replies.push(reply),
                    Err(e) if keys.len() == 1 => return Err(e),
                    Err(e) => failed.push(format!("{key}: {e:#}")),
                }
            }
            let columns: &[(&str, &str)] = if wait {
                &[
                    ("NAME", "/name"),
                    ("ADDED", "/sync/added"),
                    ("MODIFIED", "/sync/modified"),
                    ("DELETED", "/sync/deleted"),
                    ("PACKAGES", "/sync/package_count"),
                    ("COMMIT", "/status/commit"),
                    ("NEXT SYNC", "/status/next_sync_at"),
                ]
            } else if run_once.is_some() {
                SCHEDULE_COLUMNS
            } else {
                client::REPO_COLUMNS
            };
            match <[serde_json::Value; 1]>::try_from(replies) {
                Ok([one]) => client::print(out, conn.output, &one, None, columns)?,
                Err(all) if all.is_empty() => {}
                Err(all) => client::print(
                    out,
                    conn.output,
                    &json!({ "items": all }),
                    Some("items"),
                    columns,
                )?,
            }
            if !failed.is_empty() {
                anyhow::bail!(
                    "{} of {} failed:\n{}",
                    failed.len(),
                    keys.len(),
                    failed.join("\n")
                );
            }
            Ok(())
        }
        RepoCommand::Update {
            repository,
            schedule,
            clear_schedule,
            run_once_at,
            principal,
            ..
        } => {
            let key = names::key("REPOSITORY", &repository, namespace)?;
            let reply = update(&c, &key, schedule, clear_schedule, run_once_at, &principal)?;
            client::print(out, conn.output, &reply, None, SCHEDULE_COLUMNS)
        }
    }
}

/// The columns of a repository's sync spec and next sync.
const SCHEDULE_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("SCHEDULE", "/sync/schedule"),
    ("RUN ONCE AT", "/sync/run_once_at"),
    ("NEXT SYNC", "/status/next_sync_at"),
];

/// `repo.update` of `key`'s sync spec: `repo.update` replaces the whole
/// spec, so it starts from the current one and what is not given stays.
fn update(
    c: &client::Client,
    key: &names::Key,
    schedule: Option<String>,
    clear_schedule: bool,
    run_once_at: Option<String>,
    principal: &Principal,
) -> anyhow::Result<serde_json::Value> {
    let current = c.call("repo.get", &key.body())?;
    let sync = updated_sync(&current["sync"], schedule, clear_schedule, run_once_at);
    let mut body = json!({"namespace": key.ns, "name": key.name, "sync": sync});
    with_principal(&mut body, principal);
    Ok(c.call("repo.update", &body)?)
}

/// One repository of `repo sync`: now in the background, now waiting
/// (with progress), or once after `run_once`.
fn sync_one(
    c: &client::Client,
    key: &names::Key,
    wait: bool,
    run_once: Option<Duration>,
    principal: &Principal,
) -> anyhow::Result<serde_json::Value> {
    if let Some(after) = run_once {
        let at = time::OffsetDateTime::now_utc() + after;
        let at = at
            .replace_nanosecond(0)
            .unwrap_or(at)
            .format(&time::format_description::well_known::Rfc3339)?;
        eprintln!("{key}: one sync at {at}");
        return update(c, key, None, false, Some(at), principal);
    }
    if wait {
        return c.sync_with_progress(
            &key.ns,
            &key.name,
            principal.principal.as_deref(),
            &mut std::io::stderr(),
        );
    }
    let mut body = json!({"namespace": key.ns, "name": key.name, "wait": false});
    with_principal(&mut body, principal);
    let reply = c.call("repo.sync", &body)?;
    eprintln!("sync of {key} requested; follow it with `cairn repo sync {key} --wait` or `cairn watch --kind repository`");
    Ok(reply)
}

/// How long a command waits quietly before it shows its progress.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);
/// How long reading a repository's state after a timeout may take.
const STATE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What a command that got no reply was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Register,
    Unregister,
}

/// The error of a command that got no reply within its `--timeout`
/// (`e`): what state the repository reached — read now, and from the
/// events seen meanwhile (`seen`) — and what to run next.
fn after_timeout(
    c: &client::Client,
    e: client::CallError,
    ns: &str,
    name: &str,
    seen: &client::Progress,
    pending: Pending,
) -> anyhow::Error {
    let key = format!("{ns}/{name}");
    let now = c.call_once(
        "repo.get",
        &serde_json::json!({"namespace": ns, "name": name}),
        STATE_READ_TIMEOUT,
    );
    let state = match (pending, &now) {
        (_, Err(client::CallError::NoReply { .. } | client::CallError::Other(_))) => format!(
            "whether it was applied is unknown (no node answers): check with `cairn repo get {key}` once a node runs"
        ),
        (Pending::Register, Err(client::CallError::Node { code, .. })) if code == "404" => {
            format!("{key} is not registered: run the command again (a longer --timeout waits longer)")
        }
        (Pending::Unregister, Err(client::CallError::Node { code, .. })) if code == "404" => {
            format!("{key} is unregistered")
        }
        (_, Err(other)) => format!("reading its state failed: {other}"),
        (Pending::Register, Ok(repo)) => match repo["status"]["reason"].as_str() {
            Some("Ready") => format!(
                "{key} is registered and synced ({} package revisions): `cairn repo get {key}`",
                repo["status"]["package_count"]
            ),
            Some("Error") => format!(
                "{key} is registered, but its first sync failed: {}: `cairn repo get {key}`",
                repo["status"]["message"].as_str().unwrap_or_default()
            ),
            _ if seen.sync_started.is_some() => format!(
                "{key} is registered, still syncing ({} so far): cairn repo get {key}",
                seen.counts()
            ),
            _ => format!("{key} is registered, not synced yet: cairn repo get {key}"),
        },
        (Pending::Unregister, Ok(_)) => format!(
            "{key} is still registered ({} package revisions deleted so far; unregistering may still run): cairn repo get {key}",
            seen.deleted
        ),
    };
    anyhow::anyhow!("{e}; {state}")
}

/// The sync spec `current` (a repository's `sync`) with the changes of
/// `repo update`: a new `schedule`, or none (`clear_schedule`), a new
/// `run_once_at`; what is not given stays.
fn updated_sync(
    current: &serde_json::Value,
    schedule: Option<String>,
    clear_schedule: bool,
    run_once_at: Option<String>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut sync = serde_json::Map::new();
    let kept = |key: &str| {
        current[key]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let schedule = match (schedule, clear_schedule) {
        (Some(schedule), _) => Some(schedule),
        (None, true) => None,
        (None, false) => kept("schedule"),
    };
    if let Some(schedule) = schedule {
        sync.insert("schedule".into(), schedule.into());
    }
    if let Some(at) = run_once_at.or_else(|| kept("run_once_at")) {
        sync.insert("run_once_at".into(), at.into());
    }
    sync
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_update_changes_what_is_given_and_keeps_the_rest() {
        let current = json!({"schedule": "0 3 * * *", "run_once_at": "2026-12-01T02:00:00Z"});
        let updated = |schedule: Option<&str>, clear: bool, once: Option<&str>| {
            serde_json::Value::Object(updated_sync(
                &current,
                schedule.map(str::to_owned),
                clear,
                once.map(str::to_owned),
            ))
        };
        assert_eq!(
            updated(Some("*/5 * * * *"), false, None),
            json!({"schedule": "*/5 * * * *", "run_once_at": "2026-12-01T02:00:00Z"})
        );
        assert_eq!(
            updated(None, true, None),
            json!({"run_once_at": "2026-12-01T02:00:00Z"})
        );
        assert_eq!(
            updated(None, false, Some("2027-01-01T00:00:00Z")),
            json!({"schedule": "0 3 * * *", "run_once_at": "2027-01-01T00:00:00Z"})
        );
        let none = json!({"schedule": "", "run_once_at": null});
        assert_eq!(
            serde_json::Value::Object(updated_sync(&none, None, true, None)),
            json!({})
        );
    }
}
