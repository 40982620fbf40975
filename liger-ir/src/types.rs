//! Levels and dtypes: the type of every IR value.
//!
//! A value's [`Type`] is its element [`DType`] and its [`Level`]. Levels are ordered fine to
//! coarse (`Vocab < Row < Seq < Pair < Batch`); elementwise ops produce the finest level of their
//! operands (coarser operands broadcast), and only explicit reductions go coarser.

use std::fmt;

/// Where a value lives: what it is indexed by. Ordered fine (`Vocab`) to coarse (`Batch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Per row and vocabulary entry (logits and anything elementwise over them).
    Vocab,
    /// Per row (token position) of the padded `[S, T]` batch.
    Row,
    /// Per sequence.
    Seq,
    /// Per preference pair: sequence `i` (chosen) and `P + i` (rejected).
    Pair,
    /// One scalar for the whole batch.
    Batch,
}

impl Level {
    /// Every level, fine to coarse.
    pub const ALL: [Level; 5] = [
        Level::Vocab,
        Level::Row,
        Level::Seq,
        Level::Pair,
        Level::Batch,
    ];

    /// The text-form name (`vocab`, `row`, `seq`, `pair`, `batch`).
    pub fn name(self) -> &'static str {
        match self {
            Level::Vocab => "vocab",
            Level::Row => "row",
            Level::Seq => "seq",
            Level::Pair => "pair",
            Level::Batch => "batch",
        }
    }

    /// Parses a text-form level name.
    pub fn from_name(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == s)
    }

    /// The finer of two levels (the level an elementwise op over both produces).
    pub fn finest(self, other: Level) -> Level {
        self.min(other)
    }

    /// Whether a value at `self` may be broadcast to `to` (equal, or `self` coarser).
    pub fn broadcasts_to(self, to: Level) -> bool {
        self >= to
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The element type of a value. All float arithmetic is logically f32 (the f64 interpreter
/// evaluates it in f64 as the reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// A floating-point number.
    F32,
    /// A mask or comparison result.
    Bool,
    /// A vocabulary index (targets, `argmax`); a `Target` index may be invalid (`ignore_index`).
    Idx,
}

impl DType {
    /// The text-form name.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bool => "bool",
            DType::Idx => "idx",
        }
    }

    /// Parses a text-form dtype name.
    pub fn from_name(s: &str) -> Option<DType> {
        [DType::F32, DType::Bool, DType::Idx]
            .into_iter()
            .find(|d| d.name() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a value: dtype at a level, written `f32[row]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Type {
    /// Element type.
    pub dtype: DType,
    /// Level.
    pub level: Level,
}

impl Type {
    /// A float at `level`.
    pub const fn f32(level: Level) -> Type {
        Type {
            dtype: DType::F32,
            level,
        }
    }
    /// A bool (mask) at `level`.
    pub const fn bool(level: Level) -> Type {
        Type {
            dtype: DType::Bool,
            level,
        }
    }
    /// An index at `level`.
    pub const fn idx(level: Level) -> Type {
        Type {
            dtype: DType::Idx,
            level,
        }
    }

    /// Parses `f32[row]`.
    pub fn parse(s: &str) -> Option<Type> {
        let (d, rest) = s.split_once('[')?;
        let l = rest.strip_suffix(']')?;
        Some(Type {
            dtype: DType::from_name(d.trim())?,
            level: Level::from_name(l.trim())?,
        })
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.dtype, self.level)
    }
}
