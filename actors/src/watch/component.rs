//! The watcher component: what one watch knows and sends, as plain code.
//!
//! It turns the listing, the bookmark and each envelope (replayed from the
//! log or taken from the hub's queue) into the JSON lines the client gets,
//! keeping:
//! - a **cursor**: the last sequence number delivered or passed over; an
//!   envelope at or below it is dropped, so the hand-over from the listing
//!   (or the replay) to the live queue never repeats an event;
//! - when the filter tracks transitions, the **names reported as
//!   matching** (`<namespace>/<name>`), to turn a `Modified` that leaves
//!   the filter into `Deleted` and one that enters it into `Added` (after a
//!   listing) or `Modified` (after a resume).
//!
//! Lines:
//! - `{"type":"Added","object":{…}}` — a revision of the initial listing;
//! - `{"type":"Bookmark","seq":N}` — the listing reflects the log up to N;
//! - `{"type":"Added|Modified|Deleted","seq":N,"object":{…}}` — a change;
//! - `{"type":"Heartbeat","seq":<cursor>}` — every matching event up to
//!   `seq` has been delivered (a client may resume from it);
//! - `{"type":"Relist"}`.
//!
//! A package revision object is its JSON form as `pkgrev.get` renders it
//! (`resource_version` = the event's seq); a deletion's object is the
//! revision as it was (without tasks), or `{"name","namespace",
//! "repository"}` for events written before deletions carried it. A
//! repository object is `{"namespace","name","event":"<EventName>",…}`
//! with the event's payload fields in the proto3 JSON mapping.

use std::{collections::HashSet, sync::Arc};

use cairn_events::{
    envelope::EventKind,
    revision,
    v1::{event::Payload, Envelope},
};
use serde_json::{json, Map, Value};

use super::filter::{classify, Classified, RevisionEvent, WatchFilter};

/// One watch's state and decisions.
#[derive(Debug, Clone)]
pub struct WatcherComponent {
    filter: Arc<WatchFilter>,
    cursor: u64,
    /// Started with a listing: the watcher knows every revision that
    /// matched at the bookmark.
    complete: bool,
    /// Names (`<namespace>/<name>`) reported as matching; only kept when
    /// the filter tracks transitions.
    known: Option<HashSet<String>>,
}

/// The `type` of a change line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// The object is new to the watch.
    Added,
    /// The object changed.
    Modified,
    /// The object is gone (or no longer matches).
    Deleted,
}

impl ChangeType {
    fn name(self) -> &'static str {
        match self {
            ChangeType::Added => "Added",
            ChangeType::Modified => "Modified",
            ChangeType::Deleted => "Deleted",
        }
    }
}

impl WatcherComponent {
    /// A watch that starts with a listing (cursor 0 until the bookmark).
    pub fn listing(filter: Arc<WatchFilter>) -> Self {
        Self::new(filter, 0, true)
    }

    /// A watch that resumes after `since_seq`.
    pub fn resume(filter: Arc<WatchFilter>, since_seq: u64) -> Self {
        Self::new(filter, since_seq, false)
    }

    fn new(filter: Arc<WatchFilter>, cursor: u64, complete: bool) -> Self {
        let known = filter.tracks_transitions().then(HashSet::new);
        Self {
            filter,
            cursor,
            complete,
            known,
        }
    }

    /// The last sequence number delivered or passed over.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The filter.
    pub fn filter(&self) -> &WatchFilter {
        &self.filter
    }

    /// The line for revision `name` of the listing (already filtered), its
    /// JSON form being `json`.
    pub fn listed(&mut self, namespace: &str, name: &str, json: &[u8]) -> Vec<u8> {
        if let Some(known) = &mut self.known {
            known.insert(key(namespace, name));
        }
        let mut line = Vec::with_capacity(json.len() + 32);
        line.extend_from_slice(b"{\"type\":\"Added\",\"object\":");
        line.extend_from_slice(json);
        line.push(b'}');
        line
    }

    /// The listing is complete and reflects the log up to `seq`.
    pub fn bookmark(&mut self, seq: u64) -> Vec<u8> {
        self.cursor = self.cursor.max(seq);
        format!("{{\"type\":\"Bookmark\",\"seq\":{seq}}}").into_bytes()
    }

