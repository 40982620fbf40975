//! The strategy driver: the four strategies of the schedule (fused, two passes, group-aligned,
//! deferred row scaling) written once, over the primitives a [`Backend`] provides. The CPU and
//! CUDA executors implement the primitives (logits of a chunk, the stream kernels, the array
//! stages, the gradient GEMMs, the deferred group finish); which rows form a chunk, in which
//! order the stages run and what is counted is decided here only.
//!
//! Rows are given as segments `(first row, rows)`: a contiguous chunk is one segment, a chunk
//! of whole groups (pairs) or a deferred group several. Within a chunk, segment rows are laid
//! out one after the other (the backend's chunk buffers are indexed by that order).

use liger_ir::stream::{StreamKind, StreamPlan};
use liger_ir::{InputId, Strategy};

use crate::Error;
use crate::plan::Plan;

/// The rows of a chunk, as segments `(first row, rows)`.
pub(crate) type Rows = [(usize, usize)];

/// The whole-batch array stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArrayStage {
    /// Values that need no logits, before the chunk loop.
    Pre,
    /// Values computed from the pre stream, before the chunk loop.
    PreLate,
    /// The group values the backward (or the deferred coefficients) need.
    GroupNeeded,
    /// The whole group stage (loss and metrics).
    Group,
}

/// What an executor provides to the driver.
pub(crate) trait Backend {
    /// Runs an array stage for the whole batch.
    fn array(&mut self, stage: ArrayStage) -> Result<(), Error>;
    /// Starts a chunk of `rows`: computes the logits of `heads` for them (a backend also
    /// prepares whatever the chunk's gradient GEMMs need of the gradient heads' inputs).
    fn logits(&mut self, heads: &[InputId], rows: &Rows) -> Result<(), Error>;
    /// Runs stream kernel `plan` over the chunk's rows (the vocab outputs it writes go to the
    /// chunk's gradient buffers, or for `Unit` to the group's unit buffers at `unit_offset`).
    fn stream(&mut self, plan: &StreamPlan, rows: &Rows, unit_offset: usize) -> Result<(), Error>;
    /// From the chunk's `dlogits`: `dx` rows, `dW += dzᵀ x`, `db += Σ dz`, per gradient head.
    fn grads(&mut self, rows: &Rows) -> Result<(), Error>;
    /// Deferred: after a `Unit` stream, the chunk's unscaled `dx` rows `U W`.
    fn unit_dx(&mut self, rows: &Rows, unit_offset: usize) -> Result<(), Error>;
    /// Deferred: the group's coefficients are known (after `GroupNeeded`): scale its `dx` rows,
    /// `dW += Uᵀ (c · x)`, `db += Σ c · U`.
    fn finish_group(&mut self, group: &Rows) -> Result<(), Error>;
}

/// What the driver did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Driven {
    /// Chunks run (both passes counted for two passes, sub-chunks for deferred).
    pub chunks: usize,
}

/// The heads a stream kernel reads, as a list.
fn heads_of(plan: &StreamPlan) -> Vec<InputId> {
    plan.heads.iter().copied().collect()
}

/// Contiguous chunks of `chunk` rows over `rows` rows.
fn contiguous(rows: usize, chunk: usize) -> Vec<[(usize, usize); 1]> {
    (0..rows)
        .step_by(chunk.max(1))
        .map(|a| [(a, chunk.max(1).min(rows - a))])
        .collect()
}

/// The runs of live rows within segments `segs` (all of them without a live mask).
fn live_runs(segs: &Rows, live: Option<&[bool]>) -> Vec<(usize, usize)> {
    let Some(live) = live else {
        return segs.to_vec();
    };
    let mut out = Vec::new();
    for &(a, l) in segs {
        let mut r = a;
        while r < a + l {
            if !live[r] {
                r += 1;
                continue;
            }
            let start = r;
            while r < a + l && live[r] {
                r += 1;
            }
            out.push((start, r - start));
        }
    }
    out
}

