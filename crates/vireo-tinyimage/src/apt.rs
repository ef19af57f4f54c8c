//! Debian packages for the tiny image: resolve versions with `apt-cache`, fetch `.deb` files
//! with `apt-get download` into a cache, and extract them with `dpkg-deb -x`.
//!
//! Cache layout (under the caller's cache directory):
//! - `debs/<package>_<version>_<arch>.deb` — verified against the size and SHA-256 that
//!   `apt-cache show` reports before it is moved into place;
//! - `trees/<package>_<version>_<arch>/` — the extracted package.
//!
//! Invariants: both kinds of entry appear only by `rename` from a temporary sibling once they
//! are complete, so an existing entry is always whole and concurrent builds at worst duplicate
//! work. A current cache needs no network access: only local `apt-cache` queries run.
//! `apt-get update` runs (once per build) only when apt does not know a package or a
//! download fails, which is what stale package lists look like.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;

/// Largest `.deb` accepted (Debian's kernel image package is ~30 MB).
const MAX_DEB_BYTES: u64 = 512 << 20;

/// Errors while resolving, downloading or extracting packages.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("cannot run `{argv}`")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: String,
        stderr: String,
    },
    #[error("apt does not know package {package:?}")]
    UnknownPackage { package: String },
    #[error("`apt-cache depends {package}` names no linux-image package")]
    NoKernelDependency { package: String },
    #[error("cannot parse `apt-cache show` output for {package:?}: missing field {field}")]
    MissingField {
        package: String,
        field: &'static str,
    },
    #[error("package {package:?} has unsupported version or architecture {value:?}")]
    UnsafeName { package: String, value: String },
    #[error("downloaded {path} does not match the package index ({what})")]
    Mismatch { path: PathBuf, what: String },
    #[error("`apt-get download {package}` produced {count} .deb files, expected one")]
    DownloadCount { package: String, count: usize },
    #[error("cache I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AptError {
    /// Errors that stale package lists explain (and `apt-get update` may fix).
    fn wants_update(&self) -> bool {
        matches!(
            self,
            AptError::UnknownPackage { .. } | AptError::NoKernelDependency { .. }
        ) || matches!(self, AptError::Failed { argv, .. } if argv.starts_with("apt-get download"))
    }
}

/// One package version as the package index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub package: String,
    pub version: String,
    pub architecture: String,
    pub size: u64,
    pub sha256: String,
}

impl PackageInfo {
    /// File-system-safe cache key `<package>_<version>_<arch>` (`:` of epochs becomes `%3a`,
    /// as apt does).
    pub fn cache_key(&self) -> String {
        format!(
            "{}_{}_{}",
            self.package,
            self.version.replace(':', "%3a"),
            self.architecture
        )
    }
}

/// Parses the first `Depends:` line naming a `linux-image-*` package out of
/// `apt-cache depends <meta>` output.
pub fn parse_kernel_dependency(meta: &str, output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let target = line.trim().strip_prefix("Depends:")?.trim();
        // Alternatives and virtual packages are rendered as `<name>`; those are not it.
        (target.starts_with("linux-image-") && target != meta).then(|| target.to_owned())
    })
}

/// Parses `apt-cache show --no-all-versions` stanzas (first stanza per package wins).
pub fn parse_show(output: &str) -> Vec<PackageInfo> {
    let mut found: Vec<PackageInfo> = Vec::new();
    for stanza in output.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
            })
        };
        let (Some(package), Some(version), Some(architecture), Some(size), Some(sha256)) = (
            field("Package"),
            field("Version"),
            field("Architecture"),
            field("Size").and_then(|s| s.parse().ok()),
            field("SHA256"),
        ) else {
            continue;
        };
        if found.iter().any(|p| p.package == package) {
            continue;
        }
        found.push(PackageInfo {
            package,
            version,
            architecture,
            size,
            sha256: sha256.to_ascii_lowercase(),
        });
    }
    found
}

/// Debian package names, versions and architectures use a small alphabet; anything else is
/// refused before it reaches a file name or an apt argument.
fn check_safe(package: &str, value: &str) -> Result<(), AptError> {
    let ok = !value.is_empty()
        && !value.starts_with(['-', '.'])
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.:~_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AptError::UnsafeName {
            package: package.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// A fetched and extracted package.
#[derive(Debug, Clone)]
pub struct CachedPackage {
    pub info: PackageInfo,
    pub tree: PathBuf,
}

/// The package cache (see module docs for its layout and invariants).
pub struct PackageCache<'a> {
    dir: PathBuf,
    progress: &'a dyn Fn(&str),
    updated: bool,
}

impl std::fmt::Debug for PackageCache<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageCache")
            .field("dir", &self.dir)
            .field("updated", &self.updated)
            .finish()
    }
}

