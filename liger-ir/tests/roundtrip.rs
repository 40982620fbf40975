//! The text form: parse → print → parse is the identity (with source locations), on every
//! `.lir` file of the test suite and on randomly generated IR and its gradient IRs; and the
//! canonical text (the IR's identity) ignores names and locations but nothing else.

mod common;

use common::generator::random_case;
use liger_ir::{LossFn, OutputKind, SrcLoc, canonical_text, differentiate, parse, print, simplify};

fn round_trips(f: &LossFn) {
    let text = print(f);
    let again = parse(&text).unwrap_or_else(|e| panic!("printed IR does not parse: {e}\n{text}"));
    assert_eq!(&again, f, "parse(print(f)) != f for\n{text}");
    assert_eq!(print(&again), text, "print is not stable");
}

fn lir_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            lir_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "lir") {
            out.push(path);
        }
    }
}

#[test]
fn every_test_file_round_trips() {
    let mut files = Vec::new();
    lir_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"),
        &mut files,
    );
    assert!(files.len() >= 20, "found only {} .lir files", files.len());
    let mut parsed = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        match parse(&text) {
            Ok(f) => {
                round_trips(&f);
                parsed += 1;
            }
            Err(e) => assert!(
                text.contains("; expect: parse errors"),
                "{} does not parse: {e}",
                path.display()
            ),
        }
    }
    assert!(parsed >= 18);
}

/// Gives every node and output a pseudo-random source location.
fn with_locs(mut f: LossFn, seed: u64) -> LossFn {
    let mut rng = fastrand::Rng::with_seed(seed);
    let loc = |rng: &mut fastrand::Rng| {
        rng.bool().then(|| SrcLoc {
            file: ["src/loss.rs", "a b/c:d.rs", "x.rs"][rng.usize(0..3)].to_string(),
            line: rng.u32(1..500),
            col: rng.u32(1..120),
        })
    };
    for l in f.locs.iter_mut() {
        *l = loc(&mut rng);
    }
    for o in f.outputs.iter_mut() {
        o.loc = loc(&mut rng);
    }
    f
}

#[test]
fn random_ir_round_trips() {
    for seed in 0..600u64 {
        let f = with_locs(random_case(seed, None).f, seed);
        round_trips(&f);
        let g = differentiate(&f).expect("differentiates");
        round_trips(&g);
        round_trips(&simplify(&g));
    }
}

#[test]
fn canonical_text_ignores_names_and_locations() {
    for seed in 0..100u64 {
        let f = random_case(seed, None).f;
        let mut renamed = with_locs(f.clone(), seed + 1);
        renamed.name = "something_else".into();
        for (k, input) in renamed.inputs.iter_mut().enumerate() {
            input.name = format!("renamed_{k}");
        }
        for o in renamed.outputs.iter_mut() {
            if let OutputKind::Metric(m) = &mut o.kind {
                m.push_str("_renamed");
            }
        }
        assert_ne!(print(&f), print(&renamed));
        assert_eq!(canonical_text(&f), canonical_text(&renamed));
    }
}

#[test]
fn canonical_text_changes_with_structure() {
    let base = "; liger-ir v1\nloss a {\n  input z: logits\n  input t: target\n  m = valid t\n  lp = logprob z, t\n  x = mean lp, m\n  loss = x\n}\n";
    let variants = [
        base.replace("logprob z, t", "at_target z, t"),
        base.replace("input t: target", "input t: tokens"),
        base.replace("mean lp, m", "sum lp, m"),
        base.replace(
            "  loss = x\n",
            "  c = const 2.0\n  y = mul c, x\n  loss = y\n",
        ),
    ];
    let c0 = canonical_text(&parse(base).expect("parses"));
    for v in variants {
        let c = canonical_text(&parse(&v).expect("parses"));
        assert_ne!(c, c0, "{v}");
    }
    let two = base.replace(
        "  loss = x\n",
        "  c = const 2.0\n  y = mul c, x\n  loss = y\n",
    );
    let three = two.replace("const 2.0", "const 3.0");
    assert_ne!(
        canonical_text(&parse(&two).expect("parses")),
        canonical_text(&parse(&three).expect("parses"))
    );
}
