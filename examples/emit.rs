//! Prints the CUDA module of a built-in loss (first specialisation, planner-free: every
//! applicable strategy). `cargo run --example emit -- dpo`
use liger::ir::emit::{EmitOptions, GemmDType, emit_cuda};

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "dpo".into());
    let loss = liger::losses::by_name(&name).expect("a built-in loss");
    let f = loss.ir(&loss.specializations()[0]).expect("IR");
    let g = liger::ir::simplify(&liger::ir::differentiate(&f).expect("gradient"));
    let sched = liger::ir::Schedule::of(&g);
    for s in &sched.candidates {
        let m = emit_cuda(
            &g,
            &sched,
            *s,
            &EmitOptions {
                gemm_dtype: GemmDType::BF16,
            },
        );
        println!("{}", m.source);
    }
}
