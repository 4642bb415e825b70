//! The safetensors reader: header inspection and loading every tensor of a mutated file. A bad
//! file is an error, never a panic, and never an allocation the header alone asked for.

use std::collections::HashMap;

use latentflow_weights::{Header, Store, Weights};
use proptest::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

use crate::mutate::{apply, edits};

const DICTIONARY: &[&[u8]] = &[
    b"\"dtype\":",
    b"\"shape\":",
    b"\"data_offsets\":",
    b"\"F32\"",
    b"\"F16\"",
    b"\"BF16\"",
    b"\"I64\"",
    b"\"U8\"",
    b"\"BOOL\"",
    b"\"F8_E4M3\"",
    b"[0,0]",
    b"[18446744073709551615]",
    b"[4294967296,4294967296]",
    b"\"__metadata__\":",
    b"{}",
    b"[]",
    b"\"",
    b",",
    b"0",
    b"\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x00\x00\x00\x00\x00\x00\x00\x00",
];

fn seed() -> Vec<u8> {
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let f16s: Vec<u8> = (0..4u16).flat_map(|i| (0x3c00 + i).to_le_bytes()).collect();
    let i64s: Vec<u8> = 7i64.to_le_bytes().to_vec();
    let views = vec![
        (
            "a.weight",
            TensorView::new(Dtype::F32, vec![2, 3], &f32s).expect("view"),
        ),
        (
            "b.bias",
            TensorView::new(Dtype::F16, vec![4], &f16s).expect("view"),
        ),
        (
            "c",
            TensorView::new(Dtype::I64, vec![1], &i64s).expect("view"),
        ),
        (
            "empty",
            TensorView::new(Dtype::F32, vec![0, 5], &[]).expect("view"),
        ),
    ];
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).expect("serialize")
}

fn check(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, bytes).expect("write");
    let header = Header::read(&path);
    let loaded = Weights::file(&path).and_then(|w| Store::load(&w, |_| true));
    if let Ok(store) = &loaded {
        let header = header
            .as_ref()
            .expect("a file that loads has a readable header");
        for (name, entry) in &header.tensors {
            let t = store
                .get(name)
                .expect("every tensor of the header is loaded");
            assert_eq!(t.dims(), entry.shape.as_slice(), "{name}");
        }
    }
}

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn mutated_safetensors_are_read_or_refused(e in edits(4)) {
        check(&apply(&seed(), &e, DICTIONARY));
    }

    #[test]
    fn arbitrary_headers_are_read_or_refused(len in any::<u64>(), header in ".{0,200}", tail in prop::collection::vec(any::<u8>(), 0..64)) {
        // A length prefix (often a lie) and a random header.
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&tail);
        check(&bytes);
    }
}

#[test]
fn the_seed_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, seed()).expect("write");
    let store = Store::load(&Weights::file(&path).expect("weights"), |_| true).expect("loads");
    let header = Header::read(&path).expect("header");
    assert_eq!(header.tensors.len(), 4);
    for name in header.tensors.keys() {
        assert!(store.get(name).is_some(), "{name}");
    }
}
