//! Tensor memory shared between processes: sealed memfds, mapped read-only by the receiver.
//!
//! A tensor made in ordinary memory is written once into a fresh memfd, which is then sealed
//! against writes and resizing. A tensor that already lives in such a segment (anything that
//! came from another process) is passed on by descriptor without copying. The receiver checks
//! the seals before it maps a segment: an unsealed one could be truncated under the mapping by
//! the other process, which would fault the reader.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use latentflow_plugin_api::{DLDevice, DType, Tensor};
use memmap2::{Mmap, MmapOptions};
use rustix::fs::{fcntl_add_seals, fcntl_get_seals, memfd_create, MemfdFlags, SealFlags};
use serde::{Deserialize, Serialize};

/// A tensor on the wire: its layout, and the index of its segment among the frame's
/// descriptors (none for an empty tensor).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireTensor {
    code: u8,
    bits: u8,
    shape: Vec<u64>,
    strides: Vec<i64>,
    /// Bytes from the start of the segment to element 0.
    offset: u64,
    fd: Option<u32>,
}

/// A mapped, sealed segment: what keeps an imported tensor's memory alive.
pub struct Segment {
    file: File,
    map: Mmap,
}

const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE)
    .union(SealFlags::SEAL);

/// Describes `t` for the wire, pushing its segment onto `fds`. Copies the data once unless it
/// already lives in a shared segment.
pub fn export(t: &Tensor, fds: &mut Vec<OwnedFd>) -> Result<WireTensor, String> {
    let device = t.device();
    if device.device_type != DLDevice::CPU.device_type {
        return Err(format!(
            "a tensor on device type {} cannot reach an isolated plugin; isolated plugins take CPU tensors",
            device.device_type
        ));
    }
    let dtype = t
        .dtype()
        .ok_or_else(|| "a tensor of an element type this host does not know".to_string())?;
    let (code, bits) = dtype.dlpack();
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    if t.numel() == 0 {
        return Ok(WireTensor {
            code,
            bits,
            strides: vec![0; shape.len()],
            shape,
            offset: 0,
            fd: None,
        });
    }
    if let Some(seg) = t.local_owner::<Segment>() {
        let dl = t.dl();
        let start = (dl.data as usize)
            .checked_sub(seg.map.as_ptr() as usize)
            .ok_or("a shared tensor outside its segment")?;
        let fd = seg
            .file
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("cannot share a tensor: {e}"))?;
        fds.push(fd);
        return Ok(WireTensor {
            code,
            bits,
            shape,
            strides: t.strides(),
            offset: start as u64 + dl.byte_offset,
            fd: Some(fds.len() as u32 - 1),
        });
    }
    let fd = memfd_create(
        "latentflow-tensor",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| format!("cannot create shared memory: {e}"))?;
    let mut file = File::from(fd);
    let written = match t.as_bytes() {
        Some(bytes) => file.write_all(bytes),
        None => {
            let bytes = t.to_contiguous_bytes().map_err(|e| e.to_string())?;
            file.write_all(&bytes)
        }
    };
    written.map_err(|e| format!("cannot fill shared memory: {e}"))?;
    fcntl_add_seals(&file, SEALS).map_err(|e| format!("cannot seal shared memory: {e}"))?;
    fds.push(file.into());
    let strides = contiguous(&shape);
    Ok(WireTensor {
        code,
        bits,
        shape,
        strides,
        offset: 0,
        fd: Some(fds.len() as u32 - 1),
    })
}

fn contiguous(shape: &[u64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1].max(1) as i64);
    }
    strides
}

