//! `liger ir …` and `liger cache …`: every stage of a built-in loss or a `.lir` file, and the
//! cache inspection commands (which need NVRTC for `warm`; they skip without it unless
//! LIGER_REQUIRE_NVRTC=1).

use std::process::Command;

fn liger(args: &[&str], cache: Option<&std::path::Path>) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_liger"));
    c.args(args);
    if let Some(d) = cache {
        c.env("LIGER_CACHE_DIR", d);
    }
    let out = c.output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ir_commands_show_every_stage() {
    let (ok, out, _) = liger(
        &[
            "ir",
            "check",
            "dpo",
            "--variant",
            "loss_type=Hinge",
            "--variant",
            "reference=absent",
        ],
        None,
    );
    assert!(ok);
    assert!(
        out.contains("input ref_logps: seq_input") && !out.contains("input reference:"),
        "{out}"
    );
    assert!(out.contains("relu") && out.contains("; ok:"), "{out}");
    let (ok, out, _) = liger(&["ir", "grad", "flce"], None);
    assert!(ok && out.contains("grad logits = "), "{out}");
    let (ok, out, _) = liger(&["ir", "schedule", "jsd"], None);
    assert!(ok && out.contains("row-local: true"), "{out}");
    let (ok, out, _) = liger(
        &[
            "ir",
            "emit",
            "dpo",
            "--schedule",
            "two-pass",
            "--dtype",
            "f16",
        ],
        None,
    );
    assert!(
        ok && out.contains("liger_bwd") && out.contains("liger_f2h"),
        "{out}"
    );
    let file = format!(
        "{}/liger-ir/tests/losses/dpo.lir",
        env!("CARGO_MANIFEST_DIR")
    );
    let (ok, out, _) = liger(&["ir", "schedule", &file], None);
    assert!(ok && out.contains("group: pair"), "{out}");
    // Errors: a refused specialisation, a bad variant, an invalid file.
    let (ok, _, err) = liger(
        &[
            "ir",
            "check",
            "dpo",
            "--variant",
            "reference=absent",
            "--variant",
            "ref_logps=absent",
        ],
        None,
    );
    assert!(!ok && err.contains("needs input `ref_logps`"), "{err}");
    let (ok, _, err) = liger(&["ir", "emit", "flce", "--schedule", "deferred"], None);
    assert!(!ok && err.contains("applicable"), "{err}");
    let bad = std::env::temp_dir().join(format!("liger-bad-{}.lir", std::process::id()));
    std::fs::write(&bad, "; liger-ir v1\nloss bad {\n  input z: logits\n  input t: target\n  lp = logprob z, t\n  c = chosen lp\n  loss = c\n}\n").expect("writes");
    let (ok, _, err) = liger(&["ir", "check", bad.to_str().expect("path")], None);
    assert!(
        !ok && err.contains("error(level-misuse)") && err.contains("c = chosen lp"),
        "{err}"
    );
    let _ = std::fs::remove_file(bad);
}