    /// The line for `envelope`, if the watch sends one. Every envelope
    /// after the cursor moves it, sent or not; one at or below it is
    /// dropped (already delivered, or reflected by the listing).
    pub fn event(&mut self, envelope: &Envelope) -> Option<Vec<u8>> {
        if envelope.seq <= self.cursor {
            return None;
        }
        self.cursor = envelope.seq;
        let seq = envelope.seq;
        match classify(envelope)? {
            Classified::Repository {
                namespace,
                name,
                payload,
            } => {
                if !(self.filter.kinds.repositories && self.filter.admits(envelope)) {
                    return None;
                }
                let change = match payload {
                    Payload::RepositoryRegistered(_) => ChangeType::Added,
                    Payload::RepositoryClosed(_) => ChangeType::Deleted,
                    _ => ChangeType::Modified,
                };
                let object = repository_object(namespace, name, envelope);
                Some(line(change, seq, &object))
            }
            Classified::Revision {
                namespace,
                repository,
                event,
            } => {
                if !self.filter.kinds.package_revisions {
                    return None;
                }
                let (change, object) = self.revision_change(namespace, repository, event, seq)?;
                Some(line(change, seq, &object))
            }
        }
    }

    /// What a package revision event means to this watch: the change type
    /// and the object's JSON, or `None` when it sends nothing.
    fn revision_change(
        &mut self,
        namespace: &str,
        repository: &str,
        event: RevisionEvent<'_>,
        seq: u64,
    ) -> Option<(ChangeType, Vec<u8>)> {
        let filter = self.filter.clone();
        match event {
            RevisionEvent::Added(r) => {
                if !filter.matches(namespace, repository, r) {
                    return None;
                }
                self.remember(namespace, &r.name);
                Some((
                    ChangeType::Added,
                    revision::render(namespace, repository, r, seq),
                ))
            }
            RevisionEvent::Modified(r) => {
                if !filter.in_scope(namespace, repository, r) {
                    return None;
                }
                let matches = filter.matches(namespace, repository, r);
                let change = match &mut self.known {
                    None if matches => ChangeType::Modified,
                    None => return None,
                    Some(known) => {
                        let k = key(namespace, &r.name);
                        match (matches, known.contains(&k)) {
                            (true, true) => ChangeType::Modified,
                            (true, false) => {
                                known.insert(k);
                                if self.complete {
                                    ChangeType::Added
                                } else {
                                    ChangeType::Modified
                                }
                            }
                            (false, true) => {
                                known.remove(&k);
                                ChangeType::Deleted
                            }
                            (false, false) => return None,
                        }
                    }
                };
                Some((change, revision::render(namespace, repository, r, seq)))
            }
            RevisionEvent::Deleted(name, Some(last)) => {
                // `last` is the revision after its last Modified, which the
                // watcher saw: it matches exactly when the name was last
                // reported as matching.
                self.forget(namespace, name);
                if !filter.matches(namespace, repository, last) {
                    return None;
                }
                Some((
                    ChangeType::Deleted,
                    revision::render(namespace, repository, last, seq),
                ))
            }
            RevisionEvent::Deleted(name, None) => {
                // An event from before deletions carried the revision:
                // matched on namespace and repository alone, unless the
                // watcher knows everything that matched.
                let was_known = self.forget(namespace, name);
                if !filter.matches_repository(namespace, repository)
                    || (self.complete && self.known.is_some() && !was_known)
                {
                    return None;
                }
                let object =
                    json!({"name": name, "namespace": namespace, "repository": repository});
                Some((ChangeType::Deleted, object.to_string().into_bytes()))
            }
        }
    }

    fn remember(&mut self, namespace: &str, name: &str) {
        if let Some(known) = &mut self.known {
            known.insert(key(namespace, name));
        }
    }

    /// Forgets `name`; whether it was remembered.
    fn forget(&mut self, namespace: &str, name: &str) -> bool {
        self.known
            .as_mut()
            .is_some_and(|known| known.remove(&key(namespace, name)))
    }

    /// Moves the cursor to `seq` (when later): the caller knows every
    /// event up to it that concerns this watch has been handled.
    pub fn advance(&mut self, seq: u64) {
        self.cursor = self.cursor.max(seq);
    }

    /// The heartbeat line: every event up to its `seq` that matches the
    /// watch has been delivered.
    pub fn heartbeat(&self) -> Vec<u8> {
        format!("{{\"type\":\"Heartbeat\",\"seq\":{}}}", self.cursor).into_bytes()
    }

