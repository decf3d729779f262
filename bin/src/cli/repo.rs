//! `cairn repo …`: register, inspect, sync and update repositories.

use std::{io::Write, time::Duration};

use clap::Subcommand;

use super::{names::split_key, Conn};
use crate::client;

#[derive(Debug, Subcommand)]
pub(super) enum RepoCommand {
    /// Register a Git repository (waits for its first sync unless --no-wait).
    Register {
        /// namespace/name, e.g. team-a/blueprints.
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
    },
    /// Unregister a repository.
    Unregister {
        /// namespace/name.
        repository: String,
    },
    /// Show a repository and its status.
    Get {
        /// namespace/name.
        repository: String,
    },
    /// List repositories.
    List {
        /// Only this namespace.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Fetch and reconcile now (in the background unless --wait).
    Sync {
        /// namespace/name.
        repository: String,
        /// Wait for the sync: show its progress, then what it changed.
        #[arg(long)]
        wait: bool,
    },
    /// Change a repository's sync spec: what is given changes, the rest
    /// stays (at least one flag).
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
    Update {
        /// namespace/name.
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
    },
}

/// Runs `cairn repo <command>` against the node of `conn`.
pub(super) fn run(conn: Conn, command: RepoCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let c = client::Client::connect(&conn.nats_url, conn.timeout, command.name())?;
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
        } => {
            let (ns, name) = split_key(&repository)?;
            let body = client::register_body(
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
                    Some("auth") => "\nhint: check the repository's --secret-ref and the node's secrets".to_owned(),
                    _ => String::new(),
                };
                anyhow::bail!(
                    "{ns}/{name} is registered, but its first sync failed: {}: {}{hint}",
                    error["code"],
                    error["message"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        RepoCommand::Unregister { repository } => {
            let (ns, name) = split_key(&repository)?;
            let (result, seen) = c.call_with_progress(
                "repo.unregister",
                &serde_json::json!({"namespace": ns, "name": name}),
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
        RepoCommand::Get { repository } => {
            let (ns, name) = split_key(&repository)?;
            let reply = c.call(
                "repo.get",
                &serde_json::json!({"namespace": ns, "name": name}),
            )?;
            client::print(out, conn.output, &reply, None, client::REPO_COLUMNS)
        }
        RepoCommand::List { namespace } => {
            let body = match namespace {
                Some(ns) => serde_json::json!({ "namespace": ns }),
                None => serde_json::json!({}),
            };
            let reply = c.call("repo.list", &body)?;
            client::print(
                out,
                conn.output,
                &reply,
                Some("items"),
                client::REPO_COLUMNS,
            )
        }
        RepoCommand::Sync { repository, wait } => {
            let (ns, name) = split_key(&repository)?;
            if !wait {
                let reply = c.call(
                    "repo.sync",
                    &serde_json::json!({"namespace": ns, "name": name, "wait": false}),
                )?;
                eprintln!("sync of {repository} requested; follow it with `cairn repo sync {repository} --wait` or `cairn watch --kind repository`");
                return client::print(out, conn.output, &reply, None, client::REPO_COLUMNS);
            }
            let reply = c.sync_with_progress(ns, name, &mut std::io::stderr())?;
            let columns = [
                ("NAME", "/name"),
                ("ADDED", "/sync/added"),
                ("MODIFIED", "/sync/modified"),
                ("DELETED", "/sync/deleted"),
                ("PACKAGES", "/sync/package_count"),
                ("COMMIT", "/status/commit"),
                ("NEXT SYNC", "/status/next_sync_at"),
            ];
            client::print(out, conn.output, &reply, None, &columns)
        }
        RepoCommand::Update {
            repository,
            schedule,
            clear_schedule,
            run_once_at,
        } => {
            let (ns, name) = split_key(&repository)?;
            // `repo.update` replaces the whole sync spec: start from the
            // current one, so what is not given stays.
            let current = c.call(
                "repo.get",
                &serde_json::json!({"namespace": ns, "name": name}),
            )?;
            let sync = updated_sync(&current["sync"], schedule, clear_schedule, run_once_at);
            let reply = c.call(
                "repo.update",
                &serde_json::json!({"namespace": ns, "name": name, "sync": sync}),
            )?;
            let columns = [
                ("NAME", "/name"),
                ("SCHEDULE", "/sync/schedule"),
                ("RUN ONCE AT", "/sync/run_once_at"),
                ("NEXT SYNC", "/status/next_sync_at"),
            ];
            client::print(out, conn.output, &reply, None, &columns)
        }
    }
}

/// How long a command waits quietly before it shows its progress.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);
/// How long reading a repository's state after a timeout may take.
const STATE_READ_TIMEOUT: Duration = Duration::from_secs(5);

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
}

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
