//! Compiled compute pipelines, cached by the content of their WGSL source and entry point.

use std::collections::HashMap;

/// One compiled entry point and the layout of its group 0.
#[derive(Clone)]
pub(crate) struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: Option<wgpu::BindGroupLayout>,
    pub(crate) entry: String,
}

/// Kernels by handle (index + 1) and by content hash.
#[derive(Default)]
pub(crate) struct Kernels {
    list: Vec<Kernel>,
    by_content: HashMap<[u8; 32], u64>,
}

/// The content key of a kernel: the entry point and the source, unambiguously joined.
pub(crate) fn content_key(source: &str, entry: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&(entry.len() as u64).to_le_bytes());
    h.update(entry.as_bytes());
    h.update(source.as_bytes());
    *h.finalize().as_bytes()
}

impl Kernels {
    pub(crate) fn find(&self, key: &[u8; 32]) -> Option<u64> {
        self.by_content.get(key).copied()
    }

    pub(crate) fn insert(&mut self, key: [u8; 32], kernel: Kernel) -> u64 {
        self.list.push(kernel);
        let handle = self.list.len() as u64;
        self.by_content.insert(key, handle);
        handle
    }

    pub(crate) fn get(&self, handle: u64) -> Option<&Kernel> {
        let index = usize::try_from(handle).ok()?.checked_sub(1)?;
        self.list.get(index)
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}
