//! vireo-image (being built).
