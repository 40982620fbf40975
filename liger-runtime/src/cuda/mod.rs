//! CUDA through cudarc with dynamic loading: finding the libraries, NVRTC compilation.
//!
//! Nothing here links against CUDA: the libraries are found at run time (see [`libs`]), and a
//! machine without them gets a typed error, never a panic.

pub mod api;
pub mod bench;
pub mod device;
pub mod engine;
pub mod exec;
mod gemm;
pub mod libs;
pub mod nvrtc;
pub(crate) mod profile;
