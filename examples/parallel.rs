//! FLCE over two ranks, on the CPU, each rank a thread: once data parallel (each rank holds
//! half of the sequences) and once vocab parallel (each rank holds every row and half of the
//! lm head's vocabulary rows), both checked against the single-device run of the whole batch.
//!
//! `cargo run --release --example parallel`

use liger::runtime::comm::{GradShare, LocalGroup};
use liger::{Head, InputSet, LossOutput, ParamSet, RunOptions, Runtime, TensorView};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (s, t, h, v) = (4usize, 64usize, 32usize, 1001usize);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut normal = |sd: f32| ((0..4).map(|_| rng.f32()).sum::<f32>() - 2.0) * sd * 1.73;
    let x: Vec<f32> = (0..s * t * h).map(|_| normal(1.0)).collect();
    let w: Vec<f32> = (0..v * h).map(|_| normal(0.2)).collect();
    let target: Vec<i64> = (0..s * t)
        .map(|i| {
            if i % t < 8 {
                -100
            } else {
                ((i * 7919) % v) as i64
            }
        })
        .collect();
    fn set<'a>(
        x: &'a [f32],
        w: &'a [f32],
        tg: &'a [i64],
        (s, t, h, v): (usize, usize, usize, usize),
    ) -> Result<InputSet<'a>, liger::runtime::Error> {
        Ok(InputSet::new()
            .head(
                "logits",
                Head::new(
                    TensorView::new(x, &[s, t, h])?,
                    TensorView::new(w, &[v, h])?,
                ),
            )
            .tensor("target", TensorView::new(tg, &[s, t])?))
    }
    let (rt, params, opts) = (Runtime::cpu(), ParamSet::new(), RunOptions::default());
    let flce = &liger::losses::Flce;
    let single = liger::run(
        flce,
        &rt,
        &set(&x, &w, &target, (s, t, h, v))?,
        &params,
        &opts,
    )?;

    // Data parallel: sequences 0-1 on rank 0, 2-3 on rank 1.
    let half = s / 2;
    let ranks = LocalGroup::ranks(2);
    let dp: Vec<LossOutput> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let (comm, rt, params, opts) = (&ranks[r], &rt, &params, &opts);
                let (x, target, w) = (&x, &target, &w);
                sc.spawn(move || -> Result<LossOutput, liger::Error> {
                    let xs = &x[r * half * t * h..(r + 1) * half * t * h];
                    let ts = &target[r * half * t..(r + 1) * half * t];
                    let inputs = set(xs, w, ts, (half, t, h, v))?;
                    liger::run_data_parallel(
                        flce,
                        rt,
                        &inputs,
                        params,
                        opts,
                        comm,
                        GradShare::Share,
                    )
                })
            })
            .collect();
        hs.into_iter()
            .map(|j| j.join().expect("rank"))
            .collect::<Result<_, _>>()
    })?;
    let dw_sum: Vec<f32> = {
        let (a, b) = (grad_w(&dp[0]), grad_w(&dp[1]));
        a.iter().zip(&b).map(|(x, y)| x + y).collect()
    };
    println!(
        "data parallel:  loss {:.6} on both ranks (single device {:.6}); dW shares summed vs single: max |diff| {:.2e}",
        dp[0].loss,
        single.loss,
        max_diff(&dw_sum, &grad_w(&single))
    );

    // Vocab parallel: vocabulary rows 0..500 on rank 0, 500..1001 on rank 1.
    let cut = v / 2;
    let ranks = LocalGroup::ranks(2);
    let vp: Vec<LossOutput> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let (comm, rt, params, opts) = (&ranks[r], &rt, &params, &opts);
                let (x, target, w) = (&x, &target, &w);
                sc.spawn(move || -> Result<LossOutput, liger::Error> {
                    let (a, b) = if r == 0 { (0, cut) } else { (cut, v) };
                    let inputs = set(x, &w[a * h..b * h], target, (s, t, h, b - a))?;
                    liger::run_vocab_parallel(flce, rt, &inputs, params, opts, comm)
                })
            })
            .collect();
        hs.into_iter()
            .map(|j| j.join().expect("rank"))
            .collect::<Result<_, _>>()
    })?;
    let dw_cat: Vec<f32> = grad_w(&vp[0]).into_iter().chain(grad_w(&vp[1])).collect();
    println!(
        "vocab parallel: loss {:.6} on both ranks (single device {:.6}); dW shards joined vs single: max |diff| {:.2e}",
        vp[1].loss,
        single.loss,
        max_diff(&dw_cat, &grad_w(&single))
    );
    Ok(())
}

fn grad_w(out: &LossOutput) -> Vec<f32> {
    out.grads[0]
        .w
        .as_ref()
        .map(|g| g.to_f32())
        .unwrap_or_default()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
