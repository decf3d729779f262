//! The `cairn` CLI as Porch and kubectl users expect it, the real binary
//! against a real node: one name form everywhere, kubectl's list flags,
//! the NATS connection found by flag or environment, porchctl's verbs,
//! completions and manual pages, help and flag errors, the log table,
//! plain-text node logs off a terminal.

use std::path::Path;

use cairn_tests::{
    cairn_cli, read_line_matching, Account, ChildGuard, CliOutput, ClosedPort, GitFixture,
    NatsServer, NatsServerConfig, TestDir, TestNode, TestNodeBuilder, WAIT,
};
use serde_json::{json, Value};

/// A repository of three packages on main, their Kptfiles labelled:
/// `apps/web` (tier=base, env=prod), `apps/db` (tier=data), `apps/old`
/// (legacy=true).
fn labelled_upstream(dir: &Path) -> String {
    let work = GitFixture::init(&dir.join("work"), "main");
    let kptfile = |name: &str, labels: &str| {
        format!(
            "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: {name}\n  labels:\n{labels}"
        )
    };
    work.write(
        "apps/web/Kptfile",
        kptfile("web", "    tier: base\n    env: prod\n"),
    )
    .write("apps/db/Kptfile", kptfile("db", "    tier: data\n"))
    .write("apps/old/Kptfile", kptfile("old", "    legacy: \"true\"\n"))
    .commit("three packages");
    work.clone_bare(&dir.join("up.git")).url()
}

async fn start(dir: &Path) -> TestNode {
    TestNodeBuilder::in_dir(&dir.join("data")).start().await
}

async fn register(node: &TestNode, namespace: &str, name: &str, url: &str) {
    node.client()
        .ok(
            "repo.register",
            json!({"namespace": namespace, "name": name, "git": {"url": url}}),
        )
        .await;
}

/// Runs the CLI with `args` then `-s <nats>`, without the NATS and
/// namespace variables of the test's environment.
async fn cli(nats: &str, args: &[&str]) -> CliOutput {
    cli_env(nats, args, &[]).await
}

async fn cli_env(nats: &str, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    cairn_cli!()
        .run_env(
            args.iter().copied().chain(["-s", nats]),
            env,
            &["CAIRN_NATS_URL", "NATS_URL", "CAIRN_NAMESPACE"],
        )
        .await
}

/// Its stdout, once it succeeded.
fn ok(out: CliOutput) -> String {
    assert!(out.success, "failed: {}\n{}", out.stderr, out.stdout);
    out.stdout
}

