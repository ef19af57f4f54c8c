//! Getting the root tree of a build: `debootstrap` of the release (its argument vector and
//! progress lines are pure functions) or, while the archive is unchanged, the cached tarball of
//! an earlier identical debootstrap ([`tree_key`]).
//!
//! Invariant: a cached tree is written under a temporary name and renamed, so a tarball in the
//! cache is always complete; its key covers everything that decides its content.

use super::*;

/// debootstrap's argument vector (pure).
pub fn debootstrap_args(spec: &ValidSpec, debs: &Path, root: &Path) -> Vec<String> {
    vec![
        "--variant=minbase".into(),
        "--components=main".into(),
        format!("--cache-dir={}", debs.display()),
        format!("--include={}", spec.packages.join(",")),
        spec.release.clone(),
        root.to_string_lossy().into_owned(),
        spec.mirror.clone(),
    ]
}

/// Condenses debootstrap's per-package `I: <Verb> <package>` lines to one line per phase:
/// returns the line to report when `line` starts a new phase, `None` otherwise.
pub fn phase_line(last_verb: &mut String, line: &str) -> Option<String> {
    let rest = line.strip_prefix("I: ")?;
    let verb = rest.split_whitespace().next().unwrap_or_default();
    let per_package = matches!(
        verb,
        "Retrieving" | "Validating" | "Extracting" | "Unpacking" | "Configuring" | "Checking"
    );
    if per_package {
        if verb == last_verb {
            return None;
        }
        *last_verb = verb.to_owned();
        return Some(format!("debootstrap: {verb} packages…"));
    }
    last_verb.clear();
    Some(format!("debootstrap: {}", rest.trim_end()))
}

/// Largest Release file read for the tree key (Debian's are ~150 KiB).
const MAX_RELEASE_BYTES: u64 = 16 << 20;

/// Names a debootstrap result: the spec (release, packages, mirror, builder revision) and
/// the archive's signed Release file, which pins every package version debootstrap picks.
pub fn tree_key(fingerprint: &str, release_file: &[u8]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(fingerprint.as_bytes());
    h.update(b"\n");
    h.update(release_file);
    hex::encode(h.finalize())
}

/// Fills `root` with the debootstrapped tree: from `cache_dir/trees/<key>.tar` when the
/// archive has not changed since it was made (a rebuild then skips debootstrap's minutes of
/// unpacking and configuring), otherwise by running debootstrap and caching the result (the
/// newest tree only). A cache that cannot be read or written only costs time.
pub(crate) fn root_tree(
    spec: &ValidSpec,
    debs: &Path,
    cache_dir: &Path,
    work: &Path,
    root: &Path,
    say: &dyn Fn(&str),
) -> Result<(), DistroError> {
    say("checking the archive's state (debootstrap --print-debs)");
    let probe = work.join("probe");
    let mut args = vec![
        "--print-debs".to_owned(),
        "--keep-debootstrap-dir".to_owned(),
    ];
    args.extend(debootstrap_args(spec, debs, &probe));
    debootstrap(&args, &probe, &|_| {})?;
    let key = tree_key(&spec.fingerprint(), &release_file(&probe)?);
    remove_dir_if_present(&probe)?;

    let trees = cache_dir.join("trees");
    let cached = trees.join(format!("{key}.tar"));
    if cached.is_file() {
        say(&format!(
            "archive unchanged: reusing the cached root tree {}",
            &key[..12]
        ));
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        match tar(
            &["--extract", "--same-owner", "--same-permissions"],
            &cached,
            root,
        ) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, tree = %cached.display(), "cached root tree unusable; running debootstrap");
                let _ = std::fs::remove_file(&cached);
                remove_dir_if_present(root)?;
            }
        }
    }
    say(&format!(
        "debootstrap {} (minbase + {} packages) from {}",
        spec.release,
        spec.packages.len(),
        spec.mirror
    ));
    debootstrap(&debootstrap_args(spec, debs, root), root, say)?;
    say("caching the root tree for rebuilds");
    if let Err(e) = cache_tree(&trees, &cached, root) {
        tracing::warn!(error = %e, "could not cache the root tree");
    }
    Ok(())
}

