//! `cairn top`: a live view of one node or a whole cluster, from each
//! node's `/metrics` (the HTTP listener, `http.listen`): requests and
//! errors per second by endpoint, cache hit ratios per domain, the sync
//! queue, publish lag, watchers, the log's position. It refreshes in place
//! every `--interval` until interrupted; `--once` prints one view (rates
//! over one interval) and exits, `-o json` for scripts.
//!
//! Decision: it reads the Prometheus text every node already serves (parsed
//! with `prometheus-parse`), so it needs no endpoint of its own and sees
//! exactly what a Prometheus server scrapes.

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use prometheus_parse::{Scrape, Value};
use serde::Serialize;

/// How `cairn top` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopOutput {
    /// A table, redrawn in place.
    Table,
    /// One JSON object per view.
    Json,
}

/// What `cairn top` was asked.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Base URLs of the nodes' HTTP listeners.
    pub urls: Vec<String>,
    /// Time between two views (and the window of the rates).
    pub interval: Duration,
    /// One view, then exit.
    pub once: bool,
    /// How to print.
    pub output: TopOutput,
}

/// Longest wait for one node's `/metrics`.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One node's samples: (name, labels) → value.
#[derive(Debug, Default, Clone)]
struct Samples(BTreeMap<(String, Vec<(String, String)>), f64>);

impl Samples {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
        let mut out = BTreeMap::new();
        for s in scrape.samples {
            let v = match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => continue,
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            out.insert((s.metric, labels), v);
        }
        Ok(Self(out))
    }

    /// Sum of `name` over samples whose label `by` has each value.
    fn by(&self, name: &str, by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for ((n, labels), v) in &self.0 {
            if n == name {
                if let Some((_, value)) = labels.iter().find(|(k, _)| k == by) {
                    *out.entry(value.clone()).or_insert(0.0) += v;
                }
            }
        }
        out
    }

    fn one(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| *v)
            .sum()
    }

    fn labelled(&self, name: &str, key: &str, value: &str) -> f64 {
        self.0
            .iter()
            .filter(|((n, labels), _)| {
                n == name && labels.iter().any(|(k, v)| k == key && v == value)
            })
            .map(|(_, v)| *v)
            .sum()
    }
}

/// A cache domain as `cairn top` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CacheView {
    /// hits / (hits + misses) since the node started.
    pub hit_ratio: f64,
    /// Hits since the node started.
    pub hits: u64,
    /// Misses since the node started.
    pub misses: u64,
    /// Entries held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// An endpoint as `cairn top` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointView {
    /// Requests per second over the last interval.
    pub requests_per_s: f64,
    /// Errors per second over the last interval.
    pub errors_per_s: f64,
    /// Requests since the node started.
    pub requests_total: u64,
    /// Errors since the node started.
    pub errors_total: u64,
}

/// One node as `cairn top` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeView {
    /// Its HTTP base URL.
    pub url: String,
    /// Why it could not be read (the rest is then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// By endpoint (without `cairn.v1.`).
    pub endpoints: BTreeMap<String, EndpointView>,
    /// By domain.
    pub caches: BTreeMap<String, CacheView>,
    /// Syncs holding a slot.
    pub syncs_running: u64,
    /// Syncs waiting for one.
    pub syncs_waiting: u64,
    /// Events committed, not yet acknowledged by JetStream.
    pub publish_lag: u64,
    /// Live watches.
    pub watchers: u64,
    /// The log's last sequence number.
    pub log_seq: u64,
    /// Streams owned (cluster nodes).
    pub owned_streams: u64,
}

/// One view of every node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopView {
    /// The window of the rates, in seconds.
    pub interval_s: f64,
    /// The nodes, in the order asked.
    pub nodes: Vec<NodeView>,
}

fn view(
    url: &str,
    before: Option<&Samples>,
    now: Result<&Samples, String>,
    seconds: f64,
) -> NodeView {
    let mut node = NodeView {
        url: url.to_owned(),
        error: None,
        endpoints: BTreeMap::new(),
        caches: BTreeMap::new(),
        syncs_running: 0,
        syncs_waiting: 0,
        publish_lag: 0,
        watchers: 0,
        log_seq: 0,
        owned_streams: 0,
    };
    let now = match now {
        Ok(now) => now,
        Err(e) => {
            node.error = Some(e);
            return node;
        }
    };
    let requests = now.by("cairn_service_requests_total", "endpoint");
    let errors = now.by("cairn_service_errors_total", "endpoint");
    let (requests_before, errors_before) = before
        .map(|b| {
            (
                b.by("cairn_service_requests_total", "endpoint"),
                b.by("cairn_service_errors_total", "endpoint"),
            )
        })
        .unwrap_or_default();
    let rate = |now: f64, was: Option<&f64>| match was {
        Some(was) if seconds > 0.0 => ((now - was).max(0.0)) / seconds,
        _ => 0.0,
    };
    for (endpoint, total) in &requests {
        let errs = errors.get(endpoint).copied().unwrap_or(0.0);
        node.endpoints.insert(
            endpoint.clone(),
            EndpointView {
                requests_per_s: rate(
                    *total,
                    requests_before
                        .get(endpoint)
                        .or(Some(&0.0))
                        .filter(|_| before.is_some()),
                ),
                errors_per_s: rate(
                    errs,
                    errors_before
                        .get(endpoint)
                        .or(Some(&0.0))
                        .filter(|_| before.is_some()),
                ),
                requests_total: *total as u64,
                errors_total: errs as u64,
            },
        );
    }
    let hits = now.by("cairn_cache_hits_total", "domain");
    for (domain, h) in hits {
        let get = |name: &str| now.labelled(name, "domain", &domain);
        let misses = get("cairn_cache_misses_total");
        let reads = h + misses;
        node.caches.insert(
            domain.clone(),
            CacheView {
                hit_ratio: if reads > 0.0 { h / reads } else { 0.0 },
                hits: h as u64,
                misses: misses as u64,
                entries: get("cairn_cache_entries") as u64,
                bytes: get("cairn_cache_bytes") as u64,
            },
        );
    }
    node.syncs_running = now.labelled("cairn_sync_slots", "state", "running") as u64;
    node.syncs_waiting = now.labelled("cairn_sync_slots", "state", "waiting") as u64;
    node.publish_lag = now.one("cairn_publisher_lag_events") as u64;
    node.watchers = now.one("cairn_watchers") as u64;
    node.log_seq = now.one("cairn_store_log_seq") as u64;
    node.owned_streams = now.one("cairn_cluster_owned_streams") as u64;
    node
}

