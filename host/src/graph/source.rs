//! A graph file's bytes as text: UTF-8 (a byte-order mark is dropped) or UTF-16 with its
//! byte-order mark. Anything else is a diagnostic at the first byte that does not decode.

use std::path::Path;

use super::diag::{Diagnostic, Pos};

/// The text of `bytes`, or a diagnostic pointing at the first undecodable byte.
pub fn decode(file: &Path, bytes: &[u8]) -> Result<String, Box<Diagnostic>> {
    let not_text = |pos: Pos, what: &str| {
        let message = format!("the file is not text: {what}");
        Box::new(Diagnostic::error("encoding", file, pos, message).hint("save the graph as UTF-8"))
    };
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return decode(file, rest);
    }
    let utf16 = match bytes {
        [0xFF, 0xFE, rest @ ..] => Some((rest, u16::from_le_bytes as fn([u8; 2]) -> u16)),
        [0xFE, 0xFF, rest @ ..] => Some((rest, u16::from_be_bytes as fn([u8; 2]) -> u16)),
        _ => None,
    };
    if let Some((rest, unit)) = utf16 {
        let units = rest
            .chunks(2)
            .map(|c| unit([c[0], *c.get(1).unwrap_or(&0)]));
        let mut text = String::with_capacity(rest.len() / 2);
        for c in char::decode_utf16(units) {
            match c {
                Ok(c) => text.push(c),
                Err(_) => return Err(not_text(end_of(&text), "invalid UTF-16")),
            }
        }
        if rest.len() % 2 == 1 {
            return Err(not_text(
                end_of(&text),
                "UTF-16 with an odd number of bytes",
            ));
        }
        return Ok(text);
    }
    match std::str::from_utf8(bytes) {
        Ok(t) => Ok(t.to_string()),
        Err(e) => {
            let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
            let byte = bytes[e.valid_up_to()];
            Err(not_text(
                end_of(valid),
                &format!("byte 0x{byte:02X} is not UTF-8"),
            ))
        }
    }
}

/// The position just after `text`.
fn end_of(text: &str) -> Pos {
    let line = text.matches('\n').count() as u64 + 1;
    let last = text.rsplit('\n').next().unwrap_or_default();
    Pos {
        line,
        column: last.chars().count() as u64 + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(bytes: &[u8]) -> (u64, u64) {
        let d = decode(Path::new("g.yaml"), bytes).unwrap_err();
        (d.pos.line, d.pos.column)
    }

    #[test]
    fn bad_bytes_are_placed_and_boms_accepted() {
        assert_eq!(pos(b"nodes:\n  # caf\xE9\n"), (2, 8));
        assert_eq!(pos(b"\xFF\x00\x01"), (1, 1));
        let f = Path::new("g.yaml");
        assert_eq!(decode(f, b"\xEF\xBB\xBFnodes: {}").unwrap(), "nodes: {}");
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("nodes: {}".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(f, &utf16).unwrap(), "nodes: {}");
    }
}
