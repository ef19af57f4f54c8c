//! vireo-tinyimage (being built).
