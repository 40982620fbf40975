//! The executor's working memory stays within its budget, measured by a counting global
//! allocator (this file is its own test binary, and its tests run one at a time under a lock,
//! so nothing else allocates during a measurement). Peak extra memory = the allocator's peak
//! during the call minus what was allocated before it, minus the returned gradients (the rule
//! of `docs/architecture.md` "Measuring", with outputs allocated by the call).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use liger::prelude::*;
use liger::{RunOptions, Runtime, Strategy};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LOCK: Mutex<()> = Mutex::new(());

// SAFETY: every method forwards to the system allocator with the same layout and only adds
// bookkeeping on atomics; the pointer contract of `GlobalAlloc` is the system allocator's.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout as given to us.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout as given to us.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::SeqCst) + new_size
                    - layout.size();
                PEAK.fetch_max(now, Ordering::SeqCst);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f`, returning its result and the peak bytes allocated above the level at the start.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

fn output_bytes(out: &liger::LossOutput) -> usize {
    out.grads
        .iter()
        .map(|g| {
            4 * [&g.x, &g.w, &g.b]
                .into_iter()
                .flatten()
                .map(liger::GradBuf::len)
                .sum::<usize>()
        })
        .sum()
}

#[test]
fn dpo_long_sequence_only_fits_two_passes_and_stays_in_budget() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // One pair of 4096-token sequences, V = 4096: a pair's logits alone are 8192 x 4096 x 4 B
    // = 128 MiB per head, so within 64 MiB only the two-pass schedule fits.
    let (s, t, h, v) = (2usize, 4096usize, 16usize, 4096usize);
    let mut rng = fastrand::Rng::with_seed(1);
    let xp = randn(&mut rng, s * t * h, 1.0);
    let xr = randn(&mut rng, s * t * h, 1.0);
    let wp = randn(&mut rng, v * h, 0.3);
    let wr = randn(&mut rng, v * h, 0.3);
    let tg = targets(&mut rng, s, t, v, -100);
    let set = InputSet::new()
        .head(
            "policy",
            Head::new(
                TensorView::new(&xp, &[s, t, h]).expect("x"),
                TensorView::new(&wp, &[v, h]).expect("w"),
            ),
        )
        .head(
            "reference",
            Head::new(
                TensorView::new(&xr, &[s, t, h]).expect("x"),
                TensorView::new(&wr, &[v, h]).expect("w"),
            ),
        )
        .tensor("target", TensorView::new(&tg, &[s, t]).expect("t"));
    let params = ParamSet::new();
    let budget = 64usize << 20;
    let rt = Runtime::cpu();
    for forced in [Strategy::GroupAligned, Strategy::Deferred] {
        let opts = RunOptions {
            chunk_memory: budget,
            schedule: Some(forced),
            ..RunOptions::default()
        };
        let e = liger::run(&Dpo, &rt, &set, &params, &opts).expect_err("does not fit");
        assert!(
            matches!(
                e,
                liger::Error::Runtime(liger::runtime::Error::Budget { .. })
            ),
            "{forced}: {e}"
        );
    }
    let opts = RunOptions {
        chunk_memory: budget,
        ..RunOptions::default()
    };
    let (out, peak) = measure(|| liger::run(&Dpo, &rt, &set, &params, &opts).expect("runs"));
    assert_eq!(out.report.strategy, Strategy::TwoPass);
    let extra = peak - output_bytes(&out);
    eprintln!(
        "dpo T=4096 V=4096: peak extra {extra} B, estimate {} B, budget {budget} B, chunk {} rows",
        out.report.estimate, out.report.chunk_rows
    );
    assert!(
        extra <= budget,
        "peak extra memory {extra} B exceeds the budget {budget} B"
    );
    assert!(out.loss.is_finite());
}

#[test]
fn every_schedule_stays_within_small_budgets() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (s, t, h, v) = (4usize, 300usize, 24usize, 2000usize);
    let mut rng = fastrand::Rng::with_seed(2);
    let xp = randn(&mut rng, s * t * h, 1.0);
    let xr = randn(&mut rng, s * t * 2 * h, 1.0);
    let wp = randn(&mut rng, v * h, 0.3);
    let wr = randn(&mut rng, v * 2 * h, 0.3);
    let b = randn(&mut rng, v, 0.3);
    let tg = targets(&mut rng, s, t, v, 42);
    let policy = || {
        Head::with_bias(
            TensorView::new(&xp, &[s, t, h]).expect("x"),
            TensorView::new(&wp, &[v, h]).expect("w"),
            TensorView::new(&b, &[v]).expect("b"),
        )
    };
    let other = || {
        Head::new(
            TensorView::new(&xr, &[s, t, 2 * h]).expect("x"),
            TensorView::new(&wr, &[v, 2 * h]).expect("w"),
        )
    };
    let target = || TensorView::new(&tg, &[s, t]).expect("t");
    let rt = Runtime::cpu();
    let runs: Vec<(&dyn liger::ChunkedLoss, InputSet<'_>)> = vec![
        (
            &Dpo,
            InputSet::new()
                .head("policy", policy())
                .head("reference", other())
                .tensor("target", target()),
        ),
        (
            &Flce,
            InputSet::new()
                .head("logits", policy())
                .tensor("target", target()),
        ),
        (
            &Jsd,
            InputSet::new()
                .head("student", policy())
                .head("teacher", other())
                .tensor("target", target()),
        ),
    ];
    let mut checked = 0;
    for (loss, set) in &runs {
        let names: Vec<&str> = set.names().collect();
        let (p, _) = liger::pipeline_for(*loss, &names, &ParamSet::new()).expect("pipeline");
        for strategy in p.schedule().candidates.clone() {
            for budget in [12usize << 20, 24 << 20] {
                let opts = RunOptions {
                    ignore_index: 42,
                    chunk_memory: budget,
                    schedule: Some(strategy),
                    ..RunOptions::default()
                };
                let (res, peak) = measure(|| liger::run(*loss, &rt, set, &ParamSet::new(), &opts));
                let out = match res {
                    Ok(out) => out,
                    Err(liger::Error::Runtime(liger::runtime::Error::Budget { .. })) => continue,
                    Err(e) => panic!("{} {strategy}: {e}", loss.name()),
                };
                let extra = peak - output_bytes(&out);
                eprintln!(
                    "{} {strategy} budget {budget}: peak extra {extra}, estimate {}, chunk {}",
                    loss.name(),
                    out.report.estimate,
                    out.report.chunk_rows
                );
                assert!(
                    extra <= budget,
                    "{} {strategy}: peak extra {extra} B > budget {budget} B",
                    loss.name()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} runs fit");
}
