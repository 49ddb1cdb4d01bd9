//! The Qwen3 decoder-only transformer in tch, laid out like the Hugging Face checkpoint.
//!
//! Reads top-down like the reference implementation: [`Config`] (Hugging Face field names, read
//! from `config.json`), then the modules in order — embeddings, RMSNorm, rotary embeddings with the
//! config's `rope_theta`, grouped-query attention with `q_norm`/`k_norm`, the SwiGLU MLP, the
//! decoder layer, the model and its (optionally tied) `lm_head` — then [`Qwen3::forward`].
//! Field names mirror the checkpoint's tensor names (`model.layers.3.self_attn.q_proj.weight` is
//! `layers[3].self_attn.q_proj.weight`), so loading and saving is a walk over [`Qwen3::named_weights`].
//!
//! Every linear layer can carry a LoRA adapter (see [`crate::lora`]); the base weights are plain
//! tensors that never require gradients.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::lora::LoraAdapter;

// ---- Config -------------------------------------------------------------------------------------

/// Rotary parameters as newer `config.json` files write them (`rope_parameters`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RopeParameters {
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// `"default"` is the only kind Qwen3 checkpoints use and the only one supported here.
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
}

fn default_rope_type() -> String {
    "default".to_string()
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_hidden_act() -> String {
    "silu".to_string()
}

/// A Qwen3 `config.json`, with the Hugging Face field names. Unknown fields are ignored (they are
/// kept verbatim when a merged checkpoint is saved, because the original file is copied).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Config {
    /// Model classes, e.g. `["Qwen3ForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `"qwen3"`.
    #[serde(default)]
    pub model_type: String,
    /// Rows of the embedding matrix.
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: i64,
    /// Number of decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention); equal to the query heads when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<i64>,
    /// Width of one head; `hidden_size / num_attention_heads` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    /// MLP activation; only `silu` exists in Qwen3.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Longest context the checkpoint was trained for.
    pub max_position_embeddings: i64,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base as older `config.json` files write it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Rotary parameters as newer `config.json` files write them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// Rotary scaling (YaRN and friends); must be absent or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether the attention projections have biases (false in Qwen3).
    #[serde(default)]
    pub attention_bias: bool,
    /// Sliding-window attention; not supported (false in every Qwen3 checkpoint).
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Storage dtype as older files name it (`"bfloat16"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// Storage dtype as newer files name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

impl Config {
    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Number of key/value heads.
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Base of the rotary frequencies (1e6 in Qwen3 checkpoints; 10000 when the file says nothing,
    /// as in transformers).
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// Why this config cannot run here, if it cannot: everything this implementation does not
    /// compute exactly like transformers is refused rather than approximated.
    pub fn unsupported(&self) -> Option<String> {
        let is_qwen3 = self.model_type == "qwen3"
            || self
                .architectures
                .iter()
                .any(|a| a.starts_with("Qwen3") && !a.contains("Moe"));
        if !is_qwen3 || self.model_type.contains("moe") {
            return Some(format!(
                "architecture {:?} / model_type {:?} (only Qwen3ForCausalLM / \"qwen3\" is supported)",
                self.architectures, self.model_type
            ));
        }
        if self.hidden_act != "silu" {
            return Some(format!("hidden_act {:?} (only \"silu\")", self.hidden_act));
        }
        if let Some(p) = &self.rope_parameters {
            if p.rope_type != "default" {
                return Some(format!("rope_type {:?} (only \"default\")", p.rope_type));
            }
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Some("rope_scaling (only unscaled rotary embeddings)".to_string());
        }
        if self.use_sliding_window {
            return Some("use_sliding_window = true".to_string());
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Some(format!(
                "{} query heads not a multiple of {} key/value heads",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        None
    }

    /// Parameters of the model, counting a tied `lm_head` once.
    pub fn parameter_count(&self) -> i64 {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim());
        let (q, kv) = (self.num_attention_heads * d, self.kv_heads() * d);
        let attn = h * q + 2 * h * kv + q * h + 2 * d;
        let layer = attn + 3 * h * i + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_hidden_layers * layer + h + head
    }
}

// ---- Building blocks ----------------------------------------------------------------------------

/// A linear layer `y = x W^T (+ b)`, optionally with a LoRA adapter added to its output.
#[derive(Debug)]
pub struct Linear {
    /// `[out_features, in_features]`, frozen.
    pub weight: Tensor,
    /// `[out_features]` when the checkpoint has one.
    pub bias: Option<Tensor>,
    /// Trainable low-rank update, when LoRA targets this layer.
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    /// Input width.
    pub fn in_features(&self) -> i64 {
        self.weight.size()[1]
    }

    /// Output width.
    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }

    /// `x: [.., in] -> [.., out]`; `train` enables the adapter's dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            Some(lora) => y + lora.forward_t(x, train),
            None => y,
        }
    }
}

/// Root-mean-square normalization, computed in fp32 whatever the activations' dtype (as
/// transformers does), then scaled by a learned weight.
#[derive(Debug)]
pub struct RmsNorm {
    /// `[dim]`.
    pub weight: Tensor,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// `x: [.., dim] -> [.., dim]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let variance = xf.square().mean_dim(-1i64, true, Kind::Float);
        let normed = (xf * (variance + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
}

/// Rotary position embedding with the "rotate half" layout of Hugging Face checkpoints.
#[derive(Debug)]
pub struct Rotary {
    /// `[head_dim / 2]` inverse frequencies, fp32.
    inv_freq: Tensor,
}

impl Rotary {
    /// Frequencies `theta^(-2i/d)` for `i < d/2`.
    pub fn new(head_dim: i64, theta: f64, device: Device) -> Self {
        // Same fp32 arithmetic as transformers: 1 / theta^(arange(0, d, 2) / d).
        let exponents =
            Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, device)) / head_dim as f64;
        let inv_freq = Tensor::pow_scalar(theta, &exponents).reciprocal();
        Rotary { inv_freq }
    }

    /// `(cos, sin)`, each `[t, head_dim]` in `kind`, for positions `start..start+t`.
    pub fn cos_sin(&self, start: i64, t: i64, kind: Kind) -> (Tensor, Tensor) {
        let device = self.inv_freq.device();
        let pos = Tensor::arange_start(start, start + t, (Kind::Float, device));
        let freqs = pos.outer(&self.inv_freq); // [t, d/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1); // [t, d]
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }

    /// `(cos, sin)`, each `[b, 1, t, head_dim]` in `kind`, for per-row positions `[b, t]` (int64).
    pub fn cos_sin_at(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        // [b, t, 1] * [d/2] -> [b, t, d/2], in fp32 as transformers computes it.
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // [b, 1, t, d]
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }

    /// `x: [b, heads, t, d]` rotated by `cos`/`sin` of shape `[t, d]` or `[b, 1, t, d]`.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let d = x.size()[3];
        let x1 = x.narrow(3, 0, d / 2);
        let x2 = x.narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(&[&(-x2), &x1], -1);
        x * cos + rotated * sin
    }
}

