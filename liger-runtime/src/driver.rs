//! The strategy driver: the four strategies of the schedule (fused, two passes, group-aligned,
//! deferred row scaling) written once, over the primitives a [`Backend`] provides. The CPU and
//! CUDA executors implement the primitives (logits of a chunk, the stream kernels, the array
//! stages, the gradient GEMMs, the deferred group finish); which rows form a chunk, in which
//! order the stages run and what is counted is decided here only.
//!
//! Rows are given as segments `(first row, rows)`: a contiguous chunk is one segment, a chunk
//! of whole groups (pairs) or a deferred group several. Within a chunk, segment rows are laid
//! out one after the other (the backend's chunk buffers are indexed by that order).
//!
//! The fused and two-pass gradient GEMMs run once per gradient stage ([`Plan::stage_rows`]):
//! the stream kernels of consecutive chunks write their `dlogits` one after the other into
//! the stage, and `grads` runs over the stage's rows when the next chunk would not fit (a
//! stage of one chunk where the backend does not stage).

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

impl ArrayStage {
    /// The nodes the stage computes, in order (the schedule's lists).
    pub(crate) fn nodes(self, sched: &liger_ir::Schedule) -> &[liger_ir::ValueId] {
        match self {
            ArrayStage::Pre => &sched.pre,
            ArrayStage::PreLate => &sched.pre_late,
            ArrayStage::GroupNeeded => &sched.group_needed,
            ArrayStage::Group => &sched.group,
        }
    }
}

/// What an executor provides to the driver.
pub(crate) trait Backend {
    /// Runs an array stage for the whole batch.
    fn array(&mut self, stage: ArrayStage) -> Result<(), Error>;
    /// Starts a chunk of `rows`: computes the logits of `heads` for them (a backend also
    /// prepares whatever the chunk's gradient GEMMs need of the gradient heads' inputs).
    fn logits(&mut self, heads: &[InputId], rows: &Rows) -> Result<(), Error>;
    /// Runs stream kernel `plan` over the chunk's rows; the vocab outputs it writes go to row
    /// `out_offset` of the gradient stage's buffers (`dlogits`), or for `Unit` of the group's
    /// unit buffers.
    fn stream(&mut self, plan: &StreamPlan, rows: &Rows, out_offset: usize) -> Result<(), Error>;
    /// From the `dlogits` of a gradient stage (`rows`: its chunks' rows in stage order): `dx`
    /// rows, `dW += dzᵀ x`, `db += Σ dz`, per gradient head.
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

/// The gradient stage of the fused and two-pass loops: the rows whose `dlogits` the stream
/// kernels have written since the last `grads`.
struct Stage {
    rows: Vec<(usize, usize)>,
    filled: usize,
    depth: usize,
}

impl Stage {
    fn new(depth: usize) -> Self {
        Stage {
            rows: Vec::new(),
            filled: 0,
            depth: depth.max(1),
        }
    }

    /// The stage row a chunk of `rows` starts at, after running the gradient GEMMs of the
    /// stage when the chunk would not fit.
    fn room(&mut self, b: &mut dyn Backend, rows: &Rows) -> Result<usize, Error> {
        let n: usize = rows.iter().map(|s| s.1).sum();
        if self.filled > 0 && self.filled + n > self.depth {
            self.flush(b)?;
        }
        let at = self.filled;
        self.rows.extend_from_slice(rows);
        self.filled += n;
        Ok(at)
    }

    /// Runs the gradient GEMMs of the stage's rows (none: nothing).
    fn flush(&mut self, b: &mut dyn Backend) -> Result<(), Error> {
        if self.filled > 0 {
            b.grads(&self.rows)?;
        }
        self.rows.clear();
        self.filled = 0;
        Ok(())
    }
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
            let mut stage = Stage::new(plan.stage_rows.max(chunk));
            for c in &chunks {
                let at = stage.room(b, c)?;
                b.logits(&heads_of(fused), c)?;
                b.stream(fused, c, at)?;
                d.chunks += 1;
                crate::progress::step();
            }
            stage.flush(b)?;
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
            let mut stage = Stage::new(plan.stage_rows.max(chunk));
            for c in &chunks {
                let at = stage.room(b, c)?;
                b.logits(&heads_of(bwd), c)?;
                b.stream(bwd, c, at)?;
                d.chunks += 1;
                crate::progress::step();
            }
            stage.flush(b)?;
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

    /// Records what the driver asks of a backend.
    #[derive(Default)]
    struct Calls(Vec<String>);

