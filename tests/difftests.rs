//! Differential file tests: every `tests/difftests/*.lir` loss and a few hundred losses from
//! liger-ir's random generator, each run by the CPU executor under every strategy its schedule
//! allows (at a one-chunk and a many-chunk budget) against the f64 interpreter, with its CUDA
//! module emitted for every strategy (no op may lack a form). The GPU suite runs the same
//! cases on the CUDA executor (`gpu_difftests_match_the_interpreter` in `tests/gpu.rs`).

mod common;

use common::difftest::{check, generated_case, lir_case};
use liger::Runtime;

fn lir_files() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/difftests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/difftests")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lir"))
        .collect();
    files.sort();
    files
}

#[test]
fn lir_files_match_the_interpreter_under_every_schedule() {
    let rt = Runtime::cpu();
    let mut runs = 0;
    let files = lir_files();
    assert!(files.len() >= 6, "{files:?}");
    for path in &files {
        for seed in 0..3 {
            let case = lir_case(path, seed);
            let c = check(&case, &rt, 2e-5).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                c.compared,
                "{}: a file test must not sit on a kink",
                case.name
            );
            runs += c.runs;
        }
    }
    eprintln!("{runs} runs");
    assert!(runs >= 60, "only {runs} runs");
}

/// Every op of the table goes through the generator, autodiff, the interpreter, the CPU
/// executor and the emitter: each must appear in executed generated cases.
#[test]
fn every_op_runs_through_every_stage() {
    let rt = Runtime::cpu();
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut runs, mut cases, mut compared) = (0, 0, 0);
    let ops = common::ircommon::generator::gen_ops();
    let mut seed = 0u64;
    for op in &ops {
        for _ in 0..6 {
            seed += 1;
            let case = generated_case(seed, Some(op.as_str()));
            if std::env::var("DIFF_DEBUG").is_ok() {
                eprintln!("seed {seed} op {op}\n{}", liger::ir::print(&case.f));
            }
            let c = check(&case, &rt, 2e-3)
                .unwrap_or_else(|e| panic!("{e}\n{}", liger::ir::print(&case.f)));
            runs += c.runs;
            cases += 1;
            compared += usize::from(c.compared);
            if c.runs > 0 {
                for node in &case.f.nodes {
                    *seen.entry(node.op.static_name().to_string()).or_default() += 1;
                }
            }
        }
    }
    let missing: Vec<&String> = ops
        .iter()
        .filter(|op| {
            // Ops autodiff introduces are seen in the gradient IR, which the cases run too.
            !matches!(
                op.as_str(),
                "onehot" | "place_chosen" | "place_rejected" | "broadcast"
            ) && seen.get(*op).copied().unwrap_or(0) == 0
        })
        .collect();
    eprintln!("{runs} runs, {compared} of {cases} cases compared; ops seen: {seen:?}");
    assert!(missing.is_empty(), "ops never executed: {missing:?}");
    assert!(runs >= 200, "only {runs} runs");
    assert!(
        compared * 10 >= cases * 7,
        "only {compared} of {cases} cases compared"
    );
}
