//! Neural-network blocks that several model families share, with the parameter names of
//! diffusers so that checkpoints load unchanged: ResNet blocks, the spatial transformer, timestep
//! and patch embeddings, adaptive and RMS layer norms. Built from a `VarBuilder`; compute goes through
//! `latentflow-kernels`.

pub mod adaln;
pub mod embeddings;
pub mod resnet;
pub mod rms_norm;
pub mod spatial_attention;
pub mod transformer2d;

pub use adaln::{plain_layer_norm, AdaLayerNormZero, Modulation};
pub use embeddings::{
    sincos_positions_2d, timestep_features, PatchEmbed, PatchEmbedConfig, TimestepEmbedding,
    TimestepLabelEmbedding,
};
pub use resnet::{Resample, ResnetBlock, ResnetConfig, TimeNorm};
pub use rms_norm::RmsNorm;
pub use spatial_attention::SpatialSelfAttention;
pub use transformer2d::{
    Attention, AttentionHook, BasicTransformerBlock, GegluFeedForward, GeluFeedForward,
    Transformer2D, Transformer2DConfig,
};
