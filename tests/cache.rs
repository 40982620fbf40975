//! The kernel cache without a GPU: keys, the disk tier, concurrency, corruption, misses.
//! NVRTC (from its wheel) compiles; loading is the only GPU step and is not exercised here.
//! Tests that compile skip with a reason when NVRTC is missing, unless LIGER_REQUIRE_NVRTC=1.

use std::path::PathBuf;
use std::process::Command;

use liger::ChunkedLoss;
use liger::ir::emit::{EmitOptions, GemmDType};
use liger::prelude::*;
use liger::runtime::cache::key::{Target, module_key};
use liger::runtime::cache::{Cache, KeyParts, Mode, Origin};
use liger::runtime::cuda::compile::{Compiled, compile};
use liger::{Pipeline, Strategy};

/// Cross-entropy; `ce_copy` below is the same loss under another name, elsewhere in the file.
#[chunked_loss]
pub fn ce_original(logits: Logits, target: Target, #[default(0.1)] smoothing: f32) -> Loss {
    let lse = logsumexp(logits);
    mean(
        (1.0 - smoothing) * (lse - at_target(logits, target))
            + smoothing * (lse - sum_vocab(logits) / vocab_size()),
    )
}

fn nvrtc() -> bool {
    match liger::runtime::cuda::libs::nvrtc() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("LIGER_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
                "NVRTC required: {e}"
            );
            eprintln!("skipping: {e}");
            false
        }
    }
}

fn temp_root(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("liger-cache-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// What a key is built from, besides the loss.
#[derive(Clone)]
struct Req {
    strategy: Option<Strategy>,
    dtype: GemmDType,
    arch: &'static str,
    nvrtc: (i32, i32),
}

fn req() -> Req {
    Req {
        strategy: None,
        dtype: GemmDType::BF16,
        arch: "sm_90",
        nvrtc: (13, 0),
    }
}

fn pipe(loss: &dyn ChunkedLoss, spec: usize) -> Pipeline {
    liger::pipeline(loss, &loss.specializations()[spec]).expect("pipeline")
}

fn key_of(p: &Pipeline, r: &Req) -> KeyParts {
    let s = p.strategy(r.strategy).expect("applies");
    module_key(
        p,
        s,
        &EmitOptions {
            gemm_dtype: r.dtype,
        },
        &Target {
            arch: r.arch.into(),
            nvrtc: r.nvrtc,
        },
    )
}

fn parts_of(loss: &dyn ChunkedLoss, r: &Req) -> KeyParts {
    key_of(&pipe(loss, 0), r)
}

fn build(loss: &dyn ChunkedLoss, cache: &Cache) -> Compiled {
    let p = pipe(loss, 0);
    let s = p.strategy(None).expect("a strategy");
    compile(
        &p,
        s,
        &EmitOptions {
            gemm_dtype: GemmDType::BF16,
        },
        "sm_90",
        cache,
    )
    .expect("compiles")
}

#[test]
fn renaming_or_moving_a_loss_keeps_its_key() {
    let a = parts_of(&CeOriginal, &req());
    let b = parts_of(&CeCopy, &req());
    assert_eq!(a.key(), b.key(), "{a:?}\n{b:?}");
    // The source locations differ, so the printed IR differs; the key does not.
    let ta = CeOriginal.specializations()[0].ir.expect("IR");
    let tb = CeCopy.specializations()[0].ir.expect("IR");
    assert_ne!(ta, tb);
}

#[test]
fn every_key_component_changes_the_key() {
    let base = req();
    let k0 = parts_of(&Dpo, &base).key();
    let changes: Vec<(&str, Req)> = vec![
        (
            "arch",
            Req {
                arch: "sm_80",
                ..base.clone()
            },
        ),
        (
            "nvrtc",
            Req {
                nvrtc: (13, 1),
                ..base.clone()
            },
        ),
        (
            "dtype",
            Req {
                dtype: GemmDType::F32,
                ..base.clone()
            },
        ),
        (
            "schedule",
            Req {
                strategy: Some(Strategy::TwoPass),
                ..base.clone()
            },
        ),
    ];
    for (what, r) in changes {
        assert_ne!(
            parts_of(&Dpo, &r).key(),
            k0,
            "changing {what} must change the key"
        );
    }
    // Another specialisation is another IR.
    assert_ne!(key_of(&pipe(&Dpo, 1), &base).key(), k0);
    // Each named component, one at a time; the components are exactly the codegen inputs.
    let p = parts_of(&Dpo, &base);
    let names: Vec<&str> = p.components.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "schema", "compiler", "ir", "schedule", "dtype", "arch", "nvrtc"
        ]
    );
    for i in 0..p.components.len() {
        let mut q = p.clone();
        q.components[i].1.push('x');
        assert_ne!(q.key(), k0, "component {}", q.components[i].0);
    }
}

