//! Vireo's native disk-image engine.
//!
//! Every format is opened through [`device::BlockSource`] (read side, guest view) and written
//! through [`device::BlockSink`]; format detection is by content, never by file name.
//! Invariants:
//! - parsers treat every byte of an input file as hostile: sizes and offsets are bounds-checked,
//!   table sizes are capped ([`device::Limits`]), no panics on any input;
//! - nothing is read or written outside the files given (backing/extent paths are resolved
//!   through [`device::PathPolicy`]);
//! - no async, no QEMU: `qemu-img` is only a test oracle.

pub mod device;
pub mod error;

// Native formats (qcow2, raw), detection and the operations built on them.
pub mod detect;
pub mod dio;
pub mod ops;
pub mod qcow2;
pub mod raw;

// Foreign formats (VMware, Hyper-V) and OVF/OVA packages.
pub mod ova;
pub mod ovf;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

pub use device::{BlockSink, BlockSource, Extent, ExtentKind, Format, Limits, PathPolicy};
pub use error::ImageError;
