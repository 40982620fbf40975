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
        &EmitOptions::new(r.dtype),
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
    compile(&p, s, &EmitOptions::new(GemmDType::BF16), "sm_90", cache).expect("compiles")
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
            "schema",
            "compiler",
            "ir",
            "schedule",
            "dtype",
            "arch",
            "nvrtc",
            "nvrtc_options"
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
                &EmitOptions::new(GemmDType::BF16),
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
    let f32_opts = EmitOptions::new(GemmDType::F32);
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
    let dir = root.join("v2").join(k.key.key());
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
                .any(|w| w.contains("moved aside")),
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
    let leftovers: Vec<_> = std::fs::read_dir(root.join("v2"))
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

// ---- Trust nothing on disk: attacks on the disk tier (fake binaries, no NVRTC needed). ----

use liger::runtime::cache::{Artifacts, Binary};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn fake_parts(tag: &str) -> KeyParts {
    KeyParts::new()
        .with("compiler", "test")
        .with("ir", tag)
        .with("arch", "sm_90")
}

fn fake_binary(tag: &str) -> Binary {
    Binary {
        arch: "sm_90".into(),
        bytes: format!("CUBIN for {tag} {}", "x".repeat(200)).into_bytes(),
        is_ptx: false,
        registers: vec![("k".into(), 32)],
        log: String::new(),
        compile_ms: 1.0,
    }
}

/// Gets `tag`'s binary through `cache`, compiling the fake binary when the disk does not serve
/// it: the origin and the bytes served.
fn fetch(cache: &Cache, tag: &str) -> (Origin, Vec<u8>) {
    let (b, o) = cache
        .get_or_compile(&fake_parts(tag), &Artifacts::default(), || {
            Ok(fake_binary(tag))
        })
        .expect("served or compiled");
    (o, b.bytes.clone())
}

fn entry_dir(root: &std::path::Path, tag: &str) -> PathBuf {
    root.join("v2").join(fake_parts(tag).key())
}

