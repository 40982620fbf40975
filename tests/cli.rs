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
    assert_eq!(names, ["dpo", "flce", "jsd"]);
    let dpo = &v[0];
    let lt = dpo["params"]
        .as_array()
        .expect("params")
        .iter()
        .find(|p| p["name"] == "loss_type")
        .expect("loss_type");
    assert_eq!(lt["default"], "Sigmoid");
    assert_eq!(lt["choices"], serde_json::json!(["Sigmoid", "Hinge"]));
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
            "loss_type=ipo",
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
    fails_with(
        &["run", "flce", "--inputs", &input],
        "no tensor `logits.x` for head `logits`",
    );
    fails_with(
        &["run", "dpo", "--inputs", &input, "--ignore-index", "42"],
        "not a token id",
    );
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