    impl Backend for Calls {
        fn array(&mut self, stage: ArrayStage) -> Result<(), Error> {
            self.0.push(format!("{stage:?}"));
            Ok(())
        }
        fn logits(&mut self, _heads: &[InputId], rows: &Rows) -> Result<(), Error> {
            self.0.push(format!("logits {rows:?}"));
            Ok(())
        }
        fn stream(&mut self, plan: &StreamPlan, rows: &Rows, at: usize) -> Result<(), Error> {
            self.0.push(format!("{:?} {rows:?} at {at}", plan.kind));
            Ok(())
        }
        fn grads(&mut self, rows: &Rows) -> Result<(), Error> {
            self.0.push(format!("grads {rows:?}"));
            Ok(())
        }
        fn unit_dx(&mut self, rows: &Rows, at: usize) -> Result<(), Error> {
            self.0.push(format!("unit_dx {rows:?} at {at}"));
            Ok(())
        }
        fn finish_group(&mut self, group: &Rows) -> Result<(), Error> {
            self.0.push(format!("finish {group:?}"));
            Ok(())
        }
    }

    fn stream_plan(kind: StreamKind) -> StreamPlan {
        StreamPlan {
            kind,
            program: Vec::new(),
            outputs: Vec::new(),
            stages: Default::default(),
            externals: Default::default(),
            heads: Default::default(),
            merged_last: false,
        }
    }

    fn plan(strategy: Strategy, chunk: usize, stage: usize) -> Plan {
        Plan {
            strategy,
            chunk_rows: chunk,
            stage_rows: stage,
            estimate: 0,
            cost: liger_ir::schedule::Cost {
                gemm_flops: 0.0,
                bytes: 0.0,
            },
            forced: false,
        }
    }

    #[test]
    fn gradient_stages_hold_whole_chunks_and_run_once_full() {
        // 11 rows, chunks of 2, a stage of 5 rows: two chunks per stage (a third would not
        // fit), their dlogits at stage rows 0 and 2; the last stage is the odd chunk.
        let fused = [stream_plan(StreamKind::Fused)];
        let mut b = Calls::default();
        let groups = vec![vec![(0, 11)]];
        let d = drive(
            &mut b,
            &plan(Strategy::Fused, 2, 5),
            None,
            &fused,
            &groups,
            11,
            None,
        )
        .expect("drive");
        assert_eq!(d.chunks, 6);
        let want = [
            "Pre",
            "logits [(0, 2)]",
            "Fused [(0, 2)] at 0",
            "logits [(2, 2)]",
            "Fused [(2, 2)] at 2",
            "grads [(0, 2), (2, 2)]",
            "logits [(4, 2)]",
            "Fused [(4, 2)] at 0",
            "logits [(6, 2)]",
            "Fused [(6, 2)] at 2",
            "grads [(4, 2), (6, 2)]",
            "logits [(8, 2)]",
            "Fused [(8, 2)] at 0",
            "logits [(10, 1)]",
            "Fused [(10, 1)] at 2",
            "grads [(8, 2), (10, 1)]",
            "Group",
        ];
        assert_eq!(b.0, want);
        // Two passes: the forward pass has no stage; the backward pass stages as fused does;
        // live rows: the stage holds the chunks' segments in order.
        let two = [
            stream_plan(StreamKind::Forward),
            stream_plan(StreamKind::Backward),
        ];
        let live = [true, true, false, true, true, true, true, false, true, true];
        let mut b = Calls::default();
        drive(
            &mut b,
            &plan(Strategy::TwoPass, 3, 6),
            None,
            &two,
            &[vec![(0, 10)]],
            10,
            Some(&live),
        )
        .expect("drive");
        let back: Vec<&str> =
            b.0.iter()
                .skip_while(|c| !c.starts_with("Group"))
                .map(String::as_str)
                .collect();
        assert_eq!(
            back,
            [
                "Group",
                "logits [(0, 2), (3, 1)]",
                "Backward [(0, 2), (3, 1)] at 0",
                "logits [(4, 3)]",
                "Backward [(4, 3)] at 3",
                "grads [(0, 2), (3, 1), (4, 3)]",
                "logits [(8, 2)]",
                "Backward [(8, 2)] at 0",
                "grads [(8, 2)]",
                "Group",
            ]
        );
        // A stage of one chunk (a backend that does not stage): grads after every chunk.
        let mut b = Calls::default();
        drive(
            &mut b,
            &plan(Strategy::Fused, 4, 4),
            None,
            &fused,
            &groups,
            11,
            None,
        )
        .expect("drive");
        assert_eq!(b.0.iter().filter(|c| c.starts_with("grads")).count(), 3);
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
