//! safetensors files in and out, for the `liger` binary and for users who keep batches on
//! disk.
//!
//! Reading maps the file ([`TensorFile`]): a tensor whose bytes are aligned for its element
//! type (as safetensors writers lay them out) is viewed in place, without a copy, so the host
//! heap of a run follows its working-memory budget rather than the file's size; an unaligned
//! tensor, and bools (whose bytes must be checked), are copied. bf16, f16, f32, f64, i64, i32 and
//! bool are read. Writing ([`write()`]) goes to a temporary file in the destination's directory,
//! is synced and renamed into place, so a failed or interrupted write (a full disk, a file-size
//! limit) leaves the previous file as it was and no partial file behind.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors, View};

use crate::{Error, TensorData, TensorView};

/// An owned tensor.
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

/// The elements of `b` (little-endian bytes of `dtype`), copied into an owned buffer.
fn owned_data(path: &str, name: &str, dtype: Dtype, b: &[u8]) -> Result<OwnedData, Error> {
    Ok(match dtype {
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
    })
}

/// Where a tensor's elements are.
#[derive(Debug)]
enum Stored {
    /// In the map, bytes `[start, end)`, aligned for the dtype.
    Mapped(Dtype, usize, usize),
    /// Copied.
    Owned(OwnedData),
}

/// A safetensors file, mapped: tensors are viewed in place where they are aligned.
#[derive(Debug)]
pub struct TensorFile {
    path: String,
    map: memmap2::Mmap,
    tensors: BTreeMap<String, (Vec<usize>, Stored)>,
}

impl TensorFile {
    /// Maps and checks `path` (its header, every tensor's dtype and extent).
    pub fn open(path: &str) -> Result<TensorFile, Error> {
        let file = File::open(path).map_err(|e| file_err(path, e))?;
        // SAFETY: the map is read only. Like every mapped reader, we rely on no other process
        // truncating or rewriting the file while the run reads it (which would show changed
        // bytes or fault); the file is the caller's input, opened for the duration of the run.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| file_err(path, e))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| file_err(path, format!("not a safetensors file: {e}")))?;
        let base = map.as_ptr() as usize;
        let mut tensors = BTreeMap::new();
        for (name, t) in st.tensors() {
            let b = t.data();
            let start = b.as_ptr() as usize - base;
            let aligned = match t.dtype() {
                Dtype::F64 | Dtype::I64 => b.as_ptr().align_offset(8) == 0,
                Dtype::F32 | Dtype::I32 => b.as_ptr().align_offset(4) == 0,
                Dtype::F16 | Dtype::BF16 => b.as_ptr().align_offset(2) == 0,
                _ => false,
            };
            let stored = if aligned && cfg!(target_endian = "little") {
                Stored::Mapped(t.dtype(), start, start + b.len())
            } else {
                Stored::Owned(owned_data(path, &name, t.dtype(), b)?)
            };
            tensors.insert(name, (t.shape().to_vec(), stored));
        }
        Ok(TensorFile {
            path: path.into(),
            map,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Every tensor's name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(s, _)| s.as_slice())
    }

    /// A view of tensor `name` (in place when aligned), or `None` when the file has none.
    pub fn view(&self, name: &str) -> Option<Result<TensorView<'_>, Error>> {
        let (shape, stored) = self.tensors.get(name)?;
        let data: Result<TensorData<'_>, Error> = match stored {
            Stored::Mapped(dtype, a, b) => {
                let bytes = &self.map[*a..*b];
                let cast = |what: &str| {
                    file_err(
                        &self.path,
                        format!("tensor `{name}`: misaligned {what} data"),
                    )
                };
                match dtype {
                    Dtype::F64 => bytemuck::try_cast_slice::<u8, f64>(bytes)
                        .map(TensorData::F64)
                        .map_err(|_| cast("f64")),
                    Dtype::F32 => bytemuck::try_cast_slice::<u8, f32>(bytes)
                        .map(TensorData::F32)
                        .map_err(|_| cast("f32")),
                    Dtype::F16 => bytemuck::try_cast_slice::<u8, f16>(bytes)
                        .map(TensorData::F16)
                        .map_err(|_| cast("f16")),
                    Dtype::BF16 => bytemuck::try_cast_slice::<u8, bf16>(bytes)
                        .map(TensorData::BF16)
                        .map_err(|_| cast("bf16")),
                    Dtype::I64 => bytemuck::try_cast_slice::<u8, i64>(bytes)
                        .map(TensorData::I64)
                        .map_err(|_| cast("i64")),
                    Dtype::I32 => bytemuck::try_cast_slice::<u8, i32>(bytes)
                        .map(TensorData::I32)
                        .map_err(|_| cast("i32")),
                    other => Err(file_err(
                        &self.path,
                        format!("tensor `{name}` has dtype {other:?}, which liger does not read"),
                    )),
                }
            }
            Stored::Owned(d) => Ok(match d {
                OwnedData::F64(x) => x.into(),
                OwnedData::F32(x) => x.into(),
                OwnedData::F16(x) => x.into(),
                OwnedData::BF16(x) => x.into(),
                OwnedData::I64(x) => x.into(),
                OwnedData::I32(x) => x.into(),
                OwnedData::Bool(x) => x.into(),
            }),
        };
        Some(data.and_then(|d| Ok(TensorView::new(d, shape)?)))
    }

