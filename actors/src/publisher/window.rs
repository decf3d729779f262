//! The publisher's component: which events are in flight, how far the
//! cursor may move, and where in the stream each publish must land.
//!
//! Events are published in log order, with at most `max_in_flight`
//! unacknowledged. Acks may arrive in any order; the cursor moves only over
//! the contiguous prefix of acknowledged sequence numbers, so after a crash
//! or a lost connection publishing resumes right after the last event known
//! to be stored by JetStream, never skipping one.
//!
//! Order in the stream is fenced, not hoped for: a window opens on what the
//! stream holds (its last position), and the event `n` places after the
//! cursor may only be stored right after the stream's position `n - 1`
//! places after that one (`Nats-Expected-Last-Sequence`,
//! [`PublishWindow::expected_last_sequence`]). A publish that arrives late —
//! lost with a connection and retried, or buffered in the client through an
//! outage while later ones were re-published — finds the stream elsewhere
//! and is refused (or dropped as a duplicate), so it can never land after
//! a later event.
use std::collections::BTreeSet;

/// In-flight window, cursor and stream fence.
#[derive(Debug, Clone)]
pub struct PublishWindow {
    cursor: u64,
    next: u64,
    acked_ahead: BTreeSet<u64>,
    max_in_flight: usize,
    /// The first sequence this window publishes.
    first: u64,
    /// The stream's last position when the window opened.
    stream_last: u64,
}

impl PublishWindow {
    /// A window resuming after `cursor` (everything ≤ `cursor` is acked)
    /// on a stream whose last message is at position `stream_last` (0: an
    /// empty stream).
    pub fn new(cursor: u64, stream_last: u64, max_in_flight: usize) -> Self {
        Self {
            cursor,
            next: cursor + 1,
            acked_ahead: BTreeSet::new(),
            max_in_flight: max_in_flight.max(1),
            first: cursor + 1,
            stream_last,
        }
    }

    /// The stream position `seq` may only follow: its
    /// `Nats-Expected-Last-Sequence`. `seq` lands at this + 1 or nowhere.
    pub fn expected_last_sequence(&self, seq: u64) -> u64 {
        debug_assert!(seq >= self.first, "seq {seq} precedes the window");
        self.stream_last + (seq - self.first)
    }

    /// Every sequence ≤ this has been acknowledged.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The next sequence to publish.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Published but not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        (self.next - self.cursor - 1) as usize - self.acked_ahead.len()
    }

    /// How many more may be published now.
    pub fn room(&self) -> usize {
        // The window spans cursor+1..next, acked or not, so a slow early ack
        // bounds how far ahead publishing runs.
        self.max_in_flight
            .saturating_sub((self.next - self.cursor - 1) as usize)
    }

    /// Records that `seq` (which must be [`Self::next_seq`]) was sent.
    pub fn sent(&mut self, seq: u64) {
        debug_assert_eq!(seq, self.next, "events are published in log order");
        self.next = seq + 1;
    }

    /// Records the ack of `seq`; returns the new cursor when it moved.
    pub fn acked(&mut self, seq: u64) -> Option<u64> {
        if seq <= self.cursor || seq >= self.next {
            return None;
        }
        self.acked_ahead.insert(seq);
        let before = self.cursor;
        while self.acked_ahead.remove(&(self.cursor + 1)) {
            self.cursor += 1;
        }
        (self.cursor > before).then_some(self.cursor)
    }
}

/// The cursor a session resumes from, given the stream's last message:
/// its `Cairn-Seq` and event id (`tail`), and the event id this log holds
/// at that seq (`log_event_id`). The stream is ahead of the cursor when
/// acks were lost (a crash, a cut connection, a cursor not yet saved):
/// since the stream is in log order, everything up to its last `Cairn-Seq`
/// is stored, and publishing resumes after it. A tail that is not this
/// log's event (a stream shared with another log, or a log started anew)
/// tells nothing: the cursor stands.
pub fn resume_cursor(cursor: u64, tail: Option<(u64, &str)>, log_event_id: Option<&str>) -> u64 {
    match tail {
        Some((seq, id)) if seq > cursor && log_event_id == Some(id) => seq,
        _ => cursor,
    }
}