/// `liger cache warm` writes exactly the keys a run's path derives: for every built-in loss,
/// every specialisation the command line can select and every schedule, the keys printed by
/// `warm` equal the keys of the pipeline `liger::pipeline_for` gives a run (the executors
/// compile through `runtime::cuda::compile` with that pipeline).
#[test]
fn warm_writes_the_keys_a_run_reads() {
    if !nvrtc() {
        return;
    }
    let root = temp_root("warm-run");
    let nv = liger::runtime::cuda::libs::nvrtc().expect("nvrtc").version;
    for (loss, given, variants) in [
        (&Flce as &dyn ChunkedLoss, vec!["logits", "target"], vec![]),
        (&Jsd, vec!["student", "teacher", "target"], vec![]),
        (
            &Dpo,
            vec!["policy", "reference", "target"],
            vec!["loss_type=Hinge"],
        ),
        (
            &Dpo,
            vec!["policy", "ref_logps", "target"],
            vec!["reference=absent"],
        ),
    ] {
        let mut args = vec!["cache", "warm", loss.name(), "--arch", "sm_90"];
        for v in &variants {
            args.extend(["--variant", v]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_liger"))
            .args(&args)
            .env("LIGER_CACHE_DIR", &root)
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut params = ParamSet::new();
        for v in variants.iter().filter(|v| !v.contains("absent")) {
            let (k, x) = v.split_once('=').expect("k=v");
            params = params.variant(k, x);
        }
        let (p, _) = liger::pipeline_for(loss, &given, &params).expect("run pipeline");
        for s in &p.schedule().candidates {
            let k = module_key(
                &p,
                *s,
                &EmitOptions {
                    gemm_dtype: GemmDType::BF16,
                },
                &Target {
                    arch: "sm_90".into(),
                    nvrtc: nv,
                },
            )
            .key();
            assert!(
                text.contains(&format!("key {k}")),
                "{} {s}: warm did not write the run's key {k}:\n{text}",
                loss.name()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn disk_hits_misses_explain_and_modes() {
    if !nvrtc() {
        return;
    }
    let root = temp_root("modes");
    let cache = Cache::open(Some(root.clone()), Mode::ReadWrite);
    let k = build(&Flce, &cache);
    assert!(
        matches!(&k.origin, Origin::Compiled { why } if why.contains("no entries")),
        "{:?}",
        k.origin
    );
    assert!(
        k.binary
            .registers
            .iter()
            .any(|(n, r)| n == "liger_fused" && *r > 0)
    );
    // Same process: memory. New cache object (a new process): disk.
    assert_eq!(build(&Flce, &cache).origin, Origin::Memory);
    let again = Cache::open(Some(root.clone()), Mode::ReadWrite);
    assert_eq!(build(&Flce, &again).origin, Origin::Disk);
    assert_eq!(again.entries()[0].hits, 1);
    // A miss explains itself.
    let p = pipe(&Flce, 0);
    let f32_opts = EmitOptions {
        gemm_dtype: GemmDType::F32,
    };
    let miss = compile(&p, Strategy::Fused, &f32_opts, "sm_90", &again).expect("compiles");
    match &miss.origin {
        Origin::Compiled { why } => assert!(why.contains("dtype: bf16 -> f32"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(again.stats().entries, 2);
    // Read-only: serves entries, writes none.
    let ro = Cache::open(Some(root.clone()), Mode::ReadOnly);
    assert_eq!(build(&Flce, &ro).origin, Origin::Disk);
    compile(&p, Strategy::TwoPass, &f32_opts, "sm_90", &ro).expect("compiles");
    assert_eq!(ro.stats().entries, 2, "read-only writes nothing");
    // Refresh: recompiles even with an entry.
    let rf = Cache::open(Some(root.clone()), Mode::Refresh);
    assert!(matches!(build(&Flce, &rf).origin, Origin::Compiled { .. }));
    // Off: no disk at all.
    let off = Cache::open(Some(root.clone()), Mode::Off);
    assert!(off.root().is_none());
    assert!(matches!(build(&Flce, &off).origin, Origin::Compiled { .. }));
    // Inspection: show the stored stages; clear.
    let e = again.get(&k.key.key()[..10]).expect("entry by prefix");
    assert!(e.file("kernel.cu").expect("source").contains("liger_fused"));
    assert!(
        e.file("grad.lir")
            .expect("grad")
            .starts_with("; liger-ir v1")
    );
    assert!(
        e.file("schedule.txt")
            .expect("schedule")
            .contains("row-local: true")
    );
    assert_eq!(again.clear().expect("clears"), 2);
    assert_eq!(again.stats().entries, 0);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn truncated_and_garbled_entries_are_recompiled_with_a_warning() {
    if !nvrtc() {
        return;
    }
    let root = temp_root("corrupt");
    let fresh = || Cache::open(Some(root.clone()), Mode::ReadWrite);
    let k = build(&Jsd, &fresh());
    let dir = root.join("v1").join(k.key.key());
    let cubin = dir.join("kernel.cubin");
    let good = std::fs::read(&cubin).expect("cubin");
    for (what, damage) in [
        (
            "truncated binary",
            Box::new(|| std::fs::write(&cubin, &good[..good.len() / 2]))
                as Box<dyn Fn() -> std::io::Result<()>>,
        ),
        (
            "garbled binary",
            Box::new(|| {
                let mut b = good.clone();
                b[100] ^= 0xff;
                std::fs::write(&cubin, b)
            }),
        ),
        (
            "garbled meta.json",
            Box::new(|| std::fs::write(dir.join("meta.json"), b"{ not json")),
        ),
        (
            "missing meta.json",
            Box::new(|| std::fs::remove_file(dir.join("meta.json"))),
        ),
    ] {
        damage().expect("damage the entry");
        let c = fresh();
        let r = build(&Jsd, &c);
        assert!(
            matches!(&r.origin, Origin::Compiled { why } if why.contains("unusable")),
            "{what}: {:?}",
            r.origin
        );
        assert!(
            c.warnings
                .lock()
                .expect("lock")
                .iter()
                .any(|w| w.contains("corrupt")),
            "{what}: no warning"
        );
        assert_eq!(
            std::fs::read(&cubin).expect("rewritten"),
            good,
            "{what}: entry restored"
        );
        assert_eq!(build(&Jsd, &fresh()).origin, Origin::Disk, "{what}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn two_processes_filling_one_entry_both_succeed() {
    if !nvrtc() {
        return;
    }
    let root = temp_root("race");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_liger"))
            .args([
                "cache",
                "warm",
                "dpo",
                "--arch",
                "sm_80",
                "--schedule",
                "two-pass",
                "--variant",
                "ref_logps=absent",
                "--variant",
                "reference=present",
            ])
            .env("LIGER_CACHE_DIR", &root)
            .spawn()
            .expect("spawns")
    };
    let (a, b) = (spawn(), spawn());
    let (ra, rb) = (
        a.wait_with_output().expect("waits"),
        b.wait_with_output().expect("waits"),
    );
    assert!(ra.status.success() && rb.status.success());
    let c = Cache::open(Some(root.clone()), Mode::ReadWrite);
    let es = c.entries();
    assert_eq!(es.len(), 2, "the loss's module and the I/O kernels: {es:?}");
    let leftovers: Vec<_> = std::fs::read_dir(root.join("v1"))
        .expect("store")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary directories left: {leftovers:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_liger"))
        .args([
            "cache",
            "warm",
            "dpo",
            "--arch",
            "sm_80",
            "--schedule",
            "two-pass",
            "--variant",
            "ref_logps=absent",
        ])
        .env("LIGER_CACHE_DIR", &root)
        .output()
        .expect("runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from disk"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// The same loss as `ce_original`, renamed and moved.
#[chunked_loss]
pub fn ce_copy(logits: Logits, target: Target, #[default(0.1)] smoothing: f32) -> Loss {
    let lse = logsumexp(logits);
    mean(
        (1.0 - smoothing) * (lse - at_target(logits, target))
            + smoothing * (lse - sum_vocab(logits) / vocab_size()),
    )
}
