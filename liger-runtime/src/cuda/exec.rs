//! The CUDA executor (host API): the schedule's streams on the GPU, with cuBLAS GEMMs
//! (GEMM-dtype inputs, fp32 logits, fp32 `dx` and `dW` accumulators) and the generated kernels.
//!
//! This first version runs the fused (row-local) and two-pass schedules over contiguous chunks
//! of rows; group-aligned and deferred scaling are planned (a forced one is an error that
//! says so). Inputs are checked on the host before upload (shapes, dtypes, token ranges, NaN).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::cudaDataType;
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use liger_ir::emit::{EmitOptions, GemmDType, KernelKind, emit_cuda};
use liger_ir::{DType, Level, LossFn, Op, OutputKind, Schedule, Strategy};

use crate::cache::{Artifacts, Binary, Cache, KeyParts, bucket, hash_text};
use crate::cpu::eval::Arr;
use crate::cpu::{Prepared, prepare};
use crate::cuda::device::{Gpu, upload_values};
use crate::cuda::gemm::Gemm;
use crate::output::{HeadGrads, LossOutput, MetricOutput, Report};
use crate::plan::RunOptions;
use crate::tensor::{DType as HDType, TensorData};
use crate::{Error, InputSet};

fn derr(e: impl std::fmt::Debug) -> Error {
    Error::Cuda {
        lib: "cuda",
        why: format!("{e:?}"),
    }
}

fn dptr<T>(s: &CudaSlice<T>, gpu: &Gpu) -> u64 {
    let (p, _sync) = s.device_ptr(&gpu.stream);
    p
}

/// Uploads a float tensor in its own dtype as raw bytes.
fn upload_raw(gpu: &Gpu, data: TensorData<'_>) -> Result<CudaSlice<u8>, Error> {
    let bytes: Vec<u8> = match data {
        TensorData::F32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        TensorData::BF16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        TensorData::F16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        TensorData::F64(x) => x.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
        _ => Vec::new(),
    };
    gpu.stream.clone_htod(&bytes).map_err(derr)
}

