//! Git's rules for the names cairn writes into an upstream, as pure checks
//! (no repository): the name of a tree entry ([`tree_entry`]) and of a ref
//! ([`check_ref`]). Callers check every name before anything is written,
//! so input Git would refuse is a 400 naming the field, never a libgit2
//! error half-way through a write.
//!
//! **Tree entries.** Git refuses to check out a path holding its own
//! directory under any name a file system may take for it, and cairn
//! refuses the same (git's `verify_path` with `core.protectNTFS`, on by
//! default on every platform, and `core.protectHFS`, on by default on
//! macOS — a package must check out wherever its users are; libgit2's tree
//! builder refuses a subset of these, so none of them reaches it):
//! - `.git` in any case (`.GIT`, `.Git`);
//! - on NTFS: `.git` followed by dots and spaces (`.git.`, `.git `), which
//!   NTFS drops; a stream of it (`.git::$INDEX_ALLOCATION`, `.git:x`); its
//!   8.3 short name `git~1` (also followed by dots and spaces); and any of
//!   these after a `\`, which separates directories there (`x\.git`);
//! - on HFS+: `.git` with code points HFS+ ignores (`.g\u{200c}it`).
//!
//! `.gitignore`, `.github`, `.gitx`, `git~1x` or `git~2` are ordinary names
//! (Git accepts them). The unit tests compare [`tree_entry`] with
//! `git update-index` (both protections on) and with libgit2's tree
//! builder on the same names.
//!
//! **Commit authors.** [`signature_part`]: what libgit2's signatures
//! refuse in a name or an email.
//!
//! **Refs.** A ref name follows `git check-ref-format` (libgit2's
//! [`git2::Reference::is_valid_name`]: no component starting with `.` or
//! ending with `.lock`, no `..`, control characters, space, `~^:?*[\`,
//! `@{`, trailing `/` or `.`), and fits where refs are stored:
//! - each `/`-separated component at most [`REF_COMPONENT_MAX_BYTES`]
//!   (255, `NAME_MAX` of common file systems: a loose ref is a file, its
//!   components directories), the last at most
//!   [`REF_LAST_COMPONENT_MAX_BYTES`] (250: its `<name>.lock` file must fit
//!   too);
//! - the whole name at most [`REF_NAME_MAX_BYTES`] (1023): Git itself sets
//!   no bound (file systems do: `PATH_MAX` 4096 for the whole path of a
//!   loose ref), but libgit2 — cairn's mirror of every upstream — cannot
//!   store a longer one (`GIT_REFNAME_MAX` is 1024 bytes with the NUL;
//!   the git CLI pushed a 4,024-byte ref that the mirror then could not
//!   set, issue 12). So every ref cairn writes can also be read back.

/// The longest ref name, in bytes, cairn writes: what libgit2 can store
/// (`GIT_REFNAME_MAX` 1024, with the NUL).
pub const REF_NAME_MAX_BYTES: usize = 1023;
/// The longest `/`-separated component of a ref name, in bytes: `NAME_MAX`
/// (a loose ref's components are directories and a file).
pub const REF_COMPONENT_MAX_BYTES: usize = 255;
/// The longest last component of a ref name, in bytes: its lock file
/// `<component>.lock` must fit `NAME_MAX` as well.
pub const REF_LAST_COMPONENT_MAX_BYTES: usize = REF_COMPONENT_MAX_BYTES - ".lock".len();

/// Why a ref name cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// It breaks `git check-ref-format`: choose a name without the
    /// characters or shapes Git forbids.
    #[error("{name} is not a valid Git ref name (see git check-ref-format)")]
    Invalid {
        /// The ref name.
        name: String,
    },
    /// One of its components is longer than a file name may be: shorten
    /// that component.
    #[error("the ref {name} has a component of {bytes} bytes, more than {max} ({component:?})")]
    ComponentTooLong {
        /// The ref name.
        name: String,
        /// The component.
        component: String,
        /// Its length in bytes.
        bytes: usize,
        /// The bound for that component ([`REF_COMPONENT_MAX_BYTES`], or
        /// [`REF_LAST_COMPONENT_MAX_BYTES`] for the last).
        max: usize,
    },
    /// It is longer than [`REF_NAME_MAX_BYTES`]: shorten a part of it.
    #[error("the ref {name} would be {bytes} bytes, more than {REF_NAME_MAX_BYTES} (refs longer than that cannot be stored by libgit2, GIT_REFNAME_MAX)")]
    TooLong {
        /// The ref name.
        name: String,
        /// Its length in bytes.
        bytes: usize,
    },
}

