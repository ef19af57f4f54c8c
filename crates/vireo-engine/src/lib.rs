//! Vireo's engine: per-VM actors, the lifecycle, operations with undo, crash recovery.
//! It has no HTTP in it: the daemon's handlers parse requests, call [`Engine`] and map
//! [`EngineError`]s to API errors.
//!
//! Invariants:
//! - every host side effect goes through [`hv::Hypervisor`] / [`hv::Machine`] (QEMU) or the
//!   image engine (disk files); the engine itself only creates directories;
//! - requests are validated before an operation starts: a rejected request changes nothing;
//! - an operation that fails (or is interrupted by a crash) undoes its journal.

pub mod actor;
pub mod console;
pub mod db;
pub mod engine;
pub mod error;
pub mod events;
pub mod fake_hv;
pub mod hv;
pub mod net;
pub mod ops;
pub mod qemu_hv;
pub mod records;
pub mod storage;

pub use engine::{
    refuse_build_params, BuildParamError, BuildParams, BuiltImage, Engine, EngineConfig,
    ImageBuilder,
};
pub use error::{EngineError, Result};
