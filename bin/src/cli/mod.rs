//! The command line.
//!
//! Habits of kubectl, porchctl and the nats CLI: `-s/--server`, `--creds`,
//! `--user`/`--password` and `-n/--namespace` anywhere on the command line
//! (global); names as `NAMESPACE/NAME` or a bare name in `-n`'s namespace
//! ([`names`]); `-o table|wide|name|json|yaml`, `-A`, `-l` on lists;
//! `--principal` only on commands that write, each command's `--timeout`
//! saying what it bounds; flag values checked by clap, so an error names
//! the flag as typed (`--heartbeat 50ms`).
//!
//! # Layout
//! - this module — the top level (`cairn <area> …`), the global flags,
//!   `node`, `log`, `views`, `watch`, `bench`, `completion`, `man`.
//! - [`kv`] — `cairn kv …`: the key-value cache, parsed on its own (its
//!   `-n` is a key-value namespace, not a Kubernetes name).
//! - [`repo`] — `cairn repo …`.
//! - [`pkg`] — `cairn pkg …`, the `pkgrev.list` filter flags and label
//!   selectors.
//! - [`artifact`] — `cairn artifact get|ls|stats|evict`.
//! - [`names`] — how arguments name repositories and package revisions.

mod artifact;
mod kv;
mod names;
mod pkg;
mod repo;
mod selector;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, CommandFactory, Parser, Subcommand};

use self::{
    pkg::{FilterArgs, PkgCommand},
    repo::RepoCommand,
};
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
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags taken anywhere on the command line.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection and namespace (anywhere on the command line)")]
struct Global {
    /// NATS server URL of a running node; comma-separated or repeated for a
    /// cluster [default: $CAIRN_NATS_URL, else $NATS_URL, else
    /// nats://127.0.0.1:4222]. `cairn node`: the servers to join instead
    /// of starting its own.
    #[arg(
        short = 's',
        long = "server",
        alias = "nats-url",
        global = true,
        value_name = "URL",
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// NATS credentials file (user JWT and NKey seed).
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "user")]
    creds: Option<PathBuf>,
    /// NATS user (with --password); or give them in the URL.
    #[arg(long, global = true, requires = "password")]
    user: Option<String>,
    /// NATS password of --user.
    #[arg(long, global = true, requires = "user")]
    password: Option<String>,
    /// Namespace of names given without one, and of lists and watches.
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "CAIRN_NAMESPACE",
        default_value = "default",
        value_parser = names::namespace_arg
    )]
    namespace: String,
}