/// Checks full ref name `name` (`refs/heads/…`, `refs/tags/…`): valid for
/// `git check-ref-format`, each component and the whole within the bounds
/// above.
pub fn check_ref(name: &str) -> Result<(), RefError> {
    if !git2::Reference::is_valid_name(name) {
        return Err(RefError::Invalid {
            name: name.to_owned(),
        });
    }
    let components: Vec<&str> = name.split('/').collect();
    for (i, component) in components.iter().enumerate() {
        let max = if i + 1 == components.len() {
            REF_LAST_COMPONENT_MAX_BYTES
        } else {
            REF_COMPONENT_MAX_BYTES
        };
        if component.len() > max {
            return Err(RefError::ComponentTooLong {
                name: name.to_owned(),
                component: (*component).to_owned(),
                bytes: component.len(),
                max,
            });
        }
    }
    if name.len() > REF_NAME_MAX_BYTES {
        return Err(RefError::TooLong {
            name: name.to_owned(),
            bytes: name.len(),
        });
    }
    Ok(())
}

/// Why libgit2 refuses `value` as the name or the email of a commit's
/// author, if it does: `<` or `>` (they delimit the email), control
/// characters (a commit header is one line), or nothing left once the
/// spaces and punctuation Git trims from the ends (`,:;"'\\`) are gone.
/// Empty is not refused here (callers put a default in its place).
pub fn signature_part(value: &str) -> Option<&'static str> {
    if value.contains(['<', '>']) {
        Some("must not contain '<' or '>' (they delimit the email in a Git commit)")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_whitespace() || ",:;\"'\\".contains(c))
    {
        Some("must hold more than spaces and punctuation (Git trims those)")
    } else {
        None
    }
}

/// Why Git refuses `segment` (one `/`-separated segment of a path) as the
/// name of a tree entry: it is Git's own directory under one of the names
/// a file system may take for it (see the module doc); `None` when it is
/// an ordinary name.
pub fn tree_entry(segment: &str) -> Option<&'static str> {
    // NTFS separates directories with `\` too: each piece counts.
    let pieces: Vec<&str> = segment.split('\\').collect();
    for piece in &pieces {
        let why = if pieces.len() > 1 {
            ntfs_dotgit(piece)
                .map(|_| "Git's own directory on NTFS, where \\ separates directories")
        } else {
            ntfs_dotgit(piece)
        };
        if why.is_some() {
            return why;
        }
        if hfs_dotgit(piece) {
            return Some("Git's own directory on HFS+, which ignores some Unicode code points");
        }
    }
    None
}

/// Whether `piece` is `.git` or its short name `git~1` as NTFS reads it
/// (git's `is_ntfs_dotgit`): up to a `:` (a stream), followed only by
/// dots and spaces (which NTFS drops); why, if so.
fn ntfs_dotgit(piece: &str) -> Option<&'static str> {
    let (name, stream) = match piece.split_once(':') {
        Some((name, _)) => (name, true),
        None => (piece, false),
    };
    let only_dots_and_spaces = |rest: &str| rest.bytes().all(|b| b == b'.' || b == b' ');
    let lower = name.to_ascii_lowercase();
    let (dotgit, short) = (
        lower
            .strip_prefix(".git")
            .filter(|r| only_dots_and_spaces(r)),
        lower
            .strip_prefix("git~1")
            .filter(|r| only_dots_and_spaces(r)),
    );
    match (dotgit, short, stream) {
        (None, None, _) => None,
        (_, _, true) => Some("Git's own directory on NTFS: a stream of it"),
        (Some(""), _, false) => Some("Git's own directory, in any case"),
        (Some(_), _, false) => {
            Some("Git's own directory on NTFS, which drops trailing dots and spaces")
        }
        (None, Some(_), false) => Some("Git's own directory on NTFS: its 8.3 short name"),
    }
}

