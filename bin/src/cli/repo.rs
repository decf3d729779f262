//! `cairn repo …`: register, inspect, sync and update repositories.

use std::io::Write;

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
    /// Change a repository's sync spec (no flag: back to the node's interval).
    Update {
        /// namespace/name.
        repository: String,
        /// 5-field cron schedule, e.g. "*/10 * * * *".
        #[arg(long)]
        schedule: Option<String>,
        /// One sync at this RFC 3339 time, e.g. 2026-12-01T02:00:00Z.
        #[arg(long)]
        run_once_at: Option<String>,
    },
}

/// Runs `cairn repo <command>` against the node of `conn`.
pub(super) fn run(conn: Conn, command: RepoCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let c = client::Client::connect(&conn.nats_url, conn.timeout)?;
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
            let reply = c.call("repo.register", &body)?;
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
            let reply = c.call(
                "repo.unregister",
                &serde_json::json!({"namespace": ns, "name": name}),
            )?;
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
            run_once_at,
        } => {
            let (ns, name) = split_key(&repository)?;
            let mut sync = serde_json::Map::new();
            if let Some(schedule) = schedule {
                sync.insert("schedule".into(), schedule.into());
            }
            if let Some(at) = run_once_at {
                sync.insert("run_once_at".into(), at.into());
            }
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
