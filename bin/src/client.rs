//! The client side of the CLI: `cairn repo …` and `cairn pkg …` send
//! requests to a node's `cairn` service and print the replies as a table
//! (default), JSON or YAML.
//!
//! Sizes follow the service's one rule (`cairn_actors::service::resources`):
//! a request larger than the server's `max_payload` is refused here, naming
//! both sizes, before anything is sent; a revision's files are read page by
//! page ([`Client::resources`]), so any revision can be pulled.

use std::{collections::BTreeMap, io::Write, path::Path, time::Duration};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

/// Output format of client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// Aligned columns, more of them.
    Wide,
    /// `NAMESPACE/NAME` per line (to feed other commands).
    Name,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// A connection to a node's service.
#[derive(Debug)]
pub struct Client {
    nats: async_nats::Client,
    runtime: tokio::runtime::Runtime,
    timeout: Duration,
    /// The CLI command this client serves (`repo register`): errors name
    /// it, not the NATS endpoint.
    command: String,
}

/// Why a call got no answer of the node's.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The node answered with an error (`code` as HTTP): show it as is.
    #[error("{code}: {message}")]
    Node {
        /// The error code (`400`, `404`, `409`, …).
        code: String,
        /// The node's message.
        message: String,
    },
    /// No node answered within the command's `--timeout`: the command may
    /// or may not have been applied; say what is known of its state.
    #[error("{command}: {why}{}", tried(*attempts, *timeout))]
    NoReply {
        /// The CLI command.
        command: String,
        /// What the last attempt got (no responders, no reply in time).
        why: String,
        /// Attempts made.
        attempts: u32,
        /// The command's `--timeout`.
        timeout: Duration,
    },
    /// The request could not be sent, or its reply not read.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Client {
    /// Connects to `target` for the CLI command `command` (`repo
    /// register`, named in errors); requests wait at most `timeout`.
    pub fn connect(target: &NatsTarget, timeout: Duration, command: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let nats = runtime.block_on(connect_async(target))?;
        Ok(Self {
            nats,
            runtime,
            timeout,
            command: command.to_owned(),
        })
    }

    /// The command's `--timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `body` to `cairn.v1.<endpoint>` and returns the JSON reply, or
    /// the node's error as an error naming the code.
    pub fn call(&self, endpoint: &str, body: &Value) -> Result<Value, CallError> {
        self.runtime.block_on(self.call_async(endpoint, body))
    }

    /// [`Self::call`] with one attempt bounded by `timeout` (what a
    /// command reads after its own request got no reply).
    pub fn call_once(
        &self,
        endpoint: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        self.runtime
            .block_on(self.call_within(endpoint, body, timeout, 1))
    }

    async fn call_async(&self, endpoint: &str, body: &Value) -> Result<Value, CallError> {
        self.call_within(endpoint, body, self.timeout, CALL_ATTEMPTS_MAX)
            .await
    }

    async fn call_within(
        &self,
        endpoint: &str,
        body: &Value,
        timeout: Duration,
        attempts_max: u32,
    ) -> Result<Value, CallError> {
        use async_nats::RequestErrorKind;

        let command = &self.command;
        // `node.<id>.cairn.v1.<endpoint>`: one cluster node's own subject.
        let subject = if endpoint.starts_with("node.") {
            format!("cairn.{endpoint}")
        } else {
            format!("cairn.v1.{endpoint}")
        };
        let payload = bytes::Bytes::from(serde_json::to_vec(body).map_err(anyhow::Error::from)?);
        let max_payload = self.nats.server_info().max_payload;
        if max_payload > 0 && payload.len() > max_payload {
            return Err(anyhow::anyhow!(
                "{command}: the request is {} bytes, more than the server's max_payload of {max_payload} bytes",
                payload.len()
            )
            .into());
        }
        // A write carries one request id for all its attempts: the node
        // applies it once and answers a retry with what the first attempt
        // did (see the README, "Retries and idempotency").
        let mut headers = async_nats::HeaderMap::new();
        if WRITE_ENDPOINTS.contains(&endpoint) {
            headers.insert(
                cairn_actors::service::idempotency::REQUEST_ID_HEADER,
                cairn_events::envelope::new_id().as_str(),
            );
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let attempt_timeout = attempt_timeout(timeout);
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut told = false;
        let mut attempt = 0;
        let mut why = format!("no reply within {timeout:?}");
        while attempt < attempts_max {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            attempt += 1;
            let request = async_nats::Request::new()
                .payload(payload.clone())
                .headers(headers.clone())
                .timeout(Some(remaining.min(attempt_timeout)));
            why = match self.nats.send_request(subject.clone(), request).await {
                Ok(reply) => return read_reply(&subject, &reply),
                Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                    "no cairn node answers on this NATS server".to_owned()
                }
                Err(e) if e.kind() == RequestErrorKind::TimedOut => {
                    format!("no reply within {:?}", remaining.min(attempt_timeout))
                }
                // Not transient (permissions, a payload the server
                // refuses, a closed connection): retrying cannot help.
                Err(e) => return Err(anyhow::anyhow!("{command}: {e}").into()),
            };
            if attempt == attempts_max || tokio::time::Instant::now() >= deadline {
                break;
            }
            if !told {
                eprintln!("{command}: {why}; retrying until {timeout:?} have passed");
                told = true;
            }
            tokio::time::sleep(
                backoff.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
            )
            .await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
        if why.starts_with("no reply within") {
            // Said of the whole command, not of its last attempt.
            why = format!("no reply within {timeout:?}");
        }
        Err(CallError::NoReply {
            command: command.clone(),
            why,
            attempts: attempt,
            timeout,
        })
    }
}

