//! GPU tests (run on the GPU machine with `bash .gpu/run.sh`): every built-in loss's generated
//! vocab-stream kernels on random device logits and targets, V = 123, 32003 and 128256,
//! against the CPU executor's row statistics and `dlogits` (fp32: `|a-b| <= 1e-6 + 1e-5 |b|`;
//! bf16: within one bf16 ulp of the correctly rounded CPU value); and a second process start
//! that hits the disk cache without calling NVRTC.
//!
//! Without a GPU every test prints why and passes, unless `LIGER_REQUIRE_GPU=1` (set by
//! `run.sh`), which makes a missing GPU a failure.

mod common;

use liger::runtime::Error as RtError;
use std::collections::BTreeMap;
use std::time::Instant;

use liger::ir::emit::{EmitOptions, GemmDType};
use liger::runtime::cache::{Cache, Mode, Origin};
use liger::runtime::cpu::streams_on_logits;
use liger::runtime::cuda::compile::compile;
use liger::runtime::cuda::device::{Gpu, streams_on_gpu};
use liger::{InputSet, ParamSet, RunOptions, TensorView};

fn gpu_or_skip() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            assert!(
                std::env::var("LIGER_REQUIRE_GPU").map_or(true, |v| v != "1"),
                "a GPU is required (LIGER_REQUIRE_GPU=1): {e}"
            );
            eprintln!("skipping: no GPU: {e}");
            None
        }
    }
}

fn bf16_ulp(x: f32) -> f32 {
    let b = half::bf16::from_f32(x);
    let next = half::bf16::from_bits(b.to_bits().wrapping_add(1)).to_f32();
    (next - b.to_f32()).abs().max(1e-12)
}

fn normal(rng: &mut fastrand::Rng, sd: f32) -> f32 {
    ((0..4).map(|_| rng.f32()).sum::<f32>() - 2.0) * sd * 3f32.sqrt()
}

