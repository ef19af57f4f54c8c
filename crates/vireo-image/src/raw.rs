//! raw (being built).
