//! `cairn kv …`: the key-value cache from the command line.
//!
//! Parsed on its own ([`KvCli`], reached through [`intercept`]) because a
//! key-value namespace is not a Kubernetes name: `-n/--namespace
//! user:123` must pass here, while everywhere else `-n` is checked as a
//! DNS label. The connection flags (`-s`, `--creds`, `--user`,
//! `--password`) are the same as the rest of the CLI's, anywhere on the
//! command line; `-o table|json|yaml`, `--tag`, `--ttl`, `--principal` on
//! the commands that write.

use std::{ffi::OsString, io::Write, path::PathBuf, time::Duration};

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use super::duration_arg;
use crate::client;

/// `cairn kv`: the key-value cache (talks to a running node).
#[derive(Debug, Parser)]
#[command(name = "cairn kv", version)]
pub(super) struct KvCli {
    /// NATS server URL of a running node (comma-separated or repeated)
    /// [default: $CAIRN_NATS_URL, else $NATS_URL, else
    /// nats://127.0.0.1:4222].
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
    /// NATS user (with --password).
    #[arg(long, global = true, requires = "password")]
    user: Option<String>,
    /// NATS password of --user.
    #[arg(long, global = true, requires = "user")]
    password: Option<String>,
    /// The entries' namespace (any text without control characters, e.g.
    /// user:123); absent: the default namespace (for keys, stats and
    /// cleanup: all namespaces).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Output format: table, json, yaml.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = client::Output::Table)]
    output: client::Output,
    /// How long to wait for the node's answer.
    #[arg(long, global = true, default_value = "30s", value_parser = duration_arg)]
    timeout: Duration,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print an entry (a miss is an error, exit code 1).
    Get {
        /// The key.
        key: String,
    },
    /// Store an entry.
    Set {
        /// The key.
        key: String,
        /// The value: a JSON string unless --json (or --from-file).
        #[arg(required_unless_present = "from_file")]
        value: Option<String>,
        /// VALUE is JSON (an object, a number, …).
        #[arg(long)]
        json: bool,
        /// The value is this file's bytes.
        #[arg(long, conflicts_with_all = ["value", "json"])]
        from_file: Option<PathBuf>,
        /// Time to live, e.g. 90s, 1h (at most a year).
        #[arg(long)]
        ttl: Option<String>,
        /// A tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Who is acting (recorded in the events).
        #[arg(long)]
        principal: Option<String>,
    },
    /// Delete entries: the KEYS named, or those matching --pattern, or
    /// those tagged --tag.
    #[command(group(clap::ArgGroup::new("what").required(true)))]
    Del {
        /// Keys of -n's namespace.
        #[arg(group = "what")]
        keys: Vec<String>,
        /// A glob over full keys (`namespace:key`), as Redis SCAN MATCH.
        #[arg(long, group = "what")]
        pattern: Option<String>,
        /// Entries with this tag (repeatable: any of them).
        #[arg(long = "tag", group = "what")]
        tags: Vec<String>,
        /// With --tag: entries with all of the tags.
        #[arg(long, requires = "tags")]
        all_tags: bool,
        /// Who is acting (recorded in the events).
        #[arg(long)]
        principal: Option<String>,
    },
    /// List live keys (of -n's namespace, or of all).
    Keys {
        /// A glob over full keys.
        #[arg(long)]
        pattern: Option<String>,
        /// Only entries with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Most keys (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Hits, misses, entries, sizes (of -n's namespace, or of all).
    Stats,
    /// Delete every entry of -n's namespace (or, with --all, of all).
    Clear {
        /// Every namespace.
        #[arg(long, conflicts_with = "namespace")]
        all: bool,
        /// Who is acting (recorded in the events).
        #[arg(long)]
        principal: Option<String>,
    },
    /// Remove expired entries now.
    Cleanup {
        /// Who is acting (recorded in the events).
        #[arg(long)]
        principal: Option<String>,
    },
    /// The canonical key of a function call: `fn:<FUNCTION>:<sha256>`.
    KeyFor {
        /// The function's name.
        function: String,
        /// A positional argument, as JSON (repeatable, in order).
        #[arg(long = "arg")]
        args: Vec<String>,
        /// A keyword argument NAME=JSON (repeatable; order does not matter).
        #[arg(long = "kwarg")]
        kwargs: Vec<String>,
    },
}

/// Global flags of the main command line that take a value (skipped when
/// looking for the subcommand word).
const VALUE_FLAGS: [&str; 7] = [
    "-s",
    "--server",
    "--nats-url",
    "--creds",
    "--user",
    "--password",
    "-n",
];

/// When the subcommand is `kv`, the arguments without that word, for
/// [`KvCli`]; else `None`.
pub(super) fn intercept(args: &[OsString]) -> Option<Vec<OsString>> {
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_string_lossy();
        if arg == "--namespace" || VALUE_FLAGS.contains(&arg.as_ref()) {
            i += 2;
            continue;
        }
        if arg.starts_with('-') {
            i += 1;
            continue;
        }
        if arg != "kv" {
            return None;
        }
        let mut rest = args.to_vec();
        rest.remove(i);
        rest[0] = OsString::from("cairn kv");
        return Some(rest);
    }
    None
}

fn json_arg(flag: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{flag}: {text:?} is not JSON"))
}

