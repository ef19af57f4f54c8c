//! vireo-store (being built).
