//! The one cuBLAS GEMM call of the crate: the executor's lm-head GEMMs and the benchmark's
//! GEMM floor go through it, so both measure the same call.
//!
//! Invariant: inputs in one dtype (`ab`), output in `c` (fp32, or the inputs' 16-bit dtype),
//! compute in fp32.

use std::ffi::c_void;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};

use crate::Error;

/// A cuBLAS handle with the dtypes of its GEMMs.
#[derive(Clone, Copy)]
pub(crate) struct Gemm<'a> {
    /// The handle (bound to the stream the GEMMs run on).
    pub blas: &'a CudaBlas,
    /// Dtype of `A` and `B`.
    pub ab: cudaDataType,
    /// Dtype of `C`.
    pub c: cudaDataType,
}

impl Gemm<'_> {
    /// The same GEMMs writing `C` in `c` (a 16-bit `C` is rounded from the f32 result).
    pub fn with_c(&self, c: cudaDataType) -> Self {
        Gemm { c, ..*self }
    }

    /// Column-major `C[m,n] = op(A) op(B) + beta C` with raw device pointers.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        beta: f32,
        c: u64,
        ldc: usize,
    ) -> Result<(), Error> {
        let alpha = 1.0f32;
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // SAFETY: the pointers are live device allocations of this context, sized by the
        // caller for the given m, n, k and leading dimensions; alpha/beta point to host f32s
        // (the handle's default pointer mode).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op(ta),
                op(tb),
                m as i32,
                n as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                a as *const c_void,
                self.ab,
                lda as i32,
                b as *const c_void,
                self.ab,
                ldb as i32,
                &beta as *const f32 as *const c_void,
                c as *mut c_void,
                self.c,
                ldc as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(crate::cuda::blas("running a GEMM"))
    }
}
