//! Central finite differences with one Richardson step.

/// `df/dx_i` at `x` by central differences with steps `h` and `h/2`, combined by Richardson
/// extrapolation (error O(h^4)). `f` returns `None` when the point is unusable (a branch
/// changed); then the derivative is `None` too.
pub fn derivative(
    x: &[f64],
    i: usize,
    h: f64,
    mut f: impl FnMut(&[f64]) -> Option<f64>,
) -> Option<f64> {
    let mut y = x.to_vec();
    let mut at = |d: f64| {
        y[i] = x[i] + d;
        let r = f(&y);
        y[i] = x[i];
        r
    };
    let d1 = (at(h)? - at(-h)?) / (2.0 * h);
    let d2 = (at(h / 2.0)? - at(-h / 2.0)?) / h;
    Some((4.0 * d2 - d1) / 3.0)
}
