//! File tests: every `tests/filetests/**/*.lir` file names its stage on a `; test: …` line
//! and is snapshotted with insta.
//!
//! - `parse`: the canonical print of the parsed function, or its parse errors inline;
//! - `verify`: the file with every diagnostic under the line it points at (or `ok`);
//! - `autodiff`: the unsimplified gradient IR, then the simplified one;
//! - `simplify`: the simplified function;
//! - `schedule`: the simplified gradient IR and its schedule (stages, row-locality, group,
//!   deferred factors, candidate strategies).
//!
//! Review snapshot changes with `cargo insta review`; never accept them blindly.

use liger_ir::text::{parse_mapped, render_diagnostics};
use liger_ir::{differentiate, print, simplify, verify};

fn stage(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("; test:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("file has no `; test:` line"))
}

fn run(text: &str) -> String {
    let (f, map) = match parse_mapped(text) {
        Ok(x) => x,
        Err(e) => return render_diagnostics(text, &Default::default(), &e.0),
    };
    match stage(text) {
        "parse" => {
            let printed = print(&f);
            let again = liger_ir::parse(&printed).expect("printed text parses");
            assert_eq!(again, f, "parse -> print -> parse is not the identity");
            printed
        }
        "verify" => match verify(&f) {
            Ok(()) => format!("ok\n\n{}", print(&f)),
            Err(e) => render_diagnostics(text, &map, &e.0),
        },
        "autodiff" => {
            let g = differentiate(&f).unwrap_or_else(|e| panic!("autodiff failed:\n{e}"));
            let s = simplify(&g);
            format!(
                "; forward: {} nodes, gradient: {} nodes, simplified: {} nodes\n{}\n{}",
                f.nodes.len(),
                g.nodes.len(),
                s.nodes.len(),
                print(&g),
                print(&s)
            )
        }
        "schedule" => {
            let g =
                simplify(&differentiate(&f).unwrap_or_else(|e| panic!("autodiff failed:\n{e}")));
            let sched = liger_ir::Schedule::of(&g);
            format!("{}\n{}", print(&g), sched.render(&g))
        }
        "simplify" => {
            verify(&f).unwrap_or_else(|e| panic!("does not verify:\n{e}"));
            let s = simplify(&f);
            verify(&s).unwrap_or_else(|e| panic!("simplified does not verify:\n{e}"));
            format!(
                "; {} nodes -> {} nodes\n{}",
                f.nodes.len(),
                s.nodes.len(),
                print(&s)
            )
        }
        other => panic!("unknown stage `{other}`"),
    }
}

#[test]
fn filetests() {
    insta::glob!("filetests/**/*.lir", |path| {
        let text = std::fs::read_to_string(path).expect("readable test file");
        insta::assert_snapshot!(run(&text));
    });
}
