//! `cairn bench approve`: the time to approve one proposal in a repository
//! that already holds N published revisions, at a small and a large N.
//!
//! Each repository is generated Porch-shaped ([`super::gen`]) with all N
//! published revisions in **one** package — the worst case for cairn,
//! which reads the approved package back after the push (its N tags) —
//! and registered on an in-process node. Drafts of that package are
//! created (copies of its revision N — a new revision of an existing
//! package is a copy, as in Porch), updated with a new `configmap.yaml`
//! and proposed first (untimed); then each timed round is one
//! `cairn.v1.pkgrev.approve` request, answered once the approval commit,
//! tag and branch removal are pushed and its events are committed.
//!
//! Baseline, in the same run: the same Git work with the `git` CLI in a
//! clone of the repository — write the package's files, `git add`,
//! `git commit`, `git tag`, and one `git push` of the branch and the tag.
//!
//! Last line: `approve: n<small>=<ms> n<large>=<ms> growth=<large/small>`
//! (medians; with the defaults `approve: n100=… n1000=… growth=…`).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use cairn_actors::repository::naming::object_name;
use serde_json::{json, Value};

use super::{
    cache::{
        call, generate, ms, register_and_settle, start_node, Latency, NAMESPACE, REGISTER_TIMEOUT,
        REPOSITORY,
    },
    gen::{self, Shape},
};

/// Options of `cairn bench approve`.
#[derive(Debug, Clone)]
pub struct ApproveOptions {
    /// Published revisions of the larger repository; the smaller holds a
    /// tenth of it.
    pub revisions: usize,
    /// Timed approvals per repository (after two untimed ones).
    pub iterations: usize,
}

/// Untimed approvals before the timed ones.
const WARMUP: usize = 2;

/// Runs `cairn bench approve`; returns the (small, large) medians.
pub fn approve(
    options: &ApproveOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(Duration, Duration)> {
    let large = options.revisions.max(10);
    let small = large / 10;
    let mut medians = Vec::new();
    for n in [small, large] {
        let (cairn, raw) = at(n, options.iterations.max(1), out)?;
        writeln!(
            out,
            "n={n}: cairn approve p50={:.2}ms p99={:.2}ms ({} approvals); git CLI commit+tag+push p50={:.2}ms; ratio={:.2}",
            ms(cairn.p50),
            ms(cairn.p99),
            cairn.samples,
            ms(raw.p50),
            cairn.p50.as_secs_f64() / raw.p50.as_secs_f64().max(1e-9)
        )?;
        medians.push(cairn.p50);
    }
    writeln!(
        out,
        "approve: n{small}={:.2} n{large}={:.2} growth={:.2}",
        ms(medians[0]),
        ms(medians[1]),
        medians[1].as_secs_f64() / medians[0].as_secs_f64().max(1e-9)
    )?;
    Ok((medians[0], medians[1]))
}

/// Approvals in a repository of `n` published revisions of one package:
/// cairn's and the git CLI's.
fn at(
    n: usize,
    iterations: usize,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(Latency, Latency)> {
    let dir = tempfile::tempdir()?;
    let shape = Shape::new(1, n);
    let generated = generate(dir.path(), &shape, out)?;
    let package = shape.package_path(0);
    let (path, name) = package
        .rsplit_once('/')
        .context("a generated package path")?;
    let rounds = WARMUP + iterations;

    let system = actix::System::new();
    let cairn = system.block_on(async {
        let running = start_node(&dir.path().join("node")).await?;
        let result = async {
            register_and_settle(&running, &generated, out).await?;
            let client = &running.client;
            let request = |endpoint: &'static str, body: Value| async move {
                let reply = call(
                    client,
                    &format!("cairn.v1.pkgrev.{endpoint}"),
                    serde_json::to_vec(&body)?.into(),
                    REGISTER_TIMEOUT,
                )
                .await?;
                anyhow::Ok(serde_json::from_slice::<Value>(&reply.payload)?)
            };
            // Its revision N, published by the generator in workspace vN.
            let latest = object_name(REPOSITORY, path, name, &format!("v{n}"));
            let mut names = Vec::new();
            for i in 0..rounds {
                let draft = request(
                    "create",
                    json!({"namespace": NAMESPACE, "repository": REPOSITORY, "path": path,
                           "package": name, "workspace": format!("bench-{i}"),
                           "clone_from": latest}),
                )
                .await?;
                let version = draft["resource_version"].clone();
                let draft = draft["name"].as_str().context("a draft name")?.to_owned();
                request(
                    "update",
                    json!({"namespace": NAMESPACE, "name": draft, "resource_version": version,
                           "resources": {"Kptfile": gen::kptfile(name),
                                         "configmap.yaml": gen::configmap(name, n + i + 1)}}),
                )
                .await?;
                request("propose", json!({"namespace": NAMESPACE, "name": draft})).await?;
                names.push(draft);
            }
            writeln!(out, "{rounds} proposals of {package} ready")?;
            let mut samples = Vec::new();
            for (i, draft) in names.iter().enumerate() {
                let started = Instant::now();
                let published =
                    request("approve", json!({"namespace": NAMESPACE, "name": draft})).await?;
                let elapsed = started.elapsed();
                let want = (n + i + 1) as i64;
                anyhow::ensure!(
                    published["revision"].as_i64() == Some(want),
                    "approval {i} published revision {} instead of {want}",
                    published["revision"]
                );
                if i >= WARMUP {
                    samples.push(elapsed);
                }
            }
            Ok(Latency::of(samples))
        }
        .await;
        running.node.shutdown().await;
        result
    })?;

    // The same Git work with the git CLI, in a clone.
    let work = dir.path().join("work");
    git(
        &[
            "clone",
            "--quiet",
            &generated.url,
            work.to_str().context("UTF-8 path")?,
        ],
        dir.path(),
    )?;
    let mut samples = Vec::new();
    for i in 0..rounds {
        let v = n + rounds + i + 1;
        let started = Instant::now();
        std::fs::write(
            work.join(&package).join("configmap.yaml"),
            gen::configmap(name, v),
        )?;
        git(&["add", "-A"], &work)?;
        git(
            &[
                "commit",
                "--quiet",
                "-m",
                &format!("Approving package revision {package}/{v}"),
            ],
            &work,
        )?;
        let tag = format!("{package}/v{v}");
        git(&["tag", &tag], &work)?;
        git(&["push", "--quiet", "origin", "main", &tag], &work)?;
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    Ok((cairn, Latency::of(samples)))
}

fn git(args: &[&str], cwd: &Path) -> anyhow::Result<()> {
    let output = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running git {args:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "git {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
