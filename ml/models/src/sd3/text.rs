//! SD3's text conditioning, as diffusers' `StableDiffusion3Pipeline.encode_prompt` builds it:
//! CLIP-L's and CLIP-G's penultimate hidden states side by side (77 tokens), zero-padded to
//! T5's width and followed by T5's tokens (or, without T5, 77 zero tokens), and the two CLIPs'
//! projected pooled embeddings side by side.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::text_encoders::{Clip, CLIP_TOKENS, T5};
use crate::{ModelError, Result};

/// SD3's three text encoders (T5 optional, as in diffusers).
pub struct Sd3Text {
    /// CLIP ViT-L/14 with projection (`text_encoder/`).
    pub clip_l: Clip,
    /// OpenCLIP ViT-bigG/14 with projection (`text_encoder_2/`).
    pub clip_g: Clip,
    /// T5-XXL (`text_encoder_3/`), or none: zeros in its place.
    pub t5: Option<T5>,
    /// The width of the joint text tokens when there is no T5 (the transformer's
    /// `joint_attention_dim`).
    pub joint_width: usize,
    /// Where they came from.
    pub source: PathBuf,
}

/// Text features and pooled embeddings of a batch of prompts.
pub struct Sd3Conditioning {
    /// B×(77 + T)×joint width.
    pub context: Tensor,
    /// B×(CLIP-L projection + CLIP-G projection).
    pub pooled: Tensor,
}

impl Sd3Text {
    /// Loads the encoders of a diffusers SD3 pipeline folder (`text_encoder/`, `tokenizer/`,
    /// `text_encoder_2/`, `tokenizer_2/`, and, when present, `text_encoder_3/`, `tokenizer_3/`);
    /// `joint_width` is the transformer's `joint_attention_dim`. `t5`: T5's compute dtype, or
    /// `None` to leave it unloaded (zeros in its place).
    pub fn load(
        dir: &Path,
        joint_width: usize,
        t5: Option<DType>,
        device: &Device,
    ) -> Result<Self> {
        let need = |sub: &str| {
            crate::text_encoders::subfolder(dir, sub, "an SD3 pipeline folder has text_encoder/, tokenizer/, text_encoder_2/ and tokenizer_2/")
        };
        let clip_l = Clip::load(&need("text_encoder")?, &need("tokenizer")?, device)?;
        let clip_g = Clip::load(&need("text_encoder_2")?, &need("tokenizer_2")?, device)?;
        let t5 = match t5 {
            Some(dtype) if dir.join("text_encoder_3/config.json").is_file() => Some(T5::load(
                &dir.join("text_encoder_3"),
                &need("tokenizer_3")?,
                dtype,
                device,
            )?),
            _ => None,
        };
        let text = Self {
            clip_l,
            clip_g,
            t5,
            joint_width,
            source: dir.to_path_buf(),
        };
        text.check_t5_width()?;
        Ok(text)
    }