async fn scrape(client: &reqwest::Client, url: &str) -> Result<Samples, String> {
    let get = async {
        let response = client
            .get(format!("{}/metrics", url.trim_end_matches('/')))
            .send()
            .await
            .map_err(|e| format!("GET {url}/metrics: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}/metrics: {}", response.status()));
        }
        let text = response.text().await.map_err(|e| e.to_string())?;
        Samples::parse(&text).map_err(|e| format!("{url}/metrics: {e}"))
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, get)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "GET {url}/metrics: no answer in {SCRAPE_TIMEOUT:?}"
            ))
        })
}

async fn scrape_all(client: &reqwest::Client, urls: &[String]) -> Vec<Result<Samples, String>> {
    futures::future::join_all(urls.iter().map(|u| scrape(client, u))).await
}

fn print(out: &mut dyn Write, view: &TopView, options: &TopOptions) -> anyhow::Result<()> {
    if options.output == TopOutput::Json {
        writeln!(out, "{}", serde_json::to_string(view)?)?;
        return Ok(out.flush()?);
    }
    if !options.once {
        // Home and clear: the view is redrawn in place.
        write!(out, "\x1b[H\x1b[2J")?;
    }
    writeln!(
        out,
        "cairn top — {} node(s), rates over {:.1}s{}",
        view.nodes.len(),
        view.interval_s,
        if options.once {
            ""
        } else {
            " (Ctrl-C to stop)"
        }
    )?;
    for node in &view.nodes {
        writeln!(out)?;
        if let Some(e) = &node.error {
            writeln!(out, "{}  unreachable: {e}", node.url)?;
            continue;
        }
        writeln!(
            out,
            "{}  log seq {}  publish lag {}  watchers {}  syncs {} running / {} waiting  streams owned {}",
            node.url, node.log_seq, node.publish_lag, node.watchers, node.syncs_running, node.syncs_waiting, node.owned_streams
        )?;
        writeln!(
            out,
            "  {:<24} {:>10} {:>10} {:>12} {:>10}",
            "ENDPOINT", "REQ/S", "ERR/S", "REQUESTS", "ERRORS"
        )?;
        for (name, e) in &node.endpoints {
            writeln!(
                out,
                "  {:<24} {:>10.1} {:>10.1} {:>12} {:>10}",
                name, e.requests_per_s, e.errors_per_s, e.requests_total, e.errors_total
            )?;
        }
        writeln!(
            out,
            "  {:<24} {:>10} {:>10} {:>12} {:>10} {:>12}",
            "CACHE", "HIT RATIO", "HITS", "MISSES", "ENTRIES", "BYTES"
        )?;
        for (domain, c) in &node.caches {
            writeln!(
                out,
                "  {:<24} {:>10.3} {:>10} {:>12} {:>10} {:>12}",
                domain, c.hit_ratio, c.hits, c.misses, c.entries, c.bytes
            )?;
        }
    }
    Ok(out.flush()?)
}

/// Runs `cairn top` (see the module docs).
pub fn run(options: TopOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    if options.urls.is_empty() {
        anyhow::bail!("--url: at least one node's HTTP address is needed");
    }
    if options.interval < Duration::from_millis(100) || options.interval > Duration::from_secs(3600)
    {
        anyhow::bail!(
            "--interval: must be between 100ms and 1h, got {:?}",
            options.interval
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let mut before = scrape_all(&client, &options.urls).await;
        let mut at = Instant::now();
        if options.once && options.output == TopOutput::Json && before.iter().all(Result::is_err) {
            let first = before
                .iter()
                .find_map(|r| r.as_ref().err())
                .cloned()
                .unwrap_or_default();
            anyhow::bail!("no node answered: {first}");
        }
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                () = tokio::time::sleep(options.interval) => {}
                _ = &mut ctrl_c => return Ok(()),
            }
            let now = scrape_all(&client, &options.urls).await;
            let seconds = at.elapsed().as_secs_f64();
            at = Instant::now();
            let nodes = options
                .urls
                .iter()
                .zip(before.iter().zip(now.iter()))
                .map(|(url, (b, n))| {
                    view(
                        url,
                        b.as_ref().ok(),
                        n.as_ref().map_err(Clone::clone),
                        seconds,
                    )
                })
                .collect();
            print(
                out,
                &TopView {
                    interval_s: seconds,
                    nodes,
                },
                &options,
            )?;
            if options.once {
                return Ok(());
            }
            before = now;
        }
    })
}
