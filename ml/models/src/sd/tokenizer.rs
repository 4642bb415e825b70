//! The CLIP BPE tokenizer, built with the `tokenizers` crate exactly as transformers' (fast)
//! `CLIPTokenizer` builds it: NFC, whitespace runs → one space, lowercase; CLIP's word regex;
//! byte-level BPE with the `</w>` end-of-word suffix.
//!
//! Sources: a `tokenizer/` folder with `vocab.json` + `merges.txt` (what diffusers pipelines
//! ship), or with only `tokenizer.json` (what transformers 5 writes; read by `tokenizers`
//! itself), or the original `bpe_simple_vocab_16e6.txt.gz` of OpenAI CLIP / open_clip.

use std::io::Read;
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{ModelError, Result};

fn err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::format(path, format!("tokenizer: {reason}"))
}

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
const WORDS: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A CLIP tokenizer with its special ids.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    /// `<|startoftext|>`.
    pub bos: u32,
    /// `<|endoftext|>` (also the padding token of SD 1.x).
    pub eos: u32,
    /// The padding token.
    pub pad: u32,
}

/// Checks `vocab.json` (an object of token → id) and `merges.txt` (`#version` header, then
/// pairs) so that a broken one is named; the BPE builder's own errors name neither.
fn check_vocab_and_merges(vocab: &Path, merges: &Path) -> Result<()> {
    let text = std::fs::read_to_string(vocab).map_err(|e| err(vocab, e))?;
    serde_json::from_str::<std::collections::HashMap<String, u32>>(&text)
        .map_err(|e| err(vocab, format!("not a JSON object of token ids: {e}")))?;
    let text = std::fs::read_to_string(merges).map_err(|e| err(merges, e))?;
    let bad = text
        .lines()
        .enumerate()
        .filter(|(i, l)| !(l.is_empty() || *i == 0 && l.starts_with("#version")))
        .find(|(_, l)| l.split(' ').count() != 2);
    match bad {
        Some((i, l)) => Err(err(
            merges,
            format!("line {}: {l:?} is not a pair of tokens", i + 1),
        )),
        None => Ok(()),
    }
}

impl ClipTokenizer {
    /// From a `tokenizer/` folder (vocab.json + merges.txt, or tokenizer.json) or a
    /// `bpe_simple_vocab_16e6.txt.gz` file.
    pub fn load(path: &Path) -> Result<Self> {
        let bpe = if path.is_dir() {
            let (vocab, merges) = (path.join("vocab.json"), path.join("merges.txt"));
            let json = path.join("tokenizer.json");
            if !(vocab.is_file() && merges.is_file()) && json.is_file() {
                return Self::from_tokenizer_json(&json, &pad_token(path));
            }
            for f in [&vocab, &merges] {
                if !f.is_file() {
                    return Err(ModelError::format(
                        f,
                        "missing (a CLIP tokenizer folder has vocab.json and merges.txt, or tokenizer.json)",
                    ));
                }
            }
            check_vocab_and_merges(&vocab, &merges)?;
            BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        } else {
            let file = std::fs::File::open(path).map_err(|e| err(path, e))?;
            let (vocab, merges) = from_bpe_gz(file).map_err(|e| err(path, e))?;
            BPE::builder().vocab_and_merges(vocab, merges)
        };
        let bpe = bpe
            .end_of_word_suffix("</w>".into())
            .unk_token(EOS.into())
            .build()
            .map_err(|e| err(path, e))?;
        let pad = if path.is_dir() {
            pad_token(path)
        } else {
            EOS.into()
        };
        Self::from_bpe(bpe, &pad)
    }

