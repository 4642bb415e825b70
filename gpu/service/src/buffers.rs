//! The buffer table: slots with generations and reference counts behind `u64` handles.

use crate::error::GpuError;

struct Slot {
    generation: u32,
    refs: u32,
    buffer: Option<wgpu::Buffer>,
}

/// Buffers by handle. A handle is `generation << 32 | index`; freeing a slot bumps its generation,
/// so an old handle never reaches a later buffer.
#[derive(Default)]
pub(crate) struct Buffers {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live_bytes: u64,
}

fn split(handle: u64) -> (usize, u32) {
    ((handle & 0xffff_ffff) as usize, (handle >> 32) as u32)
}

impl Buffers {
    /// Stores `buffer` with one reference and returns its handle.
    pub(crate) fn insert(&mut self, buffer: wgpu::Buffer) -> u64 {
        self.live_bytes += buffer.size();
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 1,
                    refs: 0,
                    buffer: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.refs = 1;
        slot.buffer = Some(buffer);
        (u64::from(slot.generation) << 32) | u64::from(index)
    }

    fn slot(&mut self, handle: u64) -> Result<&mut Slot, GpuError> {
        let (index, generation) = split(handle);
        match self.slots.get_mut(index) {
            Some(s) if s.generation == generation && s.buffer.is_some() => Ok(s),
            _ => Err(GpuError::StaleBuffer(handle)),
        }
    }

    /// The live buffer behind `handle`.
    pub(crate) fn get(&mut self, handle: u64) -> Result<wgpu::Buffer, GpuError> {
        let slot = self.slot(handle)?;
        slot.buffer.clone().ok_or(GpuError::StaleBuffer(handle))
    }

    /// Adds a reference.
    pub(crate) fn retain(&mut self, handle: u64) -> Result<(), GpuError> {
        let slot = self.slot(handle)?;
        slot.refs = slot.refs.checked_add(1).ok_or_else(|| {
            GpuError::Limit(format!("GPU buffer {handle:#x} has too many references"))
        })?;
        Ok(())
    }

    /// Drops a reference and frees the buffer after the last; stale handles are ignored.
    pub(crate) fn release(&mut self, handle: u64) {
        let Ok(slot) = self.slot(handle) else {
            tracing::debug!(handle, "release of a stale GPU buffer handle ignored");
            return;
        };
        slot.refs -= 1;
        if slot.refs > 0 {
            return;
        }
        // Dropped, not destroyed: wgpu frees it once queued work no longer uses it.
        let freed = slot.buffer.take().map_or(0, |b| b.size());
        // A slot whose generations are used up is retired, so no old handle ever aliases.
        let reusable = match slot.generation.checked_add(1) {
            Some(next) => {
                slot.generation = next;
                true
            }
            None => false,
        };
        self.live_bytes -= freed;
        if reusable {
            self.free.push(split(handle).0 as u32);
        }
    }

    /// How many buffers are alive.
    pub(crate) fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.buffer.is_some()).count()
    }

    /// Bytes held by live buffers.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }
}
