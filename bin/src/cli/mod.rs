//! The command line.
//!
//! # Layout
//! - this module — the top level (`cairn <area> …`), `node`, `log`,
//!   `views`, `watch`, `bench`, and the connection flags of the client
//!   commands.
//! - [`repo`] — `cairn repo …`.
//! - [`pkg`] — `cairn pkg …` and the `pkgrev.list` filter flags.
//! - [`names`] — how arguments name repositories and package revisions.

mod names;
mod pkg;
mod repo;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

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
    /// Heartbeat interval asked of the node (a watch silent for three
    /// intervals is taken for lost and started again).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat: std::time::Duration,
    /// How long a lost watch (its node stopped) is tried again, resuming
    /// from the last seq seen, before the command fails.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    reconnect_timeout: std::time::Duration,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = watch_cmd::Output::Table)]
    output: watch_cmd::Output,
    /// NATS URL of a running node.
    #[arg(long, env = "CAIRN_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
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
    /// Append → watcher receipt latency over NATS vs raw NATS publish → receipt.
    Watch {
        /// Timed events (and raw messages).
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Do not fsync commits.
        #[arg(long)]
        no_sync: bool,
    },
    /// Resident memory of the (in-process) node after syncing and listing N revisions.
    Memory {
        /// Package revisions in the generated repository (5 per package).
        #[arg(long, default_value_t = 100_000)]
        revisions: u64,
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
            repo::run(conn, command, &mut stdout)
        }
        Command::Pkg {
            conn,
            principal,
            command,
        } => {
            telemetry::init("warn", false);
            pkg::run(conn, principal, command, &mut stdout)
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
                reconnect_timeout: args.reconnect_timeout,
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
                    porch_history,
                } => bench::memory(
                    &bench::MemoryOptions {
                        revisions,
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
