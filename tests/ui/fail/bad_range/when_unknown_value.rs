use liger::prelude::*;

#[chunked_loss]
pub fn capped(
    logits: Logits,
    target: Target,
    #[variant] mode: Mode,
    #[default(30.0)]
    #[range(gt = 0.0, when(mode = Softcap))]
    cap: f32,
) -> Loss {
    let z = match mode {
        Mode::Plain => logits,
        Mode::Capped => cap * tanh(logits / cap),
    };
    mean(-logprob(z, target))
}

fn main() {}
