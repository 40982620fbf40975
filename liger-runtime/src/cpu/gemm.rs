//! f32 GEMMs on the CPU through `matrixmultiply` (row-major, any strides).

/// `c[m,n] = alpha · a[m,k] · b[k,n] + beta · c`, where `a` and `b` are given with explicit
/// row and column strides (so transposes are free).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let span = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    // The bounds that make the raw-pointer call below sound.
    assert!(a.len() >= span(m, k, rsa, csa), "sgemm: a is too short");
    assert!(b.len() >= span(k, n, rsb, csb), "sgemm: b is too short");
    assert!(c.len() >= m * n, "sgemm: c is too short");
    // SAFETY: the assertions above guarantee every element the strides address lies inside
    // `a`, `b` and `c`; `c` is uniquely borrowed and does not alias `a` or `b` (distinct
    // borrows); strides fit in isize for any slice length Rust can allocate.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `z[c,V] = x[c,H] · Wᵀ (+ b)`.
pub fn logits(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    h: usize,
    v: usize,
    z: &mut [f32],
) {
    sgemm(rows, h, v, 1.0, x, (h, 1), w, (1, h), 0.0, z);
    if let Some(b) = b {
        for row in z.chunks_mut(v).take(rows) {
            for (zv, bv) in row.iter_mut().zip(b) {
                *zv += bv;
            }
        }
    }
}

/// `dx[c,H] = dz[c,V] · W[V,H]`.
pub fn grad_x(dz: &[f32], w: &[f32], rows: usize, h: usize, v: usize, dx: &mut [f32]) {
    sgemm(rows, v, h, 1.0, dz, (v, 1), w, (h, 1), 0.0, dx);
}

/// `dW[V,H] += dzᵀ[V,c] · x[c,H]`.
pub fn grad_w(dz: &[f32], x: &[f32], rows: usize, h: usize, v: usize, dw: &mut [f32]) {
    sgemm(v, rows, h, 1.0, dz, (1, v), x, (h, 1), 1.0, dw);
}
