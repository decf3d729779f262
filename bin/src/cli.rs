//! The command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{
    bench, client,
    config::{NodeConfig, Overrides},
    log_cmd::{self, LogOptions, Output, Source},
    node, telemetry, views_cmd, watch_cmd,
};

/// cairn: an event-sourced package-repository cache on NATS.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (starts its own nats-server when no NATS URL is configured).
    Node(NodeArgs),
    /// Print the event log (from a running node, or a stopped node's data directory).
    Log(LogArgs),
    /// Maintain the views.
    Views {
        #[command(subcommand)]
        command: ViewsCommand,
    },
    /// Register, inspect and sync repositories (talks to a running node).
    Repo {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// List, inspect, pull, author and publish package revisions (talks to
    /// a running node).
    Pkg {
        #[command(flatten)]
        conn: Conn,
        /// Who is acting (recorded in the events, authors the commits); the
        /// NATS user instead when the server names one.
        #[arg(long, global = true)]
        principal: Option<String>,
        #[command(subcommand)]
        command: PkgCommand,
    },
    /// Stream changes (package revisions, repositories) until interrupted.
    Watch(WatchArgs),
    /// Benchmarks, each against its raw baseline in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// TOML configuration file (also CAIRN_CONFIG).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Data directory (store and local JetStream data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// NATS server URL; repeat for a cluster. None: start a local nats-server.
    #[arg(long = "nats-url")]
    nats_urls: Vec<String>,
    /// Address of the local nats-server (default 127.0.0.1:4222).
    #[arg(long)]
    nats_listen: Option<String>,
    /// Log level filter (RUST_LOG wins).
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// First sequence number to print.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Only this stream (e.g. repo/<namespace>/<name>).
    #[arg(long)]
    stream: Option<String>,
    /// Keep printing new events until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Read a stopped node's data directory instead of asking a node.
    #[arg(long, conflicts_with = "nats_url")]
    data_dir: Option<PathBuf>,
    /// NATS URL of a running node.
    #[arg(long, env = "CAIRN_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
}

