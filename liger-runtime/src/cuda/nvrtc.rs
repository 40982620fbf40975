//! Compiling CUDA C with NVRTC: CUBIN for an exact `sm_XX` (PTX as the fallback), with the
//! ptxas report of every kernel (registers, spills).

use std::ffi::CString;
use std::time::Instant;

use crate::Error;

/// ptxas' report for one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelStats {
    /// The kernel.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of spill stores.
    pub spill_stores: u32,
    /// Bytes of spill loads.
    pub spill_loads: u32,
    /// Bytes of stack frame.
    pub stack: u32,
}

/// What NVRTC produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// The target (`sm_90`, or `compute_90` for PTX).
    pub arch: String,
    /// The CUBIN, for an `sm_XX` target.
    pub cubin: Option<Vec<u8>>,
    /// The PTX, for a `compute_XX` target.
    pub ptx: Option<String>,
    /// NVRTC's log (with ptxas' report).
    pub log: String,
    /// Per-kernel statistics parsed from the log.
    pub kernels: Vec<KernelStats>,
    /// Wall time of the compilation.
    pub millis: f64,
}

impl Compiled {
    /// Kernels that spill registers.
    pub fn spills(&self) -> Vec<&KernelStats> {
        self.kernels
            .iter()
            .filter(|k| k.spill_stores > 0 || k.spill_loads > 0)
            .collect()
    }
}

fn num_before(s: &str, unit: &str) -> Option<u32> {
    let i = s.find(unit)?;
    s[..i].split_whitespace().last()?.parse().ok()
}

/// Compiles `source` to a CUBIN for `arch` (`sm_XX`) as the kernel cache stores it, with the
/// registers of every kernel and NVRTC's log.
pub fn cubin(source: &str, name: &str, arch: &str) -> Result<crate::cache::Binary, Error> {
    let c = compile(source, name, arch)?;
    let bytes = c.cubin.clone().ok_or_else(|| Error::Compile {
        arch: arch.into(),
        log: c.log.clone(),
    })?;
    Ok(crate::cache::Binary {
        arch: c.arch,
        bytes,
        is_ptx: false,
        registers: c
            .kernels
            .iter()
            .map(|k| (k.name.clone(), k.registers))
            .collect(),
        log: c.log,
        compile_ms: c.millis,
    })
}

/// Parses ptxas' `-v` report.
pub fn parse_ptxas(log: &str) -> Vec<KernelStats> {
    let mut out: Vec<KernelStats> = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            current = Some(name.clone());
            out.push(KernelStats {
                name,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
                stack: 0,
            });
        } else if let Some(k) = current
            .as_ref()
            .and_then(|c| out.iter_mut().rev().find(|k| &k.name == c))
        {
            if line.contains("bytes spill stores") {
                k.spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
                k.stack = num_before(line, "bytes stack frame").unwrap_or(0);
            }
            if line.contains("Used") && line.contains("registers") {
                k.registers = num_before(line, "registers").unwrap_or(0);
            }
        }
    }
    out
}

fn c_str_vec(v: Vec<std::ffi::c_char>) -> String {
    let bytes: Vec<u8> = v
        .into_iter()
        .map(|c| c as u8)
        .take_while(|&c| c != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The options every module is compiled with besides its architecture; part of every cache
/// key, so changing them recompiles. `--split-compile=8` runs NVRTC's optimiser and code
/// generator on up to 8 threads (DPO's deferred module: 1.2 s -> 0.85 s on 2 cores). The
/// count is fixed because the partition, and so the binary, depends on it: `0` ("every
/// core") would compile different binaries on different machines.
pub const COMPILE_OPTIONS: &[&str] = &["--std=c++17", "--split-compile=8"];

/// Compiles `source` for `arch` (`sm_90` → CUBIN, `compute_90` → PTX).
pub fn compile(source: &str, name: &str, arch: &str) -> Result<Compiled, Error> {
    crate::cuda::libs::nvrtc()?;
    let err = |why: String| Error::Compile {
        arch: arch.into(),
        log: why,
    };
    let src = CString::new(source).map_err(|_| err("the source holds a NUL byte".into()))?;
    let cname = CString::new(name).map_err(|_| err("the name holds a NUL byte".into()))?;
    let cubin_target = arch.starts_with("sm_");
    let mut opts = vec![format!("--gpu-architecture={arch}")];
    opts.extend(COMPILE_OPTIONS.iter().map(|o| o.to_string()));
    if cubin_target {
        opts.push("--ptxas-options=-v".into());
        opts.push("--ptxas-options=-warn-spills".into());
    }
    let start = Instant::now();
    let prog = cudarc::nvrtc::result::create_program(&src, Some(&cname))
        .map_err(|e| err(format!("{e:?}")))?;
    // SAFETY: `prog` was just created and is destroyed exactly once below; the option strings
    // contain no NUL bytes (built from ASCII above).
    let compiled = unsafe { cudarc::nvrtc::result::compile_program(prog, &opts) };
    // SAFETY: `prog` is live.
    let log = unsafe { cudarc::nvrtc::result::get_program_log(prog) }
        .map(c_str_vec)
        .unwrap_or_default();
    let out = match compiled {
        Err(e) => Err(err(format!("{e:?}\n{log}"))),
        Ok(()) => {
            let (cubin, ptx) = if cubin_target {
                let mut size = 0usize;
                // SAFETY: `prog` is live and compiled; `size` is a valid out-pointer.
                let rc = unsafe { cudarc::nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size) };
                if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                    (None, None)
                } else {
                    let mut buf = vec![0 as std::ffi::c_char; size];
                    // SAFETY: `buf` holds exactly the `size` bytes NVRTC reported.
                    let rc = unsafe { cudarc::nvrtc::sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr()) };
                    if rc == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
                        (Some(buf.into_iter().map(|c| c as u8).collect()), None)
                    } else {
                        (None, None)
                    }
                }
            } else {
                // SAFETY: `prog` is live and compiled.
                let ptx = unsafe { cudarc::nvrtc::result::get_ptx(prog) }
                    .map(c_str_vec)
                    .ok();
                (None, ptx)
            };
            Ok(Compiled {
                arch: arch.into(),
                cubin,
                ptx,
                kernels: parse_ptxas(&log),
                log,
                millis: start.elapsed().as_secs_f64() * 1e3,
            })
        }
    };
    // SAFETY: destroyed once; not used afterwards.
    let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
    out
}
