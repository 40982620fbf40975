//! The host API of the CUDA executor: host tensors are checked on the host (the same loader
//! as the CPU executor, `crate::host`), uploaded to the engine's stream, run through
//! `crate::cuda::backend::enqueue`, synchronised and read back; the report carries the
//! device time and the allocator-measured peak.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaSlice, CudaStream};
use liger_ir::Pipeline;

use crate::cuda::backend::{DevHead, Job, enqueue};
use crate::cuda::checks::dptr;
use crate::cuda::drv;
use crate::cuda::engine::Engine;
use crate::cuda::profile::summarize;
use crate::output::{LossOutput, Report};
use crate::plan::RunOptions;
use crate::tensor::{DType as HDType, TensorData};
use crate::{Error, InputSet};

/// Uploads a float tensor in its own dtype as raw bytes (f64 as f32).
fn upload_raw(st: &Arc<CudaStream>, data: TensorData<'_>) -> Result<CudaSlice<u8>, Error> {
    let bytes: Vec<u8> = match data {
        TensorData::F32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        TensorData::BF16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        TensorData::F16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        TensorData::F64(x) => x.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
        TensorData::I64(_) | TensorData::I32(_) | TensorData::Bool(_) => {
            return Err(Error::Internal("a head tensor that is not float".into()));
        }
    };
    st.clone_htod(&bytes).map_err(drv("uploading a head"))
}

/// Runs the gradient IR of `p` on host tensors (see the module docs).
pub fn run(
    engine: &Engine,
    p: &Pipeline,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
) -> Result<LossOutput, Error> {
    run_ranked(engine, p, inputs, hyper, opts, None)
}

/// [`run`] as one rank of a group when `ranked` is given: data parallel (the array stages run
/// on the host with the ranks' whole-batch values combined, `HostArrays` in the backend) or
/// vocab parallel (the heads hold a shard of the vocabulary; the streams' reductions and
/// `dx` are combined on the device, `Shards` in the backend).
pub(crate) fn run_ranked(
    engine: &Engine,
    p: &Pipeline,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    ranked: Option<crate::cpu::Ranked<'_>>,
) -> Result<LossOutput, Error> {
    let start = Instant::now();
    opts.grad_dtypes.check()?;
    let g = p.grad();
    let ids = match ranked {
        Some(crate::cpu::Ranked::Vocab { vocab, .. }) => Some(vocab),
        _ => None,
    };
    let loaded = crate::host::load_ids(g, p.schedule(), inputs, hyper, opts, ids)?;
    let live = crate::host::live_rows(
        p.schedule(),
        &loaded.values,
        loaded.dims.0 * loaded.dims.1,
        opts,
    )?;
    // GEMM dtype: every head's x and W share one float dtype.
    let hd = loaded
        .heads
        .first()
        .map(|h| h.x.dtype())
        .unwrap_or(HDType::F32);
    for h in &loaded.heads {
        if h.x.dtype() != hd || h.w.dtype() != hd {
            return Err(Error::InputDType {
                input: format!("{}.w", h.name),
                expected: "the dtype of every head's x",
                got: h.w.dtype(),
            });
        }
    }
    let hd = if hd == HDType::F64 { HDType::F32 } else { hd };
    let st = engine.gpu.stream.clone();
    engine.blas(&st)?;
    // Inputs on the device (before the peak is measured: the rule counts them as there).
    let mut bufs = Vec::new();
    for h in &loaded.heads {
        let x = upload_raw(&st, h.x.data())?;
        let w = upload_raw(&st, h.w.data())?;
        let b = match &h.b {
            Some(b) => Some(st.clone_htod(b).map_err(drv("uploading a bias"))?),
            None => None,
        };
        bufs.push((x, w, b));
    }
    let dev_heads: Vec<DevHead> = loaded
        .heads
        .iter()
        .zip(&bufs)
        .map(|(h, (x, w, b))| DevHead {
            name: h.name.clone(),
            input: h.input,
            x: dptr(x, &st),
            w: dptr(w, &st),
            b: b.as_ref().map(|b| dptr(b, &st)),
            h: h.h,
            grad: h.grad.is_some(),
        })
        .collect();
    let words = loaded
        .values
        .iter()
        .map(|(node, a)| (*node, a.words()))
        .collect();
    // The allocator's view: use before this call, and its high-water mark from here on.
    st.synchronize()
        .map_err(drv("synchronising before the run"))?;
    let base_used = engine.gpu.used_bytes().ok();
    if base_used.is_some() {
        let _ = engine.gpu.reset_peak();
    }
    let ran = enqueue(
        engine,
        &st,
        Job {
            p,
            dims: loaded.dims,
            heads: dev_heads,
            dtype: hd,
            words,
            side: Vec::new(),
            checker: None,
            opts,
            live,
            into: Vec::new(),
            ranked,
        },
    )?;
    // The device collectives queued with the run (vocab parallel) have run, or a peer that
    // never joined them is an error here rather than a wait without end.
    if let Some(crate::cpu::Ranked::Data(comm) | crate::cpu::Ranked::Vocab { comm, .. }) = ranked {
        comm.settle(&st)?;
    }
    let device_ms = f64::from(
        ran.events
            .0
            .elapsed_ms(&ran.events.1)
            .map_err(drv("timing the run"))?,
    );
    st.synchronize().map_err(drv("running the loss"))?;
    // Peak extra memory (the README's "Measuring"): the allocator's peak during the call minus
    // what was in use before it, minus the value arrays of the inputs and the returned
    // gradients (the rule counts them as allocated before the call).
    let measured = match (base_used, engine.gpu.peak_bytes()) {
        (Some(base), Ok(high)) => {
            Some((high.saturating_sub(base) as usize).saturating_sub(ran.io_bytes))
        }
        _ => None,
    };
    let mut warnings = ran.status(&st)?;
    if measured.is_none() {
        warnings.push(format!(
            "the device allocator reports no peak; the executor's own allocations were {} B",
            ran.work_bytes
        ));
    }
    let (loss, metrics, grads) = ran.to_host(g, &st)?;
    let report = Report {
        profile: summarize(&ran.marks)?,
        seconds: start.elapsed().as_secs_f64(),
        device_ms: Some(device_ms),
        peak_extra_bytes: measured,
        warnings,
        ..ran.report.clone()
    };
    let out = LossOutput {
        loss,
        metrics,
        grads,
        report,
    };
    out.check_finite()?;
    Ok(out)
}
