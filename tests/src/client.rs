//! One typed client of a node's NATS service: `call(endpoint, json)` →
//! `Result<Value, ServiceError>`, with a deadline on every request and
//! every wait for a message.
//!
//! Decisions: a service error (a reply with `Nats-Service-Error-Code`) is a
//! value the test asserts on; anything else — no reply in time, no
//! responders, a reply that is not JSON — fails the test at once, naming
//! the endpoint, because no test expects it.

use std::{collections::BTreeMap, time::Duration};

use async_nats::{HeaderMap, Message, Request};
use cairn_events::v1 as pb;
use futures::StreamExt as _;
use prost::Message as _;
use serde_json::{json, Value};

use crate::wait::{within, WAIT};

/// The namespace the suites register their repositories in.
pub const NAMESPACE: &str = "team-a";

/// Most `pkgrev.resources` pages a test reads before it calls the paging
/// stuck.
pub const RESOURCE_PAGES_MAX: usize = 1000;

/// A revision's files: path → content.
pub type Files = BTreeMap<String, Vec<u8>>;

/// One `pkgrev.resources` reply: its body and its size on the wire.
#[derive(Debug, Clone)]
pub struct ResourcePage<T> {
    /// The body (a JSON value or a `PkgRevResources`).
    pub body: T,
    /// The payload's size in bytes.
    pub bytes: usize,
}

/// An error reply of the service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceError {
    /// The endpoint, e.g. `pkgrev.update`.
    pub endpoint: String,
    /// `Nats-Service-Error-Code`, e.g. 409.
    pub code: u16,
    /// The body's `message` (the header's when the body has none).
    pub message: String,
    /// The whole JSON body, `{"code": …, "message": …}`.
    pub body: Value,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.endpoint, self.code, self.message)
    }
}

impl std::error::Error for ServiceError {}

/// A NATS connection to a node, every request bounded by a timeout.
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    timeout: Duration,
}

impl Client {
    /// Wraps a connection; requests time out after [`WAIT`].
    pub fn new(nats: async_nats::Client) -> Self {
        Self {
            nats,
            timeout: WAIT,
        }
    }

