//! The `requests` view: which command carried each idempotency key.
//!
//! A command may carry an idempotency key (the `Cairn-Request-Id` header,
//! recorded as `Envelope.request_id` on each event it appends, with the
//! digest of its endpoint and body). This view folds those envelopes into
//! one [`RequestRow`] per key — the stream, the first and last sequence
//! numbers, when it was first recorded and the digest — so that a retry of
//! the command, on this node or any replica, after a restart or a
//! failover, finds that the command was applied and appends nothing.
//!
//! Keys are kept for [`REQUEST_ID_WINDOW_SECS`] after their first event.
//! Older rows are pruned by the fold itself, deterministically: when an
//! event brings a key the view has not seen (in the window), the fold
//! deletes up to [`PRUNE_MAX_ROWS`] rows recorded more than a window
//! before that event. Pruning follows the events' recorded times, never
//! the clock, so a rebuilt view equals the live one; a row past its window
//! but not yet pruned is ignored by [`RequestsView::get_live`].
//!
//! Keys of the key-value class (streams compaction may shorten) live
//! otherwise, so that a rebuild from a compacted log still equals the live
//! view: compaction keeps an event that carries a key within its window,
//! and when it removes one after, it deletes the key's row with it; such a
//! row is never pruned by the fold (and its events never prune), because
//! the events that would prune it in the live view may be gone from the
//! log a rebuild reads. A key-value key's row therefore lasts as long as
//! its event: rows of entries' last sets stay (at most one per entry).
//!
//! | key | row |
//! |---|---|
//! | `k<request id>` | [`RequestRow`] |
//! | `t<recorded_at µs, big-endian u64><request id>` | empty (expiry index) |

use cairn_events::v1::{Envelope, RequestRow};

use crate::{
    read::{ViewRead, ViewReadExt},
    StorageError, View, ViewTx,
};

/// How long an idempotency key stays known after its command's first
/// event: 24 hours.
pub const REQUEST_ID_WINDOW_SECS: u64 = 24 * 60 * 60;

/// The most expired rows one fold step deletes (a bound on the work a
/// single event causes; each new key prunes up to this many old ones, so
/// pruning keeps pace with new keys).
pub const PRUNE_MAX_ROWS: usize = 64;

/// Idempotency keys of the commands in the log (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestsView;

fn micros(ts: Option<&pbjson_types::Timestamp>) -> u64 {
    // Saturating: a timestamp far out (a corrupt or foreign envelope)
    // must not overflow the writer thread's arithmetic.
    ts.map_or(0, |t| {
        u64::try_from(t.seconds)
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(t.nanos).unwrap_or(0) / 1_000)
    })
}

const WINDOW_MICROS: u64 = REQUEST_ID_WINDOW_SECS * 1_000_000;

impl RequestsView {
    /// The view's name.
    pub const NAME: &'static str = "requests";

    /// The key of `request_id`'s row.
    pub(crate) fn row_key(request_id: &str) -> Vec<u8> {
        Self::key(request_id)
    }

    /// Whether the events of `stream` may be removed by compaction (the
    /// key-value class): their keys' rows live and go with them (see the
    /// module docs).
    fn compactable(stream: &str) -> bool {
        stream.starts_with(super::kv::KV_STREAM_PREFIX)
    }

    fn key(request_id: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(1 + request_id.len());
        key.push(b'k');
        key.extend_from_slice(request_id.as_bytes());
        key
    }

    fn time_key(at_micros: u64, request_id: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(9 + request_id.len());
        key.push(b't');
        key.extend_from_slice(&at_micros.to_be_bytes());
        key.extend_from_slice(request_id.as_bytes());
        key
    }

    /// The row of `request_id`, whatever its age.
    pub fn get(
        store: &(impl ViewRead + ?Sized),
        request_id: &str,
    ) -> Result<Option<RequestRow>, StorageError> {
        store.view_get_message(Self::NAME, &Self::key(request_id))
    }

    /// The row of `request_id` when its command was first recorded less
    /// than the window before `now_micros` (µs since the Unix epoch).
    pub fn get_live(
        store: &(impl ViewRead + ?Sized),
        request_id: &str,
        now_micros: u64,
    ) -> Result<Option<RequestRow>, StorageError> {
        Ok(Self::get(store, request_id)?.filter(|row| {
            micros(row.recorded_at.as_ref()).saturating_add(WINDOW_MICROS) > now_micros
        }))
    }
}

impl View for RequestsView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn apply(&self, tx: &mut ViewTx<'_>, envelope: &Envelope) -> Result<(), StorageError> {
        let id = envelope.request_id.as_str();
        if id.is_empty() {
            return Ok(());
        }
        let at = micros(envelope.recorded_at.as_ref());
        let key = Self::key(id);
        if let Some(mut row) = tx.get_message::<RequestRow>(&key)? {
            let first = micros(row.recorded_at.as_ref());
            if first.saturating_add(WINDOW_MICROS) > at {
                // The same command's later events (a sync appends several
                // times), or a retry that ran again: the key stays the
                // first command's.
                row.last_seq = envelope.seq;
                tx.put_message(key, &row);
                return Ok(());
            }
            // Expired, not pruned yet: the key starts over.
            if !Self::compactable(&row.stream) {
                tx.delete(Self::time_key(first, id));
            }
        }
        tx.put_message(
            key,
            &RequestRow {
                stream: envelope.stream.clone(),
                first_seq: envelope.seq,
                last_seq: envelope.seq,
                recorded_at: envelope.recorded_at,
                digest: envelope.request_digest.clone(),
            },
        );
        if Self::compactable(&envelope.stream) {
            // Its row goes when compaction removes the event (after the
            // window): never by pruning, which a rebuild from the
            // compacted log could not repeat.
            return Ok(());
        }
        tx.put(Self::time_key(at, id), Vec::new());
        // Prune keys whose window closed before this event.
        let cutoff = at.saturating_sub(WINDOW_MICROS);
        let expired = tx.keys_in(b"t", &Self::time_key(cutoff, ""), PRUNE_MAX_ROWS)?;
        for time_key in expired {
            let old_id = String::from_utf8_lossy(&time_key[9..]).into_owned();
            tx.delete(time_key);
            tx.delete(Self::key(&old_id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time() {
        assert!(RequestsView::time_key(1, "z") < RequestsView::time_key(2, "a"));
        assert!(RequestsView::time_key(u64::MAX, "") < b"u".to_vec());
        assert_eq!(RequestsView::key("ab"), b"kab".to_vec());
    }
}
