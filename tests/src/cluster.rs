//! [`CairnCluster`]: three (or more) `cairn node` child processes joined to
//! one three-server NATS cluster (routes, JetStream R3), each node on its
//! own data directory and server, with the helpers the cluster suites
//! share: lease owners, restarts, `Cairn-Min-Seq` / `Cairn-Seq` headers and
//! a node's whole log. [`CairnCluster::start_with_http`] gives each node an
//! HTTP listener on a port of its own (the artifact cache's faces).

use std::{collections::BTreeMap, net::SocketAddr};

use async_nats::{jetstream, HeaderMap};
use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::{wait::WAIT, ChildNode, Cli, Client, NatsCluster, TestDir};

/// The nodes' log filter (the cluster's ownership at info).
const NODE_LOG: (&str, &str) = ("RUST_LOG", "warn,cairn_actors::cluster=info");

/// A cairn cluster under test (see the module docs).
#[derive(Debug)]
pub struct CairnCluster {
    /// The NATS servers.
    pub nats: NatsCluster,
    /// Node `i` (`n<i>`, on server `i % 3`); `None` once a test took it.
    pub nodes: Vec<Option<ChildNode>>,
    /// Client `i` talks to server `i % 3`.
    pub clients: Vec<Client>,
    /// Node `i`'s data directory.
    pub dirs: Vec<TestDir>,
    /// Node `i`'s HTTP listener, when the cluster was started with them
    /// ([`CairnCluster::start_with_http`]).
    pub http: Vec<SocketAddr>,
    cli: Cli,
    env: Vec<(String, String)>,
}

impl CairnCluster {
    /// Waits (at most [`WAIT`]) until node `old` holds no lease of
    /// `stream`, as its own `cluster.status` says: it stepped down.
    pub async fn wait_released(&self, old: &str, stream: &str) {
        crate::wait_until(
            &format!("{old} to hold nothing of {stream}"),
            WAIT,
            || async {
                let (status, _) = self.clients[0]
                    .call_node(old, "cluster.status", json!({}), HeaderMap::new())
                    .await;
                let status = status.map_err(|e| e.to_string())?;
                released(&status, stream, old)
            },
        )
        .await;
    }

    /// `nodes` nodes of `cli` (`cairn_cli!()`), each with `env` besides.
    pub async fn start(cli: Cli, nodes: usize, env: &[(&str, &str)]) -> Self {
        Self::start_inner(cli, nodes, env, false).await
    }

    /// [`Self::start`], each node with an HTTP listener on a loopback port
    /// of its own ([`CairnCluster::http`]; a restart keeps it).
    pub async fn start_with_http(cli: Cli, nodes: usize, env: &[(&str, &str)]) -> Self {
        Self::start_inner(cli, nodes, env, true).await
    }