impl Global {
    /// Where the client commands' NATS is.
    fn target(&self) -> client::NatsTarget {
        client::NatsTarget::resolve(
            &self.server,
            self.creds.clone(),
            self.user.clone().zip(self.password.clone()),
        )
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (starts its own nats-server unless -s/--server names one).
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
        #[command(subcommand)]
        command: PkgCommand,
    },
    /// Fetch, list and evict artifacts of the node's HTTP artifact cache.
    Artifact {
        #[command(subcommand)]
        command: artifact::ArtifactCommand,
    },
    /// Stream changes (package revisions, repositories) until interrupted.
    Watch(WatchArgs),
    /// The key-value cache: get, set, del, keys, stats, clear, cleanup,
    /// key-for (see `cairn kv --help`; talks to a running node).
    Kv {
        /// The kv command and its flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The cluster a node belongs to (talks to a running cluster node).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// A live view of nodes from their /metrics (requests/s by endpoint,
    /// cache hit ratios, sync queue, publish lag, watchers), refreshed in
    /// place until interrupted.
    Top(TopArgs),
    /// Benchmarks, each against its raw baseline in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Print a shell completion script (e.g. `source <(cairn completion bash)`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page of cairn, or of one command (`cairn man repo
    /// register`), in roff (e.g. `cairn man | man -l -`).
    Man {
        /// The command's words after `cairn`.
        command: Vec<String>,
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
    /// Address of the local nats-server (default 127.0.0.1:4222).
    #[arg(long)]
    nats_listen: Option<String>,
    /// Log level filter (RUST_LOG wins).
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Debug, Args)]
struct TopArgs {
    /// Base URL of a node's HTTP listener (http.listen); repeat for each
    /// node of a cluster.
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    urls: Vec<String>,
    /// Time between two views (the window of the rates), 100ms to 1h.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: std::time::Duration,
    /// Print one view (rates over one interval) and exit.
    #[arg(long)]
    once: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: crate::top::TopOutput,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// First sequence number to print.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Only the events of this repository (NAMESPACE/NAME, or NAME in
    /// -n's namespace; a stream id `repo/NS/NAME` too).
    #[arg(long)]
    stream: Option<String>,
    /// Keep printing new events until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Read a stopped node's data directory instead of asking a node.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Flags of every `repo` and `pkg` command.
#[derive(Debug, Args)]
struct Conn {
    /// Output format: table, wide (more columns), name (NAMESPACE/NAME per
    /// line), json, yaml.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = client::Output::Table)]
    output: client::Output,
}

/// Who acts: on commands that write.
#[derive(Debug, Args)]
struct Principal {
    /// Who is acting (recorded in the events, authors the commits); the
    /// NATS user instead when the server names one.
    #[arg(long)]
    principal: Option<String>,
}

/// A `--timeout` duration (humantime: `90s`, `2m`).
fn duration_arg(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 90s, 2m)"))
}

#[derive(Debug, Args)]
struct WatchArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Kinds of events: packagerevision (default), repository (repeatable).
    #[arg(long = "kind", value_parser = ["packagerevision", "repository"])]
    kinds: Vec<String>,
    /// Resume after this sequence number instead of listing first.
    #[arg(long)]
    since: Option<u64>,
    /// Heartbeat interval asked of the node, 100ms to 60s (a watch silent
    /// for three intervals is taken for lost and started again).
    #[arg(long, default_value = "5s", value_parser = heartbeat_arg)]
    heartbeat: Duration,
    /// How long a lost watch (its node stopped) is tried again, resuming
    /// from the last seq seen, before the command fails.
    #[arg(long, default_value = "5m", value_parser = duration_arg)]
    reconnect_timeout: Duration,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = watch_cmd::Output::Table)]
    output: watch_cmd::Output,
}

