//! transformers' `T5EncoderModel` (flan-t5, t5-v1_1, mT5): the text encoder of ELLA, PixArt and
//! SD3, with the padding mask candle-transformers' encoder lacks, and its tokenizer.

pub mod config;
pub mod model;
pub mod tokenizer;

pub use config::T5Config;
pub use model::T5Encoder;
pub use tokenizer::{Encoded, TextTokenizer};