/// ` (tried N times in T)` after several attempts, else nothing.
fn tried(attempts: u32, timeout: Duration) -> String {
    if attempts > 1 {
        format!(" (tried {attempts} times in {timeout:?})")
    } else {
        String::new()
    }
}

/// Where the CLI's NATS is, and how it signs in: `-s/--server` (or
/// `--nats-url`), else `$CAIRN_NATS_URL`, else `$NATS_URL`, else
/// `nats://127.0.0.1:4222`; `--creds FILE`, or `--user`/`--password`, or
/// credentials in the URL (used, never shown).
#[derive(Debug, Clone, Default)]
pub struct NatsTarget {
    /// Server URLs (a cluster's several).
    pub urls: Vec<String>,
    /// Where the URLs came from (`-s/--server`, `CAIRN_NATS_URL`, …).
    pub from: String,
    /// A credentials file (JWT and NKey seed).
    pub creds: Option<std::path::PathBuf>,
    /// User and password.
    pub user: Option<(String, String)>,
}

/// The default NATS URL of the client commands.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

impl NatsTarget {
    /// The target of `--server` values `servers` (none: the environment,
    /// then the default).
    pub fn resolve(
        servers: &[String],
        creds: Option<std::path::PathBuf>,
        user: Option<(String, String)>,
    ) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (urls, from) = if !servers.is_empty() {
            (servers.to_vec(), "-s/--server".to_owned())
        } else if let Some(url) = env("CAIRN_NATS_URL") {
            (split_urls(&url), "CAIRN_NATS_URL".to_owned())
        } else if let Some(url) = env("NATS_URL") {
            (split_urls(&url), "NATS_URL".to_owned())
        } else {
            (vec![DEFAULT_NATS_URL.to_owned()], "the default".to_owned())
        };
        Self {
            urls,
            from,
            creds,
            user,
        }
    }

    /// A target of one URL, as given (tests, benchmarks).
    pub fn url(url: &str) -> Self {
        Self {
            urls: split_urls(url),
            from: "-s/--server".to_owned(),
            ..Self::default()
        }
    }
}

fn split_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Connects to `target` within [`CONNECT_TIMEOUT`]. A failure says once
/// what was tried (URLs without credentials, and where they came from) and
/// how to point the CLI elsewhere.
pub async fn connect_async(target: &NatsTarget) -> anyhow::Result<async_nats::Client> {
    let (urls, in_url) = crate::node::split_credentials(&target.urls);
    let shown = urls.join(",");
    let options = match (&target.creds, &target.user, in_url) {
        (Some(creds), _, _) => async_nats::ConnectOptions::with_credentials_file(creds)
            .await
            .with_context(|| format!("--creds {}", creds.display()))?,
        (None, Some((user, password)), _) => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        (None, None, credentials) => crate::node::connect_options(credentials),
    };
    let hint = "point the CLI at a node's NATS with -s/--server URL, CAIRN_NATS_URL or NATS_URL";
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect(shown.as_str())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot connect to NATS at {shown} (from {}): {e}; {hint}",
            target.from
        )),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to NATS at {shown} (from {}): no answer within {CONNECT_TIMEOUT:?}; {hint}",
            target.from
        )),
    }
}

