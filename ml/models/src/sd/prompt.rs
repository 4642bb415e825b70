//! Prompt weighting in the syntax of AUTOMATIC1111 and ComfyUI, and the 77-token windows that
//! long prompts are split into.
//!
//! `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:1.5)`
//! multiplies it by 1.5; brackets nest and multiply. `\(`, `\)`, `\[`, `\]` and `\\` are literal
//! characters. An unclosed bracket applies to the rest of the prompt; a stray `)` or `]` is text.

/// A run of prompt text and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The text (escapes resolved).
    pub text: String,
    /// Its weight.
    pub weight: f32,
}

enum Tok {
    Open(bool),  // true: round
    Close(bool), // true: round
    CloseWeighted(f32),
    Text(String),
}

fn lex(prompt: &str) -> Vec<Tok> {
    let chars: Vec<char> = prompt.chars().collect();
    let mut toks = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, toks: &mut Vec<Tok>| {
        if !text.is_empty() {
            toks.push(Tok::Text(std::mem::take(text)));
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if matches!(chars.get(i + 1), Some('(' | ')' | '[' | ']' | '\\')) => {
                text.push(chars[i + 1]);
                i += 2;
                continue;
            }
            '(' | '[' => {
                flush(&mut text, &mut toks);
                toks.push(Tok::Open(c == '('));
            }
            ')' | ']' => {
                flush(&mut text, &mut toks);
                toks.push(Tok::Close(c == ')'));
            }
            ':' => {
                // `:number)` closes a round bracket with an explicit weight.
                let rest: String = chars[i + 1..].iter().collect();
                let trimmed = rest.trim_start();
                let num: String = trimmed
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-'))
                    .collect();
                let after = trimmed[num.len()..].trim_start();
                match (num.parse::<f32>(), after.starts_with(')')) {
                    (Ok(w), true) => {
                        flush(&mut text, &mut toks);
                        toks.push(Tok::CloseWeighted(w));
                        let consumed = rest.len() - after.len() + 1;
                        i += 1 + rest[..consumed].chars().count();
                        continue;
                    }
                    _ => text.push(c),
                }
            }
            _ => text.push(c),
        }
        i += 1;
    }
    flush(&mut text, &mut toks);
    toks
}

/// Splits a prompt into weighted spans; adjacent spans of equal weight are merged.
pub fn parse(prompt: &str) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let scale = |spans: &mut [Span], from: usize, k: f32| {
        spans[from..].iter_mut().for_each(|s| s.weight *= k);
    };
    for tok in lex(prompt) {
        match tok {
            Tok::Open(true) => round.push(spans.len()),
            Tok::Open(false) => square.push(spans.len()),
            Tok::Close(true) => match round.pop() {
                Some(at) => scale(&mut spans, at, 1.1),
                None => push_text(&mut spans, ")"),
            },
            Tok::Close(false) => match square.pop() {
                Some(at) => scale(&mut spans, at, 1.0 / 1.1),
                None => push_text(&mut spans, "]"),
            },
            Tok::CloseWeighted(w) => match round.pop() {
                Some(at) => scale(&mut spans, at, w),
                None => push_text(&mut spans, &format!(":{w})")),
            },
            Tok::Text(t) => push_text(&mut spans, &t),
        }
    }
    for at in round {
        scale(&mut spans, at, 1.1);
    }
    for at in square {
        scale(&mut spans, at, 1.0 / 1.1);
    }
    let mut merged: Vec<Span> = Vec::new();
    for s in spans {
        match merged.last_mut() {
            Some(last) if last.weight == s.weight => last.text.push_str(&s.text),
            _ => merged.push(s),
        }
    }
    if merged.is_empty() {
        merged.push(Span {
            text: String::new(),
            weight: 1.0,
        });
    }
    merged
}

fn push_text(spans: &mut Vec<Span>, text: &str) {
    spans.push(Span {
        text: text.to_owned(),
        weight: 1.0,
    });
}

/// Token windows of `len` (77 for CLIP): BOS, up to `len − 2` prompt tokens, EOS, padding.
/// Returns ids and per-token weights (1 for the special tokens), one window per row.
pub fn windows(
    tokens: &[(u32, f32)],
    len: usize,
    bos: u32,
    eos: u32,
    pad: u32,
) -> Vec<(Vec<u32>, Vec<f32>)> {
    let body = len.saturating_sub(2).max(1);
    let chunks: Vec<&[(u32, f32)]> = if tokens.is_empty() {
        vec![&[]]
    } else {
        tokens.chunks(body).collect()
    };
    chunks
        .into_iter()
        .map(|chunk| {
            let mut ids = vec![bos];
            let mut w = vec![1.0];
            ids.extend(chunk.iter().map(|t| t.0));
            w.extend(chunk.iter().map(|t| t.1));
            ids.push(eos);
            w.push(1.0);
            ids.resize(len, pad);
            w.resize(len, 1.0);
            (ids, w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(prompt: &str) -> Vec<(String, f32)> {
        parse(prompt)
            .into_iter()
            .map(|s| (s.text, (s.weight * 1000.0).round() / 1000.0))
            .collect()
    }

    #[test]
    fn plain_text_is_one_span() {
        assert_eq!(w("a cat, sitting"), vec![("a cat, sitting".into(), 1.0)]);
    }

    #[test]
    fn weights_nest_and_multiply() {
        assert_eq!(
            w("a (cat:1.5) on [a mat] ((very))"),
            vec![
                ("a ".into(), 1.0),
                ("cat".into(), 1.5),
                (" on ".into(), 1.0),
                ("a mat".into(), 0.909),
                (" ".into(), 1.0),
                ("very".into(), 1.21),
            ]
        );
        assert_eq!(w("((a:2) b)"), vec![("a".into(), 2.2), (" b".into(), 1.1)]);
        assert_eq!(w("(a : 0.5 )"), vec![("a ".into(), 0.5)]);
    }

    #[test]
    fn escapes_and_strays_are_text() {
        assert_eq!(
            w(r"a \(b\) \[c\] d\\e"),
            vec![(r"a (b) [c] d\e".into(), 1.0)]
        );
        assert_eq!(w("a) b] c: d"), vec![("a) b] c: d".into(), 1.0)]);
        assert_eq!(w("time 10:30"), vec![("time 10:30".into(), 1.0)]);
    }

    #[test]
    fn unclosed_brackets_apply_to_the_rest() {
        assert_eq!(w("a (b c"), vec![("a ".into(), 1.0), ("b c".into(), 1.1)]);
        assert_eq!(w("[a"), vec![("a".into(), 0.909)]);
    }

    #[test]
    fn windows_wrap_75_tokens_with_bos_eos_and_padding() {
        let toks: Vec<(u32, f32)> = (0..80).map(|i| (i, 2.0)).collect();
        let win = windows(&toks, 77, 100, 101, 101);
        assert_eq!(win.len(), 2);
        assert_eq!(win[0].0[0], 100);
        assert_eq!(win[0].0[76], 101);
        assert_eq!(win[0].0[1..76], (0..75).collect::<Vec<u32>>()[..]);
        assert_eq!(&win[1].0[..8], &[100, 75, 76, 77, 78, 79, 101, 101]);
        assert_eq!(win[1].1[1], 2.0);
        assert_eq!(win[1].1[6], 1.0);
        assert_eq!(windows(&[], 77, 1, 2, 3).len(), 1);
    }
}
