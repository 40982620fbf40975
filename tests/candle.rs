//! The losses as candle ops (`--features candle`): values against naive f64 formulas written
//! here, gradients through candle's own `backward()` against finite differences of those
//! formulas, at odd sizes, with `ignore_index` -100 and 42, frozen inputs, bf16, a custom loss
//! compiled from source, and the refusals.

mod common;

use candle_core::{DType as CDType, Device, Tensor, Var};
use common::{derivative, f64s, log_sigmoid, lse, randn, targets};
use liger::candle::run;
use liger::{ParamSet, RunOptions};

fn close(what: &str, got: f64, want: f64, atol: f64, rtol: f64) {
    assert!(
        (got - want).abs() <= atol + rtol * want.abs(),
        "{what}: got {got}, want {want}"
    );
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(CDType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("values")
}

/// Mean over valid rows of `-log softmax(z / temp)[target]`, z = x Wᵀ + b, in f64.
#[allow(clippy::too_many_arguments)]
fn naive_ce(
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    t: &[i64],
    ignore: i64,
    h: usize,
    v: usize,
    temp: f64,
) -> f64 {
    let z = common::linear(x, w, b, h, v);
    let (mut sum, mut n) = (0.0, 0usize);
    for (i, &y) in t.iter().enumerate() {
        if y == ignore {
            continue;
        }
        let row: Vec<f64> = z[i * v..(i + 1) * v].iter().map(|a| a / temp).collect();
        sum += lse(&row) - row[y as usize];
        n += 1;
    }
    sum / n as f64
}

/// Checks every entry of a candle gradient against central differences of `f` at `x`.
fn check_grad(what: &str, got: &[f64], x: &[f64], scale: f64, f: impl Fn(&[f64]) -> f64) {
    assert_eq!(got.len(), x.len(), "{what}: length");
    for (i, g) in got.iter().enumerate() {
        let num = scale * derivative(x, i, 1e-3, &f);
        close(&format!("{what}[{i}]"), *g, num, 2e-6, 2e-4);
    }
}

#[test]
fn flce_on_candle_vars_matches_the_formula_and_finite_differences() {
    let (s, t, h, v) = (3usize, 7usize, 5usize, 47usize);
    let mut rng = fastrand::Rng::with_seed(3);
    for ignore in [-100i64, 42] {
        let (xs, ws, bs) = (
            randn(&mut rng, s * t * h, 1.0),
            randn(&mut rng, v * h, 0.5),
            randn(&mut rng, v, 0.3),
        );
        let tg = targets(&mut rng, s, t, v, ignore);
        let dev = Device::Cpu;
        let x = Var::from_vec(xs.clone(), (s, t, h), &dev).expect("x");
        let w = Var::from_vec(ws.clone(), (v, h), &dev).expect("w");
        let b = Var::from_vec(bs.clone(), v, &dev).expect("b");
        let target = Tensor::from_vec(tg.clone(), (s, t), &dev).expect("t");
        let opts = RunOptions {
            ignore_index: ignore,
            ..RunOptions::default()
        };
        let out = run(
            &liger::losses::Flce,
            &ParamSet::new(),
            &[
                ("logits.x", x.as_tensor()),
                ("logits.w", w.as_tensor()),
                ("logits.b", b.as_tensor()),
                ("target", &target),
            ],
            &opts,
        )
        .expect("run");
        let (xd, wd, bd) = (f64s(&xs), f64s(&ws), f64s(&bs));
        let want = naive_ce(&xd, &wd, Some(&bd), &tg, ignore, h, v, 1.0);
        let got = values(&out.loss)[0];
        close(&format!("loss ignore={ignore}"), got, want, 1e-6, 1e-5);
        assert_eq!(out.loss.dtype(), CDType::F32);
        assert!(out.metrics.contains_key("accuracy"));
        assert_eq!(out.metrics["accuracy"].dims(), &[] as &[usize]);
        // Backward through candle: the loss scaled by 3 gives 3x the gradients.
        let grads = (out.loss * 3.0)
            .and_then(|l| l.backward())
            .expect("backward");
        let g = |var: &Var| values(grads.get(var.as_tensor()).expect("a gradient"));
        check_grad("dx", &g(&x), &xd, 3.0, |p| {
            naive_ce(p, &wd, Some(&bd), &tg, ignore, h, v, 1.0)
        });
        check_grad("dW", &g(&w), &wd, 3.0, |p| {
            naive_ce(&xd, p, Some(&bd), &tg, ignore, h, v, 1.0)
        });
        check_grad("db", &g(&b), &bd, 3.0, |p| {
            naive_ce(&xd, &wd, Some(p), &tg, ignore, h, v, 1.0)
        });
    }
}

#[test]
fn dpo_with_a_frozen_reference_head_gives_only_the_policy_gradients() {
    let (p, t, h, v, beta) = (2usize, 6usize, 4usize, 23usize, 0.1f64);
    let s = 2 * p;
    let mut rng = fastrand::Rng::with_seed(9);
    let (xs, ws) = (randn(&mut rng, s * t * h, 1.0), randn(&mut rng, v * h, 0.5));
    let (xr, wr) = (randn(&mut rng, s * t * h, 1.0), randn(&mut rng, v * h, 0.5));
    let tg = targets(&mut rng, s, t, v, 42);
    let dev = Device::Cpu;
    let x = Var::from_vec(xs.clone(), (s, t, h), &dev).expect("x");
    let w = Var::from_vec(ws.clone(), (v, h), &dev).expect("w");
    let xref = Tensor::from_vec(xr.clone(), (s, t, h), &dev).expect("xr");
    let wref = Tensor::from_vec(wr.clone(), (v, h), &dev).expect("wr");
    let target = Tensor::from_vec(tg.clone(), (s, t), &dev).expect("t");
    let out = run(
        &liger::losses::Dpo,
        &ParamSet::new().float("beta", beta as f32),
        &[
            ("policy.x", x.as_tensor()),
            ("policy.w", w.as_tensor()),
            ("reference.x", &xref),
            ("reference.w", &wref),
            ("target", &target),
        ],
        &RunOptions {
            ignore_index: 42,
            ..RunOptions::default()
        },
    )
    .expect("run");
    let logps = |x: &[f64], w: &[f64]| -> Vec<f64> {
        let z = common::linear(x, w, None, h, v);
        (0..s)
            .map(|q| {
                (0..t)
                    .filter(|&j| tg[q * t + j] != 42)
                    .map(|j| {
                        let i = q * t + j;
                        let row = &z[i * v..(i + 1) * v];
                        row[tg[i] as usize] - lse(row)
                    })
                    .sum()
            })
            .collect()
    };
    let (xrd, wrd) = (f64s(&xr), f64s(&wr));
    let refl = logps(&xrd, &wrd);
    let formula = |x: &[f64], w: &[f64]| -> f64 {
        let pol = logps(x, w);
        (0..p)
            .map(|i| {
                let m = beta * ((pol[i] - refl[i]) - (pol[i + p] - refl[i + p]));
                -log_sigmoid(m)
            })
            .sum::<f64>()
            / p as f64
    };
    let (xd, wd) = (f64s(&xs), f64s(&ws));
    close(
        "dpo loss",
        values(&out.loss)[0],
        formula(&xd, &wd),
        1e-6,
        1e-5,
    );
    let chosen = values(&out.metrics["chosen_rewards"]);
    let pol = logps(&xd, &wd);
    for i in 0..p {
        close(
            "chosen_rewards",
            chosen[i],
            beta * (pol[i] - refl[i]),
            1e-6,
            1e-4,
        );
    }
    let grads = out.loss.backward().expect("backward");
    assert!(
        grads.get(&xref).is_none() && grads.get(&wref).is_none(),
        "frozen"
    );
    let g = |var: &Var| values(grads.get(var.as_tensor()).expect("a gradient"));
    check_grad("dpo dx", &g(&x), &xd, 1.0, |q| formula(q, &wd));
    check_grad("dpo dW", &g(&w), &wd, 1.0, |q| formula(&xd, q));
}

#[test]
fn a_compiled_loss_bf16_and_a_frozen_weight() {
    let src = "use liger::prelude::*;\n\
        #[chunked_loss]\n\
        pub fn tempered_ce(logits: Logits, target: Target, #[default(2.0)] temperature: f32) -> Loss {\n\
            mean(-logprob(logits / temperature, target))\n\
        }\n";
    let loss = liger::compile_loss(src, "test")
        .expect("compiles")
        .remove(0);
    let (s, t, h, v) = (2usize, 5usize, 4usize, 13usize);
    let mut rng = fastrand::Rng::with_seed(5);
    let (xs, ws) = (randn(&mut rng, s * t * h, 1.0), randn(&mut rng, v * h, 0.5));
    let tg = targets(&mut rng, s, t, v, -100);
    let dev = Device::Cpu;
    // bf16 inputs; W frozen (a plain tensor): only dx, in bf16.
    let x = Var::from_tensor(
        &Tensor::from_vec(xs.clone(), (s, t, h), &dev)
            .and_then(|t| t.to_dtype(CDType::BF16))
            .expect("x"),
    )
    .expect("var");
    let w = Tensor::from_vec(ws.clone(), (v, h), &dev)
        .and_then(|t| t.to_dtype(CDType::BF16))
        .expect("w");
    let target = Tensor::from_vec(tg.clone(), (s, t), &dev).expect("t");
    let out = run(
        &loss,
        &ParamSet::new().float("temperature", 0.5),
        &[
            ("logits.x", x.as_tensor()),
            ("logits.w", &w),
            ("target", &target),
        ],
        &RunOptions::default(),
    )
    .expect("run");
    // The formula on the bf16 values the run saw.
    let (xd, wd) = (values(x.as_tensor()), values(&w));
    let f = |p: &[f64]| naive_ce(p, &wd, None, &tg, -100, h, v, 0.5);
    close("tempered loss", values(&out.loss)[0], f(&xd), 1e-5, 1e-5);
    let grads = out.loss.backward().expect("backward");
    let gx = grads.get(x.as_tensor()).expect("dx");
    assert_eq!(gx.dtype(), CDType::BF16, "a gradient in its input's dtype");
    assert!(grads.get(&w).is_none(), "W is frozen");
    let got = values(gx);
    for (i, g) in got.iter().enumerate() {
        let num = derivative(&xd, i, 1e-3, f);
        // bf16 gradient: the f32 value rounded once (2^-8 relative).
        close(&format!("dx[{i}]"), *g, num, 1e-5, 1e-2);
    }
}

#[test]
fn bad_tensors_are_refused_naming_them() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 4), CDType::F32, &dev).expect("x");
    let w = Tensor::ones((5, 4), CDType::F32, &dev).expect("w");
    let t = Tensor::from_vec(vec![1i64, 2, 3], (1, 3), &dev).expect("t");
    let flce = &liger::losses::Flce;
    let go = |ins: &[(&str, &Tensor)]| {
        run(flce, &ParamSet::new(), ins, &RunOptions::default())
            .expect_err("refused")
            .to_string()
    };
    let wt = Tensor::ones((4, 5), CDType::F32, &dev)
        .and_then(|m| m.t())
        .expect("transposed");
    let e = go(&[("logits.x", &x), ("logits.w", &wt), ("target", &t)]);
    assert!(e.contains("logits.w") && e.contains("contiguous"), "{e}");
    let t32 = t.to_dtype(CDType::U32).expect("u32");
    let e = go(&[("logits.x", &x), ("logits.w", &w), ("target", &t32)]);
    assert!(e.contains("target") && e.contains("I64"), "{e}");
    let e = go(&[("logits.x", &x), ("logits.w", &w), ("targte", &t)]);
    assert!(e.contains("targte"), "{e}");
    let e = go(&[("logits.x", &x), ("logits.w", &w)]);
    assert!(e.contains("target"), "{e}");
}
