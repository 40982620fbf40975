// ---- liger prelude: header-free helpers (no CUDA headers, no libm macros) ----
#define LIGER_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float liger_softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float liger_sigmoid(float x) {
    if (x >= 0.0f) { return 1.0f / (1.0f + expf(-x)); }
    float e = expf(x);
    return e / (1.0f + e);
}
__device__ __forceinline__ float liger_logaddexp(float a, float b) {
    float m = fmaxf(a, b);
    if (m == LIGER_NEG_INF) { return m; }
    return m + log1pf(expf(-fabsf(a - b)));
}
__device__ __forceinline__ float liger_clamp(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }
__device__ __forceinline__ float liger_square(float x) { return x * x; }

// bf16 / f16 stores without headers: round to nearest even in PTX (sm_80+).
__device__ __forceinline__ unsigned short liger_f2bf(float x) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ unsigned short liger_f2h(float x) {
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

// Block reductions for LIGER_BLOCK threads; every thread gets the result.
__device__ __forceinline__ float liger_block_sum(float x, float* sh) {
    for (int o = 16; o > 0; o >>= 1) { x += __shfl_xor_sync(0xffffffffu, x, o); }
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) { sh[w] = x; }
    __syncthreads();
    x = (threadIdx.x < (LIGER_BLOCK >> 5)) ? sh[threadIdx.x] : 0.0f;
    if (w == 0) { for (int o = 16; o > 0; o >>= 1) { x += __shfl_xor_sync(0xffffffffu, x, o); } }
    if (threadIdx.x == 0) { sh[0] = x; }
    __syncthreads();
    return sh[0];
}
// The same in f64: the one-block array kernels accumulate their O(rows) sums in double, as
// the CPU executor does, so a batch or sequence total of many rows keeps f32's precision.
__device__ __forceinline__ double liger_block_sum_d(double x, double* sh) {
    for (int o = 16; o > 0; o >>= 1) { x += __shfl_xor_sync(0xffffffffu, x, o); }
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) { sh[w] = x; }
    __syncthreads();
    x = (threadIdx.x < (LIGER_BLOCK >> 5)) ? sh[threadIdx.x] : 0.0;
    if (w == 0) { for (int o = 16; o > 0; o >>= 1) { x += __shfl_xor_sync(0xffffffffu, x, o); } }
    if (threadIdx.x == 0) { sh[0] = x; }
    __syncthreads();
    return sh[0];
}
__device__ __forceinline__ float liger_block_max(float x, float* sh) {
    for (int o = 16; o > 0; o >>= 1) { x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o)); }
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) { sh[w] = x; }
    __syncthreads();
    x = (threadIdx.x < (LIGER_BLOCK >> 5)) ? sh[threadIdx.x] : LIGER_NEG_INF;
    if (w == 0) { for (int o = 16; o > 0; o >>= 1) { x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o)); } }
    if (threadIdx.x == 0) { sh[0] = x; }
    __syncthreads();
    return sh[0];
}
// Online log-sum-exp: each thread holds (m, s) with s = sum exp(x - m).
__device__ __forceinline__ void liger_lse_add(float& m, float& s, float x) {
    if (x > m) { s = s * expf(m - x) + 1.0f; m = x; } else { s += expf(x - m); }
}
// The block's log-sum-exp in two parts: the row max `gm` and `log Σ exp(x − gm)` (returned).
// `log_softmax` is `(x − gm) − parts`, so a common offset of the row cancels exactly.
__device__ __forceinline__ float liger_block_lse_parts(float m, float s, float* sh, float& gm) {
    gm = liger_block_max(m, sh);
    const float part = (m == LIGER_NEG_INF) ? 0.0f : s * expf(m - gm);
    const float gs = liger_block_sum(part, sh);
    return logf(gs);
}
__device__ __forceinline__ float liger_block_lse(float m, float s, float* sh) {
    float gm;
    const float ls = liger_block_lse_parts(m, s, sh, gm);
    return gm + ls;
}
// Arg-max with the first index on ties.
__device__ __forceinline__ int liger_block_argmax(float x, int k, float* sh, int* shi) {
    for (int o = 16; o > 0; o >>= 1) {
        float y = __shfl_xor_sync(0xffffffffu, x, o);
        int j = __shfl_xor_sync(0xffffffffu, k, o);
        if (y > x || (y == x && j < k)) { x = y; k = j; }
    }
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) { sh[w] = x; shi[w] = k; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int q = 1; q < (LIGER_BLOCK >> 5); ++q) {
            if (sh[q] > sh[0] || (sh[q] == sh[0] && shi[q] < shi[0])) { sh[0] = sh[q]; shi[0] = shi[q]; }
        }
    }
    __syncthreads();
    return shi[0];
}
// ---- end of prelude ----