/// Keys and values of earlier positions, per layer, for incremental decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: i64,
    /// `[b, len]`, true where a real token (not padding) was cached; set by padded decoding.
    padding: Option<Tensor>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions already cached (the position of the next token).
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Grouped-query self-attention with RMSNorm on every query and key head (`q_norm`, `k_norm`).
#[derive(Debug)]
pub struct Attention {
    /// `hidden -> heads * head_dim`.
    pub q_proj: Linear,
    /// `hidden -> kv_heads * head_dim`.
    pub k_proj: Linear,
    /// `hidden -> kv_heads * head_dim`.
    pub v_proj: Linear,
    /// `heads * head_dim -> hidden`.
    pub o_proj: Linear,
    /// RMSNorm over `head_dim`, applied to each query head before the rotation.
    pub q_norm: RmsNorm,
    /// RMSNorm over `head_dim`, applied to each key head before the rotation.
    pub k_norm: RmsNorm,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    /// `x: [b, t, hidden] -> [b, t, hidden]`. With a cache, `x` holds the positions after the cached
    /// ones and the cache is extended; `cos`/`sin` are `[t, head_dim]` (or `[b, 1, t, head_dim]`)
    /// for those positions. `mask` (`[b, 1, t, past + t]`, true = visible) replaces causal masking.
    fn forward_t(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let d = self.head_dim;
        // [b, t, heads, d] -> norm over d -> [b, heads, t, d]
        let q = self.q_proj.forward_t(x, train).view([b, t, self.heads, d]);
        let q = self.q_norm.forward(&q).transpose(1, 2);
        let k = self
            .k_proj
            .forward_t(x, train)
            .view([b, t, self.kv_heads, d]);
        let k = self.k_norm.forward(&k).transpose(1, 2);
        let v = self
            .v_proj
            .forward_t(x, train)
            .view([b, t, self.kv_heads, d])
            .transpose(1, 2);
        let q = Rotary::apply(&q, cos, sin);
        let k = Rotary::apply(&k, cos, sin);

        // With a cache: prepend the earlier keys/values; queries sit at the end of the sequence.
        let (k, v, past) = match cache {
            Some(slot) => {
                let (k, v, past) = match slot.take() {
                    Some((pk, pv)) => {
                        let past = pk.size()[2];
                        (Tensor::cat(&[&pk, &k], 2), Tensor::cat(&[&pv, &v], 2), past)
                    }
                    None => (k, v, 0),
                };
                *slot = Some((k.shallow_clone(), v.shallow_clone()));
                (k, v, past)
            }
            None => (k, v, 0),
        };
        // [b, heads, t, d]; the kernel broadcasts the kv heads over their query groups.
        let out = if let Some(mask) = mask {
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, true)
        } else if past == 0 {
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, true)
        } else if t == 1 {
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, false, None, true)
        } else {
            // Query i (absolute position past+i) sees keys 0..=past+i.
            let device = x.device();
            let qpos = Tensor::arange_start(past, past + t, (Kind::Int64, device)).unsqueeze(1);
            let kpos = Tensor::arange(past + t, (Kind::Int64, device)).unsqueeze(0);
            let mask = kpos.le_tensor(&qpos);
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, true)
        };
        let out = out.transpose(1, 2).reshape([b, t, self.heads * d]);
        self.o_proj.forward_t(&out, train)
    }
}