    /// Connects to `url` (bounded by [`WAIT`]).
    pub async fn connect(url: &str) -> Self {
        let nats = within(
            &format!("a connection to {url}"),
            WAIT,
            async_nats::connect(url),
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Self::new(nats)
    }

    /// Connects to `url` as `user`.
    pub async fn connect_as(url: &str, user: &str, password: &str) -> Self {
        let options = async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            password.to_owned(),
        );
        let nats = within(
            &format!("a connection to {url}"),
            WAIT,
            options.connect(url),
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to {url} as {user}: {e}"));
        Self::new(nats)
    }

    /// The same connection with another request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The underlying connection (for inboxes and publishing).
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// A request to `subject` with `headers`; the reply, whatever it says.
    pub async fn request_with_headers(
        &self,
        subject: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Message {
        let request = Request::new()
            .payload(body.into())
            .headers(headers)
            .timeout(Some(self.timeout));
        within(
            &format!("a reply from {subject}"),
            self.timeout + Duration::from_secs(1),
            self.nats.send_request(subject.to_owned(), request),
        )
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"))
    }

    /// A request to `subject`; the reply, whatever it says.
    pub async fn request(&self, subject: &str, body: &[u8]) -> Message {
        self.request_with_headers(subject, HeaderMap::new(), body.to_vec())
            .await
    }

    /// A protobuf request to `cairn.v1.<endpoint>`
    /// (`Content-Type: application/protobuf`); the reply.
    pub async fn call_proto(&self, endpoint: &str, body: Vec<u8>) -> Message {
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/protobuf");
        self.request_with_headers(&format!("cairn.v1.{endpoint}"), headers, body)
            .await
    }

    /// A raw JSON request to `cairn.v1.<endpoint>` (bytes as given, for
    /// malformed input); the reply read as [`Self::call`] reads it.
    pub async fn call_raw(&self, endpoint: &str, body: &[u8]) -> Result<Value, ServiceError> {
        let reply = self.request(&format!("cairn.v1.{endpoint}"), body).await;
        read_reply(endpoint, &reply)
    }

    /// A JSON request to `cairn.v1.<endpoint>`: the reply, or the service's
    /// error.
    pub async fn call(&self, endpoint: &str, body: Value) -> Result<Value, ServiceError> {
        let bytes = serde_json::to_vec(&body).expect("JSON serialises");
        self.call_raw(endpoint, &bytes).await
    }

    /// A JSON request to `cairn.v1.<endpoint>` with `headers`: the reply
    /// (or the service's error) and the reply's headers.
    pub async fn call_with_headers(
        &self,
        endpoint: &str,
        body: Value,
        headers: HeaderMap,
    ) -> (Result<Value, ServiceError>, HeaderMap) {
        let bytes = serde_json::to_vec(&body).expect("JSON serialises");
        let reply = self
            .request_with_headers(&format!("cairn.v1.{endpoint}"), headers, bytes)
            .await;
        (
            read_reply(endpoint, &reply),
            reply.headers.clone().unwrap_or_default(),
        )
    }

    /// [`Self::call_with_headers`] to cluster node `node` in particular
    /// (`cairn.node.<node>.cairn.v1.<endpoint>`), which answers it as if it
    /// had received it from the queue group.
    pub async fn call_node(
        &self,
        node: &str,
        endpoint: &str,
        body: Value,
        headers: HeaderMap,
    ) -> (Result<Value, ServiceError>, HeaderMap) {
        let bytes = serde_json::to_vec(&body).expect("JSON serialises");
        let reply = self
            .request_with_headers(
                &format!("cairn.node.{node}.cairn.v1.{endpoint}"),
                headers,
                bytes,
            )
            .await;
        (
            read_reply(endpoint, &reply),
            reply.headers.clone().unwrap_or_default(),
        )
    }

    /// Like [`Self::call`], failing the test on an error reply.
    pub async fn ok(&self, endpoint: &str, body: Value) -> Value {
        match self.call(endpoint, body).await {
            Ok(reply) => reply,
            Err(e) => panic!("{endpoint} failed: {e} ({})", e.body),
        }
    }

    /// Every `pkgrev.resources` page of `namespace/name` in JSON, from the
    /// first, following `continue` (at most [`RESOURCE_PAGES_MAX`]); fails
    /// the test on an error reply.
    pub async fn resource_pages(&self, namespace: &str, name: &str) -> Vec<ResourcePage<Value>> {
        let mut body = json!({"namespace": namespace, "name": name});
        let mut pages = Vec::new();
        for _ in 0..RESOURCE_PAGES_MAX {
            let bytes = serde_json::to_vec(&body).expect("JSON serialises");
            let reply = self.request("cairn.v1.pkgrev.resources", &bytes).await;
            let page = read_reply("pkgrev.resources", &reply)
                .unwrap_or_else(|e| panic!("pkgrev.resources failed: {e} ({})", e.body));
            let token = page["continue"].clone();
            pages.push(ResourcePage {
                body: page,
                bytes: reply.payload.len(),
            });
            match token {
                Value::Null => return pages,
                token => body["continue"] = token,
            }
        }
        panic!("pkgrev.resources of {namespace}/{name}: more than {RESOURCE_PAGES_MAX} pages");
    }

    /// [`Self::resource_pages`] in protobuf.
    pub async fn resource_pages_proto(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<ResourcePage<pb::PkgRevResources>> {
        let mut request = pb::PkgRevResourcesRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            r#continue: String::new(),
        };
        let mut pages = Vec::new();
        for _ in 0..RESOURCE_PAGES_MAX {
            let reply = self
                .call_proto("pkgrev.resources", request.encode_to_vec())
                .await;
            if let Some(code) = reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error-Code"))
            {
                let error = pb::ErrorReply::decode(reply.payload.as_ref());
                panic!("pkgrev.resources failed: {code}: {error:?}");
            }
            let page = pb::PkgRevResources::decode(reply.payload.as_ref())
                .unwrap_or_else(|e| panic!("pkgrev.resources: not a PkgRevResources: {e}"));
            let token = page.r#continue.clone();
            pages.push(ResourcePage {
                body: page,
                bytes: reply.payload.len(),
            });
            if token.is_empty() {
                return pages;
            }
            request.r#continue = token;
        }
        panic!("pkgrev.resources of {namespace}/{name}: more than {RESOURCE_PAGES_MAX} pages");
    }

    /// The files of `namespace/name`, read page by page in JSON
    /// ([`files_of_pages`]).
    pub async fn resources(&self, namespace: &str, name: &str) -> Files {
        files_of_pages(&self.resource_pages(namespace, name).await)
    }

    /// The JSON reply of the micro protocol's `$SRV.<verb>.cairn`.
    pub async fn srv(&self, verb: &str) -> Value {
        let subject = format!("$SRV.{verb}.cairn");
        let reply = self.request(&subject, b"").await;
        serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| panic!("{subject}: not JSON: {e}"))
    }

    /// The events of stream `repo/team-a/<name>` after seq `after`: their
    /// types, and the events themselves.
    pub async fn events_after(&self, name: &str, after: u64) -> (Vec<String>, Vec<Value>) {
        let page = self
            .ok(
                "log.read",
                json!({"from_seq": after + 1, "stream": format!("repo/{NAMESPACE}/{name}")}),
            )
            .await;
        let events = page["events"].as_array().expect("events").clone();
        (kinds(&events), events)
    }

    /// Subscribes to `subject` (flushed, so the server knows of it when
    /// this returns).
    pub async fn subscribe(&self, subject: &str) -> Subscription {
        let inner = within(
            &format!("a subscription to {subject}"),
            self.timeout,
            self.nats.subscribe(subject.to_owned()),
        )
        .await
        .unwrap_or_else(|e| panic!("subscribing to {subject}: {e}"));
        self.flush().await;
        Subscription {
            subject: subject.to_owned(),
            inner,
            timeout: self.timeout,
        }
    }

    /// Waits until the server has processed everything sent on this
    /// connection so far (a round trip through the server, not only a
    /// socket flush), so other connections see its subscriptions.
    pub async fn flush(&self) {
        within(
            "a round trip through the server",
            self.timeout,
            cairn_actors::service::server_round_trip(&self.nats),
        )
        .await
        .unwrap_or_else(|e| panic!("flush: {e}"));
    }

    /// A fresh inbox subject.
    pub fn new_inbox(&self) -> String {
        self.nats.new_inbox()
    }
}

/// The files JSON `pkgrev.resources` pages hold: each page's pieces
/// (`resources` as UTF-8, `binary` as base64) appended to their files in
/// page order.
pub fn files_of_pages(pages: &[ResourcePage<Value>]) -> Files {
    use base64::Engine as _;
    let mut files = Files::new();
    for page in pages {
        let body = &page.body;
        for (path, text) in body["resources"].as_object().expect("resources") {
            let text = text.as_str().expect("a UTF-8 piece is a string");
            files
                .entry(path.clone())
                .or_default()
                .extend_from_slice(text.as_bytes());
        }
        for (path, encoded) in body["binary"].as_object().into_iter().flatten() {
            let piece = base64::engine::general_purpose::STANDARD
                .decode(encoded.as_str().expect("a binary piece is a string"))
                .expect("a binary piece is base64");
            files.entry(path.clone()).or_default().extend(piece);
        }
    }
    files
}

/// The files protobuf `pkgrev.resources` pages hold, each the
/// concatenation of its pieces in page order.
pub fn files_of_proto_pages(pages: &[ResourcePage<pb::PkgRevResources>]) -> Files {
    let mut files = Files::new();
    for page in pages {
        for (path, piece) in &page.body.resources {
            files
                .entry(path.clone())
                .or_default()
                .extend_from_slice(piece);
        }
    }
    files
}

/// The `type` of each event of a `log.read` page.
pub fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().expect("an event type").to_owned())
        .collect()
}