/// The compiled module of `strategy` for `g`, through `cache`.
#[allow(clippy::too_many_arguments)]
pub fn module_for(
    g: &LossFn,
    sched: &Schedule,
    strategy: Strategy,
    dtype: GemmDType,
    (vocab, hidden, rows, seq): (usize, &[usize], usize, usize),
    arch: &str,
    driver: (i32, i32),
    cache: &Cache,
) -> Result<(Arc<Binary>, Vec<liger_ir::emit::KernelInfo>), Error> {
    let module = emit_cuda(g, sched, strategy, &EmitOptions { gemm_dtype: dtype });
    let nv = crate::cuda::libs::nvrtc()?;
    let parts = KeyParts::new()
        .with(
            "compiler",
            format!(
                "liger {} codegen {}",
                env!("CARGO_PKG_VERSION"),
                hash_text(&liger_ir::emit::cuda::codegen_fingerprint())
            ),
        )
        .with("ir", hash_text(&liger_ir::canonical_text(g)))
        .with("schedule", strategy.name())
        .with("dtype", dtype.name())
        .with("vocab", vocab.to_string())
        .with(
            "hidden",
            hidden
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .with(
            "bucket",
            format!("rows {} seq {}", bucket(rows), bucket(seq)),
        )
        .with("arch", arch)
        .with("nvrtc", format!("{}.{}", nv.version.0, nv.version.1))
        .with("driver", format!("{}.{}", driver.0, driver.1))
        .with(
            "options",
            format!("{:?}", EmitOptions { gemm_dtype: dtype }),
        );
    let artifacts = Artifacts {
        surface: String::new(),
        grad: liger_ir::print(g),
        schedule: sched.render(g),
        cuda: module.source.clone(),
    };
    let (b, _) = cache.get_or_compile(&parts, &artifacts, || {
        let c = crate::cuda::nvrtc::compile(&module.source, "liger.cu", arch)?;
        let registers = c
            .kernels
            .iter()
            .map(|k| (k.name.clone(), k.registers))
            .collect();
        let bytes = c.cubin.clone().ok_or_else(|| Error::Compile {
            arch: arch.into(),
            log: c.log.clone(),
        })?;
        Ok(Binary {
            arch: c.arch,
            bytes,
            is_ptx: false,
            registers,
            log: c.log,
            compile_ms: c.millis,
        })
    })?;
    Ok((b, module.kernels))
}

/// Runs the gradient IR `g` on `gpu`.
pub fn run(
    gpu: &Gpu,
    cache: &Cache,
    g: &LossFn,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
) -> Result<LossOutput, Error> {
    let start = Instant::now();
    let sched = Schedule::of(g);
    let Prepared {
        heads,
        ev,
        dims: (s, t, v),
    } = prepare(g, &sched, inputs, hyper, opts, false)?;
    let r = s * t;
    // GEMM dtype: every head's x and W share one float dtype.
    let hd = heads.first().map(|h| h.x.dtype()).unwrap_or(HDType::F32);
    let (dtype, cdt, esz) = match hd {
        HDType::BF16 => (GemmDType::BF16, cudaDataType::CUDA_R_16BF, 2usize),
        HDType::F16 => (GemmDType::F16, cudaDataType::CUDA_R_16F, 2),
        _ => (GemmDType::F32, cudaDataType::CUDA_R_32F, 4),
    };
    for h in &heads {
        if h.x.dtype() != hd || h.w_view.dtype() != hd {
            return Err(Error::InputDType {
                input: format!("{}.w", h.name),
                expected: "the dtype of every head's x",
                got: h.w_view.dtype(),
            });
        }
    }
    // Chunk rows from the budget: fp32 logits per head, dz per gradient head, x/dx rows; a
    // deferred group keeps its units (GEMM dtype) and the scaled x rows.
    let hsum: usize = heads.iter().map(|h| h.h).sum();
    let n_grad = heads.iter().filter(|h| h.grad.is_some()).count();
    let per_row = v * 4 * heads.len() + v * esz * n_grad + hsum * 4 + 8;
    let fixed = r * 4 * (sched.row_values + 8) + (4 << 20);
    let group_rows = match sched.group_level {
        Some(Level::Seq) => t,
        Some(Level::Pair) => 2 * t,
        Some(_) => r,
        None => 1,
    };
    let n_units = sched.factors.as_ref().map_or(0, Vec::len);
    let deferred_fixed = group_rows * (v * esz * n_units + hsum * esz + 8);
    let fits = |s: Strategy| -> bool {
        let budget = opts.chunk_memory;
        match s {
            Strategy::GroupAligned => fixed + per_row * group_rows <= budget,
            Strategy::Deferred => fixed + deferred_fixed + per_row <= budget,
            _ => fixed + per_row <= budget,
        }
    };
    let strategy = match opts.schedule {
        Some(s) if !sched.candidates.contains(&s) => {
            return Err(Error::Schedule {
                schedule: s.name(),
                why: "it does not apply to this loss".into(),
            });
        }
        Some(s) => s,
        None if sched.row_local => Strategy::Fused,
        None if fits(Strategy::GroupAligned) => Strategy::GroupAligned,
        None if sched.factors.is_some() && fits(Strategy::Deferred) => Strategy::Deferred,
        None => Strategy::TwoPass,
    };
    if !fits(strategy) {
        let needed = match strategy {
            Strategy::GroupAligned => fixed + per_row * group_rows,
            Strategy::Deferred => fixed + deferred_fixed + per_row,
            _ => fixed + per_row,
        };
        return Err(Error::Budget {
            budget: opts.chunk_memory,
            needed,
        });
    }
    let chunk = match strategy {
        Strategy::GroupAligned => {
            let c = ((opts.chunk_memory - fixed) / per_row).clamp(group_rows, r.max(group_rows));
            (c / group_rows).max(1) * group_rows
        }
        Strategy::Deferred => ((opts.chunk_memory - fixed - deferred_fixed) / per_row).clamp(1, r),
        _ => ((opts.chunk_memory - fixed) / per_row).clamp(1, r),
    };
    let arch = gpu.arch()?;
    let driver = gpu.driver_version()?;
    let hidden: Vec<usize> = heads.iter().map(|h| h.h).collect();
    let (bin, kinfo) = module_for(
        g,
        &sched,
        strategy,
        dtype,
        (v, &hidden, chunk, t),
        &arch,
        driver,
        cache,
    )?;
    let module = gpu.load(&bin)?;
    let func = |kind: KernelKind| -> Result<cudarc::driver::CudaFunction, Error> {
        let k = kinfo
            .iter()
            .find(|k| k.kind == kind)
            .ok_or_else(|| Error::Cuda {
                lib: "cuda",
                why: format!("no {kind:?} kernel"),
            })?;
        module.load_function(&k.name).map_err(derr)
    };
    let add_bias = module.load_function("liger_add_bias").map_err(derr)?;
    let st = gpu.stream.clone();
    let blas = CudaBlas::new(st.clone()).map_err(|e| Error::Cuda {
        lib: "cublas",
        why: format!("{e:?}"),
    })?;
    let gemm = Gemm {
        blas: &blas,
        ab: cdt,
        c: cudaDataType::CUDA_R_32F,
    };

    // The allocator's view: use before this call, and its high-water mark from here on.
    st.synchronize().map_err(derr)?;
    let base_used = gpu.used_bytes().ok();
    if base_used.is_some() {
        let _ = gpu.reset_peak();
    }
    // Values: one array per non-vocab node, inputs uploaded.
    let vals = upload_values(&st, g, (s, t, v), |i| {
        if !matches!(g.nodes[i].op, Op::Input(_)) {
            return None;
        }
        match ev.vals[i].as_ref()? {
            Arr::F(x) => Some(x.iter().map(|f| f.to_bits()).collect()),
            Arr::B(x) => Some(
                x.iter()
                    .map(|&b| if b { 1f32 } else { 0f32 }.to_bits())
                    .collect(),
            ),
            Arr::I(x) => Some(
                x.iter()
                    .map(|k| k.map_or(-1i32, |u| u as i32) as u32)
                    .collect(),
            ),
        }
    })?;
    let table: Vec<u64> = vals
        .iter()
        .map(|b| b.as_ref().map_or(0, |b| dptr(b, gpu)))
        .collect();
    let table_d = st.clone_htod(&table).map_err(derr)?;
    let status: CudaSlice<i32> = st.clone_htod(&[0i32, -1, 0, 0]).map_err(derr)?;

    // Heads on the device.
    struct Dev {
        input: usize,
        x: CudaSlice<u8>,
        w: CudaSlice<u8>,
        b: Option<CudaSlice<f32>>,
        h: usize,
        z: CudaSlice<f32>,
        dz: Option<CudaSlice<u8>>,
        dx: Option<CudaSlice<f32>>,
        dw: Option<CudaSlice<f32>>,
        db: Option<CudaSlice<f32>>,
    }
    let mut dev = Vec::new();
    for h in &heads {
        let input = match g.node(h.node).op {
            Op::Input(id) => id.index(),
            _ => 0,
        };
        let grad = h.grad.is_some();
        dev.push(Dev {
            input,
            x: upload_raw(gpu, h.x.data())?,
            w: upload_raw(gpu, h.w_view.data())?,
            b: match &h.b {
                Some(b) => Some(st.clone_htod(b).map_err(derr)?),
                None => None,
            },
            h: h.h,
            z: st.alloc_zeros(chunk * v).map_err(derr)?,
            dz: if grad && strategy != Strategy::Deferred {
                Some(st.alloc_zeros(chunk * v * esz).map_err(derr)?)
            } else {
                None
            },
            dx: if grad {
                Some(st.alloc_zeros(r * h.h).map_err(derr)?)
            } else {
                None
            },
            dw: if grad {
                Some(st.alloc_zeros(v * h.h).map_err(derr)?)
            } else {
                None
            },
            db: if grad && h.b.is_some() {
                Some(st.alloc_zeros(v).map_err(derr)?)
            } else {
                None
            },
        });
    }
    let mut ztab = vec![0u64; g.inputs.len().max(1)];
    let mut otab = vec![0u64; g.inputs.len().max(1)];
    for d in &dev {
        ztab[d.input] = dptr(&d.z, gpu);
        if let Some(dz) = &d.dz {
            otab[d.input] = dptr(dz, gpu);
        }
    }
    let ztab_d = st.clone_htod(&ztab).map_err(derr)?;
    let otab_d = st.clone_htod(&otab).map_err(derr)?;
    let (si, ti, vi) = (s as i32, t as i32, v as i32);
    let (ld, ldo) = (v as i64, v as i64);
    let single = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let array = |kind: KernelKind| -> Result<(), Error> {
        let f = func(kind)?;
        let mut b = st.launch_builder(&f);
        b.arg(&table_d).arg(&si).arg(&ti).arg(&vi).arg(&status);
        // SAFETY: arguments match the emitted array-kernel signature; arrays are sized per level.
        unsafe { b.launch(single) }.map_err(derr)?;
        Ok(())
    };
    // Logits of x rows [r0, r0+len) into z rows [off, off+len).
    let logits = |dev: &Dev, r0: usize, len: usize, off: usize| -> Result<(), Error> {
        let xp = dptr(&dev.x, gpu) + (r0 * dev.h * esz) as u64;
        let zp = dptr(&dev.z, gpu) + (off * v * 4) as u64;
        gemm.run(
            true,
            false,
            v,
            len,
            dev.h,
            dptr(&dev.w, gpu),
            dev.h,
            xp,
            dev.h,
            0.0,
            zp,
            v,
        )?;
        if let Some(b) = &dev.b {
            let (ci, vi2, ld2) = (len as i32, v as i32, v as i64);
            let mut lb = st.launch_builder(&add_bias);
            lb.arg(&zp).arg(b).arg(&ci).arg(&vi2).arg(&ld2);
            let cfg = LaunchConfig {
                grid_dim: ((len * v).div_ceil(256) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: z holds at least off+len rows of v floats; b holds v floats.
            unsafe { lb.launch(cfg) }.map_err(derr)?;
        }
        Ok(())
    };
    // A stream kernel over c chunk rows; `rows` is 0 (contiguous from r0) or a device map.
    let stream_kernel =
        |kind: KernelKind, rows: u64, r0: usize, c: usize, outs: u64| -> Result<(), Error> {
            let f = func(kind)?;
            let (r0i, ci) = (r0 as i32, c as i32);
            let ztab_p = dptr(&ztab_d, gpu);
            let mut b = st.launch_builder(&f);
            b.arg(&table_d)
                .arg(&ztab_p)
                .arg(&rows)
                .arg(&r0i)
                .arg(&ci)
                .arg(&si)
                .arg(&ti)
                .arg(&vi)
                .arg(&ld)
                .arg(&outs)
                .arg(&ldo);
            let cfg = LaunchConfig {
                grid_dim: (c as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match the emitted stream signature; logits and outputs hold c rows;
            // a row map holds c valid row indices.
            unsafe { b.launch(cfg) }.map_err(derr)?;
            Ok(())
        };
    let bias_k = func(KernelKind::Bias)?;
    let bias = |dz: u64, c: usize, coef: u64, db: &CudaSlice<f32>| -> Result<(), Error> {
        let (ci, vi2, ldz) = (c as i32, v as i32, v as i64);
        let mut lb = st.launch_builder(&bias_k);
        lb.arg(&dz).arg(&ci).arg(&vi2).arg(&ldz).arg(&coef).arg(db);
        let cfg = LaunchConfig {
            grid_dim: (v.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: dz holds c rows of v GEMM-dtype entries; coef is null or holds c floats.
        unsafe { lb.launch(cfg) }.map_err(derr)?;
        Ok(())
    };
    // dx rows [r0, r0+len) = dz rows [off, ..) W; dW += dz^T x (column-major views).
    let grads = |dev: &Dev, r0: usize, len: usize, off: usize| -> Result<(), Error> {
        let (Some(dz), Some(dx), Some(dw)) = (&dev.dz, &dev.dx, &dev.dw) else {
            return Ok(());
        };
        let dzp = dptr(dz, gpu) + (off * v * esz) as u64;
        let dxp = dptr(dx, gpu) + (r0 * dev.h * 4) as u64;
        let xp = dptr(&dev.x, gpu) + (r0 * dev.h * esz) as u64;
        gemm.run(
            false,
            false,
            dev.h,
            len,
            v,
            dptr(&dev.w, gpu),
            dev.h,
            dzp,
            v,
            0.0,
            dxp,
            dev.h,
        )?;
        gemm.run(
            false,
            true,
            dev.h,
            v,
            len,
            xp,
            dev.h,
            dzp,
            v,
            1.0,
            dptr(dw, gpu),
            dev.h,
        )?;
        Ok(())
    };

    // Working memory: value arrays of non-input nodes, tables, logits and dlogits buffers.
    let input_node = |i: usize| matches!(g.nodes[i].op, Op::Input(_));
    let work_bytes: usize = vals
        .iter()
        .enumerate()
        .filter(|(i, b)| b.is_some() && !input_node(*i))
        .map(|(_, b)| b.as_ref().map_or(0, |b| b.len() * 4))
        .sum::<usize>()
        + table.len() * 8
        + ztab.len() * 16
        + 16
        + dev
            .iter()
            .map(|d| d.z.len() * 4 + d.dz.as_ref().map_or(0, |x| x.len()))
            .sum::<usize>();
    let work_bytes = work_bytes
        + if strategy == Strategy::Deferred {
            deferred_fixed
        } else {
            0
        };
    let t0 = st
        .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(derr)?;
    array(KernelKind::Pre)?;
    let fwd = sched.forward_program(g, strategy);
    let read_fwd = sched.heads_read(g, &fwd);
    let bwd = sched.backward_program(g, strategy);
    let read_bwd = sched.heads_read(g, &bwd);
    let otab_p = dptr(&otab_d, gpu);
    let mut chunks = 0;
    // Groups as contiguous row segments.
    let groups: Vec<Vec<(usize, usize)>> = match sched.group_level {
        Some(Level::Seq) => (0..s).map(|q| vec![(q * t, t)]).collect(),
        Some(Level::Pair) => (0..s / 2)
            .map(|i| vec![(i * t, t), ((s / 2 + i) * t, t)])
            .collect(),
        _ => vec![vec![(0, r)]],
    };
    let row_map = |segs: &[(usize, usize)]| -> Result<CudaSlice<i32>, Error> {
        let m: Vec<i32> = segs
            .iter()
            .flat_map(|(a, l)| (*a..a + l).map(|x| x as i32))
            .collect();
        st.clone_htod(&m).map_err(derr)
    };
    match strategy {
        Strategy::Fused => {
            for r0 in (0..r).step_by(chunk) {
                let c = chunk.min(r - r0);
                for d in &dev {
                    logits(d, r0, c, 0)?;
                }
                stream_kernel(KernelKind::Fused, 0, r0, c, otab_p)?;
                for d in &dev {
                    grads(d, r0, c, 0)?;
                    if let (Some(dz), Some(db)) = (&d.dz, &d.db) {
                        bias(dptr(dz, gpu), c, 0, db)?;
                    }
                }
                chunks += 1;
            }
        }
        Strategy::TwoPass => {
            for r0 in (0..r).step_by(chunk) {
                let c = chunk.min(r - r0);
                for (k, d) in dev.iter().enumerate() {
                    if read_fwd.get(k).copied().unwrap_or(false) {
                        logits(d, r0, c, 0)?;
                    }
                }
                stream_kernel(KernelKind::Forward, 0, r0, c, otab_p)?;
                chunks += 1;
            }
            array(KernelKind::Group)?;
            for r0 in (0..r).step_by(chunk) {
                let c = chunk.min(r - r0);
                for (k, d) in dev.iter().enumerate() {
                    if read_bwd.get(k).copied().unwrap_or(false) {
                        logits(d, r0, c, 0)?;
                    }
                }
                stream_kernel(KernelKind::Backward, 0, r0, c, otab_p)?;
                for d in &dev {
                    grads(d, r0, c, 0)?;
                    if let (Some(dz), Some(db)) = (&d.dz, &d.db) {
                        bias(dptr(dz, gpu), c, 0, db)?;
                    }
                }
                chunks += 1;
            }
        }
        Strategy::GroupAligned => {
            let per = (chunk / group_rows.max(1)).max(1);
            for gs in groups.chunks(per) {
                let segs: Vec<(usize, usize)> = gs.iter().flatten().copied().collect();
                let c: usize = segs.iter().map(|x| x.1).sum();
                let map = row_map(&segs)?;
                let mp = dptr(&map, gpu);
                for (k, d) in dev.iter().enumerate() {
                    if read_fwd.get(k).copied().unwrap_or(false)
                        || read_bwd.get(k).copied().unwrap_or(false)
                    {
                        let mut off = 0;
                        for (a, l) in &segs {
                            logits(d, *a, *l, off)?;
                            off += l;
                        }
                    }
                }
                stream_kernel(KernelKind::Forward, mp, 0, c, otab_p)?;
                array(KernelKind::GroupNeeded)?;
                stream_kernel(KernelKind::Backward, mp, 0, c, otab_p)?;
                for d in &dev {
                    let mut off = 0;
                    for (a, l) in &segs {
                        grads(d, *a, *l, off)?;
                        off += l;
                    }
                    if let (Some(dz), Some(db)) = (&d.dz, &d.db) {
                        bias(dptr(dz, gpu), c, 0, db)?;
                    }
                }
                chunks += 1;
            }
        }
        Strategy::Deferred => {
            let factors = sched.factors.clone().unwrap_or_default();
            let scale_rows = module.load_function("liger_scale_rows").map_err(derr)?;
            let scaled_copy = module.load_function("liger_scaled_copy").map_err(derr)?;
            // Per factor: the group's units, its coefficients and the scaled x rows.
            let mut units = Vec::new();
            for f in &factors {
                let d = dev
                    .iter()
                    .position(|d| d.input == f.head.index())
                    .ok_or_else(|| Error::Cuda {
                        lib: "cuda",
                        why: "deferred head".into(),
                    })?;
                let coef_fn = module
                    .load_function(&format!("liger_coef_{}", f.head.index()))
                    .map_err(derr)?;
                let u: CudaSlice<u8> = st.alloc_zeros(group_rows * v * esz).map_err(derr)?;
                let xs: CudaSlice<u8> =
                    st.alloc_zeros(group_rows * dev[d].h * esz).map_err(derr)?;
                let cf: CudaSlice<f32> = st.alloc_zeros(group_rows).map_err(derr)?;
                units.push((d, coef_fn, u, xs, cf));
            }
            for segs in &groups {
                let gr: usize = segs.iter().map(|x| x.1).sum();
                let mut goff = 0;
                for (a, l) in segs {
                    let mut p0 = *a;
                    while p0 < a + l {
                        let pl = chunk.min(a + l - p0);
                        for (k, d) in dev.iter().enumerate() {
                            if read_fwd.get(k).copied().unwrap_or(false) {
                                logits(d, p0, pl, 0)?;
                            }
                        }
                        let mut ot = vec![0u64; g.inputs.len().max(1)];
                        for (d, _, u, _, _) in &units {
                            ot[dev[*d].input] = dptr(u, gpu) + (goff * v * esz) as u64;
                        }
                        let ot_d = st.clone_htod(&ot).map_err(derr)?;
                        stream_kernel(KernelKind::Unit, 0, p0, pl, dptr(&ot_d, gpu))?;
                        // dx rows = U W, unscaled.
                        for (d, _, u, _, _) in &units {
                            let dv = &dev[*d];
                            if let Some(dx) = &dv.dx {
                                let up = dptr(u, gpu) + (goff * v * esz) as u64;
                                let dxp = dptr(dx, gpu) + (p0 * dv.h * 4) as u64;
                                gemm.run(
                                    false,
                                    false,
                                    dv.h,
                                    pl,
                                    v,
                                    dptr(&dv.w, gpu),
                                    dv.h,
                                    up,
                                    v,
                                    0.0,
                                    dxp,
                                    dv.h,
                                )?;
                            }
                        }
                        goff += pl;
                        p0 += pl;
                        chunks += 1;
                    }
                }
                array(KernelKind::GroupNeeded)?;
                let map = row_map(segs)?;
                let (gri, zero) = (gr as i32, 0i32);
                for (d, coef_fn, u, xs, cf) in &units {
                    let dv = &dev[*d];
                    let mut b = st.launch_builder(coef_fn);
                    b.arg(&table_d)
                        .arg(&map)
                        .arg(&zero)
                        .arg(&gri)
                        .arg(&si)
                        .arg(&ti)
                        .arg(cf);
                    let cfg = LaunchConfig {
                        grid_dim: (gr.div_ceil(256) as u32, 1, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: the coefficient kernel reads the value table and writes gr floats.
                    unsafe { b.launch(cfg) }.map_err(derr)?;
                    let mut off = 0;
                    for (a, l) in segs {
                        let hi = dv.h as i32;
                        let (li, ldx) = (*l as i32, dv.h as i64);
                        let cp = dptr(cf, gpu) + (off * 4) as u64;
                        let n = (l * dv.h).div_ceil(256) as u32;
                        let cfg = LaunchConfig {
                            grid_dim: (n, 1, 1),
                            block_dim: (256, 1, 1),
                            shared_mem_bytes: 0,
                        };
                        if let Some(dx) = &dv.dx {
                            let dxp = dptr(dx, gpu) + (a * dv.h * 4) as u64;
                            let mut b = st.launch_builder(&scale_rows);
                            b.arg(&dxp).arg(&ldx).arg(&li).arg(&hi).arg(&cp);
                            // SAFETY: dx holds these l rows of h floats; c holds l floats.
                            unsafe { b.launch(cfg) }.map_err(derr)?;
                        }
                        let xp = dptr(&dv.x, gpu) + (a * dv.h * esz) as u64;
                        let xsp = dptr(xs, gpu) + (off * dv.h * esz) as u64;
                        let mut b = st.launch_builder(&scaled_copy);
                        b.arg(&xp).arg(&ldx).arg(&li).arg(&hi).arg(&cp).arg(&xsp);
                        // SAFETY: x holds these l rows; xs has room for them at this offset.
                        unsafe { b.launch(cfg) }.map_err(derr)?;
                        off += l;
                    }
                    if let Some(dw) = &dv.dw {
                        gemm.run(
                            false,
                            true,
                            dv.h,
                            v,
                            gr,
                            dptr(xs, gpu),
                            dv.h,
                            dptr(u, gpu),
                            v,
                            1.0,
                            dptr(dw, gpu),
                            dv.h,
                        )?;
                    }
                    if let Some(db) = &dv.db {
                        bias(dptr(u, gpu), gr, dptr(cf, gpu), db)?;
                    }
                }
            }
        }
    }
    array(KernelKind::Group)?;
    let t1 = st
        .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(derr)?;
    let device_ms = f64::from(t0.elapsed_ms(&t1).map_err(derr)?);
    st.synchronize().map_err(derr)?;
    // Peak extra memory (DESIGN.md "Measuring"): the allocator's peak during the call minus
    // what was in use before it, minus the inputs and returned outputs this host API uploaded
    // and allocated (the rule counts them as allocated before the call).
    let io_bytes: usize = vals
        .iter()
        .enumerate()
        .filter(|(i, b)| b.is_some() && input_node(*i))
        .map(|(_, b)| b.as_ref().map_or(0, |b| b.len() * 4))
        .sum::<usize>()
        + dev
            .iter()
            .map(|d| {
                d.x.len()
                    + d.w.len()
                    + d.b.as_ref().map_or(0, |b| b.len() * 4)
                    + d.dx.as_ref().map_or(0, |b| b.len() * 4)
                    + d.dw.as_ref().map_or(0, |b| b.len() * 4)
                    + d.db.as_ref().map_or(0, |b| b.len() * 4)
            })
            .sum::<usize>();
    let measured = match (base_used, gpu.peak_bytes()) {
        (Some(base), Ok(high)) => {
            Some((high.saturating_sub(base) as usize).saturating_sub(io_bytes))
        }
        _ => None,
    };
    let stat = st.clone_dtoh(&status).map_err(derr)?;
    if stat[0] != 0 {
        return Err(Error::EmptySequence {
            seq: stat[1].max(0) as usize,
        });
    }
    let read = |id: liger_ir::ValueId| -> Result<Vec<f32>, Error> {
        match &vals[id.index()] {
            Some(b) if g.ty(id).dtype == DType::F32 => Ok(st
                .clone_dtoh(b)
                .map_err(derr)?
                .into_iter()
                .map(f32::from_bits)
                .collect()),
            _ => Ok(Vec::new()),
        }
    };
    let mut loss = f32::NAN;
    let mut metrics = Vec::new();
    for o in &g.outputs {
        match &o.kind {
            OutputKind::Loss => loss = read(o.value)?.first().copied().unwrap_or(f32::NAN),
            OutputKind::Metric(n) => metrics.push(MetricOutput {
                name: n.clone(),
                level: g.ty(o.value).level,
                values: read(o.value)?,
            }),
            OutputKind::Grad(_) => {}
        }
    }
    let mut grads_out = Vec::new();
    for (h, d) in heads.iter().zip(&dev) {
        if let (Some(dx), Some(dw)) = (&d.dx, &d.dw) {
            grads_out.push(HeadGrads {
                head: h.name.clone(),
                x: st.clone_dtoh(dx).map_err(derr)?,
                w: st.clone_dtoh(dw).map_err(derr)?,
                b: match &d.db {
                    Some(b) => Some(st.clone_dtoh(b).map_err(derr)?),
                    None => None,
                },
            });
        }
    }
    let report = Report {
        device: "cuda",
        strategy,
        forced: opts.schedule.is_some(),
        chunk_rows: chunk,
        chunks,
        budget: opts.chunk_memory,
        estimate: fixed + per_row * chunk,
        gemm_flops: {
            let mut hidden4 = [0usize; 4];
            for (k, h) in heads.iter().enumerate().take(4) {
                hidden4[k] = h.h;
            }
            sched
                .cost(
                    strategy,
                    &liger_ir::schedule::Dims {
                        rows: r,
                        vocab: v,
                        hidden: hidden4,
                        group_rows,
                    },
                )
                .gemm_flops
        },
        seconds: start.elapsed().as_secs_f64(),
        device_ms: Some(device_ms),
        peak_extra_bytes: measured,
        warnings: if stat[2] != 0 {
            vec!["a row-level mean selects no row in the batch: it is 0, with no gradient".into()]
        } else if measured.is_none() {
            vec![format!(
                "the device allocator reports no peak; the executor's own allocations were {work_bytes} B"
            )]
        } else {
            vec![]
        },
    };
    Ok(LossOutput {
        loss,
        metrics,
        grads: grads_out,
        report,
    })
}