/// The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    /// `hidden -> intermediate`, through SiLU.
    pub gate_proj: Linear,
    /// `hidden -> intermediate`.
    pub up_proj: Linear,
    /// `intermediate -> hidden`.
    pub down_proj: Linear,
}

impl Mlp {
    /// `x: [b, t, hidden] -> [b, t, hidden]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let gated = self.gate_proj.forward_t(x, train).silu() * self.up_proj.forward_t(x, train);
        self.down_proj.forward_t(&gated, train)
    }
}

/// One pre-norm decoder layer: attention and MLP, each inside a residual connection.
#[derive(Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Attention block.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// MLP block.
    pub mlp: Mlp,
}

impl DecoderLayer {
    fn forward_t(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let normed = self.input_layernorm.forward(x);
        let h = x + self
            .self_attn
            .forward_t(&normed, cos, sin, cache, mask, train);
        let out = self
            .mlp
            .forward_t(&self.post_attention_layernorm.forward(&h), train);
        h + out
    }
}

// ---- The model ----------------------------------------------------------------------------------

/// A Qwen3 causal language model: embeddings, decoder layers, final norm, `lm_head`.
#[derive(Debug)]
pub struct Qwen3 {
    /// The configuration it was built from.
    pub config: Config,
    /// `model.embed_tokens.weight`: `[vocab, hidden]`.
    pub embed_tokens: Tensor,
    /// `model.layers.*`.
    pub layers: Vec<DecoderLayer>,
    /// `model.norm`.
    pub norm: RmsNorm,
    /// `lm_head.weight`: `[vocab, hidden]`; the same tensor as `embed_tokens` when tied.
    pub lm_head: Tensor,
    /// Where the weights came from, when loaded from a checkpoint directory (used when saving).
    pub checkpoint: Option<crate::hf::CheckpointInfo>,
    rotary: Rotary,
}

