//! `#[variant]` flags and enums, `#[default]` on each, `if`/`else` and `match`.
use liger::prelude::*;

#[chunked_loss]
pub fn shaped(
    policy: Logits,
    target: Target,
    #[default(2.0)] power: f32,
    #[variant] #[default(true)] average: bool,
    #[variant] clip: bool,
    #[variant] #[default(Square)] shape: Shape,
) -> Loss {
    let lp = logprob(policy, target);
    let per_seq = if average { seq_mean(lp) } else { seq_sum(lp) };
    let clipped = if clip { max(per_seq, -10.0) } else { per_seq };
    match shape {
        Shape::Linear => mean(-clipped),
        Shape::Square => mean(pow(clipped, power)),
        Shape::Soft => mean(softplus(-clipped)),
    }
}

fn main() {
    let p = ShapedParams::default();
    assert!(p.average && !p.clip);
    assert_eq!(p.shape, Shape::Square);
    assert_eq!(Shape::ALL, &[Shape::Linear, Shape::Square, Shape::Soft]);
    assert_eq!("soft".parse::<Shape>().ok(), Some(Shape::Soft));
    assert!("cubic".parse::<Shape>().is_err());
    assert_eq!(Shaped.specializations().len(), 12);
    assert!(Shaped.specializations().iter().all(|s| s.ir.is_some()));
}
