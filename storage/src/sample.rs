//! Sample events for benchmarks and tests: small, valid, and easy to tell
//! apart. Not test-only (the `cairn bench` commands append them too).

use cairn_events::{
    envelope::event,
    v1::{event::Payload, Event, RepositoryClosed},
};

/// A small event whose `reason` identifies it.
pub fn marker(text: impl Into<String>) -> Event {
    event(Payload::RepositoryClosed(RepositoryClosed {
        reason: text.into(),
    }))
}

/// The text of a [`marker`] event, `None` for any other event.
pub fn marker_text(event: &Event) -> Option<&str> {
    match event.payload.as_ref() {
        Some(Payload::RepositoryClosed(c)) => Some(&c.reason),
        _ => None,
    }
}