/// What [`Qwen3::from_weights`] could not find or did not accept.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("tensor {0} is missing from the checkpoint")]
    Missing(String),
    /// A tensor has a different shape than the config implies.
    #[error("tensor {name} has shape {found:?}, the config implies {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Shape the config implies.
        expected: Vec<i64>,
        /// Shape in the checkpoint.
        found: Vec<i64>,
    },
    /// Tensors the architecture does not use (a sign of a different architecture or a broken file).
    #[error("the checkpoint has tensors this Qwen3 implementation does not use: {0:?}")]
    Unused(Vec<String>),
}

/// Named checkpoint tensors being consumed by [`Qwen3::from_weights`].
struct Source<'a> {
    weights: &'a mut BTreeMap<String, Tensor>,
    device: Device,
    kind: Kind,
}

impl Source<'_> {
    /// Removes `name`, checks its shape, moves it to the target device and dtype.
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, WeightsError> {
        let t = self
            .weights
            .remove(name)
            .ok_or_else(|| WeightsError::Missing(name.to_string()))?;
        if t.size() != shape {
            return Err(WeightsError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.size(),
            });
        }
        Ok(t.to_device(self.device).to_kind(self.kind).detach())
    }

    fn linear(
        &mut self,
        name: &str,
        out: i64,
        inp: i64,
        bias: bool,
    ) -> Result<Linear, WeightsError> {
        let weight = self.take(&format!("{name}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(self.take(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
        })
    }

    fn norm(&mut self, name: &str, dim: i64, eps: f64) -> Result<RmsNorm, WeightsError> {
        Ok(RmsNorm {
            weight: self.take(&format!("{name}.weight"), &[dim])?,
            eps,
        })
    }
}

