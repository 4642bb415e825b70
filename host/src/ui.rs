//! Human-facing progress: indicatif bars on a terminal, plain lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exec::{Event, EventSink};

/// Shows run progress on standard error.
pub struct Ui {
    tty: bool,
    multi: MultiProgress,
    state: Mutex<UiState>,
}

#[derive(Default)]
struct UiState {
    overall: Option<ProgressBar>,
    steps: HashMap<String, ProgressBar>,
}

impl Default for Ui {
    fn default() -> Self {
        Ui::new()
    }
}

impl Ui {
    /// A UI drawing bars when standard error is a terminal.
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Ui {
            tty,
            multi,
            state: Mutex::new(UiState::default()),
        }
    }

    fn line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }
}

impl EventSink for Ui {
    fn emit(&self, event: &Event) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match event {
            Event::RunStarted { nodes } => {
                let bar = self.multi.add(ProgressBar::new(*nodes as u64));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} nodes {pos}/{len} {wide_bar} {elapsed} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                st.overall = Some(bar);
            }
            Event::NodeStarted { node, node_type } => {
                if let Some(b) = &st.overall {
                    b.set_message(format!("{node} ({node_type})"));
                }
            }
            Event::NodeFinished { node, ms, reason } => {
                if let Some(b) = st.steps.remove(node) {
                    b.finish_and_clear();
                }
                if let Some(b) = &st.overall {
                    b.inc(1);
                }
                self.line(format!("  ran     {node:<24} {ms:>9.1} ms  ({reason})"));
            }
            Event::NodeCached { node, reason } => {
                if let Some(b) = &st.overall {
                    b.inc(1);
                }
                self.line(format!("  cached  {node:<24} {:>12}  ({reason})", ""));
            }
            Event::NodeFailed {
                node,
                plugin,
                error,
            } => {
                if let Some(b) = st.steps.remove(node) {
                    b.abandon();
                }
                self.line(format!("  FAILED  {node} [{plugin}]: {error}"));
            }
            Event::NodeSkipped { node, reason } => self.line(format!("  skipped {node}: {reason}")),
            Event::Progress {
                node,
                done,
                total,
                message,
            } => {
                if !self.tty {
                    return;
                }
                let bar = st.steps.entry(node.clone()).or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new(*total));
                    b.set_style(
                        ProgressStyle::with_template(
                            "  {prefix} {bar:30} {pos}/{len} {msg} ({eta})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_prefix(node.clone());
                    b
                });
                bar.set_length(*total);
                bar.set_position(*done);
                bar.set_message(message.clone());
            }
            Event::RunFinished {
                status,
                ms,
                ran,
                cached,
                failed,
            } => {
                if let Some(b) = st.overall.take() {
                    b.finish_and_clear();
                }
                self.line(format!(
                    "run {status} in {:.1} s: {ran} ran, {cached} cached, {failed} failed",
                    ms / 1e3
                ));
            }
            Event::PluginReloaded { path, ms } => {
                self.line(format!("reloaded {path} in {ms:.0} ms"))
            }
            Event::PluginRefused { path, error } => self.line(format!(
                "refused {path}: {error} (the previous build keeps serving)"
            )),
            Event::GraphChanged {
                path,
                valid,
                diagnostics,
            } => {
                for d in diagnostics {
                    self.line(d.clone());
                }
                if !valid {
                    self.line(format!("{path} is invalid; waiting for the next edit"));
                }
            }
            Event::Log { .. } => {}
        }
    }

    fn wants_detail(&self) -> bool {
        self.tty
    }
}

/// `--quiet`: only what went wrong — failed nodes, refused plugins, invalid edits.
pub struct Quiet;

impl EventSink for Quiet {
    fn emit(&self, event: &Event) {
        match event {
            Event::NodeFailed {
                node,
                plugin,
                error,
            } => eprintln!("FAILED  {node} [{plugin}]: {error}"),
            Event::PluginRefused { path, error } => {
                eprintln!("refused {path}: {error} (the previous build keeps serving)")
            }
            Event::GraphChanged {
                path,
                valid: false,
                diagnostics,
            } => {
                for d in diagnostics {
                    eprintln!("{d}");
                }
                eprintln!("{path} is invalid; waiting for the next edit");
            }
            _ => {}
        }
    }

    fn wants_detail(&self) -> bool {
        false
    }
}
