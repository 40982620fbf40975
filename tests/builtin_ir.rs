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
        for spec in loss.specializations() {
            // Every specialisation is checked; the snapshot holds those with every flag at its
            // default (each enum value and each optional input's presence), which keeps it
            // reviewable (DPO has 352 specialisations).
            let snapshot = spec.choices.iter().all(|(k, v)| {
                let p = loss.param(k).expect("a spec names parameters");
                match p.default {
                    liger::DefaultValue::Bool(b) => *v == if b { "true" } else { "false" },
                    _ => true,
                }
            });
            match (spec.ir, spec.refused) {
                (Some(text), None) => {
                    if snapshot {
                        out.push_str(&format!("; ==== {}\n", spec.describe()));
                    }
                    let f = loss.ir(spec).expect("stored IR is valid");
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
