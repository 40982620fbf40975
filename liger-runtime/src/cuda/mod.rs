//! CUDA through cudarc with dynamic loading: finding the libraries ([`libs`]), NVRTC
//! ([`nvrtc`]), the pipeline-to-module path through the kernel cache ([`compile`]), the device
//! and its memory-pool counters ([`device`]), the engine that keeps loaded modules and
//! per-stream cuBLAS handles ([`engine`]), the executor's backend of the strategy driver
//! ([`backend`]) with its checked launches (`launch`) and device-side input checks
//! (`checks`), the host API ([`host`]), the device API on the caller's stream ([`api`]), and
//! the GEMM floor ([`mod@bench`]).
//!
//! Nothing here links against CUDA: the libraries are found at run time (see [`libs`]), and a
//! machine without them gets a typed error, never a panic.

pub mod api;
pub mod backend;
pub mod bench;
pub(crate) mod checks;
pub mod compile;
pub mod device;
pub mod engine;
mod gemm;
pub mod host;
pub(crate) mod launch;
pub mod libs;
pub mod nvrtc;
pub(crate) mod profile;

use crate::Error;

/// Maps a driver error to [`Error::Driver`] with what the runtime was doing.
pub(crate) fn drv(during: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |source| Error::Driver { during, source }
}

/// Maps a cuBLAS error to [`Error::Cublas`] with what the runtime was doing.
pub(crate) fn blas(during: &'static str) -> impl Fn(cudarc::cublas::result::CublasError) -> Error {
    move |source| Error::Cublas { during, source }
}