fn gpu_stream_kernels_match_the_cpu_executor() {
    let Some(gpu) = gpu_or_skip() else { return };
    let arch = gpu.arch().expect("arch");
    eprintln!("device {} ({arch})", gpu.name());
    let root = std::env::temp_dir().join(format!("liger-gpu-kernels-{}", std::process::id()));
    let cache = Cache::open(Some(root.clone()), Mode::ReadWrite);
    let (s, t) = (4usize, 3usize);
    let mut failures = Vec::new();
    let mut checked = 0usize;
    for loss in liger::losses::builtin() {
        let spec = &loss.specializations()[0];
        let resolved = ParamSet::new().resolve(loss).expect("defaults");
        let hyper: BTreeMap<String, f32> =
            resolved.floats().map(|(k, v)| (k.to_string(), v)).collect();
        let p = liger::pipeline(loss, spec).expect("pipeline");
        let g = p.grad().clone();
        for &v in &[123usize, 32003, 128256] {
            let mut rng = fastrand::Rng::with_seed(v as u64);
            let target: Vec<i64> = (0..s * t)
                .map(|i| {
                    if i % t == 2 && i > 3 {
                        -100
                    } else {
                        rng.usize(0..v) as i64
                    }
                })
                .collect();
            let tokens: Vec<i64> = target.iter().map(|&k| k.max(0)).collect();
            let seq: Vec<f32> = (0..s).map(|_| normal(&mut rng, 5.0)).collect();
            let row: Vec<f32> = (0..s * t).map(|_| normal(&mut rng, 1.0)).collect();
            let seq_mask: Vec<bool> = (0..s).map(|i| i % 2 == 0).collect();
            let row_mask: Vec<bool> = (0..s * t).map(|i| i % 3 != 1).collect();
            let vocab: Vec<f32> = (0..v).map(|_| normal(&mut rng, 1.0)).collect();
            let scalar = [0.3f32];
            // Every side input of the specialisation, by kind.
            let mut set = InputSet::new();
            for input in &g.inputs {
                use liger::ir::InputKind as K;
                let n = input.name.as_str();
                set = match input.kind {
                    K::Target => set.tensor(n, TensorView::new(&target, &[s, t]).expect("t")),
                    // Sampled tokens have no ignore value: every id is in range.
                    K::Tokens => set.tensor(n, TensorView::new(&tokens, &[s, t]).expect("t")),
                    K::SeqInput => set.tensor(n, TensorView::new(&seq, &[s]).expect("seq")),
                    K::SeqMask => set.tensor(n, TensorView::new(&seq_mask, &[s]).expect("m")),
                    K::RowInput => set.tensor(n, TensorView::new(&row, &[s, t]).expect("row")),
                    K::RowMask => set.tensor(n, TensorView::new(&row_mask, &[s, t]).expect("m")),
                    K::VocabInput => set.tensor(n, TensorView::new(&vocab, &[v]).expect("v")),
                    K::ScalarInput => set.tensor(n, TensorView::new(&scalar[..], &[]).expect("k")),
                    K::Logits | K::Frozen | K::Param => set,
                };
            }
            let mut logits = BTreeMap::new();
            for (k, input) in g.inputs.iter().enumerate() {
                if input.kind.is_head() {
                    logits.insert(
                        liger::ir::InputId(k as u32),
                        (0..s * t * v)
                            .map(|_| normal(&mut rng, 2.0))
                            .collect::<Vec<f32>>(),
                    );
                }
            }
            for &strategy in &p.schedule().candidates {
                for dtype in [GemmDType::BF16, GemmDType::F32] {
                    if dtype == GemmDType::F32 && v != 123 {
                        continue;
                    }
                    let opts = EmitOptions::new(dtype);
                    let k = compile(&p, strategy, &opts, &arch, &cache).expect("compiles");
                    let module = gpu.load(&k.binary).expect("loads");
                    let opts = RunOptions::default();
                    let cpu =
                        streams_on_logits(&p, &set, &hyper, &opts, &logits, (s, t, v), strategy)
                            .expect("cpu streams");
                    let dev = streams_on_gpu(
                        &gpu,
                        &module,
                        &k.module,
                        &p,
                        strategy,
                        dtype,
                        &cpu,
                        &logits,
                        (s, t, v),
                    )
                    .expect("gpu streams");
                    let what = format!("{} {strategy} {} V={v}", loss.name(), dtype.name());
                    for (id, want) in &cpu.rows {
                        let got = &dev.rows[id];
                        for (i, (a, b)) in got.iter().zip(want).enumerate() {
                            if (a - b).abs() > 1e-6 + 1e-5 * b.abs() {
                                failures.push(format!(
                                    "{what}: row value {id}[{i}] = {a} on the GPU, {b} on the CPU"
                                ));
                                break;
                            }
                        }
                        checked += got.len();
                    }
                    assert_eq!(
                        cpu.outs.keys().collect::<Vec<_>>(),
                        dev.outs.keys().collect::<Vec<_>>(),
                        "{what}"
                    );
                    for (h, want) in &cpu.outs {
                        let got = &dev.outs[h];
                        let mut bad = 0usize;
                        let mut first = String::new();
                        for (i, (a, b)) in got.iter().zip(want).enumerate() {
                            let ok = match dtype {
                                GemmDType::F32 => (a - b).abs() <= 1e-6 + 1e-5 * b.abs(),
                                _ => {
                                    let rounded = half::bf16::from_f32(*b).to_f32();
                                    (a - rounded).abs() <= bf16_ulp(rounded)
                                }
                            };
                            if !ok {
                                bad += 1;
                                if first.is_empty() {
                                    first = format!("[{i}] gpu {a} cpu {b}");
                                }
                            }
                        }
                        checked += got.len();
                        if bad > 0 {
                            failures.push(format!(
                                "{what}: {bad} of {} dlogits entries differ, first {first}",
                                got.len()
                            ));
                        }
                    }
                    eprintln!(
                        "ok {what}: {} row values, {} vocab entries",
                        cpu.rows.values().map(Vec::len).sum::<usize>(),
                        cpu.outs.values().map(Vec::len).sum::<usize>()
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 1_000_000, "only {checked} values compared");
}

/// Compiles every built-in loss into the cache at `$LIGER_GPU_CACHE_DIR` (or a temporary
/// directory), loads each module on the GPU and reports where it came from and how long it
/// took. The disk-cache test runs this test twice, as two processes.
fn gpu_cache_fill_and_load() {
    let Some(gpu) = gpu_or_skip() else { return };
    let arch = gpu.arch().expect("arch");
    let root = std::env::var("LIGER_GPU_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::temp_dir().join(format!("liger-gpu-fill-{}", std::process::id()))
        });
    let cache = Cache::open(Some(root), Mode::ReadWrite);
    for loss in liger::losses::builtin() {
        let p = liger::pipeline(loss, &loss.specializations()[0]).expect("pipeline");
        let strategy = p.schedule().candidates[0];
        let opts = EmitOptions::new(GemmDType::BF16);
        let start = Instant::now();
        let k = compile(&p, strategy, &opts, &arch, &cache).expect("compiles");
        let module = gpu.load(&k.binary).expect("loads");
        for kern in &k.module.kernels {
            module.load_function(&kern.name).expect("kernel present");
        }
        let origin = match &k.origin {
            Origin::Memory => "memory",
            Origin::Disk => "disk",
            Origin::Compiled { .. } => "nvrtc",
        };
        println!(
            "CACHE {} {origin} {:.1} ms",
            loss.name(),
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}

fn gpu_second_process_hits_the_disk_cache_without_nvrtc() {
    if gpu_or_skip().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("liger-gpu-second-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let exe = std::env::current_exe().expect("test binary");
    let run = || {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "gpu_cache_fill_and_load",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LIGER_GPU_CACHE_DIR", &dir)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // libtest prints `test name ... ` without a newline before the test's own output.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.find("CACHE ").map(|i| l[i..].to_string()))
            .collect::<Vec<_>>()
    };
    let first = run();
    let second = run();
    eprintln!(
        "cold start:\n{}\nsecond process:\n{}",
        first.join("\n"),
        second.join("\n")
    );
    assert_eq!(first.len(), liger::losses::builtin().len());
    assert!(first.iter().all(|l| l.contains(" nvrtc ")), "{first:?}");
    assert!(
        second.iter().all(|l| l.contains(" disk ")),
        "the second process compiled again: {second:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

struct Case {
    loss: &'static dyn liger::ChunkedLoss,
    params: ParamSet,
    heads: Vec<(&'static str, usize)>,
    seq: Option<&'static str>,
}

fn executor_cases() -> Vec<Case> {
    vec![
        Case {
            loss: &liger::losses::Flce,
            params: ParamSet::new()
                .float("label_smoothing", 0.1)
                .float("z_loss_scale", 1e-3),
            heads: vec![("logits", 1)],
            seq: None,
        },
        Case {
            loss: &liger::losses::Flce,
            params: ParamSet::new()
                .variant("softcap", "true")
                .float("softcap_value", 3.0)
                .variant("reduction", "Sum"),
            heads: vec![("logits", 1)],
            seq: None,
        },
        Case {
            loss: &liger::losses::Jsd,
            params: ParamSet::new().float("beta", 0.3).float("temperature", 1.5),
            heads: vec![("student", 1), ("teacher", 2)],
            seq: None,
        },
        Case {
            loss: &liger::losses::Dpo,
            params: ParamSet::new()
                .float("beta", 0.2)
                .variant("average", "true")
                .variant("nll", "true"),
            heads: vec![("policy", 1), ("reference", 2)],
            seq: None,
        },
        Case {
            loss: &liger::losses::Dpo,
            params: ParamSet::new()
                .float("beta", 0.5)
                .variant("loss_type", "Hinge"),
            heads: vec![("policy", 1)],
            seq: Some("ref_logps"),
        },
    ]
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let n: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let d: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (n / d.max(1e-300)).sqrt()
}

fn compare_outputs(
    what: &str,
    gpu: &liger::LossOutput,
    cpu: &liger::LossOutput,
    bf16: bool,
    failures: &mut Vec<String>,
) {
    // fp32: |a − b| ≤ atol + 1e-4·|b| with atol 1e-5 of the tensor's scale (its largest
    // magnitude, at least 1): a gradient element that cancels to far below the tensor's scale
    // (SppoHard on summed log-probs: max |dW| 718, an element of 0.0126) is held to the
    // rounding of the terms it is summed from, not to its own magnitude.
    let close = |a: f32, b: f32, scale: f32| (a - b).abs() <= 1e-5 * scale + 1e-4 * b.abs();
    let mut pairs: Vec<(String, Vec<f32>, Vec<f32>)> =
        vec![("loss".into(), vec![gpu.loss], vec![cpu.loss])];
    for m in &cpu.metrics {
        let g = gpu
            .metric(&m.name)
            .map(|x| x.values.clone())
            .unwrap_or_default();
        pairs.push((format!("metric {}", m.name), g, m.values.clone()));
    }
    for c in &cpu.grads {
        let Some(g) = gpu.grad(&c.head) else {
            failures.push(format!("{what}: no gradient of {}", c.head));
            continue;
        };
        pairs.push((
            format!("d{}.x", c.head),
            g.x.as_ref().expect("gradient").to_f32(),
            c.x.as_ref().expect("gradient").to_f32(),
        ));
        pairs.push((
            format!("d{}.w", c.head),
            g.w.as_ref().expect("gradient").to_f32(),
            c.w.as_ref().expect("gradient").to_f32(),
        ));
        if let (Some(a), Some(b)) = (&g.b, &c.b) {
            pairs.push((format!("d{}.b", c.head), a.to_f32(), b.to_f32()));
        }
    }
    for (name, a, b) in pairs {
        if a.len() != b.len() {
            failures.push(format!(
                "{what}: {name} has {} values, the CPU {}",
                a.len(),
                b.len()
            ));
            continue;
        }
        if bf16 {
            let e = rel(&a, &b);
            if e > 1e-2 {
                failures.push(format!("{what}: {name} relative error {e:.3e}"));
            }
            continue;
        }
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        if let Some((i, (x, y))) = a
            .iter()
            .zip(&b)
            .enumerate()
            .find(|(_, (x, y))| !close(**x, **y, scale))
        {
            failures.push(format!(
                "{what}: {name}[{i}] = {x} on the GPU, {y} on the CPU"
            ));
        }
    }
}

fn gpu_executor_matches_the_cpu_executor_and_is_deterministic() {
    if gpu_or_skip().is_none() {
        return;
    }
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let cpu = liger::Runtime::cpu();
    let mut failures = Vec::new();
    let mut runs = 0;
    for (s, t, h, v) in [(6usize, 47usize, 31usize, 123usize), (4, 130, 64, 4099)] {
        for (ci, case) in executor_cases().iter().enumerate() {
            for (bias, ignore, bf16) in [
                (false, -100i64, false),
                (true, 42, false),
                (true, -100, true),
            ] {
                let dims = (s, t, h, v);
                let d = case_data(case, dims, bias, ignore, (ci * 10 + v) as u64);
                let sh = shapes(&d, dims);
                let bf: Vec<(Vec<half::bf16>, Vec<half::bf16>)> = if bf16 {
                    d.heads
                        .iter()
                        .map(|x| (to_bf16(&x.2), to_bf16(&x.3)))
                        .collect()
                } else {
                    Vec::new()
                };
                let set = host_inputs(case, &d, &bf, &sh);
                let want = liger::run(
                    case.loss,
                    &cpu,
                    &set,
                    &case.params,
                    &RunOptions {
                        ignore_index: ignore,
                        chunk_memory: 64 << 20,
                        ..RunOptions::default()
                    },
                )
                .expect("cpu");
                let names: Vec<&str> = set.names().collect();
                let (gir, _) = liger::pipeline_for(case.loss, &names, &case.params).expect("IR");
                for strategy in gir.schedule().candidates.clone() {
                    for budget in [(4 << 20) + (200 << 10), 64 << 20] {
                        let opts = RunOptions {
                            ignore_index: ignore,
                            chunk_memory: budget,
                            schedule: Some(strategy),
                            ..RunOptions::default()
                        };
                        let got = match liger::run(case.loss, &rt, &set, &case.params, &opts) {
                            Ok(o) => o,
                            Err(liger::Error::Runtime(liger::runtime::Error::Budget {
                                ..
                            })) if budget < (8 << 20)
                                && matches!(
                                    strategy,
                                    liger::Strategy::GroupAligned | liger::Strategy::Deferred
                                ) =>
                            {
                                continue;
                            }
                            Err(e) => {
                                panic!("{} {strategy} budget {budget}: {e}", case.loss.name())
                            }
                        };
                        let what = format!(
                            "{} {strategy} budget {budget} S{s} T{t} H{h} V{v} bias={bias} ignore={ignore} bf16={bf16}",
                            case.loss.name()
                        );
                        compare_outputs(&what, &got, &want, bf16, &mut failures);
                        // The CPU reference ran the planner's choice: same strategy, same work.
                        if want.report.strategy == strategy
                            && got.report.gemm_flops != want.report.gemm_flops
                        {
                            failures.push(format!(
                                "{what}: GEMM flops {} (cpu {})",
                                got.report.gemm_flops, want.report.gemm_flops
                            ));
                        }
                        match got.report.peak_extra_bytes {
                            Some(p) if p <= budget => {}
                            p => failures.push(format!(
                                "{what}: allocator peak {p:?} B against a budget of {budget} B"
                            )),
                        }
                        if budget == 64 << 20 {
                            let again = liger::run(case.loss, &rt, &set, &case.params, &opts)
                                .expect("gpu again");
                            let bits = |o: &liger::LossOutput| -> Vec<u32> {
                                let mut b = vec![o.loss.to_bits()];
                                for g in &o.grads {
                                    b.extend(
                                        g.x.as_ref()
                                            .expect("gradient")
                                            .to_f32()
                                            .iter()
                                            .chain(&g.w.as_ref().expect("gradient").to_f32())
                                            .map(|x| x.to_bits()),
                                    );
                                }
                                b
                            };
                            if bits(&got) != bits(&again) {
                                failures.push(format!("{what}: two runs differ"));
                            }
                        }
                        eprintln!(
                            "ok {what}: loss {} (cpu {}), {} chunks of {}",
                            got.loss, want.loss, got.report.chunks, got.report.chunk_rows
                        );
                        runs += 1;
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(runs >= 60, "{runs} runs");
}

fn gpu_bad_input_gives_typed_errors() {
    if gpu_or_skip().is_none() {
        return;
    }
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let (s, t, h, v) = (2usize, 5usize, 8usize, 33usize);
    let mut rng = fastrand::Rng::with_seed(5);
    let x: Vec<f32> = (0..s * t * h).map(|_| normal(&mut rng, 1.0)).collect();
    let w: Vec<f32> = (0..v * h).map(|_| normal(&mut rng, 0.3)).collect();
    let mut target: Vec<i64> = (0..s * t).map(|i| (i % v) as i64).collect();
    let run =
        |x: &[f32], target: &[i64], s: usize, loss: &dyn liger::ChunkedLoss, params: &ParamSet| {
            let head = liger::Head::new(
                TensorView::new(x, &[s, t, h]).expect("x"),
                TensorView::new(&w, &[v, h]).expect("w"),
            );
            let mut set =
                InputSet::new().tensor("target", TensorView::new(target, &[s, t]).expect("t"));
            set = if loss.name() == "dpo" {
                set.head("policy", head.clone()).head("reference", head)
            } else {
                set.head("logits", head)
            };
            liger::run(loss, &rt, &set, params, &RunOptions::default())
        };
    target[3] = v as i64;
    assert!(
        matches!(run(&x, &target, s, &liger::losses::Flce, &ParamSet::new()), Err(liger::Error::Runtime(liger::runtime::Error::TargetOutOfRange { value, .. })) if value == v as i64)
    );
    target[3] = 1;
    let mut xn = x.clone();
    xn[7] = f32::NAN;
    assert!(matches!(
        run(&xn, &target, s, &liger::losses::Flce, &ParamSet::new()),
        Err(liger::Error::Runtime(liger::runtime::Error::NonFinite {
            index: 7,
            ..
        }))
    ));
    // A sequence with no valid token under seq_mean: found by the device's group kernel.
    let mut empty = target.clone();
    for e in empty.iter_mut().skip(t) {
        *e = -100;
    }
    let avg = ParamSet::new().variant("average", "true");
    match run(&x, &empty, s, &liger::losses::Dpo, &avg) {
        Err(liger::Error::Runtime(liger::runtime::Error::EmptySequence { seq: 1 })) => {}
        other => panic!("{other:?}"),
    }
    let x3: Vec<f32> = (0..3 * t * h).map(|_| normal(&mut rng, 1.0)).collect();
    let t3: Vec<i64> = (0..3 * t).map(|i| (i % v) as i64).collect();
    assert!(matches!(
        run(&x3, &t3, 3, &liger::losses::Dpo, &ParamSet::new()),
        Err(liger::Error::Runtime(
            liger::runtime::Error::OddSequenceCount { num_seqs: 3 }
        ))
    ));
}

fn gpu_dpo_16k_tokens_stays_within_a_2gib_budget() {
    if gpu_or_skip().is_none() {
        return;
    }
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let (s, t, h, v) = (2usize, 16384usize, 4096usize, 128256usize);
    let mut rng = fastrand::Rng::with_seed(9);
    let mk = |n: usize, sd: f32, rng: &mut fastrand::Rng| -> Vec<half::bf16> {
        (0..n)
            .map(|_| half::bf16::from_f32((rng.f32() - 0.5) * sd))
            .collect()
    };
    let x = mk(s * t * h, 3.0, &mut rng);
    let w = mk(v * h, 0.05, &mut rng);
    let target: Vec<i64> = (0..s * t)
        .map(|i| {
            if i % t < 512 {
                -100
            } else {
                ((i * 7919) % v) as i64
            }
        })
        .collect();
    let head = || {
        liger::Head::new(
            TensorView::new(&x, &[s, t, h]).expect("x"),
            TensorView::new(&w, &[v, h]).expect("w"),
        )
    };
    let set = InputSet::new()
        .head("policy", head())
        .head("reference", head())
        .tensor("target", TensorView::new(&target, &[s, t]).expect("t"));
    let budget = 2usize << 30;
    let out = liger::run(
        &liger::losses::Dpo,
        &rt,
        &set,
        &ParamSet::new(),
        &RunOptions {
            chunk_memory: budget,
            ..RunOptions::default()
        },
    )
    .expect("runs");
    let peak = out.report.peak_extra_bytes.expect("measured");
    eprintln!(
        "dpo 1 pair x 16384: {} in {} chunks, peak extra {} B (allocator), budget {budget} B, {:.1} ms",
        out.report.strategy,
        out.report.chunks,
        peak,
        out.report.device_ms.unwrap_or(0.0)
    );
    assert!(
        peak <= budget,
        "peak extra memory {peak} B exceeds the budget {budget} B"
    );
    assert!(out.loss.is_finite());
    let gw = out.grads[0].w.as_ref().expect("grad W");
    assert_eq!(gw.len(), v * h);
    assert_eq!(gw.dtype(), liger::DType::F32, "grad W is returned in fp32");
}

/// A CUDA runtime and a stream of our own on it (None, after saying why, without a GPU).
fn runtime_and_stream() -> Option<(
    liger::Runtime,
    std::sync::Arc<liger::runtime::cudarc::driver::CudaStream>,
)> {
    gpu_or_skip()?;
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let st = rt
        .cuda_context()
        .expect("context")
        .new_stream()
        .expect("a stream of our own");
    Some((rt, st))
}

/// One head's host data: name, hidden size, x, W, optional bias.
type HeadData = (&'static str, usize, Vec<f32>, Vec<f32>, Option<Vec<f32>>);

/// Host data of one executor case: per head `(name, h, x, w, b)`, targets, the seq input.
struct CaseData {
    heads: Vec<HeadData>,
    target: Vec<i64>,
    seq: Vec<f32>,
}

fn case_data(
    case: &Case,
    (s, t, h, v): (usize, usize, usize, usize),
    bias: bool,
    ignore: i64,
    seed: u64,
) -> CaseData {
    let mut rng = fastrand::Rng::with_seed(seed);
    let heads = case
        .heads
        .iter()
        .map(|(name, mult)| {
            let hh = h * mult;
            let x = (0..s * t * hh).map(|_| normal(&mut rng, 1.0)).collect();
            let w = (0..v * hh)
                .map(|_| normal(&mut rng, 1.5 / (hh as f32).sqrt()))
                .collect();
            let b = bias.then(|| (0..v).map(|_| normal(&mut rng, 0.3)).collect());
            (*name, hh, x, w, b)
        })
        .collect();
    let target = (0..s * t)
        .map(|i| {
            if i % t > 0 && rng.f32() < 0.3 {
                ignore
            } else {
                loop {
                    let k = rng.usize(0..v) as i64;
                    if k != ignore {
                        break k;
                    }
                }
            }
        })
        .collect();
    let seq = (0..s).map(|_| normal(&mut rng, 5.0)).collect();
    CaseData { heads, target, seq }
}

fn to_bf16(x: &[f32]) -> Vec<half::bf16> {
    x.iter().map(|&a| half::bf16::from_f32(a)).collect()
}

/// Device copies of a case's inputs on `st` (x and W in bf16 when `bf16`; i32 targets when
/// `i32_target`; the bias and the seq input in bf16 when `bf16`).
struct DeviceData {
    x: Vec<liger::runtime::DeviceGrad>,
    w: Vec<liger::runtime::DeviceGrad>,
    b: Vec<Option<liger::runtime::DeviceGrad>>,
    t64: Option<cudarc_slice::I64>,
    t32: Option<cudarc_slice::I32>,
    seq: liger::runtime::DeviceGrad,
}

mod cudarc_slice {
    pub type I64 = liger::runtime::cudarc::driver::CudaSlice<i64>;
    pub type I32 = liger::runtime::cudarc::driver::CudaSlice<i32>;
}

fn upload_float(
    st: &std::sync::Arc<liger::runtime::cudarc::driver::CudaStream>,
    x: &[f32],
    bf16: bool,
) -> liger::runtime::DeviceGrad {
    if bf16 {
        liger::runtime::DeviceGrad::BF16(st.clone_htod(&to_bf16(x)).expect("upload"))
    } else {
        liger::runtime::DeviceGrad::F32(st.clone_htod(x).expect("upload"))
    }
}

fn device_data(
    st: &std::sync::Arc<liger::runtime::cudarc::driver::CudaStream>,
    d: &CaseData,
    bf16: bool,
    i32_target: bool,
) -> DeviceData {
    DeviceData {
        x: d.heads
            .iter()
            .map(|h| upload_float(st, &h.2, bf16))
            .collect(),
        w: d.heads
            .iter()
            .map(|h| upload_float(st, &h.3, bf16))
            .collect(),
        b: d.heads
            .iter()
            .map(|h| h.4.as_ref().map(|b| upload_float(st, b, bf16)))
            .collect(),
        t64: (!i32_target).then(|| st.clone_htod(&d.target).expect("t")),
        t32: i32_target.then(|| {
            let t: Vec<i32> = d.target.iter().map(|&x| x as i32).collect();
            st.clone_htod(&t).expect("t")
        }),
        seq: upload_float(st, &d.seq, bf16),
    }
}

fn dev_tensor<'a>(
    g: &'a liger::runtime::DeviceGrad,
    shape: &'a [usize],
) -> liger::DeviceTensor<'a> {
    use liger::runtime::DeviceGrad as G;
    match g {
        G::F32(x) => liger::DeviceTensor::new(x, shape),
        G::BF16(x) => liger::DeviceTensor::new(x, shape),
        G::F16(x) => liger::DeviceTensor::new(x, shape),
    }
    .expect("shape")
}

/// Shapes of a case's device inputs, kept alive for the tensors that borrow them.
struct Shapes {
    x: Vec<[usize; 3]>,
    w: Vec<[usize; 2]>,
    v: [usize; 1],
    st: [usize; 2],
    s: [usize; 1],
}

fn shapes(d: &CaseData, (s, t, _h, v): (usize, usize, usize, usize)) -> Shapes {
    Shapes {
        x: d.heads.iter().map(|h| [s, t, h.1]).collect(),
        w: d.heads.iter().map(|h| [v, h.1]).collect(),
        v: [v],
        st: [s, t],
        s: [s],
    }
}

fn device_inputs<'a>(case: &Case, dd: &'a DeviceData, sh: &'a Shapes) -> liger::DeviceInputs<'a> {
    let mut set = liger::DeviceInputs::new();
    for (k, (name, _)) in case.heads.iter().enumerate() {
        set = set.head(
            name,
            liger::DeviceHead {
                x: dev_tensor(&dd.x[k], &sh.x[k]),
                w: dev_tensor(&dd.w[k], &sh.w[k]),
                b: dd.b[k].as_ref().map(|b| dev_tensor(b, &sh.v)),
            },
        );
    }
    let target = match (&dd.t64, &dd.t32) {
        (Some(t), _) => liger::DeviceTensor::new(t, &sh.st),
        (_, Some(t)) => liger::DeviceTensor::new(t, &sh.st),
        _ => unreachable!("a target"),
    }
    .expect("target");
    set = set.tensor("target", target);
    if let Some(n) = case.seq {
        set = set.tensor(n, dev_tensor(&dd.seq, &sh.s));
    }
    set
}

fn host_inputs<'a>(
    case: &Case,
    d: &'a CaseData,
    bf: &'a [(Vec<half::bf16>, Vec<half::bf16>)],
    sh: &'a Shapes,
) -> InputSet<'a> {
    let mut set = InputSet::new();
    for (k, (name, _, x, w, b)) in d.heads.iter().enumerate() {
        let (x, w) = if bf.is_empty() {
            (
                TensorView::new(x, &sh.x[k]).expect("x"),
                TensorView::new(w, &sh.w[k]).expect("w"),
            )
        } else {
            (
                TensorView::new(&bf[k].0, &sh.x[k]).expect("x"),
                TensorView::new(&bf[k].1, &sh.w[k]).expect("w"),
            )
        };
        set = set.head(
            name,
            match b {
                Some(b) => liger::Head::with_bias(x, w, TensorView::new(b, &sh.v).expect("b")),
                None => liger::Head::new(x, w),
            },
        );
    }
    set = set.tensor("target", TensorView::new(&d.target, &sh.st).expect("t"));
    if let Some(n) = case.seq {
        set = set.tensor(n, TensorView::new(&d.seq, &sh.s).expect("seq"));
    }
    set
}

fn gpu_device_api_matches_the_host_api_and_the_cpu_with_gradient_dtypes() {
    let Some((rt, st)) = runtime_and_stream() else {
        return;
    };
    use liger::DType::{BF16, F16, F32};
    let cpu = liger::Runtime::cpu();
    let mut failures = Vec::new();
    let mut runs = 0;
    for dims in [(6usize, 47usize, 31usize, 123usize), (4, 130, 64, 4099)] {
        for (ci, case) in executor_cases().iter().enumerate() {
            for (bias, ignore, bf16, gd) in [
                (false, -100i64, false, liger::GradDTypes::default()),
                (
                    true,
                    42,
                    false,
                    liger::GradDTypes {
                        x: BF16,
                        w: F32,
                        b: F16,
                    },
                ),
                (true, -100, true, liger::GradDTypes::all(BF16)),
            ] {
                let d = case_data(case, dims, bias, ignore, (ci * 10 + dims.3) as u64);
                let sh = shapes(&d, dims);
                // The bf16 host inputs hold the values the device gets; the bias and the seq
                // input are rounded to bf16 on the host too, so all three runs see one batch.
                let mut d = d;
                if bf16 {
                    for hd in &mut d.heads {
                        if let Some(b) = &mut hd.4 {
                            *b = to_bf16(b).iter().map(|v| v.to_f32()).collect();
                        }
                    }
                    d.seq = to_bf16(&d.seq).iter().map(|v| v.to_f32()).collect();
                }
                let bf: Vec<(Vec<half::bf16>, Vec<half::bf16>)> = if bf16 {
                    d.heads
                        .iter()
                        .map(|h| (to_bf16(&h.2), to_bf16(&h.3)))
                        .collect()
                } else {
                    Vec::new()
                };
                let dd = device_data(&st, &d, bf16, ignore == 42);
                let host_set = host_inputs(case, &d, &bf, &sh);
                let dev_set = device_inputs(case, &dd, &sh);
                let base = RunOptions {
                    ignore_index: ignore,
                    chunk_memory: 64 << 20,
                    ..RunOptions::default()
                };
                let opts = RunOptions {
                    grad_dtypes: gd,
                    ..base
                };
                let what = format!(
                    "{} {dims:?} bias={bias} ignore={ignore} bf16={bf16} grads {:?}/{:?}/{:?}",
                    case.loss.name(),
                    gd.x,
                    gd.w,
                    gd.b
                );
                let want =
                    liger::run(case.loss, &cpu, &host_set, &case.params, &base).expect("cpu");
                let host =
                    liger::run(case.loss, &rt, &host_set, &case.params, &base).expect("host");
                let out = liger::run_device(case.loss, &rt, &dev_set, &case.params, &opts, &st)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let got = out.to_host().unwrap_or_else(|e| panic!("{what}: {e}"));
                // Against the CPU executor (f32 view of the gradients; a bf16/f16 gradient is
                // compared by relative norm).
                let widened = liger::LossOutput {
                    grads: got
                        .grads
                        .iter()
                        .map(|g| liger::HeadGrads {
                            head: g.head.clone(),
                            x: g.x.as_ref().map(|x| liger::GradBuf::F32(x.to_f32())),
                            w: g.w.as_ref().map(|w| liger::GradBuf::F32(w.to_f32())),
                            b: g.b.as_ref().map(|b| liger::GradBuf::F32(b.to_f32())),
                        })
                        .collect(),
                    ..got.clone()
                };
                let rounded = gd != liger::GradDTypes::default();
                compare_outputs(&what, &widened, &want, bf16 || rounded, &mut failures);
                // Against the host API on the same GPU: the same work, so the same bits (the
                // gradients rounded once from the host API's f32 values).
                if got.loss.to_bits() != host.loss.to_bits() {
                    failures.push(format!(
                        "{what}: loss {} vs host API {}",
                        got.loss, host.loss
                    ));
                }
                for (g, hg) in got.grads.iter().zip(&host.grads) {
                    let round = |h: &Option<liger::GradBuf>, d| {
                        h.as_ref().map(|h| liger::GradBuf::from_f32(h.to_f32(), d))
                    };
                    let same = g.x == round(&hg.x, gd.x)
                        && g.w == round(&hg.w, gd.w)
                        && g.b == round(&hg.b, gd.b);
                    if !same {
                        failures.push(format!(
                            "{what}: {} gradients differ from the host API",
                            g.head
                        ));
                    }
                    let dt = |g: &Option<liger::GradBuf>| g.as_ref().map(liger::GradBuf::dtype);
                    if dt(&g.x) != Some(gd.x) || dt(&g.w) != Some(gd.w) {
                        failures.push(format!(
                            "{what}: gradient dtypes {:?}",
                            (dt(&g.x), dt(&g.w))
                        ));
                    }
                }
                if got.report.strategy != host.report.strategy
                    || got.report.chunk_rows != host.report.chunk_rows
                {
                    failures.push(format!("{what}: planned differently from the host API"));
                }
                runs += 1;
            }
        }
    }
    eprintln!("{runs} device-API runs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(runs >= 30, "{runs} runs");
}

/// Gradients written into the caller's buffers (`DeviceInputs::grad_into`, what the PyTorch
/// door does with tensors from its allocator): an f32 buffer is the accumulator itself, bf16
/// and f16 buffers get the rounded values; each holds exactly what the host API returns in
/// that dtype, garbage left in it beforehand is overwritten, and the buffers outlive the run.
/// The loss copied into a caller's buffer has the same bits. Bad targets are typed errors.
fn gpu_device_api_writes_gradients_into_caller_buffers() {
    let Some((rt, st)) = runtime_and_stream() else {
        return;
    };
    use liger::DType::{BF16, F16, F32};
    use liger::runtime::cudarc::driver::{CudaSlice, DevicePtr};
    let ctx = rt.cuda_context().expect("context").clone();
    let case = &executor_cases()[0];
    let dims = (3usize, 47usize, 31usize, 123usize);
    let (s, t, h, v) = dims;
    let d = case_data(case, dims, true, -100, 5);
    let sh = shapes(&d, dims);
    let dd = device_data(&st, &d, false, false);
    // Garbage in every target: the run must overwrite all of it.
    let gx: CudaSlice<half::bf16> = st
        .clone_htod(&vec![half::bf16::from_f32(7.0); s * t * h])
        .expect("x target");
    let gw: CudaSlice<f32> = st.clone_htod(&vec![7.0f32; v * h]).expect("w target");
    let gb: CudaSlice<half::f16> = st
        .clone_htod(&vec![half::f16::from_f32(7.0); v])
        .expect("b target");
    let ptr = |p: u64, bytes: usize| {
        // SAFETY: `p` is the address of a live allocation above of `bytes` bytes in `ctx`,
        // alive until the end of this test, past every queued use.
        unsafe { liger::ForeignBuffer::new(&ctx, p, bytes) }
    };
    let (px, _g1) = gx.device_ptr(&st);
    let (pw, _g2) = gw.device_ptr(&st);
    let (pb, _g3) = gb.device_ptr(&st);
    let (fx, fw, fb) = (ptr(px, s * t * h * 2), ptr(pw, v * h * 4), ptr(pb, v * 2));
    let opts = RunOptions {
        chunk_memory: 64 << 20,
        ..RunOptions::default()
    };
    let set = device_inputs(case, &dd, &sh)
        .grad_into("logits", liger::GradPart::X, &fx, BF16)
        .grad_into("logits", liger::GradPart::W, &fw, F32)
        .grad_into("logits", liger::GradPart::B, &fb, F16);
    let out =
        liger::run_device(case.loss, &rt, &set, &case.params, &opts, &st).expect("device run");
    let loss_buf: CudaSlice<f32> = st.alloc_zeros(1).expect("loss buffer");
    let (pl, _g4) = loss_buf.device_ptr(&st);
    out.copy_into("loss", &ptr(pl, 4)).expect("loss copied");
    let g = out.grad("logits").expect("the head's gradients");
    assert!(
        g.x.is_none() && g.w.is_none() && g.b.is_none(),
        "gradients written into the caller's buffers are not returned too"
    );
    assert_eq!(out.check().expect("checks pass"), Vec::<String>::new());
    let loss = out.loss().map(|l| st.clone_dtoh(&l).expect("loss")[0]);
    drop(out);
    // The host API with the same dtypes gives the same bits.
    let host = liger::run(
        case.loss,
        &rt,
        &host_inputs(case, &d, &[], &sh),
        &case.params,
        &RunOptions {
            grad_dtypes: liger::GradDTypes {
                x: BF16,
                w: F32,
                b: F16,
            },
            ..opts
        },
    )
    .expect("host run");
    let hg = &host.grads[0];
    let x_got = liger::GradBuf::BF16(st.clone_dtoh(&gx).expect("x"));
    let w_got = liger::GradBuf::F32(st.clone_dtoh(&gw).expect("w"));
    let b_got = liger::GradBuf::F16(st.clone_dtoh(&gb).expect("b"));
    assert_eq!(
        Some(&x_got),
        hg.x.as_ref(),
        "grad x (bf16) differs from the host API"
    );
    assert_eq!(
        Some(&w_got),
        hg.w.as_ref(),
        "grad W (f32, accumulated in place) differs"
    );
    assert_eq!(Some(&b_got), hg.b.as_ref(), "grad b (f16) differs");
    let copied = st.clone_dtoh(&loss_buf).expect("loss")[0];
    assert_eq!(Some(copied.to_bits()), loss.map(f32::to_bits));
    assert_eq!(copied.to_bits(), host.loss.to_bits());

    // Bad targets and copies: typed errors before anything is queued.
    let run = |set: liger::DeviceInputs<'_>, o: &RunOptions| {
        liger::run_device(case.loss, &rt, &set, &case.params, o, &st).map(|_| ())
    };
    let target_err = |r: Result<(), liger::Error>, what: &str, why: &str| match r {
        Err(liger::Error::Runtime(RtError::Target { target, why: w })) => {
            assert_eq!(target, what);
            assert!(w.contains(why), "{what}: `{w}` should say `{why}`");
        }
        other => panic!("{what}: expected a Target error, got {other:?}"),
    };
    let short = ptr(pw, v * h * 4 - 4);
    target_err(
        run(
            device_inputs(case, &dd, &sh).grad_into("logits", liger::GradPart::W, &short, F32),
            &opts,
        ),
        "grad.logits.w",
        "holds",
    );
    target_err(
        run(
            device_inputs(case, &dd, &sh).grad_into("policy", liger::GradPart::W, &fw, F32),
            &opts,
        ),
        "grad.policy.w",
        "no head `policy`",
    );
    let no_x = RunOptions {
        grads: liger::Wanted::parse("w,b").expect("grads"),
        ..opts
    };
    target_err(
        run(
            device_inputs(case, &dd, &sh).grad_into("logits", liger::GradPart::X, &fx, BF16),
            &no_x,
        ),
        "grad.logits.x",
        "does not compute",
    );
    target_err(
        run(
            device_inputs(case, &dd, &sh).grad_into(
                "logits",
                liger::GradPart::W,
                &fw,
                liger::DType::I64,
            ),
            &opts,
        ),
        "grad.logits.w",
        "f32, bf16 or f16",
    );
    let out = liger::run_device(
        case.loss,
        &rt,
        &device_inputs(case, &dd, &sh),
        &case.params,
        &opts,
        &st,
    )
    .expect("run");
    for (name, buf) in [("metric.nope", ptr(pl, 4)), ("loss", ptr(pw, 8))] {
        match out.copy_into(name, &buf) {
            Err(RtError::Target { target, .. }) => assert_eq!(target, name),
            other => panic!("{name}: expected a Target error, got {other:?}"),
        }
    }
    out.check().expect("checks");
}

/// `WAccum::Output`: a bf16 `grad W` accumulated in bf16 across five gradient stages (the
/// dW GEMMs add into it and round, as Liger Kernel does) stays within a few bf16 roundings of
/// the f32-accumulated one, costs no f32 working copy (the plan's estimate is smaller by
/// exactly `V·H·4` bytes), and is the same bits through the host API, the device API and a
/// caller's bf16 buffer accumulated in place.
fn gpu_grad_w_accumulated_in_its_dtype() {
    let Some((rt, st)) = runtime_and_stream() else {
        return;
    };
    use liger::DType::BF16;
    use liger::runtime::cudarc::driver::{CudaSlice, DevicePtr};
    let case = &executor_cases()[0];
    let dims = (4usize, 130usize, 64usize, 4099usize);
    let (_, _, h, v) = dims;
    let d = case_data(case, dims, false, -100, 11);
    let sh = shapes(&d, dims);
    let bf: Vec<(Vec<half::bf16>, Vec<half::bf16>)> = d
        .heads
        .iter()
        .map(|hd| (to_bf16(&hd.2), to_bf16(&hd.3)))
        .collect();
    let host_set = host_inputs(case, &d, &bf, &sh);
    let base = RunOptions {
        chunk_memory: 256 << 20,
        grad_dtypes: liger::GradDTypes::all(BF16),
        rows: Some(liger::ForcedRows {
            chunk: 64,
            stage: Some(128),
        }),
        // The device API runs every row: so does the host API here, for the same stages.
        skip_dead_rows: false,
        ..RunOptions::default()
    };
    let f32_acc = liger::run(case.loss, &rt, &host_set, &case.params, &base).expect("f32");
    let opts = RunOptions {
        w_accum: liger::WAccum::Output,
        ..base
    };
    let out_acc = liger::run(case.loss, &rt, &host_set, &case.params, &opts).expect("output");
    assert_eq!(out_acc.report.stage_rows, 128);
    assert_eq!(
        f32_acc.report.estimate - out_acc.report.estimate,
        v * h * 4,
        "the f32 copy of grad W is not needed"
    );
    assert_eq!(out_acc.loss.to_bits(), f32_acc.loss.to_bits());
    let (gw_out, gw_f32) = (
        out_acc.grads[0].w.as_ref().expect("w"),
        f32_acc.grads[0].w.as_ref().expect("w"),
    );
    assert_eq!(gw_out.dtype(), BF16);
    let r = rel(&gw_out.to_f32(), &gw_f32.to_f32());
    assert!(
        r < 3.0 * 2f64.powi(-8),
        "bf16 accumulation over 5 stages: relative difference {r:.3e}"
    );
    assert_eq!(
        out_acc.grads[0].x, f32_acc.grads[0].x,
        "dx does not depend on it"
    );
    // The device API, returned and into a caller's bf16 buffer: the same bits.
    let dd = device_data(&st, &d, true, false);
    let dev = liger::run_device(
        case.loss,
        &rt,
        &device_inputs(case, &dd, &sh),
        &case.params,
        &opts,
        &st,
    )
    .expect("device")
    .to_host()
    .expect("host copy");
    assert_eq!(dev.grads[0].w.as_ref(), Some(gw_out));
    let target: CudaSlice<half::bf16> = st
        .clone_htod(&vec![half::bf16::from_f32(3.0); v * h])
        .expect("target");
    let (p, _g) = target.device_ptr(&st);
    let ctx = rt.cuda_context().expect("context").clone();
    // SAFETY: `target` is a live allocation of v·h bf16 in `ctx`, alive past every use.
    let fw = unsafe { liger::ForeignBuffer::new(&ctx, p, v * h * 2) };
    let out = liger::run_device(
        case.loss,
        &rt,
        &device_inputs(case, &dd, &sh).grad_into("logits", liger::GradPart::W, &fw, BF16),
        &case.params,
        &opts,
        &st,
    )
    .expect("into a caller's buffer");
    out.check().expect("checks");
    drop(out);
    let got = liger::GradBuf::BF16(st.clone_dtoh(&target).expect("w"));
    assert_eq!(&got, gw_out, "accumulated in the caller's bf16 buffer");
}

/// Measures host time against a spinning kernel: run it apart from other GPU tests (their
/// work on the same GPU can hold the call past the spin: `LIGER_GPU_SKIP=queues`).
fn gpu_device_api_queues_on_the_callers_stream_without_synchronising() {
    if gpu_or_skip().is_none() {
        return;
    }
    use liger::runtime::cudarc::driver::{LaunchConfig, PushKernelArg};
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let ctx = rt.cuda_context().expect("context").clone();
    let st = ctx.new_stream().expect("stream");
    // A kernel that keeps the stream busy for `ns` nanoseconds of the global timer.
    let src = r#"extern "C" __global__ void spin(unsigned long long ns) {
        unsigned long long t0, t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
        do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
    }"#;
    let arch = Gpu::new(0).expect("gpu").arch().expect("arch");
    let c = liger::runtime::cuda::nvrtc::compile(src, "spin.cu", &arch).expect("nvrtc");
    let module = ctx
        .load_module(liger::runtime::cudarc::nvrtc::Ptx::from_binary(
            c.cubin.expect("cubin"),
        ))
        .expect("load");
    let spin = module.load_function("spin").expect("spin");
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    let cases = executor_cases();
    let runs = cases
        .iter()
        .enumerate()
        .map(|(ci, c)| (ci, c, (4usize, 64usize, 64usize, 4099usize)))
        // A longer batch too: row arrays of 32 KiB, dozens of chunks.
        .chain(std::iter::once((3, &cases[3], (2, 4096, 64, 4099))));
    for (ci, case, dims) in runs {
        let d = case_data(case, dims, ci % 2 == 0, -100, 77 + ci as u64);
        let sh = shapes(&d, dims);
        let dd = device_data(&st, &d, true, false);
        let set = device_inputs(case, &dd, &sh);
        let opts = RunOptions {
            chunk_memory: 16 << 20,
            ..RunOptions::default()
        };
        // Warm: kernels compiled and loaded, the stream's cuBLAS handle made.
        let warm = liger::run_device(case.loss, &rt, &set, &case.params, &opts, &st).expect("warm");
        let warm = warm.to_host().expect("warm result");
        let ns = 400_000_000u64;
        let mut b = st.launch_builder(&spin);
        b.arg(&ns);
        // SAFETY: `spin` takes one u64 and touches no memory.
        unsafe { b.launch(one) }.expect("spin");
        let t0 = Instant::now();
        let out =
            liger::run_device(case.loss, &rt, &set, &case.params, &opts, &st).expect("queued");
        let queued = t0.elapsed();
        let after = st.record_event(None).expect("event");
        let busy = !after.is_complete();
        let other = ctx.new_stream().expect("another stream");
        let free = other.record_event(None).expect("event");
        other.synchronize().expect("other stream");
        eprintln!(
            "{}: queued in {:.2} ms while the stream was busy: {busy}; {} chunks",
            case.loss.name(),
            queued.as_secs_f64() * 1e3,
            out.report().chunks
        );
        assert!(
            busy,
            "{}: the call waited for the caller's stream",
            case.loss.name()
        );
        assert!(
            queued.as_millis() < 300,
            "{}: queueing took {queued:?}",
            case.loss.name()
        );
        assert!(free.is_complete(), "another stream is not held up by ours");
        let got = out.to_host().expect("result");
        assert_eq!(
            got.loss.to_bits(),
            warm.loss.to_bits(),
            "{}",
            case.loss.name()
        );
        assert_eq!(got.grads, warm.grads, "{}", case.loss.name());
        assert!(out.device_ms().expect("events") > 0.0);
    }
}

fn gpu_device_api_bad_input_gives_typed_errors() {
    let Some((rt, st)) = runtime_and_stream() else {
        return;
    };
    use liger::Error;
    let cases = executor_cases();
    let (flce, dpo_hinge) = (&cases[0], &cases[4]);
    let dims = (2usize, 5usize, 8usize, 33usize);
    let opts = RunOptions::default();
    let run =
        |case: &Case, d: &CaseData, bf16: bool, i32t: bool| -> Result<liger::LossOutput, Error> {
            let sh = shapes(d, dims);
            let dd = device_data(&st, d, bf16, i32t);
            let set = device_inputs(case, &dd, &sh);
            let out = liger::run_device(case.loss, &rt, &set, &case.params, &opts, &st)?;
            match out.check() {
                Ok(_) => Ok(out.to_host()?),
                Err(e) => {
                    // The loss is poisoned too.
                    let loss = st.clone_dtoh(&out.loss().expect("loss")).expect("read");
                    assert!(
                        loss[0].is_nan(),
                        "a failed check leaves the loss NaN, got {}",
                        loss[0]
                    );
                    Err(e.into())
                }
            }
        };
    let ok = case_data(flce, dims, true, -100, 3);
    run(flce, &ok, false, false).expect("valid inputs");
    let mut d = case_data(flce, dims, true, -100, 3);
    d.target[7] = 33;
    match run(flce, &d, false, false) {
        Err(Error::Runtime(RtError::TargetOutOfRange {
            seq: 1,
            pos: 2,
            value: 33,
            vocab: 33,
            ..
        })) => {}
        other => panic!("target 33: {other:?}"),
    }
    d.target[7] = -5;
    match run(flce, &d, true, true) {
        Err(Error::Runtime(RtError::TargetOutOfRange {
            seq: 1,
            pos: 2,
            value: -5,
            ..
        })) => {}
        other => panic!("i32 target -5: {other:?}"),
    }
    let mut d = case_data(flce, dims, true, -100, 3);
    d.heads[0].2[7] = f32::NAN;
    match run(flce, &d, false, false) {
        Err(Error::Runtime(RtError::NonFinite {
            input, index: 7, ..
        })) if input == "logits.x" => {}
        other => panic!("NaN x: {other:?}"),
    }
    let mut d = case_data(flce, dims, true, -100, 3);
    d.heads[0].3[11] = f32::INFINITY;
    match run(flce, &d, true, false) {
        Err(Error::Runtime(RtError::NonFinite {
            input,
            index: 11,
            value,
        })) if input == "logits.w" && value == f64::INFINITY => {}
        other => panic!("inf w (bf16): {other:?}"),
    }
    let mut d = case_data(flce, dims, true, -100, 3);
    if let Some(b) = &mut d.heads[0].4 {
        b[4] = f32::NEG_INFINITY;
    }
    match run(flce, &d, false, false) {
        Err(Error::Runtime(RtError::NonFinite {
            input, index: 4, ..
        })) if input == "logits.b" => {}
        other => panic!("-inf bias: {other:?}"),
    }
    let mut d = case_data(dpo_hinge, dims, false, -100, 4);
    d.seq[1] = f32::NAN;
    match run(dpo_hinge, &d, false, false) {
        Err(Error::Runtime(RtError::NonFinite {
            input, index: 1, ..
        })) if input == "ref_logps" => {}
        other => panic!("NaN ref_logps: {other:?}"),
    }
    // A sequence with no valid token under `average`: found by the group kernel, and the loss
    // is poisoned too (checked inside `run`).
    let dpo_avg = &cases[3];
    let mut d = case_data(dpo_avg, dims, false, -100, 5);
    for e in d.target.iter_mut().skip(dims.1).take(dims.1) {
        *e = -100;
    }
    match run(dpo_avg, &d, false, false) {
        Err(Error::Runtime(RtError::EmptySequence { seq: 1 })) => {}
        other => panic!("empty sequence: {other:?}"),
    }
    // Host-side checks: shapes, dtypes, kinds, the context.
    let d = case_data(flce, dims, false, -100, 3);
    let sh = shapes(&d, dims);
    let dd = device_data(&st, &d, false, false);
    let t64 = dd.t64.as_ref().expect("i64 targets");
    assert!(matches!(
        liger::DeviceTensor::new(t64, &[3, 5]),
        Err(RtError::ViewShape { .. })
    ));
    let x = dev_tensor(&dd.x[0], &sh.x[0]);
    let wbf: liger::runtime::cudarc::driver::CudaSlice<half::bf16> =
        st.clone_htod(&to_bf16(&d.heads[0].3)).expect("w");
    let mixed = liger::DeviceInputs::new()
        .head(
            "logits",
            liger::DeviceHead {
                x,
                w: liger::DeviceTensor::new(&wbf, &sh.w[0]).expect("w"),
                b: None,
            },
        )
        .tensor("target", liger::DeviceTensor::new(t64, &sh.st).expect("t"));
    match liger::run_device(flce.loss, &rt, &mixed, &flce.params, &opts, &st) {
        Err(Error::Runtime(RtError::InputDType { input, .. })) if input == "logits.w" => {}
        other => panic!("mixed dtypes: {other:?}"),
    }
    let wrong_target = liger::DeviceInputs::new()
        .head(
            "logits",
            liger::DeviceHead {
                x,
                w: dev_tensor(&dd.w[0], &sh.w[0]),
                b: None,
            },
        )
        .tensor("target", dev_tensor(&dd.seq, &sh.s));
    match liger::run_device(flce.loss, &rt, &wrong_target, &flce.params, &opts, &st) {
        Err(Error::Runtime(RtError::Shape { input, .. })) if input == "target" => {}
        other => panic!("a [S] float target: {other:?}"),
    }
    let good = device_inputs(flce, &dd, &sh);
    match liger::run_device(
        flce.loss,
        &liger::Runtime::cpu(),
        &good,
        &flce.params,
        &opts,
        &st,
    ) {
        Err(Error::Runtime(RtError::Device { .. })) => {}
        other => panic!("device buffers on the CPU runtime: {other:?}"),
    }
}

/// A loss with every kind of side input: token ids (no target), a per-row weight, a row mask,
/// a per-vocab prior and a scalar.
#[liger::chunked_loss]
pub fn side_inputs(
    logits: Logits,
    ids: Tokens,
    weight: RowInput,
    keep: RowMask,
    prior: VocabInput,
    scale: ScalarInput,
) -> Loss {
    let lp = logprob(logits, ids);
    let expected_prior = sum_vocab(prior * exp(log_softmax(logits)));
    let per_tok = weight * (expected_prior - lp);
    metric("per_token", per_tok);
    scale * sum(select(keep, per_tok, 0.0))
}

fn gpu_device_api_takes_every_side_input_kind_f16_and_views() {
    let Some((rt, st)) = runtime_and_stream() else {
        return;
    };
    use half::f16;
    use liger::runtime::cudarc::driver::CudaSlice;
    let cpu = liger::Runtime::cpu();
    let (s, t, h, v) = (3usize, 47usize, 40usize, 783usize);
    let mut rng = fastrand::Rng::with_seed(21);
    let x: Vec<f16> = (0..s * t * h)
        .map(|_| f16::from_f32(normal(&mut rng, 1.0)))
        .collect();
    let w: Vec<f16> = (0..v * h)
        .map(|_| f16::from_f32(normal(&mut rng, 0.2)))
        .collect();
    let ids: Vec<i32> = (0..s * t).map(|_| rng.usize(0..v) as i32).collect();
    let weight: Vec<f32> = (0..s * t).map(|_| 0.5 + rng.f32()).collect();
    let keep: Vec<bool> = (0..s * t).map(|i| i % 5 != 2).collect();
    let prior: Vec<half::bf16> = (0..v).map(|_| half::bf16::from_f32(rng.f32())).collect();
    let scale = [0.37f32];
    let (xs, ws, rs, vs, one) = ([s, t, h], [v, h], [s, t], [v], [1usize]);
    let host = InputSet::new()
        .head(
            "logits",
            liger::Head::new(
                TensorView::new(&x, &xs).expect("x"),
                TensorView::new(&w, &ws).expect("w"),
            ),
        )
        .tensor("ids", TensorView::new(&ids, &rs).expect("ids"))
        .tensor("weight", TensorView::new(&weight, &rs).expect("weight"))
        .tensor("keep", TensorView::new(&keep, &rs).expect("keep"))
        .tensor("prior", TensorView::new(&prior, &vs).expect("prior"))
        .tensor("scale", TensorView::new(&scale[..], &one).expect("scale"));
    // On the device: the weight as a view into a larger buffer, the mask as bytes.
    let xd: CudaSlice<f16> = st.clone_htod(&x).expect("x");
    let wd: CudaSlice<f16> = st.clone_htod(&w).expect("w");
    let idd: CudaSlice<i32> = st.clone_htod(&ids).expect("ids");
    let mut padded = vec![f32::NAN; 5];
    padded.extend(&weight);
    padded.extend([f32::NAN; 3]);
    let wbig: CudaSlice<f32> = st.clone_htod(&padded).expect("weight");
    let wview = wbig.slice(5..5 + s * t);
    let kd: CudaSlice<u8> = st
        .clone_htod(&keep.iter().map(|&k| u8::from(k)).collect::<Vec<_>>())
        .expect("keep");
    let pd: CudaSlice<half::bf16> = st.clone_htod(&prior).expect("prior");
    let sd: CudaSlice<f32> = st.clone_htod(&scale).expect("scale");
    let dev = liger::DeviceInputs::new()
        .head(
            "logits",
            liger::DeviceHead {
                x: liger::DeviceTensor::new(&xd, &xs).expect("x"),
                w: liger::DeviceTensor::new(&wd, &ws).expect("w"),
                b: None,
            },
        )
        .tensor("ids", liger::DeviceTensor::new(&idd, &rs).expect("ids"))
        .tensor(
            "weight",
            liger::DeviceTensor::from_view(&wview, &rs).expect("weight"),
        )
        .tensor("keep", liger::DeviceTensor::new(&kd, &rs).expect("keep"))
        .tensor("prior", liger::DeviceTensor::new(&pd, &vs).expect("prior"))
        .tensor("scale", liger::DeviceTensor::new(&sd, &one).expect("scale"));
    let params = ParamSet::new();
    let small = (4usize << 20) + (600 << 10);
    for budget in [small, 64 << 20] {
        let opts = RunOptions {
            chunk_memory: budget,
            ..RunOptions::default()
        };
        let want = liger::run(&SideInputs, &cpu, &host, &params, &opts).expect("cpu");
        let host_gpu = liger::run(&SideInputs, &rt, &host, &params, &opts).expect("host api");
        let out = liger::run_device(&SideInputs, &rt, &dev, &params, &opts, &st).expect("device");
        let got = out.to_host().expect("result");
        let mut failures = Vec::new();
        compare_outputs(
            &format!("side inputs, budget {budget}"),
            &got,
            &want,
            true,
            &mut failures,
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert_eq!(
            got.loss.to_bits(),
            host_gpu.loss.to_bits(),
            "device vs host API"
        );
        assert_eq!(got.grads, host_gpu.grads, "device vs host API");
        assert_eq!(
            got.metric("per_token").map(|m| m.values.len()),
            Some(s * t),
            "a row metric is [S,T]"
        );
        assert!(
            got.report.chunks > 1 || budget > 1 << 20,
            "a small budget chunks"
        );
    }
    // A NaN in the per-row weight (inside the view) is found on the device.
    let mut bad = padded.clone();
    bad[5 + 17] = f32::NAN;
    let bbig: CudaSlice<f32> = st.clone_htod(&bad).expect("weight");
    let bview = bbig.slice(5..5 + s * t);
    let dev_bad = dev.clone().tensor(
        "weight",
        liger::DeviceTensor::from_view(&bview, &rs).expect("weight"),
    );
    let out = liger::run_device(
        &SideInputs,
        &rt,
        &dev_bad,
        &params,
        &RunOptions::default(),
        &st,
    )
    .expect("queued");
    match out.check() {
        Err(liger::runtime::Error::NonFinite {
            input, index: 17, ..
        }) if input == "weight" => {}
        other => panic!("NaN weight: {other:?}"),
    }
}

/// The differential file tests and generated cases of `tests/difftests.rs` on the CUDA
/// executor: every `.lir` file and generated loss under every schedule, against the f64
/// interpreter (fp32 inputs: fp32 GEMMs, so the CPU tolerances hold up to accumulation order).
fn gpu_difftests_match_the_interpreter() {
    if gpu_or_skip().is_none() {
        return;
    }
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/difftests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/difftests")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lir"))
        .collect();
    files.sort();
    let mut runs = 0;
    for path in &files {
        for seed in 0..2 {
            let case = common::difftest::lir_case(path, seed);
            let c = common::difftest::check(&case, &rt, 1e-4).unwrap_or_else(|e| panic!("{e}"));
            assert!(c.compared);
            runs += c.runs;
        }
    }
    let (mut cases, mut compared) = (0, 0);
    for seed in 0..40u64 {
        let case = common::difftest::generated_case(10_000 + seed, None);
        let c = common::difftest::check(&case, &rt, 2e-3)
            .unwrap_or_else(|e| panic!("{e}\n{}", liger::ir::print(&case.f)));
        runs += c.runs;
        cases += 1;
        compared += usize::from(c.compared);
    }
    eprintln!("{runs} CUDA runs; {compared} of {cases} generated cases compared");
    assert!(runs >= 150, "only {runs} runs");
}

/// `liger cache warm` in one process writes exactly what `liger run --device cuda` reads in
/// another: with `LIGER_CACHE=ro` the run compiles nothing (no NVRTC line in its log).
fn gpu_warm_then_run_reads_only_the_cache() {
    if gpu_or_skip().is_none() {
        return;
    }
    use liger::io::{OwnedData, OwnedTensor};
    let dir = std::env::temp_dir().join(format!("liger-gpu-warm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let exe = env!("CARGO_BIN_EXE_liger");
    let warm = |args: &[&str]| {
        let out = std::process::Command::new(exe)
            .args(["cache", "warm"])
            .args(args)
            .env("LIGER_CACHE_DIR", dir.join("cache"))
            .output()
            .expect("warm runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{text}");
    };
    warm(&["flce", "--dtype", "f32"]);
    warm(&["dpo", "--dtype", "bf16"]);
    let mut rng = fastrand::Rng::with_seed(5);
    let (s, t, h, v) = (4usize, 9usize, 16usize, 50usize);
    let f32t = |shape: Vec<usize>, rng: &mut fastrand::Rng| OwnedTensor {
        data: OwnedData::F32(
            (0..shape.iter().product())
                .map(|_| normal(rng, 1.0))
                .collect(),
        ),
        shape,
    };
    let bf16t = |shape: Vec<usize>, rng: &mut fastrand::Rng| OwnedTensor {
        data: OwnedData::BF16(
            (0..shape.iter().product())
                .map(|_| half::bf16::from_f32(normal(rng, 1.0)))
                .collect(),
        ),
        shape,
    };
    let target = OwnedTensor {
        shape: vec![s, t],
        data: OwnedData::I64(
            (0..s * t)
                .map(|i| if i % 5 == 4 { -100 } else { (i * 7 % v) as i64 })
                .collect(),
        ),
    };
    let mut flce = BTreeMap::new();
    flce.insert("logits.x".to_string(), f32t(vec![s, t, h], &mut rng));
    flce.insert("logits.w".to_string(), f32t(vec![v, h], &mut rng));
    flce.insert("target".to_string(), target.clone());
    let mut dpo = BTreeMap::new();
    dpo.insert("policy.x".to_string(), bf16t(vec![s, t, h], &mut rng));
    dpo.insert("policy.w".to_string(), bf16t(vec![v, h], &mut rng));
    dpo.insert("reference.x".to_string(), bf16t(vec![s, t, h], &mut rng));
    dpo.insert("reference.w".to_string(), bf16t(vec![v, h], &mut rng));
    dpo.insert("target".to_string(), target);
    for (name, tensors, budgets) in [
        ("flce", flce, vec!["64MiB", "4300KiB"]),
        ("dpo", dpo, vec!["64MiB", "4300KiB"]),
    ] {
        let file = dir.join(format!("{name}.safetensors"));
        liger::io::write(file.to_str().expect("path"), &tensors).expect("writes");
        for budget in budgets {
            let out = std::process::Command::new(exe)
                .args([
                    "run",
                    name,
                    "--device",
                    "cuda",
                    "--chunk-memory",
                    budget,
                    "--inputs",
                ])
                .arg(&file)
                .env("LIGER_CACHE_DIR", dir.join("cache"))
                .env("LIGER_CACHE", "ro")
                .env("LIGER_LOG", "1")
                .output()
                .expect("run runs");
            let (o, e) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert!(out.status.success(), "{name} {budget}: {o}{e}");
            eprintln!("{name} {budget}:\n{o}{e}");
            assert!(
                !e.contains("nvrtc compile"),
                "{name} {budget} compiled:\n{e}"
            );
            assert!(
                e.contains("cache hit (disk)"),
                "{name} {budget}: no disk hit:\n{e}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Trust nothing on disk, on the GPU: every kernel entry of a warmed cache is replaced by
/// another key's entry and one binary has a flipped byte with its size and checksum
/// rewritten; `liger run --device cuda` never loads them (each is moved aside with a warning
/// and recompiled) and gives the loss of a clean cache; the rewritten entries then serve.
fn gpu_swapped_or_tampered_cache_entries_are_never_loaded() {
    if gpu_or_skip().is_none() {
        return;
    }
    use liger::io::{OwnedData, OwnedTensor};
    let dir = std::env::temp_dir().join(format!("liger-gpu-tamper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let exe = env!("CARGO_BIN_EXE_liger");
    let cache = dir.join("cache");
    let mut rng = fastrand::Rng::with_seed(17);
    let (s, t, h, v) = (4usize, 9usize, 16usize, 50usize);
    let f32t = |shape: Vec<usize>, rng: &mut fastrand::Rng| OwnedTensor {
        data: OwnedData::F32(
            (0..shape.iter().product())
                .map(|_| normal(rng, 1.0))
                .collect(),
        ),
        shape,
    };
    let mut flce = BTreeMap::new();
    flce.insert("logits.x".to_string(), f32t(vec![s, t, h], &mut rng));
    flce.insert("logits.w".to_string(), f32t(vec![v, h], &mut rng));
    flce.insert(
        "target".to_string(),
        OwnedTensor {
            shape: vec![s, t],
            data: OwnedData::I64((0..s * t).map(|i| (i * 7 % v) as i64).collect()),
        },
    );
    let file = dir.join("flce.safetensors");
    liger::io::write(file.to_str().expect("path"), &flce).expect("writes");
    let run = |variant: &str| {
        let out = std::process::Command::new(exe)
            .args([
                "run",
                "flce",
                "--device",
                "cuda",
                "--variant",
                variant,
                "--inputs",
            ])
            .arg(&file)
            .env("LIGER_CACHE_DIR", &cache)
            .env("LIGER_LOG", "1")
            .output()
            .expect("run runs");
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(out.status.success(), "{o}{e}");
        let loss = o.lines().next().unwrap_or_default().to_string();
        (loss, e)
    };
    // Clean: compile and store, then the losses of two specialisations.
    let (clean_mean, _) = run("reduction=mean");
    let (clean_sum, _) = run("reduction=sum");
    assert_ne!(clean_mean, clean_sum);
    let store = cache.join("v2");
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(&store)
        .expect("store")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("meta.json").exists())
        .collect();
    entries.sort();
    assert!(entries.len() >= 2, "entries: {entries:?}");
    // Every entry gets the next one's files.
    let saved: Vec<Vec<(std::ffi::OsString, Vec<u8>)>> = entries
        .iter()
        .map(|d| {
            std::fs::read_dir(d)
                .expect("entry")
                .flatten()
                .map(|f| (f.file_name(), std::fs::read(f.path()).expect("file")))
                .collect()
        })
        .collect();
    for (k, d) in entries.iter().enumerate() {
        for (name, bytes) in &saved[(k + 1) % saved.len()] {
            std::fs::write(d.join(name), bytes).expect("swap");
        }
    }
    let (mean, log) = run("reduction=mean");
    assert_eq!(
        mean, clean_mean,
        "a swapped entry changed the result:\n{log}"
    );
    assert!(log.contains("moved aside"), "no warning:\n{log}");
    let (sum, log) = run("reduction=sum");
    assert_eq!(sum, clean_sum, "{log}");
    // A flipped byte in the binary with size and checksum rewritten in the metadata.
    let d = entries.first().expect("entry");
    let bin = std::fs::read_dir(d)
        .expect("entry")
        .flatten()
        .map(|f| f.path())
        .find(|p| p.extension().is_some_and(|e| e == "cubin" || e == "ptx"))
        .expect("binary");
    let mut bytes = std::fs::read(&bin).expect("binary");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&bin, &bytes).expect("tamper");
    let meta_path = d.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).expect("meta")).expect("json");
    meta["size"] = serde_json::json!(bytes.len());
    std::fs::write(&meta_path, meta.to_string()).expect("meta");
    for (variant, clean) in [
        ("reduction=mean", &clean_mean),
        ("reduction=sum", &clean_sum),
    ] {
        let (loss, _) = run(variant);
        assert_eq!(&loss, clean, "{variant}");
    }
    // Every entry is whole again: served from disk without compiling.
    let (loss, log) = run("reduction=mean");
    assert_eq!(loss, clean_mean);
    assert!(
        log.contains("cache hit (disk)") && !log.contains("nvrtc compile"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reductions' policy on the GPU gives the CPU's warnings and errors, and a uniform bias
/// of 1e7 cancels exactly under every schedule; a result that overflows f32 is refused.
fn gpu_empty_sequences_offsets_and_overflow_match_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let cpu = liger::Runtime::cpu();
    for strategy in [
        None,
        Some(liger::Strategy::Fused),
        Some(liger::Strategy::TwoPass),
    ] {
        for eps in [0.0, 0.1] {
            if let Err(e) = common::offset::check_uniform_bias(&rt, strategy, eps) {
                panic!("{e}");
            }
        }
    }
    let (s, t, h, v) = (4usize, 5usize, 8usize, 33usize);
    let mut rng = fastrand::Rng::with_seed(23);
    let x: Vec<f32> = (0..s * t * h).map(|_| normal(&mut rng, 1.0)).collect();
    let w: Vec<f32> = (0..v * h).map(|_| normal(&mut rng, 0.3)).collect();
    let mut tg: Vec<i64> = (0..s * t).map(|i| (i * 3 % v) as i64).collect();
    // Sequences 1 and 3 have no valid token.
    for q in [1usize, 3] {
        for e in &mut tg[q * t..(q + 1) * t] {
            *e = -100;
        }
    }
    let head = || {
        liger::Head::new(
            TensorView::new(&x, &[s, t, h]).expect("x"),
            TensorView::new(&w, &[v, h]).expect("w"),
        )
    };
    let set = InputSet::new()
        .head("policy", head())
        .head("reference", head())
        .tensor("target", TensorView::new(&tg, &[s, t]).expect("t"));
    let on = |r: &liger::Runtime| {
        liger::run(
            &liger::losses::Dpo,
            r,
            &set,
            &ParamSet::new(),
            &RunOptions::default(),
        )
        .expect("runs")
    };
    let (g, c) = (on(&rt), on(&cpu));
    assert_eq!(g.report.warnings, c.report.warnings);
    assert!(
        g.report
            .warnings
            .iter()
            .any(|w| w.starts_with("sequence 1 has no valid row")),
        "{:?}",
        g.report.warnings
    );
    // Overflow of f32 in the logits: refused, not NaN.
    let big = vec![3e38f32; s * t * h];
    let wbig = vec![3e38f32; v * h];
    let set = InputSet::new()
        .head(
            "logits",
            liger::Head::new(
                TensorView::new(&big, &[s, t, h]).expect("x"),
                TensorView::new(&wbig, &[v, h]).expect("w"),
            ),
        )
        .tensor("target", TensorView::new(&tg, &[s, t]).expect("t"));
    match liger::run(
        &liger::losses::Flce,
        &rt,
        &set,
        &ParamSet::new(),
        &RunOptions::default(),
    ) {
        Err(liger::Error::Runtime(RtError::NonFiniteResult { .. })) => {}
        other => panic!("{other:?}"),
    }
}

/// A loss file through `liger run --loss … --device cuda`: the result agrees with the CPU, and
/// a second process finds the kernels in the disk cache (no NVRTC).
fn gpu_loss_file_runs_on_cuda_and_a_second_process_hits_the_cache() {
    if gpu_or_skip().is_none() {
        return;
    }
    use liger::io::{OwnedData, OwnedTensor};
    let dir = std::env::temp_dir().join(format!("liger-gpu-lossfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let exe = env!("CARGO_BIN_EXE_liger");
    let mut rng = fastrand::Rng::with_seed(31);
    let (s, t, h, v) = (6usize, 17usize, 24usize, 101usize);
    let f32t = |shape: Vec<usize>, sd: f32, rng: &mut fastrand::Rng| OwnedTensor {
        data: OwnedData::F32(
            (0..shape.iter().product())
                .map(|_| normal(rng, sd))
                .collect(),
        ),
        shape,
    };
    let mut batch = BTreeMap::new();
    batch.insert("policy.x".to_string(), f32t(vec![s, t, h], 1.0, &mut rng));
    batch.insert("policy.w".to_string(), f32t(vec![v, h], 0.3, &mut rng));
    batch.insert(
        "target".to_string(),
        OwnedTensor {
            shape: vec![s, t],
            data: OwnedData::I64(
                (0..s * t)
                    .map(|i| {
                        if i % 7 == 6 {
                            -100
                        } else {
                            (i * 13 % v) as i64
                        }
                    })
                    .collect(),
            ),
        },
    );
    let file = dir.join("batch.safetensors");
    liger::io::write(file.to_str().expect("path"), &batch).expect("writes");
    let run = |device: &str| {
        let out = std::process::Command::new(exe)
            .args([
                "run",
                "--loss",
                "examples/losses/simpo.rs",
                "--device",
                device,
                "--inputs",
            ])
            .arg(&file)
            .env("LIGER_CACHE_DIR", dir.join("cache"))
            .env("LIGER_LOG", "1")
            .output()
            .expect("runs");
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(out.status.success(), "{device}: {o}{e}");
        let loss: f64 = o
            .lines()
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no loss line: {o}"));
        (loss, e)
    };
    let (cpu, _) = run("cpu");
    let (first, log1) = run("cuda");
    assert!(
        log1.contains("nvrtc compile"),
        "the first run compiles:\n{log1}"
    );
    let (second, log2) = run("cuda");
    assert!(
        log2.contains("cache hit (disk)") && !log2.contains("nvrtc compile"),
        "the second process reads the cache:\n{log2}"
    );
    assert_eq!(first, second, "deterministic");
    assert!(
        (first - cpu).abs() <= 1e-5 + 1e-4 * cpu.abs(),
        "cuda {first} vs cpu {cpu}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every preference loss and DPO type (the CPU suite's grid) on CUDA against the CPU executor,
/// under every schedule and two budgets, fp32 and bf16 inputs.
fn gpu_preference_losses_match_the_cpu_executor() {
    if gpu_or_skip().is_none() {
        return;
    }
    use common::preference::{Shape, dpo_cases, other_cases};
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let cpu = liger::Runtime::cpu();
    let mut failures = Vec::new();
    let mut runs = 0;
    let mut cases = dpo_cases();
    cases.extend(other_cases());
    for (sh, with_bf16) in [
        (common::preference::SMALL, true),
        (
            Shape {
                s: 4,
                t: 130,
                h: 64,
                v: 4099,
            },
            false,
        ),
    ] {
        for (k, c) in cases.iter().enumerate() {
            for bf16 in [false, true] {
                if bf16 && !with_bf16 {
                    continue;
                }
                let d = common::preference::data(sh, 900 + k as u64, c);
                let (xb, wb): (Vec<half::bf16>, Vec<half::bf16>) = (to_bf16(&d.x), to_bf16(&d.w));
                let (xrb, wrb): (Vec<half::bf16>, Vec<half::bf16>) =
                    (to_bf16(&d.xr), to_bf16(&d.wr));
                let (x, w, xr, wr) = if bf16 {
                    (
                        liger::TensorData::BF16(&xb),
                        liger::TensorData::BF16(&wb),
                        liger::TensorData::BF16(&xrb),
                        liger::TensorData::BF16(&wrb),
                    )
                } else {
                    (
                        liger::TensorData::F32(&d.x),
                        liger::TensorData::F32(&d.w),
                        liger::TensorData::F32(&d.xr),
                        liger::TensorData::F32(&d.wr),
                    )
                };
                let set = common::preference::inputs_with_reference(c, sh, &d, &x, &w, xr, wr);
                let params = c.params();
                let base = RunOptions {
                    ignore_index: c.ignore,
                    ..RunOptions::default()
                };
                let want = liger::run(c.loss(), &cpu, &set, &params, &base).expect("cpu");
                let names: Vec<&str> = set.names().collect();
                let (p, _) = liger::pipeline_for(c.loss(), &names, &params).expect("pipeline");
                for strategy in p.schedule().candidates.clone() {
                    for budget in [(4 << 20) + (300 << 10), 64 << 20] {
                        let opts = RunOptions {
                            chunk_memory: budget,
                            schedule: Some(strategy),
                            ..base
                        };
                        let got = match liger::run(c.loss(), &rt, &set, &params, &opts) {
                            Ok(o) => o,
                            Err(liger::Error::Runtime(liger::runtime::Error::Budget {
                                ..
                            })) if budget < (8 << 20) => {
                                continue;
                            }
                            Err(e) => panic!("{c:?} {strategy} budget {budget}: {e}"),
                        };
                        runs += 1;
                        let what = format!("{c:?} {strategy} budget {budget} {sh:?} bf16={bf16}");
                        compare_outputs(&what, &got, &want, bf16, &mut failures);
                    }
                }
            }
        }
    }
    eprintln!("{runs} preference-loss runs on CUDA against the CPU executor");
    assert!(runs >= 150, "{runs} runs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// GRPO in every loss type and level, the distillation losses and FLCE with class weights
/// on CUDA against the CPU executor, under every schedule.
fn gpu_grpo_distillation_and_class_weights_match_the_cpu_executor() {
    if gpu_or_skip().is_none() {
        return;
    }
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let cpu = liger::Runtime::cpu();
    let (s, t, h, v) = (6usize, 47usize, 32usize, 257usize);
    let mut rng = fastrand::Rng::with_seed(4242);
    let x: Vec<f32> = (0..s * t * h).map(|_| normal(&mut rng, 1.0)).collect();
    let w: Vec<f32> = (0..v * h).map(|_| normal(&mut rng, 0.2)).collect();
    let xr: Vec<f32> = (0..s * t * h).map(|_| normal(&mut rng, 1.0)).collect();
    let wr: Vec<f32> = (0..v * h).map(|_| normal(&mut rng, 0.2)).collect();
    let tokens: Vec<i64> = (0..s * t).map(|_| rng.usize(0..v) as i64).collect();
    let target: Vec<i64> = tokens
        .iter()
        .enumerate()
        .map(|(i, &k)| if i % 5 == 3 { -100 } else { k })
        .collect();
    let mask: Vec<bool> = (0..s * t).map(|i| i % t == 0 || i % 4 != 1).collect();
    let adv: Vec<f32> = (0..s)
        .map(|i| if i % 2 == 0 { 0.7 } else { -0.9 })
        .collect();
    let old: Vec<f32> = (0..s * t).map(|_| -4.0 + normal(&mut rng, 0.5)).collect();
    let refl: Vec<f32> = (0..s * t).map(|_| -4.0 + normal(&mut rng, 0.5)).collect();
    let isr: Vec<f32> = (0..s * t).map(|_| 0.6 + rng.f32()).collect();
    let cw: Vec<f32> = (0..v).map(|_| 0.3 + rng.f32()).collect();
    let head = |x: &'static [f32], w: &'static [f32]| {
        liger::Head::new(
            TensorView::new(x, &[s, t, h]).expect("x"),
            TensorView::new(w, &[v, h]).expect("w"),
        )
    };
    // Leaked so the input sets can borrow them for the whole test.
    let leak = |x: Vec<f32>| -> &'static [f32] { Box::leak(x.into_boxed_slice()) };
    let (x, w, xr, wr) = (leak(x), leak(w), leak(xr), leak(wr));
    let (old, refl, isr, cw, adv) = (leak(old), leak(refl), leak(isr), leak(cw), leak(adv));
    let tokens: &'static [i64] = Box::leak(tokens.into_boxed_slice());
    let target: &'static [i64] = Box::leak(target.into_boxed_slice());
    let mask: &'static [bool] = Box::leak(mask.into_boxed_slice());
    let mut cases: Vec<(&'static dyn liger::ChunkedLoss, InputSet<'static>, ParamSet)> = Vec::new();
    for lt in [
        "Grpo", "Bnpo", "DrGrpo", "Dapo", "Cispo", "Sapo", "Luspo", "Vespo",
    ] {
        for level in ["Token", "Sequence"] {
            let base = InputSet::new()
                .head("policy", head(x, w))
                .tensor("target", TensorView::new(tokens, &[s, t]).expect("t"))
                .tensor("mask", TensorView::new(mask, &[s, t]).expect("m"))
                .tensor("advantages", TensorView::new(adv, &[s]).expect("a"));
            let params = ParamSet::new()
                .variant("loss_type", lt)
                .variant("importance_sampling_level", level)
                .float("max_completion_length", 40.0)
                .float("beta", 0.1);
            cases.push((
                &liger::losses::Grpo,
                base.clone()
                    .tensor("old_logps", TensorView::new(old, &[s, t]).expect("o"))
                    .tensor("ref_logps", TensorView::new(refl, &[s, t]).expect("r"))
                    .tensor("is_ratio", TensorView::new(isr, &[s, t]).expect("i")),
                params.clone().float("delta", 1.5),
            ));
            cases.push((
                &liger::losses::Grpo,
                base.head("reference", head(xr, wr)),
                params
                    .variant("bias_correction_kl", "true")
                    .float("temperature", 0.8),
            ));
        }
    }
    for direction in ["Forward", "Reverse"] {
        cases.push((
            &liger::losses::KlDistill,
            InputSet::new()
                .head("student", head(x, w))
                .head("teacher", head(xr, wr))
                .tensor("target", TensorView::new(target, &[s, t]).expect("t")),
            ParamSet::new()
                .variant("direction", direction)
                .float("temperature", 1.5),
        ));
    }
    cases.push((
        &liger::losses::CosineDistill,
        InputSet::new()
            .head("student", head(x, w))
            .head("teacher", head(xr, wr))
            .tensor("target", TensorView::new(target, &[s, t]).expect("t")),
        ParamSet::new().float("beta", 0.8),
    ));
    cases.push((
        &liger::losses::Flce,
        InputSet::new()
            .head("logits", head(x, w))
            .tensor("target", TensorView::new(target, &[s, t]).expect("t"))
            .tensor("class_weight", TensorView::new(cw, &[v]).expect("cw")),
        ParamSet::new()
            .float("label_smoothing", 0.1)
            .float("z_loss_scale", 1e-3),
    ));
    // Per-token losses with upstream weights (reduction None).
    cases.push((
        &liger::losses::Flce,
        InputSet::new()
            .head("logits", head(x, w))
            .tensor("target", TensorView::new(target, &[s, t]).expect("t"))
            .tensor("token_weight", TensorView::new(isr, &[s, t]).expect("tw")),
        ParamSet::new()
            .variant("reduction", "None")
            .float("z_loss_scale", 1e-3),
    ));
    // A teacher with 11 more vocabulary rows (and a bias), used through its first V rows.
    let extra = 11;
    let wbig: Vec<f32> = wr
        .iter()
        .copied()
        .chain((0..extra * h).map(|_| normal(&mut rng, 0.2)))
        .collect();
    let bbig: Vec<f32> = (0..v + extra).map(|_| normal(&mut rng, 0.5)).collect();
    let (wbig, bbig) = (leak(wbig), leak(bbig));
    cases.push((
        &liger::losses::KlDistill,
        InputSet::new()
            .head("student", head(x, w))
            .head(
                "teacher",
                liger::Head::with_bias(
                    TensorView::new(xr, &[s, t, h]).expect("x"),
                    TensorView::new(wbig, &[v + extra, h]).expect("w"),
                    TensorView::new(bbig, &[v + extra]).expect("b"),
                ),
            )
            .tensor("target", TensorView::new(target, &[s, t]).expect("t")),
        ParamSet::new().float("temperature", 2.0),
    ));
    let mut failures = Vec::new();
    let mut runs = 0;
    for (loss, set, params) in &cases {
        let prefix = RunOptions {
            vocab_prefix: true,
            ..RunOptions::default()
        };
        let want = liger::run(*loss, &cpu, set, params, &prefix).expect("cpu");
        let names: Vec<&str> = set.names().collect();
        let (p, _) = liger::pipeline_for(*loss, &names, params).expect("pipeline");
        for strategy in p.schedule().candidates.clone() {
            for budget in [(4 << 20) + (300 << 10), 64 << 20] {
                let opts = RunOptions {
                    chunk_memory: budget,
                    schedule: Some(strategy),
                    vocab_prefix: true,
                    ..RunOptions::default()
                };
                let got = match liger::run(*loss, &rt, set, params, &opts) {
                    Ok(o) => o,
                    Err(liger::Error::Runtime(liger::runtime::Error::Budget { .. }))
                        if budget < (8 << 20) =>
                    {
                        continue;
                    }
                    Err(e) => panic!("{} {params:?} {strategy}: {e}", loss.name()),
                };
                runs += 1;
                let what = format!("{} {params:?} {strategy} budget {budget}", loss.name());
                compare_outputs(&what, &got, &want, false, &mut failures);
            }
        }
    }
    eprintln!("{runs} runs on CUDA against the CPU executor");
    assert!(runs >= 60, "{runs} runs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The larger teacher through the device API: refused without the option, and with it
    // equal to the host API (which the loop above checked against the CPU).
    let Some((rt, st)) = runtime_and_stream() else {
        return;
    };
    use liger::runtime::cudarc::driver::CudaSlice;
    let (xs, ws, wbs, bbs, ts) = ([s, t, h], [v, h], [v + extra, h], [v + extra], [s, t]);
    let xd: CudaSlice<f32> = st.clone_htod(x).expect("x");
    let wd: CudaSlice<f32> = st.clone_htod(w).expect("w");
    let xrd: CudaSlice<f32> = st.clone_htod(xr).expect("xr");
    let wbd: CudaSlice<f32> = st.clone_htod(wbig).expect("wbig");
    let bbd: CudaSlice<f32> = st.clone_htod(bbig).expect("bbig");
    let td: CudaSlice<i64> = st.clone_htod(target).expect("target");
    let dev = liger::DeviceInputs::new()
        .head(
            "student",
            liger::DeviceHead {
                x: liger::DeviceTensor::new(&xd, &xs).expect("x"),
                w: liger::DeviceTensor::new(&wd, &ws).expect("w"),
                b: None,
            },
        )
        .head(
            "teacher",
            liger::DeviceHead {
                x: liger::DeviceTensor::new(&xrd, &xs).expect("x"),
                w: liger::DeviceTensor::new(&wbd, &wbs).expect("w"),
                b: Some(liger::DeviceTensor::new(&bbd, &bbs).expect("b")),
            },
        )
        .tensor("target", liger::DeviceTensor::new(&td, &ts).expect("t"));
    let params = ParamSet::new().float("temperature", 2.0);
    let loss = &liger::losses::KlDistill;
    let err = liger::run_device(loss, &rt, &dev, &params, &RunOptions::default(), &st)
        .expect_err("a larger teacher without vocab_prefix");
    assert!(err.to_string().contains("vocab_prefix"), "{err}");
    let opts = RunOptions {
        vocab_prefix: true,
        ..RunOptions::default()
    };
    let got = liger::run_device(loss, &rt, &dev, &params, &opts, &st)
        .expect("device")
        .to_host()
        .expect("result");
    let (_, set, _) = cases.last().expect("the teacher case");
    let host = liger::run(loss, &rt, set, &params, &opts).expect("host api");
    assert_eq!(
        got.loss.to_bits(),
        host.loss.to_bits(),
        "device vs host API"
    );
    assert_eq!(got.grads, host.grads, "device vs host API");
}

/// `RunOptions::grads` on CUDA: a subset of {x, W, b} gives the full run's loss, metrics and
/// asked-for gradients bitwise (at the full run's chunk and stage sizes), `None` for the
/// rest, under every schedule (host and device APIs).
fn gpu_gradients_not_asked_for_are_not_computed() {
    let Some((rt, st)) = runtime_and_stream() else {
        return;
    };
    use liger::runtime::cudarc::driver::CudaSlice;
    let (s, t, h, v) = (4usize, 37usize, 32usize, 517usize);
    let mut rng = fastrand::Rng::with_seed(77);
    let mut f = |n: usize, sd: f32| -> Vec<f32> { (0..n).map(|_| normal(&mut rng, sd)).collect() };
    let (x, w, b, xr, wr) = (
        f(s * t * h, 1.0),
        f(v * h, 0.2),
        f(v, 0.5),
        f(s * t * h, 1.0),
        f(v * h, 0.2),
    );
    let target: Vec<i64> = (0..s * t)
        .map(|i| {
            if i % 7 == 3 {
                -100
            } else {
                ((i * 31) % v) as i64
            }
        })
        .collect();
    let head = |x: &'static [f32], w: &'static [f32], b: Option<&'static [f32]>| {
        let (xv, wv) = (
            TensorView::new(x, &[s, t, h]).expect("x"),
            TensorView::new(w, &[v, h]).expect("w"),
        );
        match b {
            Some(b) => liger::Head::with_bias(xv, wv, TensorView::new(b, &[v]).expect("b")),
            None => liger::Head::new(xv, wv),
        }
    };
    let leak = |x: Vec<f32>| -> &'static [f32] { Box::leak(x.into_boxed_slice()) };
    let (x, w, b, xr, wr) = (leak(x), leak(w), leak(b), leak(xr), leak(wr));
    let target: &'static [i64] = Box::leak(target.into_boxed_slice());
    let tv = || TensorView::new(target, &[s, t]).expect("t");
    let cases: Vec<(&'static dyn liger::ChunkedLoss, InputSet<'static>)> = vec![
        (
            &liger::losses::Flce,
            InputSet::new()
                .head("logits", head(x, w, Some(b)))
                .tensor("target", tv()),
        ),
        (
            &liger::losses::Dpo,
            InputSet::new()
                .head("policy", head(x, w, Some(b)))
                .head("reference", head(xr, wr, None))
                .tensor("target", tv()),
        ),
        (
            &liger::losses::Jsd,
            InputSet::new()
                .head("student", head(x, w, None))
                .head("teacher", head(xr, wr, None))
                .tensor("target", tv()),
        ),
    ];
    let params = ParamSet::new();
    let mut runs = 0;
    for (loss, set) in &cases {
        let names: Vec<&str> = set.names().collect();
        let (p, _) = liger::pipeline_for(*loss, &names, &params).expect("pipeline");
        for strategy in p.schedule().candidates.clone() {
            let base = RunOptions {
                schedule: Some(strategy),
                ..RunOptions::default()
            };
            let base = RunOptions {
                chunk_memory: least_budget(*loss, &rt, set, &params, &base) + (300 << 10),
                ..base
            };
            let full = liger::run(*loss, &rt, set, &params, &base).expect("full");
            for spec in ["x", "w", "x,b", "none"] {
                let wanted = liger::Wanted::parse(spec).expect("spec");
                // Fewer gradients need less memory, so the planner may pick larger chunks;
                // the full run's chunk and stage sizes are forced so that the GEMMs (and
                // their rounding) are the same ones.
                let opts = RunOptions {
                    grads: wanted,
                    rows: Some(liger::ForcedRows {
                        chunk: full.report.chunk_rows,
                        stage: Some(full.report.stage_rows),
                    }),
                    ..base
                };
                let what = format!("{} {strategy} grads {spec}", loss.name());
                let out = liger::run(*loss, &rt, set, &params, &opts)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                runs += 1;
                assert_eq!(out.loss.to_bits(), full.loss.to_bits(), "{what}");
                assert_eq!(out.metrics, full.metrics, "{what}");
                for (g, fg) in out.grads.iter().zip(&full.grads) {
                    for (part, on, got, all) in [
                        ("x", wanted.x, &g.x, &fg.x),
                        ("w", wanted.w, &g.w, &fg.w),
                        ("b", wanted.b, &g.b, &fg.b),
                    ] {
                        if on {
                            assert_eq!(got, all, "{what}: {part}");
                        } else {
                            assert!(got.is_none(), "{what}: {part} not asked for");
                        }
                    }
                }
            }
        }
    }
    assert!(runs >= 24, "{runs}");
    // The device API with a frozen W: dx only, equal to the host API's.
    let xd: CudaSlice<f32> = st.clone_htod(x).expect("x");
    let wd: CudaSlice<f32> = st.clone_htod(w).expect("w");
    let td: CudaSlice<i64> = st.clone_htod(target).expect("t");
    let (xs, ws, ts) = ([s, t, h], [v, h], [s, t]);
    let dev = liger::DeviceInputs::new()
        .head(
            "logits",
            liger::DeviceHead {
                x: liger::DeviceTensor::new(&xd, &xs).expect("x"),
                w: liger::DeviceTensor::new(&wd, &ws).expect("w"),
                b: None,
            },
        )
        .tensor("target", liger::DeviceTensor::new(&td, &ts).expect("t"));
    let opts = RunOptions {
        grads: liger::Wanted::parse("x").expect("x"),
        ..RunOptions::default()
    };
    let out =
        liger::run_device(&liger::losses::Flce, &rt, &dev, &params, &opts, &st).expect("device");
    let g = &out.grads()[0];
    assert!(g.x.is_some() && g.w.is_none() && g.b.is_none());
    let got = out.to_host().expect("host");
    let set = InputSet::new()
        .head("logits", head(x, w, None))
        .tensor("target", tv());
    let host = liger::run(&liger::losses::Flce, &rt, &set, &params, &opts).expect("host api");
    assert_eq!(got.grads, host.grads);
    assert_eq!(got.loss.to_bits(), host.loss.to_bits());
}

/// Rows that carry nothing (prompt-like runs of ignored targets) are skipped on CUDA through
/// the host API: the every-row results within rounding, under every schedule, for DPO with a
/// reference head and FLCE; in f32 with an even H (rows gathered in 4-byte words) and in bf16
/// with an odd H (2-byte words).
fn gpu_skipped_rows_match_every_row() {
    if gpu_or_skip().is_none() {
        return;
    }
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let mut failures = Vec::new();
    let mut runs = 0;
    for (bf16, h) in [(false, 64usize), (true, 63)] {
        let (s, t, v) = (4usize, 200usize, 1031usize);
        let mut rng = fastrand::Rng::with_seed(91 + h as u64);
        let mut f =
            |n: usize, sd: f32| -> Vec<f32> { (0..n).map(|_| normal(&mut rng, sd)).collect() };
        let f32s = [
            f(s * t * h, 1.0),
            f(v * h, 0.2),
            f(s * t * h, 1.0),
            f(v * h, 0.2),
        ];
        let bf: Vec<Vec<half::bf16>> = f32s.iter().map(|x| to_bf16(x)).collect();
        let data = |i: usize| -> liger::TensorData<'_> {
            if bf16 {
                (&bf[i][..]).into()
            } else {
                (&f32s[i][..]).into()
            }
        };
        // A prompt of 40 to 100 rows per sequence, and a few scattered ignored rows.
        let target: Vec<i64> = (0..s * t)
            .map(|i| {
                let (q, j) = (i / t, i % t);
                if j < 40 + 20 * q || j % 17 == 5 {
                    -100
                } else {
                    ((i * 7) % v) as i64
                }
            })
            .collect();
        let head = |xi: usize| {
            liger::Head::new(
                TensorView::new(data(xi), &[s, t, h]).expect("x"),
                TensorView::new(data(xi + 1), &[v, h]).expect("w"),
            )
        };
        let tv = TensorView::new(&target[..], &[s, t]).expect("t");
        let sets: Vec<(&dyn liger::ChunkedLoss, InputSet<'_>)> = vec![
            (
                &liger::losses::Dpo,
                InputSet::new()
                    .head("policy", head(0))
                    .head("reference", head(2))
                    .tensor("target", tv.clone()),
            ),
            (
                &liger::losses::Flce,
                InputSet::new()
                    .head("logits", head(0))
                    .tensor("target", tv.clone()),
            ),
        ];
        let params = ParamSet::new();
        for (loss, set) in &sets {
            let names: Vec<&str> = set.names().collect();
            let (p, _) = liger::pipeline_for(*loss, &names, &params).expect("pipeline");
            for strategy in p.schedule().candidates.clone() {
                let opts = RunOptions {
                    schedule: Some(strategy),
                    ..RunOptions::default()
                };
                // The least budget of either run (the skipping run's chunks also hold their
                // gathered rows), plus a few dozen rows a chunk.
                let every = RunOptions {
                    skip_dead_rows: false,
                    ..opts
                };
                let least = least_budget(*loss, &rt, set, &params, &every)
                    .max(least_budget(*loss, &rt, set, &params, &opts));
                let opts = RunOptions {
                    chunk_memory: least + (500 << 10),
                    ..opts
                };
                let every = RunOptions {
                    skip_dead_rows: false,
                    ..opts
                };
                let what = format!("{} {strategy} bf16={bf16} H{h}", loss.name());
                let a = liger::run(*loss, &rt, set, &params, &opts)
                    .unwrap_or_else(|e| panic!("{what} skipping: {e}"));
                let b = liger::run(*loss, &rt, set, &params, &every)
                    .unwrap_or_else(|e| panic!("{what} every row: {e}"));
                runs += 1;
                assert!(a.report.chunks > 1, "{what}: {} chunk", a.report.chunks);
                assert!(a.report.skipped_rows >= 4 * 40, "{}", a.report.skipped_rows);
                assert_eq!(b.report.skipped_rows, 0);
                compare_outputs(
                    &format!("{what} skipped vs every row"),
                    &a,
                    &b,
                    bf16,
                    &mut failures,
                );
            }
        }
    }
    assert!(runs >= 8, "{runs}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The least working memory `loss` needs on `rt` with `opts` (its schedule, options), from the
/// planner's budget error at a budget of one byte: tests add a little to get small chunks
/// whatever the backend's memory model counts.
fn least_budget(
    loss: &dyn liger::ChunkedLoss,
    rt: &liger::Runtime,
    set: &InputSet<'_>,
    params: &ParamSet,
    opts: &RunOptions,
) -> usize {
    let tiny = RunOptions {
        chunk_memory: 1,
        ..*opts
    };
    match liger::run(loss, rt, set, params, &tiny) {
        Err(liger::Error::Runtime(RtError::Budget { needed, .. })) => needed,
        Err(e) => panic!("{}: {e}", loss.name()),
        Ok(_) => panic!("{} ran in one byte", loss.name()),
    }
}

/// Why this machine cannot run the GPU tests (`None`: it can).
fn gpu_unavailable() -> Option<String> {
    Gpu::new(0).err().map(|e| e.to_string())
}

fn trial(name: &'static str, f: fn()) -> libtest_mimic::Trial {
    libtest_mimic::Trial::test(name, move || {
        f();
        Ok(())
    })
}

/// Data parallel on the CUDA executor: every built-in loss split over 2 and 3 rank threads
/// (each with its own runtime on this GPU; the array stages on the host, combined over the
/// `LocalGroup`) equals the single-device CUDA run of the whole batch: the loss on every rank,
/// its rows' metrics and `dx`, `dW`/`db` shares that add up; with many two-pass chunks of
/// ranks of unequal sizes, a rank whose rows are all masked, and a custom loss from source.
fn gpu_data_parallel_matches_one_device() {
    if gpu_or_skip().is_none() {
        return;
    }
    use common::ranks::{Data, batch, builtin, check_data, per_seq, tempered_ce};
    let opts = RunOptions::default();
    for loss in liger::losses::builtin() {
        let loss = builtin(loss.name());
        let pairs = matches!(loss.name(), "dpo" | "cpo" | "simpo" | "orpo");
        let b = batch(loss.name(), if pairs { 10 } else { 7 }, 9, 6, 37, 5);
        for world in [2, 3] {
            check_data(loss, &ParamSet::new(), &b, world, &opts, "cuda");
        }
    }
    let chunks = RunOptions {
        rows: Some(liger::ForcedRows {
            chunk: 9,
            stage: None,
        }),
        ..RunOptions::default()
    };
    for name in ["dpo", "kto", "flce"] {
        let s = if name == "dpo" { 10 } else { 7 };
        let b = batch(name, s, 9, 6, 37, 31);
        check_data(builtin(name), &ParamSet::new(), &b, 3, &chunks, "cuda");
    }
    let mut b = batch("flce", 6, 9, 5, 41, 11);
    if let Some((_, Data::I(t), _, _)) = b.side.iter_mut().find(|s| s.0 == "target") {
        for x in &mut t[2 * 9..4 * 9] {
            *x = -100;
        }
    }
    check_data(builtin("flce"), &ParamSet::new(), &b, 3, &opts, "cuda");
    let custom = tempered_ce();
    let b = batch("custom", 5, 7, 4, 29, 12);
    let params = ParamSet::new().float("temperature", 0.7);
    check_data(&custom, &params, &b, 2, &opts, "cuda");
    // Whole-batch normalisers of variants (GRPO's DAPO token count, DPO's per-token averages
    // and NLL), and a per-vocabulary input read by the pre stream (class weights: the pre-late
    // stage reads the stream's row values from the device).
    let b = batch("grpo", 7, 9, 6, 37, 8);
    let dapo = ParamSet::new().variant("loss_type", "Dapo");
    check_data(builtin("grpo"), &dapo, &b, 3, &opts, "cuda");
    let b = batch("dpo", 10, 9, 6, 37, 9);
    let avg = ParamSet::new()
        .variant("average", "true")
        .variant("nll", "true");
    check_data(builtin("dpo"), &avg, &b, 2, &opts, "cuda");
    let mut b = batch("flce", 7, 9, 6, 37, 22);
    let mut rng = fastrand::Rng::with_seed(23);
    let cw: Vec<f32> = (0..37).map(|_| 0.5 + rng.f32()).collect();
    b.side.push(("class_weight", Data::F(cw), 0, vec![37]));
    let ps = ParamSet::new()
        .float("label_smoothing", 0.1)
        .float("z_loss_scale", 1e-3);
    check_data(builtin("flce"), &ps, &b, 3, &opts, "cuda");
    // A rank with a target out of the vocabulary: every rank gets an error, none waits.
    let mut b = batch("flce", 6, 9, 5, 41, 11);
    if let Some((_, Data::I(t), _, _)) = b.side.iter_mut().find(|s| s.0 == "target") {
        t[4 * 9 + 3] = 41;
    }
    let parts: Vec<_> = common::ranks::split(6, 3, false)
        .iter()
        .map(|q| common::ranks::select(&b, q))
        .collect();
    let res = common::ranks::run_data_ranks(
        builtin("flce"),
        &ParamSet::new(),
        &parts,
        &opts,
        liger::runtime::comm::GradShare::Share,
        "cuda",
    );
    assert!(res.iter().all(Result::is_err), "every rank fails: {res:?}");
    // A loss whose stream reads the number of sequences is refused on every rank.
    let refused = per_seq();
    let b = batch("custom", 4, 7, 4, 29, 13);
    let parts: Vec<_> = common::ranks::split(4, 2, false)
        .iter()
        .map(|q| common::ranks::select(&b, q))
        .collect();
    let res = common::ranks::run_data_ranks(
        &refused,
        &ParamSet::new(),
        &parts,
        &opts,
        liger::runtime::comm::GradShare::Share,
        "cuda",
    );
    for r in &res {
        match r {
            Err(e) => assert!(
                e.to_string().contains("number of sequences")
                    || e.to_string().contains("another rank"),
                "{e}"
            ),
            Ok(_) => panic!("a stream reading num_seqs must be refused"),
        }
    }
}

/// Vocab parallel on the CUDA executor: every built-in loss with its vocabulary split over 2
/// and 3 rank threads on one GPU (V = 37: unequal shards), under every strategy it has and
/// with many chunks, equals the single-device CUDA run: loss, metrics, `dx` (the ranks'
/// partial products summed on the device) and each shard's rows of `dW`/`db`. Variants with
/// every reduction kind (label smoothing: a vocabulary sum; z-loss and softcap: log-sum-exps
/// of transformed rows; class weights: a sharded per-vocabulary input; GRPO's DAPO), a
/// masked batch and a custom loss from source. The device all-reduces go through the host
/// here (`LocalGroup`); NCCL's are run by `examples/nccl_ranks.rs` on two GPUs.
fn gpu_vocab_parallel_matches_one_device() {
    if gpu_or_skip().is_none() {
        return;
    }
    use common::ranks::{Data, batch, builtin, check_vocab_on, tempered_ce};
    let opts = RunOptions::default();
    for loss in liger::losses::builtin() {
        let name = loss.name();
        let loss = builtin(name);
        let pairs = matches!(name, "dpo" | "cpo" | "simpo" | "orpo");
        let b = batch(name, if pairs { 4 } else { 3 }, 9, 6, 37, 21);
        for world in [2, 3] {
            check_vocab_on(loss, &ParamSet::new(), &b, world, &opts, "cuda");
        }
        // Every strategy, in chunks of 5 rows (several per sequence and per group) where the
        // strategy takes any chunk (group-aligned chunks hold whole groups: planned).
        let p = liger::pipeline(loss, &loss.specializations()[0]).expect("pipeline");
        for strategy in p.schedule().candidates.clone() {
            let forced = RunOptions {
                schedule: Some(strategy),
                rows: (strategy != liger::ir::Strategy::GroupAligned).then_some(
                    liger::ForcedRows {
                        chunk: 5,
                        stage: None,
                    },
                ),
                ..RunOptions::default()
            };
            check_vocab_on(loss, &ParamSet::new(), &b, 2, &forced, "cuda");
        }
    }
    let mut b = batch("flce", 3, 9, 6, 37, 22);
    let mut rng = fastrand::Rng::with_seed(23);
    let cw: Vec<f32> = (0..37).map(|_| 0.5 + rng.f32()).collect();
    b.side.push(("class_weight", Data::F(cw), 0, vec![37]));
    let ps = ParamSet::new()
        .float("label_smoothing", 0.1)
        .float("z_loss_scale", 1e-3)
        .variant("softcap", "true")
        .float("softcap_value", 5.0);
    check_vocab_on(builtin("flce"), &ps, &b, 3, &opts, "cuda");
    let mut b = batch("flce", 4, 9, 5, 41, 11);
    if let Some((_, Data::I(t), _, _)) = b.side.iter_mut().find(|s| s.0 == "target") {
        for x in &mut t[9..2 * 9] {
            *x = -100;
        }
    }
    check_vocab_on(builtin("flce"), &ParamSet::new(), &b, 2, &opts, "cuda");
    let b = batch("grpo", 3, 9, 6, 37, 24);
    let dapo = ParamSet::new().variant("loss_type", "Dapo");
    check_vocab_on(builtin("grpo"), &dapo, &b, 2, &opts, "cuda");
    let custom = tempered_ce();
    let b = batch("custom", 3, 7, 4, 29, 25);
    let params = ParamSet::new().float("temperature", 0.7);
    check_vocab_on(&custom, &params, &b, 3, &opts, "cuda");
}

/// NCCL (feature `nccl`) as the communicator of a data-parallel and a vocab-parallel run, in
/// a group of one (one
/// GPU here; two processes on two GPUs is `examples/nccl_ranks.rs`): collectives return their
/// input, the run equals the single-device run, and after `abort` every collective is a typed
/// error instead of a wait.
#[cfg(feature = "nccl")]
fn gpu_nccl_group_of_one_runs_data_parallel() {
    if gpu_or_skip().is_none() {
        return;
    }
    use common::ranks::{batch, builtin, with_inputs};
    use liger::runtime::comm::{Communicator, GradShare};
    use liger::runtime::nccl::{NcclGroup, unique_id};
    let rt = liger::Runtime::cuda(0).expect("cuda runtime");
    let stream = rt
        .cuda_context()
        .expect("context")
        .new_stream()
        .expect("stream");
    let id = unique_id().expect("libnccl");
    let group = NcclGroup::new(stream, 0, 1, &id).expect("a group of one");
    let mut v = [1.5, -2.0, 1e300];
    group.all_reduce_sum(&mut v).expect("sum");
    assert_eq!(v, [1.5, -2.0, 1e300]);
    group.all_reduce_max(&mut v).expect("max");
    assert_eq!(v, [1.5, -2.0, 1e300]);
    let b = batch("flce", 5, 9, 6, 37, 3);
    let opts = RunOptions::default();
    let (full, ranked) = with_inputs(&b, |set| {
        let loss = builtin("flce");
        (
            liger::run(loss, &rt, set, &ParamSet::new(), &opts).expect("single device"),
            liger::run_data_parallel(
                loss,
                &rt,
                set,
                &ParamSet::new(),
                &opts,
                &group,
                GradShare::Summed,
            )
            .expect("a group of one"),
        )
    });
    assert!(
        (ranked.loss - full.loss).abs() <= 1e-6 * full.loss.abs(),
        "{} vs {}",
        ranked.loss,
        full.loss
    );
    let (gw, fw) = (
        ranked.grads[0].w.as_ref().expect("dW").to_f32(),
        full.grads[0].w.as_ref().expect("dW").to_f32(),
    );
    for (a, b) in gw.iter().zip(&fw) {
        assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "dW {a} vs {b}");
    }
    // Vocab parallel through NCCL's device all-reduces (the whole vocabulary as one shard).
    let vocab = with_inputs(&b, |set| {
        liger::run_vocab_parallel(builtin("flce"), &rt, set, &ParamSet::new(), &opts, &group)
            .expect("a vocab-parallel group of one")
    });
    assert!(
        (vocab.loss - full.loss).abs() <= 1e-6 * full.loss.abs(),
        "{} vs {}",
        vocab.loss,
        full.loss
    );
    let (gx, fx) = (
        vocab.grads[0].x.as_ref().expect("dx").to_f32(),
        full.grads[0].x.as_ref().expect("dx").to_f32(),
    );
    for (a, b) in gx.iter().zip(&fx) {
        assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "dx {a} vs {b}");
    }
    group.abort("test");
    let e = group.all_reduce_sum(&mut v).expect_err("aborted");
    assert!(matches!(e, RtError::Rank { .. }), "{e}");
}

/// The GPU suite's harness (libtest-mimic, so that a test that cannot run here says
/// `ignored` instead of looking like a pass): without a GPU every test is ignored with the
/// reason printed first, unless `LIGER_REQUIRE_GPU=1` makes that a failure.
fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let why = gpu_unavailable();
    if let Some(w) = &why {
        if std::env::var("LIGER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            eprintln!("error: a GPU is required (LIGER_REQUIRE_GPU=1) but none works here: {w}");
            return std::process::ExitCode::FAILURE;
        }
        eprintln!("skipping the GPU tests (reported as ignored): no GPU: {w}");
    }
    #[cfg_attr(not(feature = "nccl"), allow(unused_mut))]
    let mut tests = vec![
        trial(
            "gpu_stream_kernels_match_the_cpu_executor",
            gpu_stream_kernels_match_the_cpu_executor,
        ),
        trial("gpu_cache_fill_and_load", gpu_cache_fill_and_load),
        trial(
            "gpu_second_process_hits_the_disk_cache_without_nvrtc",
            gpu_second_process_hits_the_disk_cache_without_nvrtc,
        ),
        trial(
            "gpu_executor_matches_the_cpu_executor_and_is_deterministic",
            gpu_executor_matches_the_cpu_executor_and_is_deterministic,
        ),
        trial(
            "gpu_bad_input_gives_typed_errors",
            gpu_bad_input_gives_typed_errors,
        ),
        trial(
            "gpu_dpo_16k_tokens_stays_within_a_2gib_budget",
            gpu_dpo_16k_tokens_stays_within_a_2gib_budget,
        ),
        trial(
            "gpu_device_api_matches_the_host_api_and_the_cpu_with_gradient_dtypes",
            gpu_device_api_matches_the_host_api_and_the_cpu_with_gradient_dtypes,
        ),
        trial(
            "gpu_device_api_writes_gradients_into_caller_buffers",
            gpu_device_api_writes_gradients_into_caller_buffers,
        ),
        trial(
            "gpu_grad_w_accumulated_in_its_dtype",
            gpu_grad_w_accumulated_in_its_dtype,
        ),
        trial(
            "gpu_device_api_queues_on_the_callers_stream_without_synchronising",
            gpu_device_api_queues_on_the_callers_stream_without_synchronising,
        ),
        trial(
            "gpu_device_api_bad_input_gives_typed_errors",
            gpu_device_api_bad_input_gives_typed_errors,
        ),
        trial(
            "gpu_device_api_takes_every_side_input_kind_f16_and_views",
            gpu_device_api_takes_every_side_input_kind_f16_and_views,
        ),
        trial(
            "gpu_difftests_match_the_interpreter",
            gpu_difftests_match_the_interpreter,
        ),
        trial(
            "gpu_warm_then_run_reads_only_the_cache",
            gpu_warm_then_run_reads_only_the_cache,
        ),
        trial(
            "gpu_swapped_or_tampered_cache_entries_are_never_loaded",
            gpu_swapped_or_tampered_cache_entries_are_never_loaded,
        ),
        trial(
            "gpu_empty_sequences_offsets_and_overflow_match_the_cpu",
            gpu_empty_sequences_offsets_and_overflow_match_the_cpu,
        ),
        trial(
            "gpu_loss_file_runs_on_cuda_and_a_second_process_hits_the_cache",
            gpu_loss_file_runs_on_cuda_and_a_second_process_hits_the_cache,
        ),
        trial(
            "gpu_preference_losses_match_the_cpu_executor",
            gpu_preference_losses_match_the_cpu_executor,
        ),
        trial(
            "gpu_grpo_distillation_and_class_weights_match_the_cpu_executor",
            gpu_grpo_distillation_and_class_weights_match_the_cpu_executor,
        ),
        trial(
            "gpu_gradients_not_asked_for_are_not_computed",
            gpu_gradients_not_asked_for_are_not_computed,
        ),
        trial(
            "gpu_skipped_rows_match_every_row",
            gpu_skipped_rows_match_every_row,
        ),
        trial(
            "gpu_data_parallel_matches_one_device",
            gpu_data_parallel_matches_one_device,
        ),
        trial(
            "gpu_vocab_parallel_matches_one_device",
            gpu_vocab_parallel_matches_one_device,
        ),
    ];
    #[cfg(feature = "nccl")]
    tests.push(trial(
        "gpu_nccl_group_of_one_runs_data_parallel",
        gpu_nccl_group_of_one_runs_data_parallel,
    ));
    let tests = tests
        .into_iter()
        .map(|t| t.with_ignored_flag(why.is_some()))
        .collect();
    libtest_mimic::run(&args, tests).exit_code()
}
