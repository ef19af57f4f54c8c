//! Storage pool drivers: where volume data lives and how it is created, copied, resized and
//! snapshotted. The engine keeps pool and volume *records* in the state store and calls a
//! [`PoolDriver`] for the data; a new backend (LVM-thin, ZFS, Ceph RBD) is a new driver and
//! touches nothing else.
//!
//! Invariants:
//! - drivers are synchronous and run on blocking threads; they never touch the state store;
//! - a volume is addressed by its UUID, never by a user-supplied string, so no request can
//!   make a driver reach outside its pool;
//! - every driver call that creates data either completes or leaves nothing behind (write to a
//!   temporary name, rename into place).

pub mod dir;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use uuid::Uuid;
use vireo_api::storage::PoolDriverKind;

/// Errors of a pool driver, with the volume or path they concern.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("pool directory {path}: {reason}")]
    PoolPath { path: PathBuf, reason: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}")]
    Image {
        context: String,
        #[source]
        source: vireo_image::ImageError,
    },
    #[error("{context}")]
    Snapshot {
        context: String,
        #[source]
        source: vireo_image::qcow2::SnapshotError,
    },
    #[error("{context}")]
    Resize {
        context: String,
        #[source]
        source: vireo_image::ops::ResizeError,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl StorageError {
    /// Whether the error is the caller's fault (bad or hostile input) rather than the host's.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            StorageError::Image { source, .. } => {
                !matches!(source, vireo_image::ImageError::Io { .. })
            }
            StorageError::Unsupported(_) => true,
            StorageError::Snapshot { source, .. } => {
                !matches!(source, vireo_image::qcow2::SnapshotError::Image { .. })
            }
            _ => false,
        }
    }
}

/// Filesystem figures of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
}

/// What a driver reports about one volume's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeStat {
    pub virtual_size_bytes: u64,
    pub allocated_bytes: u64,
}

/// Progress callback of long copies: (done, total) guest bytes.
pub type ProgressFn<'a> = &'a mut dyn FnMut(u64, u64);

/// One pool's data plane.
pub trait PoolDriver: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> PoolDriverKind;
    /// Prepares the pool's storage; idempotent.
    fn init(&self) -> Result<(), StorageError>;
    fn usage(&self) -> Result<PoolUsage, StorageError>;
    /// Where QEMU and the image engine find the volume.
    fn volume_path(&self, id: Uuid) -> PathBuf;
    fn stat(&self, id: Uuid) -> Result<VolumeStat, StorageError>;
    /// Creates an empty volume, or a copy-on-write overlay of `backing` (`size` 0 = the
    /// backing's size).
    fn create(&self, id: Uuid, size: u64, backing: Option<&Path>) -> Result<(), StorageError>;
    /// Converts the image file `src` (any format the image engine reads; references to other
    /// files are refused) into a new volume.
    fn import(
        &self,
        id: Uuid,
        src: &Path,
        progress: ProgressFn<'_>,
        cancel: &AtomicBool,
    ) -> Result<(), StorageError>;
    /// Makes a new independent volume with the guest-visible content of `src` (a volume of
    /// any pool, with its backing chain flattened), or of its internal snapshot `snapshot`.
    fn copy_from(
        &self,
        id: Uuid,
        src: &Path,
        snapshot: Option<&str>,
        progress: ProgressFn<'_>,
        cancel: &AtomicBool,
    ) -> Result<(), StorageError>;
    /// Grows a volume that no running QEMU has open.
    fn resize(&self, id: Uuid, size: u64) -> Result<(), StorageError>;
    /// Internal snapshots of a volume no running QEMU has open.
    fn snapshot_create(&self, id: Uuid, name: &str) -> Result<(), StorageError>;
    fn snapshot_apply(&self, id: Uuid, name: &str) -> Result<(), StorageError>;
    fn snapshot_delete(&self, id: Uuid, name: &str) -> Result<(), StorageError>;
    fn snapshot_names(&self, id: Uuid) -> Result<Vec<String>, StorageError>;
    /// Moves a standalone qcow2 file the daemon itself produced (e.g. a converted OVA disk)
    /// into the pool as volume `id`.
    fn adopt(&self, id: Uuid, file: &Path) -> Result<(), StorageError>;
    fn delete(&self, id: Uuid) -> Result<(), StorageError>;
}
