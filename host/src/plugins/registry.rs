//! The set of loaded plugins and the node types they provide.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use latentflow_plugin_api::NodeDescriptor;

use super::loader::{self, LoadError, Plugin};
use crate::isolate::Policy;

/// A node type and the plugin that provides it.
#[derive(Debug, Clone)]
pub struct NodeType {
    /// The descriptor (shared: plans hold many references to it).
    pub desc: Arc<NodeDescriptor>,
    /// The plugin.
    pub plugin: Arc<Plugin>,
}

/// Where plugins are searched for.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Folders whose every shared library is a plugin: `./plugins`, `LATENTFLOW_PLUGIN_PATH`,
    /// `--plugins`.
    pub dirs: Vec<PathBuf>,
    /// The executable's folder, where only first-party libraries (`liblatentflow_*`) are loaded,
    /// since build folders hold other libraries too.
    pub exe_dir: Option<PathBuf>,
    /// Where content-addressed private copies are kept.
    pub cache_dir: PathBuf,
    /// Which plugins run in worker processes.
    pub isolate: Policy,
}

impl Discovery {
    /// The standard search path: the executable's folder, `./plugins`, `LATENTFLOW_PLUGIN_PATH`
    /// and `extra` (from `--plugins`).
    pub fn standard(extra: &[PathBuf]) -> Self {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let mut dirs = vec![PathBuf::from("plugins")];
        if let Some(paths) = std::env::var_os("LATENTFLOW_PLUGIN_PATH") {
            dirs.extend(std::env::split_paths(&paths));
        }
        dirs.extend(extra.iter().cloned());
        let cache_dir = std::env::var_os("LATENTFLOW_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("latentflow-plugins"));
        Discovery {
            dirs,
            exe_dir,
            cache_dir,
            isolate: Policy::default(),
        }
    }

    /// Every plugin library file, in search order, without repeats.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        let mut push = |p: PathBuf| {
            let canon = p.canonicalize().unwrap_or(p);
            if !out.contains(&canon) {
                out.push(canon);
            }
        };
        if let Some(dir) = &self.exe_dir {
            let prefix = format!("{}latentflow_", std::env::consts::DLL_PREFIX);
            for f in list(dir) {
                if f.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                {
                    push(f);
                }
            }
        }
        for dir in &self.dirs {
            if dir.is_file() && loader::is_library(dir) {
                push(dir.clone());
            } else {
                list(dir).into_iter().for_each(&mut push);
            }
        }
        out
    }

    /// Loads one library the way this discovery says (isolated or not).
    pub fn load(&self, file: &Path) -> Result<Plugin, LoadError> {
        let isolate = self.isolate.applies(file).then_some(&self.isolate);
        loader::load_as(file, &self.cache_dir, isolate)
    }

    /// The folders to watch for rebuilt libraries.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.dirs.iter().filter(|d| d.is_dir()).cloned().collect();
        dirs.extend(self.exe_dir.clone());
        dirs
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && loader::is_library(p))
        .collect();
    files.sort();
    files
}

/// The loaded plugins.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    plugins: Vec<Arc<Plugin>>,
    types: BTreeMap<String, NodeType>,
}

/// What happened to a library during loading.
#[derive(Debug)]
pub enum Refusal {
    /// It could not be loaded.
    Load(LoadError),
    /// It declares a node type another plugin already provides.
    Conflict {
        /// The type id.
        type_id: String,
        /// The library that was refused.
        path: PathBuf,
        /// The library that provides the type.
        other: PathBuf,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Load(e) => write!(f, "refused plugin {e}"),
            Refusal::Conflict {
                type_id,
                path,
                other,
            } => write!(
                f,
                "refused plugin {}: node type `{type_id}` is already provided by {}",
                path.display(),
                other.display()
            ),
        }
    }
}

impl Registry {
    /// Loads every library `discovery` finds. Libraries that fail to load or that conflict are
    /// refused and reported; the others load.
    pub fn load(discovery: &Discovery) -> (Registry, Vec<Refusal>) {
        let mut reg = Registry::default();
        let mut refusals = Vec::new();
        for file in discovery.files() {
            match discovery.load(&file) {
                Ok(p) => {
                    if let Err(r) = reg.add(Arc::new(p)) {
                        refusals.push(r);
                    }
                }
                Err(e) => refusals.push(Refusal::Load(e)),
            }
        }
        (reg, refusals)
    }

    /// Adds a plugin unless one of its node types is already provided by a different file.
    pub fn add(&mut self, plugin: Arc<Plugin>) -> Result<(), Refusal> {
        for d in &plugin.nodes {
            if let Some(existing) = self.types.get(d.type_id.as_str()) {
                if existing.plugin.path != plugin.path {
                    return Err(Refusal::Conflict {
                        type_id: d.type_id.to_string(),
                        path: plugin.path.clone(),
                        other: existing.plugin.path.clone(),
                    });
                }
            }
        }
        for d in &plugin.nodes {
            self.types.insert(
                d.type_id.to_string(),
                NodeType {
                    desc: Arc::new(d.clone()),
                    plugin: Arc::clone(&plugin),
                },
            );
        }
        self.plugins.push(plugin);
        Ok(())
    }

    /// A registry where the plugin loaded from `plugin.path` is replaced by `plugin` (a new
    /// generation). Node types the old generation had and the new one lacks disappear.
    pub fn with_replaced(&self, plugin: Arc<Plugin>) -> Result<Registry, Refusal> {
        let mut next = Registry::default();
        for p in self.plugins.iter().filter(|p| p.path != plugin.path) {
            next.add(Arc::clone(p))?;
        }
        next.add(plugin)?;
        Ok(next)
    }

    /// The plugin currently loaded from `path`.
    pub fn plugin_at(&self, path: &Path) -> Option<&Arc<Plugin>> {
        self.plugins.iter().find(|p| p.path == path)
    }

    /// Looks up a node type.
    pub fn get(&self, type_id: &str) -> Option<&NodeType> {
        self.types.get(type_id)
    }

    /// All node types, sorted by id.
    pub fn types(&self) -> impl Iterator<Item = &NodeType> {
        self.types.values()
    }

    /// All type ids, sorted.
    pub fn type_ids(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// The loaded plugins.
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// Plugin name → version, for provenance (sorted, so outputs are reproducible).
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.plugins
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect()
    }
}
