//! LoRA on Qwen3's linear layers: attach trainable low-rank adapters to a frozen base, then either
//! fold them into the base and save a merged Hugging Face checkpoint, or save the adapter alone in
//! PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`), and load such an adapter.
//!
//! The adapter computes what PEFT computes: `y = W x + (alpha / r) · B (A dropout(x))`, `A` drawn
//! uniformly in `±1/sqrt(in)` (PEFT's Kaiming default), `B` zero, so training starts at the base
//! model. Adapter weights are fp32 master weights (as PEFT keeps them); the forward casts them to
//! the activations' dtype, so a bf16 model computes the branch in bf16 and gradients still land in
//! fp32.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, Kind, Tensor};

use crate::hf::{self, HfError};
use crate::qwen3::Qwen3;

/// The modules LoRA targets by default: every linear layer of attention and MLP.
pub const DEFAULT_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

fn default_rank() -> i64 {
    64
}
fn default_alpha() -> f64 {
    128.0
}
fn default_dropout() -> f64 {
    0.05
}
fn default_targets() -> Vec<String> {
    DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()
}

/// LoRA hyper-parameters, as an experiment's `[lora]`-style table gives them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of the update (default 64, the study's).
    #[serde(default = "default_rank")]
    pub rank: i64,
    /// Scale numerator: the update is multiplied by `alpha / rank` (default 128 = 2·rank; the
    /// study does not name one).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input during training (default 0.05).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Linear modules to adapt, by PEFT name (`q_proj` … `down_proj`); the short forms
    /// `q, k, v, o, gate, up, down` are accepted too. Default: all seven.
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: default_dropout(),
            target_modules: default_targets(),
        }
    }
}

impl LoraConfig {
    /// The multiplier of the low-rank update.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Target modules in PEFT's names, checked against the seven linear layers of a Qwen3 layer.
    pub fn targets(&self) -> Result<Vec<&'static str>, LoraError> {
        let mut out = Vec::new();
        for t in &self.target_modules {
            let full = DEFAULT_TARGETS
                .iter()
                .find(|d| **d == t || d.strip_suffix("_proj") == Some(t.as_str()))
                .ok_or_else(|| LoraError::UnknownTarget(t.clone()))?;
            if !out.contains(full) {
                out.push(*full);
            }
        }
        Ok(out)
    }
}

/// What went wrong attaching, loading or saving an adapter.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A target module name that is no linear layer of Qwen3.
    #[error("unknown LoRA target module {0:?} (expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")]
    UnknownTarget(String),
    /// Rank below 1 or dropout outside [0, 1).
    #[error("invalid LoRA setting: {0}")]
    Invalid(String),
    /// The model already carries adapters.
    #[error("the model already has LoRA adapters attached")]
    AlreadyAttached,
    /// A PEFT adapter uses a feature this implementation does not compute.
    #[error("{path}: unsupported PEFT adapter: {what}")]
    UnsupportedAdapter {
        /// The adapter_config.json.
        path: String,
        /// What is unsupported.
        what: String,
    },
    /// A tensor of a PEFT adapter is missing, unexpected or mis-shaped.
    #[error("{path}: {what}")]
    AdapterTensors {
        /// The adapter_model.safetensors.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// Reading or writing files.
    #[error(transparent)]
    Hf(#[from] HfError),
}

/// The trainable low-rank update of one linear layer.
#[derive(Debug)]
pub struct LoraAdapter {
    /// `[r, in]`, fp32, requires grad.
    pub a: Tensor,
    /// `[out, r]`, fp32, requires grad.
    pub b: Tensor,
    /// `alpha / r`.
    pub scaling: f64,
    /// Input dropout probability in training mode.
    pub dropout: f64,
}

impl LoraAdapter {
    /// `x: [.., in] -> [.., out]`, the update added to the frozen layer's output.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let kind = x.kind();
        let x = if train && self.dropout > 0.0 {
            x.dropout(self.dropout, true)
        } else {
            x.shallow_clone()
        };
        x.linear::<Tensor>(&self.a.to_kind(kind), None)
            .linear::<Tensor>(&self.b.to_kind(kind), None)
            * self.scaling
    }

    /// `scaling · B A`, `[out, in]` in fp32: what merging adds to the base weight.
    pub fn delta(&self) -> Tensor {
        tch::no_grad(|| {
            self.b
                .to_kind(Kind::Float)
                .matmul(&self.a.to_kind(Kind::Float))
                * self.scaling
        })
    }
}