#[test]
fn cache_commands_list_show_diff_and_clear() {
    if liger::runtime::cuda::libs::nvrtc().is_err() {
        assert!(
            std::env::var("LIGER_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
            "NVRTC required"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("liger-cli-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Some(dir.as_path());
    let (ok, out, _) = liger(&["cache", "path"], d);
    assert!(ok && out.trim() == dir.to_str().expect("path"), "{out}");
    for dtype in ["bf16", "f32"] {
        let (ok, out, err) = liger(
            &[
                "cache",
                "warm",
                "flce",
                "--variant",
                "class_weight=absent",
                "--variant",
                "token_weight=absent",
                "--arch",
                "sm_80",
                "--dtype",
                dtype,
                "--schedule",
                "fused",
            ],
            d,
        );
        assert!(ok && out.contains("from compiled"), "{out}{err}");
    }
    // Two FLCE modules and the runtime's I/O kernels.
    let (ok, out, _) = liger(&["cache", "ls"], d);
    assert!(ok && out.contains("3 entries"), "{out}");
    let (ok, out, _) = liger(&["cache", "ls", "--json"], d);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(ok && v.as_array().map(Vec::len) == Some(3));
    let keys: Vec<String> = v
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["components"]["schedule"].is_string())
        .map(|e| e["key"].as_str().expect("key").to_string())
        .collect();
    assert_eq!(keys.len(), 2, "{out}");
    let (ok, out, _) = liger(&["cache", "diff", &keys[0], &keys[1]], d);
    assert!(
        ok && out.contains("dtype:") && out.lines().count() == 1,
        "{out}"
    );
    let (ok, out, _) = liger(&["cache", "show", &keys[0][..8], "--cuda"], d);
    assert!(ok && out.contains("liger_fused"), "{out}");
    let (ok, out, _) = liger(&["cache", "show", &keys[0][..8], "--meta"], d);
    assert!(ok && out.contains("\"registers\""), "{out}");
    let (ok, out, _) = liger(&["cache", "show", &keys[0][..8]], d);
    assert!(ok && out.contains("arch") && out.contains("sm_80"), "{out}");
    let (ok, out, _) = liger(&["cache", "stats", "--json"], d);
    assert!(ok && out.contains("\"entries\":3"), "{out}");
    let (ok, out, _) = liger(&["cache", "prune", "--max-size", "1"], d);
    assert!(ok && out.contains("removed 3"), "{out}");
    let (ok, _, err) = liger(&["cache", "show", "zzzz"], d);
    assert!(!ok && err.contains("no single entry"), "{err}");
    let (ok, out, _) = liger(&["cache", "clear"], d);
    assert!(ok && out.contains("removed 0"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--loss FILE` in every subcommand that names a loss; a broken file is one clear report with
/// its position; `cache warm --loss` writes the entry a run of the file reads (NVRTC needed).
#[test]
fn loss_files_in_every_subcommand() {
    let (ok, out, err) = liger(&["losses", "--loss", "examples/losses/preference.rs"], None);
    assert!(
        ok && out.contains("orpo") && out.contains("ipo"),
        "{out}{err}"
    );
    let (ok, out, _) = liger(
        &[
            "ir",
            "grad",
            "--loss",
            "examples/losses/grpo.rs",
            "--variant",
            "ref_logps=absent",
        ],
        None,
    );
    assert!(ok && out.contains("grad policy"), "{out}");
    let (ok, out, _) = liger(
        &[
            "ir",
            "schedule",
            "--loss",
            "examples/losses/preference.rs",
            "--fn",
            "ipo",
        ],
        None,
    );
    assert!(
        ok && out.contains("candidates: group-aligned, deferred, two-pass"),
        "{out}"
    );
    let (ok, _, err) = liger(
        &["ir", "schedule", "--loss", "examples/losses/preference.rs"],
        None,
    );
    assert!(
        !ok && err.contains("holds several losses (orpo, ipo)"),
        "{err}"
    );
    let (ok, _, err) = liger(&["run", "--fn", "orpo", "--inputs", "x.safetensors"], None);
    assert!(!ok && err.contains("--loss FILE"), "{err}");

    // A mistake in a loss file: the macro's message, at its line and column, with a caret.
    let dir = std::env::temp_dir().join(format!("liger-cli-lossfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.rs");
    std::fs::write(
        &bad,
        "use liger::prelude::*;\n\n#[chunked_loss]\npub fn bad(z: Logits, t: Target) -> Loss {\n    mean(-lopgrob(z, t))\n}\n",
    )
    .expect("writes");
    let (ok, _, err) = liger(&["losses", "--loss", bad.to_str().expect("path")], None);
    assert!(!ok, "{err}");
    assert!(
        err.starts_with("error: unknown function `lopgrob`: did you mean `logprob`?"),
        "{err}"
    );
    assert!(
        err.contains("bad.rs:5:11") && err.contains("^^^^^^^"),
        "{err}"
    );
    assert!(!err.contains("error: error"), "{err}");

    if liger::runtime::cuda::libs::nvrtc().is_err() {
        assert!(
            std::env::var("LIGER_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
            "NVRTC required"
        );
        return;
    }
    let cache = dir.join("cache");
    let (ok, out, err) = liger(
        &[
            "cache",
            "warm",
            "--loss",
            "examples/losses/simpo.rs",
            "--arch",
            "sm_90",
        ],
        Some(&cache),
    );
    assert!(ok && out.contains("from compiled"), "{out}{err}");
    // Warming again finds every entry on disk: the keys are stable.
    let (ok, out, err) = liger(
        &[
            "cache",
            "warm",
            "--loss",
            "examples/losses/simpo.rs",
            "--arch",
            "sm_90",
        ],
        Some(&cache),
    );
    assert!(ok && !out.contains("from compiled"), "{out}{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
