//! Porch conformance over NATS: every fixture in `shared/porch-testdata`,
//! unpacked with the real `tar`, served as `file://…/.git`, registered with
//! `cairn.v1.repo.register` on an in-process node and listed with
//! `cairn.v1.pkgrev.list` (following `continue`), must list exactly what
//! `EXPECTED.md` says: names, paths, packages, workspaces, revisions,
//! lifecycles, latest flags, publish info and task types — except the task
//! types, which follow Porch's `loadTasks` where EXPECTED.md lists a whole
//! history (see the README's Porch-parity notes).

use std::{collections::BTreeMap, path::Path, time::Duration};

use cairn_tests::{Client, GitFixture, TestNode};
use serde_json::{json, Value};
use tempfile::TempDir;

const NS: &str = "porch";
const P: &str = "Published";
const D: &str = "Draft";
const PORCH: &str = "porch@kpt.dev";

/// `("path/package", revision, workspace, lifecycle, latest,
/// Some((published_by, published_at)), task types)`. Times are written as
/// EXPECTED.md (and Kubernetes' metav1.Time) writes them: RFC 3339 with `Z`.
type Want = (
    &'static str,
    i64,
    &'static str,
    &'static str,
    bool,
    Option<(&'static str, &'static str)>,
    &'static [&'static str],
);

/// Unpacks `<fixture>.tar` (only `.git`) into a temp dir.
fn unpack(fixture: &str) -> TempDir {
    let dir = TempDir::new().unwrap();
    GitFixture::porch(fixture, dir.path());
    dir
}

fn url(dir: &Path) -> String {
    format!("file://{}/.git", dir.display())
}

/// A node started in-process on its own port and data directory, with a
/// client of its own whose requests may take two minutes (a first sync).
struct Cairn {
    node: TestNode,
    client: Client,
}

impl Cairn {
    async fn start() -> Cairn {
        let node = TestNode::start().await;
        let client = Client::connect(&node.nats_url)
            .await
            .with_timeout(Duration::from_secs(120));
        Cairn { node, client }
    }

    /// A request to `cairn.v1.<endpoint>` that must succeed; its JSON reply.
    async fn call(&self, endpoint: &str, body: Value) -> Value {
        match self.client.call(endpoint, body.clone()).await {
            Ok(value) => value,
            Err(e) => panic!("{endpoint} {body}: error reply {}", e.body),
        }
    }

    /// Registers `name` on `url` (waiting for the first sync); the reply.
    async fn register(&self, name: &str, url: &str, directory: &str, create: bool) -> Value {
        let git =
            json!({"url": url, "branch": "main", "directory": directory, "create_branch": create});
        let body = json!({"namespace": NS, "name": name, "git": git, "wait": true});
        self.call("repo.register", body).await
    }

    /// Every revision of repository `name`, in pages of 4.
    async fn list(&self, name: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut token = Value::Null;
        loop {
            let mut body = json!({"namespace": NS, "repository": name, "limit": 4});
            if !token.is_null() {
                body["continue"] = token;
            }
            let page = self.call("pkgrev.list", body).await;
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            token = page["continue"].clone();
            if token.is_null() {
                return items;
            }
        }
    }

    /// Registers `name` (which must become Ready) and lists it, by name.
    async fn load(&self, name: &str, url: &str, directory: &str) -> BTreeMap<String, Value> {
        let reply = self.register(name, url, directory, false).await;
        let status = &reply["status"];
        assert_eq!(
            (&status["ready"], &status["reason"]),
            (&json!(true), &json!("Ready")),
            "{name}: {reply}"
        );
        let mut got = BTreeMap::new();
        for item in self.list(name).await {
            assert_eq!(
                (&item["namespace"], &item["repository"]),
                (&json!(NS), &json!(name))
            );
            let key = item["name"].as_str().unwrap().to_owned();
            assert!(got.insert(key, item).is_none(), "{name}: listed twice");
        }
        got
    }

    /// [`Cairn::load`], and the listing must be exactly `want`.
    async fn check(&self, name: &str, url: &str, directory: &str, want: &[Want]) {
        compare(name, &self.load(name, url, directory).await, want);
    }

    /// `cairn.v1.repo.get`'s status of `name`.
    async fn status(&self, name: &str) -> Value {
        let repo = self
            .call("repo.get", json!({"namespace": NS, "name": name}))
            .await;
        repo["status"].clone()
    }
}

