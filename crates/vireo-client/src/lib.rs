//! vireo-client (being built).