/// Chunks of at most `chunk` rows over the live rows of `0..rows`, each its segments in
/// order (one segment per chunk when every row is live).
fn row_chunks(rows: usize, chunk: usize, live: Option<&[bool]>) -> Vec<Vec<(usize, usize)>> {
    if live.is_none() {
        return contiguous(rows, chunk).iter().map(|c| c.to_vec()).collect();
    }
    let chunk = chunk.max(1);
    let mut out: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut cur: Vec<(usize, usize)> = Vec::new();
    let mut filled = 0;
    for (mut a, mut l) in live_runs(&[(0, rows)], live) {
        while l > 0 {
            let take = l.min(chunk - filled);
            cur.push((a, take));
            filled += take;
            a += take;
            l -= take;
            if filled == chunk {
                out.push(std::mem::take(&mut cur));
                filled = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits segments into pieces of at most `chunk` rows (a piece never spans two segments).
fn pieces(segs: &Rows, chunk: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for &(a, l) in segs {
        let mut p = a;
        while p < a + l {
            let n = chunk.max(1).min(a + l - p);
            out.push((p, n));
            p += n;
        }
    }
    out
}

/// Runs strategy `plan.strategy` over a batch of `groups` (each group's row segments, in
/// order; one group of every row when the loss is row-local) with the pre stream `pre` (from
/// `Schedule::pre_stream_plan`) and the stream kernels `streams` (from `Schedule::streams`),
/// on `b`. With `live` (one flag per row, from `Schedule::skippable`), the chunk loop runs
/// the live rows only: chunks are packed from runs of live rows, and a group with no live row
/// is left out (the pre stream still runs over every row).
pub(crate) fn drive(
    b: &mut dyn Backend,
    plan: &Plan,
    pre: Option<&StreamPlan>,
    streams: &[StreamPlan],
    groups: &[Vec<(usize, usize)>],
    rows: usize,
    live: Option<&[bool]>,
) -> Result<Driven, Error> {
    if live.is_some_and(|l| l.len() != rows) {
        return Err(Error::Internal(format!(
            "a live-row mask of {} flags for {rows} rows",
            live.map_or(0, <[bool]>::len)
        )));
    }
    // Each group's live segments; groups with none are left out.
    let live_groups: Vec<Vec<(usize, usize)>> = groups
        .iter()
        .map(|g| live_runs(g, live))
        .filter(|g| !g.is_empty())
        .collect();
    let groups = &live_groups[..];
    let stream = |k: StreamKind| -> Result<&StreamPlan, Error> {
        streams.iter().find(|s| s.kind == k).ok_or_else(|| {
            Error::Internal(format!(
                "the {} schedule has no {k:?} stream",
                plan.strategy.name()
            ))
        })
    };
    let mut d = Driven::default();
    let chunk = plan.chunk_rows.max(1);
    b.array(ArrayStage::Pre)?;
    if let Some(pre) = pre {
        for c in &contiguous(rows, chunk) {
            b.logits(&[], c)?;
            b.stream(pre, c, 0)?;
        }
        b.array(ArrayStage::PreLate)?;
    }
    match plan.strategy {
        Strategy::Fused => {
            let fused = stream(StreamKind::Fused)?;
            let chunks = row_chunks(rows, chunk, live);
            crate::progress::start(chunks.len());
            for c in &chunks {
                b.logits(&heads_of(fused), c)?;
                b.stream(fused, c, 0)?;
                b.grads(c)?;
                d.chunks += 1;
                crate::progress::step();
            }
        }
        Strategy::TwoPass => {
            let (fwd, bwd) = (stream(StreamKind::Forward)?, stream(StreamKind::Backward)?);
            let chunks = row_chunks(rows, chunk, live);
            crate::progress::start(2 * chunks.len());
            for c in &chunks {
                b.logits(&heads_of(fwd), c)?;
                b.stream(fwd, c, 0)?;
                d.chunks += 1;
                crate::progress::step();
            }
            b.array(ArrayStage::Group)?;
            for c in &chunks {
                b.logits(&heads_of(bwd), c)?;
                b.stream(bwd, c, 0)?;
                b.grads(c)?;
                d.chunks += 1;
                crate::progress::step();
            }
        }
        Strategy::GroupAligned => {
            let (fwd, bwd) = (stream(StreamKind::Forward)?, stream(StreamKind::Backward)?);
            let mut heads = heads_of(fwd);
            heads.extend(heads_of(bwd));
            heads.sort();
            heads.dedup();
            // Whole groups, packed while their (live) rows fit a chunk; a group never exceeds
            // a chunk (the planner picks group-aligned only then).
            let mut packs: Vec<Vec<(usize, usize)>> = Vec::new();
            let mut filled = 0;
            for g in groups {
                let n: usize = g.iter().map(|s| s.1).sum();
                if packs.is_empty() || filled + n > chunk {
                    packs.push(Vec::new());
                    filled = 0;
                }
                if let Some(last) = packs.last_mut() {
                    last.extend(g.iter().copied());
                }
                filled += n;
            }
            crate::progress::start(packs.len());
            for segs in packs {
                b.logits(&heads, &segs)?;
                b.stream(fwd, &segs, 0)?;
                b.array(ArrayStage::GroupNeeded)?;
                b.stream(bwd, &segs, 0)?;
                b.grads(&segs)?;
                d.chunks += 1;
                crate::progress::step();
            }
        }
        Strategy::Deferred => {
            let unit = stream(StreamKind::Unit)?;
            let all: Vec<Vec<(usize, usize)>> = groups.iter().map(|g| pieces(g, chunk)).collect();
            crate::progress::start(all.iter().map(Vec::len).sum());
            for (g, subs) in groups.iter().zip(&all) {
                let mut offset = 0;
                for &piece in subs {
                    let c = [piece];
                    b.logits(&heads_of(unit), &c)?;
                    b.stream(unit, &c, offset)?;
                    b.unit_dx(&c, offset)?;
                    offset += piece.1;
                    d.chunks += 1;
                    crate::progress::step();
                }
                b.array(ArrayStage::GroupNeeded)?;
                b.finish_group(g)?;
            }
        }
    }
    b.array(ArrayStage::Group)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_never_span_segments() {
        assert_eq!(
            pieces(&[(0, 5), (10, 3)], 2),
            vec![(0, 2), (2, 2), (4, 1), (10, 2), (12, 1)]
        );
        assert_eq!(contiguous(5, 2).len(), 3);
        assert_eq!(contiguous(5, 2)[2], [(4, 1)]);
    }

    #[test]
    fn live_rows_pack_into_chunks_of_runs() {
        let live = [
            true, true, false, false, true, true, true, false, true, true,
        ];
        assert_eq!(
            live_runs(&[(0, 10)], Some(&live)),
            vec![(0, 2), (4, 3), (8, 2)]
        );
        assert_eq!(live_runs(&[(3, 4)], Some(&live)), vec![(4, 3)]);
        assert_eq!(
            row_chunks(10, 3, Some(&live)),
            vec![vec![(0, 2), (4, 1)], vec![(5, 2), (8, 1)], vec![(9, 1)]]
        );
        assert_eq!(
            row_chunks(10, 4, None),
            vec![vec![(0, 4)], vec![(4, 4)], vec![(8, 2)]]
        );
    }
}
