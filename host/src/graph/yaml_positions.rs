//! Precise positions for the YAML problems the deserializer places vaguely: a duplicate key
//! (serde reports it at the enclosing mapping, or nowhere for the top level) and a tab in an
//! indentation (reported after the previous line). Run only when parsing has failed.

use std::collections::HashMap;

use granit_parser::{Event, Parser};

use super::diag::Pos;

/// The problem the parser's `message` is about, placed in `text`: position and message.
pub fn locate(message: &str, text: &str) -> Option<(Pos, String)> {
    if message.contains("tab") {
        tab_in_indentation(text)
    } else if message.contains("duplicate") {
        duplicate_key(text)
    } else {
        None
    }
}

fn tab_in_indentation(text: &str) -> Option<(Pos, String)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let indent = &line[..line.len() - line.trim_start().len()];
        let col = indent.find('\t')?;
        Some((
            Pos {
                line: i as u64 + 1,
                column: col as u64 + 1,
            },
            "a tab in the indentation (YAML indents with spaces only)".to_string(),
        ))
    })
}

/// A mapping being read: keys seen (with where), and whether the next event is a key.
struct Mapping {
    keys: HashMap<String, Pos>,
    at_key: bool,
}

fn duplicate_key(text: &str) -> Option<(Pos, String)> {
    // One frame per open collection; `None` for sequences.
    let mut stack: Vec<Option<Mapping>> = Vec::new();
    for item in Parser::new_from_str(text) {
        let (event, span) = item.ok()?;
        let pos = Pos {
            line: span.start.line() as u64,
            column: span.start.col() as u64 + 1,
        };
        // Whether this event is a key of the innermost mapping (and then flip to its value).
        let is_key = match stack.last_mut() {
            Some(Some(m)) => {
                let was = m.at_key;
                if !matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                    m.at_key = !m.at_key;
                }
                was
            }
            _ => false,
        };
        match event {
            Event::Scalar(value, ..) if is_key => {
                let Some(Some(m)) = stack.last_mut() else {
                    continue;
                };
                if let Some(first) = m.keys.get(value.as_ref()) {
                    return Some((
                        pos,
                        format!(
                            "duplicate key `{value}` (first at line {}, column {})",
                            first.line, first.column
                        ),
                    ));
                }
                m.keys.insert(value.into_owned(), pos);
            }
            Event::MappingStart(..) => stack.push(Some(Mapping {
                keys: HashMap::new(),
                at_key: true,
            })),
            Event::SequenceStart(..) => stack.push(None),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> (u64, u64, String) {
        let (p, m) = tab_in_indentation(text)
            .or_else(|| duplicate_key(text))
            .expect("a problem");
        (p.line, p.column, m)
    }

    #[test]
    fn duplicates_and_tabs_are_placed_on_the_offending_token() {
        let (l, c, m) = at("version: 1\nnodes:\n  a: {type: core.int}\nnodes:\n  b: {}\n");
        assert_eq!((l, c), (4, 1), "{m}");
        assert!(m.contains("`nodes` (first at line 2, column 1)"), "{m}");
        let (l, c, _) = at("nodes:\n  a:\n    type: core.int\n    type: core.string\n");
        assert_eq!((l, c), (4, 5));
        let (l, c, _) = at("nodes:\n  a: {type: x, params: {p: 1, p: 2}}\n");
        assert_eq!((l, c), (2, 31));
        let (l, c, m) = at("nodes:\n  a:\n    type: core.int\n\tparams: {}\n");
        assert_eq!((l, c), (4, 1), "{m}");
        assert!(duplicate_key("nodes:\n  a: {type: core.int}\n  b: [x, x]\n").is_none());
        assert!(locate("some other error", "a: 1\na: 2\n").is_none());
    }
}
