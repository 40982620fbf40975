//! The kernel-cache key of a generated module: the one key builder (the executors, `liger
//! cache warm` and the GPU test harness all call [`module_key`]).
//!
//! Components, in order: the schema; the compiler (crate version and codegen fingerprint); the
//! canonical gradient IR's hash (names and source locations left out, so the same loss
//! compiled from a file or by the macro, under any name, shares entries); the schedule; the
//! codegen options ([`EmitOptions::key_components`]); the target arch; the NVRTC version.
//! Sizes are kernel arguments (no generated code depends on `V`, `H`, the chunk rows or `T`),
//! so they are not in the key; hyperparameters and `ignore_index` are run-time values. The
//! driver version is not in the key either: a CUBIN depends on NVRTC and the arch, and whether
//! the driver can load an entry is checked when it is loaded — so a warm on a machine without
//! a GPU writes exactly the entries a GPU run reads.

use liger_ir::emit::EmitOptions;
use liger_ir::{Pipeline, Strategy};

use super::{KeyParts, hash_text};

/// What a module is compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `sm_XX` (CUBIN) or `compute_XX` (PTX).
    pub arch: String,
    /// NVRTC's version, `(major, minor)`.
    pub nvrtc: (i32, i32),
}

/// The compiler component: crate version and the emitter's fingerprint.
pub fn compiler_component() -> String {
    format!(
        "liger {} codegen {}",
        env!("CARGO_PKG_VERSION"),
        hash_text(&liger_ir::emit::cuda::codegen_fingerprint())
    )
}

/// The key of the module of `p` for `strategy` with `opts`, compiled for `target`.
pub fn module_key(
    p: &Pipeline,
    strategy: Strategy,
    opts: &EmitOptions,
    target: &Target,
) -> KeyParts {
    let mut k = KeyParts::new()
        .with("compiler", compiler_component())
        .with("ir", hash_text(p.canonical()))
        .with("schedule", strategy.name());
    for (name, value) in opts.key_components() {
        k = k.with(name, value);
    }
    k.with("arch", target.arch.clone())
        .with("nvrtc", format!("{}.{}", target.nvrtc.0, target.nvrtc.1))
        .with(
            "nvrtc_options",
            crate::cuda::nvrtc::COMPILE_OPTIONS.join(" "),
        )
}

/// The key of the runtime's own I/O module (`io.cu`) for `target`.
pub fn io_key(source: &str, target: &Target) -> KeyParts {
    KeyParts::new()
        .with(
            "compiler",
            format!("liger {} io", env!("CARGO_PKG_VERSION")),
        )
        .with("source", hash_text(source))
        .with("arch", target.arch.clone())
        .with("nvrtc", format!("{}.{}", target.nvrtc.0, target.nvrtc.1))
        .with(
            "nvrtc_options",
            crate::cuda::nvrtc::COMPILE_OPTIONS.join(" "),
        )
}