/// The archive's `InRelease` (or `Release`) file debootstrap fetched into `probe`.
pub(crate) fn release_file(probe: &Path) -> Result<Vec<u8>, DistroError> {
    use std::io::Read;
    let lists = probe.join("var/lib/apt/lists");
    let mut found = None;
    for entry in std::fs::read_dir(&lists).map_err(io_err(&lists))? {
        let path = entry.map_err(io_err(&lists))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with("_InRelease") || (found.is_none() && name.ends_with("_Release")) {
            found = Some(path);
        }
    }
    let path = found.ok_or_else(|| DistroError::RootLayout {
        what: "Release file of the archive (debootstrap --print-debs)".into(),
    })?;
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_RELEASE_BYTES).read_to_end(&mut bytes))
        .map_err(io_err(&path))?;
    Ok(bytes)
}

/// Writes `root` as `cached` (via a temporary file) and removes older trees.
pub(crate) fn cache_tree(trees: &Path, cached: &Path, root: &Path) -> Result<(), DistroError> {
    std::fs::create_dir_all(trees).map_err(io_err(trees))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tree.")
        .suffix(".tar.tmp")
        .tempfile_in(trees)
        .map_err(io_err(trees))?;
    tar(&["--create"], tmp.path(), root)?;
    tmp.persist(cached).map_err(|e| io_err(cached)(e.error))?;
    for entry in std::fs::read_dir(trees).map_err(io_err(trees))? {
        let path = entry.map_err(io_err(trees))?.path();
        if path != cached && path.extension().is_some_and(|e| e == "tar") {
            remove_if_present(&path)?;
        }
    }
    Ok(())
}

/// GNU tar over the whole tree with numeric owners, extended attributes (file capabilities)
/// and sparse files.
pub(crate) fn tar(mode: &[&str], archive: &Path, dir: &Path) -> Result<(), DistroError> {
    let out = Command::new("tar")
        .args(mode)
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--sparse",
        ])
        .arg("--file")
        .arg(archive)
        .arg("--directory")
        .arg(dir)
        .args(if mode[0] == "--create" {
            &["."][..]
        } else {
            &[][..]
        })
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DistroError::Spawn {
            program: "tar",
            package: "tar",
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DistroError::Failed {
            what: format!("tar {} {}", mode.join(" "), archive.display()),
            status: out.status,
            tail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs debootstrap with `args`, reporting its phases; `root` is its target (for its log).
pub(crate) fn debootstrap(
    args: &[String],
    root: &Path,
    say: &dyn Fn(&str),
) -> Result<(), DistroError> {
    let mut child = Command::new("debootstrap")
        .args(args)
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DistroError::Spawn {
            program: "debootstrap",
            package: "debootstrap",
            source,
        })?;
    // Both streams carry messages; stderr is read on a thread, stdout here.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take();
    let tx2 = tx.clone();
    let reader = std::thread::spawn(move || {
        if let Some(s) = stderr {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        }
    });
    if let Some(s) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut tail = std::collections::VecDeque::with_capacity(TAIL_LINES);
    let mut verb = String::new();
    for line in rx {
        tracing::debug!(target: "debootstrap", "{line}");
        if let Some(report) = phase_line(&mut verb, &line) {
            say(&report);
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let _ = reader.join();
    let status = child.wait().map_err(io_err(root))?;
    if !status.success() {
        // debootstrap's own log explains failures inside the chroot best.
        let log =
            std::fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let mut lines: Vec<String> = log
            .lines()
            .rev()
            .take(TAIL_LINES)
            .map(str::to_owned)
            .collect();
        lines.reverse();
        let out: Vec<String> = tail.into_iter().collect();
        return Err(DistroError::Failed {
            what: "debootstrap".into(),
            status,
            tail: [out.join("\n"), lines.join("\n")].join("\n"),
        });
    }
    Ok(())
}
