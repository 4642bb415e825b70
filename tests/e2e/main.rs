//! End-to-end tests: they build the plugins and run graphs through the real binary.

mod animatediff;
mod bivdiff;
mod cli;
mod comfy_import;
mod default_model;
mod dit;
mod execution;
mod farm;
mod flux;
mod graphs;
mod isolation;
mod llm;
mod parity;
mod pixart;
mod plugins;
mod sampling;
mod sd2;
mod sd3;
mod sd_pipeline;
mod sdxl;
mod serve;
mod tiramisu;
mod tpm;
mod validation;
mod video;
mod watch;