/// For a cluster replica's log (`replica_last_seq`: the last seq it
/// holds), where every node's log holds the same seqs: the seq of a stream
/// tail ahead of the cursor that this log holds no event at and has not
/// reached — the replica is behind, and a session should wait rather than
/// publish from its cursor what another node published. `None` when the
/// tail says nothing of the kind ([`resume_cursor`] then decides).
pub fn replica_behind(
    cursor: u64,
    tail: Option<(u64, &str)>,
    log_event_id: Option<&str>,
    replica_last_seq: u64,
) -> Option<u64> {
    match tail {
        Some((seq, _)) if seq > cursor && log_event_id.is_none() && replica_last_seq < seq => {
            Some(seq)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_moves_only_over_contiguous_acks() {
        let mut w = PublishWindow::new(10, 0, 4);
        for s in 11..=14 {
            w.sent(s);
        }
        assert_eq!((w.room(), w.in_flight()), (0, 4));
        assert_eq!(w.acked(12), None);
        assert_eq!(w.acked(13), None);
        assert_eq!(w.room(), 0, "an unacked head keeps the window full");
        assert_eq!(w.acked(11), Some(13));
        assert_eq!((w.cursor(), w.room(), w.in_flight()), (13, 3, 1));
        assert_eq!(w.acked(14), Some(14));
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn stale_and_unknown_acks_are_ignored() {
        let mut w = PublishWindow::new(5, 0, 8);
        w.sent(6);
        assert_eq!(w.acked(5), None);
        assert_eq!(w.acked(7), None, "never sent");
        assert_eq!(w.acked(6), Some(6));
        assert_eq!(w.acked(6), None, "duplicate ack");
    }

    #[test]
    fn each_event_is_fenced_on_the_position_before_its_own() {
        // Cursor 182, the stream's last message at position 182.
        let w = PublishWindow::new(182, 182, 8);
        assert_eq!(w.expected_last_sequence(183), 182);
        assert_eq!(w.expected_last_sequence(189), 188);
        // The stream holds other messages too (or lost some): the fence
        // follows the stream's positions, not the log's sequence numbers.
        let w = PublishWindow::new(10, 25, 8);
        assert_eq!(
            (w.expected_last_sequence(11), w.expected_last_sequence(12)),
            (25, 26)
        );
    }

    #[test]
    fn a_session_resumes_after_the_streams_last_event_of_this_log() {
        assert_eq!(resume_cursor(182, Some((189, "e189")), Some("e189")), 189);
        assert_eq!(
            resume_cursor(182, Some((189, "e189")), Some("other")),
            182,
            "another log's event"
        );
        assert_eq!(
            resume_cursor(182, Some((189, "e189")), None),
            182,
            "beyond this log"
        );
        assert_eq!(
            resume_cursor(190, Some((189, "e189")), Some("e189")),
            190,
            "never backwards"
        );
        assert_eq!(resume_cursor(182, None, None), 182, "an empty stream");
    }

    #[test]
    fn a_replica_behind_the_streams_last_event_is_told_to_wait() {
        let tail = Some((189, "e189"));
        assert_eq!(
            replica_behind(182, tail, None, 185),
            Some(189),
            "not applied here yet"
        );
        assert_eq!(
            replica_behind(182, tail, None, 195),
            None,
            "passed it without holding it: not behind"
        );
        assert_eq!(replica_behind(182, tail, Some("e189"), 195), None);
        assert_eq!(
            replica_behind(190, tail, None, 185),
            None,
            "behind the cursor"
        );
        assert_eq!(replica_behind(182, None, None, 0), None, "an empty stream");
    }
}