    /// Bytes copied out of the map (unaligned tensors and bools).
    pub fn copied_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|(_, s)| match s {
                Stored::Mapped(..) => 0,
                Stored::Owned(d) => match d {
                    OwnedData::F64(x) => x.len() * 8,
                    OwnedData::F32(x) => x.len() * 4,
                    OwnedData::F16(x) => x.len() * 2,
                    OwnedData::BF16(x) => x.len() * 2,
                    OwnedData::I64(x) => x.len() * 8,
                    OwnedData::I32(x) => x.len() * 4,
                    OwnedData::Bool(x) => x.len(),
                },
            })
            .sum()
    }
}

/// Reads every tensor of a safetensors file into owned buffers.
pub fn read(path: &str) -> Result<BTreeMap<String, OwnedTensor>, Error> {
    let f = TensorFile::open(path)?;
    let mut out = BTreeMap::new();
    for (name, (shape, stored)) in &f.tensors {
        let data = match stored {
            Stored::Mapped(dtype, a, b) => owned_data(path, name, *dtype, &f.map[*a..*b])?,
            Stored::Owned(d) => d.clone(),
        };
        out.insert(
            name.clone(),
            OwnedTensor {
                shape: shape.clone(),
                data,
            },
        );
    }
    Ok(out)
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        match self.data {
            OwnedData::F64(_) => Dtype::F64,
            OwnedData::F32(_) => Dtype::F32,
            OwnedData::F16(_) => Dtype::F16,
            OwnedData::BF16(_) => Dtype::BF16,
            OwnedData::I64(_) => Dtype::I64,
            OwnedData::I32(_) => Dtype::I32,
            OwnedData::Bool(_) => Dtype::BOOL,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // Little-endian machines write the elements' own bytes (no copy); others convert.
        if cfg!(target_endian = "little") {
            return match &self.data {
                OwnedData::F64(x) => Cow::Borrowed(bytemuck::cast_slice(x)),
                OwnedData::F32(x) => Cow::Borrowed(bytemuck::cast_slice(x)),
                OwnedData::F16(x) => Cow::Borrowed(bytemuck::cast_slice(x)),
                OwnedData::BF16(x) => Cow::Borrowed(bytemuck::cast_slice(x)),
                OwnedData::I64(x) => Cow::Borrowed(bytemuck::cast_slice(x)),
                OwnedData::I32(x) => Cow::Borrowed(bytemuck::cast_slice(x)),
                OwnedData::Bool(x) => Cow::Owned(x.iter().map(|&v| u8::from(v)).collect()),
            };
        }
        Cow::Owned(match &self.data {
            OwnedData::F64(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            OwnedData::F32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            OwnedData::F16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
            OwnedData::BF16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
            OwnedData::I64(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            OwnedData::I32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            OwnedData::Bool(x) => x.iter().map(|&v| u8::from(v)).collect(),
        })
    }

    fn data_len(&self) -> usize {
        let n: usize = self.shape.iter().product();
        n * match self.data {
            OwnedData::F64(_) | OwnedData::I64(_) => 8,
            OwnedData::F32(_) | OwnedData::I32(_) => 4,
            OwnedData::F16(_) | OwnedData::BF16(_) => 2,
            OwnedData::Bool(_) => 1,
        }
    }
}

/// A temporary file next to `dest`, removed on drop unless kept.
struct Temp(PathBuf, bool);

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Writes tensors to a safetensors file atomically: into a temporary file in the same
/// directory, synced, then renamed over `path` (the directory synced too). A failed write
/// leaves `path` as it was.
pub fn write(path: &str, tensors: &BTreeMap<String, OwnedTensor>) -> Result<(), Error> {
    let dest = Path::new(path);
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| file_err(path, "not a file name"))?
        .to_string_lossy()
        .into_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut tmp = Temp(
        dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id())),
        false,
    );
    for (n, t) in tensors {
        let want: usize = t.shape.iter().product();
        let have = match &t.data {
            OwnedData::F64(x) => x.len(),
            OwnedData::F32(x) => x.len(),
            OwnedData::F16(x) => x.len(),
            OwnedData::BF16(x) => x.len(),
            OwnedData::I64(x) => x.len(),
            OwnedData::I32(x) => x.len(),
            OwnedData::Bool(x) => x.len(),
        };
        if want != have {
            return Err(file_err(
                path,
                format!("tensor `{n}` has {have} elements for shape {:?}", t.shape),
            ));
        }
    }
    safetensors::serialize_to_file(tensors.iter(), None, &tmp.0).map_err(|e| {
        file_err(
            path,
            format!("writing failed ({e}); the previous file is unchanged"),
        )
    })?;
    File::open(&tmp.0).and_then(|f| f.sync_all()).map_err(|e| {
        file_err(
            path,
            format!("syncing failed ({e}); the previous file is unchanged"),
        )
    })?;
    std::fs::rename(&tmp.0, dest).map_err(|e| file_err(path, e))?;
    tmp.1 = true;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes f32 tensors `(name, shape, data)` to a safetensors file (atomically, as [`write()`]).
pub fn write_f32(path: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<(), Error> {
    let owned: BTreeMap<String, OwnedTensor> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                OwnedTensor {
                    shape: s.clone(),
                    data: OwnedData::F32(d.clone()),
                },
            )
        })
        .collect();
    write(path, &owned)
}
