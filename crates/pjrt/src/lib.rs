//! Safe Rust over the PJRT C API (work in progress).
