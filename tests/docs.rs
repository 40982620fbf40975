//! The documentation in the repository stays true to the code: the function table of
//! `docs/language.md` is the op table's (`LIGER_BLESS_DOCS=1` rewrites it; review the diff),
//! and no document or rustdoc points outside the repository.

use liger::ChunkedLoss;

/// Checks (or with `LIGER_BLESS_DOCS=1` rewrites) the generated section `name` of `path`.
fn generated(path: &str, name: &str, want: &str) {
    let text = std::fs::read_to_string(path).expect("document");
    let (begin, end) = (
        format!("<!-- BEGIN generated: {name} -->\n"),
        format!("<!-- END generated: {name} -->"),
    );
    let start = text.find(&begin).expect("begin marker") + begin.len();
    let stop = text.find(&end).expect("end marker");
    if text[start..stop] != *want {
        if std::env::var_os("LIGER_BLESS_DOCS").is_some() {
            let new = format!("{}{want}{}", &text[..start], &text[stop..]);
            std::fs::write(path, new).expect("rewrites");
            return;
        }
        panic!(
            "{path}: the generated `{name}` section is out of date: run with LIGER_BLESS_DOCS=1 \
             and review the diff"
        );
    }
}

#[test]
fn the_function_table_is_the_op_tables() {
    generated(
        "docs/language.md",
        "functions",
        &liger::ir::op::reference_table(),
    );
}

/// Every loss's specialisations grouped by the schedules they allow.
#[test]
fn the_schedule_table_is_the_losses() {
    let mut files = Vec::new();
    for f in [
        "examples/losses/simpo.rs",
        "examples/losses/grpo.rs",
        "examples/losses/preference.rs",
    ] {
        for l in liger::compile_loss_file(f).expect("compiles") {
            files.push((l, f));
        }
    }
    let mut losses: Vec<(&dyn ChunkedLoss, String)> = liger::losses::builtin()
        .into_iter()
        .map(|l| (l, "built in".to_string()))
        .collect();
    for (l, f) in &files {
        losses.push((l, format!("`{f}`")));
    }
    let mut t = String::from(
        "| loss | where | specialisations | schedules | rows left out |\n|---|---|---|---|---|\n",
    );
    for (loss, from) in losses {
        let mut rows: Vec<(String, Vec<&liger::SpecInfo>)> = Vec::new();
        for spec in loss.specializations().iter().filter(|s| s.ir.is_some()) {
            let p = liger::pipeline(loss, spec).expect("pipeline");
            let c = p
                .schedule()
                .candidates
                .iter()
                .map(|s| s.name().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            // Which rows the chunk loop may leave out (liger-ir's rowskip).
            let g = p.grad();
            let skip = p
                .schedule()
                .skippable
                .as_ref()
                .map_or("none".to_string(), |sk| {
                    sk.masks
                        .iter()
                        .map(|m| match g.node(*m).op {
                            liger::ir::Op::Input(k) => {
                                let input = &g.inputs[k.index()];
                                match input.kind {
                                    liger::ir::InputKind::Target => {
                                        format!("`{}` ignored", input.name)
                                    }
                                    _ => format!("`{}` false", input.name),
                                }
                            }
                            _ => "?".to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(" and ")
                });
            let c = format!("{c} | {skip}");
            match rows.iter_mut().find(|(k, _)| *k == c) {
                Some((_, specs)) => specs.push(spec),
                None => rows.push((c, vec![spec])),
            }
        }
        let two = rows.len() == 2;
        for (c, specs) in &rows {
            let which = describe(loss, specs).unwrap_or_else(|| {
                if two {
                    format!("the other {}", specs.len())
                } else {
                    format!("{} specialisations", specs.len())
                }
            });
            t += &format!("| `{}` | {from} | {which} | {c} |\n", loss.name());
        }
    }
    generated("docs/architecture.md", "schedules", &t);
}

/// Every file a user or contributor reads: the README, docs/, rustdoc of every crate.
fn documents() -> Vec<std::path::PathBuf> {
    let mut out = vec![std::path::PathBuf::from("README.md")];
    let mut stack = vec![
        std::path::PathBuf::from("docs"),
        "src".into(),
        "liger-ir/src".into(),
        "liger-lang/src".into(),
        "liger-macros/src".into(),
        "liger-runtime/src".into(),
        "examples".into(),
    ];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "md" || x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn no_document_points_outside_the_repository() {
    for p in documents() {
        let text = std::fs::read_to_string(&p).expect("document");
        for (i, line) in text.lines().enumerate() {
            for bad in ["../shared", "SURFACE.md", "DESIGN.md"] {
                assert!(
                    !line.contains(bad),
                    "{}:{}: `{bad}` is outside the repository: {line}",
                    p.display(),
                    i + 1
                );
            }
        }
    }
}

/// The specialisations `specs` of `loss` in a few words: `all`, or the choices that set them
/// apart (`loss_type ∈ {Grpo, Sapo}, importance_sampling_level = Sequence`) when they are
/// exactly the product of those choices (`None` otherwise).
fn describe(loss: &dyn ChunkedLoss, specs: &[&liger::SpecInfo]) -> Option<String> {
    use std::collections::BTreeSet;
    let all: Vec<&liger::SpecInfo> = loss
        .specializations()
        .iter()
        .filter(|s| s.ir.is_some())
        .collect();
    if specs.len() == all.len() {
        return Some("all".into());
    }
    let first = all.first()?;
    let values = |set: &[&liger::SpecInfo], k: usize| -> BTreeSet<&str> {
        set.iter().map(|s| s.choices[k].1).collect()
    };
    let mut terms = Vec::new();
    for (k, (name, _)) in first.choices.iter().enumerate() {
        let (mine, every) = (values(specs, k), values(&all, k));
        if mine != every {
            let list: Vec<&str> = mine.into_iter().collect();
            terms.push(if list.len() == 1 {
                format!("{name} = {}", list[0])
            } else {
                format!("{name} ∈ {{{}}}", list.join(", "))
            });
        }
    }
    // Exact only when every runnable specialisation with those choices is in `specs`.
    let covered = all
        .iter()
        .filter(|s| {
            s.choices
                .iter()
                .enumerate()
                .all(|(k, (_, v))| specs.iter().any(|t| t.choices[k].1 == *v))
        })
        .count();
    (covered == specs.len()).then(|| terms.join(", "))
}