    /// A `tokenizer.json` as the `tokenizers` library reads it (normaliser, pre-tokeniser,
    /// BPE model and special tokens all come from the file).
    pub fn from_tokenizer_json(file: &Path, pad: &str) -> Result<Self> {
        let inner = Tokenizer::from_file(file).map_err(|e| err(file, e))?;
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| err(file, format!("the vocabulary has no `{t}`")))
        };
        Ok(Self {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(pad)?,
            inner,
        })
    }

    /// The original CLIP vocabulary (built in), padding with `pad`: for checkpoints that come
    /// without a tokenizer folder.
    pub fn builtin(pad: &str) -> Result<Self> {
        const BPE_VOCAB: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");
        Self::from_bpe_gz_bytes_padded(BPE_VOCAB, pad)
    }

    /// `<|endoftext|>`, CLIP's own padding token (SD 1.x's, CLIP-L's).
    pub const EOS: &'static str = EOS;

    /// From the bytes of a `bpe_simple_vocab_16e6.txt.gz` file.
    pub fn from_bpe_gz_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bpe_gz_bytes_padded(bytes, EOS)
    }

    /// [`ClipTokenizer::from_bpe_gz_bytes`] padding with `pad` (OpenCLIP's tokenizers, SD 2.x's
    /// and SDXL's second, pad with `!`).
    pub fn from_bpe_gz_bytes_padded(bytes: &[u8], pad: &str) -> Result<Self> {
        let (vocab, merges) = from_bpe_gz(bytes)?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".into())
            .unk_token(EOS.into())
            .build()
            .map_err(|e| ModelError::invalid(format!("CLIP vocabulary: {e}")))?;
        Self::from_bpe(bpe, pad)
    }

    fn from_bpe(bpe: BPE, pad: &str) -> Result<Self> {
        let e = |e: tokenizers::Error| ModelError::invalid(format!("tokenizer: {e}"));
        let mut inner = Tokenizer::new(bpe);
        inner
            .with_normalizer(Some(Normalizers::new(vec![
                NFC.into(),
                Replace::new(
                    tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                    " ",
                )
                .map_err(e)?
                .into(),
                Lowercase.into(),
            ])))
            .map_err(e)?;
        inner.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            Split::new(
                SplitPattern::Regex(WORDS.into()),
                SplitDelimiterBehavior::Removed,
                true,
            )
            .map_err(e)?
            .into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner
            .add_special_tokens([AddedToken::from(BOS, true), AddedToken::from(EOS, true)])
            .map_err(e)?;
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| ModelError::invalid(format!("the vocabulary has no `{t}`")))
        };
        Ok(Self {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(pad)?,
            inner,
        })
    }

    /// Token ids of `text`, without BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::invalid(format!("tokenizing {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// The pad token named by `special_tokens_map.json` (SD 2.x pads with `!`), else `<|endoftext|>`.
fn pad_token(dir: &Path) -> String {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
    };
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        if let Some(pad) = read(file).and_then(|v| v.get("pad_token").cloned()) {
            let s = match &pad {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => {
                    o.get("content").and_then(|c| c.as_str()).map(str::to_owned)
                }
                _ => None,
            };
            if let Some(s) = s {
                return s;
            }
        }
    }
    EOS.into()
}

/// GPT-2/CLIP's reversible byte → printable character table.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(_, c)| char::from_u32(c).unwrap_or('?'))
        .collect()
}

type VocabMerges = (tokenizers::models::bpe::Vocab, Vec<(String, String)>);

/// Vocabulary and merges from the original merges file, as OpenAI CLIP derives them: the 256
/// byte characters, the same with `</w>`, one token per merge (the first 48,894), then BOS/EOS.
fn from_bpe_gz(reader: impl Read) -> Result<VocabMerges> {
    // The real file inflates to 1.3 MB: refuse anything far larger (decompression bombs).
    const LIMIT: u64 = 16 << 20;
    let mut text = String::new();
    flate2::read::GzDecoder::new(reader)
        .take(LIMIT + 1)
        .read_to_string(&mut text)
        .map_err(|e| ModelError::invalid(format!("not a gzipped BPE merges file ({e})")))?;
    if text.len() as u64 > LIMIT {
        return Err(ModelError::invalid(
            "the BPE merges file inflates to more than 16 MiB: not CLIP's",
        ));
    }
    const MERGES: usize = 49152 - 256 - 2;
    let merges: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .take(MERGES)
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    if merges.len() != MERGES {
        return Err(ModelError::invalid(format!(
            "{} merges, CLIP's file has {MERGES}",
            merges.len()
        )));
    }
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    tokens.extend(chars.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push(BOS.into());
    tokens.push(EOS.into());
    let vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    Ok((vocab, merges))
}
