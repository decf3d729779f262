//! Key encodings. Integers are big-endian so RocksDB's byte order is
//! numeric order, and a stream's index rows sort by version.

use cairn_events::StreamId;

/// Key of log row `seq`.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Decodes a big-endian u64 key or value; `None` when it is not 8 bytes.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Prefix of every index row of `stream`: `stream ‖ 0x00`.
pub fn stream_prefix(stream: &StreamId) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.as_str().len() + 9);
    key.extend_from_slice(stream.as_str().as_bytes());
    key.push(0);
    key
}

/// Key of index row `stream ‖ 0x00 ‖ version`.
pub fn stream_key(stream: &StreamId, version: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Key of a blob reference row: `view ‖ 0x00 ‖ digest`.
pub fn blob_ref_key(view: &str, digest: &[u8; 32]) -> Vec<u8> {
    let mut key = blob_ref_prefix(view);
    key.extend_from_slice(digest);
    key
}

/// A blob reference row key's parts: its view prefix (`view ‖ 0x00`) and
/// the blob's sha256; a key too short to hold one is corruption.
pub fn blob_ref_parts(key: &[u8]) -> Result<(&[u8], [u8; 32]), crate::StorageError> {
    let corrupt = || crate::StorageError::Corrupt("blob ref key without a sha256".into());
    let at = key.len().checked_sub(32).ok_or_else(corrupt)?;
    let digest = <[u8; 32]>::try_from(&key[at..]).map_err(|_| corrupt())?;
    Ok((&key[..at], digest))
}

/// Prefix of every blob reference row of `view`.
pub fn blob_ref_prefix(view: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(view.len() + 33);
    key.extend_from_slice(view.as_bytes());
    key.push(0);
    key
}

/// Keys of the `meta` column family.
pub mod meta {
    /// Highest committed global sequence number (u64 BE); absent when empty.
    pub const LAST_SEQ: &[u8] = b"last_seq";
    /// Schema version of the on-disk layout (u32 BE), written at creation.
    pub const LAYOUT_VERSION: &[u8] = b"layout_version";
    /// Sequence up to which the publisher has had JetStream acks (u64 BE).
    pub const PUBLISH_CURSOR: &[u8] = b"publish_cursor";

    /// Position (JetStream stream sequence) of the last replicated message
    /// applied (u64 BE), written with the events it brought; absent on a
    /// log that was never fed from a replicated order.
    pub const REPLICATION_POSITION: &[u8] = b"replication_position";

    /// Highest sequence number any compaction saw (u64 BE); absent when the
    /// log was never compacted. Below it, missing log rows are compaction's.
    pub const COMPACTED_THROUGH: &[u8] = b"compacted_through";

    /// Prefix of the keys [`compacted`].
    pub const COMPACTED_PREFIX: &[u8] = b"compacted/";

    /// Key recording that stream class `prefix` was compacted, up to the
    /// sequence number it holds (u64 BE): its streams may have version gaps.
    pub fn compacted(prefix: &str) -> Vec<u8> {
        let mut key = COMPACTED_PREFIX.to_vec();
        key.extend_from_slice(prefix.as_bytes());
        key
    }

    /// Key of view `view`'s checkpoint: the last sequence folded into it (u64 BE).
    pub fn checkpoint(view: &str) -> Vec<u8> {
        format!("checkpoint/{view}").into_bytes()
    }

    /// Present while view `view` is being rebuilt; a rebuild interrupted by a
    /// crash is started again at the next open.
    pub fn rebuilding(view: &str) -> Vec<u8> {
        format!("rebuilding/{view}").into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_keys_sort_numerically() {
        let mut keys: Vec<_> = [256u64, 1, 255, 65_536, 2]
            .iter()
            .map(|s| seq_key(*s))
            .collect();
        keys.sort();
        let seqs: Vec<u64> = keys.iter().map(|k| decode_u64(k).unwrap()).collect();
        assert_eq!(seqs, vec![1, 2, 255, 256, 65_536]);
    }

    #[test]
    fn stream_prefixes_do_not_overlap() {
        let a = StreamId::new("repo/a/b").unwrap();
        let ab = StreamId::new("repo/a/bc").unwrap();
        assert!(!stream_key(&ab, 1).starts_with(&stream_prefix(&a)));
        assert!(stream_key(&a, 1).starts_with(&stream_prefix(&a)));
    }
}
