//! Locating OVMF (UEFI firmware for QEMU) and giving each VM its own variable store.
//!
//! OVMF ships as two flash images: the firmware code (shared, read-only) and a template of
//! the variable store that each VM needs a private, writable copy of. Code and variable store
//! must come from the same build (same flash size), so they are only ever located as a pair.
//!
//! Invariant: [`prepare_vars`] never overwrites an existing variable store (it holds the VM's
//! boot entries) and never leaves a partial copy behind (temp file + rename).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Directories searched by [`locate`], in order (Debian/Ubuntu, then Fedora/RHEL layouts).
pub const SEARCH_DIRS: [&str; 2] = ["/usr/share/OVMF", "/usr/share/edk2/ovmf"];

/// (code, vars) file-name pairs, preferred first: 4 MiB flash layout, then the legacy 2 MiB.
pub const FILE_PAIRS: [(&str, &str); 2] = [
    ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
    ("OVMF_CODE.fd", "OVMF_VARS.fd"),
];

/// A matching pair of OVMF images. From [`locate`], `vars` is the pristine template; in a
/// [`crate::argv::LaunchContext`], it is the VM's own copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvmfFiles {
    pub code: PathBuf,
    pub vars: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OvmfError {
    #[error(
        "no OVMF firmware found (looked for {pairs} in {dirs}); install the Debian package 'ovmf'"
    )]
    NotFound { dirs: String, pairs: String },
    #[error("cannot create the UEFI variable store {path}")]
    CopyVars {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Finds OVMF in the standard locations.
pub fn locate() -> Result<OvmfFiles, OvmfError> {
    let dirs: Vec<&Path> = SEARCH_DIRS.iter().map(Path::new).collect();
    locate_in(&dirs)
}

/// Finds the first complete (code, vars) pair in `dirs`.
pub fn locate_in(dirs: &[&Path]) -> Result<OvmfFiles, OvmfError> {
    for dir in dirs {
        for (code, vars) in FILE_PAIRS {
            let files = OvmfFiles {
                code: dir.join(code),
                vars: dir.join(vars),
            };
            if files.code.is_file() && files.vars.is_file() {
                return Ok(files);
            }
        }
    }
    Err(OvmfError::NotFound {
        dirs: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        pairs: FILE_PAIRS
            .iter()
            .map(|(c, v)| format!("{c}+{v}"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Ensures `dest` holds a variable store for a VM, copying `template.vars` if it does not
/// exist yet, and returns the pair to launch with (shared code, private vars).
pub fn prepare_vars(template: &OvmfFiles, dest: &Path) -> Result<OvmfFiles, OvmfError> {
    let launch = OvmfFiles {
        code: template.code.clone(),
        vars: dest.to_path_buf(),
    };
    if dest.exists() {
        return Ok(launch);
    }
    let err = |source| OvmfError::CopyVars {
        path: dest.to_path_buf(),
        source,
    };
    let data = std::fs::read(&template.vars).map_err(err)?;
    let tmp = dest.with_extension("fd.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    Ok(launch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_4m_pair_and_needs_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("OVMF_CODE_4M.fd"), b"code4").unwrap();
        std::fs::write(d.join("OVMF_CODE.fd"), b"code2").unwrap();
        std::fs::write(d.join("OVMF_VARS.fd"), b"vars2").unwrap();
        // 4M code without its vars is skipped in favour of the complete 2M pair.
        assert_eq!(locate_in(&[d]).unwrap().code, d.join("OVMF_CODE.fd"));
        std::fs::write(d.join("OVMF_VARS_4M.fd"), b"vars4").unwrap();
        let found = locate_in(&[Path::new("/nonexistent"), d]).unwrap();
        assert_eq!(found.code, d.join("OVMF_CODE_4M.fd"));
        assert_eq!(found.vars, d.join("OVMF_VARS_4M.fd"));
        let err = locate_in(&[Path::new("/nonexistent")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }

    #[test]
    fn vars_copy_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("code"), b"code").unwrap();
        std::fs::write(d.join("vars"), b"template").unwrap();
        let template = OvmfFiles {
            code: d.join("code"),
            vars: d.join("vars"),
        };
        let dest = d.join("vm-vars.fd");
        let launch = prepare_vars(&template, &dest).unwrap();
        assert_eq!(launch.vars, dest);
        assert_eq!(launch.code, template.code);
        assert_eq!(std::fs::read(&dest).unwrap(), b"template");
        // A VM's modified store is never replaced by the template.
        std::fs::write(&dest, b"boot entries").unwrap();
        prepare_vars(&template, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"boot entries");
        assert!(!d.join("vm-vars.fd.tmp").exists());
    }

    #[test]
    fn real_debian_ovmf_is_found() {
        // The development and CI machines install Debian's `ovmf` package.
        let files = locate().unwrap();
        assert!(files.code.starts_with("/usr/share/OVMF"), "{files:?}");
    }
}
