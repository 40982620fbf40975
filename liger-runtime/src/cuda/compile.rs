//! From a [`Pipeline`] to a compiled module through the kernel cache: emit the strategy's
//! module, build its key ([`crate::cache::key::module_key`]), and serve the binary from memory,
//! disk or NVRTC. The executors and `liger cache warm` both come here, so a warm writes exactly
//! the entries a run reads.

use std::sync::Arc;

use liger_ir::emit::{CudaModule, EmitOptions};
use liger_ir::{Pipeline, Strategy};

use crate::Error;
use crate::cache::key::{Target, io_key, module_key};
use crate::cache::{Artifacts, Binary, Cache, KeyParts, Origin};

/// A compiled module and where it came from.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The generated module (source and kernel list).
    pub module: CudaModule,
    /// Its key.
    pub key: KeyParts,
    /// CUBIN or PTX.
    pub binary: Arc<Binary>,
    /// Memory, disk or NVRTC.
    pub origin: Origin,
}

/// The artifacts a cache entry stores beside the binary.
pub fn artifacts(p: &Pipeline, module: &CudaModule) -> Artifacts {
    Artifacts {
        surface: p.surface().map(liger_ir::print).unwrap_or_default(),
        grad: liger_ir::print(p.grad()),
        schedule: p.schedule().render(p.grad()),
        cuda: module.source.clone(),
    }
}

/// Compiles `source` with NVRTC for `arch` as the cache stores it (CUBIN for `sm_XX`, PTX for
/// `compute_XX`); a kernel that spills registers is an error.
pub fn nvrtc_binary(source: &str, name: &str, arch: &str) -> Result<Binary, Error> {
    let c = crate::cuda::nvrtc::compile(source, name, arch)?;
    if let Some(k) = c.spills().first() {
        return Err(Error::Compile {
            arch: arch.into(),
            log: format!("kernel {} spills registers:\n{}", k.name, c.log),
        });
    }
    let registers = c
        .kernels
        .iter()
        .map(|k| (k.name.clone(), k.registers))
        .collect();
    let (bytes, is_ptx) = match (c.cubin, c.ptx) {
        (Some(b), _) => (b, false),
        (None, Some(p)) => (p.into_bytes(), true),
        (None, None) => {
            return Err(Error::Compile {
                arch: arch.into(),
                log: format!("NVRTC produced no binary\n{}", c.log),
            });
        }
    };
    Ok(Binary {
        arch: c.arch,
        bytes,
        is_ptx,
        registers,
        log: c.log,
        compile_ms: c.millis,
    })
}

/// The module of `p` for `strategy` with `opts`, for `arch`, through `cache`.
pub fn compile(
    p: &Pipeline,
    strategy: Strategy,
    opts: &EmitOptions,
    arch: &str,
    cache: &Cache,
) -> Result<Compiled, Error> {
    let module = p
        .module(strategy, opts)
        .map_err(|e| Error::Internal(e.to_string()))?;
    let nv = crate::cuda::libs::nvrtc()?;
    let target = Target {
        arch: arch.to_string(),
        nvrtc: nv.version,
    };
    let key = module_key(p, strategy, opts, &target);
    let (binary, origin) = cache.get_or_compile(&key, &artifacts(p, &module), || {
        nvrtc_binary(&module.source, "liger.cu", arch)
    })?;
    Ok(Compiled {
        module,
        key,
        binary,
        origin,
    })
}

/// The runtime's own I/O module (`io.cu`: device-input conversion and checks, gradient
/// casts) for `arch`, through `cache` (`liger cache warm` compiles it too).
pub fn io_module(arch: &str, cache: &Cache) -> Result<(KeyParts, Arc<Binary>, Origin), Error> {
    let source = crate::cuda::engine::IO_SOURCE;
    let target = Target {
        arch: arch.to_string(),
        nvrtc: crate::cuda::libs::nvrtc()?.version,
    };
    let key = io_key(source, &target);
    let artifacts = Artifacts {
        cuda: source.to_string(),
        ..Artifacts::default()
    };
    let (binary, origin) = cache.get_or_compile(&key, &artifacts, || {
        nvrtc_binary(source, "liger_io.cu", arch)
    })?;
    Ok((key, binary, origin))
}
