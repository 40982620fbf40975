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
            out.push_str(&format!("; ==== {}\n", spec.describe()));
            match (spec.ir, spec.refused) {
                (Some(text), None) => {
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
                    out.push_str(&without_locations(text));
                }
                (None, Some(input)) => out.push_str(&format!("; refused: needs `{input}`\n")),
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
