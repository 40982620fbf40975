//! Compiles the module of a built-in loss with NVRTC and prints ptxas' report.
//! `cargo run --example nvrtc_probe -- flce sm_90`
use liger::ir::emit::{EmitOptions, GemmDType, emit_cuda};

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "flce".into());
    let arch = std::env::args().nth(2).unwrap_or_else(|| "sm_90".into());
    let loss = liger::losses::by_name(&name).expect("loss");
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
        match liger::runtime::cuda::nvrtc::compile(&m.source, "liger.cu", &arch) {
            Ok(c) => {
                println!("== {} {:.0} ms", s.name(), c.millis);
                for k in &c.kernels {
                    println!(
                        "  {:<22} regs {:>3} stack {:>4} spill {}/{}",
                        k.name, k.registers, k.stack, k.spill_stores, k.spill_loads
                    );
                }
            }
            Err(e) => println!("{e}"),
        }
    }
}
