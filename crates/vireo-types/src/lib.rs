//! Vireo's domain types, shared by every crate: validated names, VM specifications, lifecycle
//! states and the explicit transition table that governs them.
//!
//! Invariants:
//! - nothing here performs I/O; every function is pure and deterministic;
//! - a value of [`Name`] is always valid (checked on construction and on deserialization), so
//!   it can be used as a path component without further checks;
//! - [`lifecycle`] is the single source of truth for which action is allowed in which state.

pub mod lifecycle;
pub mod name;
pub mod size;
pub mod vm;

pub use lifecycle::{VmAction, VmEvent, VmState};
pub use name::{Name, NameError};
pub use vm::*;
