//! Test support: a tracing layer that captures every span (name, parent,
//! fields), to assert that a command's spans form one tree.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::Mutex;
use tracing::{
    field::{Field, Visit},
    span::{Attributes, Id, Record},
    Subscriber,
};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer};

/// A span as the subscriber saw it: its name, its parent (an index
/// into the spans seen: ids are reused once a span closes) and its
/// fields as recorded.
#[derive(Debug, Clone)]
struct Seen {
    name: &'static str,
    parent: Option<usize>,
    fields: BTreeMap<String, String>,
}

/// Captures every span it is shown (at the level the subscriber
/// enables).
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture {
    seen: Arc<Mutex<Vec<Seen>>>,
    live: Arc<Mutex<HashMap<u64, usize>>>,
    /// How many spans were seen, bumped after each (to wait for one).
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .and_then(|parent| self.live.lock().get(&parent.id().into_u64()).copied());
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut seen = self.seen.lock();
        seen.push(Seen {
            name: attrs.metadata().name(),
            parent,
            fields,
        });
        let count = seen.len();
        self.live.lock().insert(id.into_u64(), count - 1);
        // Not under the lock: a waiter reads the spans in `wait_for_chain`.
        drop(seen);
        self.count.send_replace(count);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(&index) = self.live.lock().get(&id.into_u64()) {
            values.record(&mut Fields(&mut self.seen.lock()[index].fields));
        }
    }
}

impl Capture {
    /// Waits (at most `timeout`) until some span's chain is `chain`
    /// (`"a < b < root"`); panics naming it otherwise.
    pub(crate) async fn wait_for_chain(&self, chain: &str, timeout: std::time::Duration) {
        let mut count = self.count.subscribe();
        let seen = tokio::time::timeout(
            timeout,
            count.wait_for(|_| self.chains().iter().any(|c| c == chain)),
        )
        .await;
        assert!(
            matches!(seen, Ok(Ok(_))),
            "no span {chain:?} after {timeout:?}; seen: {:?}",
            self.chains()
        );
    }

    /// Every span's chain of names up to its root (`"a < b < root"`).
    pub(crate) fn chains(&self) -> Vec<String> {
        let seen = self.seen.lock();
        (0..seen.len())
            .map(|mut i| {
                let mut names = vec![seen[i].name];
                while let Some(parent) = seen[i].parent {
                    names.push(seen[parent].name);
                    i = parent;
                }
                names.join(" < ")
            })
            .collect()
    }

    pub(crate) fn fields_of(&self, name: &str, endpoint: &str) -> Vec<BTreeMap<String, String>> {
        self.seen
            .lock()
            .iter()
            .filter(|s| {
                s.name == name && s.fields.get("endpoint").map(String::as_str) == Some(endpoint)
            })
            .map(|s| s.fields.clone())
            .collect()
    }
}
