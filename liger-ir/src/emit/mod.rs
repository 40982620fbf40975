//! Code generation. [`cuda`] emits CUDA C for a scheduled gradient IR (no CUDA dependency:
//! the text is testable and snapshotted anywhere; the runtime compiles it with NVRTC).

pub mod cuda;

pub use cuda::{CudaModule, EmitOptions, GemmDType, KernelInfo, KernelKind, emit_cuda};