/// Runs `cairn kv …`.
pub(super) fn run(cli: KvCli, out: &mut dyn Write) -> anyhow::Result<()> {
    let target = client::NatsTarget::resolve(
        &cli.server,
        cli.creds.clone(),
        cli.user.clone().zip(cli.password.clone()),
    );
    let ns = cli.namespace.clone();
    let with_ns = |mut body: Value| {
        if let Some(ns) = &ns {
            body["namespace"] = json!(ns);
        }
        body
    };
    let output = cli.output;
    let (name, endpoint, body) = match &cli.command {
        KvCommand::Get { key } => ("kv get", "kv.get", with_ns(json!({"key": key}))),
        KvCommand::Set {
            key,
            value,
            json,
            from_file,
            ttl,
            tags,
            principal,
        } => {
            let mut body = with_ns(json!({"key": key, "tags": tags}));
            match (from_file, value) {
                (Some(path), _) => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("--from-file {}", path.display()))?;
                    body["value_b64"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes));
                }
                (None, Some(v)) if *json => body["value"] = json_arg("VALUE (--json)", v)?,
                (None, Some(v)) => body["value"] = json!(v),
                (None, None) => anyhow::bail!("VALUE or --from-file is required"),
            }
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl);
            }
            if let Some(p) = principal {
                body["principal"] = json!(p);
            }
            ("kv set", "kv.set", body)
        }
        KvCommand::Del {
            keys,
            pattern,
            tags,
            all_tags,
            principal,
        } => {
            let client = client::Client::connect(&target, cli.timeout, "kv del")?;
            let mut deleted = 0u64;
            let mut call = |endpoint: &str, mut body: Value| -> anyhow::Result<()> {
                if let Some(p) = principal {
                    body["principal"] = json!(p);
                }
                let reply = client.call(endpoint, &body)?;
                deleted += match &reply["deleted"] {
                    Value::Bool(b) => u64::from(*b),
                    v => v.as_u64().unwrap_or(0),
                };
                Ok(())
            };
            if let Some(pattern) = pattern {
                call("kv.delete_by_pattern", json!({"pattern": pattern}))?;
            } else if !tags.is_empty() {
                let r#match = if *all_tags { "all" } else { "any" };
                call("kv.delete_by_tags", json!({"tags": tags, "match": r#match}))?;
            } else {
                for key in keys {
                    call("kv.delete", with_ns(json!({"key": key})))?;
                }
            }
            let reply = json!({ "deleted": deleted });
            return match output {
                client::Output::Json | client::Output::Yaml => {
                    client::print(out, output, &reply, None, &[])
                }
                _ => Ok(writeln!(out, "deleted {deleted}")?),
            };
        }
        KvCommand::Keys {
            pattern,
            tag,
            limit,
        } => {
            let mut body = with_ns(json!({"limit": limit}));
            if let Some(p) = pattern {
                body["pattern"] = json!(p);
            }
            if let Some(t) = tag {
                body["tag"] = json!(t);
            }
            ("kv keys", "kv.keys", body)
        }
        KvCommand::Stats => ("kv stats", "kv.stats", with_ns(json!({}))),
        KvCommand::Clear { all, principal } => {
            let mut body = if *all {
                json!({"all": true})
            } else {
                json!({"namespace": ns.clone().unwrap_or_default()})
            };
            if let Some(p) = principal {
                body["principal"] = json!(p);
            }
            ("kv clear", "kv.clear", body)
        }
        KvCommand::Cleanup { principal } => {
            let mut body = with_ns(json!({}));
            if let Some(p) = principal {
                body["principal"] = json!(p);
            }
            ("kv cleanup", "kv.cleanup", body)
        }
        KvCommand::KeyFor {
            function,
            args,
            kwargs,
        } => {
            let args = args
                .iter()
                .map(|a| json_arg("--arg", a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut map = serde_json::Map::new();
            for kw in kwargs {
                let (k, v) = kw
                    .split_once('=')
                    .with_context(|| format!("--kwarg {kw:?}: expected NAME=JSON"))?;
                map.insert(k.to_owned(), json_arg("--kwarg", v)?);
            }
            (
                "kv key-for",
                "kv.key_for",
                json!({"function": function, "args": args, "kwargs": map}),
            )
        }
    };
    let client = client::Client::connect(&target, cli.timeout, name)?;
    let reply = client.call(endpoint, &body)?;
    match output {
        client::Output::Json | client::Output::Yaml => {
            return client::print(out, output, &reply, None, &[]);
        }
        _ => {}
    }
    match &cli.command {
        KvCommand::Get { .. } => {
            let value = match reply.get("value") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => format!(
                    "(bytes, base64) {}",
                    reply["value_b64"].as_str().unwrap_or("")
                ),
            };
            writeln!(out, "{value}")?;
        }
        KvCommand::Set { key, .. } => writeln!(
            out,
            "set {} (version {})",
            cairn_actors::kv::full_key(ns.as_deref().unwrap_or(""), key),
            reply["version"]
        )?,
        KvCommand::Keys { .. } => {
            for item in reply["items"].as_array().into_iter().flatten() {
                writeln!(out, "{}", item["full_key"].as_str().unwrap_or(""))?;
            }
        }
        KvCommand::Stats => client::print(
            out,
            output,
            &reply,
            None,
            &[
                ("ENTRIES", "/total_entries"),
                ("HITS", "/total_hits"),
                ("MISSES", "/total_misses"),
                ("HIT-RATE", "/hit_rate"),
                ("EVICTIONS", "/evictions"),
                ("MEMORY", "/memory_usage_bytes"),
                ("DISK", "/disk_usage_bytes"),
            ],
        )?,
        KvCommand::Clear { .. } => writeln!(out, "deleted {}", reply["deleted"])?,
        KvCommand::Cleanup { .. } => writeln!(out, "removed {}", reply["removed"])?,
        KvCommand::KeyFor { .. } => writeln!(out, "{}", reply["key"].as_str().unwrap_or(""))?,
        KvCommand::Del { .. } => {}
    }
    Ok(())
}
