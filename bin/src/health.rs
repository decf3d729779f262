//! The node's readiness checks, answered by `/readyz` (see
//! `cairn_actors::http`): each named, each with what it found.
//!
//! - `store` — the store answers reads (its last sequence number).
//! - `nats` — the NATS connection is up (not reconnecting).
//! - `views` — every view's checkpoint is the log's last sequence number
//!   (views catch up when the store opens; a view behind — being rebuilt,
//!   or fed by a replicated log that is ahead — is not ready).
//! - `cluster` (cluster nodes) — the replicated log is applied up to the
//!   last position the node saw in the cluster's stream.
//!
//! Decision: the checks read state the node keeps (no I/O beyond a
//! RocksDB read), so a probe never waits on NATS or the network.

use std::sync::Arc;

use cairn_actors::http::Check;
use cairn_storage::{EventLog as _, Store};

/// What the `cluster` check compares: the applied position and the last
/// position seen in the cluster's stream.
pub type ClusterPositions = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

/// The readiness checks of a node with `store` and NATS `client` (and its
/// cluster positions, on a cluster node).
pub fn checks(
    store: Store,
    client: async_nats::Client,
    cluster: Option<ClusterPositions>,
) -> impl Fn() -> Vec<Check> + Send + Sync + 'static {
    move || {
        let mut out = Vec::with_capacity(4);
        let last = store.last_seq();
        out.push(match &last {
            Ok(seq) => Check {
                name: "store",
                ok: true,
                detail: format!("open, last seq {seq}"),
            },
            Err(e) => Check {
                name: "store",
                ok: false,
                detail: format!("not readable: {e}"),
            },
        });
        let state = client.connection_state();
        out.push(Check {
            name: "nats",
            ok: state == async_nats::connection::State::Connected,
            detail: format!("{state}"),
        });
        let last = last.unwrap_or(0);
        let behind: Vec<String> = store
            .view_names()
            .into_iter()
            .filter_map(|view| {
                let at = store
                    .meta_u64(&cairn_storage::keys::meta::checkpoint(view))
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                (at < last).then(|| format!("{view} at {at}"))
            })
            .collect();
        out.push(Check {
            name: "views",
            ok: behind.is_empty(),
            detail: if behind.is_empty() {
                format!("caught up at {last}")
            } else {
                format!("behind the log's {last}: {}", behind.join(", "))
            },
        });
        if let Some(cluster) = &cluster {
            let (applied, seen) = cluster();
            out.push(Check {
                name: "cluster",
                ok: applied >= seen,
                detail: format!("applied {applied} of {seen}"),
            });
        }
        out
    }
}
