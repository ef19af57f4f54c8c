//! vireo-qemu (being built).
