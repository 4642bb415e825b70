//! Byte-level mutations of a seed input: the moves a coverage-guided fuzzer makes first.

use proptest::prelude::*;

/// One edit, positions taken modulo the current length.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Replace a byte.
    Set(usize, u8),
    /// Flip one bit.
    Flip(usize, u8),
    /// Insert a byte.
    Insert(usize, u8),
    /// Remove up to `n` bytes.
    Remove(usize, usize),
    /// Cut the input here.
    Truncate(usize),
    /// Copy a range somewhere else.
    Duplicate(usize, usize, usize),
    /// Insert a token from the target's dictionary.
    Token(usize, usize),
}

/// Up to `max` edits with any bytes (binary formats).
pub fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    edits_of(max, any::<u8>().boxed(), 2)
}

/// Up to `max` edits that mostly write printable ASCII (text formats: most mutants stay valid
/// UTF-8 and reach the parser and the checks behind it).
pub fn text_edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop_oneof![12 => 0x20u8..0x7f, 2 => Just(b'\n'), 1 => any::<u8>()];
    edits_of(max, byte.boxed(), 1)
}

fn edits_of(max: usize, byte: BoxedStrategy<u8>, flips: u32) -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        4 => (any::<usize>(), byte.clone()).prop_map(|(p, b)| Edit::Set(p, b)),
        flips => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::Flip(p, b)),
        2 => (any::<usize>(), byte).prop_map(|(p, b)| Edit::Insert(p, b)),
        2 => (any::<usize>(), 1usize..16).prop_map(|(p, n)| Edit::Remove(p, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), 1usize..64, any::<usize>()).prop_map(|(a, n, b)| Edit::Duplicate(a, n, b)),
        4 => (any::<usize>(), any::<usize>()).prop_map(|(p, t)| Edit::Token(p, t)),
    ];
    prop::collection::vec(edit, 1..=max)
}

/// `seed` with `edits` applied; tokens come from `dictionary`.
pub fn apply(seed: &[u8], edits: &[Edit], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for e in edits {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
        match *e {
            Edit::Set(p, b) if !out.is_empty() => {
                let i = p % out.len();
                out[i] = b;
            }
            Edit::Flip(p, bit) if !out.is_empty() => {
                let i = p % out.len();
                out[i] ^= 1 << bit;
            }
            Edit::Insert(p, b) => {
                let i = at(p, out.len());
                out.insert(i, b);
            }
            Edit::Remove(p, n) if !out.is_empty() => {
                let i = p % out.len();
                let end = (i + n).min(out.len());
                out.drain(i..end);
            }
            Edit::Truncate(p) => {
                let i = at(p, out.len());
                out.truncate(i);
            }
            Edit::Duplicate(a, n, b) if !out.is_empty() => {
                let start = a % out.len();
                let end = (start + n).min(out.len());
                let piece: Vec<u8> = out[start..end].to_vec();
                let i = at(b, out.len());
                out.splice(i..i, piece);
            }
            Edit::Token(p, t) if !dictionary.is_empty() => {
                let i = at(p, out.len());
                let token = dictionary[t % dictionary.len()];
                out.splice(i..i, token.iter().copied());
            }
            _ => {}
        }
    }
    out
}