fn json_of(out: CliOutput) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// Every argument that names a repository or a package revision takes
/// `NS/NAME` or a bare name in -n's namespace (or $CAIRN_NAMESPACE's):
/// positional names, `--repository`, `--clone-from`, `log --stream`.
#[actix_rt::test]
async fn names_take_one_form_everywhere() {
    let dir = TestDir::new();
    let url = labelled_upstream(dir.path());
    let node = start(dir.path()).await;
    register(&node, "team-a", "r", &url).await;
    register(&node, "team-b", "r", &url).await;
    let nats = node.nats_url.clone();

    // log --stream: a repository's events, however it is named.
    let by_key = ok(cli(&nats, &["log", "-o", "json", "--stream", "team-a/r"]).await);
    let events: Vec<Value> = by_key
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!events.is_empty(), "the repository's events");
    assert!(
        events.iter().all(|e| e["stream"] == "repo/team-a/r"),
        "{by_key}"
    );
    let (_, all) = node.client().events_after("r", 0).await;
    assert_eq!(events.len(), all.len(), "all of them");
    for args in [
        vec!["log", "-o", "json", "--stream", "repo/team-a/r"],
        vec!["log", "-o", "json", "--stream", "r", "-n", "team-a"],
    ] {
        assert_eq!(ok(cli(&nats, &args).await), by_key, "{args:?}");
    }
    let from_env = cli_env(
        &nats,
        &["log", "-o", "json", "--stream", "r"],
        &[("CAIRN_NAMESPACE", "team-a")],
    )
    .await;
    assert_eq!(ok(from_env), by_key);
    let none = cli(&nats, &["log", "--stream", "team-a/nope"]).await;
    assert_eq!(
        (none.success, none.stdout.as_str(), none.stderr.as_str()),
        (
            true,
            "",
            "no events in stream repo/team-a/nope from seq 1\n"
        )
    );

    // Positional names and --repository.
    let got = json_of(
        cli(
            &nats,
            &[
                "pkg",
                "get",
                "r.apps.web.main",
                "-n",
                "team-b",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(got["namespace"], "team-b");
    assert_eq!(
        ok(cli(
            &nats,
            &["pkg", "list", "--repository", "team-b/r", "-o", "name"]
        )
        .await),
        "team-b/r.apps.db.main\nteam-b/r.apps.old.main\nteam-b/r.apps.web.main\n"
    );

    // --clone-from, in the repository's namespace; another is refused.
    // (A clone's source is a published revision, not a placeholder.)
    for ns in ["team-a", "team-b"] {
        let client = node.client();
        client
            .ok("pkgrev.create", json!({"namespace": ns, "repository": "r", "path": "apps", "package": "base", "workspace": "v1"}))
            .await;
        let key = json!({"namespace": ns, "name": "r.apps.base.v1"});
        client.ok("pkgrev.propose", key.clone()).await;
        client.ok("pkgrev.approve", key).await;
    }
    let draft = json_of(
        cli(
            &nats,
            &[
                "pkg",
                "init",
                "team-a/r",
                "apps/copy",
                "--clone-from",
                "team-a/r.apps.base.v1",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(
        (&draft["name"], &draft["namespace"], &draft["lifecycle"]),
        (&json!("r.apps.copy.v1"), &json!("team-a"), &json!("Draft"))
    );
    let other = cli(
        &nats,
        &[
            "pkg",
            "init",
            "team-a/r",
            "apps/x",
            "--clone-from",
            "team-b/r.apps.base.v1",
        ],
    )
    .await;
    assert_eq!(
        (other.success, other.stderr.as_str()),
        (
            false,
            "error: --clone-from team-b/r.apps.base.v1: in namespace team-b, but the draft is created in team-a (cairn clones within one namespace)\n"
        )
    );
    node.shutdown().await;
}

/// `pkg list` as kubectl lists: -n's namespace by default, -A with a
/// NAMESPACE column, -l selectors (=, !=, in, notin, exists, !exists),
/// --lifecycle in any case and comma-separated, -o name|wide,
/// --no-headers, `pkg get` without a name, and an empty list that says so.
#[actix_rt::test]
async fn lists_take_kubectl_flags() {
    let dir = TestDir::new();
    let url = labelled_upstream(dir.path());
    let node = start(dir.path()).await;
    register(&node, "team-a", "r", &url).await;
    register(&node, "team-b", "r", &url).await;
    let nats = node.nats_url.clone();
    let names = |ns: &str, packages: &[&str]| -> String {
        packages
            .iter()
            .map(|p| format!("{ns}/r.apps.{p}.main\n"))
            .collect()
    };

    let all = ok(cli(&nats, &["pkg", "list", "-A", "-o", "name"]).await);
    assert_eq!(
        all,
        names("team-a", &["db", "old", "web"]) + &names("team-b", &["db", "old", "web"])
    );
    let table = ok(cli(&nats, &["pkg", "list", "-A"]).await);
    assert!(
        lines(&table)[0].starts_with("NAMESPACE  NAME             PATH  PACKAGE"),
        "{table}"
    );
    assert!(
        lines(&table)[6].starts_with("team-b     r.apps.web.main  apps  web"),
        "{table}"
    );
    let bare = ok(cli(&nats, &["pkg", "list", "-n", "team-a", "--no-headers"]).await);
    assert_eq!(lines(&bare).len(), 3);
    assert!(
        lines(&bare)[0].starts_with("r.apps.db.main   apps  db "),
        "{bare}"
    );
    let wide = ok(cli(&nats, &["pkg", "list", "-n", "team-a", "-o", "wide"]).await);
    assert!(
        lines(&wide)[0].ends_with(
            "REPOSITORY  COMMIT                                    PUBLISHED BY  PUBLISHED AT"
        ),
        "{wide}"
    );
    assert_eq!(
        ok(cli(&nats, &["pkg", "get", "-n", "team-a", "-o", "name"]).await),
        names("team-a", &["db", "old", "web"]),
        "get without a name lists"
    );

    for (selector, packages) in [
        (vec!["-l", "tier=base"], vec!["web"]),
        (vec!["-l", "tier!=base"], vec!["db", "old"]),
        (vec!["-l", "tier in (base, data)"], vec!["db", "web"]),
        (vec!["-l", "tier notin (base)"], vec!["db", "old"]),
        (vec!["-l", "!legacy"], vec!["db", "web"]),
        (vec!["-l", "legacy"], vec!["old"]),
        (vec!["-l", "tier", "-l", "env=prod"], vec!["web"]),
    ] {
        let args: Vec<&str> = ["pkg", "list", "-n", "team-a", "-o", "name"]
            .into_iter()
            .chain(selector.iter().copied())
            .collect();
        assert_eq!(
            ok(cli(&nats, &args).await),
            names("team-a", &packages),
            "{selector:?}"
        );
    }

    // The default namespace holds nothing: said on stderr.
    let empty = cli(&nats, &["pkg", "list"]).await;
    assert_eq!(
        (empty.success, empty.stdout.as_str(), empty.stderr.as_str()),
        (
            true,
            "",
            "No package revisions found in namespace default.\n"
        )
    );

    ok(cli(&nats, &["pkg", "init", "team-a/r", "apps/new"]).await);
    assert_eq!(
        ok(cli(
            &nats,
            &[
                "pkg",
                "list",
                "-n",
                "team-a",
                "--lifecycle",
                "draft",
                "-o",
                "name"
            ]
        )
        .await),
        "team-a/r.apps.new.v1\n"
    );
    assert_eq!(
        ok(cli(
            &nats,
            &[
                "pkg",
                "list",
                "-n",
                "team-a",
                "--lifecycle",
                "DRAFT,published",
                "-o",
                "name"
            ]
        )
        .await)
        .lines()
        .count(),
        4
    );
    node.shutdown().await;
}

/// The NATS connection: -s/--server anywhere (or --nats-url), else
/// $CAIRN_NATS_URL, else $NATS_URL; credentials by --user/--password or
/// in the URL; a failure said once, naming what was tried, where it came
/// from and how to point the CLI elsewhere.
#[actix_rt::test]
async fn the_cli_finds_its_nats_by_flag_then_environment_and_says_what_it_tried() {
    let dir = TestDir::new();
    let url = labelled_upstream(dir.path());
    let server = NatsServer::with_config(
        NatsServerConfig::new()
            .account(
                Account::new("CAIRN")
                    .jetstream()
                    .user("cairn", "cairn-secret")
                    .export_service("cairn.v1.>"),
            )
            .account(
                Account::new("TEAM")
                    .user("alice", "alice-secret")
                    .import_service("CAIRN", "cairn.v1.>", true),
            ),
    );
    let node = TestNodeBuilder::in_dir(&dir.path().join("data"))
        .configure(|c| c.nats.urls = vec![server.url_as("cairn", "cairn-secret")])
        .start()
        .await;
    register(&node, "team-a", "r", &url).await;
    let plain = server.url();
    let alice = server.url_as("alice", "alice-secret");
    let unset = ["CAIRN_NATS_URL", "NATS_URL", "CAIRN_NAMESPACE"];
    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cairn_cli!().run_env(&args, &env, &unset).await
    };
    let listed = "team-a/r\n";
    // -s before the area, credentials by flag.
    let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let out = run(
        args(&[
            "-s",
            &plain,
            "--user",
            "alice",
            "--password",
            "alice-secret",
            "repo",
            "list",
            "-A",
            "-o",
            "name",
        ]),
        vec![],
    )
    .await;
    assert_eq!(ok(out), listed);
    // The environment, credentials in the URL.
    for var in ["CAIRN_NATS_URL", "NATS_URL"] {
        let out = run(
            args(&["repo", "list", "-A", "-o", "name"]),
            vec![(var, alice.clone())],
        )
        .await;
        assert_eq!(ok(out), listed, "{var}");
    }
    // CAIRN_NATS_URL before NATS_URL; the flag before both.
    let closed = ClosedPort::bind();
    let nowhere = format!("nats://127.0.0.1:{}", closed.port());
    let out = run(
        args(&["repo", "list", "-A", "-o", "name"]),
        vec![
            ("CAIRN_NATS_URL", alice.clone()),
            ("NATS_URL", nowhere.clone()),
        ],
    )
    .await;
    assert_eq!(ok(out), listed);
    let out = run(
        args(&["repo", "list", "-A", "-o", "name", "--nats-url", &alice]),
        vec![("CAIRN_NATS_URL", nowhere.clone())],
    )
    .await;
    assert_eq!(ok(out), listed, "--nats-url: a hidden alias of -s");

    let hint =
        "; point the CLI at a node's NATS with -s/--server URL, CAIRN_NATS_URL or NATS_URL\n";
    for (argv, env, from) in [
        (
            args(&["repo", "list", "-s", &nowhere]),
            vec![],
            "-s/--server",
        ),
        (
            args(&["pkg", "list"]),
            vec![("CAIRN_NATS_URL", nowhere.clone())],
            "CAIRN_NATS_URL",
        ),
        (
            args(&["log"]),
            vec![("NATS_URL", nowhere.clone())],
            "NATS_URL",
        ),
        (args(&["repo", "list", "-s", &plain]), vec![], "-s/--server"),
    ] {
        let out = run(argv.clone(), env).await;
        assert!(!out.success, "{argv:?}");
        let shown = if argv.contains(&plain) {
            &plain
        } else {
            &nowhere
        };
        let prefix = format!("error: cannot connect to NATS at {shown} (from {from}): ");
        // `log` can also read a stopped node's data directory.
        let hint = if argv[0] == "log" {
            hint.replace('\n', " (or read a stopped node's --data-dir)\n")
        } else {
            hint.to_owned()
        };
        assert!(
            out.stderr.starts_with(&prefix)
                && out.stderr.ends_with(&hint)
                && out.stderr.lines().count() == 1,
            "{argv:?}: {}",
            out.stderr
        );
    }
    let out = run(
        args(&[
            "repo",
            "list",
            "--creds",
            "/nonexistent.creds",
            "-s",
            &plain,
        ]),
        vec![],
    )
    .await;
    assert!(
        !out.success
            && out
                .stderr
                .starts_with("error: --creds /nonexistent.creds: "),
        "{}",
        out.stderr
    );
    node.shutdown().await;
    drop(server);
}

/// porchctl's habits: aliases (`reg`, `unreg`, `get` to list, `del`),
/// `init` without -w takes v1, `copy`, `clone`, several names per
/// transition, `reject` of a DeletionProposed revision withdraws it,
/// errors that name CLI commands, workspace names checked like every
/// other name, `repo sync --all` and `--run-once`.
#[actix_rt::test]
async fn porchctl_habits_work() {
    let dir = TestDir::new();
    let url = labelled_upstream(dir.path());
    let node = start(dir.path()).await;
    let nats = node.nats_url.clone();
    let registered = ok(cli(
        &nats,
        &["repo", "reg", "team-a/r", "--url", &url, "-o", "name"],
    )
    .await);
    assert_eq!(registered, "team-a/r\n");
    assert_eq!(
        ok(cli(&nats, &["repo", "get", "-n", "team-a", "-o", "name"]).await),
        "team-a/r\n",
        "repo get without a name lists"
    );

    // init without -w: v1; two drafts proposed and approved at once.
    for package in ["apps/new", "apps/two"] {
        ok(cli(&nats, &["pkg", "init", "r", package, "-n", "team-a"]).await);
    }
    let drafts = ["team-a/r.apps.new.v1", "team-a/r.apps.two.v1"];
    for verb in ["propose", "approve"] {
        let args: Vec<&str> = ["pkg", verb].into_iter().chain(drafts).collect();
        let out = ok(cli(&nats, &args).await);
        assert_eq!(lines(&out).len(), 3, "a header and two rows: {out}");
    }
    let published = json_of(cli(&nats, &["pkg", "get", drafts[0], "-o", "json"]).await);
    assert_eq!(
        (&published["lifecycle"], &published["revision"]),
        (&json!("Published"), &json!(1))
    );

    // copy: a new draft of the same package; clone: a new package.
    let copy = json_of(cli(&nats, &["pkg", "copy", drafts[0], "-w", "v2", "-o", "json"]).await);
    assert_eq!(
        (
            &copy["name"],
            &copy["package"],
            &copy["path"],
            &copy["lifecycle"]
        ),
        (
            &json!("r.apps.new.v2"),
            &json!("new"),
            &json!("apps"),
            &json!("Draft")
        )
    );
    let clone = json_of(
        cli(
            &nats,
            &[
                "pkg",
                "clone",
                drafts[0],
                "apps/cloned",
                "--repository",
                "team-a/r",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(
        (&clone["name"], &clone["lifecycle"]),
        (&json!("r.apps.cloned.v1"), &json!("Draft"))
    );
    assert_eq!(
        ok(cli(
            &nats,
            &[
                "pkg",
                "del",
                "team-a/r.apps.new.v2",
                "team-a/r.apps.cloned.v1"
            ]
        )
        .await),
        "deleted team-a/r.apps.new.v2\ndeleted team-a/r.apps.cloned.v1\n"
    );

    // Errors name CLI commands, not NATS endpoints.
    let refused = cli(&nats, &["pkg", "delete", drafts[0]]).await;
    assert!(!refused.success);
    assert_eq!(
        refused.stderr,
        "error: 409: cannot delete r.apps.new.v1: it is Published; propose its deletion first (cairn pkg propose-delete)\n"
    );
    // Several names: each tried, the failures named, exit 1.
    let mixed = cli(
        &nats,
        &["pkg", "propose", drafts[0], "team-a/r.apps.nope.v1"],
    )
    .await;
    assert!(!mixed.success);
    assert!(
        mixed
            .stderr
            .starts_with("error: 2 of 2 failed:\nteam-a/r.apps.new.v1: 409: "),
        "{}",
        mixed.stderr
    );

    // reject of a deletion proposal withdraws it.
    ok(cli(&nats, &["pkg", "propose-delete", drafts[1]]).await);
    let rejected = cli(&nats, &["pkg", "reject", drafts[1], "-o", "json"]).await;
    assert_eq!(
        rejected.stderr,
        "team-a/r.apps.two.v1 is DeletionProposed: withdrawing its deletion proposal (as `cairn pkg withdraw-delete team-a/r.apps.two.v1`)\n"
    );
    assert_eq!(json_of(rejected)["lifecycle"], "Published");

    // Workspace names: checked as the node checks them, by the flag.
    let bad = cli(&nats, &["pkg", "init", "team-a/r", "apps/bad", "-w", "V_1"]).await;
    assert!(!bad.success);
    assert!(
        bad.stderr.starts_with("error: invalid value 'V_1' for '--workspace <WORKSPACE>': \"V_1\" is not a valid workspace name (lowercase letters, digits, '.' and '-'"),
        "{}",
        bad.stderr
    );
    let error = node
        .client()
        .call(
            "pkgrev.create",
            json!({"namespace": "team-a", "repository": "r", "package": "bad", "workspace": "V_1"}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.body["message"].as_str().unwrap()),
        (
            400,
            "workspace: \"V_1\" is not a valid workspace name (lowercase letters, digits, '.' and '-', 1-253 characters, starting and ending with a letter or digit)"
        )
    );

    // repo sync --all; --run-once: one sync later, the schedule kept.
    let synced = cli(&nats, &["repo", "sync", "--all", "-n", "team-a"]).await;
    assert!(synced.success, "{}", synced.stderr);
    assert!(
        synced.stderr.starts_with("sync of team-a/r requested;"),
        "{}",
        synced.stderr
    );
    let before = time::OffsetDateTime::now_utc();
    let later = json_of(
        cli(
            &nats,
            &["repo", "sync", "team-a/r", "--run-once", "1m", "-o", "json"],
        )
        .await,
    );
    let at = time::OffsetDateTime::parse(
        later["sync"]["run_once_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let after = time::OffsetDateTime::now_utc();
    assert!(
        at >= before + time::Duration::seconds(59) && at <= after + time::Duration::seconds(60),
        "{at} not a minute after {before}"
    );
    assert_eq!(
        later["status"]["next_sync_at"],
        later["sync"]["run_once_at"]
    );
    assert_eq!(
        ok(cli(&nats, &["repo", "unreg", "team-a/r"]).await),
        "UNREGISTERED\nteam-a/r\n"
    );
    node.shutdown().await;
}

/// `cairn completion SHELL` and `cairn man [COMMAND…]` print on demand.
#[actix_rt::test]
async fn completions_and_man_pages_print_on_demand() {
    let cli = cairn_cli!();
    let run = |args: Vec<&'static str>| {
        let cli = cli.clone();
        async move { cli.run(args).await }
    };
    let bash = ok(run(vec!["completion", "bash"]).await);
    assert!(
        bash.contains("_cairn()") && bash.contains("complete -F _cairn"),
        "{bash}"
    );
    assert!(bash.contains("register"), "subcommands complete");
    assert!(ok(run(vec!["completion", "zsh"]).await).starts_with("#compdef cairn"));
    assert!(ok(run(vec!["completion", "fish"]).await).contains("complete -c cairn"));
    let man = ok(run(vec!["man"]).await);
    assert!(man.contains(".TH cairn "), "{man}");
    let register = ok(run(vec!["man", "repo", "register"]).await);
    assert!(register.contains(".TH cairn-repo-register "), "{register}");
    assert!(register.contains("\\-\\-create\\-branch"), "{register}");
    let nope = run(vec!["man", "repo", "nope"]).await;
    assert_eq!(
        (nope.success, nope.stderr.as_str()),
        (
            false,
            "error: COMMAND: cairn repo has no command \"nope\"; see `cairn repo --help`\n"
        )
    );
}

/// Help says what each command's --timeout bounds and shows --principal
/// only on commands that write; bad flag values are refused naming the
/// flag as typed.
#[actix_rt::test]
async fn help_and_flag_errors_speak_as_typed() {
    let cli = cairn_cli!();
    let help = |args: &'static [&'static str]| {
        let cli = cli.clone();
        async move { ok(cli.run(args.iter().copied().chain(["--help"])).await) }
    };
    for writes in [
        &["pkg", "approve"][..],
        &["pkg", "push"],
        &["pkg", "init"],
        &["repo", "register"],
        &["repo", "update"],
    ] {
        assert!(help(writes).await.contains("--principal"), "{writes:?}");
    }
    for reads in [
        &["pkg", "list"][..],
        &["pkg", "get"],
        &["pkg", "pull"],
        &["repo", "list"],
        &["watch"],
        &["log"],
    ] {
        assert!(!help(reads).await.contains("--principal"), "{reads:?}");
    }
    assert!(help(&["repo", "register"])
        .await
        .contains("How long to wait for the registration and its first sync"));
    assert!(help(&["pkg", "push"])
        .await
        .contains("How long to wait for the files to be pushed to the upstream"));
    assert!(help(&["repo", "list"])
        .await
        .contains("How long to wait for the node's answer"));

    for (args, want) in [
        (
            &["watch", "--heartbeat", "50ms"][..],
            "error: invalid value '50ms' for '--heartbeat <HEARTBEAT>': must be between 100ms and 60s",
        ),
        (
            &["pkg", "list", "--lifecycle", "nope"],
            "error: invalid value 'nope' for '--lifecycle <LIFECYCLE>': expected one of Draft, Proposed, Published, DeletionProposed (any case)",
        ),
        (
            &["repo", "list", "-n", "Team"],
            "error: invalid value 'Team' for '--namespace <NAMESPACE>': \"Team\" is not a valid name",
        ),
        (&["repo", "list", "--timeout", "soon"], "error: invalid value 'soon' for '--timeout <TIMEOUT>': "),
        (
            &["pkg", "list", "-l", "tier in base"],
            "error: invalid value 'tier in base' for '--selector <SELECTORS>': \"tier in base\": the values go in parentheses: (a,b)",
        ),
    ] {
        let out = cli.run(args).await;
        assert!(!out.success, "{args:?}");
        assert!(out.stderr.starts_with(want), "{args:?}: {}", out.stderr);
    }
}

/// The log table fits 120 columns and names the package revision each
/// event concerns.
#[actix_rt::test]
async fn the_log_table_fits_120_columns_and_names_what_each_event_concerns() {
    let dir = TestDir::new();
    let url = labelled_upstream(dir.path());
    let node = start(dir.path()).await;
    register(&node, "team-a", "a-repository-with-a-long-name", &url).await;
    let nats = node.nats_url.clone();
    ok(cli(
        &nats,
        &[
            "pkg",
            "init",
            "team-a/a-repository-with-a-long-name",
            "apps/new",
            "--principal",
            "someone-with-a-long-name@example.com",
        ],
    )
    .await);
    let table = ok(cli(&nats, &["log"]).await);
    let rows = lines(&table);
    assert!(
        rows[0].starts_with("   SEQ  TIME                 STREAM                  TYPE                      OBJECT                          PRINCIPAL"),
        "{table}"
    );
    assert!(rows.iter().all(|r| r.chars().count() <= 120), "{table}");
    let created = rows.iter().find(|r| r.contains("DraftCreated")).unwrap();
    assert!(
        created.contains("  DraftCreated              a-repository-with-a-long-name…  someone-…"),
        "{created}"
    );
    let added = rows
        .iter()
        .find(|r| r.contains("PackageRevisionAdded"))
        .unwrap();
    assert!(added.contains("a-repository-with-a-long-name…"), "{added}");
    let none = cli(&nats, &["log", "--from", "100000"]).await;
    assert_eq!(
        (none.success, none.stdout.as_str(), none.stderr.as_str()),
        (true, "", "no events from seq 100000\n")
    );
    node.shutdown().await;
}

/// A node whose stderr is not a terminal logs plain text: no ANSI colour
/// codes in a file or a pipe.
#[test]
fn node_logs_are_plain_text_off_a_terminal() {
    let dir = TestDir::new();
    let cli = cairn_cli!();
    let mut command = cairn_tests::ChildNode::command(
        &cli,
        &dir.path().join("data"),
        &["--nats-listen", "127.0.0.1:0"],
    );
    command.env("RUST_LOG", "info");
    let mut node = ChildGuard::spawn(&mut command);
    let stdout = node.0.stdout.take().unwrap();
    let stderr = node.0.stderr.take().unwrap();
    let (_ready, _rest) = read_line_matching(stdout, WAIT, |l| {
        l.starts_with(cairn_tests::node::READY_PREFIX)
    })
    .expect("the node is ready");
    node.kill_all();
    let log = std::io::read_to_string(stderr).unwrap();
    assert!(log.contains(" INFO "), "info lines were logged: {log}");
    assert!(!log.contains('\u{1b}'), "no escape codes: {log:?}");
}

/// `--annotation KEY=VALUE` (repeatable) selects by Kptfile annotations,
/// in lists and watches' filters alike: cairn's own flag (Porch selects on
/// labels only).
#[actix_rt::test]
async fn lists_select_by_kptfile_annotations() {
    let dir = TestDir::new();
    let work = GitFixture::init(&dir.join("work"), "main");
    let kptfile = |name: &str, annotations: &str| {
        format!(
            "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: {name}\n  annotations:\n{annotations}"
        )
    };
    work.write(
        "apps/web/Kptfile",
        kptfile("web", "    owner: team-web\n    tier: base\n"),
    )
    .write("apps/db/Kptfile", kptfile("db", "    owner: team-db\n"))
    .commit("two packages");
    let url = work.clone_bare(&dir.join("up.git")).url();
    let node = start(dir.path()).await;
    register(&node, "team-a", "r", &url).await;
    let nats = node.nats_url.clone();

    for (flags, want) in [
        (
            vec!["--annotation", "owner=team-web"],
            "team-a/r.apps.web.main\n",
        ),
        (
            vec!["--annotation", "owner=team-db"],
            "team-a/r.apps.db.main\n",
        ),
        (
            vec![
                "--annotation",
                "owner=team-web",
                "--annotation",
                "tier=base",
            ],
            "team-a/r.apps.web.main\n",
        ),
        (
            vec!["--annotation", "owner=team-db", "--annotation", "tier=base"],
            "",
        ),
        // Labels are not annotations.
        (vec!["-l", "owner=team-web"], ""),
    ] {
        let args: Vec<&str> = ["pkg", "list", "-n", "team-a", "-o", "name"]
            .into_iter()
            .chain(flags.iter().copied())
            .collect();
        let out = cli(&nats, &args).await;
        assert_eq!(
            (out.success, out.stdout.as_str()),
            (true, want),
            "{flags:?}: {}",
            out.stderr
        );
    }
    let bad = cli(
        &nats,
        &["pkg", "list", "-n", "team-a", "--annotation", "owner"],
    )
    .await;
    assert!(!bad.success);
    assert!(
        bad.stderr.contains(
            "error: invalid value 'owner' for '--annotation <KEY=VALUE>': \"owner\": expected KEY=VALUE"
        ),
        "{}",
        bad.stderr
    );
    let twice = cli(
        &nats,
        &[
            "pkg",
            "list",
            "-n",
            "team-a",
            "--annotation",
            "owner=a",
            "--annotation",
            "owner=b",
        ],
    )
    .await;
    assert!(!twice.success);
    assert!(
        twice.stderr.contains(
            "--annotation: \"owner\" given twice (\"a\" and \"b\"); a revision has one value per key"
        ),
        "{}",
        twice.stderr
    );
    node.shutdown().await;
}
