//! The `dir` pool driver: one directory holding one qcow2 file per volume, named
//! `<uuid>.qcow2`, thin-provisioned. Overlays record their backing file by absolute path so a
//! volume can be a linked clone of a volume in another pool or of an image.
//!
//! Invariants: files are only ever created through a temporary name and renamed into place;
//! imports are opened with a path policy that allows no file besides the upload itself.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use uuid::Uuid;
use vireo_api::storage::PoolDriverKind;
use vireo_image::ops::{convert_with, ConvertOptions, Progress};
use vireo_image::{qcow2, Format, Limits, PathPolicy};

use super::{PoolDriver, PoolUsage, ProgressFn, StorageError, VolumeStat};

/// A directory pool.
#[derive(Debug, Clone)]
pub struct DirPool {
    root: PathBuf,
    /// Directories backing files of volumes may live in (all pools, the image store).
    allowed_backing_dirs: Vec<PathBuf>,
}

impl DirPool {
    pub fn new(root: PathBuf, allowed_backing_dirs: Vec<PathBuf>) -> DirPool {
        DirPool {
            root,
            allowed_backing_dirs,
        }
    }

    fn trusted_policy(&self) -> PathPolicy {
        let mut dirs = self.allowed_backing_dirs.clone();
        dirs.push(self.root.clone());
        PathPolicy { allowed_dirs: dirs }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
    let context = context.into();
    move |source| StorageError::Io { context, source }
}

fn snap(
    context: impl Into<String>,
) -> impl FnOnce(vireo_image::qcow2::SnapshotError) -> StorageError {
    let context = context.into();
    move |source| StorageError::Snapshot { context, source }
}

fn image(context: impl Into<String>) -> impl FnOnce(vireo_image::ImageError) -> StorageError {
    let context = context.into();
    move |source| StorageError::Image { context, source }
}

/// Converts an untrusted image file (an upload) to qcow2 at `dst`. The source may name no
/// other file: an empty allow-list would admit its own directory, so exactly a directory that
/// does not exist is allowed.
pub fn convert_untrusted(
    src: &Path,
    dst: &Path,
    progress: ProgressFn<'_>,
    cancel: &AtomicBool,
) -> Result<(), StorageError> {
    let mut opts = ConvertOptions::new(Format::Qcow2);
    let upload_dir = src.parent().unwrap_or(Path::new("/nonexistent"));
    opts.policy = PathPolicy {
        allowed_dirs: vec![upload_dir.join(".no-references")],
    };
    let mut cb = |p: Progress| progress(p.done_bytes, p.total_bytes);
    convert_with(src, dst, &opts, &mut cb, cancel)
        .map_err(image("converting the uploaded image"))?;
    Ok(())
}

impl PoolDriver for DirPool {
    fn kind(&self) -> PoolDriverKind {
        PoolDriverKind::Dir
    }