/// How long connecting to NATS may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoints that change state: their requests carry a
/// `Cairn-Request-Id`, so retrying them is safe.
pub const WRITE_ENDPOINTS: &[&str] = &[
    "repo.register",
    "repo.unregister",
    "repo.sync",
    "repo.update",
    "pkgrev.create",
    "pkgrev.update",
    "pkgrev.propose",
    "pkgrev.reject",
    "pkgrev.approve",
    "pkgrev.propose-delete",
    "pkgrev.withdraw-delete",
    "pkgrev.delete",
];

/// Attempts of one call at most (within its `--timeout`).
const CALL_ATTEMPTS_MAX: u32 = 20;
/// First pause between attempts; doubled after each, up to the max.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest pause between attempts.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long one attempt waits for its reply: a quarter of the command's
/// timeout, between 5 and 30 seconds (a node that died with the request
/// is retried soon; a retry of a command still running on the node waits
/// for it there and gets its answer).
fn attempt_timeout(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_secs(5), Duration::from_secs(30))
}

/// The JSON of `reply`, or the node's error as an error naming the code.
pub(crate) fn read_reply(subject: &str, reply: &async_nats::Message) -> Result<Value, CallError> {
    let value: Value =
        serde_json::from_slice(&reply.payload).with_context(|| format!("reply of {subject}"))?;
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        return Err(CallError::Node {
            code: code.to_string(),
            message: cli_words(value["message"].as_str().unwrap_or_default()),
        });
    }
    Ok(value)
}

/// A node's message as the CLI shows it: the NATS endpoints it names
/// (`(pkgrev.propose-delete)`) become the CLI commands that call them
/// (`(cairn pkg propose-delete)`).
pub fn cli_words(message: &str) -> String {
    let mut text = message.to_owned();
    let mut endpoints: Vec<&str> = WRITE_ENDPOINTS
        .iter()
        .chain(&[
            "repo.get",
            "repo.list",
            "pkgrev.get",
            "pkgrev.list",
            "pkgrev.resources",
        ])
        .copied()
        .collect();
    // Longest first: `pkgrev.propose-delete` before `pkgrev.propose`.
    endpoints.sort_by_key(|e| std::cmp::Reverse(e.len()));
    for endpoint in endpoints {
        let (area, verb) = endpoint.split_once('.').unwrap_or(("", endpoint));
        let command = match (area, verb) {
            ("pkgrev", "create") => "cairn pkg init".to_owned(),
            ("pkgrev", "update") => "cairn pkg push".to_owned(),
            ("pkgrev", "resources") => "cairn pkg pull".to_owned(),
            ("pkgrev", verb) => format!("cairn pkg {verb}"),
            (area, verb) => format!("cairn {area} {verb}"),
        };
        text = replace_word(&text, endpoint, &command);
    }
    text
}

/// `text` with each `word` not part of a longer name (next to a letter,
/// digit, `.`, `-` or `_`) replaced by `by`.
fn replace_word(text: &str, word: &str, by: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    let mut result = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        result.push_str(&rest[..at]);
        if before.is_some_and(is_name) || after.is_some_and(is_name) {
            result.push_str(word);
        } else {
            result.push_str(by);
        }
        rest = &rest[at + word.len()..];
    }
    result.push_str(rest);
    result
}

/// A revision's files: path → content.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Most `pkgrev.resources` pages [`Client::resources`] reads (64 GiB of
/// files at the default 1 MiB max payload).
pub const RESOURCE_PAGES_MAX: usize = 65_536;

