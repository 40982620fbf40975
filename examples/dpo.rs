//! DPO on a synthetic preference batch, on the CPU: the main job end to end.
//!
//! 4 pairs (8 sequences) of 256 tokens, hidden 128, vocabulary 8192, a policy and a frozen
//! reference head, prompts masked with ignore_index. The loss runs chunked under a 64 MiB
//! budget (the planner picks the schedule), and is checked against the f64 reference
//! interpreter on the same inputs. `--save FILE` also writes the batch as safetensors for
//! `liger run dpo --inputs FILE`.
//!
//! `cargo run --release --example dpo [-- --save dpo.safetensors]`

use liger::io::{OwnedData, OwnedTensor};
use liger::prelude::*;
use liger::{RunOptions, Runtime};

fn main() -> Result<(), liger::Error> {
    let (pairs, t, h, v) = (4usize, 256usize, 128usize, 8192usize);
    let s = 2 * pairs;
    let mut seed = 0x5eed_u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut normal = |sd: f64| ((0..4).map(|_| rnd()).sum::<f64>() - 2.0) * sd * 3f64.sqrt();
    let policy_x: Vec<f32> = (0..s * t * h).map(|_| normal(1.0) as f32).collect();
    let policy_w: Vec<f32> = (0..v * h).map(|_| normal(0.05) as f32).collect();
    let reference_w: Vec<f32> = policy_w.iter().map(|w| w + normal(0.005) as f32).collect();
    // The first 64 tokens of every sequence are the prompt: no loss there.
    let target: Vec<i64> = (0..s * t)
        .map(|i| {
            if i % t < 64 {
                -100
            } else {
                (normal(1.0).abs() * 997.0) as i64 % v as i64
            }
        })
        .collect();

    let inputs = DpoInputs {
        policy: Head::new(
            TensorView::new(&policy_x, &[s, t, h])?,
            TensorView::new(&policy_w, &[v, h])?,
        ),
        reference: Some(Head::new(
            TensorView::new(&policy_x, &[s, t, h])?,
            TensorView::new(&reference_w, &[v, h])?,
        )),
        ref_logps: None,
        target: TensorView::new(&target, &[s, t])?,
    };
    let params = DpoParams {
        beta: 0.1,
        ..DpoParams::default()
    };
    let options = RunOptions {
        chunk_memory: 64 << 20,
        ..RunOptions::default()
    };
    let out = Dpo.run(&Runtime::cpu(), &inputs, &params, &options)?;
    println!("DPO, {pairs} pairs x {t} tokens, H = {h}, V = {v}");
    println!("  loss            {:.6}", out.loss);
    for m in &out.metrics {
        println!("  {:<15} {:?}", m.name, m.values);
    }
    let r = &out.report;
    println!(
        "  schedule {} ({} chunks of {} rows), {:.1} MiB planned of {:.1} MiB, {:.2} s",
        r.strategy,
        r.chunks,
        r.chunk_rows,
        r.estimate as f64 / 1048576.0,
        r.budget as f64 / 1048576.0,
        r.seconds
    );

    let reference = Dpo.reference(&inputs, &params, -100)?;
    let rel = (f64::from(out.loss) - reference.loss).abs() / reference.loss.abs().max(1e-12);
    println!(
        "  f64 reference   {:.6} (relative difference {rel:.2e})",
        reference.loss
    );
    let gx = &out
        .grad("policy")
        .map(|g| g.x.as_ref().expect("gradient").to_f32())
        .unwrap_or_default();
    let rx = &reference
        .grad("policy")
        .map(|g| g.x.clone())
        .unwrap_or_default();
    let num: f64 = gx
        .iter()
        .zip(rx)
        .map(|(a, b)| (f64::from(*a) - b).powi(2))
        .sum();
    let den: f64 = rx.iter().map(|b| b * b).sum();
    println!(
        "  d policy.x      relative L2 difference to the reference {:.2e}",
        (num / den).sqrt()
    );
    if rel > 1e-4 || (num / den).sqrt() > 1e-4 {
        return Err(liger::Error::File {
            path: "dpo example".into(),
            why: "executor and reference disagree".into(),
        });
    }

    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--save") {
        let path = args
            .get(i + 1)
            .cloned()
            .unwrap_or_else(|| "dpo.safetensors".into());
        let mut file = std::collections::BTreeMap::new();
        file.insert(
            "policy.x".to_string(),
            OwnedTensor {
                shape: vec![s, t, h],
                data: OwnedData::F32(policy_x.clone()),
            },
        );
        file.insert(
            "policy.w".to_string(),
            OwnedTensor {
                shape: vec![v, h],
                data: OwnedData::F32(policy_w.clone()),
            },
        );
        file.insert(
            "reference.x".to_string(),
            OwnedTensor {
                shape: vec![s, t, h],
                data: OwnedData::F32(policy_x.clone()),
            },
        );
        file.insert(
            "reference.w".to_string(),
            OwnedTensor {
                shape: vec![v, h],
                data: OwnedData::F32(reference_w.clone()),
            },
        );
        file.insert(
            "target".to_string(),
            OwnedTensor {
                shape: vec![s, t],
                data: OwnedData::I64(target.clone()),
            },
        );
        liger::io::write(&path, &file)?;
        println!("  wrote the batch to {path}: liger run dpo --inputs {path}");
    }
    Ok(())
}
