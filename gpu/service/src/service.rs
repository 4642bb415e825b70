//! The device service: one device and queue, the buffer table, the kernel cache.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::buffers::Buffers;
use crate::error::GpuError;
use crate::kernels::{content_key, Kernel, Kernels};
use crate::open::{self, AdapterSummary, OpenOptions};

/// The host's GPU device service. Open one per process and share it ([`Service::open`] returns an
/// `Arc`); buffers and kernels belong to it.
pub struct Service {
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    device: wgpu::Device,
    queue: wgpu::Queue,
    buffers: Mutex<Buffers>,
    kernels: Mutex<Kernels>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain bookkeeping behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn aligned(what: &str, v: u64) -> Result<(), GpuError> {
    if v.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT) {
        Ok(())
    } else {
        Err(GpuError::Limit(format!(
            "GPU buffer {what} {v} is not a multiple of {}",
            wgpu::COPY_BUFFER_ALIGNMENT
        )))
    }
}

fn in_bounds(handle: u64, size: u64, offset: u64, bytes: u64) -> Result<(), GpuError> {
    match offset.checked_add(bytes) {
        Some(end) if end <= size => Ok(()),
        _ => Err(GpuError::Limit(format!(
            "GPU buffer {handle:#x} holds {size} bytes; {bytes} bytes at offset {offset} do not fit"
        ))),
    }
}

