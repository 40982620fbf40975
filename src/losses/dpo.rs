//! Direct Preference Optimisation and its variants.

use crate::prelude::*;

/// DPO: a preference loss on the policy's margin over a reference, per pair, averaged over pairs.
///
/// With `π` the policy's sequence log-probs (summed over valid tokens, or averaged with
/// `average`) and `r` the reference's (from a frozen `reference` head, or the precomputed
/// per-sequence `ref_logps` when the head is absent; same `average` convention), each pair has
/// `c = π_c − r_c`, `ρ = π_r − r_r` (chosen, rejected), `a = βc`, `b = βρ`, `Δ = a − b`, and
/// `loss_type` picks the per-pair loss `ℓ` (TRL's definitions):
///
/// | `loss_type` | `ℓ` |
/// |---|---|
/// | `Sigmoid` | `−(1−ε)·logσ(Δ) − ε·logσ(−Δ)` (cDPO smoothing as TRL; Liger ignores ε here) |
/// | `Hinge` | `max(0, 1 − Δ)` |
/// | `Ipo` | `(c − ρ − 1/(2β))²` on length-averaged log-probs whatever `average` says (TRL; Liger does not implement it; give averaged `ref_logps`) |
/// | `Robust` | `(−(1−ε)·logσ(Δ) + ε·logσ(−Δ)) / (1 − 2ε)`, `ε < 0.5` |
/// | `ExoPair` | `σ(Δ)(logσ(Δ) − log(1−ε)) + σ(−Δ)(logσ(−Δ) − log ε)`, `ε > 0` |
/// | `NcaPair` | `−logσ(a) − ½·logσ(−a) − ½·logσ(−b)` |
/// | `BcoPair` | `−logσ(a) − logσ(−b)` (no running reward mean, as Liger) |
/// | `SppoHard` | `(c − 1/(2β))² + (ρ + 1/(2β))²` |
/// | `ApoZero` | `(1 − σ(a)) + σ(b)` |
/// | `ApoDown` | `σ(a) + (1 − σ(Δ))` |
/// | `Discopop` | `(1−w)·(−logσ(Δ)) + w·e^{−Δ}`, `w = σ(Δ/τ)`, `τ = discopop_tau` |
///
/// With `nll`, `alpha` times the mean NLL of the chosen sequences' valid tokens is added (RPO);
/// with no valid chosen token the term is 0. Metrics: the rewards `βc`, `βρ` and the policy's
/// log-probs of each side (per pair), `reward_margin` (the mean of `βc − βρ`) and
/// `reward_accuracy` (the fraction of pairs with `βc > βρ`), the NLL term with `nll`, and with
/// `logits_metrics` the mean logit of each side over every position and vocabulary entry
/// (ignored positions included, as the peers define it).
#[chunked_loss]
pub fn dpo(
    policy: Logits,
    reference: Option<Frozen<Logits>>,
    ref_logps: Option<SeqInput>,
    target: Target,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
    #[default(0.0)]
    #[range(0.0..=0.5)]
    #[range(gt = 0.0, when(loss_type = ExoPair))]
    #[range(lt = 0.5, when(loss_type = Robust))]
    label_smoothing: f32,
    #[default(1.0)] alpha: f32,
    #[default(0.05)]
    #[range(gt = 0.0)]
    discopop_tau: f32,
    #[variant] average: bool,
    #[variant] nll: bool,
    #[variant] logits_metrics: bool,
    #[variant] loss_type: DpoType,
) -> Loss {
    let lp = logprob(policy, target);
    let pi = match loss_type {
        DpoType::Sigmoid => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
        DpoType::Hinge => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
        DpoType::Ipo => seq_mean(lp),
        DpoType::Robust => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
        DpoType::ExoPair => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
        DpoType::NcaPair => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
        DpoType::BcoPair => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
        DpoType::SppoHard => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
        DpoType::ApoZero => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
        DpoType::ApoDown => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
        DpoType::Discopop => {
            if average {
                seq_mean(lp)
            } else {
                seq_sum(lp)
            }
        }
    };
    let rf = if let Some(r) = reference {
        let rlp = logprob(r, target);
        match loss_type {
            DpoType::Sigmoid => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
            DpoType::Hinge => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
            DpoType::Ipo => seq_mean(rlp),
            DpoType::Robust => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
            DpoType::ExoPair => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
            DpoType::NcaPair => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
            DpoType::BcoPair => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
            DpoType::SppoHard => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
            DpoType::ApoZero => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
            DpoType::ApoDown => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
            DpoType::Discopop => {
                if average {
                    seq_mean(rlp)
                } else {
                    seq_sum(rlp)
                }
            }
        }
    } else {
        ref_logps.unwrap()
    };
    let c = chosen(pi) - chosen(rf);
    let rj = rejected(pi) - rejected(rf);
    let a = beta * c;
    let b = beta * rj;
    let d = a - b;
    metric("chosen_rewards", a);
    metric("rejected_rewards", b);
    metric("chosen_logps", chosen(pi));
    metric("rejected_logps", rejected(pi));
    metric("reward_margin", mean(d));
    metric("reward_accuracy", mean(select(a > b, 1.0, 0.0)));
    if logits_metrics {
        let per_seq = seq_sum(sum_vocab(policy), every_row());
        let n = num_pairs() * seq_len() * vocab_size();
        metric("chosen_logits_mean", sum(chosen(per_seq)) / n);
        metric("rejected_logits_mean", sum(rejected(per_seq)) / n);
    }
    let eps = label_smoothing;
    let per_pair = match loss_type {
        DpoType::Sigmoid => -(1.0 - eps) * log_sigmoid(d) - eps * log_sigmoid(-d),
        DpoType::Hinge => relu(1.0 - d),
        DpoType::Ipo => square(c - rj - 1.0 / (2.0 * beta)),
        DpoType::Robust => {
            (-(1.0 - eps) * log_sigmoid(d) + eps * log_sigmoid(-d)) / (1.0 - 2.0 * eps)
        }
        DpoType::ExoPair => {
            sigmoid(d) * (log_sigmoid(d) - log(1.0 - eps))
                + sigmoid(-d) * (log_sigmoid(-d) - log(eps))
        }
        DpoType::NcaPair => -log_sigmoid(a) - 0.5 * log_sigmoid(-a) - 0.5 * log_sigmoid(-b),
        DpoType::BcoPair => -log_sigmoid(a) - log_sigmoid(-b),
        DpoType::SppoHard => square(c - 1.0 / (2.0 * beta)) + square(rj + 1.0 / (2.0 * beta)),
        DpoType::ApoZero => (1.0 - sigmoid(a)) + sigmoid(b),
        DpoType::ApoDown => sigmoid(a) + (1.0 - sigmoid(d)),
        DpoType::Discopop => {
            let w = sigmoid(d / discopop_tau);
            (1.0 - w) * -log_sigmoid(d) + w * exp(-d)
        }
    };
    let preference = mean(per_pair);
    if nll {
        let tokens = max(sum(chosen(seq_count())), 1.0);
        let nll_loss = sum(chosen(seq_sum(-lp))) / tokens;
        metric("nll_loss", nll_loss);
        preference + alpha * nll_loss
    } else {
        preference
    }
}