/// Reads a JSON reply: the body, or the service error it carries.
fn read_reply(endpoint: &str, reply: &Message) -> Result<Value, ServiceError> {
    let body: Value = serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
        panic!(
            "{endpoint}: the reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&reply.payload)
        )
    });
    let headers = reply.headers.as_ref();
    let Some(code) = headers.and_then(|h| h.get("Nats-Service-Error-Code")) else {
        return Ok(body);
    };
    let code = code
        .as_str()
        .parse()
        .unwrap_or_else(|_| panic!("{endpoint}: error code {code:?} is not a number"));
    let message = body["message"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            headers
                .and_then(|h| h.get("Nats-Service-Error"))
                .map(|v| v.to_string())
        })
        .unwrap_or_default();
    Err(ServiceError {
        endpoint: endpoint.to_owned(),
        code,
        message,
        body,
    })
}

/// A subscription whose every wait is bounded.
#[derive(Debug)]
pub struct Subscription {
    subject: String,
    inner: async_nats::Subscriber,
    timeout: Duration,
}

impl Subscription {
    /// The next message, within the client's timeout.
    pub async fn next(&mut self) -> Message {
        let what = format!("a message on {}", self.subject);
        within(&what, self.timeout, self.inner.next())
            .await
            .unwrap_or_else(|| panic!("the subscription to {} ended", self.subject))
    }

    /// The next message's payload as JSON.
    pub async fn next_json(&mut self) -> Value {
        let message = self.next().await;
        serde_json::from_slice(&message.payload)
            .unwrap_or_else(|e| panic!("a message on {} is not JSON: {e}", self.subject))
    }

    /// The subscription itself (to hand to a task that reads it).
    pub fn into_inner(self) -> async_nats::Subscriber {
        self.inner
    }
}