impl Client {
    /// Every file of revision `namespace/name`: `pkgrev.resources` page
    /// after page, following `continue`, each page's pieces appended to
    /// their files ([`add_page`]).
    pub fn resources(&self, namespace: &str, name: &str) -> anyhow::Result<Files> {
        let mut files = Files::new();
        let mut body = json!({"namespace": namespace, "name": name});
        for _ in 0..RESOURCE_PAGES_MAX {
            let page = self.call("pkgrev.resources", &body)?;
            add_page(&mut files, &page)?;
            match page["continue"].as_str() {
                None => return Ok(files),
                Some(token) if body["continue"].as_str() == Some(token) => {
                    bail!(
                        "pkgrev.resources of {namespace}/{name}: the node sent the same page twice"
                    )
                }
                Some(token) => body["continue"] = token.into(),
            }
        }
        bail!("pkgrev.resources of {namespace}/{name}: more than {RESOURCE_PAGES_MAX} pages")
    }
}

/// Appends the files of one `pkgrev.resources` page to `files`: UTF-8
/// pieces from `resources`, base64 ones from `binary`. A file cut across
/// pages comes as one piece per page, in order, so appending rebuilds it.
pub fn add_page(files: &mut Files, page: &Value) -> anyhow::Result<()> {
    use base64::Engine as _;
    let text = page["resources"].as_object().into_iter().flatten();
    let binary = page["binary"].as_object().into_iter().flatten();
    for (path, piece) in text {
        let piece = piece
            .as_str()
            .with_context(|| format!("pkgrev.resources: {path:?} is not a string"))?;
        files
            .entry(path.clone())
            .or_default()
            .extend_from_slice(piece.as_bytes());
    }
    for (path, piece) in binary {
        let piece = piece
            .as_str()
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
            .with_context(|| format!("pkgrev.resources: {path:?} is not base64"))?;
        files.entry(path.clone()).or_default().extend(piece);
    }
    Ok(())
}

/// What a repository's events showed while a command about it ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// A sync started, with this trigger (`register`, `manual`, …).
    pub sync_started: Option<String>,
    /// Package revisions added so far.
    pub added: u64,
    /// … modified so far.
    pub modified: u64,
    /// … deleted so far.
    pub deleted: u64,
    /// The sync ended (`SyncSucceeded` or `SyncFailed`).
    pub sync_ended: bool,
    /// The repository was closed (unregistered).
    pub closed: bool,
}

impl Progress {
    /// `+A ~M -D` so far.
    pub fn counts(&self) -> String {
        format!("+{} ~{} -{}", self.added, self.modified, self.deleted)
    }
}