    /// The line telling the client it fell behind and must list again.
    pub fn relist() -> Vec<u8> {
        b"{\"type\":\"Relist\"}".to_vec()
    }
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// `{"type":…,"seq":…,"object":…}` around an object already serialised.
fn line(change: ChangeType, seq: u64, object: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(object.len() + 48);
    out.extend_from_slice(
        format!("{{\"type\":\"{}\",\"seq\":{seq},\"object\":", change.name()).as_bytes(),
    );
    out.extend_from_slice(object);
    out.push(b'}');
    out
}

/// `{"namespace","name","event":"<EventName>",…payload fields}`.
fn repository_object(namespace: &str, name: &str, envelope: &Envelope) -> Vec<u8> {
    let mut object = Map::new();
    object.insert("namespace".into(), Value::String(namespace.to_owned()));
    object.insert("name".into(), Value::String(name.to_owned()));
    if let Some(payload) = envelope.event.as_ref().and_then(|e| e.payload.as_ref()) {
        object.insert(
            "event".into(),
            Value::String(EventKind::of(payload).name().to_owned()),
        );
    }
    // The proto3 JSON of the event is `{"<payload_name>": {fields}}`.
    if let Ok(Value::Object(event)) = serde_json::to_value(&envelope.event) {
        if let Some((_, Value::Object(fields))) = event.into_iter().next() {
            for (k, v) in fields {
                object.entry(k).or_insert(v);
            }
        }
    }
    serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use cairn_events::{
        envelope::event,
        v1::{
            PackageRevision, PackageRevisionAdded, PackageRevisionDeleted, PackageRevisionModified,
            RepositoryClosed, SyncSucceeded,
        },
    };

    use super::*;
    use crate::{revision_filter::Filter, watch::filter::Kinds};

    fn filter(filter: Filter, kinds: Kinds) -> Arc<WatchFilter> {
        Arc::new(WatchFilter { filter, kinds })
    }

    fn rev(package: &str, lifecycle: &str) -> PackageRevision {
        PackageRevision {
            name: format!("r.{package}.v1"),
            package: package.into(),
            workspace: "v1".into(),
            lifecycle: lifecycle.into(),
            ..Default::default()
        }
    }

    fn env(seq: u64, payload: Payload) -> Envelope {
        Envelope {
            stream: "repo/ns/r".into(),
            seq,
            event: Some(event(payload)),
            ..Default::default()
        }
    }

    fn added(seq: u64, r: PackageRevision) -> Envelope {
        env(
            seq,
            Payload::PackageRevisionAdded(PackageRevisionAdded { revision: Some(r) }),
        )
    }

    fn modified(seq: u64, r: PackageRevision) -> Envelope {
        env(
            seq,
            Payload::PackageRevisionModified(PackageRevisionModified { revision: Some(r) }),
        )
    }

    fn deleted(seq: u64, name: &str, last: Option<PackageRevision>) -> Envelope {
        env(
            seq,
            Payload::PackageRevisionDeleted(PackageRevisionDeleted {
                name: name.into(),
                last,
            }),
        )
    }

    /// `"<type> <seq> <name>"` of each line sent for `events`.
    fn run(c: &mut WatcherComponent, events: &[Envelope]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| c.event(e))
            .map(|line| {
                let v: Value = serde_json::from_slice(&line).unwrap();
                format!(
                    "{} {} {}",
                    v["type"].as_str().unwrap(),
                    v["seq"],
                    v["object"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn given_a_listing_when_events_at_or_before_the_bookmark_then_dropped() {
        let mut c = WatcherComponent::listing(filter(Filter::default(), Kinds::default()));
        let line = c.listed("ns", "r.a.v1", br#"{"name":"r.a.v1"}"#);
        assert_eq!(line, br#"{"type":"Added","object":{"name":"r.a.v1"}}"#);
        assert_eq!(c.bookmark(7), br#"{"type":"Bookmark","seq":7}"#);
        let sent = run(
            &mut c,
            &[
                added(6, rev("a", "Draft")),
                added(7, rev("b", "Draft")),
                modified(8, rev("a", "Draft")),
                modified(8, rev("a", "Draft")),
                deleted(9, "r.b.v1", Some(rev("b", "Draft"))),
            ],
        );
        assert_eq!(sent, ["Modified 8 r.a.v1", "Deleted 9 r.b.v1"]);
        assert_eq!(c.cursor(), 9);
        assert_eq!(c.heartbeat(), br#"{"type":"Heartbeat","seq":9}"#);
    }

    #[test]
    fn given_a_lifecycle_filter_then_modified_enters_and_leaves_it() {
        let published = Filter {
            lifecycle: Some(vec![cairn_events::revision::Lifecycle::Published]),
            ..Filter::default()
        };
        let mut c = WatcherComponent::listing(filter(published.clone(), Kinds::default()));
        c.listed("ns", "r.a.v1", b"{}");
        c.bookmark(1);
        let sent = run(
            &mut c,
            &[
                // a leaves the filter, b enters it, b changes, b is deleted.
                modified(2, rev("a", "DeletionProposed")),
                added(3, rev("b", "Draft")),
                modified(4, rev("b", "Published")),
                modified(5, rev("b", "Published")),
                deleted(6, "r.b.v1", Some(rev("b", "Published"))),
                // a is deleted after it left: nothing more to say.
                deleted(7, "r.a.v1", Some(rev("a", "DeletionProposed"))),
            ],
        );
        assert_eq!(
            sent,
            [
                "Deleted 2 r.a.v1",
                "Added 4 r.b.v1",
                "Modified 5 r.b.v1",
                "Deleted 6 r.b.v1"
            ]
        );

        // After a resume the watcher cannot know what the client knew: a
        // revision entering the filter is a Modified.
        let mut c = WatcherComponent::resume(filter(published, Kinds::default()), 10);
        let sent = run(
            &mut c,
            &[
                modified(10, rev("a", "Published")),
                modified(11, rev("a", "Published")),
                modified(12, rev("a", "Draft")),
                modified(13, rev("c", "Draft")),
            ],
        );
        assert_eq!(sent, ["Modified 11 r.a.v1", "Deleted 12 r.a.v1"]);
    }

    #[test]
    fn given_old_deletions_without_the_revision_then_matched_by_repository() {
        let mut c = WatcherComponent::resume(
            filter(
                Filter {
                    package: Some("a".into()),
                    ..Filter::default()
                },
                Kinds::default(),
            ),
            0,
        );
        let lines: Vec<Value> = [deleted(1, "r.b.v1", None)]
            .iter()
            .filter_map(|e| c.event(e))
            .map(|l| serde_json::from_slice(&l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [json!({"type": "Deleted", "seq": 1,
                    "object": {"name": "r.b.v1", "namespace": "ns", "repository": "r"}})]
        );
        // With complete knowledge of a tracked filter, only known names.
        let mut c = WatcherComponent::listing(filter(
            Filter {
                latest: Some(true),
                ..Filter::default()
            },
            Kinds::default(),
        ));
        c.listed("ns", "r.a.v1", b"{}");
        c.bookmark(0);
        assert_eq!(
            run(
                &mut c,
                &[deleted(1, "r.b.v1", None), deleted(2, "r.a.v1", None)]
            ),
            ["Deleted 2 r.a.v1"]
        );
    }

    #[test]
    fn given_repository_kind_then_repository_events_as_objects() {
        let kinds = Kinds {
            package_revisions: false,
            repositories: true,
        };
        let mut c = WatcherComponent::resume(filter(Filter::default(), kinds), 0);
        let lines: Vec<Value> = [
            added(1, rev("a", "Draft")),
            env(
                2,
                Payload::SyncSucceeded(SyncSucceeded {
                    commit: "abc".into(),
                    added: 1,
                    package_count: 1,
                    ..Default::default()
                }),
            ),
            env(
                3,
                Payload::RepositoryClosed(RepositoryClosed {
                    reason: "unregistered".into(),
                }),
            ),
        ]
        .iter()
        .filter_map(|e| c.event(e))
        .map(|l| serde_json::from_slice(&l).unwrap())
        .collect();
        assert_eq!(
            lines,
            [
                json!({"type": "Modified", "seq": 2, "object": {
                    "namespace": "ns", "name": "r", "event": "SyncSucceeded",
                    "commit": "abc", "added": 1, "package_count": 1}}),
                json!({"type": "Deleted", "seq": 3, "object": {
                    "namespace": "ns", "name": "r", "event": "RepositoryClosed",
                    "reason": "unregistered"}}),
            ]
        );
        assert_eq!(WatcherComponent::relist(), br#"{"type":"Relist"}"#);
    }
}
