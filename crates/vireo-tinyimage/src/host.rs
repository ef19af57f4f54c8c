//! Facts gathered from the build host: the shared libraries `qemu-ga` needs (`ldd`), which
//! Debian packages own them (`dpkg -S`, `dpkg-query`), and busybox's applet list.
//!
//! The host is a Debian system with the same release as the downloaded packages, so its
//! libraries are the ones the downloaded `qemu-ga` was built against. Every copied library must
//! be owned by a Debian package; that keeps the image "Debian packages only" and lets the
//! manifest name each one with its version.
//!
//! Parsers here are pure and tolerate unexpected lines; they never panic on odd tool output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::{run, AptError};

/// Errors while inspecting host binaries and packages.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("running a host tool")]
    Tool(#[source] AptError),
    #[error("{binary} needs {library}, which the host does not have")]
    LibraryNotFound { binary: PathBuf, library: String },
    #[error("{binary} is not a dynamically linked executable (ldd found no loader)")]
    NoLoader { binary: PathBuf },
    #[error("no Debian package owns {path} (candidates tried: {tried})")]
    Unowned { path: PathBuf, tried: String },
    #[error("dpkg-query reports no version for installed package {package:?}")]
    NoVersion { package: String },
}

/// One line of `ldd` output that names a file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LddEntry {
    /// `libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x…)`.
    Library { soname: String, path: PathBuf },
    /// `/lib64/ld-linux-x86-64.so.2 (0x…)`: the program interpreter.
    Loader { path: PathBuf },
    /// `libfoo.so.1 => not found`.
    Missing { soname: String },
}

/// Parses `ldd` output. The vDSO (no path) and unrecognised lines are skipped.
pub fn parse_ldd(output: &str) -> Vec<LddEntry> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some((soname, rest)) = line.split_once("=>") {
                let soname = soname.trim().to_owned();
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Some(LddEntry::Missing { soname });
                }
                let path = rest.split_whitespace().next()?;
                path.starts_with('/').then(|| LddEntry::Library {
                    soname,
                    path: PathBuf::from(path),
                })
            } else {
                let path = line.split_whitespace().next()?;
                path.starts_with('/').then(|| LddEntry::Loader {
                    path: PathBuf::from(path),
                })
            }
        })
        .collect()
}

/// The files a dynamically linked binary needs at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDeps {
    /// soname → host path.
    pub libraries: BTreeMap<String, PathBuf>,
    /// The interpreter path as the binary names it, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub loader: PathBuf,
}

/// Runs `ldd` on `binary` and checks that every library was found.
pub fn runtime_deps(binary: &Path) -> Result<RuntimeDeps, HostError> {
    let out = run(Command::new("ldd").arg(binary)).map_err(HostError::Tool)?;
    runtime_deps_from(binary, &parse_ldd(&out))
}

fn runtime_deps_from(binary: &Path, entries: &[LddEntry]) -> Result<RuntimeDeps, HostError> {
    let mut libraries = BTreeMap::new();
    let mut loader = None;
    for entry in entries {
        match entry {
            LddEntry::Library { soname, path } => {
                libraries.insert(soname.clone(), path.clone());
            }
            LddEntry::Loader { path } => loader = Some(path.clone()),
            LddEntry::Missing { soname } => {
                return Err(HostError::LibraryNotFound {
                    binary: binary.to_owned(),
                    library: soname.clone(),
                })
            }
        }
    }
    let loader = loader.ok_or_else(|| HostError::NoLoader {
        binary: binary.to_owned(),
    })?;
    Ok(RuntimeDeps { libraries, loader })
}

