//! Image builders the daemon offers (`POST /v1/images/build`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vireo_engine::{BuiltImage, ImageBuilder};

/// The built-in tiny guest: Debian cloud kernel + busybox initramfs + qemu-guest-agent.
#[derive(Debug)]
pub struct TinyBuilder {
    /// Shared download/extraction cache (reused across builds).
    pub cache_dir: PathBuf,
}

impl ImageBuilder for TinyBuilder {
    fn build(
        &self,
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
    fn build(
        &self,
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

/// A Debian cloud image (`vireo image build debian`): debootstrap of bookworm with the cloud
/// kernel, cloud-init, qemu-guest-agent and openssh-server on a 4 GiB GPT disk that boots
/// through SeaBIOS and OVMF (see `vireo_distro`). Downloaded packages stay in `cache_dir`.
#[derive(Debug)]
pub struct DebianBuilder {
    pub cache_dir: PathBuf,
}

impl ImageBuilder for DebianBuilder {
    fn build(
        &self,
        out_dir: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<BuiltImage> {
        let mut opts = vireo_distro::BuildOptions::new(self.cache_dir.clone(), out_dir);
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
