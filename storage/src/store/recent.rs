//! [`RecentRows`]: the log rows the writer just committed, kept in memory
//! (bounded) so that a reader tailing the log — the Publisher — takes them
//! from there instead of reading back from RocksDB what was just written.
//! A leaf module.
//!
//! Decision: the rows are the very bytes the writer put in its
//! `WriteBatch` (the envelope's encoding, the `log` row), kept instead of
//! freed: the writer copies nothing and decodes nothing for it, and a
//! reader gets exactly what a RocksDB read would return. Commit observers
//! ([`crate::observe`]) get the envelopes, not the row bytes, which is why
//! this is not one of them.
//!
//! The buffer is off until [`super::Store::retain_recent_log_rows`] turns
//! it on (a node runs its Publisher only when it holds the role), and
//! holds at most [`RECENT_LOG_MAX_EVENTS`] rows and
//! [`RECENT_LOG_MAX_BYTES`] bytes, the oldest pushed out first. It always
//! holds consecutive seqs: a row that does not continue the last one (not
//! expected: commits are numbered in order) empties it first. Compaction
//! empties it too (it may delete rows the buffer holds), and a reopened
//! store starts empty. A read it cannot answer whole from its first seq —
//! after a restart, when the reader lags, when the buffer overflowed —
//! gets `None`, and the reader reads RocksDB
//! ([`super::Store::read_log_events`]).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::log::LogRow;

/// Most rows the buffer holds: a reader lagging further behind the writer
/// reads RocksDB until it catches up. Above a Publisher's read batch and
/// in-flight window (512 each by default).
pub const RECENT_LOG_MAX_EVENTS: usize = 4096;

/// Most bytes of rows the buffer holds (events of up to
/// `store.event-max-bytes` each).
pub const RECENT_LOG_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Counters of the recent-rows buffer (see
/// [`super::Store::recent_log_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecentLogStats {
    /// Rows answered from memory.
    pub served_events: u64,
    /// Reads the buffer could not answer (the reader read RocksDB).
    pub missed_reads: u64,
    /// Rows held now.
    pub events: u64,
    /// Bytes of rows held now.
    pub bytes: u64,
}

/// The last committed log rows, in seq order, consecutive.
#[derive(Debug, Default)]
pub(super) struct RecentRows {
    rows: VecDeque<LogRow>,
    bytes: usize,
    served_events: u64,
    missed_reads: u64,
}

impl RecentRows {
    /// Keeps the rows of a commit (`(seq, encoded envelope)`, in seq
    /// order), pushing out the oldest beyond the bounds.
    pub(super) fn push(&mut self, rows: Vec<(u64, Vec<u8>)>) {
        for (seq, bytes) in rows {
            let follows = self
                .rows
                .back()
                .is_none_or(|last| last.seq.checked_add(1) == Some(seq));
            if !follows {
                self.clear();
            }
            self.bytes += bytes.len();
            self.rows.push_back(LogRow {
                seq,
                bytes: Bytes::from(bytes),
            });
        }
        while self.rows.len() > RECENT_LOG_MAX_EVENTS || self.bytes > RECENT_LOG_MAX_BYTES {
            let Some(old) = self.rows.pop_front() else {
                break;
            };
            self.bytes -= old.bytes.len();
        }
    }

    /// Forgets every row.
    pub(super) fn clear(&mut self) {
        self.rows.clear();
        self.bytes = 0;
    }

    /// Up to `limit` rows from seq `from` on, when the buffer holds `from`
    /// (`None` otherwise: the caller reads RocksDB). The rows share the
    /// buffer's bytes (no copy).
    pub(super) fn read(&mut self, from: u64, limit: usize) -> Option<Vec<LogRow>> {
        let from = from.max(1);
        let first = self.rows.front().map(|r| r.seq);
        let Some(skip) = first
            .filter(|first| *first <= from)
            .map(|first| (from - first) as usize)
            .filter(|skip| *skip < self.rows.len())
        else {
            self.missed_reads += 1;
            return None;
        };
        let rows: Vec<LogRow> = self.rows.iter().skip(skip).take(limit).cloned().collect();
        self.served_events += rows.len() as u64;
        Some(rows)
    }

    pub(super) fn stats(&self) -> RecentLogStats {
        RecentLogStats {
            served_events: self.served_events,
            missed_reads: self.missed_reads,
            events: self.rows.len() as u64,
            bytes: self.bytes as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(seqs: std::ops::RangeInclusive<u64>, size: usize) -> Vec<(u64, Vec<u8>)> {
        seqs.map(|s| (s, vec![s as u8; size])).collect()
    }

    fn seqs(rows: &[LogRow]) -> Vec<u64> {
        rows.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn answers_only_reads_it_holds_from_their_first_seq() {
        let mut recent = RecentRows::default();
        assert!(recent.read(1, 10).is_none(), "empty");
        recent.push(rows(5..=9, 3));
        assert!(recent.read(4, 10).is_none(), "before the first row held");
        assert!(recent.read(10, 10).is_none(), "past the last row held");
        assert_eq!(seqs(&recent.read(5, 10).unwrap()), vec![5, 6, 7, 8, 9]);
        assert_eq!(seqs(&recent.read(7, 2).unwrap()), vec![7, 8]);
        let row = &recent.read(9, 1).unwrap()[0];
        assert_eq!(&row.bytes[..], &[9, 9, 9]);
        let stats = recent.stats();
        assert_eq!(
            (
                stats.served_events,
                stats.missed_reads,
                stats.events,
                stats.bytes
            ),
            (8, 3, 5, 15)
        );
    }

    #[test]
    fn overflow_pushes_out_the_oldest_rows_by_count_and_by_bytes() {
        let mut recent = RecentRows::default();
        let n = RECENT_LOG_MAX_EVENTS as u64;
        recent.push(rows(1..=n + 10, 1));
        assert!(recent.read(10, 1).is_none(), "pushed out");
        assert_eq!(seqs(&recent.read(11, 1).unwrap()), vec![11]);
        assert_eq!(recent.stats().events, n);

        let mut recent = RecentRows::default();
        let size = RECENT_LOG_MAX_BYTES / 4;
        recent.push(rows(1..=5, size));
        assert!(recent.read(1, 1).is_none(), "pushed out by bytes");
        assert_eq!(seqs(&recent.read(2, 10).unwrap()), vec![2, 3, 4, 5]);
        assert_eq!(recent.stats().bytes, (4 * size) as u64);
    }

    #[test]
    fn a_row_that_does_not_continue_the_last_empties_it_first() {
        let mut recent = RecentRows::default();
        recent.push(rows(1..=3, 1));
        recent.push(rows(5..=6, 1));
        assert!(recent.read(3, 10).is_none());
        assert_eq!(seqs(&recent.read(5, 10).unwrap()), vec![5, 6]);
        assert_eq!(recent.stats().events, 2);
    }
}