impl Qwen3 {
    /// Builds the model from named tensors in the checkpoint's naming (`model.layers.0.…`),
    /// taking them out of `weights`, moved to `device` and `kind`. Every tensor must be used and
    /// have the shape the config implies.
    pub fn from_weights(
        config: Config,
        weights: &mut BTreeMap<String, Tensor>,
        device: Device,
        kind: Kind,
    ) -> Result<Self, WeightsError> {
        let (h, i, d) = (
            config.hidden_size,
            config.intermediate_size,
            config.head_dim(),
        );
        let (nq, nkv) = (config.num_attention_heads, config.kv_heads());
        let (eps, bias) = (config.rms_norm_eps, config.attention_bias);
        let mut src = Source {
            weights,
            device,
            kind,
        };
        let embed_tokens = src.take("model.embed_tokens.weight", &[config.vocab_size, h])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let self_attn = Attention {
                q_proj: src.linear(&format!("{p}.self_attn.q_proj"), nq * d, h, bias)?,
                k_proj: src.linear(&format!("{p}.self_attn.k_proj"), nkv * d, h, bias)?,
                v_proj: src.linear(&format!("{p}.self_attn.v_proj"), nkv * d, h, bias)?,
                o_proj: src.linear(&format!("{p}.self_attn.o_proj"), h, nq * d, bias)?,
                q_norm: src.norm(&format!("{p}.self_attn.q_norm"), d, eps)?,
                k_norm: src.norm(&format!("{p}.self_attn.k_norm"), d, eps)?,
                heads: nq,
                kv_heads: nkv,
                head_dim: d,
            };
            let mlp = Mlp {
                gate_proj: src.linear(&format!("{p}.mlp.gate_proj"), i, h, false)?,
                up_proj: src.linear(&format!("{p}.mlp.up_proj"), i, h, false)?,
                down_proj: src.linear(&format!("{p}.mlp.down_proj"), h, i, false)?,
            };
            layers.push(DecoderLayer {
                input_layernorm: src.norm(&format!("{p}.input_layernorm"), h, eps)?,
                self_attn,
                post_attention_layernorm: src.norm(
                    &format!("{p}.post_attention_layernorm"),
                    h,
                    eps,
                )?,
                mlp,
            });
        }
        let norm = src.norm("model.norm", h, eps)?;
        let lm_head = if config.tie_word_embeddings {
            // Some exporters write the tied copy anyway; it must then have the embeddings' shape,
            // and the embeddings are what transformers uses for a tied head.
            if src.weights.contains_key("lm_head.weight") {
                let _tied_copy = src.take("lm_head.weight", &[config.vocab_size, h])?;
            }
            embed_tokens.shallow_clone()
        } else {
            src.take("lm_head.weight", &[config.vocab_size, h])?
        };
        if !src.weights.is_empty() {
            return Err(WeightsError::Unused(src.weights.keys().cloned().collect()));
        }
        let rotary = Rotary::new(d, config.rope_theta(), device);
        Ok(Qwen3 {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            checkpoint: None,
            rotary,
        })
    }

    /// A model with random weights (normal, std 0.02; norms at 1) in the checkpoint's naming, for
    /// benchmarks and tests where no checkpoint is at hand. Seeded by tch's global generator.
    pub fn random(config: Config, device: Device, kind: Kind) -> Result<Self, WeightsError> {
        let mut weights = BTreeMap::new();
        for (name, shape) in Self::weight_shapes(&config) {
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), (kind, device))
            } else {
                Tensor::randn(shape.as_slice(), (kind, device)) * 0.02
            };
            weights.insert(name, t);
        }
        Self::from_weights(config, &mut weights, device, kind)
    }

    /// Names and shapes of every tensor a checkpoint for `config` holds (without a tied `lm_head`).
    pub fn weight_shapes(config: &Config) -> Vec<(String, Vec<i64>)> {
        let (h, i, d) = (
            config.hidden_size,
            config.intermediate_size,
            config.head_dim(),
        );
        let (nq, nkv) = (config.num_attention_heads, config.kv_heads());
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![config.vocab_size, h],
        )];
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut lin = |name: &str, o: i64, inp: i64, bias: bool| {
                out.push((format!("{p}.{name}.weight"), vec![o, inp]));
                if bias {
                    out.push((format!("{p}.{name}.bias"), vec![o]));
                }
            };
            let b = config.attention_bias;
            lin("self_attn.q_proj", nq * d, h, b);
            lin("self_attn.k_proj", nkv * d, h, b);
            lin("self_attn.v_proj", nkv * d, h, b);
            lin("self_attn.o_proj", h, nq * d, b);
            lin("mlp.gate_proj", i, h, false);
            lin("mlp.up_proj", i, h, false);
            lin("mlp.down_proj", h, i, false);
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![config.vocab_size, h]));
        }
        out
    }

    /// The base weights with their checkpoint names (a tied `lm_head` is left out, as
    /// transformers leaves it out of saved files). LoRA adapters are not included.
    pub fn named_weights(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            for (name, lin) in layer.linears() {
                out.push((format!("{p}.{name}.weight"), &lin.weight));
                if let Some(b) = &lin.bias {
                    out.push((format!("{p}.{name}.bias"), b));
                }
            }
            out.push((
                format!("{p}.self_attn.q_norm.weight"),
                &layer.self_attn.q_norm.weight,
            ));
            out.push((
                format!("{p}.self_attn.k_norm.weight"),
                &layer.self_attn.k_norm.weight,
            ));
            out.push((
                format!("{p}.input_layernorm.weight"),
                &layer.input_layernorm.weight,
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                &layer.post_attention_layernorm.weight,
            ));
        }
        out.push(("model.norm.weight".to_string(), &self.norm.weight));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), &self.lm_head));
        }
        out
    }

    /// Device the weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// Dtype of the weights and activations.
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Logits for every position, evaluation mode: `input_ids: [b, t]` (int64) -> `[b, t, vocab]`.
    /// Causal attention over positions `0..t`; batches are padded on the right.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        self.forward_t(input_ids, false)
    }

    /// Like [`Qwen3::forward`]; `train` enables LoRA dropout.
    pub fn forward_t(&self, input_ids: &Tensor, train: bool) -> Tensor {
        let hidden = self.hidden_states(input_ids, None, train);
        self.logits(&hidden)
    }

    /// Incremental decoding: `input_ids: [b, t]` are the positions after those in `cache`
    /// (`start_pos = cache.len()`); returns `[b, t, vocab]` and extends the cache.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Tensor {
        if cache.padding.is_some() {
            // A cache filled by padded decoding must keep masking its padding.
            let real = Tensor::ones(input_ids.size(), (Kind::Int64, input_ids.device()));
            return self.forward_padded(input_ids, &real, cache);
        }
        let hidden = self.hidden_states(input_ids, Some(cache), false);
        self.logits(&hidden)
    }

    /// Batched incremental decoding of sequences of different lengths, padded on the left:
    /// `input_ids: [b, t]` follow the positions in `cache`; `attention_mask: [b, t]` is nonzero for
    /// real tokens and zero for padding. Each row gets positions counting its real tokens only and
    /// never attends to padding, so its logits equal those of the row decoded alone. Returns
    /// `[b, t, vocab]` and extends the cache (use one cache per batch, with this method only).
    pub fn forward_padded(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        let t = input_ids.size()[1];
        let past = cache.len;
        let device = input_ids.device();
        let real = attention_mask.ne(0).to_device(device);
        let full = match &cache.padding {
            Some(p) => Tensor::cat(&[p, &real], 1),
            None => real,
        }; // [b, past + t]
           // Position of a token = number of real tokens before it.
        let positions = (full.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1)
            .narrow(1, past, t)
            .clamp_min(0);
        // Query i (absolute past+i) sees real keys up to itself, and always itself, so that a
        // padding query has a finite (ignored) output instead of NaN that would leak into V.
        let qpos = Tensor::arange_start(past, past + t, (Kind::Int64, device)).view([1, t, 1]);
        let kpos = Tensor::arange(past + t, (Kind::Int64, device)).view([1, 1, past + t]);
        let mask = kpos
            .le_tensor(&qpos)
            .logical_and(&full.unsqueeze(1))
            .logical_or(&kpos.eq_tensor(&qpos))
            .unsqueeze(1); // [b, 1, t, past + t]
        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        let (cos, sin) = self.rotary.cos_sin_at(&positions, x.kind());
        cache.layers.resize_with(self.layers.len(), || None);
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward_t(&x, &cos, &sin, Some(slot), Some(&mask), false);
        }
        cache.len += t;
        cache.padding = Some(full);
        self.logits(&self.norm.forward(&x))
    }

    /// Final hidden states `[b, t, hidden]` (after the last norm).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let t = input_ids.size()[1];
        let start = cache.as_ref().map_or(0, |c| c.len);
        // [b, t] -> [b, t, hidden]
        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        let (cos, sin) = self.rotary.cos_sin(start, t, x.kind());
        match cache {
            Some(cache) => {
                cache.layers.resize_with(self.layers.len(), || None);
                for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
                    x = layer.forward_t(&x, &cos, &sin, Some(slot), None, train);
                }
                cache.len += t;
            }
            None => {
                for layer in &self.layers {
                    x = layer.forward_t(&x, &cos, &sin, None, None, train);
                }
            }
        }
        self.norm.forward(&x)
    }

    /// One training forward and backward of [`causal_lm_loss`] with activation checkpointing per
    /// decoder layer: only each layer's input is kept; each layer is recomputed, last to first,
    /// when its gradient is needed. Gradients accumulate into the LoRA variables as with
    /// `loss.backward()`; the returned loss is detached. Memory for activations drops from all
    /// layers' to one layer's (plus the `[b, t, hidden]` inputs), for about one more forward.
    ///
    /// LoRA dropout draws the same masks in the recomputation as in the first pass: the global
    /// generator is reseeded per layer from a seed drawn from it, so runs stay deterministic.
    pub fn backward_checkpointed(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        train: bool,
    ) -> Tensor {
        let t = input_ids.size()[1];
        // [b, t] -> [b, t, hidden]; the embeddings are frozen, so no graph is needed here.
        let embeds =
            tch::no_grad(|| Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false));
        let (cos, sin) = self.rotary.cos_sin(0, t, embeds.kind());
        let base_seed = Tensor::randint(1 << 40, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        let reseed = |l: usize| {
            if train {
                tch::manual_seed(base_seed + l as i64);
            }
        };
        // First pass without a graph, keeping every layer's input.
        let mut inputs = Vec::with_capacity(self.layers.len());
        let last = tch::no_grad(|| {
            let mut x = embeds;
            for (l, layer) in self.layers.iter().enumerate() {
                inputs.push(x.shallow_clone());
                reseed(l);
                x = layer.forward_t(&x, &cos, &sin, None, None, train);
            }
            x
        });
        // Head and loss, from the last hidden state as a leaf.
        let last = last.detach().set_requires_grad(true);
        let loss = causal_lm_loss(&self.logits(&self.norm.forward(&last)), labels);
        loss.backward();
        let mut grad = last.grad();
        // Layers last to first: recompute, then push the incoming gradient through
        // (d/dθ of sum(out · g) is the vector-Jacobian product Jᵀg).
        for (l, layer) in self.layers.iter().enumerate().rev() {
            let x = inputs[l].detach();
            let x = if l > 0 { x.set_requires_grad(true) } else { x };
            reseed(l);
            let out = layer.forward_t(&x, &cos, &sin, None, None, train);
            (out * &grad).sum(Kind::Float).backward();
            if l > 0 {
                grad = x.grad();
            }
        }
        if train {
            // Move the global stream on, away from the per-layer seeds.
            tch::manual_seed(base_seed + self.layers.len() as i64);
        }
        loss.detach()
    }

    /// `hidden: [.., hidden] -> [.., vocab]` through `lm_head`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<Tensor>(&self.lm_head, None)
    }
}

