//! ovf (being built).
