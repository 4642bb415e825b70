//! Interoperability with the tools LatentFlow users come from.
//!
//! - [`comfy`]: ComfyUI workflows (UI and API formats) converted to LatentFlow graphs, with a
//!   report of everything that could not be mapped.
//! - [`a1111`]: the `parameters` text that A1111 (and many galleries) read from PNGs, parsed
//!   and written.
//! - [`locate`]: models found by name in Hugging Face hub caches and ComfyUI/A1111 model
//!   folders, and described (family, size, dtype) from their weights' headers.

pub mod a1111;
pub mod comfy;
pub mod locate;
