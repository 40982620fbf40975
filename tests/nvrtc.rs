//! Every built-in loss's generated kernels compile with NVRTC for sm_80 and sm_90 — the first
//! specialisation with every applicable schedule in bf16 and f32, and every specialisation one
//! choice away from it (each variant value, each optional input present and absent) with its
//! first schedule in bf16 — ptxas reports the registers of every kernel, and no kernel spills.
//!
//! NVRTC comes from its PyPI wheel (`scripts/cuda-wheels`, run by `scripts/test`). Without it
//! the test says why and passes, unless `LIGER_REQUIRE_NVRTC=1` (set by CI), which makes a
//! missing NVRTC a failure.

use std::collections::BTreeSet;

use liger::ChunkedLoss;
use liger::ir::emit::{EmitOptions, GemmDType};
use liger::runtime::cuda::{libs, nvrtc};

#[test]
fn every_builtin_kernel_compiles_for_sm80_and_sm90_without_spills() {
    let info = match libs::nvrtc() {
        Ok(i) => i,
        Err(e) => {
            if std::env::var("LIGER_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("NVRTC is required (LIGER_REQUIRE_NVRTC=1) but unavailable: {e}");
            }
            eprintln!("skipping: {e}");
            return;
        }
    };
    eprintln!(
        "NVRTC {}.{} from {:?}",
        info.version.0, info.version.1, info.path
    );
    let mut sources = BTreeSet::new();
    let mut modules = Vec::new();
    for loss in liger::losses::builtin() {
        let specs: Vec<&liger::SpecInfo> = loss
            .specializations()
            .iter()
            .filter(|s| s.ir.is_some())
            .collect();
        let Some(first) = specs.first().copied() else {
            continue;
        };
        // The first specialisation and every one that differs from it in a single choice: each
        // variant value and each optional input's presence once (DPO and GRPO have hundreds of
        // specialisations; every one of them is lowered, verified, differentiated, scheduled and
        // emitted by tests/builtin_ir.rs).
        let one_away = |s: &liger::SpecInfo| {
            s.choices
                .iter()
                .zip(first.choices)
                .filter(|(a, b)| a != b)
                .count()
                <= 1
        };
        for (k, spec) in specs.into_iter().filter(|s| one_away(s)).enumerate() {
            let p = liger::pipeline(loss, spec).expect("pipeline");
            let sched = p.schedule();
            let (strategies, dtypes) = if k == 0 {
                (
                    sched.candidates.clone(),
                    vec![GemmDType::BF16, GemmDType::F32],
                )
            } else {
                (vec![sched.candidates[0]], vec![GemmDType::BF16])
            };
            // Vocab-parallel modules too (every strategy of the first specialisation, bf16).
            let shard_opts = EmitOptions {
                vocab_shards: true,
                ..EmitOptions::new(GemmDType::BF16)
            };
            let variants: Vec<EmitOptions> = dtypes
                .iter()
                .copied()
                .map(EmitOptions::new)
                .chain((k == 0).then_some(shard_opts))
                .collect();
            for s in &strategies {
                for opts in &variants {
                    let dt = opts.gemm_dtype;
                    let m = p.module(*s, opts).expect("emits");
                    if sources.insert(m.source.clone()) {
                        modules.push((
                            format!(
                                "{} [{}] {} {}{}",
                                loss.name(),
                                spec.describe(),
                                s.name(),
                                dt.name(),
                                if opts.vocab_shards { " shards" } else { "" }
                            ),
                            m,
                        ));
                    }
                }
            }
        }
    }
    assert!(
        modules.len() >= 30,
        "only {} distinct modules",
        modules.len()
    );
    let jobs: Vec<(&str, &liger::ir::emit::CudaModule, &str)> = modules
        .iter()
        .flat_map(|(w, m)| ["sm_80", "sm_90"].map(|a| (w.as_str(), m, a)))
        .collect();
    // Two compilations at a time (NVRTC programs are independent).
    let results: Vec<_> = std::thread::scope(|sc| {
        let (a, b) = jobs.split_at(jobs.len() / 2);
        let ha = sc.spawn(|| {
            a.iter()
                .map(|(w, m, arch)| (*w, *m, *arch, nvrtc::compile(&m.source, "liger.cu", arch)))
                .collect::<Vec<_>>()
        });
        let hb = sc.spawn(|| {
            b.iter()
                .map(|(w, m, arch)| (*w, *m, *arch, nvrtc::compile(&m.source, "liger.cu", arch)))
                .collect::<Vec<_>>()
        });
        let mut r = ha.join().expect("compile thread");
        r.extend(hb.join().expect("compile thread"));
        r
    });
    let mut failures = Vec::new();
    let mut compiled = 0;
    for (what, m, arch, result) in results {
        {
            match result {
                Ok(c) => {
                    compiled += 1;
                    assert!(
                        c.cubin.as_ref().is_some_and(|b| !b.is_empty()),
                        "{what}: no CUBIN"
                    );
                    let names: BTreeSet<&str> = c.kernels.iter().map(|k| k.name.as_str()).collect();
                    for k in &m.kernels {
                        assert!(
                            names.contains(k.name.as_str()),
                            "{what} {arch}: no ptxas report for {}",
                            k.name
                        );
                    }
                    let regs: Vec<String> = c
                        .kernels
                        .iter()
                        .map(|k| format!("{}={}", k.name, k.registers))
                        .collect();
                    eprintln!(
                        "{arch} {what}: {:.0} ms; registers {}",
                        c.millis,
                        regs.join(" ")
                    );
                    for k in c.spills() {
                        failures.push(format!(
                            "{what} {arch}: {} spills ({} B stores, {} B loads)",
                            k.name, k.spill_stores, k.spill_loads
                        ));
                    }
                }
                Err(e) => failures.push(format!("{what} {arch}: {e}\n{}", m.source)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("{compiled} compilations, no spills");
}

#[test]
fn ptx_fallback_targets_isa_9_0_or_older() {
    if libs::nvrtc().is_err() {
        assert!(
            std::env::var("LIGER_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
            "NVRTC required"
        );
        return;
    }
    let loss = &liger::losses::Flce;
    let p = liger::pipeline(loss, &loss.specializations()[0]).expect("pipeline");
    let m = p
        .module(
            p.schedule().candidates[0],
            &EmitOptions::new(GemmDType::BF16),
        )
        .expect("emits");
    let c = nvrtc::compile(&m.source, "liger.cu", "compute_90").expect("PTX");
    let ptx = c.ptx.expect("PTX text");
    let version = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .expect(".version line");
    let v: f64 = version.trim().parse().expect("number");
    assert!(
        v <= 9.0,
        "PTX ISA {v} is newer than a CUDA 13.0 driver accepts"
    );
}

#[test]
fn runtime_io_kernels_compile_for_sm80_and_sm90_without_spills() {
    if libs::nvrtc().is_err() {
        assert!(
            std::env::var("LIGER_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
            "NVRTC required"
        );
        return;
    }
    let src = liger::runtime::cuda::engine::IO_SOURCE;
    for arch in ["sm_80", "sm_90"] {
        let c = nvrtc::compile(src, "liger_io.cu", arch).expect("compiles");
        assert!(c.cubin.is_some(), "{arch}: a CUBIN");
        let names: BTreeSet<&str> = c.kernels.iter().map(|k| k.name.as_str()).collect();
        for want in [
            "liger_check_finite_bf16",
            "liger_in_float_f16",
            "liger_in_tokens_i64",
            "liger_in_tokens_i32",
            "liger_in_mask_u8",
            "liger_fetch_i64",
            "liger_cast_bf16",
            "liger_cast_f16",
            "liger_poison",
        ] {
            assert!(
                names.contains(want),
                "{arch}: {want} missing from {names:?}"
            );
        }
        assert!(c.spills().is_empty(), "{arch}: spills {:?}", c.spills());
    }
}
