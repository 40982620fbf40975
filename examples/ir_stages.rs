//! Prints every IR stage of a `.lir` file: parsed, gradient, simplified gradient.
//!
//! `cargo run --example ir_stages -- liger-ir/tests/losses/dpo.lir`
use liger::ir;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: ir_stages FILE.lir");
        std::process::exit(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(1);
        }
    };
    let f = match ir::parse(&text) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
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
        }
        Err(e) => eprintln!("{e}"),
    }
}
