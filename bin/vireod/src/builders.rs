//! Image builders the daemon offers (`POST /v1/images/build`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vireo_engine::{refuse_build_params, BuildParamError, BuildParams, BuiltImage, ImageBuilder};

/// The built-in tiny guest: Debian cloud kernel + busybox initramfs + qemu-guest-agent.
#[derive(Debug)]
pub struct TinyBuilder {
    /// Shared download/extraction cache (reused across builds).
    pub cache_dir: PathBuf,
}

impl ImageBuilder for TinyBuilder {
    fn check(&self, params: &BuildParams) -> Result<(), BuildParamError> {
        refuse_build_params("tiny", params)
    }

    fn build(
        &self,
        _params: &BuildParams,
        out_dir: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<BuiltImage> {
        let report = |s: &str| progress(s);
        let img = vireo_tinyimage::build(&vireo_tinyimage::BuildOptions {
            cache_dir: self.cache_dir.clone(),
            out_dir: out_dir.to_path_buf(),
            progress: Some(&report),
        })?;
        Ok(BuiltImage::Kernel {
            kernel: img.kernel,
            initrd: img.initrd,
            cmdline: img.cmdline,
            kernel_version: img.kernel_version,
            ready_marker: Some(img.ready_marker),
            default_data_disk_mib: (img.default_data_disk_bytes >> 20).max(1),
        })
    }
}

/// The tiny guest as a GPT disk that boots through GRUB under both SeaBIOS and OVMF (a
/// disk-boot template; VMs get copy-on-write overlays of it).
#[derive(Debug)]
pub struct TinyDiskBuilder {
    pub cache_dir: PathBuf,
}

impl ImageBuilder for TinyDiskBuilder {
    fn check(&self, params: &BuildParams) -> Result<(), BuildParamError> {
        refuse_build_params("tiny-disk", params)
    }

    fn build(
        &self,
        _params: &BuildParams,
        out_dir: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<BuiltImage> {
        let report = |s: &str| progress(s);
        let mut opts = vireo_tinyimage::DiskBuildOptions::new(self.cache_dir.clone(), out_dir);
        opts.progress = Some(&report);
        let disk = vireo_tinyimage::build_disk(&opts)?;
        Ok(BuiltImage::Disk {
            path: disk.path,
            firmware: vireo_types::Firmware::Bios,
            virtual_size_bytes: disk.virtual_size,
        })
    }
}

/// A Debian cloud image (`vireo image build debian [--release R] [--size S] [--packages …]`):
/// debootstrap of the release with the cloud kernel, cloud-init, qemu-guest-agent and
/// openssh-server (plus the requested packages) on a GPT disk that boots through SeaBIOS and
/// OVMF (see `vireo_distro`). Downloaded packages stay in `cache_dir`.
#[derive(Debug)]
pub struct DebianBuilder {
    pub cache_dir: PathBuf,
}

/// The Debian spec a request asks for (defaults for what it leaves out); not yet validated.
fn debian_spec(params: &BuildParams) -> vireo_distro::DebianSpec {
    let mut spec = vireo_distro::DebianSpec::default();
    if let Some(release) = &params.release {
        spec.release = release.clone();
    }
    if let Some(mib) = params.size_mib {
        spec.size_bytes = mib.saturating_mul(1 << 20);
    }
    spec.extra_packages = params.packages.clone();
    spec
}

/// Checks a Debian spec, naming the API field at fault.
fn check_debian(params: &BuildParams) -> Result<vireo_distro::ValidSpec, BuildParamError> {
    use vireo_distro::DistroError;
    let field = |e: &DistroError| match e {
        DistroError::Packages(vireo_distro::packages::PackageError::UnsupportedRelease(_)) => {
            "release"
        }
        DistroError::Packages(_) => "packages",
        DistroError::Disk(_) => "size_mib",
        _ => "builder",
    };
    if params.size_mib.is_some_and(|m| m > u64::MAX >> 20) {
        return Err(BuildParamError {
            field: "size_mib",
            message: "disk size is too large".into(),
        });
    }
    debian_spec(params).validate().map_err(|e| {
        let message = match (&e, params.size_mib) {
            // Sizes arrive in whole MiB, so only the range can be wrong: say it in MiB.
            (DistroError::Disk(_), Some(mib)) => format!(
                "disk size {mib} MiB is not between {} MiB (2 GiB) and {} MiB (2 TiB)",
                vireo_distro::disk::MIN_DISK_BYTES >> 20,
                vireo_distro::disk::MAX_DISK_BYTES >> 20
            ),
            _ => vireo_engine::error::chain(&e),
        };
        BuildParamError {
            field: field(&e),
            message,
        }
    })
}

impl ImageBuilder for DebianBuilder {
    fn check(&self, params: &BuildParams) -> Result<(), BuildParamError> {
        check_debian(params).map(drop)
    }

    fn build(
        &self,
        params: &BuildParams,
        out_dir: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<BuiltImage> {
        let mut opts = vireo_distro::BuildOptions::new(self.cache_dir.clone(), out_dir);
        opts.spec = debian_spec(params);
        opts.progress = Some(progress);
        let image = vireo_distro::build_debian(&opts)?;
        Ok(BuiltImage::Disk {
            path: image.path,
            firmware: vireo_types::Firmware::Bios,
            virtual_size_bytes: image.virtual_size,
        })
    }
}

/// A kernel of any registered kernel image (for the accelerator probe).
pub async fn any_kernel(store: &Arc<dyn vireo_store::Store>) -> Option<PathBuf> {
    let range = store.range("/images/").await.ok()?;
    range.kvs.iter().find_map(|kv| {
        let v: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
        let k = v.get("files")?.get("kernel")?.as_str()?;
        let p = PathBuf::from(k);
        p.is_file().then_some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(release: Option<&str>, size_mib: Option<u64>, packages: &[&str]) -> BuildParams {
        BuildParams {
            release: release.map(String::from),
            size_mib,
            packages: packages.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn debian_options_are_checked_field_by_field() {
        let b = DebianBuilder {
            cache_dir: PathBuf::from("/nonexistent"),
        };
        assert!(b.check(&BuildParams::default()).is_ok());
        let ok = check_debian(&params(Some("bookworm"), Some(8192), &["vim", "curl"])).unwrap();
        assert_eq!(ok.size_bytes, 8 << 30);
        assert!(ok.packages.iter().any(|p| p == "vim"));
        for (p, field) in [
            (params(Some("sid; rm -rf /"), None, &[]), "release"),
            (params(Some("jessie"), None, &[]), "release"),
            (params(None, Some(1024), &[]), "size_mib"),
            (params(None, Some(u64::MAX), &[]), "size_mib"),
            (params(None, None, &["-oops"]), "packages"),
            (params(None, None, &["vim", "../x"]), "packages"),
        ] {
            let e = b.check(&p).unwrap_err();
            assert_eq!(e.field, field, "{p:?}: {}", e.message);
            assert!(!e.message.is_empty());
        }
        assert_eq!(
            b.check(&params(None, Some(1024), &[])).unwrap_err().message,
            "disk size 1024 MiB is not between 2048 MiB (2 GiB) and 2097152 MiB (2 TiB)"
        );
    }

    #[test]
    fn tiny_builders_take_no_options() {
        let b = TinyBuilder {
            cache_dir: PathBuf::from("/nonexistent"),
        };
        assert!(b.check(&BuildParams::default()).is_ok());
        let e = b.check(&params(None, Some(4096), &[])).unwrap_err();
        assert_eq!(e.field, "size_mib");
        assert_eq!(e.message, "image builder tiny takes no size_mib option");
    }
}
