//! The device API: FLCE on tensors already on the GPU, queued on our own stream, gradients
//! returned on the device (grad x in bf16, grad W in f32), then checked against the CPU
//! executor. Without a GPU it says so and exits.
//!
//! `cargo run --release --example device_api`

use liger::runtime::cudarc::driver::CudaSlice;
use liger::{
    DType, DeviceHead, DeviceInputs, DeviceTensor, GradDTypes, Head, InputSet, ParamSet,
    RunOptions, Runtime, TensorView,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = match Runtime::cuda(0) {
        Ok(rt) => rt,
        Err(e) => {
            println!("no GPU here ({e}); the device API needs one");
            return Ok(());
        }
    };
    let (s, t, h, v) = (4usize, 333usize, 256usize, 32003usize);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut rand = |n: usize, sd: f32| -> Vec<half::bf16> {
        (0..n)
            .map(|_| half::bf16::from_f32((rng.f32() - 0.5) * sd * 3.46))
            .collect()
    };
    let x = rand(s * t * h, 1.0);
    let w = rand(v * h, 0.05);
    let target: Vec<i64> = (0..s * t)
        .map(|i| {
            if i % t < 20 {
                -100
            } else {
                ((i * 7919) % v) as i64
            }
        })
        .collect();

    // Our stream; the inputs uploaded on it (in a real trainer they are already there).
    let stream = rt.cuda_context().ok_or("a CUDA runtime")?.new_stream()?;
    let xd: CudaSlice<half::bf16> = stream.clone_htod(&x)?;
    let wd: CudaSlice<half::bf16> = stream.clone_htod(&w)?;
    let td: CudaSlice<i64> = stream.clone_htod(&target)?;
    let (xs, ws, ts) = ([s, t, h], [v, h], [s, t]);
    let inputs = DeviceInputs::new()
        .head(
            "logits",
            DeviceHead {
                x: DeviceTensor::new(&xd, &xs)?,
                w: DeviceTensor::new(&wd, &ws)?,
                b: None,
            },
        )
        .tensor("target", DeviceTensor::new(&td, &ts)?);
    let opts = RunOptions {
        grad_dtypes: GradDTypes {
            x: DType::BF16,
            ..GradDTypes::default()
        },
        ..RunOptions::default()
    };
    let params = ParamSet::new().float("label_smoothing", 0.1);
    let start = std::time::Instant::now();
    let out = liger::run_device(&liger::losses::Flce, &rt, &inputs, &params, &opts, &stream)?;
    let queued = start.elapsed();
    // More work could be queued on `stream` here, reading out.loss() or the gradients.
    out.check()?; // the one synchronisation, when we choose it
    let g = out.grad("logits").ok_or("gradients")?;
    let (gx, gw) = (g.x.as_ref().ok_or("grad x")?, g.w.as_ref().ok_or("grad W")?);
    println!(
        "FLCE on the device: queued in {:.2} ms, {} on the GPU; grad x {} [{}], grad W {} [{}]",
        queued.as_secs_f64() * 1e3,
        out.report().strategy,
        gx.dtype(),
        gx.len(),
        gw.dtype(),
        gw.len()
    );

    // The same batch through the CPU executor.
    let host = out.to_host()?;
    let set = InputSet::new()
        .head(
            "logits",
            Head::new(TensorView::new(&x, &xs)?, TensorView::new(&w, &ws)?),
        )
        .tensor("target", TensorView::new(&target, &ts)?);
    let cpu = liger::run(
        &liger::losses::Flce,
        &Runtime::cpu(),
        &set,
        &params,
        &RunOptions::default(),
    )?;
    let rel = |a: &[f32], b: &[f32]| {
        let num: f64 = a.iter().zip(b).map(|(p, q)| f64::from(p - q).powi(2)).sum();
        let den: f64 = b.iter().map(|q| f64::from(*q).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    };
    let (hx, cx) = (
        host.grads[0].x.as_ref().expect("gradient").to_f32(),
        cpu.grads[0].x.as_ref().expect("gradient").to_f32(),
    );
    let (hw, cw) = (
        host.grads[0].w.as_ref().expect("gradient").to_f32(),
        cpu.grads[0].w.as_ref().expect("gradient").to_f32(),
    );
    println!(
        "loss {:.6} (CPU {:.6}); relative L2 difference: grad x {:.2e}, grad W {:.2e}",
        host.loss,
        cpu.loss,
        rel(&hx, &cx),
        rel(&hw, &cw)
    );
    if rel(&hx, &cx) > 1e-2 || rel(&hw, &cw) > 1e-2 || (host.loss - cpu.loss).abs() > 1e-3 {
        return Err("the device result differs from the CPU executor".into());
    }
    Ok(())
}