impl<'a> PackageCache<'a> {
    pub fn new(dir: &Path, progress: &'a dyn Fn(&str)) -> Result<Self, AptError> {
        for sub in ["debs", "trees"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| AptError::Io { path, source })?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            progress,
            updated: false,
        })
    }

    /// Runs `op`; when it fails in a way stale package lists explain and `apt-get update` has
    /// not run yet in this build, updates and retries once.
    fn with_update_retry<T>(
        &mut self,
        mut op: impl FnMut(&mut Self) -> Result<T, AptError>,
    ) -> Result<T, AptError> {
        match op(self) {
            Err(e) if e.wants_update() && !self.updated => {
                (self.progress)(&format!("{e}; running apt-get update and retrying"));
                tracing::info!(error = %e, "package lookup failed; running apt-get update");
                self.updated = true;
                run(Command::new("apt-get").args(["update", "-qq"]))?;
                op(self)
            }
            other => other,
        }
    }

    /// The versioned kernel package a meta package (`linux-image-cloud-amd64`) points at.
    pub fn resolve_kernel_package(&mut self, meta: &str) -> Result<String, AptError> {
        check_safe(meta, meta)?;
        self.with_update_retry(|_| {
            let out = run(Command::new("apt-cache").args(["depends", meta]))
                .map_err(|e| unknown_if_no_packages(e, meta))?;
            parse_kernel_dependency(meta, &out).ok_or_else(|| AptError::NoKernelDependency {
                package: meta.to_owned(),
            })
        })
    }

    /// Makes sure each package's candidate version is downloaded and extracted.
    pub fn fetch(&mut self, packages: &[&str]) -> Result<Vec<CachedPackage>, AptError> {
        for p in packages {
            check_safe(p, p)?;
        }
        self.with_update_retry(|cache| {
            let infos = cache.show(packages)?;
            infos
                .into_iter()
                .map(|info| {
                    let deb = cache.ensure_deb(&info)?;
                    let tree = cache.ensure_tree(&info, &deb)?;
                    Ok(CachedPackage { info, tree })
                })
                .collect()
        })
    }

    fn show(&self, packages: &[&str]) -> Result<Vec<PackageInfo>, AptError> {
        let mut cmd = Command::new("apt-cache");
        cmd.args(["show", "--no-all-versions"]).args(packages);
        let first = packages.first().copied().unwrap_or_default();
        let out = run(&mut cmd).map_err(|e| unknown_if_no_packages(e, first))?;
        let infos = parse_show(&out);
        packages
            .iter()
            .map(|p| {
                let info = infos
                    .iter()
                    .find(|i| i.package == *p)
                    .cloned()
                    .ok_or_else(|| AptError::UnknownPackage {
                        package: (*p).to_owned(),
                    })?;
                check_safe(p, &info.version)?;
                check_safe(p, &info.architecture)?;
                if info.size > MAX_DEB_BYTES {
                    return Err(AptError::Mismatch {
                        path: PathBuf::from(p),
                        what: format!("index says {} bytes, over the limit", info.size),
                    });
                }
                Ok(info)
            })
            .collect()
    }

    fn ensure_deb(&self, info: &PackageInfo) -> Result<PathBuf, AptError> {
        let target = self
            .dir
            .join("debs")
            .join(format!("{}.deb", info.cache_key()));
        if std::fs::metadata(&target).is_ok_and(|m| m.len() == info.size) {
            return Ok(target);
        }
        (self.progress)(&format!(
            "downloading {} {} ({} KiB)",
            info.package,
            info.version,
            info.size / 1024
        ));
        let tmp = tempdir_in(&self.dir.join("debs"))?;
        run(Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root"])
            .arg(format!("{}={}", info.package, info.version))
            .current_dir(tmp.path()))?;
        let debs: Vec<PathBuf> = std::fs::read_dir(tmp.path())
            .map_err(|source| AptError::Io {
                path: tmp.path().to_owned(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        let [downloaded] = debs.as_slice() else {
            return Err(AptError::DownloadCount {
                package: info.package.clone(),
                count: debs.len(),
            });
        };
        verify(downloaded, info)?;
        std::fs::rename(downloaded, &target).map_err(|source| AptError::Io {
            path: target.clone(),
            source,
        })?;
        Ok(target)
    }

    fn ensure_tree(&self, info: &PackageInfo, deb: &Path) -> Result<PathBuf, AptError> {
        let target = self.dir.join("trees").join(info.cache_key());
        if target.is_dir() {
            return Ok(target);
        }
        (self.progress)(&format!("extracting {} {}", info.package, info.version));
        let tmp = tempdir_in(&self.dir.join("trees"))?;
        let root = tmp.path().join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        match std::fs::rename(&root, &target) {
            Ok(()) => Ok(target),
            // A concurrent build finished the same tree first; theirs is complete.
            Err(_) if target.is_dir() => Ok(target),
            Err(source) => Err(AptError::Io {
                path: target,
                source,
            }),
        }
    }
}

fn tempdir_in(dir: &Path) -> Result<tempfile::TempDir, AptError> {
    tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(dir)
        .map_err(|source| AptError::Io {
            path: dir.to_owned(),
            source,
        })
}

fn verify(path: &Path, info: &PackageInfo) -> Result<(), AptError> {
    let io = |source| AptError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = sha2::Sha256::new();
    let len = std::io::copy(&mut file, &mut hasher).map_err(io)?;
    if len != info.size {
        return Err(AptError::Mismatch {
            path: path.to_owned(),
            what: format!("{len} bytes, index says {}", info.size),
        });
    }
    let digest = hex::encode(hasher.finalize());
    if digest != info.sha256 {
        return Err(AptError::Mismatch {
            path: path.to_owned(),
            what: format!("sha256 {digest}, index says {}", info.sha256),
        });
    }
    Ok(())
}

/// apt reports unknown packages as `E: No packages found` (exit 100).
fn unknown_if_no_packages(e: AptError, package: &str) -> AptError {
    match &e {
        AptError::Failed { stderr, .. }
            if stderr.contains("No packages found") || stderr.contains("Unable to locate") =>
        {
            AptError::UnknownPackage {
                package: package.to_owned(),
            }
        }
        _ => e,
    }
}

/// Runs a command to completion and returns its stdout; failures carry argv and stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, AptError> {
    let argv = describe(cmd);
    tracing::debug!(%argv, "running");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| AptError::Spawn {
            argv: argv.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(AptError::Failed {
            argv,
            status: out.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last few lines of a tool's stderr, enough to explain a failure.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dependency_is_found() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_kernel_dependency("linux-image-cloud-amd64", out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let odd = "linux-image-cloud-amd64\n  Depends: <linux-image-virtual>\n  Recommends: foo\n";
        assert_eq!(
            parse_kernel_dependency("linux-image-cloud-amd64", odd),
            None
        );
    }

    #[test]
    fn show_stanzas_parse_and_first_wins() {
        let out = "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nArchitecture: amd64\n\
Filename: pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb\nSize: 928188\n\
SHA256: 3D3FDBE9\nDescription: x\n continued\n\n\
Package: busybox-static\nVersion: 1:1.30\nArchitecture: amd64\nSize: 1\nSHA256: 00\n\n\
Package: broken\nVersion: 1\n";
        let infos = parse_show(out);
        assert_eq!(infos.len(), 1);
        let bb = &infos[0];
        assert_eq!(bb.version, "1:1.35.0-4+deb12u1+b1");
        assert_eq!(bb.size, 928188);
        assert_eq!(bb.sha256, "3d3fdbe9");
        assert_eq!(
            bb.cache_key(),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64"
        );
    }

    #[test]
    fn unsafe_names_are_refused() {
        assert!(check_safe("p", "1:2.3+dfsg-1~bpo").is_ok());
        for bad in ["", "../x", "a/b", "-o", "a b", "x;y"] {
            assert!(check_safe("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn verify_checks_size_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.deb");
        std::fs::write(&path, b"abc").unwrap();
        let mut info = PackageInfo {
            package: "x".into(),
            version: "1".into(),
            architecture: "amd64".into(),
            size: 3,
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
        };
        verify(&path, &info).unwrap();
        info.size = 4;
        assert!(matches!(
            verify(&path, &info),
            Err(AptError::Mismatch { .. })
        ));
        info.size = 3;
        info.sha256 = "00".into();
        assert!(matches!(
            verify(&path, &info),
            Err(AptError::Mismatch { .. })
        ));
    }

    #[test]
    fn failures_carry_argv_and_stderr_tail() {
        let err =
            run(Command::new("sh").args(["-c", "echo one >&2; echo two >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("one | two"), "{text}");
        let unknown = unknown_if_no_packages(
            AptError::Failed {
                argv: "apt-cache show nope".into(),
                status: "exit status: 100".into(),
                stderr: "E: No packages found".into(),
            },
            "nope",
        );
        assert!(matches!(unknown, AptError::UnknownPackage { .. }));
    }
}
