//! vhdx (being built).
