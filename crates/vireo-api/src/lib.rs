//! vireo-api (being built).
