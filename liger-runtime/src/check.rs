//! The input checks both input paths share (host tensors for the CPU executor and the host
//! API, device buffers for the device API): the shapes of heads and side inputs against the
//! batch's `(S, T, V)`, missing, misplaced and unknown inputs, and the pair rule. Only shapes,
//! kinds and names are looked at here; values (token ranges, finite floats) are checked where
//! the data lives.

use liger_ir::{Input, InputKind, Level, LossFn, Schedule};

use crate::Error;

/// A shape error.
pub(crate) fn shape_err(input: String, expected: String, got: &[usize]) -> Error {
    Error::Shape {
        input,
        expected,
        got: got.to_vec(),
    }
}

/// How a head's vocabulary rows relate to the loss's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VocabRule {
    /// `RunOptions::vocab_prefix`: a frozen head with more rows is used through its first V.
    pub prefix: bool,
    /// Whether this head is trained (never cut to a prefix).
    pub trainable: bool,
}

/// Checks head `name`'s `x [S,T,H]` and `w [V_head,H]` shapes (and `b [V_head]` when given)
/// against the batch's dims so far (the first head sets them); returns `(S, T, V, H)`. A head
/// with `V_head > V` passes only under [`VocabRule::prefix`] and only when frozen: the caller
/// then reads its first `V` rows (and bias entries).
pub(crate) fn head_shapes(
    name: &str,
    xs: &[usize],
    ws: &[usize],
    bs: Option<&[usize]>,
    dims: &mut Option<(usize, usize, usize)>,
    rule: VocabRule,
) -> Result<(usize, usize, usize, usize), Error> {
    if xs.len() != 3 {
        return Err(shape_err(format!("{name}.x"), "[S,T,H]".into(), xs));
    }
    if ws.len() != 2 {
        return Err(shape_err(format!("{name}.w"), "[V,H]".into(), ws));
    }
    let (s, t, v) = *dims.get_or_insert((xs[0], xs[1], ws[0]));
    if xs[0] != s || xs[1] != t {
        return Err(shape_err(
            format!("{name}.x"),
            format!("[S,T,H] with S={s}, T={t}"),
            xs,
        ));
    }
    let h = xs[2];
    if ws.len() == 2 && ws[0] > v && ws[1] == h {
        if !rule.prefix || rule.trainable {
            return Err(Error::HeadVocab {
                head: name.into(),
                got: ws[0],
                v,
                trainable: rule.trainable,
            });
        }
        if s == 0 || t == 0 || v == 0 || h == 0 {
            return Err(Error::EmptyBatch {
                what: format!("{name}: S={s}, T={t}, V={v}, H={h}"),
            });
        }
        if let Some(bs) = bs.filter(|bs| *bs != [ws[0]]) {
            return Err(shape_err(
                format!("{name}.b"),
                format!("[V] = [{}] (the head's own vocabulary)", ws[0]),
                bs,
            ));
        }
        return Ok((s, t, v, h));
    }
    if ws != [v, h] {
        return Err(shape_err(
            format!("{name}.w"),
            format!("[V,H] = [{v},{h}]"),
            ws,
        ));
    }
    if s == 0 || t == 0 || v == 0 || h == 0 {
        return Err(Error::EmptyBatch {
            what: format!("{name}: S={s}, T={t}, V={v}, H={h}"),
        });
    }
    if let Some(bs) = bs.filter(|bs| *bs != [v]) {
        return Err(shape_err(format!("{name}.b"), format!("[V] = [{v}]"), bs));
    }
    Ok((s, t, v, h))
}

/// The error for a head parameter given a tensor, or not given.
pub(crate) fn head_missing(loss: &str, name: &str, given_as_tensor: bool) -> Error {
    if given_as_tensor {
        Error::InputKind {
            loss: loss.into(),
            name: name.into(),
            kind: "logits",
            want: "a head (x, w, optional b)",
        }
    } else {
        Error::MissingInput {
            loss: loss.into(),
            name: name.into(),
            kind: "logits",
        }
    }
}