    /// Loads the encoders bundled in one of Stability AI's SD3 files
    /// (`sd3_medium_incl_clips_t5xxlfp8.safetensors`: `text_encoders.{clip_l,clip_g,t5xxl}.*`).
    /// `configs` is a diffusers SD3 folder whose `text_encoder*/` and `tokenizer*/` size them;
    /// without one, CLIP-L's, bigG's and T5-XXL's published configs and the built-in CLIP
    /// vocabulary are used (T5's tokenizer is not in the file: it needs `configs`, or `t5` off).
    /// CLIP-L is stored without its projection: it is the identity, as in diffusers. `t5` as
    /// for [`Sd3Text::load`].
    pub fn load_file(
        file: &Path,
        configs: Option<&Path>,
        joint_width: usize,
        t5: Option<DType>,
        device: &Device,
    ) -> Result<Self> {
        use super::sai;
        use crate::sd::clip::{ClipConfig, ClipTextModel};
        use crate::sd::tokenizer::ClipTokenizer;
        use crate::t5::{T5Config, T5Encoder, TextTokenizer};
        use crate::Checked;
        use latentflow_weights::{ConfigSource, Header, Store, Weights};

        let header = Header::read(file)?;
        let config = |sub: &str, builtin: &'static str, what: &str| match configs {
            Some(dir) => ConfigSource::File(dir.join(sub).join("config.json")),
            None => ConfigSource::Builtin(builtin, format!("the built-in {what} config")),
        };
        let renamed = |prefix: &'static str| -> Weights {
            Weights::renamed(file, std::sync::Arc::new(move |n| format!("{prefix}{n}")))
        };
        let clip = |prefix: &'static str,
                    sub: &str,
                    tok: &str,
                    builtin,
                    what,
                    pad|
         -> Result<Clip> {
            if !header.has_prefix(prefix) {
                return Err(ModelError::format(
                    file,
                    format!("no `{prefix}*` keys: not an SD3 file with its text encoders (load those from a diffusers folder)"),
                ));
            }
            let cfg = ClipConfig::load(&config(sub, builtin, what))?;
            let mut store = Store::load(&renamed(prefix), |n| n.starts_with(prefix))?;
            let projection = format!("{prefix}text_projection.weight");
            if store.get(&projection).is_none() {
                let eye = Tensor::eye(cfg.hidden_size, DType::F32, &Device::Cpu)?;
                store = store.with([(projection, eye)].into());
            }
            let model = ClipTextModel::new(cfg, store.var_builder(), file)?;
            let tokenizer = match configs.map(|d| d.join(tok)).filter(|d| d.is_dir()) {
                Some(dir) => ClipTokenizer::load(&dir)?,
                None => ClipTokenizer::builtin(pad)?,
            };
            Clip::new(model, tokenizer, file)
        };
        let clip_l = clip(
            sai::CLIP_L_PREFIX,
            "text_encoder",
            "tokenizer",
            sai::BUILTIN_CLIP_L,
            "CLIP-L",
            ClipTokenizer::EOS,
        )?;
        let clip_g = clip(
            sai::CLIP_G_PREFIX,
            "text_encoder_2",
            "tokenizer_2",
            sai::BUILTIN_CLIP_G,
            "CLIP-G",
            "!",
        )?;
        let t5 = match t5 {
            Some(dtype) if header.has_prefix(sai::T5_PREFIX) => {
                let tok = configs
                .map(|d| d.join("tokenizer_3"))
                .filter(|d| d.is_dir())
                .ok_or_else(|| {
                    ModelError::format(
                        file,
                        "T5's tokenizer is not in the file: set `config` to a diffusers SD3 folder with tokenizer_3/, or turn t5 off",
                    )
                })?;
                let cfg = T5Config::load(&config("text_encoder_3", sai::BUILTIN_T5, "T5-XXL"))?;
                let vb = renamed(sai::T5_PREFIX).var_builder(dtype, device)?;
                Some(T5::new(
                    T5Encoder::new(cfg, vb, dtype, file)?,
                    TextTokenizer::from_file(&tok, 0)?,
                ))
            }
            _ => None,
        };
        let text = Self {
            clip_l,
            clip_g,
            t5,
            joint_width,
            source: file.to_path_buf(),
        };
        text.check_t5_width()?;
        Ok(text)
    }

    fn check_t5_width(&self) -> Result<()> {
        if let Some(t5) = &self.t5 {
            if t5.width() != self.joint_width {
                return Err(ModelError::invalid(format!(
                    "{}: T5 is {} wide, the transformer's text tokens {}",
                    self.source.display(),
                    t5.width(),
                    self.joint_width
                )));
            }
        }
        Ok(())
    }

    /// Encodes `texts`, T5 to `max_length` tokens (diffusers' `max_sequence_length`).
    pub fn encode(
        &self,
        texts: &[&str],
        max_length: usize,
        device: &Device,
    ) -> Result<Sd3Conditioning> {
        if texts.is_empty() {
            return Err(ModelError::invalid("no prompts to encode"));
        }
        let (hl, pl) = self.clip_l.penultimate_and_projected(texts, device)?;
        let (hg, pg) = self.clip_g.penultimate_and_projected(texts, device)?;
        let clip = Tensor::cat(&[&hl, &hg], 2)?;
        let b = texts.len();
        let t5 = match &self.t5 {
            Some(t5) => t5.encode(texts, max_length, device)?,
            None => Tensor::zeros((b, CLIP_TOKENS, self.joint_width), DType::F32, device)?,
        };
        let w = t5.dim(2)?;
        let cw = clip.dim(2)?;
        // diffusers pads the CLIP features to T5's width (F.pad with a negative width crops).
        let clip = if cw < w {
            let zeros = Tensor::zeros((b, CLIP_TOKENS, w - cw), DType::F32, device)?;
            Tensor::cat(&[&clip, &zeros], 2)?
        } else {
            clip.narrow(2, 0, w)?
        };
        Ok(Sd3Conditioning {
            context: Tensor::cat(&[&clip, &t5], 1)?,
            pooled: Tensor::cat(&[&pl, &pg], 1)?,
        })
    }
}