/// Paths under which dpkg may have registered `path`: as given, resolved, and with the merged
/// `/usr` prefix added or removed (Debian bookworm has `/lib -> usr/lib`, but packages still
/// register files under either).
pub fn owner_candidates(path: &Path, resolved: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in std::iter::once(path).chain(resolved) {
        let text = p.to_string_lossy();
        let toggled = match text.strip_prefix("/usr") {
            Some(rest) if rest.starts_with('/') => rest.to_owned(),
            _ => format!("/usr{text}"),
        };
        for c in [p.to_owned(), PathBuf::from(toggled)] {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// Parses `dpkg -S` output lines `pkg[:arch][, pkg…]: /path` into path → package (first owner,
/// with its architecture qualifier kept). Diversion notices are skipped.
pub fn parse_dpkg_search(output: &str) -> BTreeMap<PathBuf, String> {
    output
        .lines()
        .filter(|l| !l.starts_with("diversion "))
        .filter_map(|line| {
            let (packages, path) = line.split_once(": /")?;
            let package = packages.split(',').next()?.trim();
            (!package.is_empty()).then(|| (PathBuf::from(format!("/{path}")), package.to_owned()))
        })
        .collect()
}

/// Finds the Debian package owning each path (`dpkg -S`), trying [`owner_candidates`].
pub fn owning_packages(paths: &[PathBuf]) -> Result<BTreeMap<PathBuf, String>, HostError> {
    let candidates: Vec<(PathBuf, Vec<PathBuf>)> = paths
        .iter()
        .map(|p| {
            let resolved = std::fs::canonicalize(p).ok();
            (p.clone(), owner_candidates(p, resolved.as_deref()))
        })
        .collect();
    let mut cmd = Command::new("dpkg");
    cmd.arg("-S");
    for (_, c) in &candidates {
        cmd.args(c);
    }
    // dpkg -S exits 1 when any candidate is unknown, which is expected for the alternatives
    // that are not registered; the owners it did print are what matters.
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| {
            HostError::Tool(AptError::Spawn {
                argv: "dpkg -S".into(),
                source,
            })
        })?;
    let owners = parse_dpkg_search(&String::from_utf8_lossy(&out.stdout));
    candidates
        .into_iter()
        .map(|(path, tried)| {
            tried
                .iter()
                .find_map(|c| owners.get(c).cloned())
                .map(|owner| (path.clone(), owner))
                .ok_or_else(|| HostError::Unowned {
                    tried: tried
                        .iter()
                        .map(|t| t.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    path,
                })
        })
        .collect()
}

/// Installed versions of `packages` (`dpkg-query -W`), keyed by the names given.
pub fn installed_versions(packages: &[String]) -> Result<BTreeMap<String, String>, HostError> {
    if packages.is_empty() {
        return Ok(BTreeMap::new());
    }
    let out = run(Command::new("dpkg-query")
        .args(["-W", "-f", "${binary:Package}\t${Version}\n"])
        .args(packages))
    .map_err(HostError::Tool)?;
    let listed = parse_dpkg_query(&out);
    packages
        .iter()
        .map(|p| {
            let bare = p.split(':').next().unwrap_or(p);
            listed
                .get(p)
                .or_else(|| listed.get(bare))
                .map(|v| (p.clone(), v.clone()))
                .ok_or_else(|| HostError::NoVersion { package: p.clone() })
        })
        .collect()
}

/// Parses `package<TAB>version` lines; packages known but not installed have empty versions
/// and are left out.
pub fn parse_dpkg_query(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| {
            let (p, v) = l.split_once('\t')?;
            (!v.trim().is_empty()).then(|| (p.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// Applet install paths (relative, e.g. `sbin/acpid`) from `busybox --list-full`.
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>, HostError> {
    let out = run(Command::new(busybox).arg("--list-full")).map_err(HostError::Tool)?;
    Ok(parse_applet_list(&out))
}

/// Keeps plausible relative applet paths from `busybox --list-full` output.
pub fn parse_applet_list(output: &str) -> Vec<String> {
    let mut applets: Vec<String> = output
        .lines()
        .map(str::trim)
        .map(|l| l.trim_start_matches('/'))
        .filter(|l| {
            !l.is_empty()
                && !l.split('/').any(|c| c.is_empty() || c == "." || c == "..")
                && l.chars().all(|c| c.is_ascii_graphic())
        })
        .map(str::to_owned)
        .collect();
    applets.sort();
    applets.dedup();
    applets
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD: &str = "\tlinux-vdso.so.1 (0x00007ffd)\n\
\tlibudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x00007fa1)\n\
\tlibglib-2.0.so.0 => /lib/x86_64-linux-gnu/libglib-2.0.so.0 (0x00007fa2)\n\
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fa3)\n\
\t/lib64/ld-linux-x86-64.so.2 (0x00007fa4)\n";

    #[test]
    fn ldd_output_parses() {
        let deps = runtime_deps_from(Path::new("qemu-ga"), &parse_ldd(LDD)).unwrap();
        assert_eq!(deps.loader, Path::new("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(
            deps.libraries.keys().collect::<Vec<_>>(),
            ["libc.so.6", "libglib-2.0.so.0", "libudev.so.1"]
        );
        let missing = format!("{LDD}\tlibnuma.so.1 => not found\n");
        assert!(matches!(
            runtime_deps_from(Path::new("x"), &parse_ldd(&missing)),
            Err(HostError::LibraryNotFound { library, .. }) if library == "libnuma.so.1"
        ));
        assert!(matches!(
            runtime_deps_from(Path::new("x"), &parse_ldd("\tnot a dynamic executable\n")),
            Err(HostError::NoLoader { .. })
        ));
    }

    #[test]
    fn owner_candidates_cover_merged_usr() {
        let c = owner_candidates(
            Path::new("/lib/x86_64-linux-gnu/libudev.so.1"),
            Some(Path::new("/usr/lib/x86_64-linux-gnu/libudev.so.1.7.5")),
        );
        assert_eq!(
            c,
            [
                "/lib/x86_64-linux-gnu/libudev.so.1",
                "/usr/lib/x86_64-linux-gnu/libudev.so.1",
                "/usr/lib/x86_64-linux-gnu/libudev.so.1.7.5",
                "/lib/x86_64-linux-gnu/libudev.so.1.7.5",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn dpkg_search_and_query_parse() {
        let out = "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6\n\
diversion by foo from: /bin/x\n\
libglib2.0-0:amd64, other: /usr/lib/x86_64-linux-gnu/libglib-2.0.so.0\n";
        let owners = parse_dpkg_search(out);
        assert_eq!(owners.len(), 2);
        assert_eq!(
            owners[Path::new("/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0")],
            "libglib2.0-0:amd64"
        );
        let versions = parse_dpkg_query("libc6:amd64\t2.36-9\nghost\t\n");
        assert_eq!(versions.len(), 1);
        assert_eq!(versions["libc6:amd64"], "2.36-9");
    }

    #[test]
    fn applet_list_is_sanitised() {
        let applets = parse_applet_list("usr/bin/[\nsbin/acpid\n../etc/passwd\n\nbin/sh\nbin/sh\n");
        assert_eq!(applets, ["bin/sh", "sbin/acpid", "usr/bin/["]);
    }
}
