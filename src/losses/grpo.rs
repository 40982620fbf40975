//! Group Relative Policy Optimisation and its variants (DAPO, Dr. GRPO, BNPO, CISPO, SAPO,
//! LUSPO, VESPO; GSPO through sequence-level importance sampling).

use crate::prelude::*;

/// GRPO: a clipped policy-gradient surrogate on sampled tokens, with an optional KL penalty to
/// a reference policy, in the loss types of TRL.
///
/// `target` holds the sampled token ids (every one valid); `mask` marks the completion tokens;
/// `advantages` has one value per sequence. Per token, `lp = log softmax(z/τ)[y]` (the
/// gradients carry `1/τ`), `log r = lp − old` with `old = old_logps` or `lp` (on-policy,
/// without gradient), and `w = log r` per token, or with `importance_sampling_level = Sequence`
/// (GSPO) the mean of `log r` over the sequence's completion tokens; `ρ = e^w`. The per-token
/// loss `ℓ` (`A` the sequence's advantage):
///
/// | `loss_type` | `ℓ` |
/// |---|---|
/// | `Grpo`, `Bnpo`, `DrGrpo`, `Dapo`, `Luspo` | `−min(ρ'·A, clamp(ρ, 1−ε_low, 1+ε_high)·A)`, `ρ' = min(ρ, delta)` when `delta > 0` |
/// | `Cispo` | `−sg(min(ρ, ε_high))·A·lp` |
/// | `Sapo` | `−A·(4/τ_s)·σ(τ_s(ρ − 1))`, `τ_s` = `sapo_temperature_pos` for `A > 0`, else `_neg` |
/// | `Vespo` | `−sg(φ)·A·lp`, `φ = e^{λ + k·lw − λe^{lw}}` from the sequence's clamped log-ratio `lw` (0 when not finite) |
///
/// times `is_ratio` when given (not for `Vespo`, whose `φ` includes it), plus `β·k3` with
/// `k3 = e^{ref − lp} − (ref − lp) − 1` (times `ρ` with `bias_correction_kl`), `ref` from the
/// frozen `reference` head (at the same temperature) or `ref_logps`, else `lp` without
/// gradient (no KL). Reduction over completion tokens (`M` the mask, every denominator clamped
/// to at least 1):
///
/// | `loss_type` | loss |
/// |---|---|
/// | `Grpo`, `Sapo` | mean over sequences of each sequence's token mean |
/// | `Bnpo` | `Σ ℓM / ΣM` |
/// | `DrGrpo` | `Σ ℓM / (S · max_completion_length)` (`max_completion_length > 0` required) |
/// | `Dapo`, `Cispo`, `Vespo` | `Σ ℓM / D`, `D = num_items_in_batch` when given (> 0; a global count, never summed across ranks), else `ΣM` |
/// | `Luspo` | `Σ_{all tokens} ℓ·ΣM_seq / (S·T)` (every position, as TRL's mean) |
///
/// Metrics, always present: `kl_mean` (`Σ k3·M / ΣM`, 0 without a reference) and `clip_ratio`
/// (the fraction of completion tokens whose ratio was clipped on the side the advantage
/// pushes; upper side only for `Cispo`; 0 for `Sapo` and `Vespo`). Sequence-level importance
/// sampling with `Cispo`, `Sapo` or `Vespo` is computed as defined (Liger refuses it).
#[chunked_loss]
pub fn grpo(
    policy: Logits,
    target: Tokens,
    mask: RowMask,
    advantages: SeqInput,
    old_logps: Option<RowInput>,
    ref_logps: Option<RowInput>,
    reference: Option<Frozen<Logits>>,
    is_ratio: Option<RowInput>,
    #[default(0.04)]
    #[range(ge = 0.0)]
    beta: f32,
    #[default(0.2)]
    #[range(ge = 0.0)]
    epsilon_low: f32,
    #[default(0.2)]
    #[range(ge = 0.0)]
    epsilon_high: f32,
    #[default(1.0)]
    #[range(gt = 0.0)]
    temperature: f32,
    #[default(0.0)]
    #[range(ge = 0.0)]
    delta: f32,
    #[default(0.0)]
    #[range(ge = 0.0)]
    #[range(gt = 0.0, when(loss_type = DrGrpo))]
    max_completion_length: f32,
    #[default(0.0)]
    #[range(ge = 0.0)]
    num_items_in_batch: f32,
    #[default(1.0)]
    #[range(gt = 0.0)]
    sapo_temperature_pos: f32,
    #[default(1.05)]
    #[range(gt = 0.0)]
    sapo_temperature_neg: f32,
    #[default(2.0)] vespo_k_pos: f32,
    #[default(3.0)] vespo_lambda_pos: f32,
    #[default(3.0)] vespo_k_neg: f32,
    #[default(2.0)] vespo_lambda_neg: f32,
    #[variant]
    #[default(Dapo)]
    loss_type: GrpoType,
    #[variant] importance_sampling_level: IsLevel,
    #[variant] bias_correction_kl: bool,
) -> Loss {
    let lp = logprob(policy / temperature, target);
    let old = if let Some(o) = old_logps {
        o
    } else {
        stop_gradient(lp)
    };
    let rf = if let Some(r) = reference {
        logprob(r / temperature, target)
    } else if let Some(r) = ref_logps {
        r
    } else {
        stop_gradient(lp)
    };
    let log_r = lp - old;
    let w = match importance_sampling_level {
        IsLevel::Token => log_r,
        IsLevel::Sequence => seq_sum(log_r, mask) / max(seq_count(mask), 1.0),
    };
    let rho = exp(w);
    let a = advantages;
    let lo = 1.0 - epsilon_low;
    let hi = 1.0 + epsilon_high;
    let capped = select(delta > 0.0, min(rho, delta), rho);
    let standard = -min(capped * a, clamp(rho, lo, hi) * a);
    let clipped_both = select(
        rho < lo,
        select(a < 0.0, 1.0, 0.0),
        select(rho > hi, select(a > 0.0, 1.0, 0.0), 0.0),
    );
    let policy_loss = match loss_type {
        GrpoType::Grpo => standard,
        GrpoType::Bnpo => standard,
        GrpoType::DrGrpo => standard,
        GrpoType::Dapo => standard,
        GrpoType::Cispo => -stop_gradient(min(rho, epsilon_high)) * a * lp,
        GrpoType::Sapo => {
            let ts = select(a > 0.0, sapo_temperature_pos, sapo_temperature_neg);
            -a * (4.0 / ts) * sigmoid(ts * (rho - 1.0))
        }
        GrpoType::Luspo => standard,
        GrpoType::Vespo => {
            let seq_lr = if let Some(r) = is_ratio {
                seq_sum(clamp(log_r, -20.0, 20.0), mask)
                    + seq_sum(clamp(log(r), -18.420681, 20.0), mask)
            } else {
                seq_sum(clamp(log_r, -20.0, 20.0), mask)
            };
            let lw = clamp(seq_lr, -18.420681, 20.0);
            let k = select(a >= 0.0, vespo_k_pos, vespo_k_neg);
            let lambda = max(select(a >= 0.0, vespo_lambda_pos, vespo_lambda_neg), 1e-4);
            let phi = exp(lambda + k * lw - lambda * exp(lw));
            -stop_gradient(select(phi < 3.0e38, phi, 0.0)) * a * lp
        }
    };
    let clipped = match loss_type {
        GrpoType::Grpo => clipped_both,
        GrpoType::Bnpo => clipped_both,
        GrpoType::DrGrpo => clipped_both,
        GrpoType::Dapo => clipped_both,
        GrpoType::Cispo => select(rho > epsilon_high, select(a > 0.0, 1.0, 0.0), 0.0),
        GrpoType::Sapo => 0.0 * rho,
        GrpoType::Luspo => clipped_both,
        GrpoType::Vespo => 0.0 * rho,
    };
    let weighted = if let Some(r) = is_ratio {
        match loss_type {
            GrpoType::Grpo => policy_loss * r,
            GrpoType::Bnpo => policy_loss * r,
            GrpoType::DrGrpo => policy_loss * r,
            GrpoType::Dapo => policy_loss * r,
            GrpoType::Cispo => policy_loss * r,
            GrpoType::Sapo => policy_loss * r,
            GrpoType::Luspo => policy_loss * r,
            GrpoType::Vespo => policy_loss,
        }
    } else {
        policy_loss
    };
    let k3_plain = exp(rf - lp) - (rf - lp) - 1.0;
    let k3 = if bias_correction_kl {
        k3_plain * rho
    } else {
        k3_plain
    };
    let per_token = weighted + beta * k3;
    let tokens = max(num_valid(mask), 1.0);
    metric("kl_mean", sum(k3, mask) / tokens);
    metric("clip_ratio", sum(select(mask, clipped, 0.0), mask) / tokens);
    let items = select(
        num_items_in_batch > 0.0,
        max(num_items_in_batch, 1.0),
        tokens,
    );
    match loss_type {
        GrpoType::Grpo => mean(seq_sum(per_token, mask) / max(seq_count(mask), 1.0)),
        GrpoType::Bnpo => sum(per_token, mask) / tokens,
        GrpoType::DrGrpo => sum(per_token, mask) / (num_seqs() * max_completion_length),
        GrpoType::Dapo => sum(per_token, mask) / items,
        GrpoType::Cispo => sum(per_token, mask) / items,
        GrpoType::Sapo => mean(seq_sum(per_token, mask) / max(seq_count(mask), 1.0)),
        GrpoType::Luspo => sum(per_token * seq_count(mask), every_row()) / (num_seqs() * seq_len()),
        GrpoType::Vespo => sum(per_token, mask) / items,
    }
}
