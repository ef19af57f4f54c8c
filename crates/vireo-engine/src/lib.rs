//! vireo-engine (being built).