impl Client {
    /// Calls `endpoint` with `body`, a command about repository
    /// `namespace/name`, and shows on `progress` what the repository's
    /// events (`cairn.events.<ns>.<name>.>`, published as they commit)
    /// tell while it runs — once the call has taken `quiet_for` (so quick
    /// commands stay quiet): one line when a sync starts, the package
    /// revisions reconciled so far (a spinner on a terminal). Answers the
    /// call's outcome and what the events showed, also after a timeout.
    pub fn call_with_progress(
        &self,
        endpoint: &str,
        body: &Value,
        namespace: &str,
        name: &str,
        quiet_for: Duration,
        progress: &mut dyn Write,
    ) -> (Result<Value, CallError>, Progress) {
        use futures::StreamExt;
        use std::io::IsTerminal;

        let key = format!("{namespace}/{name}");
        use cairn_events::subject::{encode_token, EVENTS_PREFIX};
        let subject = format!(
            "{EVENTS_PREFIX}.{}.{}.>",
            encode_token(namespace),
            encode_token(name)
        );
        let spinner = indicatif::ProgressBar::new_spinner();
        if !std::io::stderr().is_terminal() {
            spinner.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut seen = Progress::default();
        let result = self.runtime.block_on(async {
            let mut events = match self.nats.subscribe(subject).await {
                Ok(events) => events,
                Err(e) => return Err(CallError::Other(e.into())),
            };
            self.nats
                .flush()
                .await
                .map_err(|e| CallError::Other(e.into()))?;
            let request = self.call_async(endpoint, body);
            tokio::pin!(request);
            let quiet = tokio::time::sleep(quiet_for);
            tokio::pin!(quiet);
            let mut loud = quiet_for.is_zero();
            let mut told_start = false;
            loop {
                if loud && !told_start {
                    if let Some(trigger) = &seen.sync_started {
                        let _ = writeln!(progress, "{key}: sync started ({trigger})");
                        told_start = true;
                    }
                }
                tokio::select! {
                    reply = &mut request => return reply,
                    _ = &mut quiet, if !loud => loud = true,
                    Some(message) = events.next() => {
                        let Ok(envelope) = cairn_events::envelope::decode(&message.payload) else { continue };
                        use cairn_events::{revision::Change, v1::event::Payload};
                        let Some(payload) = envelope.event.and_then(|e| e.payload) else { continue };
                        match &payload {
                            Payload::SyncStarted(s) => seen.sync_started = Some(s.trigger.clone()),
                            Payload::SyncSucceeded(_) | Payload::SyncFailed(_) => seen.sync_ended = true,
                            Payload::RepositoryClosed(_) => seen.closed = true,
                            _ => {}
                        }
                        match Change::of(&payload) {
                            Some(Change::Added(_)) => seen.added += 1,
                            Some(Change::Modified(_)) => seen.modified += 1,
                            Some(Change::Deleted { .. }) => seen.deleted += 1,
                            None => {}
                        }
                        spinner.set_message(format!("{key}: {}", seen.counts()));
                        spinner.tick();
                    }
                }
            }
        });
        spinner.finish_and_clear();
        (result, seen)
    }

    /// `repo.sync` with `wait`, showing the sync's progress on `progress`
    /// ([`Self::call_with_progress`], from the start) and then its counts.
    /// Answers the reply of `repo.sync`; a failed sync is an error, and so
    /// is a timeout, saying how far the sync got and what to run next.
    pub fn sync_with_progress(
        &self,
        namespace: &str,
        name: &str,
        principal: Option<&str>,
        progress: &mut dyn Write,
    ) -> anyhow::Result<Value> {
        let key = format!("{namespace}/{name}");
        let mut body = json!({"namespace": namespace, "name": name});
        if let Some(p) = principal {
            body["principal"] = p.into();
        }
        let (result, seen) = self.call_with_progress(
            "repo.sync",
            &body,
            namespace,
            name,
            Duration::ZERO,
            progress,
        );
        let reply = match result {
            Ok(reply) => reply,
            Err(CallError::NoReply { .. }) if seen.sync_started.is_some() => bail!(
                "no reply within {:?} (--timeout): the sync of {key} is still running ({} so far): follow it with `cairn repo get {key}`",
                self.timeout,
                seen.counts()
            ),
            Err(e @ CallError::NoReply { .. }) => bail!(
                "{e}: no sync of {key} started; check with `cairn repo get {key}`"
            ),
            Err(e) => return Err(e.into()),
        };
        let sync = &reply["sync"];
        if let Some(error) = sync.get("error") {
            bail!(
                "{}: {}",
                error["code"],
                error["message"].as_str().unwrap_or_default()
            );
        }
        writeln!(
            progress,
            "{key}: synced: {} added, {} modified, {} deleted; {} package revisions",
            sync["added"], sync["modified"], sync["deleted"], sync["package_count"]
        )?;
        Ok(reply)
    }
}

/// How a table shows objects.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// `(header, JSON pointer)` of each column.
    pub columns: &'a [(&'a str, &'a str)],
    /// Columns added by `-o wide`.
    pub wide: &'a [(&'a str, &'a str)],
    /// Print the header line.
    pub headers: bool,
    /// Start with a NAMESPACE column (a list of several namespaces).
    pub namespace: bool,
}

/// Prints `value` in `output`; tables show `columns` (`(header, json pointer)`)
/// for each item of `items` (or the value itself).
pub fn print(
    out: &mut dyn Write,
    output: Output,
    value: &Value,
    items: Option<&str>,
    columns: &[(&str, &str)],
) -> anyhow::Result<()> {
    show(
        out,
        output,
        value,
        items,
        View {
            columns,
            wide: &[],
            headers: true,
            namespace: false,
        },
    )
}

