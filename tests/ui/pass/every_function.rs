//! Every function of the language's function table, and metrics at every level.
use liger::prelude::*;

#[chunked_loss]
pub fn everything(policy: Logits, target: Target, mask: RowMask, #[default(0.5)] eps: f32) -> Loss {
    let z = policy;
    let ls = log_softmax(z);
    let p = softmax(z);
    let e = sum_vocab(p * ls) + max_vocab(z) - logsumexp(z) + at_target(ls, target);
    let lp = logprob(z, target);
    let hit = select(argmax(z) == target, 1.0, 0.0);
    let row = neg(exp(lp)) + log(sigmoid(lp) + 1.0) + log1p(exp(lp)) + expm1(lp) + sqrt(exp(lp))
        + abs(lp) + pow(exp(lp), 2.0) + min(lp, -1.0) + max(lp, -1.0) + clamp(lp, -3.0, -0.1)
        + relu(lp + 1.0) + log_sigmoid(lp) + softplus(lp) + tanh(lp) + logaddexp(lp, e)
        + stop_gradient(lp) + select(lp < eps, lp, e) + select(lp <= eps, 1.0, 0.0)
        + select(lp > eps, 1.0, 0.0) + select(lp >= eps, 1.0, 0.0) + select(lp != eps, 1.0, 0.0)
        + select(valid(target), hit, 0.0) + select(mask, lp, 0.0);
    let s = seq_sum(row) + seq_mean(row) + seq_mean_or_zero(row, mask) + seq_count() + seq_count(mask)
        + seq_sum(row, mask);
    let pair = chosen(s) - rejected(s);
    let sizes = vocab_size() + seq_len() + num_seqs() + num_pairs() + num_valid() + num_valid(mask);
    metric("pair", pair);
    metric("seq", s);
    metric("row", row);
    metric("batch", sizes);
    mean(pair) + sum(s) / sizes + mean(row) + sum(row) + sum_all(row) + mean_all(row) + mean(row, mask)
        + sum(pair) + mean(s)
}

fn main() {
    let ir = Everything.specializations()[0].ir.expect("IR");
    for f in ["log_softmax", "softmax", "max_vocab", "argmax", "seq_mean_or_zero", "num_valid", "mean_all", "clamp"] {
        assert!(ir.contains(f), "{f} lowered");
    }
}
