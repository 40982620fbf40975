//! Code generation. [`cuda`] emits CUDA C for a scheduled gradient IR (no CUDA dependency:
//! the text is testable and snapshotted anywhere; the runtime compiles it with NVRTC), with
//! the kernel ABI in [`cuda::abi`].

pub mod cuda;

pub use cuda::abi;
pub use cuda::{CudaModule, EmitError, EmitOptions, GemmDType, KernelInfo, KernelKind, emit_cuda};
