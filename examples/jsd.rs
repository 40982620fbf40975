//! Generalised JSD distillation from a frozen teacher with a wider hidden size, on the CPU.
//!
//! 8 sequences of 128 tokens, student hidden 64, teacher hidden 256, vocabulary 4096; the
//! loss is row-local, so it runs fused with chunks cut anywhere.
//!
//! `cargo run --release --example jsd`

use liger::prelude::*;
use liger::{RunOptions, Runtime};

fn main() -> Result<(), liger::Error> {
    let (s, t, hs, ht, v) = (8usize, 128usize, 64usize, 256usize, 4096usize);
    let mut seed = 7u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let sx: Vec<f32> = (0..s * t * hs).map(|_| rnd() as f32 * 2.0).collect();
    let sw: Vec<f32> = (0..v * hs).map(|_| rnd() as f32 * 0.3).collect();
    let tx: Vec<f32> = (0..s * t * ht).map(|_| rnd() as f32 * 2.0).collect();
    let tw: Vec<f32> = (0..v * ht).map(|_| rnd() as f32 * 0.15).collect();
    let target: Vec<i64> = (0..s * t)
        .map(|i| {
            if i % 17 == 0 {
                -100
            } else {
                (i * 31 % v) as i64
            }
        })
        .collect();
    let inputs = JsdInputs {
        student: Head::new(
            TensorView::new(&sx, &[s, t, hs])?,
            TensorView::new(&sw, &[v, hs])?,
        ),
        teacher: Head::new(
            TensorView::new(&tx, &[s, t, ht])?,
            TensorView::new(&tw, &[v, ht])?,
        ),
        target: TensorView::new(&target, &[s, t])?,
    };
    for beta in [0.0, 0.5, 1.0] {
        let params = JsdParams {
            beta,
            temperature: 2.0,
            ..JsdParams::default()
        };
        let out = Jsd.run(
            &Runtime::cpu(),
            &inputs,
            &params,
            &RunOptions {
                chunk_memory: 32 << 20,
                ..RunOptions::default()
            },
        )?;
        let soft = out.metric("soft_loss").map_or(f32::NAN, |m| m.values[0]);
        let hard = out.metric("hard_loss").map_or(f32::NAN, |m| m.values[0]);
        println!(
            "beta {beta:.1}: loss {:.6} (soft {soft:.6}, hard {hard:.6}); {} in {} chunks of {} rows, {:.2} s",
            out.loss,
            out.report.strategy,
            out.report.chunks,
            out.report.chunk_rows,
            out.report.seconds
        );
    }
    Ok(())
}
