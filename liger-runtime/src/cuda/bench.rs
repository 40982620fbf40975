//! The GEMM floor of DESIGN.md "Measuring": the same GEMMs a loss needs (logits for every
//! head, then `dx` and `dW` for heads with gradients), bf16 inputs and bf16 output through
//! cuBLAS, one after another, timed with device events.

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaSlice, DevicePtr};

use crate::Error;
use crate::cuda::device::Gpu;

fn cerr(e: impl std::fmt::Debug) -> Error {
    Error::Cuda {
        lib: "cublas",
        why: format!("{e:?}"),
    }
}

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
    let alloc =
        |n: usize| -> Result<CudaSlice<u16>, Error> { st.alloc_zeros::<u16>(n).map_err(cerr) };
    let x = alloc(rows * hmax)?;
    let w = alloc(vocab * hmax)?;
    let z = alloc(rows * vocab)?;
    let dx = alloc(rows * hmax)?;
    let dw = alloc(vocab * hmax)?;
    let blas = CudaBlas::new(st.clone()).map_err(cerr)?;
    let p = |s: &CudaSlice<u16>| {
        let (q, _sync) = s.device_ptr(st);
        q
    };
    let gemm = |ta: bool,
                tb: bool,
                m: usize,
                n: usize,
                k: usize,
                a: u64,
                lda: usize,
                b: u64,
                ldb: usize,
                c: u64,
                ldc: usize|
     -> Result<(), Error> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // SAFETY: the buffers above are sized for these m, n, k and leading dimensions.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                op(ta),
                op(tb),
                m as i32,
                n as i32,
                k as i32,
                &alpha as *const f32 as *const std::ffi::c_void,
                a as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                lda as i32,
                b as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                ldb as i32,
                &beta as *const f32 as *const std::ffi::c_void,
                c as *mut std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                ldc as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cerr)
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
            .map_err(cerr)?;
        once()?;
        let b = st
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cerr)?;
        times.push(f64::from(a.elapsed_ms(&b).map_err(cerr)?));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}
