//! vireo-qmp (being built).
