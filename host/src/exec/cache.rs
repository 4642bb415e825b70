//! The content-addressed result cache: node call key → output values, bounded by bytes (LRU).

use std::collections::HashMap;

use latentflow_plugin_api::Value;

use super::hash::Hash;

struct Entry {
    values: Vec<Value>,
    hashes: Vec<Hash>,
    plugin_build: String,
    bytes: usize,
    last_used: u64,
}

/// Cached outputs of node calls.
pub struct Cache {
    entries: HashMap<Hash, Entry>,
    budget: usize,
    used: usize,
    tick: u64,
}

fn approx_bytes(v: &Value) -> usize {
    match v {
        Value::Tensor(t) => t.numel() * t.dtype().map(|d| d.size()).unwrap_or(1),
        Value::Str(s) => s.len(),
        Value::List(items) => items.iter().map(approx_bytes).sum(),
        _ => 16,
    }
}

impl Cache {
    /// A cache holding at most `budget` bytes of tensor data.
    pub fn new(budget: usize) -> Self {
        Cache {
            entries: HashMap::new(),
            budget,
            used: 0,
            tick: 0,
        }
    }

    /// The outputs and their hashes for `key`, if cached.
    pub fn get(&mut self, key: &Hash) -> Option<(Vec<Value>, Vec<Hash>)> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|e| {
            e.last_used = tick;
            (e.values.clone(), e.hashes.clone())
        })
    }

    /// Stores outputs for `key`, evicting the least recently used entries over budget.
    pub fn insert(&mut self, key: Hash, values: Vec<Value>, hashes: Vec<Hash>, plugin_build: &str) {
        let bytes: usize = values.iter().map(approx_bytes).sum();
        if bytes > self.budget {
            return;
        }
        self.tick += 1;
        if let Some(old) = self.entries.insert(
            key,
            Entry {
                values,
                hashes,
                plugin_build: plugin_build.to_string(),
                bytes,
                last_used: self.tick,
            },
        ) {
            self.used -= old.bytes;
        }
        self.used += bytes;
        while self.used > self.budget {
            let Some((&victim, _)) = self.entries.iter().min_by_key(|(_, e)| e.last_used) else {
                break;
            };
            if let Some(e) = self.entries.remove(&victim) {
                self.used -= e.bytes;
            }
        }
    }

    /// Drops every entry produced by the plugin build `build` (after a reload). Returns how many.
    pub fn invalidate_build(&mut self, build: &str) -> usize {
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let keep = e.plugin_build != build;
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        self.used -= freed;
        before - self.entries.len()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latentflow_plugin_api::Tensor;

    fn tensor(bytes: usize) -> Vec<Value> {
        vec![Value::Tensor(
            Tensor::from_vec(vec![0u8; bytes], &[bytes]).unwrap(),
        )]
    }

    #[test]
    fn evicts_least_recently_used_over_budget() {
        let mut c = Cache::new(100);
        c.insert([1; 32], tensor(40), vec![[0; 32]], "a");
        c.insert([2; 32], tensor(40), vec![[0; 32]], "a");
        assert!(c.get(&[1; 32]).is_some()); // 1 is now more recent than 2
        c.insert([3; 32], tensor(40), vec![[0; 32]], "a");
        assert!(c.get(&[2; 32]).is_none());
        assert!(c.get(&[1; 32]).is_some() && c.get(&[3; 32]).is_some());
    }

    #[test]
    fn skips_values_larger_than_the_budget() {
        let mut c = Cache::new(10);
        c.insert([1; 32], tensor(40), vec![[0; 32]], "a");
        assert!(c.is_empty());
    }

    #[test]
    fn invalidates_one_plugin_build_only() {
        let mut c = Cache::new(1000);
        c.insert([1; 32], tensor(4), vec![[0; 32]], "old");
        c.insert([2; 32], tensor(4), vec![[0; 32]], "other");
        assert_eq!(c.invalidate_build("old"), 1);
        assert_eq!(c.len(), 1);
        assert!(c.get(&[2; 32]).is_some());
    }
}
