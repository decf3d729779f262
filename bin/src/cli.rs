//! The command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{
    bench,
    config::{NodeConfig, Overrides},
    log_cmd::{self, LogOptions, Output, Source},
    node, telemetry, views_cmd,
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
            }
        }
    }
}