impl DecoderLayer {
    /// The layer's linear modules with their names relative to the layer (`self_attn.q_proj`…),
    /// in checkpoint order.
    pub fn linears(&self) -> [(&'static str, &Linear); 7] {
        [
            ("self_attn.q_proj", &self.self_attn.q_proj),
            ("self_attn.k_proj", &self.self_attn.k_proj),
            ("self_attn.v_proj", &self.self_attn.v_proj),
            ("self_attn.o_proj", &self.self_attn.o_proj),
            ("mlp.gate_proj", &self.mlp.gate_proj),
            ("mlp.up_proj", &self.mlp.up_proj),
            ("mlp.down_proj", &self.mlp.down_proj),
        ]
    }

    /// Mutable access to the linear modules, same names and order as [`DecoderLayer::linears`].
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        [
            ("self_attn.q_proj", &mut self.self_attn.q_proj),
            ("self_attn.k_proj", &mut self.self_attn.k_proj),
            ("self_attn.v_proj", &mut self.self_attn.v_proj),
            ("self_attn.o_proj", &mut self.self_attn.o_proj),
            ("mlp.gate_proj", &mut self.mlp.gate_proj),
            ("mlp.up_proj", &mut self.mlp.up_proj),
            ("mlp.down_proj", &mut self.mlp.down_proj),
        ]
    }
}

/// Mean next-token cross-entropy, as transformers computes it for causal LMs: position `i`
/// predicts `labels[i + 1]`; labels equal to `-100` (prompt, padding) are ignored.
/// `logits: [b, t, vocab]`, `labels: [b, t]` int64 -> scalar fp32.
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (_, t, v) = logits.size3().expect("logits are [b, t, vocab]");
    let pred = logits
        .narrow(1, 0, t - 1)
        .to_kind(Kind::Float)
        .reshape([-1, v]);
    let target = labels.narrow(1, 1, t - 1).reshape([-1]);
    pred.cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Mean, -100, 0.0)
}

/// The label value [`causal_lm_loss`] ignores.
pub const IGNORE_INDEX: i64 = -100;
