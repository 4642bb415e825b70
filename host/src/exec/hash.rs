//! Content hashes of values and cache keys of node calls.

use latentflow_plugin_api::Value;

/// A 32-byte blake3 digest.
pub type Hash = [u8; 32];

fn feed(h: &mut blake3::Hasher, v: &Value, identity: &Hash) {
    match v {
        Value::None => {
            h.update(b"n");
        }
        Value::Bool(b) => {
            h.update(&[b'b', *b as u8]);
        }
        Value::Int(i) => {
            h.update(b"i");
            h.update(&i.to_le_bytes());
        }
        Value::Float(f) => {
            h.update(b"f");
            h.update(&f.to_bits().to_le_bytes());
        }
        Value::Str(s) => {
            h.update(b"s");
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        Value::List(items) => {
            h.update(b"l");
            h.update(&(items.len() as u64).to_le_bytes());
            for item in items.iter() {
                feed(h, item, identity);
            }
        }
        Value::Tensor(t) => {
            h.update(b"t");
            let dl = t.dl();
            h.update(&[dl.dtype.code, dl.dtype.bits]);
            for d in t.shape() {
                h.update(&(d as u64).to_le_bytes());
            }
            match t.as_bytes() {
                Some(bytes) => {
                    h.update(bytes);
                }
                None => match t.to_contiguous_bytes() {
                    Ok(bytes) => {
                        h.update(&bytes);
                    }
                    // Device tensors: identity by provenance.
                    Err(_) => {
                        h.update(identity);
                    }
                },
            }
        }
        Value::Record(r) => {
            h.update(b"r");
            h.update(&(r.kind.len() as u64).to_le_bytes());
            h.update(r.kind.as_bytes());
            h.update(&(r.fields.len() as u64).to_le_bytes());
            for (k, v) in &r.fields {
                h.update(&(k.len() as u64).to_le_bytes());
                h.update(k.as_bytes());
                feed(h, v, identity);
            }
        }
        // Objects cannot be hashed by content; they are identified by the call that made them.
        Value::Object(_) => {
            h.update(b"o");
            h.update(identity);
        }
        // A kind of value newer than this host: identified by the call that made it.
        _ => {
            h.update(b"?");
            h.update(identity);
        }
    }
}

/// The content hash of an output value. `identity` (the cache key of the producing call plus the
/// port) stands in for content that cannot be read, such as objects.
pub fn value_hash(v: &Value, identity: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    feed(&mut h, v, identity);
    *h.finalize().as_bytes()
}

/// Combines parts into one hash.
pub fn combine(parts: &[&[u8]]) -> Hash {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    *h.finalize().as_bytes()
}
