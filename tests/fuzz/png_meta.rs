//! The PNG provenance reader (`latentflow run image.png`): text chunks of every kind, keyword
//! and content, and byte mutations of a real image. What is read back is what was written.

use latentflow::provenance::{graph_from_png, GRAPH_KEY};
use proptest::prelude::*;

use crate::mutate::{apply, edits};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Ztext,
    Itext,
}

#[derive(Debug, Clone)]
struct Chunk {
    kind: Kind,
    ours: bool,
    keyword: String,
    text: String,
}

fn chunk() -> impl Strategy<Value = Chunk> {
    let kind = prop_oneof![Just(Kind::Text), Just(Kind::Ztext), Just(Kind::Itext)];
    let text = prop_oneof![
        "[ -~]{0,80}",
        any::<String>(),
        "[a-z]{1,8}".prop_map(|k| format!("{{\"graph\": {{\"{k}\": [1, 2]}}, \"seed\": 3}}")),
        "[a-z]{1,8}".prop_map(|k| format!("{{\"{k}\": null}}")),
    ];
    (kind, any::<bool>(), "[a-zA-Z][a-zA-Z:]{0,30}", text).prop_map(
        |(kind, ours, keyword, text)| Chunk {
            kind,
            ours,
            keyword,
            text,
        },
    )
}

fn encode(chunks: &[Chunk]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, 1, 1);
    enc.set_color(png::ColorType::Grayscale);
    for c in chunks {
        let keyword = if c.ours {
            GRAPH_KEY.to_string()
        } else {
            c.keyword.clone()
        };
        // Latin-1 chunks cannot hold every string; the encoder refuses those, which is fine.
        let _ = match c.kind {
            Kind::Text => enc.add_text_chunk(keyword, c.text.clone()),
            Kind::Ztext => enc.add_ztxt_chunk(keyword, c.text.clone()),
            Kind::Itext => enc.add_itxt_chunk(keyword, c.text.clone()),
        };
    }
    if let Ok(mut w) = enc.write_header() {
        let _ = w.write_image_data(&[0]);
        let _ = w.finish();
    }
    bytes
}

fn read(bytes: &[u8]) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("image.png");
    std::fs::write(&path, bytes).expect("write");
    graph_from_png(&path)
}

proptest! {
    #![proptest_config(crate::config(384))]

    #[test]
    fn text_chunks_read_back_what_was_written(chunks in prop::collection::vec(chunk(), 0..4)) {
        let result = read(&encode(&chunks));
        let ours: Vec<&Chunk> = chunks.iter().filter(|c| c.ours).collect();
        if ours.is_empty() {
            prop_assert!(result.is_err());
        }
        if let Ok(text) = result {
            // The graph read back is the `graph` field (or the whole JSON) of one of our chunks.
            let got: serde_json::Value = serde_json::from_str(&text).expect("pretty JSON");
            let expected = ours.iter().any(|c| {
                serde_json::from_str::<serde_json::Value>(&c.text)
                    .map(|m| m.get("graph").cloned().unwrap_or(m) == got)
                    .unwrap_or(false)
            });
            prop_assert!(expected, "read back {text}, wrote {ours:?}");
        }
    }

    #[test]
    fn mutated_pngs_are_read_or_refused(e in edits(4)) {
        let seed = encode(&[Chunk {
            kind: Kind::Ztext,
            ours: true,
            keyword: String::new(),
            text: "{\"graph\": {\"nodes\": []}, \"seed\": 1}".into(),
        }]);
        let _ = read(&apply(&seed, &e, &[b"zTXt", b"iTXt", b"tEXt", b"IEND", b"\x78\x9c"]));
    }
}
