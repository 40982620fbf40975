//! A user loss evaluated end to end through the typed inputs and the reference path.
use liger::prelude::*;

/// Cross-entropy weighted per token.
#[chunked_loss]
pub fn weighted_ce(logits: Logits, target: Target, weights: RowInput) -> Loss {
    sum(weights * -logprob(logits, target)) / num_valid()
}

fn main() -> Result<(), liger::Error> {
    let x = [0.5f32, -1.0, 0.25, 2.0, 1.0, 0.0];
    let w = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
    let t = [2i64, 0, -100];
    let weights = [1.0f32, 0.5, 3.0];
    let inputs = WeightedCeInputs {
        logits: Head::new(TensorView::new(&x[..], &[1, 3, 2])?, TensorView::new(&w[..], &[3, 2])?),
        target: TensorView::new(&t[..], &[1, 3])?,
        weights: TensorView::new(&weights[..], &[1, 3])?,
    };
    let out = WeightedCe.reference(&inputs, &WeightedCeParams::default(), -100)?;
    assert!(out.loss.is_finite() && out.loss > 0.0);
    let g = out.grad("logits").expect("gradients");
    assert_eq!((g.x.len(), g.w.len()), (6, 6));
    assert!(g.x[4..].iter().all(|v| *v == 0.0), "the ignored row has no gradient");
    Ok(())
}
