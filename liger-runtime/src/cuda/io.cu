// ---- liger runtime I/O kernels: device inputs into the value table, checks, casts ----
// Header-free (no CUDA headers): bf16/f16 loads are bit manipulation / PTX cvt.
//
// Value-table layout (what the generated kernels read): one 4-byte word per element; floats
// as f32 bits, masks as 1.0f / 0.0f, token ids as int32 with -1 for an ignored target.
//
// A check slot is two u64: [first bad element index (u64 max: none), the bad value as f64
// bits]. Checks record the first bad index with atomicMin; `liger_fetch_*` then copies that
// element's value, so the host gets index and value from one small copy when it asks.

#define LIGER_NONE 0xffffffffffffffffull

__device__ __forceinline__ float liger_bf2f(unsigned short b) { return __int_as_float(((unsigned int)b) << 16); }
__device__ __forceinline__ float liger_h2f(unsigned short b) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(b));
    return r;
}
__device__ __forceinline__ unsigned short liger_io_f2bf(float x) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ unsigned short liger_io_f2h(float x) {
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ bool liger_finite(float x) { return (__float_as_int(x) & 0x7f800000) != 0x7f800000; }

__device__ __forceinline__ float liger_load_f32(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float liger_load_bf16(const unsigned short* p, long long i) { return liger_bf2f(p[i]); }
__device__ __forceinline__ float liger_load_f16(const unsigned short* p, long long i) { return liger_h2f(p[i]); }

#define LIGER_GRID_STRIDE(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// Non-finite check of a float tensor (a head's x, w or b).
#define LIGER_CHECK_FINITE(NAME, T, LOAD)                                                        \
extern "C" __global__ void liger_check_finite_##NAME(const T* __restrict__ x, long long n,        \
                                                     unsigned long long* __restrict__ slot) {    \
    LIGER_GRID_STRIDE(i, n) {                                                                    \
        if (!liger_finite(LOAD(x, i))) { atomicMin(slot, (unsigned long long)i); }               \
    }                                                                                            \
}
LIGER_CHECK_FINITE(f32, float, liger_load_f32)
LIGER_CHECK_FINITE(bf16, unsigned short, liger_load_bf16)
LIGER_CHECK_FINITE(f16, unsigned short, liger_load_f16)

// Float input to f32 words, with the non-finite check.
#define LIGER_IN_FLOAT(NAME, T, LOAD)                                                            \
extern "C" __global__ void liger_in_float_##NAME(const T* __restrict__ x, long long n,            \
                                                 unsigned int* __restrict__ out,                 \
                                                 unsigned long long* __restrict__ slot) {        \
    LIGER_GRID_STRIDE(i, n) {                                                                    \
        const float v = LOAD(x, i);                                                              \
        if (slot != 0 && !liger_finite(v)) { atomicMin(slot, (unsigned long long)i); }           \
        out[i] = __float_as_uint(v);                                                             \
    }                                                                                            \
}
LIGER_IN_FLOAT(f32, float, liger_load_f32)
LIGER_IN_FLOAT(bf16, unsigned short, liger_load_bf16)
LIGER_IN_FLOAT(f16, unsigned short, liger_load_f16)

// Token ids to int32 words: `ignore` (when use_ignore) becomes -1; an id outside [0, vocab)
// is recorded in the slot (and written as -1).
#define LIGER_IN_TOKENS(NAME, T)                                                                 \
extern "C" __global__ void liger_in_tokens_##NAME(const T* __restrict__ ids, long long n,         \
                                                  long long ignore, int use_ignore, int vocab,   \
                                                  unsigned int* __restrict__ out,                \
                                                  unsigned long long* __restrict__ slot) {       \
    LIGER_GRID_STRIDE(i, n) {                                                                    \
        const long long id = (long long)ids[i];                                                  \
        int w = -1;                                                                              \
        if (use_ignore && id == ignore) {                                                        \
            w = -1;                                                                              \
        } else if (id < 0 || id >= (long long)vocab) {                                           \
            atomicMin(slot, (unsigned long long)i);                                              \
        } else {                                                                                 \
            w = (int)id;                                                                         \
        }                                                                                        \
        out[i] = (unsigned int)w;                                                                \
    }                                                                                            \
}
LIGER_IN_TOKENS(i64, long long)
LIGER_IN_TOKENS(i32, int)

// Masks (bool bytes or 0/1 integers) to 1.0f / 0.0f words.
#define LIGER_IN_MASK(NAME, T)                                                                   \
extern "C" __global__ void liger_in_mask_##NAME(const T* __restrict__ m, long long n,             \
                                                unsigned int* __restrict__ out) {                \
    LIGER_GRID_STRIDE(i, n) { out[i] = m[i] != 0 ? 0x3f800000u : 0u; }                           \
}
LIGER_IN_MASK(u8, unsigned char)
LIGER_IN_MASK(i32, int)
LIGER_IN_MASK(i64, long long)

// The value of the first bad element of a checked tensor, as f64 bits, into slot[1].
#define LIGER_FETCH(NAME, T, CONV)                                                               \
extern "C" __global__ void liger_fetch_##NAME(const T* __restrict__ x,                            \
                                              unsigned long long* __restrict__ slot) {           \
    if (blockIdx.x == 0 && threadIdx.x == 0 && slot[0] != LIGER_NONE) {                          \
        const double v = CONV;                                                                   \
        slot[1] = (unsigned long long)__double_as_longlong(v);                                   \
    }                                                                                            \
}
LIGER_FETCH(f32, float, (double)x[slot[0]])
LIGER_FETCH(bf16, unsigned short, (double)liger_bf2f(x[slot[0]]))
LIGER_FETCH(f16, unsigned short, (double)liger_h2f(x[slot[0]]))
LIGER_FETCH(i64, long long, (double)x[slot[0]])
LIGER_FETCH(i32, int, (double)x[slot[0]])

// fp32 gradients into the caller's dtype (round to nearest even).
extern "C" __global__ void liger_cast_bf16(const float* __restrict__ x, long long n, unsigned short* __restrict__ out) {
    LIGER_GRID_STRIDE(i, n) { out[i] = liger_io_f2bf(x[i]); }
}
extern "C" __global__ void liger_cast_f16(const float* __restrict__ x, long long n, unsigned short* __restrict__ out) {
    LIGER_GRID_STRIDE(i, n) { out[i] = liger_io_f2h(x[i]); }
}
// ---- end of runtime I/O kernels ----

// After a checked run: when any check slot fired, or the generated kernels flagged a sequence
// with no valid token (status[0]), the loss word becomes NaN, so a caller who reads the loss
// without asking for the status still cannot take a wrong value for a right one.
extern "C" __global__ void liger_poison(const unsigned long long* __restrict__ slots, int n, const int* __restrict__ status, unsigned int* __restrict__ loss) {
    if (blockIdx.x != 0 || threadIdx.x != 0) { return; }
    if (status[0] != 0) { *loss = 0x7fc00000u; return; }
    for (int k = 0; k < n; ++k) {
        if (slots[2 * k] != LIGER_NONE) { *loss = 0x7fc00000u; return; }
    }
}
