//! `cairn artifact …`: the HTTP artifact cache from the command line.
//!
//! - `get URL [-o FILE]` — the artifact through the node's cache
//!   (`artifact.get`), written to FILE (or standard output); a body over
//!   1 MiB is read in pieces (`artifact.read`) with a progress bar on
//!   standard error (hidden when it is not a terminal), and its SHA-256
//!   checked against the digest the node gave.
//! - `ls [--prefix URL] [--limit N] [-o table|json]` — stored artifacts.
//! - `stats` — the cache's counters (JSON).
//! - `evict (--url URL | --digest sha256:…)`.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::{duration_arg, Global};
use crate::client;

/// Most pages `ls` follows.
const LIST_PAGES_MAX: usize = 10_000;
/// Most pieces `get` reads (a 1 TiB body at 1 MiB a piece).
const READ_PIECES_MAX: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub(super) enum ArtifactCommand {
    /// Fetch an artifact through the node's cache.
    Get {
        /// The absolute http(s) URL (a host on artifact.allow), a file://
        /// URL or a local path (digest and metadata only).
        url: String,
        /// Write the body here (default: standard output).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Revalidate with the origin even when fresh.
        #[arg(long)]
        no_cache: bool,
        /// How long to wait for each answer of the node.
        #[arg(long, default_value = "300s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// List stored artifacts in URL order.
    #[command(visible_alias = "list")]
    Ls {
        /// Only URLs starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// table or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
        /// How long to wait for each page.
        #[arg(long, default_value = "30s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Show the cache's counters.
    Stats {
        /// How long to wait for the node's answer.
        #[arg(long, default_value = "30s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Drop a URL's stored responses, or every entry of a body digest.
    #[command(group(clap::ArgGroup::new("what").required(true)))]
    Evict {
        /// The URL.
        #[arg(long, group = "what")]
        url: Option<String>,
        /// The body digest (sha256:…).
        #[arg(long, group = "what")]
        digest: Option<String>,
        /// How long to wait for the node's answer.
        #[arg(long, default_value = "30s", value_parser = duration_arg)]
        timeout: Duration,
    },
}

/// `ls` output.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum ListFormat {
    /// Columns.
    Table,
    /// One JSON document.
    Json,
}

impl ArtifactCommand {
    fn timeout(&self) -> Duration {
        match self {
            Self::Get { timeout, .. }
            | Self::Ls { timeout, .. }
            | Self::Stats { timeout }
            | Self::Evict { timeout, .. } => *timeout,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Get { .. } => "artifact get",
            Self::Ls { .. } => "artifact ls",
            Self::Stats { .. } => "artifact stats",
            Self::Evict { .. } => "artifact evict",
        }
    }
}

fn decode(v: &Value, field: &str) -> anyhow::Result<Vec<u8>> {
    let text = v[field]
        .as_str()
        .with_context(|| format!("the node's reply has no {field}"))?;
    Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
}

pub(super) fn run(
    global: &Global,
    command: ArtifactCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let c = client::Client::connect(&global.target(), command.timeout(), command.name())?;
    match command {
        ArtifactCommand::Get {
            url,
            output,
            no_cache,
            ..
        } => {
            let reply = c.call("artifact.get", &json!({"url": url, "no_cache": no_cache}))?;
            let meta = &reply["meta"];
            let size = meta["size"].as_u64().unwrap_or(0);
            let digest = meta["digest"].as_str().unwrap_or_default().to_owned();
            if meta["status"] == "local" {
                writeln!(out, "{}", serde_json::to_string_pretty(meta)?)?;
                return Ok(());
            }
            let mut sink: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("-o {}", path.display()))?,
                )),
                None => Box::new(&mut *out),
            };
            let mut hash = Sha256::new();
            if reply["body_inline"] == true {
                let body = decode(&reply, "body_base64")?;
                hash.update(&body);
                sink.write_all(&body)?;
            } else {
                let bar = indicatif::ProgressBar::new(size);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
                    )
                    .expect("a valid template"),
                );
                let mut offset = 0u64;
                let mut pieces = 0u64;
                while offset < size {
                    pieces += 1;
                    if pieces > READ_PIECES_MAX {
                        bail!("{url}: more than {READ_PIECES_MAX} pieces");
                    }
                    let piece = c.call(
                        "artifact.read",
                        &json!({"digest": digest, "offset": offset}),
                    )?;
                    let data = decode(&piece, "data_base64")?;
                    if data.is_empty() {
                        bail!("{url}: the node sent no bytes at offset {offset} of {size}");
                    }
                    hash.update(&data);
                    sink.write_all(&data)?;
                    offset += data.len() as u64;
                    bar.set_position(offset);
                }
                bar.finish_and_clear();
            }
            sink.flush()?;
            drop(sink);
            let got = format!("sha256:{}", hex_of(&hash.finalize()));
            if got != digest {
                bail!("{url}: the body read has digest {got}, the node said {digest}");
            }
            if let Some(path) = output {
                eprintln!(
                    "{url}: {} ({size} bytes, {digest}) -> {}",
                    meta["status"].as_str().unwrap_or_default(),
                    path.display()
                );
            }
            Ok(())
        }
        ArtifactCommand::Ls {
            prefix,
            limit,
            output,
            ..
        } => {
            let mut items = Vec::new();
            let mut cont = String::new();
            for _ in 0..LIST_PAGES_MAX {
                let page_limit = (limit - items.len()).clamp(1, 1000);
                let page = c.call(
                    "artifact.list",
                    &json!({"prefix": prefix, "limit": page_limit, "continue": cont}),
                )?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                cont = page["continue"].as_str().unwrap_or_default().to_owned();
                if cont.is_empty() || items.len() >= limit {
                    break;
                }
            }
            match output {
                ListFormat::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&json!({"items": items}))?
                )?,
                ListFormat::Table => {
                    writeln!(out, "{:<72} {:>12} {:<20} STORED", "URL", "SIZE", "DIGEST")?;
                    for i in &items {
                        let digest = i["digest"].as_str().unwrap_or_default();
                        writeln!(
                            out,
                            "{:<72} {:>12} {:<20} {}",
                            i["url"].as_str().unwrap_or_default(),
                            i["size"],
                            digest.get(..19).unwrap_or(digest),
                            i["stored_at"].as_str().unwrap_or_default()
                        )?;
                    }
                }
            }
            Ok(())
        }
        ArtifactCommand::Stats { .. } => {
            let stats = c.call("artifact.stats", &json!({}))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&stats)?)?;
            Ok(())
        }
        ArtifactCommand::Evict { url, digest, .. } => {
            let body = match (url, digest) {
                (Some(url), None) => json!({"url": url}),
                (None, Some(digest)) => json!({"digest": digest}),
                _ => bail!("give one of --url and --digest"),
            };
            let reply = c.call("artifact.evict", &body)?;
            writeln!(out, "evicted {}", reply["evicted"])?;
            Ok(())
        }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