fn fresh_cache(root: &std::path::Path) -> Cache {
    Cache::open(Some(root.to_path_buf()), Mode::ReadWrite)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read").flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// An attack: what it does, the tampering, and the check that must catch it.
type Attack = (&'static str, Box<dyn Fn(&std::path::Path)>, &'static str);

/// Each attack of the hostile-user review, and that the entry is never served afterwards but
/// recompiled (with a warning naming the failed check), and served again once rewritten.
#[test]
fn attacks_on_entries_are_refused_and_recompiled() {
    let root = temp_root("attacks");
    let attacks: Vec<Attack> = vec![
        (
            "the entry of another key copied over this one",
            Box::new(|root: &std::path::Path| {
                let (a, b) = (entry_dir(root, "a"), entry_dir(root, "b"));
                std::fs::remove_dir_all(&b).expect("rm");
                copy_dir(&a, &b);
            }),
            "disagree",
        ),
        (
            "a flipped binary byte with size and checksum rewritten",
            Box::new(|root: &std::path::Path| {
                let d = entry_dir(root, "b");
                let mut bytes = std::fs::read(d.join("kernel.cubin")).expect("bin");
                bytes[5] ^= 0x20;
                std::fs::write(d.join("kernel.cubin"), &bytes).expect("write");
                let mut meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(d.join("meta.json")).expect("meta"))
                        .expect("json");
                meta["size"] = serde_json::json!(bytes.len());
                meta["seal"] = serde_json::json!(blake3::hash(&bytes).to_hex().to_string());
                std::fs::write(d.join("meta.json"), meta.to_string()).expect("write");
            }),
            "seal",
        ),
        (
            "a binary path that leaves the entry",
            Box::new(|root: &std::path::Path| {
                let d = entry_dir(root, "b");
                let mut meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(d.join("meta.json")).expect("meta"))
                        .expect("json");
                meta["binary"] = serde_json::json!("/etc/hostname");
                std::fs::write(d.join("meta.json"), meta.to_string()).expect("write");
            }),
            "not kernel.cubin",
        ),
        (
            "the binary replaced by a symlink",
            Box::new(|root: &std::path::Path| {
                let d = entry_dir(root, "b");
                std::fs::remove_file(d.join("kernel.cubin")).expect("rm");
                std::os::unix::fs::symlink(
                    entry_dir(root, "a").join("kernel.cubin"),
                    d.join("kernel.cubin"),
                )
                .expect("symlink");
            }),
            "not a regular file",
        ),
        (
            "the entry replaced by a symlink to another entry",
            Box::new(|root: &std::path::Path| {
                let b = entry_dir(root, "b");
                std::fs::remove_dir_all(&b).expect("rm");
                let elsewhere = root.join("elsewhere");
                copy_dir(&entry_dir(root, "a"), &elsewhere);
                std::os::unix::fs::symlink(&elsewhere, &b).expect("symlink");
            }),
            "symbolic link",
        ),
        (
            "a missing key.json",
            Box::new(|root: &std::path::Path| {
                std::fs::remove_file(entry_dir(root, "b").join("key.json")).expect("rm");
            }),
            "key.json",
        ),
    ];
    for (what, attack, check) in attacks {
        let _ = std::fs::remove_dir_all(&root);
        let c = fresh_cache(&root);
        let (_, a_bytes) = fetch(&c, "a");
        let (_, b_bytes) = fetch(&c, "b");
        assert_ne!(a_bytes, b_bytes);
        attack(&root);
        // `ls` marks it broken (or the store has no such entry any more).
        let listed = fresh_cache(&root).entries();
        let b_key = fake_parts("b").key();
        assert!(
            listed.iter().any(|e| e.key == b_key && e.broken.is_some()),
            "{what}: not listed as broken: {listed:?}"
        );
        let c = fresh_cache(&root);
        let (origin, bytes) = fetch(&c, "b");
        assert_eq!(bytes, b_bytes, "{what}: served the wrong binary");
        match &origin {
            Origin::Compiled { why } => assert!(why.contains(check), "{what}: {why}"),
            other => panic!("{what}: served from {other:?}"),
        }
        assert!(
            c.warnings
                .lock()
                .expect("lock")
                .iter()
                .any(|w| w.contains("moved aside")),
            "{what}: no warning"
        );
        // Rewritten: served again, from disk.
        assert_eq!(fetch(&fresh_cache(&root), "b").0, Origin::Disk, "{what}");
        assert!(
            std::fs::symlink_metadata(root.join("elsewhere/kernel.cubin")).is_err()
                || std::fs::read(root.join("elsewhere/kernel.cubin")).is_ok(),
            "{what}: nothing outside the store was removed"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Entries are owner-only whatever the umask; a cache writable by others (or another user's)
/// is not used unless the user opts in.
#[test]
fn the_cache_is_private_and_refuses_shared_directories() {
    let root = temp_root("perm");
    let c = fresh_cache(&root);
    let _ = fetch(&c, "p");
    let d = entry_dir(&root, "p");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("md").permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&d), 0o700);
    assert_eq!(mode(&d.join("kernel.cubin")), 0o600);
    assert_eq!(mode(&d.join("meta.json")), 0o600);
    assert_eq!(mode(&root.join(".secret")), 0o600);
    // World-writable: not used, with a warning that says how to fix it.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let c = fresh_cache(&root);
    assert!(c.root().is_none());
    let w = c.warnings.lock().expect("lock").join("\n");
    assert!(
        w.contains("writable by everyone") && w.contains("chmod 700"),
        "{w}"
    );
    let (origin, _) = fetch(&c, "p");
    assert!(matches!(origin, Origin::Compiled { .. }));
    // Another owner (only root can make one).
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let me = std::fs::metadata(&root).expect("md").uid();
    if me == 0 {
        std::os::unix::fs::chown(&root, Some(12345), None).expect("chown");
        let c = fresh_cache(&root);
        assert!(c.root().is_none());
        assert!(
            c.warnings
                .lock()
                .expect("lock")
                .join("\n")
                .contains("belongs to user 12345")
        );
        std::os::unix::fs::chown(&root, Some(0), None).expect("chown back");
    } else {
        eprintln!("skipping the other-owner case: not running as root");
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// `clear` and `prune` never follow a symlink out of the store and collect orphans,
/// temporaries and trash.
#[test]
fn housekeeping_stays_inside_and_collects_leftovers() {
    let root = temp_root("house");
    let c = fresh_cache(&root);
    let _ = fetch(&c, "h1");
    let _ = fetch(&c, "h2");
    let store = root.join("v2");
    // Leftovers: a temporary and trash of a crashed writer, an orphan directory, a symlink.
    std::fs::create_dir_all(store.join(".tmp-deadbeef-1-2")).expect("tmp");
    std::fs::write(store.join(".tmp-deadbeef-1-2/kernel.cubin"), b"x").expect("tmp");
    std::fs::create_dir_all(store.join(".trash-deadbeef-1-2")).expect("trash");
    std::fs::create_dir_all(store.join("0123456789abcdef")).expect("orphan");
    let outside = root.with_extension("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("precious"), b"keep me").expect("precious");
    std::os::unix::fs::symlink(&outside, store.join("fedcba9876543210")).expect("symlink");
    let listed = c.entries();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(listed.iter().filter(|e| e.broken.is_some()).count(), 2);
    // Prune with room to spare removes the broken entries only (temporaries are recent).
    assert_eq!(c.prune(1 << 40).expect("prunes"), 2);
    assert!(outside.join("precious").exists());
    assert_eq!(c.entries().len(), 2);
    // Clear removes everything inside, temporaries included, and nothing outside.
    assert_eq!(c.clear().expect("clears"), 2);
    let left: Vec<_> = std::fs::read_dir(&store)
        .expect("store")
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(outside.join("precious").exists());
    // A symlinked store is refused (clear would follow it out of the cache).
    std::fs::remove_dir_all(&store).expect("rm");
    std::os::unix::fs::symlink(&outside, &store).expect("symlink store");
    let c = fresh_cache(&root);
    assert!(c.root().is_none(), "a symlinked store is not used");
    assert!(outside.join("precious").exists());
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&outside);
}
