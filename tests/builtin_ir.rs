//! The IR of every specialisation of every built-in loss, snapshotted (source locations left
//! out so that editing a loss's comments does not churn the snapshots), and checked: it
//! parses, verifies, differentiates and keeps its gradient compact.

use liger::ChunkedLoss;
use liger::ir::{differentiate, parse, print, simplify, verify};

fn without_locations(text: &str) -> String {
    let mut f = parse(text).expect("stored IR parses");
    for l in f.locs.iter_mut() {
        *l = None;
    }
    for o in f.outputs.iter_mut() {
        o.loc = None;
    }
    print(&f)
}

#[test]
fn every_specialisation_is_snapshotted_and_differentiable() {
    for loss in liger::losses::builtin() {
        let mut out = String::new();
        let first = loss.specializations()[0];
        for spec in loss.specializations() {
            // Every specialisation is checked; the snapshot holds the first one and those one
            // choice away from it (each variant value, each optional input's presence), which
            // keeps it reviewable (DPO has 352 specialisations, GRPO 512).
            let snapshot = spec
                .choices
                .iter()
                .zip(first.choices)
                .filter(|(a, b)| a != b)
                .count()
                <= 1;
            match (spec.ir, spec.refused) {
                (Some(text), None) => {
                    if snapshot {
                        out.push_str(&format!("; ==== {}\n", spec.describe()));
                    }
                    let f = loss.ir(spec).expect("stored IR is valid");
                    // Every specialisation schedules and emits (NVRTC compiles a subset of
                    // them in tests/nvrtc.rs).
                    let p = liger::pipeline(loss, spec).expect("pipeline");
                    let first = p.schedule().candidates[0];
                    let bf16 = liger::ir::emit::EmitOptions::new(liger::ir::emit::GemmDType::BF16);
                    p.module(first, &bf16)
                        .unwrap_or_else(|e| panic!("{} ({}): {e}", loss.name(), spec.describe()));
                    verify(&f).expect("verifies");
                    let g = simplify(&differentiate(&f).expect("differentiates"));
                    assert!(
                        g.nodes.len() <= 3 * f.nodes.len(),
                        "{} ({}): gradient IR has {} nodes for {} forward nodes",
                        loss.name(),
                        spec.describe(),
                        g.nodes.len(),
                        f.nodes.len()
                    );
                    if snapshot {
                        out.push_str(&without_locations(text));
                    }
                }
                (None, Some(input)) => {
                    if snapshot {
                        out.push_str(&format!(
                            "; ==== {}\n; refused: needs `{input}`\n",
                            spec.describe()
                        ));
                    }
                }
                other => panic!("{}: malformed specialisation {other:?}", loss.name()),
            }
        }
        insta::assert_snapshot!(loss.name(), out);
    }
}

#[test]
fn source_locations_point_into_the_loss_file() {
    let spec = &liger::losses::Dpo.specializations()[0];
    let text = spec.ir.expect("IR");
    assert!(text.contains("; @src/losses/dpo.rs:"), "{text}");
}
