//! The `liger` binary: `losses`, `run` round-tripping through safetensors, and its errors.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use liger::io::{OwnedData, OwnedTensor};
use liger::prelude::*;

fn liger() -> Command {
    Command::new(env!("CARGO_BIN_EXE_liger"))
}

fn tmp(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("liger-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name).to_string_lossy().into_owned()
}

#[test]
fn losses_lists_every_builtin_as_json() {
    let out = liger().args(["losses", "--json"]).output().expect("runs");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "dpo",
            "cpo",
            "simpo",
            "orpo",
            "kto",
            "grpo",
            "flce",
            "jsd",
            "kl_distill",
            "cosine_distill"
        ]
    );
    let dpo = &v[0];
    let lt = dpo["params"]
        .as_array()
        .expect("params")
        .iter()
        .find(|p| p["name"] == "loss_type")
        .expect("loss_type");
    assert_eq!(lt["default"], "Sigmoid");
    assert_eq!(lt["choices"][0], "Sigmoid");
    assert_eq!(lt["choices"].as_array().map(Vec::len), Some(11));
    let text = liger().arg("losses").output().expect("runs");
    assert!(String::from_utf8_lossy(&text.stdout).contains("label_smoothing"));
}

/// policy x, policy w, reference x, reference w, targets, policy bias.
type DpoData = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<i64>, Vec<f32>);

fn dpo_file(path: &str) -> DpoData {
    let (s, t, h, v) = (4usize, 23usize, 9usize, 61usize);
    let mut rng = fastrand::Rng::with_seed(3);
    let (xp, wp, xr, wr) = (
        randn(&mut rng, s * t * h, 1.0),
        randn(&mut rng, v * h, 0.4),
        randn(&mut rng, s * t * h, 1.0),
        randn(&mut rng, v * h, 0.4),
    );
    let b = randn(&mut rng, v, 0.3);
    let tg = targets(&mut rng, s, t, v, -100);
    let mut f = BTreeMap::new();
    f.insert(
        "policy.x".to_string(),
        OwnedTensor {
            shape: vec![s, t, h],
            data: OwnedData::F32(xp.clone()),
        },
    );
    f.insert(
        "policy.w".to_string(),
        OwnedTensor {
            shape: vec![v, h],
            data: OwnedData::F32(wp.clone()),
        },
    );
    f.insert(
        "policy.b".to_string(),
        OwnedTensor {
            shape: vec![v],
            data: OwnedData::F32(b.clone()),
        },
    );
    f.insert(
        "reference.x".to_string(),
        OwnedTensor {
            shape: vec![s, t, h],
            data: OwnedData::F32(xr.clone()),
        },
    );
    f.insert(
        "reference.w".to_string(),
        OwnedTensor {
            shape: vec![v, h],
            data: OwnedData::F32(wr.clone()),
        },
    );
    let tg32: Vec<i32> = tg.iter().map(|&x| x as i32).collect();
    f.insert(
        "target".to_string(),
        OwnedTensor {
            shape: vec![s, t],
            data: OwnedData::I32(tg32),
        },
    );
    liger::io::write(path, &f).expect("writes");
    (xp, wp, xr, wr, tg, b)
}

