//! The examples of the language's original design note (parameters, GRPO), verbatim.
use liger::prelude::*;

/// DPO: -log σ(β·((π_c − r_c) − (π_r − r_r))), plus its loss-type variants.
#[chunked_loss]
pub fn dpo(
    policy: Logits,                      // head with gradients: x [S,T,H], W [V,H], optional b [V]
    reference: Option<Frozen<Logits>>,   // forward-only head; absent => use ref_logps
    ref_logps: Option<SeqInput>,         // precomputed reference log-probs, one per sequence
    target: Target,                      // token ids [S,T]; ignore_index rows are invalid
    #[default(0.1)] beta: f32,           // hyperparameter: a runtime kernel argument
    #[default(0.0)] label_smoothing: f32,
    #[variant] average: bool,            // compile-time flag
    #[variant] loss_type: DpoType,       // compile-time choice
) -> Loss {
    let lp = if average { seq_mean(logprob(policy, target)) } else { seq_sum(logprob(policy, target)) };
    let rf = if let Some(r) = reference {
        if average { seq_mean(logprob(r, target)) } else { seq_sum(logprob(r, target)) }
    } else {
        ref_logps.unwrap()                 // precomputed with the same `average` convention
    };
    let d = beta * ((chosen(lp) - chosen(rf)) - (rejected(lp) - rejected(rf)));
    metric("chosen_rewards", beta * (chosen(lp) - chosen(rf)));
    match loss_type {
        DpoType::Sigmoid => mean(-(1.0 - label_smoothing) * log_sigmoid(d) - label_smoothing * log_sigmoid(-d)),
        DpoType::Hinge => mean(relu(1.0 - d)),
    }
}

/// Generalised JSD distillation (vocab-level: both heads are needed per entry in the backward).
#[chunked_loss]
pub fn jsd(student: Logits, teacher: Frozen<Logits>, target: Target,
           #[default(0.5)] beta: f32, #[default(1.0)] temperature: f32,
           #[default(0.5)] weight_hard: f32, #[default(0.5)] weight_soft: f32) -> Loss {
    let s = log_softmax(student / temperature);
    let t = log_softmax(teacher / temperature);
    let m = logaddexp(s + log(1.0 - beta), t + log(beta));
    let soft = mean(sum_vocab(beta * exp(t) * (t - m) + (1.0 - beta) * exp(s) * (s - m)));
    let hard = mean(-logprob(student, target));
    weight_hard * hard + weight_soft * soft
}

/// GRPO, DAPO normaliser, token-level clipping (row-local: chunks may cut anywhere).
#[chunked_loss]
pub fn grpo_dapo(policy: Logits, ids: Tokens, old_logps: RowInput, advantages: SeqInput,
                 mask: RowMask, #[default(0.2)] eps_low: f32, #[default(0.2)] eps_high: f32,
                 num_items: f32) -> Loss {
    let lp = logprob(policy, ids);
    let ratio = exp(lp - old_logps);
    let per_tok = -min(ratio * advantages, clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages);
    sum(select(mask, per_tok, 0.0)) / max(num_items, 1.0)
}

fn main() {
    assert_eq!(Dpo.specializations().len(), 16);
    assert_eq!(DpoParams::default().loss_type, DpoType::Sigmoid);
    assert_eq!(Jsd.specializations().len(), 1);
    let p = GrpoDapoParams::new(128.0);
    assert_eq!((p.eps_low, p.eps_high, p.num_items), (0.2, 0.2, 128.0));
}
