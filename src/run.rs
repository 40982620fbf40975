//! Running a [`ChunkedLoss`] on an executor: parameters resolved against the loss's table,
//! the specialisation chosen from the variants and the inputs present, its IR differentiated
//! and simplified, then handed to the runtime.

use std::collections::BTreeMap;

use crate::loss::{ChunkedLoss, SpecInfo};
use crate::params::{ParamSet, ResolvedParams};
use crate::{DeviceInputs, DeviceOutput, Error, InputSet, LossOutput, RunOptions, Runtime};

/// The simplified gradient IR of the specialisation `params` and `inputs` select.
pub fn gradient_ir(
    loss: &dyn ChunkedLoss,
    inputs: &InputSet<'_>,
    params: &ParamSet,
) -> Result<(liger_ir::LossFn, BTreeMap<String, f32>), Error> {
    gradient_ir_for(loss, &inputs.names().collect::<Vec<_>>(), params)
}

/// What [`specialise`] returns.
pub(crate) type Specialised = (
    ResolvedParams,
    &'static SpecInfo,
    liger_ir::LossFn,
    liger_ir::LossFn,
);

/// The specialisation `params` and the `given` input names select: the resolved parameters,
/// the specialisation, its surface IR and its simplified gradient IR (shared by the executors and the f64
/// reference path).
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
            return Err(Error::MissingInput {
                loss: loss.name().into(),
                name: p.name.into(),
                kind: p.kind.name(),
            });
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
            return Err(Error::UnknownInput {
                loss: loss.name().into(),
                name: name.into(),
                known: known.join(", "),
            });
        }
    }
    let spec = loss.specialization(&resolved, &contains)?;
    let f = loss.ir(spec)?;
    let g = liger_ir::differentiate(&f).map_err(|diagnostics| Error::InvalidIr {
        loss: loss.name().into(),
        spec: spec.describe(),
        diagnostics,
    })?;
    let g = liger_ir::simplify(&g);
    Ok((resolved, spec, f, g))
}

/// [`gradient_ir`] for inputs given by name.
pub fn gradient_ir_for(
    loss: &dyn ChunkedLoss,
    given: &[&str],
    params: &ParamSet,
) -> Result<(liger_ir::LossFn, BTreeMap<String, f32>), Error> {
    let (resolved, _, _, g) = specialise(loss, given, params)?;
    let hyper = resolved.floats().map(|(k, v)| (k.to_string(), v)).collect();
    Ok((g, hyper))
}

/// Runs `loss` on `runtime`: loss, metrics, gradients of every `Logits` head and a report.
pub fn run(
    loss: &dyn ChunkedLoss,
    runtime: &Runtime,
    inputs: &InputSet<'_>,
    params: &ParamSet,
    options: &RunOptions,
) -> Result<LossOutput, Error> {
    let (g, hyper) = gradient_ir(loss, inputs, params)?;
    runtime.run(&g, inputs, &hyper, options)
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
    let (g, hyper) = gradient_ir_for(loss, &inputs.names().collect::<Vec<_>>(), params)?;
    runtime.run_device(&g, inputs, &hyper, options, stream)
}
