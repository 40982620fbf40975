//! Host tensor views: borrowed data with a dtype and a shape.
//!
//! Inputs reach the library as [`TensorView`]s (bf16, f16, f32, f64 floats; i32/i64 ids;
//! bools). A view checks at construction that its element count matches its shape, so every
//! later shape check compares shapes only. A [`Head`] is one lm head: hidden states `x`
//! `[S,T,H]`, weight `w` `[V,H]` and an optional bias `b` `[V]`.

use half::{bf16, f16};

use crate::Error;

/// An element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 64-bit float.
    F64,
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// Boolean.
    Bool,
}

impl DType {
    /// The usual short name (`f32`, `bf16`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Bool => 1,
        }
    }

    /// Whether it is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Borrowed elements of one dtype.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TensorData<'a> {
    /// f64 elements.
    F64(&'a [f64]),
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
    /// i64 elements.
    I64(&'a [i64]),
    /// i32 elements.
    I32(&'a [i32]),
    /// bool elements.
    Bool(&'a [bool]),
}

macro_rules! from_slice {
    ($($t:ty => $v:ident),*) => {$(
        impl<'a> From<&'a [$t]> for TensorData<'a> {
            fn from(x: &'a [$t]) -> Self { TensorData::$v(x) }
        }
        impl<'a> From<&'a Vec<$t>> for TensorData<'a> {
            fn from(x: &'a Vec<$t>) -> Self { TensorData::$v(x.as_slice()) }
        }
    )*};
}
from_slice!(f64 => F64, f32 => F32, f16 => F16, bf16 => BF16, i64 => I64, i32 => I32, bool => Bool);

impl TensorData<'_> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F64(_) => DType::F64,
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F64(x) => x.len(),
            TensorData::F32(x) => x.len(),
            TensorData::F16(x) => x.len(),
            TensorData::BF16(x) => x.len(),
            TensorData::I64(x) => x.len(),
            TensorData::I32(x) => x.len(),
            TensorData::Bool(x) => x.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A borrowed tensor: data and a row-major shape whose product is the element count.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorView<'a> {
    data: TensorData<'a>,
    shape: Vec<usize>,
}

impl<'a> TensorView<'a> {
    /// A view of `data` with `shape`; the element count must match.
    pub fn new(data: impl Into<TensorData<'a>>, shape: &[usize]) -> Result<Self, Error> {
        let data = data.into();
        // A product that overflows cannot be the length of any slice.
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(data.len()) {
            return Err(Error::ViewShape {
                shape: shape.to_vec(),
                elements: data.len(),
            });
        }
        Ok(TensorView {
            data,
            shape: shape.to_vec(),
        })
    }

    /// A 0-dimensional view of one element.
    pub fn scalar(data: impl Into<TensorData<'a>>) -> Result<Self, Error> {
        Self::new(data, &[])
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The data.
    pub fn data(&self) -> TensorData<'a> {
        self.data
    }

    /// The first `n` entries along the first axis (a prefix of the data, no copy); `None`
    /// for a 0-dimensional view or `n` beyond the first axis.
    pub fn leading(&self, n: usize) -> Option<TensorView<'a>> {
        let (&first, rest) = self.shape.split_first()?;
        if n > first {
            return None;
        }
        let len = n * rest.iter().product::<usize>();
        let data = match self.data {
            TensorData::F64(x) => TensorData::F64(&x[..len]),
            TensorData::F32(x) => TensorData::F32(&x[..len]),
            TensorData::F16(x) => TensorData::F16(&x[..len]),
            TensorData::BF16(x) => TensorData::BF16(&x[..len]),
            TensorData::I64(x) => TensorData::I64(&x[..len]),
            TensorData::I32(x) => TensorData::I32(&x[..len]),
            TensorData::Bool(x) => TensorData::Bool(&x[..len]),
        };
        let mut shape = self.shape.clone();
        shape[0] = n;
        Some(TensorView { data, shape })
    }

    /// The elements as f64 (floats only).
    pub fn to_f64(&self, name: &str) -> Result<Vec<f64>, Error> {
        Ok(match self.data {
            TensorData::F64(x) => x.to_vec(),
            TensorData::F32(x) => x.iter().map(|&v| f64::from(v)).collect(),
            TensorData::F16(x) => x.iter().map(|v| v.to_f64()).collect(),
            TensorData::BF16(x) => x.iter().map(|v| v.to_f64()).collect(),
            _ => {
                return Err(Error::InputDType {
                    input: name.into(),
                    expected: "a float type (f64, f32, f16, bf16)",
                    got: self.dtype(),
                });
            }
        })
    }

    /// The elements as i64 (integer ids only).
    pub fn to_i64(&self, name: &str) -> Result<Vec<i64>, Error> {
        Ok(match self.data {
            TensorData::I64(x) => x.to_vec(),
            TensorData::I32(x) => x.iter().map(|&v| i64::from(v)).collect(),
            _ => {
                return Err(Error::InputDType {
                    input: name.into(),
                    expected: "token ids (i64 or i32)",
                    got: self.dtype(),
                });
            }
        })
    }

    /// The elements as bools (bool, or 0/1 integers as attention masks often are).
    pub fn to_bool(&self, name: &str) -> Result<Vec<bool>, Error> {
        Ok(match self.data {
            TensorData::Bool(x) => x.to_vec(),
            TensorData::I64(x) => x.iter().map(|&v| v != 0).collect(),
            TensorData::I32(x) => x.iter().map(|&v| v != 0).collect(),
            _ => {
                return Err(Error::InputDType {
                    input: name.into(),
                    expected: "a mask (bool, or 0/1 in i64 or i32)",
                    got: self.dtype(),
                });
            }
        })
    }
}

/// One lm head: hidden states, weight and optional bias.
#[derive(Clone, Debug, PartialEq)]
pub struct Head<'a> {
    /// Hidden states `[S,T,H]`.
    pub x: TensorView<'a>,
    /// lm-head weight `[V,H]`.
    pub w: TensorView<'a>,
    /// Optional bias `[V]`.
    pub b: Option<TensorView<'a>>,
}

impl<'a> Head<'a> {
    /// A head without bias.
    pub fn new(x: TensorView<'a>, w: TensorView<'a>) -> Self {
        Head { x, w, b: None }
    }

    /// A head with a bias.
    pub fn with_bias(x: TensorView<'a>, w: TensorView<'a>, b: TensorView<'a>) -> Self {
        Head { x, w, b: Some(b) }
    }
}
