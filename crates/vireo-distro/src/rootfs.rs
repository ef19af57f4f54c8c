//! Edits inside the debootstrapped root: commands run by `chroot`, the generated
//! configuration, facts read back (kernel version, installed packages) and the clean-up that
//! makes the image generic (no machine-id, no SSH host keys, no caches or logs).
//!
//! Invariant: paths are joined below the root only from fixed relative names, never from input.

use super::*;

/// Runs a command inside the root (`chroot ROOT argv…`).
pub(crate) fn in_root(root: &Path, argv: &[&str]) -> Result<String, DistroError> {
    let out = Command::new("chroot")
        .arg(root)
        .args(argv)
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DistroError::Spawn {
            program: "chroot",
            package: "coreutils",
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(TAIL_LINES).collect();
        return Err(DistroError::Failed {
            what: format!("chroot {} {}", root.display(), argv.join(" ")),
            status: out.status,
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn write_file(root: &Path, rel: &str, contents: &str) -> Result<(), DistroError> {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    // Replace, never write through: debootstrap may have left a symlink here.
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, contents).map_err(io_err(&path))
}

pub(crate) fn configure(
    spec: &ValidSpec,
    id: &config::Identity,
    root: &Path,
) -> Result<(), DistroError> {
    for (rel, contents) in config::root_files(id, &spec.release, &spec.mirror) {
        write_file(root, rel, &contents)?;
    }
    // The deb822 sources replace debootstrap's one-line list.
    remove_if_present(&root.join("etc/apt/sources.list"))?;
    for (link, target) in config::serial_getty_links() {
        let path = root.join(&link);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        remove_if_present(&path)?;
        std::os::unix::fs::symlink(&target, &path).map_err(io_err(&path))?;
    }
    let mut argv = vec!["systemctl", "enable", "--quiet"];
    argv.extend(config::ENABLED_UNITS);
    in_root(root, &argv)?;
    std::fs::create_dir_all(root.join("boot/efi")).map_err(io_err(root))?;
    Ok(())
}

/// The kernel `/vmlinuz` points at (`boot/vmlinuz-<version>`), checked to exist along
/// with `/initrd.img`.
pub(crate) fn kernel_version(root: &Path) -> Result<String, DistroError> {
    let missing = |what: &str| DistroError::RootLayout { what: what.into() };
    let link = std::fs::read_link(root.join("vmlinuz")).map_err(|_| missing("/vmlinuz link"))?;
    let name = link
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| missing("/vmlinuz target"))?;
    let version = name
        .strip_prefix("vmlinuz-")
        .ok_or_else(|| missing("boot/vmlinuz-<version>"))?
        .to_owned();
    for file in [
        format!("boot/vmlinuz-{version}"),
        format!("boot/initrd.img-{version}"),
    ] {
        if !root.join(&file).is_file() {
            return Err(missing(&file));
        }
    }
    if !root.join("initrd.img").exists() {
        return Err(missing("/initrd.img link"));
    }
    Ok(version)
}

pub(crate) fn installed_packages(root: &Path) -> Result<Vec<InstalledPackage>, DistroError> {
    let out = in_root(
        root,
        &["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
    )?;
    let mut list: Vec<InstalledPackage> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, v)| InstalledPackage {
            package: p.to_owned(),
            version: v.to_owned(),
        })
        .collect();
    list.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(list)
}

/// Per-machine state and caches out of the image.
pub(crate) fn clean(root: &Path) -> Result<(), DistroError> {
    in_root(root, &["apt-get", "clean"])?;
    for dir in ["var/lib/apt/lists", "tmp", "var/tmp"] {
        empty_dir(&root.join(dir))?;
    }
    // Log files go, their directories stay: packages made them with the owners and modes
    // their daemons need, and journald keeps logs persistent only if /var/log/journal exists.
    remove_files_below(&root.join("var/log"))?;
    std::fs::create_dir_all(root.join("var/lib/apt/lists/partial")).map_err(io_err(root))?;
    for dir in ["etc/ssh", "var/cache/apt"] {
        let dir = root.join(dir);
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("ssh_host_") || name.ends_with(".bin") {
                remove_if_present(&entry.path())?;
            }
        }
    }
    // systemd writes a fresh machine-id into an empty file at first boot; D-Bus reads it.
    write_file(root, "etc/machine-id", "")?;
    remove_if_present(&root.join("var/lib/dbus/machine-id"))?;
    // debootstrap copied the build host's resolver configuration; the guest uses resolved.
    let resolv = root.join("etc/resolv.conf");
    remove_if_present(&resolv)?;
    std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", &resolv)
        .map_err(io_err(&resolv))?;
    remove_dir_if_present(&root.join("debootstrap"))?;
    Ok(())
}

pub(crate) fn remove_if_present(path: &Path) -> Result<(), DistroError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

pub(crate) fn remove_dir_if_present(path: &Path) -> Result<(), DistroError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Removes every non-directory below `dir`, keeping the directory tree.
pub(crate) fn remove_files_below(dir: &Path) -> Result<(), DistroError> {
    clear_dir(dir, true)
}

/// Removes everything inside `dir` but keeps `dir` (with its mode and owner).
pub(crate) fn empty_dir(dir: &Path) -> Result<(), DistroError> {
    clear_dir(dir, false)
}

/// Removes the non-directories inside `dir` (a missing `dir` is empty); subdirectories are
/// cleared the same way when `keep_subdirs`, else removed whole.
fn clear_dir(dir: &Path, keep_subdirs: bool) -> Result<(), DistroError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        // file_type does not follow symlinks: a link to a directory is removed, not entered.
        match (
            entry.file_type().map_err(io_err(&path))?.is_dir(),
            keep_subdirs,
        ) {
            (true, true) => clear_dir(&path, true)?,
            (true, false) => remove_dir_if_present(&path)?,
            (false, _) => remove_if_present(&path)?,
        }
    }
    Ok(())
}