/// Prints `value` in `output` as `view` says (see [`print()`]).
pub fn show(
    out: &mut dyn Write,
    output: Output,
    value: &Value,
    items: Option<&str>,
    view: View<'_>,
) -> anyhow::Result<()> {
    let rows: Vec<&Value> = match items {
        Some(key) => value[key]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        None => vec![value],
    };
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Output::Yaml => write!(out, "{}", serde_yaml::to_string(value)?)?,
        Output::Name => {
            for row in rows {
                match (row["namespace"].as_str(), row["name"].as_str()) {
                    (Some(ns), Some(name)) => writeln!(out, "{ns}/{name}")?,
                    // `{"deleted": "ns/name"}`, `{"unregistered": …}`.
                    _ => {
                        if let Some(key) = row
                            .as_object()
                            .and_then(|o| o.values().next())
                            .and_then(Value::as_str)
                        {
                            writeln!(out, "{key}")?;
                        }
                    }
                }
            }
        }
        Output::Table | Output::Wide => {
            let mut columns: Vec<(&str, &str)> = Vec::new();
            if view.namespace && !view.columns.iter().any(|(h, _)| *h == "NAMESPACE") {
                columns.push(("NAMESPACE", "/namespace"));
            }
            columns.extend_from_slice(view.columns);
            if output == Output::Wide {
                columns.extend_from_slice(view.wide);
            }
            let columns = columns.as_slice();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|row| {
                    columns
                        .iter()
                        .map(|(_, pointer)| cell(row.pointer(pointer)))
                        .collect()
                })
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, (h, _))| {
                    cells
                        .iter()
                        .map(|r| r[i].len())
                        .chain([h.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |values: Vec<String>| {
                values
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            // No rows, no header (as kubectl): an empty list says so on
            // stderr instead.
            if view.headers && !cells.is_empty() {
                writeln!(
                    out,
                    "{}",
                    line(columns.iter().map(|(h, _)| (*h).to_owned()).collect())
                )?;
            }
            for row in cells {
                writeln!(out, "{}", line(row))?;
            }
        }
    }
    Ok(())
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// Columns of a repository table.
pub const REPO_COLUMNS: &[(&str, &str)] = &[
    ("NAMESPACE", "/namespace"),
    ("NAME", "/name"),
    ("TYPE", "/type"),
    ("URL", "/git/url"),
    ("BRANCH", "/git/branch"),
    ("DIRECTORY", "/git/directory"),
    ("READY", "/status/ready"),
    ("REASON", "/status/reason"),
    ("PACKAGES", "/status/package_count"),
    ("MESSAGE", "/status/message"),
];

/// Columns `-o wide` adds to a package revision table.
pub const PKG_WIDE_COLUMNS: &[(&str, &str)] = &[
    ("COMMIT", "/commit"),
    ("PUBLISHED BY", "/published_by"),
    ("PUBLISHED AT", "/published_at"),
];

/// Most pages a listing reads (5 million revisions at the default page
/// size).
pub const LIST_PAGES_MAX: usize = 10_000;

/// Columns `-o wide` adds to a repository table.
pub const REPO_WIDE_COLUMNS: &[(&str, &str)] = &[
    ("SCHEDULE", "/sync/schedule"),
    ("COMMIT", "/status/commit"),
    ("LAST SYNC", "/status/last_sync_at"),
    ("NEXT SYNC", "/status/next_sync_at"),
];

/// Columns of a package revision table.
pub const PKG_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("PATH", "/path"),
    ("PACKAGE", "/package"),
    ("WORKSPACE", "/workspace"),
    ("REVISION", "/revision"),
    ("LIFECYCLE", "/lifecycle"),
    ("LATEST", "/latest"),
    ("REPOSITORY", "/repository"),
];

/// What `pkg pull` leaves alone in its target directory: Git's own
/// (`pkg push` skips it too).
const PULL_KEEPS: &str = ".git";

/// Refuses a pull into `dir` when it holds anything (but `.git`) and
/// `force` was not given: pulled files would mix with stale ones, which
/// the next push would send.
pub fn check_pull_target(dir: &Path, force: bool) -> anyhow::Result<()> {
    if force || !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    if entries.any(|e| e.is_ok_and(|e| e.file_name() != PULL_KEEPS)) {
        bail!(
            "{} is not empty: pull into a new or empty directory, or pass --force to replace its contents",
            dir.display()
        );
    }
    Ok(())
}

/// Writes `files` into `dir` after [`check_pull_target`]; with `force`,
/// everything `dir` held (but `.git`) is removed first, once every path
/// was checked. Returns the number of files written.
pub fn replace_resources(dir: &Path, files: &Files, force: bool) -> anyhow::Result<usize> {
    check_pull_target(dir, force)?;
    check_resource_paths(dir, files)?;
    if force && dir.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            if entry.file_name() == PULL_KEEPS {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("removing {}", path.display()))?;
        }
    }
    write_resources(dir, files)
}