/// Asserts the listing of repository `name` is exactly `want`: every field
/// compared, differences reported per object name.
fn compare(name: &str, got: &BTreeMap<String, Value>, want: &[Want]) {
    let wanted: BTreeMap<String, Value> = want.iter().map(|w| expected(name, w)).collect();
    let mut diff = Vec::new();
    for key in wanted
        .keys()
        .chain(got.keys().filter(|k| !wanted.contains_key(*k)))
    {
        let (w, g) = (wanted.get(key), got.get(key).map(row_of));
        if w != g.as_ref() {
            diff.push(format!("{key}:\n  expected {w:?}\n  actual   {g:?}"));
        }
    }
    assert!(diff.is_empty(), "{name}:\n{}", diff.join("\n"));
    assert_eq!(got.len(), want.len(), "{name}: count");
}

/// The compared fields of a listed revision (tasks reduced to their types).
fn row_of(item: &Value) -> Value {
    let tasks: Vec<&Value> = item["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["type"])
        .collect();
    json!({
        "path": item["path"], "package": item["package"], "workspace": item["workspace"],
        "revision": item["revision"], "lifecycle": item["lifecycle"], "latest": item["latest"],
        "published_by": item["published_by"], "published_at": item["published_at"],
        "tasks": tasks,
    })
}

/// The object name and compared fields of a wanted row.
fn expected(repo: &str, w: &Want) -> (String, Value) {
    let &(full, revision, workspace, lifecycle, latest, publish, tasks) = w;
    let (path, package) = full.rsplit_once('/').unwrap_or(("", full));
    let name = if path.is_empty() {
        format!("{repo}.{package}.{workspace}")
    } else {
        format!("{repo}.{}.{package}.{workspace}", path.replace('/', "."))
    };
    let (by, at) = match publish {
        Some((by, at)) => (json!(by), json!(at)),
        None => (Value::Null, Value::Null),
    };
    let row = json!({
        "path": path, "package": package, "workspace": workspace, "revision": revision,
        "lifecycle": lifecycle, "latest": latest, "published_by": by, "published_at": at,
        "tasks": tasks,
    });
    (name, row)
}

#[rustfmt::skip]
const SIMPLE: [Want; 8] = [
    ("empty", 1, "v1", P, true, Some((PORCH, "2022-03-17T04:37:42Z")), &[]),
    ("empty", -1, "main", P, false, None, &[]),
    ("basens", 1, "v1", P, false, Some((PORCH, "2022-03-17T04:44:01Z")), &[]),
    ("basens", 2, "v2", P, true, Some((PORCH, "2022-03-17T04:47:57Z")), &[]),
    ("basens", -1, "main", P, false, None, &[]),
    ("istions", 1, "v1", P, false, Some((PORCH, "2022-03-17T04:44:14Z")), &[]),
    ("istions", 2, "v2", P, true, Some((PORCH, "2022-03-17T04:48:08Z")), &[]),
    ("istions", -1, "main", P, false, None, &[]),
];

#[rustfmt::skip]
const DRAFTS: [Want; 3] = [
    ("bucket", 0, "v1", D, false, None, &[]),
    ("none", 0, "v1", D, false, None, &[]),
    // EXPECTED.md lists init, eval, patch, eval: Porch's loadTasks keeps
    // only the creating task (its TestApproveDraftWithHistory asserts one).
    ("pkg-with-history", 0, "v1", D, false, None, &["init"]),
];

#[rustfmt::skip]
/// `catalog/gcp` as seen from the root (the gcp listing strips the prefix).
const NESTED_GCP: [Want; 5] = [
    ("catalog/gcp/cloud-sql", 0, "v1", D, false, None, &[]),
    ("catalog/gcp/spanner", 0, "v1", D, false, None, &[]),
    ("catalog/gcp/bucket", 0, "v2", D, false, None, &[]),
    ("catalog/gcp/bucket", 1, "v1", P, true, Some((PORCH, "2022-04-16T03:54:19Z")), &[]),
    ("catalog/gcp/bucket", -1, "main", P, false, None, &[]),
];

#[rustfmt::skip]
const NESTED_REST: [Want; 13] = [
    ("sample", 1, "v1", P, false, Some((PORCH, "2022-04-16T03:36:00Z")), &[]),
    ("sample", 2, "v2", P, true, Some((PORCH, "2022-04-16T03:56:38Z")), &[]),
    ("sample", -1, "main", P, false, None, &[]),
    ("catalog/empty", 1, "v1", P, true, Some((PORCH, "2022-04-16T03:38:14Z")), &[]),
    ("catalog/empty", -1, "main", P, false, None, &[]),
    ("catalog/namespace/basens", 1, "v1", P, false, Some((PORCH, "2022-04-16T03:39:35Z")), &[]),
    ("catalog/namespace/basens", 2, "v2", P, false, Some((PORCH, "2022-04-16T03:42:24Z")), &[]),
    ("catalog/namespace/basens", 3, "v3", P, true, Some((PORCH, "2022-04-16T03:47:51Z")), &[]),
    ("catalog/namespace/basens", -1, "main", P, false, None, &[]),
    ("catalog/namespace/istions", 1, "v1", P, false, Some((PORCH, "2022-04-16T03:40:08Z")), &[]),
    ("catalog/namespace/istions", 2, "v2", P, false, Some((PORCH, "2022-04-16T03:43:10Z")), &[]),
    ("catalog/namespace/istions", 3, "v3", P, true, Some((PORCH, "2022-04-16T03:47:38Z")), &[]),
    ("catalog/namespace/istions", -1, "main", P, false, None, &[]),
];

const WITH_ANNO: Option<(&str, &str)> =
    Some(("pkg-with-anno-author@example.com", "2022-08-26T22:47:35Z"));

#[rustfmt::skip]
const PUBLISHINFO: [Want; 6] = [
    ("pkg-with-anno", 1, "v1", P, true, WITH_ANNO, &["init"]),
    // A placeholder has no task history (Porch's Git listing).
    ("pkg-with-anno", -1, "main", P, false, WITH_ANNO, &[]),
    (
        "pkg-without-anno", 1, "v1", P, true,
        Some(("pkg-without-anno-author@example.com", "2022-08-26T22:49:59Z")), &[],
    ),
    ("pkg-without-anno", -1, "main", P, false, None, &[]),
    ("some-pkg", -1, "main", P, false, None, &[]),
    ("draft-pkg", 0, "v1", D, false, None, &["init"]),
];

#[rustfmt::skip]
const MANUAL_TAGGED: [Want; 3] = [
    ("pkg", -1, "main", P, false, Some((PORCH, "2025-03-06T12:49:11Z")), &[]),
    ("pkg", 1, "v1", P, false, Some((PORCH, "2025-03-06T12:49:11Z")), &["init"]),
    ("pkg", 2, "v2", P, true, Some((PORCH, "2025-03-06T12:49:50Z")), &[]),
];

#[rustfmt::skip]
/// `blueprint` as seen from the root (the scoped listing strips the prefix).
const BLUEPRINT: [Want; 7] = [
    // The placeholder takes the newest commit annotated for the package (the
    // v3 one, which has no "revision"), as Porch's findLatestPackageCommit;
    // placeholders have no task history.
    ("blueprint/bp1", -1, "main", P, false, Some((PORCH, "2025-03-07T12:50:47Z")), &[]),
    ("blueprint/bp1", 1, "v1", P, false, Some((PORCH, "2025-03-07T12:44:39Z")), &["init"]),
    ("blueprint/bp1", 2, "v2", P, false, Some((PORCH, "2025-03-07T12:49:31Z")), &[]),
    // Only an eval is annotated for v3: no task creates a revision.
    ("blueprint/bp1", 3, "v3", P, true, Some((PORCH, "2025-03-07T12:50:47Z")), &[]),
    ("blueprint/bp2", -1, "main", P, false, Some((PORCH, "2025-03-07T15:09:01Z")), &[]),
    ("blueprint/bp2", 1, "v1", P, false, Some((PORCH, "2025-03-07T12:45:34Z")), &["init"]),
    ("blueprint/bp2", 2, "v2", P, true, Some((PORCH, "2025-03-07T15:09:01Z")), &["edit"]),
];

#[rustfmt::skip]
const BLUEPRINT2: [Want; 2] = [
    ("blueprint2/bp10", 1, "v1", P, true, Some((PORCH, "2025-03-07T15:12:03Z")), &[]),
    ("blueprint2/bp10", -1, "main", P, false, None, &[]),
];

/// `rows` with the leading `prefix/` removed from their paths.
fn strip(prefix: &str, rows: &[Want]) -> Vec<Want> {
    let prefix = format!("{prefix}/");
    rows.iter()
        .map(|w| {
            let mut w = *w;
            w.0 = w.0.strip_prefix(prefix.as_str()).unwrap();
            w
        })
        .collect()
}

#[actix_rt::test]
async fn trivial_repository() {
    let cairn = Cairn::start().await;
    let up = unpack("trivial-repository");
    cairn.check("trivial", &url(up.path()), "/", &[]).await;
    cairn.node.shutdown().await;
}

#[actix_rt::test]
async fn empty_repository() {
    let cairn = Cairn::start().await;
    // Without create_branch: the reply comes back, the repository is in error.
    let up = unpack("empty-repository");
    let reply = cairn.register("empty", &url(up.path()), "/", false).await;
    let status = cairn.status("empty").await;
    assert_eq!(reply["status"], status, "{reply}");
    assert_eq!(
        (&status["ready"], &status["reason"]),
        (&json!(false), &json!("Error")),
        "{status}"
    );
    let message = "branch \"main\" does not exist upstream";
    assert_eq!(status["message"], json!(message), "{status}");
    assert_eq!(
        reply["sync"],
        json!({"error": {"code": 404, "message": message}})
    );
    assert_eq!(cairn.list("empty").await, Vec::<Value>::new());

    // With create_branch, on a bare copy: the branch is created, Ready.
    let bare = unpack("empty-repository");
    GitFixture::open(bare.path()).into_bare();
    let reply = cairn
        .register("created", &url(bare.path()), "/", true)
        .await;
    assert_eq!(
        (&reply["status"]["ready"], &reply["status"]["reason"]),
        (&json!(true), &json!("Ready")),
        "{reply}"
    );
    assert_eq!(cairn.status("created").await, reply["status"]);
    assert_eq!(cairn.list("created").await, Vec::<Value>::new());
    cairn.node.shutdown().await;
}

#[actix_rt::test]
async fn simple_repository() {
    let cairn = Cairn::start().await;
    let up = unpack("simple-repository");
    let got = cairn.load("simple", &url(up.path()), "/").await;
    // get answers the same object as list, plus its lock; resources hold
    // the Kptfile.
    let key = json!({"namespace": NS, "name": "simple.basens.v1"});
    let mut one = cairn.call("pkgrev.get", key.clone()).await;
    let lock = one.as_object_mut().unwrap().remove("lock").unwrap();
    assert_eq!(lock["git"]["ref"], "basens/v1");
    assert_eq!(one, got["simple.basens.v1"]);
    let resources = cairn.call("pkgrev.resources", key).await;
    let kptfile = resources["resources"]["Kptfile"]
        .as_str()
        .unwrap_or_default();
    assert!(kptfile.contains("kind: Kptfile"), "{resources}");
    compare("simple", &got, &SIMPLE);
    cairn.node.shutdown().await;
}

#[actix_rt::test]
async fn drafts_repository() {
    let cairn = Cairn::start().await;
    let up = unpack("drafts-repository");
    let want = [&SIMPLE[..], &DRAFTS[..]].concat();
    cairn.check("drafts", &url(up.path()), "/", &want).await;
    cairn.node.shutdown().await;
}

#[actix_rt::test]
async fn nested_repository() {
    let cairn = Cairn::start().await;
    let up = unpack("nested-repository");
    let url = url(up.path());
    let whole = [&NESTED_GCP[..], &NESTED_REST[..]].concat();
    cairn.check("nested", &url, "/", &whole).await;
    let gcp = strip("catalog/gcp", &NESTED_GCP);
    cairn.check("gcp", &url, "catalog/gcp", &gcp).await;
    cairn.check("nonexistent", &url, "nonexistent", &[]).await;
    cairn.node.shutdown().await;
}

#[actix_rt::test]
async fn publishinfo_repository() {
    let cairn = Cairn::start().await;
    let up = unpack("publishinfo-repository");
    cairn
        .check("publishinfo", &url(up.path()), "/", &PUBLISHINFO)
        .await;
    cairn.node.shutdown().await;
}

#[actix_rt::test]
async fn manual_tagged_repository() {
    let cairn = Cairn::start().await;
    let up = unpack("manual-tagged-repository");
    cairn
        .check("manual", &url(up.path()), "/", &MANUAL_TAGGED)
        .await;
    cairn.node.shutdown().await;
}

#[actix_rt::test]
async fn nested_repository_with_invalid_kpt_annotation() {
    let cairn = Cairn::start().await;
    let up = unpack("nested-repository-with-invalid-kpt-annotation");
    let url = url(up.path());
    let scoped = strip("blueprint", &BLUEPRINT);
    cairn.check("blueprint", &url, "blueprint", &scoped).await;
    let whole = [&BLUEPRINT[..], &BLUEPRINT2[..]].concat();
    cairn.check("whole", &url, "/", &whole).await;
    cairn.node.shutdown().await;
}
