//! Git upstreams the unit tests build with libgit2 (tests only).

/// A bare upstream at `path` with one package `pkg` (a `Kptfile`) on
/// `main`, tagged `pkg/v1`.
pub(crate) fn upstream_with_one_package(path: &std::path::Path) {
    let repo = git2::Repository::init_bare(path).unwrap();
    let signature = git2::Signature::now("t", "t@example.com").unwrap();
    let kptfile = repo
        .blob(b"apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: pkg\n")
        .unwrap();
    let mut package = repo.treebuilder(None).unwrap();
    package.insert("Kptfile", kptfile, 0o100644).unwrap();
    let mut root = repo.treebuilder(None).unwrap();
    root.insert("pkg", package.write().unwrap(), 0o040000)
        .unwrap();
    let tree = repo.find_tree(root.write().unwrap()).unwrap();
    let commit = repo
        .commit(
            Some("refs/heads/main"),
            &signature,
            &signature,
            "pkg",
            &tree,
            &[],
        )
        .unwrap();
    repo.reference("refs/tags/pkg/v1", commit, false, "")
        .unwrap();
}
