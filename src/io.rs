//! safetensors files in and out, for the `liger` binary and for users who keep batches on
//! disk.
//!
//! Tensors are copied out of the file into owned, aligned buffers (safetensors data need not
//! be aligned for the element type); bf16, f16, f32, f64, i64, i32 and bool are read.

use std::collections::BTreeMap;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::{Error, TensorData, TensorView};

/// An owned tensor read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements.
    pub data: OwnedData,
}

/// Owned elements of one dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedData {
    /// f64
    F64(Vec<f64>),
    /// f32
    F32(Vec<f32>),
    /// f16
    F16(Vec<f16>),
    /// bf16
    BF16(Vec<bf16>),
    /// i64
    I64(Vec<i64>),
    /// i32
    I32(Vec<i32>),
    /// bool
    Bool(Vec<bool>),
}

impl OwnedTensor {
    /// A borrowed view.
    pub fn view(&self) -> Result<TensorView<'_>, Error> {
        let data: TensorData<'_> = match &self.data {
            OwnedData::F64(x) => x.into(),
            OwnedData::F32(x) => x.into(),
            OwnedData::F16(x) => x.into(),
            OwnedData::BF16(x) => x.into(),
            OwnedData::I64(x) => x.into(),
            OwnedData::I32(x) => x.into(),
            OwnedData::Bool(x) => x.into(),
        };
        Ok(TensorView::new(data, &self.shape)?)
    }
}

fn file_err(path: &str, why: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.into(),
        why: why.to_string(),
    }
}

fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    b.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &str) -> Result<BTreeMap<String, OwnedTensor>, Error> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| file_err(path, format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        let b = t.data();
        let data = match t.dtype() {
            Dtype::F64 => OwnedData::F64(chunks::<8>(b).map(f64::from_le_bytes).collect()),
            Dtype::F32 => OwnedData::F32(chunks::<4>(b).map(f32::from_le_bytes).collect()),
            Dtype::F16 => OwnedData::F16(
                chunks::<2>(b)
                    .map(|c| f16::from_bits(u16::from_le_bytes(c)))
                    .collect(),
            ),
            Dtype::BF16 => OwnedData::BF16(
                chunks::<2>(b)
                    .map(|c| bf16::from_bits(u16::from_le_bytes(c)))
                    .collect(),
            ),
            Dtype::I64 => OwnedData::I64(chunks::<8>(b).map(i64::from_le_bytes).collect()),
            Dtype::I32 => OwnedData::I32(chunks::<4>(b).map(i32::from_le_bytes).collect()),
            Dtype::BOOL => OwnedData::Bool(b.iter().map(|&x| x != 0).collect()),
            other => {
                return Err(file_err(
                    path,
                    format!("tensor `{name}` has dtype {other:?}, which liger does not read"),
                ));
            }
        };
        out.insert(
            name,
            OwnedTensor {
                shape: t.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Writes f32 tensors `(name, shape, data)` to a safetensors file.
pub fn write_f32(path: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<(), Error> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::new();
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let v = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
            .map_err(|e| file_err(path, format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), v));
    }
    let out = safetensors::serialize(views, None).map_err(|e| file_err(path, e))?;
    std::fs::write(path, out).map_err(|e| file_err(path, e))
}

/// Writes tensors of any supported dtype to a safetensors file.
pub fn write(path: &str, tensors: &BTreeMap<String, OwnedTensor>) -> Result<(), Error> {
    let mut bufs = Vec::new();
    for (name, t) in tensors {
        let (dtype, bytes): (Dtype, Vec<u8>) = match &t.data {
            OwnedData::F64(x) => (Dtype::F64, x.iter().flat_map(|v| v.to_le_bytes()).collect()),
            OwnedData::F32(x) => (Dtype::F32, x.iter().flat_map(|v| v.to_le_bytes()).collect()),
            OwnedData::F16(x) => (
                Dtype::F16,
                x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
            ),
            OwnedData::BF16(x) => (
                Dtype::BF16,
                x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
            ),
            OwnedData::I64(x) => (Dtype::I64, x.iter().flat_map(|v| v.to_le_bytes()).collect()),
            OwnedData::I32(x) => (Dtype::I32, x.iter().flat_map(|v| v.to_le_bytes()).collect()),
            OwnedData::Bool(x) => (Dtype::BOOL, x.iter().map(|&v| u8::from(v)).collect()),
        };
        bufs.push((name.clone(), dtype, t.shape.clone(), bytes));
    }
    let mut views = Vec::new();
    for (name, dtype, shape, b) in &bufs {
        let v = safetensors::tensor::TensorView::new(*dtype, shape.clone(), b)
            .map_err(|e| file_err(path, format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), v));
    }
    let out = safetensors::serialize(views, None).map_err(|e| file_err(path, e))?;
    std::fs::write(path, out).map_err(|e| file_err(path, e))
}
