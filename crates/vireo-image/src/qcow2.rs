//! qcow2 (being built).
