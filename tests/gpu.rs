//! GPU tests (run on the GPU machine with `bash .gpu/run.sh`): every built-in loss's generated
//! vocab-stream kernels on random device logits and targets, V = 123, 32003 and 128256,
//! against the CPU executor's row statistics and `dlogits` (fp32: `|a-b| <= 1e-6 + 1e-5 |b|`;
//! bf16: within one bf16 ulp of the correctly rounded CPU value); and a second process start
//! that hits the disk cache without calling NVRTC.
//!
//! Without a GPU every test prints why and passes, unless `LIGER_REQUIRE_GPU=1` (set by
//! `run.sh`), which makes a missing GPU a failure.

use std::collections::BTreeMap;
use std::time::Instant;

use liger::ir::emit::GemmDType;
use liger::kernels::{KernelRequest, compile};
use liger::runtime::cache::{Cache, Mode, Origin};
use liger::runtime::cpu::streams_on_logits;
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

#[test]
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
        let stages = liger::kernels::stages(loss, spec, None, GemmDType::BF16).expect("stages");
        let g = stages.grad.clone();
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
            let seq: Vec<f32> = (0..s).map(|_| normal(&mut rng, 5.0)).collect();
            let mut set =
                InputSet::new().tensor("target", TensorView::new(&target, &[s, t]).expect("t"));
            if g.input_by_name("ref_logps").is_some() {
                set = set.tensor("ref_logps", TensorView::new(&seq, &[s]).expect("seq"));
            }
            let mut logits = BTreeMap::new();
            for (k, input) in g.inputs.iter().enumerate() {
                if input.kind.is_head() {
                    logits.insert(
                        k,
                        (0..s * t * v)
                            .map(|_| normal(&mut rng, 2.0))
                            .collect::<Vec<f32>>(),
                    );
                }
            }
            for &strategy in &stages.schedule.candidates {
                for dtype in [GemmDType::BF16, GemmDType::F32] {
                    if dtype == GemmDType::F32 && v != 123 {
                        continue;
                    }
                    let req = KernelRequest {
                        strategy: Some(strategy),
                        gemm_dtype: dtype,
                        vocab: v,
                        hidden: vec![64; 2],
                        arch: arch.clone(),
                        ..KernelRequest::default()
                    };
                    let k = compile(loss, spec, &req, &cache).expect("compiles");
                    let module = gpu.load(&k.binary).expect("loads");
                    let opts = RunOptions::default();
                    let cpu =
                        streams_on_logits(&g, &set, &hyper, &opts, &logits, (s, t, v), strategy)
                            .expect("cpu streams");
                    let dev = streams_on_gpu(
                        &gpu,
                        &module,
                        &k.stages.module.kernels,
                        &g,
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
#[test]
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
        let spec = &loss.specializations()[0];
        let req = KernelRequest {
            arch: arch.clone(),
            ..KernelRequest::default()
        };
        let start = Instant::now();
        let k = compile(loss, spec, &req, &cache).expect("compiles");
        let module = gpu.load(&k.binary).expect("loads");
        for kern in &k.stages.module.kernels {
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

#[test]
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
    assert_eq!(first.len(), 3);
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
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 + 1e-4 * b.abs();
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
        pairs.push((format!("d{}.x", c.head), g.x.clone(), c.x.clone()));
        pairs.push((format!("d{}.w", c.head), g.w.clone(), c.w.clone()));
        if let (Some(a), Some(b)) = (&g.b, &c.b) {
            pairs.push((format!("d{}.b", c.head), a.clone(), b.clone()));
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
        } else if let Some((i, (x, y))) = a
            .iter()
            .zip(&b)
            .enumerate()
            .find(|(_, (x, y))| !close(**x, **y))
        {
            failures.push(format!(
                "{what}: {name}[{i}] = {x} on the GPU, {y} on the CPU"
            ));
        }
    }
}

#[test]
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
                let mut rng = fastrand::Rng::with_seed((ci * 10 + v) as u64);
                let mut xs = Vec::new();
                let mut ws = Vec::new();
                let mut bs = Vec::new();
                for (_, mult) in &case.heads {
                    let hh = h * mult;
                    xs.push(
                        (0..s * t * hh)
                            .map(|_| normal(&mut rng, 1.0))
                            .collect::<Vec<f32>>(),
                    );
                    ws.push(
                        (0..v * hh)
                            .map(|_| normal(&mut rng, 1.5 / (hh as f32).sqrt()))
                            .collect::<Vec<f32>>(),
                    );
                    bs.push(
                        bias.then(|| (0..v).map(|_| normal(&mut rng, 0.3)).collect::<Vec<f32>>()),
                    );
                }
                let xb: Vec<Vec<half::bf16>> = xs
                    .iter()
                    .map(|x| x.iter().map(|&a| half::bf16::from_f32(a)).collect())
                    .collect();
                let wb: Vec<Vec<half::bf16>> = ws
                    .iter()
                    .map(|x| x.iter().map(|&a| half::bf16::from_f32(a)).collect())
                    .collect();
                let target: Vec<i64> = (0..s * t)
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
                let seq: Vec<f32> = (0..s).map(|_| normal(&mut rng, 5.0)).collect();
                let mut set = InputSet::new();
                for (k, (name, mult)) in case.heads.iter().enumerate() {
                    let hh = h * mult;
                    let (x, w) = if bf16 {
                        (
                            TensorView::new(&xb[k], &[s, t, hh]).expect("x"),
                            TensorView::new(&wb[k], &[v, hh]).expect("w"),
                        )
                    } else {
                        (
                            TensorView::new(&xs[k], &[s, t, hh]).expect("x"),
                            TensorView::new(&ws[k], &[v, hh]).expect("w"),
                        )
                    };
                    let head = match &bs[k] {
                        Some(b) => {
                            liger::Head::with_bias(x, w, TensorView::new(b, &[v]).expect("b"))
                        }
                        None => liger::Head::new(x, w),
                    };
                    set = set.head(name, head);
                }
                set = set.tensor("target", TensorView::new(&target, &[s, t]).expect("t"));
                if let Some(n) = case.seq {
                    set = set.tensor(n, TensorView::new(&seq, &[s]).expect("seq"));
                }
                let want = liger::run(
                    case.loss,
                    &cpu,
                    &set,
                    &case.params,
                    &RunOptions {
                        ignore_index: ignore,
                        chunk_memory: 64 << 20,
                        schedule: None,
                    },
                )
                .expect("cpu");
                let (gir, _) = liger::gradient_ir(case.loss, &set, &case.params).expect("IR");
                for strategy in liger::ir::Schedule::of(&gir).candidates {
                    for budget in [(4 << 20) + (200 << 10), 64 << 20] {
                        let opts = RunOptions {
                            ignore_index: ignore,
                            chunk_memory: budget,
                            schedule: Some(strategy),
                        };
                        let got = match liger::run(case.loss, &rt, &set, &case.params, &opts) {
                            Ok(o) => o,
                            Err(liger::Error::Budget { .. })
                                if budget < (8 << 20)
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
                                    b.extend(g.x.iter().chain(&g.w).map(|x| x.to_bits()));
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

#[test]
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
        matches!(run(&x, &target, s, &liger::losses::Flce, &ParamSet::new()), Err(liger::Error::TargetOutOfRange { value, .. }) if value == v as i64)
    );
    target[3] = 1;
    let mut xn = x.clone();
    xn[7] = f32::NAN;
    assert!(matches!(
        run(&xn, &target, s, &liger::losses::Flce, &ParamSet::new()),
        Err(liger::Error::NonFinite { index: 7, .. })
    ));
    // A sequence with no valid token under seq_mean: found by the device's group kernel.
    let mut empty = target.clone();
    for e in empty.iter_mut().skip(t) {
        *e = -100;
    }
    let avg = ParamSet::new().variant("average", "true");
    match run(&x, &empty, s, &liger::losses::Dpo, &avg) {
        Err(liger::Error::EmptySequence { seq: 1 }) => {}
        other => panic!("{other:?}"),
    }
    let x3: Vec<f32> = (0..3 * t * h).map(|_| normal(&mut rng, 1.0)).collect();
    let t3: Vec<i64> = (0..3 * t).map(|i| (i % v) as i64).collect();
    assert!(matches!(
        run(&x3, &t3, 3, &liger::losses::Dpo, &ParamSet::new()),
        Err(liger::Error::OddSequenceCount { num_seqs: 3 })
    ));
}

#[test]
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
    assert_eq!(out.grads[0].w.len(), v * h, "grad W is returned in fp32");
}