/// Whether `piece` is `.git` as HFS+ compares names (git's
/// `is_hfs_dotgit`): case-insensitively, ignoring the code points HFS+
/// ignores.
fn hfs_dotgit(piece: &str) -> bool {
    const IGNORED: [char; 16] = [
        '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}',
        '\u{202d}', '\u{202e}', '\u{206a}', '\u{206b}', '\u{206c}', '\u{206d}', '\u{206e}',
        '\u{206f}', '\u{feff}',
    ];
    let folded: String = piece
        .chars()
        .filter(|c| !IGNORED.contains(c))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    folded == ".git"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Single names: the ones Git refuses (`git update-index`, both
    /// protections on) and some it accepts.
    const NAMES: &[&str] = &[
        ".git",
        ".GIT",
        ".Git",
        ".GiT",
        ".git.",
        ".git ",
        ".git. .",
        ".git::$INDEX_ALLOCATION",
        ".git:x",
        "git~1",
        "GIT~1",
        "git~1 ",
        "git~1.",
        "x\\.git",
        "x\\.GIT\\y",
        ".git\\x",
        ".g\u{200c}it",
        ".G\u{200d}IT",
        "\u{feff}.git",
        "git~2",
        "git~1x",
        ".gitx",
        ".gitignore",
        ".gitmodules",
        ".github",
        ".git~1",
        "gi~1",
        "a:b",
        "con",
        "...",
        ".. ",
        "Kptfile",
        "a\\..\\b",
    ];

    #[test]
    fn tree_entries_are_refused_as_git_refuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .current_dir(dir.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .args(["-c", "core.protectHFS=true", "-c", "core.protectNTFS=true"])
                .args(args)
                .output()
                .expect("git runs")
        };
        assert!(git(&["init", "-q"]).status.success());
        let blob = git(&["hash-object", "-w", "--stdin"]);
        let blob = String::from_utf8(blob.stdout).unwrap();
        let blob = blob.trim();
        let mut refused = 0;
        for name in NAMES {
            let git_refuses = !git(&[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("100644,{blob},{name}"),
            ])
            .status
            .success();
            assert_eq!(tree_entry(name).is_some(), git_refuses, "{name:?}");
            refused += usize::from(git_refuses);
        }
        assert_eq!(refused, 19);
    }

    #[test]
    fn libgit2_refuses_no_tree_entry_cairn_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let blob = repo.blob(b"x").unwrap();
        for name in NAMES {
            let mut builder = repo.treebuilder(None).unwrap();
            if builder.insert(name, blob, 0o100644).is_err() {
                assert!(tree_entry(name).is_some(), "{name:?}");
            }
        }
        // (and it does refuse the literal one)
        let mut builder = repo.treebuilder(None).unwrap();
        assert!(builder.insert(".GIT", blob, 0o100644).is_err());
    }

    #[test]
    fn signature_parts_are_what_libgit2_signs() {
        // What libgit2 refuses is refused; what it signs is accepted...
        for value in [
            "",
            "ada@example.com",
            "Ada Lovelace",
            "o'neil",
            "a<b",
            "x>",
            " ,; ",
        ] {
            let signed = git2::Signature::now(value, "e@example.com").is_ok();
            assert_eq!(
                signature_part(value).is_none(),
                signed || value.is_empty(),
                "{value:?}"
            );
        }
        // ...but a line break, which libgit2 would write into the commit's
        // one-line author header, breaking it.
        assert!(git2::Signature::now("x\ny", "e@example.com").is_ok());
        assert_eq!(
            signature_part("x\ny"),
            Some("must not contain control characters")
        );
    }

    #[test]
    fn tree_entry_refusals_say_why() {
        for (name, why) in [
            (".GIT", Some("Git's own directory, in any case")),
            (
                ".git.",
                Some("Git's own directory on NTFS, which drops trailing dots and spaces"),
            ),
            (
                ".git::$INDEX_ALLOCATION",
                Some("Git's own directory on NTFS: a stream of it"),
            ),
            (
                "git~1",
                Some("Git's own directory on NTFS: its 8.3 short name"),
            ),
            (
                "x\\.git",
                Some("Git's own directory on NTFS, where \\ separates directories"),
            ),
            (
                ".g\u{200c}it",
                Some("Git's own directory on HFS+, which ignores some Unicode code points"),
            ),
            (".github", None),
        ] {
            assert_eq!(tree_entry(name), why, "{name:?}");
        }
    }

    #[test]
    fn refs_follow_check_ref_format_and_fit_libgit2() {
        assert_eq!(check_ref("refs/heads/drafts/a/b/ws"), Ok(()));
        for bad in [
            "refs/heads/a..b",
            "refs/heads/.x/y",
            "refs/heads/x.lock/y",
            "refs/heads/a b",
            "refs/heads/a~b",
            "refs/heads/a@{b",
            "refs/heads/x.",
            "refs/heads/x/",
        ] {
            assert_eq!(
                check_ref(bad),
                Err(RefError::Invalid { name: bad.into() }),
                "{bad}"
            );
        }
        let long = |n: usize| format!("refs/heads/{}", "x".repeat(n));
        assert_eq!(
            check_ref(&long(251)).unwrap_err().to_string(),
            format!(
                "the ref {} has a component of 251 bytes, more than 250 ({:?})",
                long(251),
                "x".repeat(251)
            )
        );
        let middle = format!("refs/heads/{}/ws", "x".repeat(256));
        assert!(matches!(
            check_ref(&middle),
            Err(RefError::ComponentTooLong { max: 255, .. })
        ));
        // A ref of exactly 1023 bytes is one libgit2 stores; 1024 is not.
        let of = |bytes: usize| {
            let mut name = "refs/heads".to_owned();
            while name.len() < bytes {
                let take = (bytes - name.len() - 1).min(200);
                name.push('/');
                name.push_str(&"x".repeat(take.max(1)));
            }
            assert_eq!(name.len(), bytes);
            name
        };
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let tree = repo.treebuilder(None).unwrap().write().unwrap();
        let tree = repo.find_tree(tree).unwrap();
        let signature = git2::Signature::now("t", "t@example.com").unwrap();
        let commit = repo
            .commit(None, &signature, &signature, "m", &tree, &[])
            .unwrap();
        assert_eq!(check_ref(&of(1023)), Ok(()));
        repo.reference(&of(1023), commit, false, "t").unwrap();
        assert_eq!(
            check_ref(&of(1024)),
            Err(RefError::TooLong {
                name: of(1024),
                bytes: 1024
            })
        );
        let Err(refused) = repo.reference(&of(1024), commit, false, "t") else {
            panic!("libgit2 stored a ref of 1024 bytes");
        };
        assert!(
            refused
                .message()
                .starts_with("the provided buffer is too short to hold the normalization of"),
            "{}",
            refused.message()
        );
    }
}