    fn init(&self) -> Result<(), StorageError> {
        if !self.root.is_absolute() {
            return Err(StorageError::PoolPath {
                path: self.root.clone(),
                reason: "must be an absolute path".into(),
            });
        }
        match std::fs::symlink_metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StorageError::PoolPath {
                    path: self.root.clone(),
                    reason: "exists and is not a directory".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.root).map_err(io(format!(
                    "creating pool directory {}",
                    self.root.display()
                )))?;
            }
            Err(e) => return Err(io(format!("inspecting {}", self.root.display()))(e)),
        }
        // Half-written copies of a daemon that died mid-operation (the image engine writes
        // `.<file>.vireo-<pid>-<n>.tmp` and renames when done): nothing can finish them now.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".qcow2.vireo-") && name.ends_with(".tmp")
                {
                    tracing::info!(file = %name, "removing an interrupted copy");
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Volume data is private to the daemon (and the QEMU processes it runs as root).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("restricting {}", self.root.display())))?;
        Ok(())
    }

    fn usage(&self) -> Result<PoolUsage, StorageError> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| StorageError::Io {
            context: format!("statvfs {}", self.root.display()),
            source: std::io::Error::from(e),
        })?;
        let frag = st.fragment_size() as u64;
        let capacity = st.blocks() as u64 * frag;
        let free = st.blocks_free() as u64 * frag;
        Ok(PoolUsage {
            capacity_bytes: capacity,
            used_bytes: capacity.saturating_sub(free),
            available_bytes: st.blocks_available() as u64 * frag,
        })
    }

    fn volume_path(&self, id: Uuid) -> PathBuf {
        self.root.join(format!("{id}.qcow2"))
    }

    fn stat(&self, id: Uuid) -> Result<VolumeStat, StorageError> {
        let path = self.volume_path(id);
        let meta = std::fs::metadata(&path).map_err(io(format!("reading {}", path.display())))?;
        let info = vireo_image::ops::info(
            &path,
            &vireo_image::Limits::default(),
            &self.trusted_policy(),
        )
        .map_err(image(format!("reading volume {}", path.display())))?;
        Ok(VolumeStat {
            virtual_size_bytes: info.virtual_size,
            allocated_bytes: meta.blocks() * 512,
        })
    }

    fn create(&self, id: Uuid, size: u64, backing: Option<&Path>) -> Result<(), StorageError> {
        let path = self.volume_path(id);
        let spec = vireo_image::ops::CreateSpec {
            backing: backing.map(Path::to_path_buf),
            ..Default::default()
        };
        // A backing volume's own chain may go on into other pools and the image store (a
        // clone of a template made from a disk image: clone → template volume → image).
        vireo_image::ops::create_with_policy(
            &path,
            Format::Qcow2,
            size,
            &spec,
            Some(&self.trusted_policy()),
        )
        .map_err(image(format!("creating volume {}", path.display())))
    }

    fn import(
        &self,
        id: Uuid,
        src: &Path,
        progress: ProgressFn<'_>,
        cancel: &AtomicBool,
    ) -> Result<(), StorageError> {
        convert_untrusted(src, &self.volume_path(id), progress, cancel)
    }

    fn copy_from(
        &self,
        id: Uuid,
        src: &Path,
        snapshot: Option<&str>,
        progress: ProgressFn<'_>,
        cancel: &AtomicBool,
    ) -> Result<(), StorageError> {
        let dst = self.volume_path(id);
        let mut opts = ConvertOptions::new(Format::Qcow2);
        opts.policy = self.trusted_policy();
        opts.source_snapshot = snapshot.map(str::to_string);
        let mut cb = |p: Progress| progress(p.done_bytes, p.total_bytes);
        convert_with(src, &dst, &opts, &mut cb, cancel)
            .map_err(image(format!("copying {}", src.display())))?;
        Ok(())
    }

    fn resize(&self, id: Uuid, size: u64) -> Result<(), StorageError> {
        let path = self.volume_path(id);
        vireo_image::ops::resize(&path, size, &Limits::default(), &self.trusted_policy()).map_err(
            |source| StorageError::Resize {
                context: format!("resizing {}", path.display()),
                source,
            },
        )
    }

    fn snapshot_create(&self, id: Uuid, name: &str) -> Result<(), StorageError> {
        let path = self.volume_path(id);
        qcow2::snapshot_create(&path, name, &Limits::default())
            .map(|_| ())
            .map_err(snap(format!("snapshotting {}", path.display())))
    }

    fn snapshot_apply(&self, id: Uuid, name: &str) -> Result<(), StorageError> {
        let path = self.volume_path(id);
        qcow2::snapshot_apply(&path, name, &Limits::default())
            .map_err(snap(format!("restoring {}", path.display())))
    }

    fn snapshot_delete(&self, id: Uuid, name: &str) -> Result<(), StorageError> {
        let path = self.volume_path(id);
        qcow2::snapshot_delete(&path, name, &Limits::default())
            .map_err(snap(format!("deleting a snapshot of {}", path.display())))
    }

    fn snapshot_names(&self, id: Uuid) -> Result<Vec<String>, StorageError> {
        let path = self.volume_path(id);
        qcow2::snapshot_list(&path, &Limits::default())
            .map(|v| v.into_iter().map(|s| s.name).collect())
            .map_err(snap(format!("listing snapshots of {}", path.display())))
    }

    fn adopt(&self, id: Uuid, file: &Path) -> Result<(), StorageError> {
        let dst = self.volume_path(id);
        match std::fs::rename(file, &dst) {
            Ok(()) => Ok(()),
            // Another filesystem: copy (through a temporary name), then drop the original.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                self.copy_from(id, file, None, &mut |_, _| {}, &AtomicBool::new(false))?;
                std::fs::remove_file(file).map_err(io(format!("removing {}", file.display())))
            }
            Err(e) => Err(io(format!("moving {} into the pool", file.display()))(e)),
        }
    }

    fn delete(&self, id: Uuid) -> Result<(), StorageError> {
        let path = self.volume_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", path.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> (tempfile::TempDir, DirPool) {
        let t = tempfile::tempdir().unwrap();
        let p = DirPool::new(t.path().join("pool"), vec![]);
        p.init().unwrap();
        (t, p)
    }

    /// clone → template volume → image in the image store: the new volume's backing chain
    /// leaves the backing volume's directory into another trusted one.
    #[test]
    fn overlay_of_a_volume_whose_chain_goes_into_the_image_store() {
        let t = tempfile::tempdir().unwrap();
        let images = t.path().join("images").join("debian-1");
        std::fs::create_dir_all(&images).unwrap();
        let image = images.join("disk.qcow2");
        vireo_image::ops::create(&image, Format::Qcow2, 8 << 20, None).unwrap();
        let p = DirPool::new(t.path().join("pool"), vec![t.path().join("images")]);
        p.init().unwrap();
        let template = Uuid::now_v7();
        p.create(template, 0, Some(&image)).unwrap();
        let clone = Uuid::now_v7();
        p.create(clone, 0, Some(&p.volume_path(template))).unwrap();
        assert_eq!(p.stat(clone).unwrap().virtual_size_bytes, 8 << 20);
        // Directories the pool does not trust stay refused.
        let other = t.path().join("elsewhere");
        std::fs::create_dir_all(&other).unwrap();
        vireo_image::ops::create(&other.join("b.qcow2"), Format::Qcow2, 8 << 20, None).unwrap();
        let outside = Uuid::now_v7();
        p.create(outside, 0, Some(&other.join("b.qcow2"))).unwrap();
        assert!(p
            .create(Uuid::now_v7(), 0, Some(&p.volume_path(outside)))
            .is_err());
    }

    #[test]
    fn create_overlay_copy_delete() {
        let (_t, p) = pool();
        let base = Uuid::now_v7();
        p.create(base, 8 << 20, None).unwrap();
        assert_eq!(p.stat(base).unwrap().virtual_size_bytes, 8 << 20);
        let top = Uuid::now_v7();
        p.create(top, 0, Some(&p.volume_path(base))).unwrap();
        assert_eq!(p.stat(top).unwrap().virtual_size_bytes, 8 << 20);
        let copy = Uuid::now_v7();
        let mut seen = 0;
        p.copy_from(
            copy,
            &p.volume_path(top),
            None,
            &mut |d, _| seen = d,
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(p.stat(copy).unwrap().virtual_size_bytes, 8 << 20);
        assert_eq!(seen, 8 << 20);
        p.delete(copy).unwrap();
        p.delete(copy).unwrap();
        let loose = p.root.join("loose.qcow2");
        vireo_image::ops::create(&loose, Format::Qcow2, 1 << 20, None).unwrap();
        let adopted = Uuid::now_v7();
        p.adopt(adopted, &loose).unwrap();
        assert!(!loose.exists());
        assert_eq!(p.stat(adopted).unwrap().virtual_size_bytes, 1 << 20);
        assert!(!p.volume_path(copy).exists());
        assert!(p.usage().unwrap().capacity_bytes > 0);
    }

    #[test]
    fn resize_and_snapshots() {
        let (_t, p) = pool();
        let v = Uuid::now_v7();
        p.create(v, 4 << 20, None).unwrap();
        p.snapshot_create(v, "s1").unwrap();
        assert!(p.snapshot_create(v, "s1").unwrap_err().is_invalid_input());
        p.resize(v, 8 << 20).unwrap();
        assert_eq!(p.stat(v).unwrap().virtual_size_bytes, 8 << 20);
        assert!(p.resize(v, 2 << 20).is_err(), "volumes only grow");
        // A full copy of the snapshot has the size it had then.
        let c = Uuid::now_v7();
        p.copy_from(
            c,
            &p.volume_path(v),
            Some("s1"),
            &mut |_, _| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(p.stat(c).unwrap().virtual_size_bytes, 4 << 20);
        p.snapshot_apply(v, "s1").unwrap();
        assert_eq!(p.stat(v).unwrap().virtual_size_bytes, 4 << 20);
        assert_eq!(p.snapshot_names(v).unwrap(), vec!["s1".to_string()]);
        p.snapshot_delete(v, "s1").unwrap();
        assert!(p.snapshot_names(v).unwrap().is_empty());
        assert!(p.snapshot_apply(v, "s1").unwrap_err().is_invalid_input());
    }

    #[test]
    fn import_refuses_images_that_reference_other_files() {
        let (t, p) = pool();
        let victim = Uuid::now_v7();
        p.create(victim, 1 << 20, None).unwrap();
        // An "upload" that is an overlay of a volume in the pool: must not be followed.
        let up_dir = t.path().join("upload");
        std::fs::create_dir(&up_dir).unwrap();
        let upload = up_dir.join("disk");
        vireo_image::ops::create(&upload, Format::Qcow2, 0, Some(&p.volume_path(victim))).unwrap();
        let id = Uuid::now_v7();
        let err = p
            .import(id, &upload, &mut |_, _| {}, &AtomicBool::new(false))
            .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        assert!(!p.volume_path(id).exists());
    }

    #[test]
    fn init_sweeps_interrupted_copies() {
        let (t, p) = pool();
        let stale = p.root.join(".0192.qcow2.vireo-77-1.tmp");
        let keep = p.root.join("0192.qcow2");
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&keep, b"x").unwrap();
        p.init().unwrap();
        assert!(!stale.exists());
        assert!(keep.exists());
        drop(t);
    }

    #[test]
    fn init_rejects_relative_and_file_paths() {
        let t = tempfile::tempdir().unwrap();
        assert!(DirPool::new("rel".into(), vec![]).init().is_err());
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(DirPool::new(f, vec![]).init().is_err());
    }
}
