//! ova (being built).
