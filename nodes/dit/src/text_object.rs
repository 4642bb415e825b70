//! A pipeline's text encoders as an object other nodes call: `encode(text, max_length)` →
//! [the text tokens 1×T×W, the pooled embedding 1×P].

use std::path::Path;

use candle_core::{Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::from_candle;
use latentflow_plugin_api::sdk::prelude::*;

use crate::{fail, text_args};

/// What a pipeline's text encoders do for the object.
pub(crate) trait PromptEncoder: Send + Sync + 'static {
    /// The handle's interface name (`Sd3Text`, `FluxText`).
    const INTERFACE: &'static str;
    /// Tokens and pooled embedding of one prompt, T5 to `max_length` tokens.
    fn tokens_and_pooled(
        &self,
        text: &str,
        max_length: usize,
    ) -> Result<(CTensor, CTensor), NodeError>;
    /// Where the encoders came from.
    fn source(&self) -> &Path;
}

/// The object around a [`PromptEncoder`].
pub(crate) struct TextObject<T>(pub T);

impl<T: PromptEncoder> ObjectImpl for TextObject<T> {
    fn interface(&self) -> String {
        T::INTERFACE.into()
    }

    fn call(&self, host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        if method != "encode" {
            return Err(NodeError::invalid(format!(
                "{} has no method `{method}`",
                T::INTERFACE
            )));
        }
        let (text, max_length) = text_args(&args)?;
        // T5-XXL's 64 heads of max_length² scores are the largest buffer.
        Ctx::new(host).check_alloc("T5's attention scores", &[64, max_length, max_length], 4)?;
        let (tokens, pooled) = self.0.tokens_and_pooled(text, max_length)?;
        Ok(vec![
            Value::Tensor(from_candle(&tokens)?),
            Value::Tensor(from_candle(&pooled)?),
        ])
    }

    fn describe(&self) -> String {
        format!("{}({})", T::INTERFACE, self.0.source().display())
    }
}

impl PromptEncoder for latentflow_models::sd3::text::Sd3Text {
    const INTERFACE: &'static str = "Sd3Text";
    fn tokens_and_pooled(
        &self,
        text: &str,
        max_length: usize,
    ) -> Result<(CTensor, CTensor), NodeError> {
        let out = self
            .encode(&[text], max_length, &Device::Cpu)
            .map_err(fail)?;
        Ok((out.context, out.pooled))
    }
    fn source(&self) -> &Path {
        &self.source
    }
}

impl PromptEncoder for latentflow_models::flux::text::FluxText {
    const INTERFACE: &'static str = "FluxText";
    fn tokens_and_pooled(
        &self,
        text: &str,
        max_length: usize,
    ) -> Result<(CTensor, CTensor), NodeError> {
        let out = self
            .encode(&[text], max_length, &Device::Cpu)
            .map_err(fail)?;
        Ok((out.context, out.pooled))
    }
    fn source(&self) -> &Path {
        &self.source
    }
}