/// Maps the tensor `w` describes, taking its descriptor from `fds`. Every size, stride and
/// offset is checked against the segment before anything is mapped.
pub fn import(w: &WireTensor, fds: &mut [Option<OwnedFd>]) -> Result<Tensor, String> {
    let dtype = DType::from_dlpack(w.code, w.bits)
        .ok_or_else(|| format!("unknown element type (code {}, {} bits)", w.code, w.bits))?;
    let shape: Vec<usize> = w
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| "a dimension too large".to_string()))
        .collect::<Result<_, _>>()?;
    if shape.len() != w.strides.len() || shape.len() > 16 {
        return Err("a tensor with a malformed layout".into());
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("a tensor whose size overflows")?;
    if numel == 0 {
        return Tensor::from_bytes(Vec::new(), dtype, &shape).map_err(|e| e.to_string());
    }
    let slot =
        w.fd.and_then(|i| fds.get_mut(i as usize))
            .ok_or("a tensor without its memory")?;
    let fd = slot.take().ok_or("two tensors claimed one descriptor")?;
    let file = File::from(fd);
    let seals = fcntl_get_seals(&file).map_err(|e| format!("not shared memory: {e}"))?;
    if !seals.contains(SealFlags::SHRINK | SealFlags::WRITE) {
        return Err("shared tensor memory that is not sealed against writes and shrinking".into());
    }
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read shared memory: {e}"))?
        .len();
    // The last byte any element reaches must lie inside the segment.
    let size = dtype.size() as u64;
    let mut last: u64 = 0;
    for (&d, &s) in shape.iter().zip(&w.strides) {
        let s = u64::try_from(s).map_err(|_| "negative strides are not supported".to_string())?;
        last = (d as u64 - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or("a tensor layout that overflows")?;
    }
    let end = last
        .checked_add(1)
        .and_then(|n| n.checked_mul(size))
        .and_then(|n| n.checked_add(w.offset))
        .ok_or("a tensor layout that overflows")?;
    if end > len || !w.offset.is_multiple_of(size) {
        return Err(format!(
            "a tensor that reaches byte {end} of a {len}-byte segment (offset {})",
            w.offset
        ));
    }
    // SAFETY: the segment is sealed against writes and resizing, so the mapping stays valid and
    // its contents never change.
    // Populated up front: one call instead of a page fault per 4 KiB on first read.
    let map = unsafe { MmapOptions::new().populate().map(&file) }
        .map_err(|e| format!("cannot map shared memory: {e}"))?;
    // SAFETY: `offset` and every element lie inside the mapping (checked above), which the
    // segment keeps alive and unmodified.
    let data = unsafe { map.as_ptr().add(w.offset as usize) };
    let seg = Segment { file, map };
    Ok(unsafe {
        Tensor::from_raw_parts(
            data,
            dtype,
            &shape,
            Some(&w.strides),
            0,
            DLDevice::CPU,
            Box::new(seg),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(t: &Tensor) -> (Tensor, WireTensor) {
        let mut fds = Vec::new();
        let w = export(t, &mut fds).expect("export");
        let mut slots: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        (import(&w, &mut slots).expect("import"), w)
    }

    #[test]
    fn a_tensor_crosses_once_copied_and_then_by_descriptor() {
        let t = Tensor::from_vec((0..24).map(|i| i as f32).collect(), &[2, 3, 4]).expect("t");
        let (a, _) = round_trip(&t);
        assert_eq!(a.to_f32_vec().expect("read"), t.to_f32_vec().expect("read"));
        let first = a.dl().data as usize;
        // Passing an imported tensor on shares its segment: same memory, mapped again.
        let seg = a.local_owner::<Segment>().expect("segment");
        let (b, w) = round_trip(&a);
        assert_eq!(w.offset, 0);
        assert_eq!(b.to_f32_vec().expect("read"), t.to_f32_vec().expect("read"));
        assert_eq!(seg.map.len(), 24 * 4);
        assert_ne!(first, 0);
        let empty = Tensor::from_vec(Vec::<f32>::new(), &[0, 3]).expect("empty");
        assert_eq!(round_trip(&empty).0.shape(), vec![0, 3]);
    }

    #[test]
    fn layouts_beyond_the_segment_and_unsealed_memory_are_refused() {
        let t = Tensor::from_vec(vec![1f32; 8], &[8]).expect("t");
        let mut fds = Vec::new();
        let mut w = export(&t, &mut fds).expect("export");
        w.shape = vec![9];
        let fd = fds.pop().expect("fd");
        let err = import(&w, &mut [Some(fd)]).expect_err("too far");
        assert!(err.contains("reaches byte 36"), "{err}");

        let file = tempfile::tempfile().expect("file");
        file.set_len(32).expect("len");
        w.shape = vec![8];
        let err = import(&w, &mut [Some(file.into())]).expect_err("unsealed");
        assert!(
            err.contains("not sealed") || err.contains("not shared"),
            "{err}"
        );
    }
}