/// `--heartbeat`: the node's bounds (`heartbeat_ms` 100–60000), checked
/// here so the error names the flag.
fn heartbeat_arg(text: &str) -> Result<Duration, String> {
    let d = duration_arg(text)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err("must be between 100ms and 60s".to_owned());
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The nodes (applied seq, lag, streams owned) and every stream's lease
    /// (owner, time left), as a node of the cluster knows them.
    Status {
        /// Output format: table, json, yaml.
        #[arg(long, short = 'o', value_enum, default_value_t = client::Output::Table)]
        output: client::Output,
        /// Ask this node in particular (its `cluster.node-id`).
        #[arg(long)]
        node: Option<String>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "10s", value_parser = duration_arg)]
        timeout: Duration,
    },
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
    /// Events/s from the log to JetStream via the Publisher vs raw async-nats
    /// publishes (against -s/--server when given, else a local nats-server).
    Publish {
        /// Events to publish.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
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
    /// The HTTP artifact cache's hits, 100 MiB hit, index lookups,
    /// revalidation and dedup vs nginx proxy_cache in the same run.
    Artifact {
        /// Timed 10 KiB hits at concurrency 64, per side, over all rounds
        /// (a quarter of them at concurrency 1).
        #[arg(long, default_value_t = 40_000)]
        requests: usize,
        /// Rounds the hits are measured in, each running both sides
        /// (cairn first in even rounds, nginx first in odd ones).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Stored URLs of the larger index lookup measurement.
        #[arg(long, default_value_t = 1_000_000)]
        lookup_entries: usize,
    },
    /// Commits/s through a cluster owner (three nodes, NATS R3) vs raw
    /// async-nats publishes with Nats-Expected-Last-Subject-Sequence.
    ClusterAppend {
        /// Commits in all, one event each.
        #[arg(long, default_value_t = 20_000)]
        commits: u64,
        /// Streams written at once: the in-flight window of both sides.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Size of each event's text (a lifecycle command's commit).
        #[arg(long, default_value_t = 600)]
        event_bytes: usize,
    },
    /// kill -9 of a repository's owner → first successful command through
    /// another node, several times (three nodes, NATS R3).
    Failover {
        /// Owners killed, one after the other.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// A node with an empty data dir joins a cluster whose log holds N
    /// events vs a raw ordered consumer reading the same messages.
    CatchUp {
        /// Events in the log when the node joins (at least).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Revisions of the generated repository whose first sync is copied.
        #[arg(long, default_value_t = 10_000)]
        revisions: u64,
        /// Events per copied commit: 0 keeps the first sync's commits (about
        /// 700 events each); 1 publishes every event as a commit of its own,
        /// as lifecycle commands and key-value sets commit them.
        #[arg(long, default_value_t = 0)]
        commit_events: usize,
    },
    /// pkgrev.list throughput against one node and against three (queue
    /// group), same client load, and how the requests split.
    ClusterRead {
        /// Revisions of the generated repository (5 per package).
        #[arg(long, default_value_t = 1000)]
        revisions: u64,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// How long each side is measured.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// cluster-read's raw peer (run by that benchmark as a child process):
    /// answers every request on `bench.echo` (queue group) and
    /// `bench.echo.<id>` with a fixed reply, until killed.
    #[command(hide = true)]
    EchoResponder {
        /// Its name, in the `Cairn-Node` header of its replies.
        #[arg(long)]
        id: String,
        /// Size of its replies.
        #[arg(long)]
        reply_bytes: usize,
    },
    /// list and append latency with trace export on (to an OTLP receiver
    /// the benchmark starts, every trace sampled) vs off, in one run.
    Telemetry {
        /// Package revisions in the generated repository (list).
        #[arg(long, default_value_t = 1000)]
        revisions: u64,
        /// Timed listings (pages of 100) per round and side.
        #[arg(long, default_value_t = 200)]
        lists: usize,
        /// Timed durable kv.set commands per round and side.
        #[arg(long, default_value_t = 200)]
        appends: usize,
        /// Rounds, each both sides: off then on, then on then off (many
        /// short rounds spread a busy neighbour's bursts over both sides).
        #[arg(long, default_value_t = 40)]
        rounds: usize,
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
    /// The key-value cache: GET vs a raw NATS echo and Redis, SET (sync,
    /// batched) vs Redis (appendfsync always, everysec), memory per entry
    /// vs Redis, compaction of rewrites (spawns redis-server).
    Kv {
        /// Keys preloaded for the GETs of 100-byte values (10 KiB: a tenth).
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Timed requests per measurement.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Entries of 100 bytes of the memory measurement.
        #[arg(long, default_value_t = 1_000_000)]
        memory_entries: usize,
        /// Sets of the compaction measurement.
        #[arg(long, default_value_t = 1_000_000)]
        compaction_sets: usize,
        /// Distinct keys of the compaction measurement.
        #[arg(long, default_value_t = 1_000)]
        compaction_keys: usize,
        /// The measurements to run (all by default): a profile of one
        /// phase without the others around it. The last summary line needs
        /// `get` and `set-sync`.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "get,set-sync,set-batched,memory,compaction"
        )]
        phases: Vec<bench::kv::KvPhase>,
        /// Requests in flight of the GET and SET measurements; the last
        /// summary line needs 1 first.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        concurrency: Vec<usize>,
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
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = match kv::intercept(&args) {
        Some(kv_args) => {
            let cli = kv::KvCli::parse_from(kv_args);
            telemetry::init(CLIENT_LOG, false);
            kv::run(cli, &mut std::io::stdout().lock())
        }
        None => run(Cli::parse_from(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`cairn log | head -1`): nothing more to
        // say to anyone, so end quietly, as `head`'s writer should.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a pipe whose reader closed it.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let kind = cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| cause.downcast_ref::<serde_json::Error>()?.io_error_kind());
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let global = cli.global;
    match cli.command {
        Command::Node(args) => {
            let overrides = Overrides {
                data_dir: args.data_dir,
                nats_urls: global.server,
                nats_listen: args.nats_listen,
                log_level: args.log_level,
            };
            let config = NodeConfig::load(args.config.as_deref(), &overrides)?;
            telemetry::init(&config.log.level, config.log.format == "json");
            drop(stdout);
            node::run(config)
        }
        Command::Log(args) => {
            telemetry::init(CLIENT_LOG, false);
            let source = match args.data_dir {
                Some(dir) => Source::DataDir(dir),
                None => Source::Nats(global.target()),
            };
            let stream = args
                .stream
                .as_deref()
                .map(|s| names::stream(s, &global.namespace))
                .transpose()?;
            let options = LogOptions {
                source,
                from: args.from,
                stream,
                follow: args.follow,
                output: args.output,
            };
            log_cmd::run(options, &mut stdout)
        }
        Command::Views {
            command: ViewsCommand::Rebuild { data_dir },
        } => {
            telemetry::init(CLIENT_LOG, false);
            views_cmd::rebuild(&data_dir, &mut stdout)
        }
        Command::Repo { conn, command } => {
            telemetry::init(CLIENT_LOG, false);
            repo::run(&global, conn, command, &mut stdout)
        }
        Command::Pkg { conn, command } => {
            telemetry::init(CLIENT_LOG, false);
            pkg::run(&global, conn, command, &mut stdout)
        }
        Command::Artifact { command } => {
            telemetry::init(CLIENT_LOG, false);
            artifact::run(&global, command, &mut stdout)
        }
        Command::Watch(args) => {
            telemetry::init(CLIENT_LOG, false);
            let filter = args.filter.watch_filter(&global.namespace)?;
            let options = watch_cmd::WatchOptions {
                target: global.target(),
                filter,
                kinds: args.kinds,
                since: args.since,
                heartbeat: args.heartbeat,
                reconnect_timeout: args.reconnect_timeout,
                output: args.output,
            };
            watch_cmd::run(options, &mut stdout)
        }
        Command::Cluster {
            command:
                ClusterCommand::Status {
                    output,
                    node,
                    timeout,
                },
        } => {
            telemetry::init(CLIENT_LOG, false);
            let c = client::Client::connect(&global.target(), timeout, "cluster status")?;
            let endpoint = match &node {
                Some(node) => format!("node.{node}.cairn.v1.cluster.status"),
                None => "cluster.status".to_owned(),
            };
            let status = c.call(&endpoint, &serde_json::json!({}))?;
            print_cluster_status(&mut stdout, output, &status)
        }
        Command::Top(args) => {
            telemetry::init(CLIENT_LOG, false);
            crate::top::run(
                crate::top::TopOptions {
                    urls: args.urls,
                    interval: args.interval,
                    once: args.once,
                    output: args.output,
                },
                &mut stdout,
            )
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut stdout);
            Ok(())
        }
        Command::Man { command } => man(&command, &mut stdout),
        // Reached only when `kv` follows flags `intercept` does not know:
        // parse it as `cairn kv` would.
        Command::Kv { args } => {
            let mut argv = vec![std::ffi::OsString::from("cairn kv")];
            argv.extend(args.into_iter().map(Into::into));
            let cli = kv::KvCli::parse_from(argv);
            telemetry::init(CLIENT_LOG, false);
            kv::run(cli, &mut stdout)
        }
        Command::Bench { command } => {
            telemetry::init(CLIENT_LOG, false);
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
                    max_in_flight,
                } => bench::publish(
                    &bench::PublishOptions {
                        events,
                        nats_url: (!global.server.is_empty()).then(|| global.server.join(",")),
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
                BenchCommand::Kv {
                    keys,
                    requests,
                    memory_entries,
                    compaction_sets,
                    compaction_keys,
                    phases,
                    concurrency,
                } => bench::kv::kv(
                    &bench::kv::KvOptions {
                        keys,
                        requests,
                        memory_entries,
                        compaction_sets,
                        compaction_keys,
                        phases,
                        concurrency,
                    },
                    &mut stdout,
                ),
                BenchCommand::Artifact {
                    requests,
                    rounds,
                    lookup_entries,
                } => bench::artifact::artifact(
                    &bench::artifact::ArtifactOptions {
                        requests,
                        rounds,
                        lookup_entries,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::ClusterAppend {
                    commits,
                    window,
                    event_bytes,
                } => bench::cluster::cluster_append(
                    &bench::cluster::ClusterAppendOptions {
                        commits,
                        window,
                        event_bytes,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::Failover { rounds } => bench::cluster::failover(
                    &bench::cluster::FailoverOptions { rounds },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::CatchUp {
                    events,
                    revisions,
                    commit_events,
                } => bench::cluster::catch_up(
                    &bench::cluster::CatchUpOptions {
                        events,
                        revisions,
                        commit_events,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::ClusterRead {
                    revisions,
                    concurrency,
                    duration,
                } => bench::cluster::cluster_read(
                    &bench::cluster::ClusterReadOptions {
                        revisions,
                        concurrency,
                        duration,
                    },
                    &mut stdout,
                )
                .map(|_| ()),
                BenchCommand::EchoResponder { id, reply_bytes } => {
                    bench::cluster::echo_responder(&global.server.join(","), &id, reply_bytes)
                }
                BenchCommand::Telemetry {
                    revisions,
                    lists,
                    appends,
                    rounds,
                } => bench::telemetry::telemetry(
                    &bench::telemetry::TelemetryOptions {
                        revisions,
                        lists,
                        appends,
                        rounds,
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

/// The log filter of every command but `node`: warnings, and nothing of
/// the NATS client's own (a connection error is said once, by the
/// command).
const CLIENT_LOG: &str = "warn,async_nats=off";

/// `cairn man [COMMAND…]`: the roff manual page of cairn or of one of its
/// commands.
fn man(words: &[String], out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let mut command = Cli::command();
    command.build();
    for word in words {
        let Some(sub) = command.find_subcommand(word).cloned() else {
            let name = command.get_bin_name().unwrap_or("cairn").to_owned();
            anyhow::bail!("COMMAND: {name} has no command {word:?}; see `{name} --help`");
        };
        // Built with the root: named `cairn-repo-register` in the page.
        command = sub;
    }
    clap_mangen::Man::new(command).render(out)?;
    Ok(())
}

/// `cairn cluster status` in `output`: the nodes, then the leases.
fn print_cluster_status(
    out: &mut dyn std::io::Write,
    output: client::Output,
    status: &serde_json::Value,
) -> anyhow::Result<()> {
    match output {
        client::Output::Json | client::Output::Yaml => {
            client::print(out, output, status, None, &[])
        }
        _ => {
            writeln!(
                out,
                "answered by node {}",
                status["node"].as_str().unwrap_or("?")
            )?;
            client::print(
                out,
                client::Output::Table,
                status,
                Some("nodes"),
                &[
                    ("NODE", "/node"),
                    ("APPLIED SEQ", "/applied_seq"),
                    ("LAG", "/lag"),
                    ("POSITION", "/applied_position"),
                    ("OWNS", "/owns"),
                ],
            )?;
            writeln!(out)?;
            client::print(
                out,
                client::Output::Table,
                status,
                Some("leases"),
                &[
                    ("STREAM", "/stream"),
                    ("OWNER", "/owner"),
                    ("EXPIRES IN (MS)", "/expires_in_ms"),
                ],
            )
        }
    }
}
