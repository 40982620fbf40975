//! What a reduction over no valid row gives, defined once for the CPU and the CUDA backends.
//!
//! The policy (documented for users in `docs/`, "Reductions over no valid row"):
//!
//! | reduction | a sequence or batch with no row under its mask |
//! |---|---|
//! | `seq_mean` | error [`Error::EmptySequence`] naming the first such sequence |
//! | `seq_sum` (masked) | 0, with a warning naming the first such sequence |
//! | `seq_mean_or_zero` | 0, silently (that is what it is for) |
//! | `seq_count` | 0, silently |
//! | row-level `mean` | 0 with no gradient, with a warning |
//! | row-level `sum` | 0, silently (the sum of nothing) |
//!
//! Both backends report what they found as [`Findings`]; the CPU evaluator records it as it
//! goes, the CUDA kernels write it into the status words ([`liger_ir::emit::cuda::abi::status`])
//! and the host decodes them with [`Findings::from_status`]. The same findings give the same
//! error or the same warning text on both.

use crate::error::Error;
use liger_ir::emit::cuda::abi::status;

/// What the reductions of one run found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// The first sequence a `seq_mean` found with no row.
    pub empty_seq_mean: Option<usize>,
    /// The first sequence a masked `seq_sum` found with no row.
    pub empty_seq_sum: Option<usize>,
    /// Whether a row-level `mean` selected no row in the batch.
    pub mean_no_rows: bool,
}

impl Findings {
    /// Records a `seq_mean` over sequence `seq` with no row.
    pub fn empty_seq_mean(&mut self, seq: usize) {
        self.empty_seq_mean = Some(self.empty_seq_mean.map_or(seq, |s| s.min(seq)));
    }

    /// Records a masked `seq_sum` over sequence `seq` with no row.
    pub fn empty_seq_sum(&mut self, seq: usize) {
        self.empty_seq_sum = Some(self.empty_seq_sum.map_or(seq, |s| s.min(seq)));
    }

    /// Decodes the status words the CUDA kernels wrote.
    pub fn from_status(words: &[i32]) -> Findings {
        let word = |k: usize| words.get(k).copied().unwrap_or(0);
        let seq = |k: usize| usize::try_from(word(k)).unwrap_or(0);
        Findings {
            empty_seq_mean: (word(status::EMPTY_SEQ) != 0).then(|| seq(status::EMPTY_SEQ_INDEX)),
            empty_seq_sum: (word(status::EMPTY_SUM) != 0).then(|| seq(status::EMPTY_SUM_INDEX)),
            mean_no_rows: word(status::MEAN_NO_ROWS) != 0,
        }
    }

    /// Both sets of findings (the first sequence of each kind).
    pub fn merge(&mut self, other: Findings) {
        if let Some(s) = other.empty_seq_mean {
            self.empty_seq_mean(s);
        }
        if let Some(s) = other.empty_seq_sum {
            self.empty_seq_sum(s);
        }
        self.mean_no_rows |= other.mean_no_rows;
    }

    /// The policy: the error, or the warnings to report.
    pub fn outcome(&self) -> Result<Vec<String>, Error> {
        if let Some(seq) = self.empty_seq_mean {
            return Err(Error::EmptySequence { seq });
        }
        let mut w = Vec::new();
        if let Some(seq) = self.empty_seq_sum {
            w.push(format!(
                "sequence {seq} has no valid row (every target ignored?), so its `seq_sum` is 0; check the batch, or mask such sequences out"
            ));
        }
        if self.mean_no_rows {
            w.push(
                "a row-level mean selects no row in the batch (every target ignored?): it is 0, with no gradient"
                    .into(),
            );
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words_decode_to_the_same_findings_as_recorded() {
        let mut f = Findings::default();
        f.empty_seq_sum(5);
        f.empty_seq_sum(3);
        f.mean_no_rows = true;
        let mut words = status::INIT;
        words[status::EMPTY_SUM] = 1;
        words[status::EMPTY_SUM_INDEX] = 3;
        words[status::MEAN_NO_ROWS] = 1;
        assert_eq!(Findings::from_status(&words), f);
        assert_eq!(Findings::from_status(&status::INIT), Findings::default());
        assert_eq!(f.outcome().map(|w| w.len()).ok(), Some(2));
        f.empty_seq_mean(2);
        assert!(matches!(f.outcome(), Err(Error::EmptySequence { seq: 2 })));
    }
}