/// The error for a tensor parameter given a head, or not given.
pub(crate) fn tensor_missing(loss: &str, input: &Input, given_as_head: bool) -> Error {
    if given_as_head {
        Error::InputKind {
            loss: loss.into(),
            name: input.name.clone(),
            kind: input.kind.name(),
            want: "a tensor, not a head",
        }
    } else {
        Error::MissingInput {
            loss: loss.into(),
            name: input.name.clone(),
            kind: input.kind.name(),
        }
    }
}

/// Checks the shape of side input `input` (not a head, not a hyperparameter).
pub(crate) fn side_shape(
    input: &Input,
    shape: &[usize],
    (s, t, v): (usize, usize, usize),
) -> Result<(), Error> {
    let want: Vec<usize> = match input.kind {
        InputKind::Target | InputKind::Tokens | InputKind::RowInput | InputKind::RowMask => {
            vec![s, t]
        }
        InputKind::SeqInput | InputKind::SeqMask => vec![s],
        InputKind::VocabInput => vec![v],
        _ => vec![],
    };
    let ok = if want.is_empty() {
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) == Some(1)
    } else {
        shape == want.as_slice()
    };
    if ok {
        return Ok(());
    }
    let expected = match input.kind {
        InputKind::SeqInput | InputKind::SeqMask => format!("[S] = [{s}]"),
        InputKind::VocabInput => format!("[V] = [{v}]"),
        InputKind::ScalarInput => "a scalar ([] or [1])".into(),
        _ => format!("[S,T] = [{s},{t}]"),
    };
    Err(shape_err(input.name.clone(), expected, shape))
}

/// Checks that every given name is an input of `g` and that a paired loss has an even number
/// of sequences.
pub(crate) fn names_and_pairs<'n>(
    g: &LossFn,
    sched: &Schedule,
    names: impl Iterator<Item = &'n str>,
    num_seqs: usize,
) -> Result<(), Error> {
    for name in names {
        if g.input_by_name(name).is_none() {
            let known: Vec<&str> = g
                .inputs
                .iter()
                .filter(|i| i.kind != InputKind::Param)
                .map(|i| i.name.as_str())
                .collect();
            return Err(Error::UnknownInput {
                loss: g.name.clone(),
                name: name.into(),
                known: known.join(", "),
            });
        }
    }
    if sched.group_level == Some(Level::Pair) && !num_seqs.is_multiple_of(2) {
        return Err(Error::OddSequenceCount { num_seqs });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: bool, trainable: bool) -> VocabRule {
        VocabRule { prefix, trainable }
    }

    #[test]
    fn a_larger_vocabulary_passes_only_for_a_frozen_head_with_the_prefix_option() {
        let first = |dims: &mut Option<(usize, usize, usize)>| {
            head_shapes(
                "student",
                &[2, 3, 4],
                &[10, 4],
                None,
                dims,
                rule(false, true),
            )
        };
        let mut dims = None;
        assert_eq!(first(&mut dims).ok(), Some((2, 3, 10, 4)));
        // A frozen teacher with 12 rows (and its own 12-entry bias).
        let teacher = |dims: &mut Option<(usize, usize, usize)>, r: VocabRule, b: &[usize]| {
            head_shapes("teacher", &[2, 3, 6], &[12, 6], Some(b), dims, r)
        };
        assert!(matches!(
            teacher(&mut dims, rule(false, false), &[12]),
            Err(Error::HeadVocab {
                got: 12,
                v: 10,
                trainable: false,
                ..
            })
        ));
        assert_eq!(
            teacher(&mut dims, rule(true, false), &[12]).ok(),
            Some((2, 3, 10, 6))
        );
        // Its bias must have its own vocabulary's length.
        assert!(matches!(
            teacher(&mut dims, rule(true, false), &[10]),
            Err(Error::Shape { .. })
        ));
        // A trained head is never cut, option or not.
        assert!(matches!(
            teacher(&mut dims, rule(true, true), &[12]),
            Err(Error::HeadVocab {
                trainable: true,
                ..
            })
        ));
        // A smaller vocabulary is a shape error either way.
        assert!(matches!(
            head_shapes(
                "teacher",
                &[2, 3, 6],
                &[9, 6],
                None,
                &mut dims,
                rule(true, false)
            ),
            Err(Error::Shape { .. })
        ));
        let msg = teacher(&mut dims, rule(true, true), &[12])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("a trained head must have exactly that vocabulary"),
            "{msg}"
        );
    }
}
