//! Tensors read from `.safetensors` files on demand, one at a time, with positioned reads
//! rather than a memory map: a model holds its weights once. (Copying out of a mapping leaves
//! every touched page of the file resident too, so loading a model peaked at twice its size.)
//!
//! The header is checked as a whole when the file is opened (offsets inside the file, no
//! overlaps), and a tensor's shape is compared with the one the model asks for before its bytes
//! are allocated.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::inspect::regular_file;
use crate::WeightsError;

struct Slot {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// The tensors of one or more files (a component's shards), by stored name.
pub struct TensorFiles {
    files: Vec<(PathBuf, File)>,
    slots: HashMap<String, Slot>,
}

impl TensorFiles {
    /// Opens `paths` and reads their headers. A name present in two files is an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self, WeightsError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut slots = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            regular_file(path)?;
            let io = |source| WeightsError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io)?;
            // SAFETY: a read-only mapping used only to validate the header; it is dropped before
            // any tensor is read, so no page of the data stays resident.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            let (n, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
                WeightsError::NotSafetensors {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            let base = 8 + n as u64;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                let slot = Slot {
                    file: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + s as u64,
                    end: base + e as u64,
                };
                if slots.insert(name.clone(), slot).is_some() {
                    return Err(WeightsError::Tensor {
                        path: path.clone(),
                        name,
                        reason: "also stored in another file of this component".into(),
                    });
                }
            }
            drop(map);
            files.push((path.clone(), file));
        }
        Ok(Self { files, slots })
    }

    /// Stored names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.slots.get(name).map(|s| s.shape.as_slice())
    }

    /// The file that holds `name`.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.slots.get(name).map(|s| self.files[s.file].0.as_path())
    }

    /// Reads `name` in its stored dtype.
    pub fn read(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let slot = self.slots.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let (path, file) = &self.files[slot.file];
        let len = usize::try_from(slot.end - slot.start)
            .map_err(|_| candle_core::Error::Msg(format!("{name}: too large to address")))?;
        let dtype = candle_dtype(slot.dtype).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: {name}: element type {:?} is not supported",
                path.display(),
                slot.dtype
            ))
        })?;
        let numel: usize = slot.shape.iter().product();
        if numel.checked_mul(dtype.size_in_bytes()) != Some(len) {
            return Err(candle_core::Error::Msg(format!(
                "{}: {name}: {len} bytes for {:?} of {:?}",
                path.display(),
                slot.shape,
                slot.dtype
            )));
        }
        let at = (file, slot.start, numel, slot.shape.as_slice(), device);
        let t = match dtype {
            DType::F32 => read_vec::<f32>(at),
            DType::F16 => read_vec::<half::f16>(at),
            DType::BF16 => read_vec::<half::bf16>(at),
            DType::F64 => read_vec::<f64>(at),
            DType::U8 => read_vec::<u8>(at),
            DType::U32 => read_vec::<u32>(at),
            _ => read_vec::<i64>(at),
        };
        t.map_err(|e| candle_core::Error::Msg(format!("{}: reading {name}: {e}", path.display())))
    }

    /// Reads `name` as `dtype`, checking its stored shape against `shape` first.
    pub fn read_as(
        &self,
        name: &str,
        shape: &Shape,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(stored) = self.shape(name) {
            if stored != shape.dims() {
                return Err(candle_core::Error::UnexpectedShape {
                    msg: format!("shape mismatch for {name}"),
                    expected: shape.clone(),
                    got: stored.into(),
                }
                .bt());
            }
        }
        self.read(name, device)?.to_dtype(dtype)
    }
}

// Stored tensors are little-endian, and read into memory as they are.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "safetensors data is little-endian"
);

/// Reads `numel` values of `T` at `start` straight into the tensor's own buffer.
fn read_vec<T: candle_core::WithDType>(
    (file, start, numel, shape, device): (&File, u64, usize, &[usize], &Device),
) -> candle_core::Result<Tensor> {
    let mut v = zeroed_vec::<T>(numel)?;
    // SAFETY: T is one of f32, f16, bf16, f64, u8, u32, i64: plain numbers for which every byte
    // pattern is a value; the slice covers exactly the vector's initialised elements.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            v.as_mut_ptr().cast::<u8>(),
            numel * std::mem::size_of::<T>(),
        )
    };
    file.read_exact_at(bytes, start)?;
    Tensor::from_vec(v, shape, device)
}

/// `n` zeros of `T`, from the allocator's zeroed pages (fresh pages are not written twice).
fn zeroed_vec<T: candle_core::WithDType>(n: usize) -> candle_core::Result<Vec<T>> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n)
        .map_err(|_| candle_core::Error::Msg(format!("{n} values are too many to allocate")))?;
    // SAFETY: the layout is non-zero-sized; the allocation is checked for failure; all-zero
    // bytes are the value 0 for every T used here; a Vec<T> with capacity n frees exactly this
    // layout through the same global allocator.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<T>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Ok(Vec::from_raw_parts(ptr, n, n))
    }
}

/// The candle element type of a stored one.
fn candle_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::U8 => DType::U8,
        S::U32 => DType::U32,
        S::I64 => DType::I64,
        _ => return None,
    })
}

impl SimpleBackend for TensorFiles {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read_as(name, &s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, tensors: &[(&str, Vec<f32>, Vec<usize>)]) {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, _, s), b)| {
                (
                    *n,
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn reads_tensors_across_shards_and_checks_shapes_first() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            dir.path().join("a.safetensors"),
            dir.path().join("b.safetensors"),
        );
        write(&a, &[("x", vec![1.0, 2.0, 3.0, 4.0], vec![2, 2])]);
        write(&b, &[("y", vec![5.0, 6.0], vec![2])]);
        let f = TensorFiles::open(&[a.clone(), b.clone()]).unwrap();
        let x = f
            .read_as("x", &(2, 2).into(), DType::BF16, &Device::Cpu)
            .unwrap();
        assert_eq!(x.dtype(), DType::BF16);
        assert_eq!(
            x.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        assert_eq!(
            f.read("y", &Device::Cpu).unwrap().to_vec1::<f32>().unwrap(),
            vec![5.0, 6.0]
        );
        let e = f
            .read_as("x", &(4,).into(), DType::F32, &Device::Cpu)
            .unwrap_err();
        assert!(e.to_string().contains("shape mismatch for x"), "{e}");
        assert!(f.read("z", &Device::Cpu).is_err());
        // The same name in two shards is refused.
        write(&b, &[("x", vec![5.0, 6.0], vec![2])]);
        assert!(TensorFiles::open(&[a, b]).is_err());
    }
}