/// The adapters attached to a model: their settings and the variable store an optimizer trains
/// (`nn::AdamW::default().build(&lora.vs, lr)`). The store holds one flat fp32 variable `lora`;
/// every adapter's `A` and `B` are views of it.
pub struct Lora {
    /// Hyper-parameters the adapters were built with.
    pub config: LoraConfig,
    /// Holds every `lora_A`/`lora_B`, all trainable.
    pub vs: nn::VarStore,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lora")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Lora {
    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }
}

impl Qwen3 {
    /// Attaches fresh adapters (A uniform in ±1/sqrt(in), B zero) to the target modules of every
    /// layer. The base stays frozen; the returned [`Lora`] holds the trainable variables. Random
    /// draws come from tch's global generator (`tch::manual_seed`).
    pub fn attach_lora(&mut self, config: &LoraConfig) -> Result<Lora, LoraError> {
        self.attach(config, |_, _, _| None)
    }

    fn attach(
        &mut self,
        config: &LoraConfig,
        mut init: impl FnMut(&str, i64, i64) -> Option<(Tensor, Tensor)>,
    ) -> Result<Lora, LoraError> {
        if config.rank < 1 {
            return Err(LoraError::Invalid(format!("rank {} < 1", config.rank)));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(LoraError::Invalid(format!(
                "dropout {} outside [0, 1)",
                config.dropout
            )));
        }
        if self.has_lora() {
            return Err(LoraError::AlreadyAttached);
        }
        let targets = config.targets()?;
        let device = self.device();
        let r = config.rank;
        // Initial A and B of every adapted module, in layer order.
        let mut pieces: Vec<Tensor> = Vec::new();
        let mut shapes: Vec<(usize, &'static str, i64, i64)> = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            for (name, linear) in layer.linears() {
                let short = name.rsplit('.').next().unwrap_or(name);
                if !targets.contains(&short) {
                    continue;
                }
                let module = format!("model.layers.{l}.{name}");
                let (inp, out) = (linear.in_features(), linear.out_features());
                let (a, b) = match init(&module, inp, out) {
                    Some((a0, b0)) => (a0, b0),
                    None => {
                        let bound = 1.0 / (inp as f64).sqrt();
                        let a =
                            Tensor::empty([r, inp], (Kind::Float, device)).uniform_(-bound, bound);
                        (a, Tensor::zeros([out, r], (Kind::Float, device)))
                    }
                };
                pieces.push(a.to_device(device).to_kind(Kind::Float).reshape([-1]));
                pieces.push(b.to_device(device).to_kind(Kind::Float).reshape([-1]));
                shapes.push((l, name, inp, out));
            }
        }
        // All adapters live in one flat fp32 variable, A and B being views of it: the optimizer
        // then updates one tensor per step instead of two per module (hundreds of small kernel
        // launches for a 28-layer model), and gradients of the views accumulate into it.
        let vs = nn::VarStore::new(device);
        if pieces.is_empty() {
            return Err(LoraError::Invalid("no target modules".into()));
        }
        let flat = vs.root().var_copy("lora", &Tensor::cat(&pieces, 0));
        let mut offset = 0;
        let mut view = |shape: [i64; 2]| {
            let t = flat.narrow(0, offset, shape[0] * shape[1]).view(shape);
            offset += shape[0] * shape[1];
            t
        };
        for (l, name, inp, out) in shapes {
            let a = view([r, inp]);
            let b = view([out, r]);
            let layer = &mut self.layers[l];
            let (_, linear) = layer
                .linears_mut()
                .into_iter()
                .find(|(n, _)| *n == name)
                .expect("module found in the first pass");
            linear.lora = Some(LoraAdapter {
                a,
                b,
                scaling: config.scaling(),
                dropout: config.dropout,
            });
        }
        Ok(Lora {
            config: config.clone(),
            vs,
        })
    }

    /// Whether any layer carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.linears().iter().any(|(_, lin)| lin.lora.is_some()))
    }

    /// Folds every adapter into its base weight (`W += alpha/r · B A`, in fp32, stored back in the
    /// weight's dtype) and removes the adapters.
    pub fn merge_lora(&mut self) {
        for layer in &mut self.layers {
            for (_, linear) in layer.linears_mut() {
                if let Some(lora) = linear.lora.take() {
                    let merged = (linear.weight.to_kind(Kind::Float) + lora.delta())
                        .to_kind(linear.weight.kind());
                    linear.weight = merged.detach();
                }
            }
        }
    }

    /// The base weights with the adapters folded in, named as in the checkpoint, without changing
    /// the model (training can go on).
    pub fn merged_weights(&self) -> Vec<(String, Tensor)> {
        let mut adapted: BTreeMap<String, Tensor> = BTreeMap::new();
        for (l, layer) in self.layers.iter().enumerate() {
            for (name, linear) in layer.linears() {
                if let Some(lora) = &linear.lora {
                    let w = (linear.weight.to_kind(Kind::Float) + lora.delta())
                        .to_kind(linear.weight.kind());
                    adapted.insert(format!("model.layers.{l}.{name}.weight"), w);
                }
            }
        }
        self.named_weights()
            .into_iter()
            .map(|(name, t)| {
                let t = adapted.remove(&name).unwrap_or_else(|| t.shallow_clone());
                (name, t)
            })
            .collect()
    }

    /// Saves a merged checkpoint in Hugging Face layout to `out_dir`: `model.safetensors` (sharded
    /// with an index above 4 GiB) in the dtype the source checkpoint stored, `config.json`, and the
    /// source's tokenizer, chat template and generation files, so transformers and vLLM load it.
    pub fn save_merged(&self, out_dir: &Path) -> Result<(), LoraError> {
        let kind = self
            .checkpoint
            .as_ref()
            .map_or(self.kind(), |c| c.storage_kind);
        let tensors: Vec<(String, Tensor)> = tch::no_grad(|| {
            self.merged_weights()
                .into_iter()
                .map(|(n, t)| (n, t.to_kind(kind)))
                .collect()
        });
        hf::save_checkpoint(out_dir, &self.config, self.checkpoint.as_ref(), &tensors)?;
        Ok(())
    }

    /// Saves the adapters alone in PEFT's layout: `adapter_config.json` and
    /// `adapter_model.safetensors` with PEFT's tensor names
    /// (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), fp32.
    /// `base_model` is written as `base_model_name_or_path`.
    pub fn save_adapter(
        &self,
        lora: &Lora,
        out_dir: &Path,
        base_model: &str,
    ) -> Result<(), LoraError> {
        let mut tensors = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            for (name, linear) in layer.linears() {
                if let Some(ad) = &linear.lora {
                    let p = format!("base_model.model.model.layers.{l}.{name}");
                    tensors.push((
                        format!("{p}.lora_A.weight"),
                        ad.a.detach().to_kind(Kind::Float),
                    ));
                    tensors.push((
                        format!("{p}.lora_B.weight"),
                        ad.b.detach().to_kind(Kind::Float),
                    ));
                }
            }
        }
        let c = &lora.config;
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": c.rank,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": c.targets()?,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "use_rslora": false,
            "use_dora": false,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        std::fs::create_dir_all(out_dir).map_err(|e| HfError::io(out_dir, e))?;
        hf::write_json(&out_dir.join("adapter_config.json"), &config)?;
        hf::write_safetensors(&out_dir.join("adapter_model.safetensors"), &tensors)?;
        Ok(())
    }

    /// Attaches the adapter saved in PEFT's layout in `dir` (as [`Qwen3::save_adapter`] or PEFT's
    /// `save_pretrained` writes it). Features PEFT has but this computation lacks (DoRA, rsLoRA,
    /// per-module ranks, biases, regex targets) are refused.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<Lora, LoraError> {
        let cfg_path = dir.join("adapter_config.json");
        let cfg: serde_json::Value = hf::read_json(&cfg_path)?;
        let unsupported = |what: String| LoraError::UnsupportedAdapter {
            path: cfg_path.display().to_string(),
            what,
        };
        if cfg["peft_type"] != "LORA" {
            return Err(unsupported(format!(
                "peft_type {} (only LORA)",
                cfg["peft_type"]
            )));
        }
        for flag in [
            "use_dora",
            "use_rslora",
            "fan_in_fan_out",
            "lora_bias",
            "use_qalora",
        ] {
            if cfg[flag] == true {
                return Err(unsupported(format!("{flag} = true")));
            }
        }
        // Options that change which modules are adapted or add trained tensors beyond A and B.
        for option in [
            "layers_to_transform",
            "modules_to_save",
            "layer_replication",
            "target_parameters",
            "trainable_token_indices",
            "exclude_modules",
        ] {
            let v = &cfg[option];
            let unset = v.is_null()
                || v.as_array().is_some_and(|a| a.is_empty())
                || v.as_object().is_some_and(|o| o.is_empty());
            if !unset {
                return Err(unsupported(format!("{option} = {v}")));
            }
        }
        for pattern in ["rank_pattern", "alpha_pattern"] {
            if cfg[pattern].as_object().is_some_and(|o| !o.is_empty()) {
                return Err(unsupported(format!("non-empty {pattern}")));
            }
        }
        if !(cfg["bias"].is_null() || cfg["bias"] == "none") {
            return Err(unsupported(format!("bias {}", cfg["bias"])));
        }
        let targets = cfg["target_modules"]
            .as_array()
            .ok_or_else(|| unsupported("target_modules is not a list of module names".into()))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| unsupported("target_modules entry is not a string".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rank = cfg["r"]
            .as_i64()
            .ok_or_else(|| unsupported("r is not an integer".into()))?;
        let config = LoraConfig {
            rank,
            alpha: cfg["lora_alpha"]
                .as_f64()
                .ok_or_else(|| unsupported("lora_alpha is not a number".into()))?,
            dropout: cfg["lora_dropout"].as_f64().unwrap_or(0.0),
            target_modules: targets,
        };
        let weights_path = dir.join("adapter_model.safetensors");
        let mut tensors: BTreeMap<String, Tensor> =
            hf::read_safetensors(&weights_path)?.into_iter().collect();
        let bad = |what: String| LoraError::AdapterTensors {
            path: weights_path.display().to_string(),
            what,
        };
        let mut problem: Option<String> = None;
        let lora = self.attach(&config, |module, inp, out| {
            let a = tensors.remove(&format!("base_model.model.{module}.lora_A.weight"));
            let b = tensors.remove(&format!("base_model.model.{module}.lora_B.weight"));
            match (a, b) {
                (Some(a), Some(b)) if a.size() == [rank, inp] && b.size() == [out, rank] => Some((a, b)),
                (Some(a), Some(b)) => {
                    problem.get_or_insert(format!(
                        "{module}: lora_A {:?} / lora_B {:?}, expected [{rank}, {inp}] / [{out}, {rank}]",
                        a.size(),
                        b.size()
                    ));
                    None
                }
                _ => {
                    problem.get_or_insert(format!("{module}: lora_A or lora_B missing"));
                    None
                }
            }
        })?;
        let problem = problem.or_else(|| {
            (!tensors.is_empty())
                .then(|| format!("tensors not used: {:?}", tensors.keys().collect::<Vec<_>>()))
        });
        if let Some(p) = problem {
            // Leave the model as it was found.
            for layer in &mut self.layers {
                for (_, linear) in layer.linears_mut() {
                    linear.lora = None;
                }
            }
            return Err(bad(p));
        }
        Ok(lora)
    }
}
