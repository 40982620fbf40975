//! The GEMM floor (`docs/architecture.md`, "Measuring"): the same GEMMs a loss needs (logits for every
//! head, then `dx` and `dW` for heads whose gradients are asked for), bf16 inputs and bf16 output through
//! cuBLAS, one after another, timed with device events. The GEMMs read the loss's own input
//! data, never zero-filled buffers (tensor cores run 12-15% faster on zeros).

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::cudaDataType;
use cudarc::driver::{CudaSlice, DevicePtr};
use half::bf16;

use crate::Error;
use crate::cuda::device::Gpu;
use crate::cuda::gemm::Gemm;

/// One head of a floor measurement: its hidden states `[rows, h]` and weight `[vocab, h]`
/// as the loss gets them (the floor runs on the same data: tensor cores run faster on
/// zero-filled buffers, so a floor on zeros reads too low), and which gradient GEMMs run.
#[derive(Clone, Copy, Debug)]
pub struct FloorHead<'a> {
    /// Hidden states, `rows · h` values.
    pub x: &'a [bf16],
    /// Weight, `vocab · h` values.
    pub w: &'a [bf16],
    /// Hidden size.
    pub h: usize,
    /// Whether its `dx` GEMM runs.
    pub dx: bool,
    /// Whether its `dW` GEMM runs.
    pub dw: bool,
}

/// The floor's FLOPs: `2·rows·vocab·h` per GEMM: every head's logits GEMM, plus its `dx` and
/// `dW` GEMMs when they run.
pub fn floor_flops(rows: usize, vocab: usize, heads: &[FloorHead<'_>]) -> f64 {
    heads
        .iter()
        .map(|hd| {
            let gemms = 1.0 + f64::from(u8::from(hd.dx) + u8::from(hd.dw));
            gemms * 2.0 * rows as f64 * vocab as f64 * hd.h as f64
        })
        .sum()
}

/// Median milliseconds of the GEMMs of `rows` rows, vocabulary `vocab`, and `heads`, over
/// `reps` repetitions after one warm-up. The logits GEMM writes real logits (from the heads'
/// data), which the `dx`/`dW` GEMMs then read in place of `dlogits`.
pub fn gemm_floor_ms(
    gpu: &Gpu,
    rows: usize,
    vocab: usize,
    heads: &[FloorHead<'_>],
    reps: usize,
) -> Result<f64, Error> {
    let st = &gpu.stream;
    let hmax = heads.iter().map(|h| h.h).max().unwrap_or(1);
    for hd in heads {
        if hd.x.len() != rows * hd.h || hd.w.len() != vocab * hd.h {
            return Err(Error::Internal(format!(
                "floor head data of {} and {} values for rows {rows}, vocab {vocab}, h {}",
                hd.x.len(),
                hd.w.len(),
                hd.h
            )));
        }
    }
    let alloc = |n: usize| -> Result<CudaSlice<bf16>, Error> {
        // SAFETY: every buffer allocated here is written by a GEMM before it is read (the
        // outputs `z`, `dx`, `dW`) — the inputs are uploaded below.
        unsafe { st.alloc::<bf16>(n) }.map_err(crate::cuda::drv("measuring the GEMM floor"))
    };
    let upload = |v: &[bf16]| -> Result<CudaSlice<bf16>, Error> {
        st.clone_htod(v)
            .map_err(crate::cuda::drv("measuring the GEMM floor"))
    };
    let data = heads
        .iter()
        .map(|hd| Ok((upload(hd.x)?, upload(hd.w)?, hd.h, hd.dx, hd.dw)))
        .collect::<Result<Vec<_>, Error>>()?;
    let z = alloc(rows * vocab)?;
    let dx = alloc(rows * hmax)?;
    let dw = alloc(vocab * hmax)?;
    let blas = CudaBlas::new(st.clone()).map_err(crate::cuda::blas("creating a handle"))?;
    let p = |s: &CudaSlice<bf16>| {
        let (q, _sync) = s.device_ptr(st);
        q
    };
    let g = Gemm {
        blas: &blas,
        ab: cudaDataType::CUDA_R_16BF,
        c: cudaDataType::CUDA_R_16BF,
    };
    let gemm = |ta, tb, m, n, k, a, lda, b, ldb, c, ldc| {
        g.run(ta, tb, m, n, k, a, lda, b, ldb, 0.0, c, ldc)
    };
    let once = || -> Result<(), Error> {
        for (x, w, h, with_dx, with_dw) in &data {
            let h = *h;
            gemm(true, false, vocab, rows, h, p(w), h, p(x), h, p(&z), vocab)?;
            if *with_dx {
                gemm(
                    false,
                    false,
                    h,
                    rows,
                    vocab,
                    p(w),
                    h,
                    p(&z),
                    vocab,
                    p(&dx),
                    h,
                )?;
            }
            if *with_dw {
                gemm(
                    false,
                    true,
                    h,
                    vocab,
                    rows,
                    p(x),
                    h,
                    p(&z),
                    vocab,
                    p(&dw),
                    h,
                )?;
            }
        }
        Ok(())
    };
    once()?;
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let a = st
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(crate::cuda::drv("measuring the GEMM floor"))?;
        once()?;
        let b = st
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(crate::cuda::drv("measuring the GEMM floor"))?;
        times.push(f64::from(
            a.elapsed_ms(&b)
                .map_err(crate::cuda::drv("measuring the GEMM floor"))?,
        ));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}
