//! CUDA through cudarc with dynamic loading: finding the libraries ([`libs`]), NVRTC
//! ([`nvrtc`]), the device and its memory-pool counters ([`device`]), the engine that keeps
//! loaded modules and per-stream cuBLAS handles ([`engine`]), the executor and its host API
//! ([`exec`]), the device API on the caller's stream ([`api`]), and the GEMM floor ([`mod@bench`]).
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
