//! Losses sharing helper fns in a `#[chunked_losses]` module: helpers calling helpers, typed
//! by level or `Value`, used by two losses; the module's other items stay.

use liger::prelude::*;

#[chunked_losses]
mod prefs {
    use liger::prelude::*;

    /// A constant the module keeps (not a loss, not a helper).
    pub const NAME: &str = "prefs";

    fn seq_avg_logps(z: Vocab, t: Row) -> Seq {
        seq_mean(logprob(z, t))
    }

    fn margin(x: Seq) -> Pair {
        chosen(x) - rejected(x)
    }

    fn log_odds(lp: Value) -> Value {
        lp - log1p(-exp(lp))
    }

    fn odds_margin(z: Vocab, t: Row) -> Pair {
        margin(log_odds(seq_avg_logps(z, t)))
    }

    /// ORPO's odds-ratio term alone.
    #[chunked_loss]
    pub fn odds_ratio(policy: Logits, target: Target) -> Loss {
        mean(-log_sigmoid(odds_margin(policy, target)))
    }

    /// SimPO without a margin.
    #[chunked_loss]
    pub fn simple(policy: Logits, target: Target, #[default(2.0)] beta: f32) -> Loss {
        mean(-log_sigmoid(beta * margin(seq_avg_logps(policy, target))))
    }
}

fn main() {
    assert_eq!(prefs::NAME, "prefs");
    assert_eq!(prefs::OddsRatio.name(), "odds_ratio");
    assert_eq!(prefs::SimpleParams::default().beta, 2.0);
}
