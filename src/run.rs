//! Running a [`ChunkedLoss`] on an executor: parameters resolved against the loss's table,
//! the specialisation chosen from the variants and the inputs present, its IR taken through
//! the [`Pipeline`] (differentiated, simplified and scheduled once per process and
//! specialisation), then handed to the runtime.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use crate::loss::{ChunkedLoss, SpecInfo};
use crate::params::{ParamSet, ResolvedParams};
use crate::runtime::Pipeline;
use crate::{DeviceInputs, DeviceOutput, Error, InputSet, LossOutput, RunOptions, Runtime};

/// What [`specialise`] returns.
pub(crate) type Specialised = (ResolvedParams, &'static SpecInfo, Arc<Pipeline>);

/// The pipeline of a specialisation, built once per process (keyed by its IR text).
fn pipeline_of(loss: &dyn ChunkedLoss, spec: &'static SpecInfo) -> Result<Arc<Pipeline>, Error> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Arc<Pipeline>>>> = OnceLock::new();
    let text = spec.ir.ok_or(Error::Refused {
        loss: loss.name().into(),
        spec: spec.describe(),
        input: spec.refused.unwrap_or("?"),
    })?;
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(p) = cache.lock().ok().and_then(|m| m.get(text).cloned()) {
        return Ok(p);
    }
    let p = Arc::new(pipeline(loss, spec)?);
    if let Ok(mut m) = cache.lock() {
        m.insert(text, p.clone());
    }
    Ok(p)
}

/// The pipeline of specialisation `spec` of `loss` (not cached).
pub fn pipeline(loss: &dyn ChunkedLoss, spec: &SpecInfo) -> Result<Pipeline, Error> {
    let f = loss.ir(spec)?;
    Pipeline::new(f).map_err(|diagnostics| Error::InvalidIr {
        loss: loss.name().into(),
        spec: spec.describe(),
        diagnostics,
    })
}

/// The specialisation `params` and the `given` input names select: the resolved parameters,
/// the specialisation and its pipeline (shared by the executors and the f64 reference path).
pub(crate) fn specialise(
    loss: &dyn ChunkedLoss,
    given: &[&str],
    params: &ParamSet,
) -> Result<Specialised, Error> {
    let contains = |n: &str| given.contains(&n);
    let resolved = params.resolve(loss)?;
    for p in loss
        .params()
        .iter()
        .filter(|p| p.kind.is_input() && !p.optional)
    {
        if !contains(p.name) {
            return Err(crate::runtime::Error::MissingInput {
                loss: loss.name().into(),
                name: p.name.into(),
                kind: p.kind.name(),
            }
            .into());
        }
    }
    for &name in given {
        if !loss.param(name).is_some_and(|p| p.kind.is_input()) {
            let known: Vec<&str> = loss
                .params()
                .iter()
                .filter(|p| p.kind.is_input())
                .map(|p| p.name)
                .collect();
            return Err(crate::runtime::Error::UnknownInput {
                loss: loss.name().into(),
                name: name.into(),
                known: known.join(", "),
            }
            .into());
        }
    }
    let spec = loss.specialization(&resolved, &contains)?;
    let p = pipeline_of(loss, spec)?;
    unused_inputs(loss, spec, &p, given)?;
    Ok((resolved, spec, p))
}

/// Every input given is used or refused: an input the specialisation's IR never reads (DPO
/// given both a reference head and precomputed reference log-probs uses the head) is an error
/// naming it and the inputs used in its place.
fn unused_inputs(
    loss: &dyn ChunkedLoss,
    spec: &SpecInfo,
    p: &Pipeline,
    given: &[&str],
) -> Result<(), Error> {
    let Some(f) = p.surface() else {
        return Ok(());
    };
    let uses = f.use_counts();
    let used = |name: &str| {
        f.input_by_name(name)
            .and_then(|id| f.input_node(id))
            .is_some_and(|v| uses[v.index()] > 0)
    };
    let Some(&unused) = given.iter().find(|n| !used(n)) else {
        return Ok(());
    };
    let instead: Vec<&str> = loss
        .params()
        .iter()
        .filter(|q| q.optional && q.kind.is_input() && q.name != unused)
        .map(|q| q.name)
        .filter(|n| given.contains(n) && used(n))
        .collect();
    Err(Error::UnusedInput {
        loss: loss.name().into(),
        name: unused.into(),
        spec: spec.describe(),
        instead: if instead.is_empty() {
            String::new()
        } else {
            format!(
                " (it uses {} instead: give only one of them)",
                instead
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    })
}

/// The pipeline and hyperparameter values of the specialisation `params` and the inputs
/// named `given` select.
pub fn pipeline_for(
    loss: &dyn ChunkedLoss,
    given: &[&str],
    params: &ParamSet,
) -> Result<(Arc<Pipeline>, BTreeMap<String, f32>), Error> {
    let (resolved, _, p) = specialise(loss, given, params)?;
    let hyper = resolved.floats().map(|(k, v)| (k.to_string(), v)).collect();
    Ok((p, hyper))
}

/// Runs `loss` on `runtime`: loss, metrics, gradients of every `Logits` head and a report.
pub fn run(
    loss: &dyn ChunkedLoss,
    runtime: &Runtime,
    inputs: &InputSet<'_>,
    params: &ParamSet,
    options: &RunOptions,
) -> Result<LossOutput, Error> {
    let (p, hyper) = pipeline_for(loss, &inputs.names().collect::<Vec<_>>(), params)?;
    Ok(runtime.run(&p, inputs, &hyper, options)?)
}

/// Runs `loss` on device buffers (a CUDA `runtime`), queued on `stream`: the loss, metrics and
/// gradients come back as device buffers and nothing synchronises the stream (see
/// [`crate::runtime::cuda::api`]).
pub fn run_device(
    loss: &dyn ChunkedLoss,
    runtime: &Runtime,
    inputs: &DeviceInputs<'_>,
    params: &ParamSet,
    options: &RunOptions,
    stream: &std::sync::Arc<crate::runtime::cudarc::driver::CudaStream>,
) -> Result<DeviceOutput, Error> {
    let (p, hyper) = pipeline_for(loss, &inputs.names().collect::<Vec<_>>(), params)?;
    Ok(runtime.run_device(&p, inputs, &hyper, options, stream)?)
}

/// Runs `loss` as one rank of a data-parallel group on the CPU executor: `inputs` are this
/// rank's sequences, whole-batch values are combined over `comm`'s ranks, and `dW`/`db` are
/// returned as `share` says (see [`Runtime::run_data_parallel`]).
pub fn run_data_parallel(
    loss: &dyn ChunkedLoss,
    runtime: &Runtime,
    inputs: &InputSet<'_>,
    params: &ParamSet,
    options: &RunOptions,
    comm: &dyn crate::runtime::comm::Communicator,
    share: crate::runtime::comm::GradShare,
) -> Result<LossOutput, Error> {
    let (p, hyper) = ranked_pipeline(loss, inputs, params, comm)?;
    Ok(runtime.run_data_parallel(&p, inputs, &hyper, options, comm, share)?)
}

/// Runs `loss` as one rank of a vocab-parallel group on the CPU executor: `inputs` hold every
/// row and this rank's shard of each head's vocabulary rows, and the Vocab → Row reductions
/// are combined over `comm`'s ranks (see [`Runtime::run_vocab_parallel`]).
pub fn run_vocab_parallel(
    loss: &dyn ChunkedLoss,
    runtime: &Runtime,
    inputs: &InputSet<'_>,
    params: &ParamSet,
    options: &RunOptions,
    comm: &dyn crate::runtime::comm::Communicator,
) -> Result<LossOutput, Error> {
    let (p, hyper) = ranked_pipeline(loss, inputs, params, comm)?;
    Ok(runtime.run_vocab_parallel(&p, inputs, &hyper, options, comm)?)
}

/// [`pipeline_for`] on one rank of a group: a rank whose specialisation fails must still meet
/// the others, so it aborts the group.
fn ranked_pipeline(
    loss: &dyn ChunkedLoss,
    inputs: &InputSet<'_>,
    params: &ParamSet,
    comm: &dyn crate::runtime::comm::Communicator,
) -> Result<(Arc<Pipeline>, BTreeMap<String, f32>), Error> {
    pipeline_for(loss, &inputs.names().collect::<Vec<_>>(), params).inspect_err(|e| {
        comm.abort(&e.to_string());
    })
}
