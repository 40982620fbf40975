//! The GEMM floor (`docs/architecture.md`, "Measuring"): the same GEMMs a loss needs (logits for every
//! head, then `dx` and `dW` for heads with gradients), bf16 inputs and bf16 output through
//! cuBLAS, one after another, timed with device events.

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::cudaDataType;
use cudarc::driver::{CudaSlice, DevicePtr};

use crate::Error;
use crate::cuda::device::Gpu;
use crate::cuda::gemm::Gemm;

/// Median milliseconds of the GEMMs of `rows` rows, vocabulary `vocab`, and `heads`
/// (`(H, has gradient)`), over `reps` repetitions after one warm-up.
pub fn gemm_floor_ms(
    gpu: &Gpu,
    rows: usize,
    vocab: usize,
    heads: &[(usize, bool)],
    reps: usize,
) -> Result<f64, Error> {
    let st = &gpu.stream;
    let hmax = heads.iter().map(|h| h.0).max().unwrap_or(1);
    let alloc = |n: usize| -> Result<CudaSlice<u16>, Error> {
        st.alloc_zeros::<u16>(n)
            .map_err(crate::cuda::drv("measuring the GEMM floor"))
    };
    let x = alloc(rows * hmax)?;
    let w = alloc(vocab * hmax)?;
    let z = alloc(rows * vocab)?;
    let dx = alloc(rows * hmax)?;
    let dw = alloc(vocab * hmax)?;
    let blas = CudaBlas::new(st.clone()).map_err(crate::cuda::blas("creating a handle"))?;
    let p = |s: &CudaSlice<u16>| {
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
        for &(h, grad) in heads {
            gemm(
                true,
                false,
                vocab,
                rows,
                h,
                p(&w),
                h,
                p(&x),
                h,
                p(&z),
                vocab,
            )?;
            if grad {
                gemm(
                    false,
                    false,
                    h,
                    rows,
                    vocab,
                    p(&w),
                    h,
                    p(&z),
                    vocab,
                    p(&dx),
                    h,
                )?;
                gemm(
                    false,
                    true,
                    h,
                    vocab,
                    rows,
                    p(&x),
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
