//! vireo-testkit (being built).