#[test]
fn run_round_trips_through_safetensors() {
    let input = tmp("dpo_in.safetensors");
    let output = tmp("dpo_out.safetensors");
    let (xp, wp, xr, wr, tg, b) = dpo_file(&input);
    let st = liger()
        .args([
            "run",
            "dpo",
            "--inputs",
            &input,
            "--out",
            &output,
            "--param",
            "beta=0.3",
            "--variant",
            "average=true",
            "--chunk-memory",
            "8MiB",
            "--schedule",
            "two-pass",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(stdout.contains("schedule two-pass (forced)"), "{stdout}");
    let got = liger::io::read(&output).expect("reads the output");
    let f32s = |name: &str| match &got[name].data {
        OwnedData::F32(x) => x.clone(),
        other => panic!("{name}: {other:?}"),
    };
    // The same run through the library's reference path.
    let (s, t, h, v) = (4, 23, 9, 61);
    let inputs = DpoInputs {
        policy: Head::with_bias(
            TensorView::new(&xp, &[s, t, h]).expect("x"),
            TensorView::new(&wp, &[v, h]).expect("w"),
            TensorView::new(&b, &[v]).expect("b"),
        ),
        reference: Some(Head::new(
            TensorView::new(&xr, &[s, t, h]).expect("x"),
            TensorView::new(&wr, &[v, h]).expect("w"),
        )),
        ref_logps: None,
        target: TensorView::new(&tg, &[s, t]).expect("t"),
    };
    let params = DpoParams {
        beta: 0.3,
        average: true,
        ..DpoParams::default()
    };
    let want = Dpo.reference(&inputs, &params, -100).expect("reference");
    assert_eq!(got["loss"].shape, Vec::<usize>::new());
    assert!(close(f64::from(f32s("loss")[0]), want.loss, 1e-5, 1e-4));
    assert_eq!(got["metric.chosen_rewards"].shape, vec![2]);
    for (name, w) in [
        ("grad.policy.x", &want.grads[0].x),
        ("grad.policy.w", &want.grads[0].w),
    ] {
        let a = f32s(name);
        assert_eq!(a.len(), w.len());
        for (x, y) in a.iter().zip(w.iter()) {
            assert!(close(f64::from(*x), *y, 1e-5, 1e-4), "{name}: {x} vs {y}");
        }
    }
    assert_eq!(got["grad.policy.b"].shape, vec![61]);
    assert!(
        !got.contains_key("grad.reference.x"),
        "the reference head is frozen"
    );
}

fn fails_with(args: &[&str], needle: &str) {
    let out = liger().args(args).output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        err.contains(needle),
        "{args:?}: stderr `{err}` lacks `{needle}`"
    );
}

#[test]
fn cli_errors_name_the_problem() {
    let input = tmp("dpo_err.safetensors");
    dpo_file(&input);
    fails_with(&["run", "ipo", "--inputs", &input], "unknown loss `ipo`");
    fails_with(
        &["run", "dpo", "--inputs", &input, "--param", "betta=0.1"],
        "no parameter `betta`",
    );
    fails_with(
        &[
            "run",
            "dpo",
            "--inputs",
            &input,
            "--variant",
            "loss_type=orpo",
        ],
        "not a choice of `loss_type`",
    );
    fails_with(
        &[
            "run",
            "dpo",
            "--inputs",
            &input,
            "--param",
            "loss_type=Hinge",
        ],
        "--variant",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--variant", "beta=1"],
        "--param",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--param", "beta=abc"],
        "not a finite number",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--schedule", "fused"],
        "not row-local: a row's gradient waits for its pair",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--schedule", "fastest"],
        "not a choice of `--schedule`",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--device", "cuda"],
        "device `cuda`",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--chunk-memory", "lots"],
        "not a size",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--chunk-memory", "1KiB"],
        "too small",
    );
    fails_with(
        &["run", "dpo", "--inputs", "/nonexistent/in.safetensors"],
        "/nonexistent/in.safetensors",
    );
    // A DPO file given to FLCE: its first tensor that FLCE does not take is named, with
    // the names FLCE expects (unknown names are reported before missing ones).
    fails_with(
        &["run", "flce", "--inputs", &input],
        "is not an input of `flce` (expected: logits.x, logits.w, logits.b, target",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--ignore-index", "42"],
        "not a token id",
    );
    fails_with(
        &["cache", "warm", "dpo", "--dtype", "f64"],
        "`f64` is not a choice of `--dtype` (choices: bf16, f16, f32)",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--param", "beta=-1"],
        "`beta`",
    );
    fails_with(
        &[
            "run",
            "dpo",
            "--inputs",
            &input,
            "--param",
            "label_smoothing=0.7",
        ],
        "in [0.0, 0.5]",
    );
}

/// The file's `reference` head and a `ref_logps` tensor together: refused, naming both.
#[test]
fn an_unused_input_in_the_file_is_refused() {
    let input = tmp("dpo_both.safetensors");
    dpo_file(&input);
    let mut f = liger::io::read(&input).expect("reads");
    f.insert(
        "ref_logps".to_string(),
        OwnedTensor {
            shape: vec![4],
            data: OwnedData::F32(vec![-3.0, -4.0, -5.0, -6.0]),
        },
    );
    liger::io::write(&input, &f).expect("writes");
    fails_with(&["run", "dpo", "--inputs", &input], "`ref_logps`");
    fails_with(&["run", "dpo", "--inputs", &input], "`reference`");
}

#[test]
fn run_writes_gradients_in_the_dtypes_asked_for() {
    let input = tmp("dpo_gd_in.safetensors");
    let (out32, out16) = (tmp("dpo_gd_f32.safetensors"), tmp("dpo_gd_mix.safetensors"));
    dpo_file(&input);
    for (out, spec) in [(&out32, "f32"), (&out16, "x=bf16,w=f32,b=f16")] {
        let st = liger()
            .args([
                "run",
                "dpo",
                "--inputs",
                &input,
                "--out",
                out,
                "--grad-dtype",
                spec,
            ])
            .output()
            .expect("runs");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let (a, b) = (
        liger::io::read(&out32).expect("f32"),
        liger::io::read(&out16).expect("mixed"),
    );
    let OwnedData::F32(x32) = &a["grad.policy.x"].data else {
        panic!("f32 x")
    };
    let OwnedData::F32(b32) = &a["grad.policy.b"].data else {
        panic!("f32 b")
    };
    // The same f32 computation, rounded to nearest even once.
    match &b["grad.policy.x"].data {
        OwnedData::BF16(x) => {
            assert_eq!(x.len(), x32.len());
            assert!(
                x.iter()
                    .zip(x32)
                    .all(|(p, q)| *p == half::bf16::from_f32(*q))
            );
        }
        other => panic!("grad x: {other:?}"),
    }
    match &b["grad.policy.b"].data {
        OwnedData::F16(x) => {
            assert!(
                x.iter()
                    .zip(b32)
                    .all(|(p, q)| *p == half::f16::from_f32(*q))
            );
        }
        other => panic!("grad b: {other:?}"),
    }
    assert_eq!(a["grad.policy.w"], b["grad.policy.w"], "grad W stays f32");
    assert_eq!(b["grad.policy.x"].shape, a["grad.policy.x"].shape);
    fails_with(
        &["run", "dpo", "--inputs", &input, "--grad-dtype", "x=f64"],
        "`f64` is not f32, bf16 or f16",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--grad-dtype", "dx=bf16"],
        "`dx` is not a gradient (x, w, b)",
    );
}

/// The output is written atomically: `--out` equal to `--inputs` is refused, and a write that
/// fails (a file-size limit, as a full disk would) leaves the previous output intact and no
/// partial file behind.
#[test]
fn outputs_survive_failed_writes_and_never_overwrite_the_input() {
    let dir = std::env::temp_dir().join(format!("liger-cli-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let input = dir.join("in.safetensors").to_string_lossy().into_owned();
    let output = dir.join("out.safetensors").to_string_lossy().into_owned();
    dpo_file(&input);
    let before = std::fs::read(&input).expect("input");
    // Same file, by the same and by another spelling.
    for out in [input.clone(), format!("{}/./in.safetensors", dir.display())] {
        let st = liger()
            .args(["run", "dpo", "--inputs", &input, "--out", &out])
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(
            !st.status.success() && err.contains("would overwrite the batch"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&input).expect("input"),
            before,
            "the input was touched"
        );
    }
    // A previous output, then a run whose write fails under a 4 KiB file-size limit.
    std::fs::write(&output, b"previous results").expect("previous");
    let st = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 4; exec {} run dpo --inputs {input} --out {output}",
            env!("CARGO_BIN_EXE_liger")
        ))
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success(), "the write should fail: {err}");
    assert!(err.contains("previous file is unchanged"), "{err}");
    assert_eq!(
        std::fs::read(&output).expect("output"),
        b"previous results",
        "the previous output was destroyed"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    // Without the limit the same run replaces it.
    let st = liger()
        .args(["run", "dpo", "--inputs", &input, "--out", &output])
        .output()
        .expect("runs");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(
        liger::io::read(&output)
            .expect("output")
            .contains_key("loss")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `MiB` figure after `label` in `liger run`'s report.
fn reported_mib(stdout: &str, label: &str) -> f64 {
    let at = stdout
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in the report:\n{stdout}"));
    stdout[at + label.len()..]
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{label}`:\n{stdout}"))
}

/// Host memory honesty: the batch is read through a memory map and converted per chunk, so
/// the heap peak follows the budget, not the file. A bf16 DPO batch with a reference head
/// whose activations (64 MiB as f32) dwarf the budget: the counting allocator's peak stays
/// within 1.5x the budget plus the returned gradients (the budget already counts the f32
/// copies of both `W` and, for bf16 gradients, the f32 accumulators). Copying the activations
/// to f32, as the executor once did, adds 64 MiB and fails this.
#[test]
fn host_heap_follows_the_budget_not_the_file() {
    let (s, t, h, v) = (64usize, 512usize, 256usize, 2048usize);
    let mut rng = fastrand::Rng::with_seed(11);
    let bf = |n: usize, sd: f64, rng: &mut fastrand::Rng| {
        OwnedData::BF16(
            randn(rng, n, sd)
                .into_iter()
                .map(half::bf16::from_f32)
                .collect(),
        )
    };
    let mut f = BTreeMap::new();
    for head in ["policy", "reference"] {
        f.insert(
            format!("{head}.x"),
            OwnedTensor {
                shape: vec![s, t, h],
                data: bf(s * t * h, 1.0, &mut rng),
            },
        );
        f.insert(
            format!("{head}.w"),
            OwnedTensor {
                shape: vec![v, h],
                data: bf(v * h, 0.05, &mut rng),
            },
        );
    }
    let tg: Vec<i32> = targets(&mut rng, s, t, v, -100)
        .into_iter()
        .map(|x| x as i32)
        .collect();
    f.insert(
        "target".to_string(),
        OwnedTensor {
            shape: vec![s, t],
            data: OwnedData::I32(tg),
        },
    );
    let input = tmp("heap.safetensors");
    liger::io::write(&input, &f).expect("writes");
    drop(f);
    let file_mib = std::fs::metadata(&input).expect("input").len() as f64 / 1048576.0;
    for (grad_dtype, budget_mib) in [("f32", 16.0), ("bf16", 48.0)] {
        let st = liger()
            .args([
                "run",
                "dpo",
                "--inputs",
                &input,
                "--chunk-memory",
                &format!("{budget_mib}MiB"),
                "--grad-dtype",
                grad_dtype,
            ])
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&st.stdout).into_owned();
        assert!(
            st.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let peak = reported_mib(&stdout, "host heap peak ");
        let grads = reported_mib(&stdout, "returned gradients ");
        let copied = reported_mib(&stdout, "inputs copied out of the file ");
        let bound = 1.5 * budget_mib + grads;
        println!(
            "file {file_mib:.1} MiB, {grad_dtype} gradients, budget {budget_mib} MiB: heap peak {peak} MiB, returned gradients {grads} MiB; bound {bound:.1} MiB"
        );
        assert!(
            peak <= bound,
            "host heap peak {peak} MiB exceeds 1.5 x budget + gradients = {bound:.1} MiB\n{stdout}"
        );
        assert_eq!(copied, 0.0, "an aligned file is read in place");
    }
    let _ = std::fs::remove_file(&input);
}

/// Random data for input `p` (by kind) into `f`.
fn fill(
    p: &liger::ParamInfo,
    f: &mut BTreeMap<String, OwnedTensor>,
    rng: &mut fastrand::Rng,
    (s, t, h, v): (usize, usize, usize, usize),
) {
    use liger::ParamKind as K;
    let mut put = |name: String, shape: Vec<usize>, data: OwnedData| {
        f.insert(name, OwnedTensor { shape, data });
    };
    let n = p.name.to_string();
    match p.kind {
        K::Logits | K::Frozen => {
            // A frozen head may have its own hidden size.
            let hh = if p.kind == K::Frozen { h + 2 } else { h };
            put(
                format!("{n}.x"),
                vec![s, t, hh],
                OwnedData::F32(randn(rng, s * t * hh, 1.0)),
            );
            put(
                format!("{n}.w"),
                vec![v, hh],
                OwnedData::F32(randn(rng, v * hh, 0.4)),
            );
        }
        K::Target => put(n, vec![s, t], OwnedData::I64(targets(rng, s, t, v, -100))),
        K::Tokens => put(
            n,
            vec![s, t],
            OwnedData::I64((0..s * t).map(|_| rng.usize(0..v) as i64).collect()),
        ),
        K::RowInput => put(n, vec![s, t], OwnedData::F32(randn(rng, s * t, 1.0))),
        K::RowMask => put(
            n,
            vec![s, t],
            OwnedData::Bool((0..s * t).map(|i| i % t == 0 || i % 3 != 1).collect()),
        ),
        K::SeqInput => put(n, vec![s], OwnedData::F32(randn(rng, s, 1.0))),
        K::SeqMask => put(
            n,
            vec![s],
            OwnedData::Bool((0..s).map(|i| i % 2 == 0).collect()),
        ),
        K::VocabInput => put(n, vec![v], OwnedData::F32(randn(rng, v, 1.0))),
        K::ScalarInput => put(n, vec![], OwnedData::F32(vec![0.3])),
        K::Hyper | K::VariantBool | K::VariantEnum => {}
    }
}

/// Every built-in runs from a safetensors file holding its required inputs (by kind, plus
/// the optional one a loss says it needs when none of a choice is given), and the command
/// line's loss, metrics and gradients are bitwise the library's on the same data.
#[test]
fn every_builtin_runs_from_safetensors() {
    use liger::ParamKind as K;
    let dims = (4usize, 19usize, 7usize, 53usize);
    for loss in liger::losses::builtin() {
        let name = loss.name();
        let mut rng = fastrand::Rng::with_seed(11);
        let mut chosen: Vec<&liger::ParamInfo> =
            loss.params().iter().filter(|p| !p.optional).collect();
        let input = tmp(&format!("{name}_all_in.safetensors"));
        let output = tmp(&format!("{name}_all_out.safetensors"));
        let mut f = BTreeMap::new();
        for p in &chosen {
            fill(p, &mut f, &mut rng, dims);
        }
        let run = |f: &BTreeMap<String, OwnedTensor>| {
            liger::io::write(&input, f).expect("writes");
            liger()
                .args(["run", name, "--inputs", &input, "--out", &output])
                .output()
                .expect("runs")
        };
        let mut st = run(&f);
        // A loss that needs one of several optional inputs names it: give that one.
        let err = String::from_utf8_lossy(&st.stderr).into_owned();
        if let Some(need) = err
            .split("it needs input `")
            .nth(1)
            .and_then(|r| r.split('`').next())
        {
            let p = loss.param(need).expect("the needed input is a parameter");
            fill(p, &mut f, &mut rng, dims);
            chosen.push(p);
            st = run(&f);
        }
        assert!(
            st.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&st.stdout),
            String::from_utf8_lossy(&st.stderr)
        );
        let got = liger::io::read(&output).expect("reads the output");
        // The library on the same tensors.
        let file = liger::io::read(&input).expect("reads the input");
        let mut set = InputSet::new();
        for p in &chosen {
            match p.kind {
                K::Logits | K::Frozen => {
                    set = set.head(
                        p.name,
                        Head::new(
                            file[&format!("{}.x", p.name)].view().expect("x"),
                            file[&format!("{}.w", p.name)].view().expect("w"),
                        ),
                    );
                }
                K::Hyper | K::VariantBool | K::VariantEnum => {}
                _ => set = set.tensor(p.name, file[p.name].view().expect("tensor")),
            }
        }
        let want = liger::run(
            loss,
            &liger::Runtime::cpu(),
            &set,
            &ParamSet::new(),
            &liger::RunOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let f32s = |k: &str| match &got[k].data {
            OwnedData::F32(x) => x.clone(),
            other => panic!("{name} {k}: {other:?}"),
        };
        assert_eq!(
            f32s("loss")[0].to_bits(),
            want.loss.to_bits(),
            "{name}: loss"
        );
        assert!(want.loss.is_finite(), "{name}: {}", want.loss);
        assert!(!want.grads.is_empty(), "{name}: no gradient");
        for g in &want.grads {
            assert_eq!(
                f32s(&format!("grad.{}.x", g.head)),
                g.x.as_ref().expect("gradient").to_f32(),
                "{name}"
            );
            assert_eq!(
                f32s(&format!("grad.{}.w", g.head)),
                g.w.as_ref().expect("gradient").to_f32(),
                "{name}"
            );
        }
        for p in chosen.iter().filter(|p| p.kind == K::Frozen) {
            assert!(
                !got.contains_key(&format!("grad.{}.x", p.name)),
                "{name}: {} is frozen",
                p.name
            );
        }
        for m in &want.metrics {
            assert_eq!(f32s(&format!("metric.{}", m.name)), m.values, "{name}");
        }
    }
}

/// `--grads x` (a frozen lm-head weight) writes only `dx`, bitwise the full run's; `--grads
/// none` writes no gradient; a bad list names the bad entry.
#[test]
fn run_writes_only_the_gradients_asked_for() {
    let input = tmp("grads_in.safetensors");
    dpo_file(&input);
    let mut outs = Vec::new();
    for spec in ["x,w,b", "x", "none"] {
        let output = tmp(&format!("grads_out_{}.safetensors", spec.replace(',', "")));
        let st = liger()
            .args([
                "run", "dpo", "--inputs", &input, "--out", &output, "--grads", spec,
            ])
            .output()
            .expect("runs");
        assert!(
            st.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        outs.push(liger::io::read(&output).expect("reads"));
    }
    let (all, x_only, none) = (&outs[0], &outs[1], &outs[2]);
    assert!(all.contains_key("grad.policy.w") && all.contains_key("grad.policy.b"));
    assert_eq!(x_only["grad.policy.x"].data, all["grad.policy.x"].data);
    assert!(!x_only.contains_key("grad.policy.w") && !x_only.contains_key("grad.policy.b"));
    assert!(
        !none.keys().any(|k| k.starts_with("grad.")),
        "{:?}",
        none.keys()
    );
    assert_eq!(none["loss"].data, all["loss"].data);
    fails_with(
        &["run", "dpo", "--inputs", &input, "--grads", "x,dw"],
        "`dw` is not a gradient",
    );
}
