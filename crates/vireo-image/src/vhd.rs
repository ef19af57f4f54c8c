//! vhd (being built).
