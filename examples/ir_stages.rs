//! Prints every IR stage of a `.lir` file: parsed, gradient, simplified gradient, schedule.
//!
//! `cargo run --example ir_stages -- liger-ir/tests/losses/dpo.lir`
use liger::ir;

fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: ir_stages FILE.lir");
        return std::process::ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let f = match ir::parse(&text).and_then(|f| ir::verify(&f).map(|()| f)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("{}", ir::print(&f));
    match ir::differentiate(&f) {
        Ok(g) => {
            println!(
                "; --- gradient ({} nodes)\n{}",
                g.nodes.len(),
                ir::print(&g)
            );
            let s = ir::simplify(&g);
            println!(
                "; --- simplified ({} nodes, forward {})\n{}",
                s.nodes.len(),
                f.nodes.len(),
                ir::print(&s)
            );
            println!("{}", ir::Schedule::of(&s).render(&s));
        }
        Err(e) => eprintln!("{e}"),
    }
    std::process::ExitCode::SUCCESS
}