#[derive(Debug, Args)]
struct Conn {
    /// NATS URL of a running node.
    #[arg(
        long,
        global = true,
        env = "CAIRN_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = client::Output::Table)]
    output: client::Output,
    /// How long to wait for a reply (a registration waits for the first sync).
    #[arg(long, global = true, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
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

#[derive(Debug, Subcommand)]
enum PkgCommand {
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
    Pull {
        /// namespace/name (the Porch object name).
        name: String,
        /// Target directory.
        dir: PathBuf,
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
struct FilterArgs {
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
    fn into_json(self) -> serde_json::Map<String, serde_json::Value> {
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

#[derive(Debug, Args)]
struct WatchArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Kinds of events: packagerevision (default), repository (repeatable).
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Resume after this sequence number instead of listing first.
    #[arg(long)]
    since: Option<u64>,
    /// Heartbeat interval asked of the node.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat: std::time::Duration,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = watch_cmd::Output::Table)]
    output: watch_cmd::Output,
    /// NATS URL of a running node.
    #[arg(long, env = "CAIRN_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
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
    out: &mut impl std::io::Write,
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

fn split_key(key: &str) -> anyhow::Result<(&str, &str)> {
    key.split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{key:?}: expected <namespace>/<name>"))
}

#[derive(Debug, Subcommand)]
enum ViewsCommand {
    /// Drop every view and rebuild it from the log (node stopped).
    Rebuild {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Durable appends/s through the EventLog vs raw RocksDB WriteBatch writes.
    Append {
        /// Events in all, one per append.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Do not fsync (both sides).
        #[arg(long)]
        no_sync: bool,
    },
    /// Events/s from the log to JetStream via the Publisher vs raw async-nats publishes.
    Publish {
        /// Events to publish.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Use this NATS server instead of starting a local one.
        #[arg(long)]
        nats_url: Option<String>,
        /// In-flight window of both sides.
        #[arg(long, default_value_t = 512)]
        max_in_flight: usize,
    },
    /// Full and one-package pkgrev.list latency vs raw NATS request/reply of the same bytes.
    List {
        /// Package revisions in the generated repository (5 per package).
        #[arg(long, default_value_t = 10_000)]
        revisions: u64,
        /// Timed listings of each kind at most.
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Stop each measurement after this long.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        budget: std::time::Duration,
        /// Items per page (the server's default when not given).
        #[arg(long)]
        page_size: Option<u64>,
    },
    /// First sync (register with wait) vs git clone --mirror of the same repository.
    SyncFirst {
        /// Packages in the generated repository.
        #[arg(long, default_value_t = 1000)]
        packages: usize,
        /// Revisions per package: revisions-1 published tags plus the main placeholder.
        #[arg(long, default_value_t = 5)]
        revisions: usize,
    },
    /// Approving one proposal in a repository of N published revisions (and
    /// of N/10) vs the same commit, tag and push with the git CLI.
    Approve {
        /// Published revisions of the larger repository (the smaller holds a tenth).
        #[arg(long, default_value_t = 1000)]
        revisions: usize,
        /// Timed approvals per repository.
        #[arg(long, default_value_t = 15)]
        iterations: usize,
    },
    /// A sync of an unchanged repository vs git ls-remote of it.
    SyncNoop {
        /// Packages in the generated repository.
        #[arg(long, default_value_t = 1000)]
        packages: usize,
        /// Revisions per package: revisions-1 published tags plus the main placeholder.
        #[arg(long, default_value_t = 5)]
        revisions: usize,
        /// Timed syncs (and ls-remote runs).
        #[arg(long, default_value_t = 50)]
        iterations: usize,
    },
    /// Durable append latency while blob garbage collections run vs alone.
    Gc {
        /// Blobs referenced by package revisions (the collection scans them).
        #[arg(long, default_value_t = 200_000)]
        blobs: usize,
        /// Unreferenced blobs (the first collection deletes them).
        #[arg(long, default_value_t = 20_000)]
        garbage: usize,
        /// Timed appends, alone and during the collections.
        #[arg(long, default_value_t = 2000)]
        appends: usize,
        /// Do not fsync commits.
        #[arg(long)]
        no_sync: bool,
    },
    /// Append → watcher receipt latency over NATS vs raw NATS publish → receipt.
    Watch {
        /// Timed events (and raw messages).
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Do not fsync commits.
        #[arg(long)]
        no_sync: bool,
    },
    /// Resident memory of the (in-process) node: its peak during first
    /// syncs of N revisions, and once settled after listing them.
    Memory {
        /// Package revisions in each generated repository (5 per package).
        #[arg(long, default_value_t = 100_000)]
        revisions: u64,
        /// Repositories (each its own generated upstream) registered at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        repositories: u16,
        /// One approval commit per revision (as Porch writes) instead of one
        /// commit per revision number; first syncs of long histories are slow.
        #[arg(long)]
        porch_history: bool,
    },
}

/// Parses the command line and runs it; errors go to stderr, exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Node(args) => {
            let overrides = Overrides {
                data_dir: args.data_dir,
                nats_urls: args.nats_urls,
                nats_listen: args.nats_listen,
                log_level: args.log_level,
            };
            let config = NodeConfig::load(args.config.as_deref(), &overrides)?;
            telemetry::init(&config.log.level, config.log.format == "json");
            drop(stdout);
            node::run(config)
        }
        Command::Log(args) => {
            telemetry::init("warn", false);
            let source = match args.data_dir {
                Some(dir) => Source::DataDir(dir),
                None => Source::Nats(args.nats_url),
            };
            let options = LogOptions {
                source,
                from: args.from,
                stream: args.stream,
                follow: args.follow,
                output: args.output,
            };
            log_cmd::run(options, &mut stdout)
        }
        Command::Views {
            command: ViewsCommand::Rebuild { data_dir },
        } => {
            telemetry::init("warn", false);
            views_cmd::rebuild(&data_dir, &mut stdout)
        }
        Command::Repo { conn, command } => {
            telemetry::init("warn", false);
            let c = client::Client::connect(&conn.nats_url, conn.timeout)?;
            let out = &mut stdout;
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
                    client::print(out, conn.output, &reply, None, client::REPO_COLUMNS)
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
        Command::Pkg {
            conn,
            principal,
            command,
        } => {
            telemetry::init("warn", false);
            let c = client::Client::connect(&conn.nats_url, conn.timeout)?;
            let out = &mut stdout;
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
                PkgCommand::Pull { name, dir } => {
                    let (ns, name) = split_key(&name)?;
                    let reply = c.call(
                        "pkgrev.resources",
                        &serde_json::json!({"namespace": ns, "name": name}),
                    )?;
                    let n = client::write_resources(&dir, &reply)?;
                    use std::io::Write as _;
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
                    use std::io::Write as _;
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
        Command::Watch(args) => {
            telemetry::init("warn", false);
            let filter = args.filter.into_json();
            let options = watch_cmd::WatchOptions {
                nats_url: args.nats_url,
                filter,
                kinds: args.kinds,
                since: args.since,
                heartbeat: args.heartbeat,
                output: args.output,
            };
            watch_cmd::run(options, &mut stdout)
        }
        Command::Bench { command } => {
            telemetry::init("warn", false);
            match command {
                BenchCommand::Append {
                    events,
                    writers,
                    no_sync,
                } => bench::append(
                    &bench::AppendOptions {
                        events,
                        writers,
                        sync: !no_sync,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::Publish {
                    events,
                    nats_url,
                    max_in_flight,
                } => bench::publish(
                    &bench::PublishOptions {
                        events,
                        nats_url,
                        server_binary: "nats-server".into(),
                        max_in_flight,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::List {
                    revisions,
                    iterations,
                    budget,
                    page_size,
                } => bench::list(
                    &bench::ListOptions {
                        revisions,
                        iterations,
                        budget,
                        page_size,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::SyncFirst {
                    packages,
                    revisions,
                } => bench::sync_first(
                    &bench::SyncFirstOptions {
                        packages,
                        revisions,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::Approve {
                    revisions,
                    iterations,
                } => bench::approve::approve(
                    &bench::approve::ApproveOptions {
                        revisions,
                        iterations,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::SyncNoop {
                    packages,
                    revisions,
                    iterations,
                } => bench::sync_noop(
                    &bench::SyncNoopOptions {
                        packages,
                        revisions,
                        iterations,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::Gc {
                    blobs,
                    garbage,
                    appends,
                    no_sync,
                } => bench::gc::gc(
                    &bench::GcOptions {
                        blobs,
                        garbage,
                        appends,
                        sync: !no_sync,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::Watch { events, no_sync } => bench::watch::watch(
                    &bench::WatchOptions {
                        events,
                        sync: !no_sync,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::Memory {
                    revisions,
                    repositories,
                    porch_history,
                } => bench::memory(
                    &bench::MemoryOptions {
                        revisions,
                        repositories: repositories.into(),
                        history: if porch_history {
                            bench::gen::History::Porch
                        } else {
                            bench::gen::History::Compact
                        },
                    },
                    &mut stdout,
                )
                .map(|_| ()),
            }
        }
    }
}