/// Refuses any of `files`' paths that would escape `dir`.
fn check_resource_paths(dir: &Path, files: &Files) -> anyhow::Result<()> {
    for path in files.keys() {
        let relative = Path::new(path);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "refusing resource path {path:?}: it would escape {}",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Whether a package file is a KRM resource file for a ResourceList (as
/// kpt and `porchctl rpkg pull` pick them: `Kptfile`, `*.yaml`, `*.yml`).
fn is_krm_file(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    file == "Kptfile" || file.ends_with(".yaml") || file.ends_with(".yml")
}

/// The package `files` as a kpt `ResourceList` (YAML), as `porchctl rpkg
/// pull` prints it: each YAML document of each KRM file (`Kptfile`,
/// `*.yaml`, `*.yml`, in path order) as an item annotated with its file
/// (`config.kubernetes.io/path`) and its place in it
/// (`config.kubernetes.io/index`), and the same under
/// `internal.config.kubernetes.io/`. Other files are not part of a
/// ResourceList (pull into a directory to get them).
pub fn resource_list(files: &Files) -> anyhow::Result<String> {
    use serde::Deserialize as _;
    use serde_yaml::{Mapping, Value as Yaml};
    let mut items = Vec::new();
    for (path, content) in files.iter().filter(|(p, _)| is_krm_file(p)) {
        let text = std::str::from_utf8(content)
            .with_context(|| format!("{path}: not UTF-8, so not a KRM file"))?;
        let mut index = 0usize;
        for document in serde_yaml::Deserializer::from_str(text) {
            let value =
                Yaml::deserialize(document).with_context(|| format!("{path}: not valid YAML"))?;
            let mut object = match value {
                Yaml::Null => continue,
                Yaml::Mapping(m) => m,
                _ => bail!(
                    "{path}: document {} is not a KRM object (a mapping)",
                    index + 1
                ),
            };
            let metadata = object
                .entry("metadata".into())
                .or_insert_with(|| Yaml::Mapping(Mapping::new()));
            let Yaml::Mapping(metadata) = metadata else {
                bail!("{path}: document {}: metadata is not a mapping", index + 1);
            };
            let annotations = metadata
                .entry("annotations".into())
                .or_insert_with(|| Yaml::Mapping(Mapping::new()));
            let Yaml::Mapping(annotations) = annotations else {
                bail!(
                    "{path}: document {}: metadata.annotations is not a mapping",
                    index + 1
                );
            };
            for prefix in ["config.kubernetes.io", "internal.config.kubernetes.io"] {
                annotations.insert(format!("{prefix}/index").into(), index.to_string().into());
                annotations.insert(format!("{prefix}/path").into(), path.clone().into());
            }
            items.push(Yaml::Mapping(object));
            index += 1;
        }
    }
    let mut list = Mapping::new();
    list.insert("apiVersion".into(), "config.kubernetes.io/v1".into());
    list.insert("kind".into(), "ResourceList".into());
    list.insert("items".into(), Yaml::Sequence(items));
    Ok(serde_yaml::to_string(&Yaml::Mapping(list))?)
}

/// Writes `files` into `dir` (created; files inside may not escape it).
/// Returns the number of files written.
pub fn write_resources(dir: &Path, files: &Files) -> anyhow::Result<usize> {
    check_resource_paths(dir, files)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (path, content) in files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)
            .with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(files.len())
}

/// The files below `dir` as request fields: path (relative, `/`-separated)
/// → UTF-8 content in the first map, base64 of any other content in the
/// second. Skips `.git`. A file name that is not UTF-8, a symlink or
/// anything but a regular file or directory is an error naming it.
pub fn read_resources(
    dir: &Path,
) -> anyhow::Result<(
    serde_json::Map<String, Value>,
    serde_json::Map<String, Value>,
)> {
    let mut text = serde_json::Map::new();
    let mut binary = serde_json::Map::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("reading {}", current.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", current.display()))?;
            let path = entry.path();
            let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                bail!(
                    "{}: the file name is not valid UTF-8 (resource paths must be)",
                    path.display()
                );
            };
            if file_name == ".git" {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            if !kind.is_file() {
                bail!("{}: not a regular file or directory", path.display());
            }
            let relative = path
                .strip_prefix(dir)
                .ok()
                .and_then(|p| p.to_str())
                .map(|p| p.replace(std::path::MAIN_SEPARATOR, "/"))
                .with_context(|| format!("{}: not below {}", path.display(), dir.display()))?;
            let content =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            match String::from_utf8(content) {
                Ok(s) => {
                    text.insert(relative, s.into());
                }
                Err(e) => {
                    use base64::Engine as _;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(e.into_bytes());
                    binary.insert(relative, encoded.into());
                }
            }
        }
    }
    Ok((text, binary))
}

/// The request body of `cairn repo register`.
#[allow(clippy::too_many_arguments)]
pub fn register_body(
    namespace: &str,
    name: &str,
    url: &str,
    branch: &str,
    directory: &str,
    create_branch: bool,
    secret_ref: Option<&str>,
    deployment: bool,
    wait: bool,
) -> Value {
    let mut git = json!({"url": url, "branch": branch, "directory": directory, "create_branch": create_branch});
    if let Some(secret) = secret_ref {
        git["secret_ref"] = json!(secret);
    }
    json!({"namespace": namespace, "name": name, "type": "git", "git": git, "deployment": deployment, "wait": wait})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_messages_name_cli_commands() {
        assert_eq!(
            cli_words("cannot delete r.p.ws: it is Published; propose its deletion first (pkgrev.propose-delete)"),
            "cannot delete r.p.ws: it is Published; propose its deletion first (cairn pkg propose-delete)"
        );
        assert_eq!(
            cli_words("see repo.sync and pkgrev.propose, not team.repo.sync-x"),
            "see cairn repo sync and cairn pkg propose, not team.repo.sync-x"
        );
    }

    #[test]
    fn a_resource_list_holds_each_krm_document_annotated_with_its_file() {
        let mut files = Files::new();
        files.insert(
            "Kptfile".into(),
            b"apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: app\n".to_vec(),
        );
        files.insert("README.md".into(), b"# app\n".to_vec());
        files.insert(
            "deploy/two.yaml".into(),
            b"kind: A\nmetadata:\n  name: a\n  annotations:\n    keep: 'yes'\n---\n---\nkind: B\n"
                .to_vec(),
        );
        let list: serde_yaml::Value =
            serde_yaml::from_str(&resource_list(&files).unwrap()).unwrap();
        let want: serde_yaml::Value = serde_yaml::from_str(
            r#"
apiVersion: config.kubernetes.io/v1
kind: ResourceList
items:
- apiVersion: kpt.dev/v1
  kind: Kptfile
  metadata:
    name: app
    annotations:
      config.kubernetes.io/index: '0'
      config.kubernetes.io/path: Kptfile
      internal.config.kubernetes.io/index: '0'
      internal.config.kubernetes.io/path: Kptfile
- kind: A
  metadata:
    name: a
    annotations:
      keep: 'yes'
      config.kubernetes.io/index: '0'
      config.kubernetes.io/path: deploy/two.yaml
      internal.config.kubernetes.io/index: '0'
      internal.config.kubernetes.io/path: deploy/two.yaml
- kind: B
  metadata:
    annotations:
      config.kubernetes.io/index: '1'
      config.kubernetes.io/path: deploy/two.yaml
      internal.config.kubernetes.io/index: '1'
      internal.config.kubernetes.io/path: deploy/two.yaml
"#,
        )
        .unwrap();
        assert_eq!(list, want);
        let mut bad = Files::new();
        bad.insert("list.yaml".into(), b"- 1\n".to_vec());
        assert_eq!(
            resource_list(&bad).unwrap_err().to_string(),
            "list.yaml: document 1 is not a KRM object (a mapping)"
        );
    }
}
