//! Diagnostics of `.lir` files cost time linear in the file: a file with an error on every
//! line, 10x longer, costs at most ~15x (a ratio of the same machine's times, the best of
//! five runs each, not a timed threshold). Before the fix, rendering compared every line with
//! every diagnostic: 10x the lines cost 100x.

use std::time::{Duration, Instant};

use liger_ir::text::{parse_mapped, render_diagnostics, render_excerpt};

/// A loss of `n` statements, every one of which has a mistake: an unknown name, a type
/// error or an unknown op in turn.
fn broken(n: usize) -> String {
    let mut s = String::from(
        "; liger-ir v1\nloss big {\n  input z: logits\n  input t: target\n  m = valid t\n  lp = logprob z, t\n  x0 = mean lp, m\n",
    );
    for i in 1..n {
        let p = i - 1;
        match i % 3 {
            0 => s += &format!("  x{i} = add y{p}, x{p}\n"),
            1 => s += &format!("  x{i} = add m, x{p}\n"),
            _ => s += &format!("  x{i} = frobnicate x{p}\n"),
        }
    }
    s += &format!("  loss = x{}\n}}\n", n - 1);
    s
}

/// Parses (and verifies when it parses) and renders every diagnostic both ways; returns the
/// number of diagnostics.
fn diagnose(text: &str) -> usize {
    let (diags, map) = match parse_mapped(text) {
        Err(d) => (d.0, Default::default()),
        Ok((f, map)) => match liger_ir::verify(&f) {
            Err(d) => (d.0, map),
            Ok(()) => (vec![], map),
        },
    };
    let full = render_diagnostics(text, &map, &diags);
    let excerpt = render_excerpt(text, &map, &diags, 20);
    assert!(full.len() >= text.len() && !excerpt.is_empty());
    diags.len()
}

fn best_of_five(text: &str) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut n = 0;
    for _ in 0..5 {
        let t = Instant::now();
        n = diagnose(text);
        best = best.min(t.elapsed());
    }
    (best, n)
}

#[test]
fn diagnostics_scale_linearly_with_the_file() {
    let (small, large) = (broken(10_000), broken(100_000));
    let (ts, ns) = best_of_five(&small);
    let (tl, nl) = best_of_five(&large);
    assert!(
        ns >= 3_000 && nl >= 30_000,
        "every line is reported: {ns}, {nl}"
    );
    let ratio = tl.as_secs_f64() / ts.as_secs_f64().max(1e-9);
    println!("10k lines: {ts:?} ({ns} diagnostics); 100k lines: {tl:?} ({nl}); ratio {ratio:.1}");
    // Linear is 10x, quadratic 100x; the bound leaves room for a loaded machine (19x was
    // seen with a build running beside the test on two cores).
    assert!(
        ratio <= 35.0,
        "100k lines cost {ratio:.1}x 10k lines ({tl:?} vs {ts:?}): diagnostics are not linear"
    );
}
