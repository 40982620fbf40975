//! A loss none of the peers ship, written from scratch: length-normalised focal DPO.
//!
//! Preference optimisation spends most of its gradient on pairs the policy already ranks
//! correctly. Focal loss (Lin et al., 2017) fixes the same problem in detection by scaling
//! the log-likelihood of a prediction with probability `p` by `(1 − p)^γ`. Here the
//! prediction is "the chosen answer is preferred", with probability `p = σ(Δ)` where
//!
//! ```text
//! Δ = β · ( (A_c − A_r) − (R_c − R_r) )
//! ```
//!
//! and `A`, `R` are the policy's and the frozen reference's *average* per-token log-probs of
//! each sequence (length-normalised, as in SimPO, so long answers are not favoured). The loss
//! per pair is
//!
//! ```text
//! ℓ = −(1 − σ(Δ))^γ · log σ(Δ)
//! ```
//!
//! which is DPO at `γ = 0` and fades out pairs that are already separated as `γ` grows.
//! `(1 − σ(Δ))` is written `σ(−Δ)` and `log σ` is the stable `log_sigmoid`, so the loss and
//! its gradient stay finite for any margin. The macro differentiates it (the group stage is
//! per pair, so the schedule is group-aligned, deferred or two-pass), and the example checks
//! the chunked CPU run against the f64 reference interpreter.
//!
//! `cargo run --release --example custom_loss`

use liger::prelude::*;
use liger::{RunOptions, Runtime, Strategy};

/// Length-normalised focal DPO (see the module docs).
#[chunked_loss]
pub fn focal_dpo(
    policy: Logits,
    reference: Frozen<Logits>,
    target: Target,
    #[default(0.1)] beta: f32,
    #[default(2.0)] gamma: f32,
) -> Loss {
    let a = seq_mean(logprob(policy, target));
    let r = seq_mean(logprob(reference, target));
    let margin = beta * ((chosen(a) - rejected(a)) - (chosen(r) - rejected(r)));
    metric("margin", margin);
    metric("accuracy", mean(select(margin > 0.0, 1.0, 0.0)));
    mean(-pow(sigmoid(-margin), gamma) * log_sigmoid(margin))
}

fn main() -> Result<(), liger::Error> {
    let (s, t, h, v) = (8usize, 96usize, 32usize, 2048usize);
    let mut seed = 11u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let x: Vec<f32> = (0..s * t * h).map(|_| rnd() as f32 * 3.0).collect();
    let w: Vec<f32> = (0..v * h).map(|_| rnd() as f32 * 0.4).collect();
    let wr: Vec<f32> = w.iter().map(|w| w + rnd() as f32 * 0.05).collect();
    let target: Vec<i64> = (0..s * t)
        .map(|i| {
            if i % t < 20 {
                -100
            } else {
                ((i * 7919) % v) as i64
            }
        })
        .collect();
    let inputs = FocalDpoInputs {
        policy: Head::new(
            TensorView::new(&x, &[s, t, h])?,
            TensorView::new(&w, &[v, h])?,
        ),
        reference: Head::new(
            TensorView::new(&x, &[s, t, h])?,
            TensorView::new(&wr, &[v, h])?,
        ),
        target: TensorView::new(&target, &[s, t])?,
    };
    let reference = FocalDpo.reference(&inputs, &FocalDpoParams::default(), -100)?;
    println!(
        "focal DPO, gamma = 2: f64 reference loss {:.6}",
        reference.loss
    );
    for strategy in [
        Strategy::GroupAligned,
        Strategy::Deferred,
        Strategy::TwoPass,
    ] {
        let opts = RunOptions {
            chunk_memory: 32 << 20,
            schedule: Some(strategy),
            ..RunOptions::default()
        };
        let out = FocalDpo.run(&Runtime::cpu(), &inputs, &FocalDpoParams::default(), &opts)?;
        let rel = (f64::from(out.loss) - reference.loss).abs() / reference.loss.abs();
        println!(
            "  {strategy:<14} loss {:.6} (relative difference {rel:.1e}), {} chunks",
            out.loss, out.report.chunks
        );
    }
    for gamma in [0.0, 1.0, 2.0, 5.0] {
        let p = FocalDpoParams {
            gamma,
            ..FocalDpoParams::default()
        };
        let out = FocalDpo.run(&Runtime::cpu(), &inputs, &p, &RunOptions::default())?;
        let g = out.grad("policy").map_or(0.0, |g| {
            g.w.as_ref()
                .expect("gradient")
                .to_f32()
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
        });
        println!("  gamma {gamma}: loss {:.6}, |dW| {g:.4e}", out.loss);
    }
    Ok(())
}
