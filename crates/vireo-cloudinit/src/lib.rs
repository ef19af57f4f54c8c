//! First-boot configuration for Vireo guests: cloud-init NoCloud seeds and Ignition configs.
//!
//! Everything here is pure (no I/O, no clock): the caller passes the inputs, including the
//! timestamp recorded in the ISO, and gets bytes back, so equal inputs give byte-identical seeds.
//!
//! - [`seed`] turns a [`SeedInput`] into the NoCloud files (`meta-data`, `user-data`, optional
//!   `network-config` and `vendor-data`), validating every piece with typed errors.
//! - [`iso9660`] writes those files as an ISO 9660 volume labelled `cidata` with Joliet and
//!   Rock Ridge names, and reads such volumes back (tests, fuzzing, diagnostics).
//! - [`ignition`] validates an Ignition config and builds QEMU's `-fw_cfg` argument for it.
//!
//! Invariants: every input is bounded ([`MAX_SEED_FILE_BYTES`], [`ignition::MAX_IGNITION_BYTES`],
//! [`iso9660::MAX_FILES`]) and untrusted input never panics.

pub mod ignition;
pub mod iso9660;
pub mod seed;
pub mod userdata;
pub mod yaml;

pub use ignition::{fw_cfg_args, validate_ignition, IgnitionError, IgnitionInfo};
pub use iso9660::{write_iso, IsoFile, IsoImage, IsoTimestamp, IsoWriteError};
pub use seed::{render_seed, IpPrefix, NicSeed, SeedError, SeedFiles, SeedInput};

/// Largest accepted size of any one seed file (user-data, vendor-data, network-config,
/// meta-data), in bytes: 1 MiB.
pub const MAX_SEED_FILE_BYTES: usize = 1 << 20;
