//! The publisher's component: which events are in flight, and how far the
//! cursor may move.
//!
//! Events are published in log order, with at most `max_in_flight`
//! unacknowledged. Acks may arrive in any order; the cursor moves only over
//! the contiguous prefix of acknowledged sequence numbers, so after a crash
//! or a lost connection publishing resumes right after the last event known
//! to be stored by JetStream — re-publishing some, which JetStream
//! de-duplicates by `Nats-Msg-Id`, and never skipping one.

use std::collections::BTreeSet;

/// In-flight window and cursor.
#[derive(Debug, Clone)]
pub struct PublishWindow {
    cursor: u64,
    next: u64,
    acked_ahead: BTreeSet<u64>,
    max_in_flight: usize,
}

impl PublishWindow {
    /// A window resuming after `cursor` (everything ≤ `cursor` is acked).
    pub fn new(cursor: u64, max_in_flight: usize) -> Self {
        Self {
            cursor,
            next: cursor + 1,
            acked_ahead: BTreeSet::new(),
            max_in_flight: max_in_flight.max(1),
        }
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

    /// Forgets everything in flight: publishing restarts after the cursor.
    pub fn reset(&mut self) {
        self.next = self.cursor + 1;
        self.acked_ahead.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_moves_only_over_contiguous_acks() {
        let mut w = PublishWindow::new(10, 4);
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
        let mut w = PublishWindow::new(5, 8);
        w.sent(6);
        assert_eq!(w.acked(5), None);
        assert_eq!(w.acked(7), None, "never sent");
        assert_eq!(w.acked(6), Some(6));
        assert_eq!(w.acked(6), None, "duplicate ack");
    }

    #[test]
    fn reset_resumes_after_the_cursor() {
        let mut w = PublishWindow::new(0, 8);
        for s in 1..=5 {
            w.sent(s);
        }
        w.acked(1);
        w.acked(3);
        w.reset();
        assert_eq!((w.cursor(), w.next_seq(), w.in_flight()), (1, 2, 0));
    }
}
