//! The small kernels around the streams: the bias add after the logits GEMM, the bias
//! gradient's column sums, moving rows through row maps (a chunk's rows gathered for one GEMM), and the deferred-scaling pieces (per-row coefficients, scaling
//! `dx` rows, the scaled copy of `x` for the `dW` GEMM).

use std::fmt::Write;

use crate::func::LossFn;
use crate::op::Op;
use crate::schedule::Schedule;
use crate::types::Level;

use super::abi::{KernelKind, c_signature};
use super::expr::{level_index, lit};
use super::{EmitOptions, KernelInfo};

/// `z[i, v] += b[v]` over `rows` rows of fp32 logits.
pub(super) fn add_bias_kernel() -> String {
    format!(
        "{} {{\n    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n    if (e >= (long long)rows * V) {{ return; }}\n    const int i = (int)(e / V), v = (int)(e % V);\n    z[(long long)i * ld + v] += b[v];\n}}\n",
        c_signature(KernelKind::AddBias, "liger_add_bias")
    )
}

/// `dst[dmap[i]] = src[smap[i]]` row by row (a null map: row `i`), in words of 4 bytes
/// (`wide`) or 2; `lds`, `ldd` and `words` count words. Every row a map names is below the
/// rows of its buffer (the executor builds the maps).
pub(super) fn move_rows_kernel() -> String {
    format!(
        "{} {{\n    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n    if (e >= (long long)nrows * words) {{ return; }}\n    const int i = (int)(e / words), k = (int)(e % words);\n    const long long s = (long long)(smap ? smap[i] : i) * lds + k;\n    const long long d = (long long)(dmap ? dmap[i] : i) * ldd + k;\n    if (wide) {{\n        ((unsigned int*)dst)[d] = ((const unsigned int*)src)[s];\n    }} else {{\n        ((unsigned short*)dst)[d] = ((const unsigned short*)src)[s];\n    }}\n}}\n",
        c_signature(KernelKind::MoveRows, "liger_move_rows")
    )
}

/// Between a vocab-parallel round's max all-reduce and its sum and min all-reduces
/// ([`crate::shard::RoundLayout`]): each rank's log-sum-exp sums rescaled to the ranks'
/// maximum (`s · exp(m − M)`, 0 where the shard's maximum is −∞), and each argmax index
/// replaced by a value no index reaches where the shard's maximum is not the ranks' (so the
/// min all-reduce keeps the first global index holding the maximum). `part` points at the
/// round's slots, `nrows` per slot: `M` (`nm`), its copy (`nm`), `S` (`ns`), `N`.
pub(super) fn shard_fix_kernel() -> String {
    format!(
        "{} {{\n    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n    if (e >= (long long)nrows * (nl + na)) {{ return; }}\n    const int j = (int)(e / nrows), i = (int)(e % nrows);\n    const float* M = part;\n    const float* Mc = part + (long long)nm * nrows;\n    float* Sm = part + 2LL * nm * nrows;\n    float* N = Sm + (long long)ns * nrows;\n    const long long q = (long long)j * nrows + i;\n    if (j < nl) {{\n        Sm[q] = (Mc[q] == LIGER_NEG_INF) ? 0.0f : Sm[q] * expf(Mc[q] - M[q]);\n    }} else if (!(Mc[q] == M[q])) {{\n        N[(long long)(j - nl) * nrows + i] = 3.0e38f;\n    }}\n}}\n",
        c_signature(KernelKind::ShardFix, "liger_shard_fix")
    )
}

/// `db[v] += Σ_q coef[q] · dz[q, v]` (`coef` null: 1).
pub(super) fn bias_kernel(opts: &EmitOptions) -> String {
    let load = opts.gemm_dtype.load(&format!(
        "((const {}*)dz)[(long long)q * ldz + v]",
        opts.gemm_dtype.c_type()
    ));
    format!(
        "{} {{\n    const int v = blockIdx.x * blockDim.x + threadIdx.x;\n    if (v >= V) {{ return; }}\n    float acc = 0.0f;\n    for (int q = 0; q < nrows; ++q) {{ acc += (coef ? coef[q] : 1.0f) * {load}; }}\n    db[v] += acc;\n}}\n",
        c_signature(KernelKind::Bias, "liger_bias")
    )
}

/// The deferred-scaling kernels: one coefficient kernel per factor, `liger_scale_rows` and
/// `liger_scaled_copy`.
pub(super) fn deferred_kernels(
    g: &LossFn,
    sched: &Schedule,
    opts: &EmitOptions,
    kernels: &mut Vec<KernelInfo>,
) -> String {
    let mut s = String::new();
    for f in sched.factors.iter().flatten() {
        let name = format!("liger_coef_{}", f.head.0);
        let t = g.ty(f.coef);
        let idx = level_index(Level::Row, t.level, "r");
        let val = match g.node(f.coef).op {
            Op::Const(c) => lit(c),
            _ => format!("((const float*)vals[{}])[{idx}]", f.coef.0),
        };
        let _ = writeln!(
            s,
            "{} {{\n    const int i = blockIdx.x * blockDim.x + threadIdx.x;\n    if (i >= nrows) {{ return; }}\n    const int r = rows ? rows[i] : row0 + i;\n    if (r < 0 || r >= S * T) {{ out[i] = 0.0f; return; }}\n    const int P = S / 2;\n    (void)P;\n    out[i] = {val};\n}}",
            c_signature(KernelKind::Coef, &name)
        );
        kernels.push(KernelInfo {
            name,
            kind: KernelKind::Coef,
            head: Some(f.head),
        });
    }
    let ct = opts.gemm_dtype.c_type();
    let load = opts
        .gemm_dtype
        .load(&format!("((const {ct}*)x)[(long long)i * ldx + k]"));
    let store = opts.gemm_dtype.store(&format!("c[i] * {load}"));
    let _ = writeln!(
        s,
        "{} {{\n    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n    if (e >= (long long)nrows * h) {{ return; }}\n    const int i = (int)(e / h), k = (int)(e % h);\n    x[(long long)i * ldx + k] *= c[i];\n}}",
        c_signature(KernelKind::ScaleRows, "liger_scale_rows")
    );
    let _ = writeln!(
        s,
        "{} {{\n    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n    if (e >= (long long)nrows * h) {{ return; }}\n    const int i = (int)(e / h), k = (int)(e % h);\n    (({ct}*)out)[(long long)i * h + k] = {store};\n}}",
        c_signature(KernelKind::ScaledCopy, "liger_scaled_copy")
    );
    kernels.push(KernelInfo {
        name: "liger_scale_rows".into(),
        kind: KernelKind::ScaleRows,
        head: None,
    });
    kernels.push(KernelInfo {
        name: "liger_scaled_copy".into(),
        kind: KernelKind::ScaledCopy,
        head: None,
    });
    s
}