impl Service {
    /// Opens the adapter `options` asks for (the best one when it names none).
    pub fn open(options: &OpenOptions) -> Result<Arc<Service>, GpuError> {
        let (adapter, device, queue) = open::open(options)?;
        // wgpu's default handler panics; errors outside a scope are logged instead.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            tracing::error!(target: "gpu", "uncaptured GPU error: {e}");
        }));
        let service = Service {
            adapter: open::summary(&adapter.get_info()),
            limits: device.limits(),
            device,
            queue,
            buffers: Mutex::new(Buffers::default()),
            kernels: Mutex::new(Kernels::default()),
        };
        tracing::info!(target: "gpu", adapter = %service.adapter, "GPU device service opened");
        Ok(Arc::new(service))
    }

    /// Every Vulkan adapter on this machine, best first (for error messages and `latentflow devices`).
    pub fn list_adapters() -> Vec<AdapterSummary> {
        open::adapters(&open::instance())
            .iter()
            .map(|a| open::summary(&a.get_info()))
            .collect()
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Live buffers and the bytes they hold (for leak checks and reports).
    pub fn live_buffers(&self) -> (usize, u64) {
        let b = lock(&self.buffers);
        (b.live(), b.live_bytes())
    }

    /// How many distinct kernels were compiled.
    pub fn compiled_kernels(&self) -> usize {
        lock(&self.kernels).len()
    }

    /// Runs `f` inside error scopes for validation, out-of-memory and internal errors and turns
    /// whatever they caught into an error for `what`.
    fn scoped<T>(&self, what: &'static str, f: impl FnOnce() -> T) -> Result<T, GpuError> {
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(oom.pop()),
            pollster::block_on(internal.pop()),
        ];
        match errors.into_iter().flatten().next() {
            None => Ok(out),
            Some(wgpu::Error::OutOfMemory { .. }) => Err(GpuError::OutOfMemory { what }),
            Some(e) => Err(GpuError::Operation {
                what,
                message: one_line(&e.to_string()),
            }),
        }
    }

    /// A zero-filled storage buffer of at least `bytes` bytes, with one reference.
    pub fn create(&self, bytes: u64) -> Result<u64, GpuError> {
        let size = bytes
            .max(4)
            .checked_next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
            .filter(|&s| s <= self.limits.max_buffer_size)
            .ok_or_else(|| {
                GpuError::Limit(format!(
                    "a GPU buffer of {bytes} bytes is over this device's largest buffer ({} bytes, {})",
                    self.limits.max_buffer_size, self.adapter.name
                ))
            })?;
        let buffer = self.scoped("buffer creation", || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        Ok(lock(&self.buffers).insert(buffer))
    }

    /// A buffer's size in bytes.
    pub fn size(&self, handle: u64) -> Result<u64, GpuError> {
        Ok(lock(&self.buffers).get(handle)?.size())
    }

    /// Adds a reference to a buffer.
    pub fn retain(&self, handle: u64) -> Result<(), GpuError> {
        lock(&self.buffers).retain(handle)
    }

    /// Drops a reference to a buffer.
    pub fn release(&self, handle: u64) {
        lock(&self.buffers).release(handle)
    }

    /// Queues a write of `data` at `offset`.
    pub fn write(&self, handle: u64, offset: u64, data: &[u8]) -> Result<(), GpuError> {
        let buffer = lock(&self.buffers).get(handle)?;
        aligned("offset", offset)?;
        aligned("write length", data.len() as u64)?;
        in_bounds(handle, buffer.size(), offset, data.len() as u64)?;
        self.scoped("buffer write", || {
            self.queue.write_buffer(&buffer, offset, data);
            self.queue.submit([]);
        })
    }

    /// Reads `bytes` bytes at `offset`, after the work queued so far.
    pub fn read(&self, handle: u64, offset: u64, bytes: u64) -> Result<Vec<u8>, GpuError> {
        let buffer = lock(&self.buffers).get(handle)?;
        aligned("offset", offset)?;
        aligned("read length", bytes)?;
        in_bounds(handle, buffer.size(), offset, bytes)?;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.scoped("read-back buffer creation", || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read-back"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        self.scoped("buffer copy", || {
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&buffer, offset, &staging, 0, bytes);
            self.queue.submit([enc.finish()]);
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(GpuError::Operation {
                    what: "buffer map",
                    message: e.to_string(),
                })
            }
            Err(_) => {
                return Err(GpuError::Operation {
                    what: "buffer map",
                    message: "the device dropped the request".into(),
                })
            }
        }
        let data = staging
            .get_mapped_range(..)
            .map_err(|e| GpuError::Operation {
                what: "buffer map",
                message: e.to_string(),
            })?
            .to_vec();
        staging.unmap();
        Ok(data)
    }

    /// Compiles (or finds) the kernel `entry` of `source`.
    pub fn compile(&self, source: &str, entry: &str) -> Result<u64, GpuError> {
        let key = content_key(source, entry);
        if let Some(k) = lock(&self.kernels).find(&key) {
            return Ok(k);
        }
        let shader_error = |message: String| GpuError::Shader {
            entry: entry.to_string(),
            message,
        };
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(entry),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let caught = [
            pollster::block_on(validation.pop()),
            pollster::block_on(internal.pop()),
        ];
        // The compiler's own messages say where; wgpu's error only repeats them as a report.
        let info = pollster::block_on(module.get_compilation_info());
        if let Some(m) = info
            .messages
            .iter()
            .find(|m| m.message_type == wgpu::CompilationMessageType::Error)
        {
            let at = m
                .location
                .map(|l| format!("line {}:{}: ", l.line_number, l.line_position))
                .unwrap_or_default();
            // The first line is the reason; the rest repeats the source with a caret.
            let reason = m
                .message
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            return Err(shader_error(format!("{at}{}", one_line(reason))));
        }
        if let Some(e) = caught.into_iter().flatten().next() {
            return Err(shader_error(one_line(&e.to_string())));
        }
        let pipeline = self
            .scoped("pipeline creation", || {
                self.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(entry),
                        layout: None,
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: Default::default(),
                        cache: None,
                    })
            })
            .map_err(|e| shader_error(one_line(&e.to_string())))?;
        // A kernel without bindings has no group 0; asking for it would be an error.
        let layout = self
            .scoped("bind group layout", || pipeline.get_bind_group_layout(0))
            .ok();
        let kernel = Kernel {
            pipeline,
            layout,
            entry: entry.to_string(),
        };
        let mut kernels = lock(&self.kernels);
        // Another thread may have compiled the same content meanwhile; keep the first.
        if let Some(k) = kernels.find(&key) {
            return Ok(k);
        }
        Ok(kernels.insert(key, kernel))
    }

    /// Queues `kernel` over `groups` workgroups with `bindings` (binding number, buffer handle).
    pub fn dispatch(
        &self,
        kernel: u64,
        bindings: &[(u32, u64)],
        groups: [u32; 3],
    ) -> Result<(), GpuError> {
        let k = lock(&self.kernels)
            .get(kernel)
            .cloned()
            .ok_or(GpuError::UnknownKernel(kernel))?;
        let max = self.limits.max_compute_workgroups_per_dimension;
        if let Some(g) = groups.iter().find(|&&g| g > max) {
            return Err(GpuError::Limit(format!(
                "kernel `{}` asks for {g} workgroups in one dimension; this device allows {max}",
                k.entry
            )));
        }
        let buffers = {
            let mut table = lock(&self.buffers);
            bindings
                .iter()
                .map(|&(b, h)| Ok((b, table.get(h)?)))
                .collect::<Result<Vec<_>, GpuError>>()?
        };
        let max_binding = self.limits.max_storage_buffer_binding_size;
        if let Some((b, buf)) = buffers.iter().find(|(_, buf)| buf.size() > max_binding) {
            return Err(GpuError::Limit(format!(
                "binding {b} of kernel `{}` is {} bytes; this device binds at most {max_binding}",
                k.entry,
                buf.size()
            )));
        }
        if k.layout.is_none() && !buffers.is_empty() {
            return Err(GpuError::Operation {
                what: "dispatch",
                message: format!(
                    "kernel `{}` has no bindings, and {} were given",
                    k.entry,
                    buffers.len()
                ),
            });
        }
        if groups.contains(&0) {
            return Ok(());
        }
        self.scoped("dispatch", || {
            let group = match (&k.layout, buffers.is_empty()) {
                (_, true) => None,
                (Some(layout), false) => {
                    let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
                        .iter()
                        .map(|(b, buf)| wgpu::BindGroupEntry {
                            binding: *b,
                            resource: buf.as_entire_binding(),
                        })
                        .collect();
                    Some(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout,
                        entries: &entries,
                    }))
                }
                // Checked before the scope: a kernel without bindings given some.
                (None, false) => None,
            };
            let mut enc = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&k.pipeline);
                if let Some(g) = &group {
                    pass.set_bind_group(0, g, &[]);
                }
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            }
            self.queue.submit([enc.finish()]);
        })
        .map_err(|e| match e {
            GpuError::Operation { message, .. } => GpuError::Operation {
                what: "dispatch",
                message: format!("kernel `{}`: {message}", k.entry),
            },
            other => other,
        })
    }

    /// Waits for all queued work.
    pub fn wait(&self) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| GpuError::Operation {
                what: "wait",
                message: e.to_string(),
            })
    }
}

/// wgpu's messages span lines (a report with the source excerpt); keep them on one.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
