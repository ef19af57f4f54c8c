//! vmdk (being built).
