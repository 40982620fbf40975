//! The kernel cache without a GPU: keys, the disk tier, concurrency, corruption, misses.
//! NVRTC (from its wheel) compiles; loading is the only GPU step and is not exercised here.
//! Tests that compile skip with a reason when NVRTC is missing, unless LIGER_REQUIRE_NVRTC=1.

use std::path::PathBuf;
use std::process::Command;

use liger::ChunkedLoss;
use liger::kernels::{KernelRequest, compile, key_parts, stages};
use liger::prelude::*;
use liger::runtime::cache::{Cache, KeyParts, Mode, Origin};

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

fn req() -> KernelRequest {
    KernelRequest {
        vocab: 123,
        hidden: vec![31],
        chunk_rows: 100,
        seq_len: 47,
        ..KernelRequest::default()
    }
}

fn parts_of(loss: &dyn ChunkedLoss, r: &KernelRequest) -> KeyParts {
    let spec = &loss.specializations()[0];
    let st = stages(loss, spec, r.strategy, r.gemm_dtype).expect("stages");
    key_parts(&st, spec, r, (13, 0))
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
    let changes: Vec<(&str, KernelRequest)> = vec![
        (
            "vocab",
            KernelRequest {
                vocab: 124,
                ..base.clone()
            },
        ),
        (
            "hidden",
            KernelRequest {
                hidden: vec![32, 31],
                ..base.clone()
            },
        ),
        (
            "bucket (rows)",
            KernelRequest {
                chunk_rows: 200,
                ..base.clone()
            },
        ),
        (
            "bucket (seq)",
            KernelRequest {
                seq_len: 65,
                ..base.clone()
            },
        ),
        (
            "arch",
            KernelRequest {
                arch: "sm_80".into(),
                ..base.clone()
            },
        ),
        (
            "driver",
            KernelRequest {
                driver: Some("13000".into()),
                ..base.clone()
            },
        ),
        (
            "dtype",
            KernelRequest {
                gemm_dtype: liger::ir::emit::GemmDType::F32,
                ..base.clone()
            },
        ),
        (
            "schedule",
            KernelRequest {
                strategy: Some(liger::Strategy::TwoPass),
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
    // Same bucket: 100 and 120 rows both round to 128; hyperparameters never enter the key.
    assert_eq!(
        parts_of(
            &Dpo,
            &KernelRequest {
                chunk_rows: 120,
                ..base.clone()
            }
        )
        .key(),
        k0
    );
    // The specialisation (and so the IR) and the NVRTC version.
    let spec1 = &Dpo.specializations()[1];
    let st = stages(&Dpo, spec1, None, base.gemm_dtype).expect("stages");
    assert_ne!(key_parts(&st, spec1, &base, (13, 0)).key(), k0);
    let spec0 = &Dpo.specializations()[0];
    let st = stages(&Dpo, spec0, None, base.gemm_dtype).expect("stages");
    assert_ne!(key_parts(&st, spec0, &base, (13, 1)).key(), k0);
    // Each named component, one at a time.
    let p = parts_of(&Dpo, &base);
    for i in 0..p.components.len() {
        let mut q = p.clone();
        q.components[i].1.push('x');
        assert_ne!(q.key(), k0, "component {}", q.components[i].0);
    }
}

#[test]
fn disk_hits_misses_explain_and_modes() {
    if !nvrtc() {
        return;
    }
    let root = temp_root("modes");
    let cache = Cache::open(Some(root.clone()), Mode::ReadWrite);
    let spec = &Flce.specializations()[0];
    let k = compile(&Flce, spec, &req(), &cache).expect("compiles");
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
    assert_eq!(
        compile(&Flce, spec, &req(), &cache).expect("hit").origin,
        Origin::Memory
    );
    let again = Cache::open(Some(root.clone()), Mode::ReadWrite);
    assert_eq!(
        compile(&Flce, spec, &req(), &again).expect("hit").origin,
        Origin::Disk
    );
    assert_eq!(again.entries()[0].hits, 1);
    // A miss explains itself.
    let r2 = KernelRequest {
        vocab: 124,
        ..req()
    };
    let miss = compile(&Flce, spec, &r2, &again).expect("compiles");
    match &miss.origin {
        Origin::Compiled { why } => assert!(why.contains("vocab: 123 -> 124"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(again.stats().entries, 2);
    // Read-only: serves entries, writes none.
    let ro = Cache::open(Some(root.clone()), Mode::ReadOnly);
    assert_eq!(
        compile(&Flce, spec, &req(), &ro).expect("hit").origin,
        Origin::Disk
    );
    compile(
        &Flce,
        spec,
        &KernelRequest {
            vocab: 125,
            ..req()
        },
        &ro,
    )
    .expect("compiles");
    assert_eq!(ro.stats().entries, 2, "read-only writes nothing");
    // Refresh: recompiles even with an entry.
    let rf = Cache::open(Some(root.clone()), Mode::Refresh);
    assert!(matches!(
        compile(&Flce, spec, &req(), &rf).expect("compiles").origin,
        Origin::Compiled { .. }
    ));
    // Off: no disk at all.
    let off = Cache::open(Some(root.clone()), Mode::Off);
    assert!(off.root().is_none());
    assert!(matches!(
        compile(&Flce, spec, &req(), &off).expect("compiles").origin,
        Origin::Compiled { .. }
    ));
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
    let spec = &Jsd.specializations()[0];
    let fresh = || Cache::open(Some(root.clone()), Mode::ReadWrite);
    let k = compile(&Jsd, spec, &req(), &fresh()).expect("compiles");
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
        let r = compile(&Jsd, spec, &req(), &c).expect("recompiles");
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
        assert_eq!(
            compile(&Jsd, spec, &req(), &fresh()).expect("hit").origin,
            Origin::Disk,
            "{what}"
        );
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
                "cache", "warm", "dpo", "--arch", "sm_80", "--vocab", "1000", "--hidden", "64",
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
    assert_eq!(es.len(), 1, "one entry: {es:?}");
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
            "cache", "warm", "dpo", "--arch", "sm_80", "--vocab", "1000", "--hidden", "64",
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