    async fn start_inner(cli: Cli, nodes: usize, env: &[(&str, &str)], http: bool) -> Self {
        let nats = tokio::task::spawn_blocking(|| {
            let cluster = NatsCluster::start();
            cluster.wait_ready(WAIT).unwrap();
            cluster
        })
        .await
        .unwrap();
        let mut cluster = Self {
            nats,
            nodes: Vec::new(),
            clients: Vec::new(),
            dirs: Vec::new(),
            http: Vec::new(),
            cli,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        for i in 0..nodes {
            cluster.dirs.push(TestDir::new());
            if http {
                // A port the system picked, free once the probe closes.
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                cluster.http.push(probe.local_addr().unwrap());
            }
            let node = cluster.spawn(i).await;
            cluster.nodes.push(Some(node));
            // A request to the queue group may be answered by any node;
            // `call_node` asks one.
            cluster
                .clients
                .push(Client::connect(&cluster.nats.url(i % 3)).await);
        }
        cluster
    }

    /// Starts node `i` on its data directory (bounded by its ready line).
    async fn spawn(&self, i: usize) -> ChildNode {
        let (cli, data, url) = (
            self.cli.clone(),
            self.dirs[i].path().to_path_buf(),
            self.nats.url(i % 3),
        );
        let mut env = self.env.clone();
        if let Some(addr) = self.http.get(i) {
            env.push(("CAIRN_HTTP__LISTEN".to_owned(), addr.to_string()));
        }
        if !env.iter().any(|(k, _)| k == NODE_LOG.0) {
            env.push((NODE_LOG.0.to_owned(), NODE_LOG.1.to_owned()));
        }
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            ChildNode::start_in_cluster(&cli, &data, &url, &format!("n{i}"), &env)
        })
        .await
        .unwrap()
    }

    /// Stops node `i` with SIGTERM (bounded) and starts it again on its
    /// data directory; answers the exit status of the stop.
    pub async fn restart(&mut self, i: usize) -> std::process::ExitStatus {
        let mut node = self.nodes[i].take().expect("node running");
        let status = tokio::task::spawn_blocking(move || node.terminate(WAIT))
            .await
            .unwrap();
        self.nodes[i] = Some(self.spawn(i).await);
        status
    }

    /// Starts node `i` again on its data directory, after a test stopped
    /// it (bounded by its ready line).
    pub async fn start_again(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node n{i} is running");
        self.nodes[i] = Some(self.spawn(i).await);
    }

    /// Adds node `n<len>` on an empty data directory (and server `len % 3`)
    /// and starts it (bounded by its ready line); answers its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        self.dirs.push(TestDir::new());
        if !self.http.is_empty() {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            self.http.push(probe.local_addr().unwrap());
        }
        let node = self.spawn(i).await;
        self.nodes.push(Some(node));
        self.clients
            .push(Client::connect(&self.nats.url(i % 3)).await);
        i
    }

    /// SIGKILL of node `i`, as a crash would (reaped).
    pub async fn kill(&mut self, i: usize) {
        let mut killed = self.nodes[i].take().expect("node running");
        tokio::task::spawn_blocking(move || killed.kill())
            .await
            .unwrap();
    }

    /// The base URL of node `i`'s HTTP listener (`http://127.0.0.1:<port>`).
    pub fn http_base(&self, i: usize) -> String {
        format!("http://{}", self.http[i])
    }

    /// Lease owners by stream id.
    pub async fn owners(&self) -> BTreeMap<String, String> {
        let client = async_nats::connect(self.nats.url(0)).await.unwrap();
        let js = jetstream::new(client);
        let kv = match js.get_key_value("cairn_owners").await {
            Ok(kv) => kv,
            Err(e) => {
                let names: Vec<String> = js
                    .stream_names()
                    .filter_map(|n| async { n.ok() })
                    .collect()
                    .await;
                panic!("bucket cairn_owners: {e}; streams: {names:?}");
            }
        };
        let mut owners = BTreeMap::new();
        let keys: Vec<String> = kv
            .keys()
            .await
            .unwrap()
            .filter_map(|k| async { k.ok() })
            .collect()
            .await;
        for key in keys {
            if let Ok(Some(value)) = kv.get(&key).await {
                let stream = base64_decode(&key);
                owners.insert(stream, String::from_utf8_lossy(&value).into_owned());
            }
        }
        owners
    }
}

fn base64_decode(key: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key)
            .unwrap(),
    )
    .unwrap()
}

/// Headers asking for `Cairn-Min-Seq: seq`.
pub fn min_seq(seq: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Cairn-Min-Seq", seq);
    headers
}

/// The `Cairn-Seq` of a reply.
pub fn seq_of(headers: &HeaderMap) -> u64 {
    headers
        .get("Cairn-Seq")
        .expect("every reply carries Cairn-Seq")
        .as_str()
        .parse()
        .unwrap()
}

/// Every event of `node`'s log, first to last, once it applied `seq`.
pub async fn log_of(client: &Client, node: &str, seq: u64) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let (page, _) = client
            .call_node(
                node,
                "log.read",
                json!({"from_seq": from, "limit": 1000}),
                min_seq(&seq.to_string()),
            )
            .await;
        let page = page.unwrap();
        let batch = page["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            return events;
        }
        from = page["next_seq"].as_u64().unwrap();
        events.extend(batch);
    }
}

/// What a write sent to an owner that was paused past its lease answered
/// once it woke: 1 when it was acknowledged, 0 when it was refused with
/// the 503 naming the fencing (asserted: nothing else).
pub fn acknowledged_or_fenced(answer: &Result<Value, crate::ServiceError>) -> usize {
    if let Err(e) = answer {
        assert_eq!(e.code, 503, "{e}");
        assert!(
            e.message.contains(
                "was taken over by another node: this node's write was refused by the log (fenced)"
            ),
            "{e}"
        );
    }
    usize::from(answer.is_ok())
}

/// `Ok` when `status` (a `cluster.status` reply) shows no lease of
/// `stream` held by `owner`; else the status, saying why (for
/// [`crate::wait_until`]).
pub fn released(status: &Value, stream: &str, owner: &str) -> Result<(), String> {
    let holds = status["leases"]
        .as_array()
        .expect("cluster.status lists its leases")
        .iter()
        .any(|l| l["stream"] == stream && l["owner"] == owner);
    if holds {
        Err(format!("{status}"))
    } else {
        Ok(())
    }
}
