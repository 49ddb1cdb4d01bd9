//! The worker job contract: the parameters of the three student steps (`tokenizer`, `train`,
//! `predict`), the job file the orchestrator writes for the `tracelab-student` worker, and the
//! line protocol of a long-lived `serve` worker (`tracelab serve`). Both
//! processes read these types, so a parameter means the same on either side of the process
//! boundary; the orchestrator's steps check and hash them, the worker acts on them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A parameter error found before anything runs: `path` is the dotted key inside the step's
/// table (empty for the table itself), so the config layer can point at file, line and column.
#[derive(Debug, Clone)]
pub struct ParamError {
    /// Dotted path inside the step's parameter table.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Validates `params` against `P` and returns its canonical form: every field present (defaults
/// filled in), so an explicit default and an omitted key hash the same.
pub fn canonicalize<P: DeserializeOwned + Serialize>(params: &Value) -> Result<Value, ParamError> {
    let typed: P = serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        ParamError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    serde_json::to_value(&typed).map_err(|e| ParamError {
        path: String::new(),
        message: e.to_string(),
    })
}

/// Where a student runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when the worker sees a GPU, else CPU.
    #[default]
    Auto,
    /// CPU.
    Cpu,
    /// The first CUDA device.
    Cuda,
}

/// What a `family = "qwen3"` training writes as its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SaveMode {
    /// The adapters folded into the base: a complete Hugging Face checkpoint (`config.json`,
    /// `model.safetensors`, tokenizer files) that transformers and vLLM load as is.
    #[default]
    Merged,
    /// The adapters alone in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`),
    /// naming the base checkpoint, plus the tokenizer files.
    Adapter,
}

/// LoRA hyper-parameters of a `family = "qwen3"` student (`[train.lora]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraParams {
    /// Rank of the low-rank update (the study's 64).
    pub rank: i64,
    /// The update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Linear layers that get an adapter: `q`, `k`, `v`, `o`, `gate`, `up`, `down` (or PEFT's
    /// `q_proj` … `down_proj`).
    pub target_modules: Vec<String>,
}

/// The linear layers of a Qwen3 decoder layer, by their short names.
pub const LORA_TARGETS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

impl Default for LoraParams {
    fn default() -> Self {
        LoraParams {
            rank: 64,
            alpha: 128.0,
            dropout: 0.05,
            target_modules: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Model families the worker implements.
pub const FAMILIES: [&str; 2] = ["tiny", "qwen3"];

/// Parameters of the `train` step (`[train]` in the experiment). Defaults are measured on the
/// 2-core machine: see `crates/student/MEASUREMENTS.md`. A `family = "qwen3"` table starts from
/// [`qwen3_defaults`] for the keys it leaves out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    /// Model family the worker builds: `tiny` (the from-scratch transformer) or `qwen3` (LoRA on
    /// the Hugging Face checkpoint in `model_dir`).
    pub family: String,
    /// The Hugging Face checkpoint directory a `qwen3` student starts from, relative to the
    /// project root (`config.json`, safetensors weights, `tokenizer.json`,
    /// `tokenizer_config.json` with the chat template). Its files are part of the cache key.
    pub model_dir: Option<String>,
    /// LoRA settings (`qwen3`).
    pub lora: LoraParams,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations
    /// (`qwen3`): less memory for about one more forward pass.
    pub gradient_checkpointing: bool,
    /// `merged` or `adapter` (`qwen3`).
    pub save: SaveMode,
    /// Device.
    pub device: DeviceChoice,
    /// Transformer blocks.
    pub layers: i64,
    /// Model width.
    pub width: i64,
    /// Attention heads.
    pub heads: i64,
    /// SwiGLU hidden width; 0 means 8/3 of the width (rounded to 16).
    pub ffn: i64,
    /// Context length in tokens (longer conversations are cut from the left at turn boundaries).
    pub context: i64,
    /// Dropout while training.
    pub dropout: f64,
    /// Width of the copy (pointer) head; 0 disables it.
    pub copy_dim: i64,
    /// Passes over the training windows.
    pub epochs: f64,
    /// Tokens per micro-batch (padding included).
    pub batch_tokens: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Gradient norm clip.
    pub grad_clip: f64,
    /// Tool results keep at most this many records when rendered.
    pub max_records: usize,
    /// CPU threads of the worker. One by default: measured here, one thread trains as fast as
    /// two (6.9k tokens/s either way), so two trainings side by side double the throughput.
    pub threads: usize,
    /// Seed (weights, dropout, batch order).
    pub seed: u64,
    /// Where the weights start (`tiny`): `none` (random, today's default) or `pretrained` (the
    /// weights of the cell's `pretrain` step, which must come before `train` in the pipeline
    /// and whose tokenizer the cell then uses). Left out of the canonical form when `none`, so
    /// that cache keys from before the choice existed stay valid.
    #[serde(skip_serializing_if = "Base::is_none")]
    pub base: Base,
}

/// Where a tiny student's weights start (`[train] base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    /// Random initialization (the from-scratch student).
    #[default]
    None,
    /// The `pretrain` step's model.
    Pretrained,
}

impl Base {
    /// Whether this is the from-scratch default.
    pub fn is_none(&self) -> bool {
        *self == Base::None
    }
}

/// Parameters of the `pretrain` step (`[pretrain]`): a tokenizer and a tiny model trained once
/// on a corpus that shares nothing with the experiment, which `[train] base = "pretrained"`
/// fine-tunes in every cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainParams {
    /// The corpus.
    pub corpus: CorpusParams,
    /// The tokenizer trained on the corpus (by default the experiment's `[tokenizer]`).
    pub tokenizer: TokenizerParams,
    /// Architecture and optimizer (by default the experiment's `[train]`, so the cells'
    /// students have the base's shape; `[pretrain.train]` overrides, e.g. `epochs`).
    pub train: TrainParams,
}

impl Default for PretrainParams {
    fn default() -> Self {
        PretrainParams {
            corpus: CorpusParams::default(),
            tokenizer: TokenizerParams::default(),
            train: TrainParams {
                seed: 0,
                ..TrainParams::default()
            },
        }
    }
}

/// Which dialogues pretraining reads (`[pretrain.corpus]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorpusParams {
    /// `sgd`: every single-service dialogue of SGD's services not excluded.
    pub format: String,
    /// The SGD directory (by default the experiment's `data.path`).
    pub path: String,
    /// SGD splits to read.
    pub splits: Vec<String>,
    /// Services left out: by default every service the experiment reads (target, sister and
    /// foreign pools), plus any named here.
    pub exclude: Vec<String>,
    /// At most this many conversations per service (0: all), taken in file order.
    pub per_service: usize,
}

impl Default for CorpusParams {
    fn default() -> Self {
        CorpusParams {
            format: "sgd".into(),
            path: String::new(),
            splits: vec!["train".into()],
            exclude: Vec::new(),
            per_service: 0,
        }
    }
}

/// Thresholds of the value rules the tiny student's decoding learns from the cell's training
/// conversations (`[predict.rules]`): learned by `predict` (and `serve`), not `train`, so a
/// change to them, or to how they are learned, reruns no training. Each is explained where it
/// is applied, in the student's `train` module; `crates/student/MEASUREMENTS.md` says on what
/// split each default was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleParams {
    /// Share of calls repeating a value labelled with the argument's key for it to be keyed.
    pub keyed_rate: f64,
    /// Share of calls whose value is a copy of the conversation for a span argument.
    pub span_rate: f64,
    /// Most distinct values per call for a categorical argument.
    pub vocab_rate: f64,
    /// Fewest calls in which a word must have asked for a value it does not say (aliases).
    pub alias_min_calls: usize,
    /// Share of the calls with the word that must have had that value (aliases).
    pub alias_share: f64,
    /// How much more frequent a word must be before calls passing an optional argument than
    /// before the others to be evidence for it.
    pub evidence_lift: f64,
    /// Share of the calls passing an optional argument that must hold evidence for decoding to
    /// require some.
    pub evidence_coverage: f64,
    /// How much more often a word must come before one span argument's values than before
    /// each other span argument's of the function to be its cue ("from" for an origin, "to"
    /// for a destination); 0 learns no cues. Left out of the canonical form when 0, so that
    /// cache keys from before the rule existed stay valid.
    #[serde(skip_serializing_if = "is_zero")]
    pub cue_lift: f64,
    /// Largest share of a span argument's training values (not digits-shaped) with a word in lower
    /// case for it to be *cased* (a name, a city: its value takes no word in lower case, so a
    /// copy does not run on into "city is", "and I would like"); 0 (the default: no gain on
    /// the dev splits, crates/student/MEASUREMENTS.md) learns none. Left out of the canonical
    /// form when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub cased_rate: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl Default for RuleParams {
    fn default() -> Self {
        RuleParams {
            keyed_rate: 0.9,
            span_rate: 0.5,
            vocab_rate: 0.25,
            alias_min_calls: 3,
            alias_share: 0.75,
            evidence_lift: 5.0,
            evidence_coverage: 0.9,
            cue_lift: 0.0,
            cased_rate: 0.0,
        }
    }
}

impl RuleParams {
    /// Rates and shares in [0, 1], a positive lift.
    pub fn check(&self) -> Result<(), ParamError> {
        for (key, v) in [
            ("keyed_rate", self.keyed_rate),
            ("span_rate", self.span_rate),
            ("vocab_rate", self.vocab_rate),
            ("alias_share", self.alias_share),
            ("evidence_coverage", self.evidence_coverage),
            ("cased_rate", self.cased_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(ParamError {
                    path: format!("rules.{key}"),
                    message: format!("must be in [0, 1], got {v}"),
                });
            }
        }
        if !self.cue_lift.is_finite() || self.cue_lift < 0.0 {
            return Err(ParamError {
                path: "rules.cue_lift".into(),
                message: format!("must be 0 (off) or positive, got {}", self.cue_lift),
            });
        }
        if self.evidence_lift.is_nan() || self.evidence_lift <= 0.0 {
            return Err(ParamError {
                path: "rules.evidence_lift".into(),
                message: format!("must be positive, got {}", self.evidence_lift),
            });
        }
        Ok(())
    }
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            family: "tiny".into(),
            device: DeviceChoice::Auto,
            layers: 2,
            width: 128,
            heads: 4,
            ffn: 0,
            context: 384,
            dropout: 0.1,
            copy_dim: 64,
            epochs: 8.0,
            batch_tokens: 4096,
            grad_accum: 1,
            lr: 3e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 30,
            weight_decay: 0.1,
            grad_clip: 1.0,
            max_records: 2,
            threads: 1,
            seed: 0,
            model_dir: None,
            lora: LoraParams::default(),
            gradient_checkpointing: false,
            save: SaveMode::Merged,
            base: Base::None,
        }
    }
}

/// Defaults of a `family = "qwen3"` table where they differ from the tiny student's: the study's
/// learning rate (5e-5) and epochs (4), a context long enough for the tool list the chat template
/// puts in the system prompt, and no weight decay on the adapters (PEFT's usual setting).
pub fn qwen3_defaults() -> [(&'static str, Value); 5] {
    [
        ("lr", Value::from(5e-5)),
        ("epochs", Value::from(4.0)),
        ("context", Value::from(2048)),
        ("batch_tokens", Value::from(8192)),
        ("weight_decay", Value::from(0.0)),
    ]
}

impl TrainParams {
    /// The canonical form of a `[train]` table: a `qwen3` family's defaults
    /// ([`qwen3_defaults`]) filled in for the keys it leaves out, every field present, checked
    /// ([`TrainParams::check`]).
    pub fn canonical(params: &Value) -> Result<Value, ParamError> {
        let mut raw = params.clone();
        if let Some(table) = raw.as_object_mut() {
            if table.contains_key("rules") {
                return Err(ParamError {
                    path: "rules".into(),
                    message: "the value rules' thresholds are [predict.rules]: predict learns \
                              the rules from the training conversations, so changing one reruns \
                              no training"
                        .into(),
                });
            }
            if table.get("family").and_then(Value::as_str) == Some("qwen3") {
                for (key, value) in qwen3_defaults() {
                    table.entry(key).or_insert(value);
                }
            }
        }
        let canonical = canonicalize::<TrainParams>(&raw)?;
        let typed: TrainParams =
            serde_json::from_value(canonical.clone()).map_err(|e| ParamError {
                path: String::new(),
                message: e.to_string(),
            })?;
        typed.check()?;
        Ok(canonical)
    }

    /// Checks what the types cannot: the family is known, `qwen3` has a `model_dir`, settings of
    /// one family are not set (to something other than their default) for the other, LoRA
    /// settings are in range. Errors name the key.
    pub fn check(&self) -> Result<(), ParamError> {
        let err = |path: &str, message: String| ParamError {
            path: path.to_string(),
            message,
        };
        let d = TrainParams::default();
        match self.family.as_str() {
            "tiny" => {
                let qwen3_only = [
                    ("model_dir", self.model_dir != d.model_dir),
                    ("lora", self.lora != d.lora),
                    (
                        "gradient_checkpointing",
                        self.gradient_checkpointing != d.gradient_checkpointing,
                    ),
                    ("save", self.save != d.save),
                ];
                if let Some((key, _)) = qwen3_only.iter().find(|(_, set)| *set) {
                    return Err(err(
                        key,
                        format!("`{key}` applies to family = \"qwen3\" only (family is \"tiny\")"),
                    ));
                }
                self.check_tiny_shape()?;
            }
            "qwen3" => {
                if self.model_dir.as_deref().is_none_or(str::is_empty) {
                    return Err(err(
                        "model_dir",
                        "family = \"qwen3\" needs model_dir: a Hugging Face checkpoint directory \
                         (config.json, model.safetensors, tokenizer.json, tokenizer_config.json), \
                         relative to the project root"
                            .into(),
                    ));
                }
                // The architecture comes from the checkpoint: tiny-only settings would be ignored.
                let tiny_only = [
                    ("layers", self.layers != d.layers),
                    ("width", self.width != d.width),
                    ("heads", self.heads != d.heads),
                    ("ffn", self.ffn != d.ffn),
                    ("dropout", self.dropout != d.dropout),
                    ("copy_dim", self.copy_dim != d.copy_dim),
                    ("max_records", self.max_records != d.max_records),
                ];
                if let Some((key, _)) = tiny_only.iter().find(|(_, set)| *set) {
                    return Err(err(
                        key,
                        format!(
                            "`{key}` applies to family = \"tiny\" only (a qwen3 student takes its \
                             architecture from model_dir; LoRA dropout is lora.dropout)"
                        ),
                    ));
                }
                let l = &self.lora;
                if l.rank < 1 {
                    return Err(err(
                        "lora.rank",
                        format!("must be at least 1, got {}", l.rank),
                    ));
                }
                if l.alpha.is_nan() || l.alpha <= 0.0 {
                    return Err(err(
                        "lora.alpha",
                        format!("must be positive, got {}", l.alpha),
                    ));
                }
                if !(0.0..1.0).contains(&l.dropout) {
                    return Err(err(
                        "lora.dropout",
                        format!("must be in [0, 1), got {}", l.dropout),
                    ));
                }
                if l.target_modules.is_empty() {
                    return Err(err(
                        "lora.target_modules",
                        "at least one module is needed".into(),
                    ));
                }
                for (i, t) in l.target_modules.iter().enumerate() {
                    let short = t.strip_suffix("_proj").unwrap_or(t);
                    if !LORA_TARGETS.contains(&short) {
                        return Err(err(
                            &format!("lora.target_modules[{i}]"),
                            format!(
                                "unknown module {t:?}; expected {} (or their _proj names)",
                                LORA_TARGETS.join(", ")
                            ),
                        ));
                    }
                }
            }
            other => {
                return Err(err(
                    "family",
                    format!(
                        "unknown model family {other:?}; known: {}",
                        FAMILIES.join(", ")
                    ),
                ))
            }
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(err("lr", format!("must be positive, got {}", self.lr)));
        }
        if self.epochs.is_nan() || self.epochs <= 0.0 {
            return Err(err(
                "epochs",
                format!("must be positive, got {}", self.epochs),
            ));
        }
        Ok(())
    }

    /// Checks the tiny student's architecture as the worker will build it, so a shape it cannot
    /// build fails when the experiment is loaded, not inside the worker after upstream work.
    fn check_tiny_shape(&self) -> Result<(), ParamError> {
        let err = |path: &str, message: String| ParamError {
            path: path.to_string(),
            message,
        };
        for (key, value) in [
            ("layers", self.layers),
            ("width", self.width),
            ("heads", self.heads),
            ("context", self.context),
        ] {
            if value < 1 {
                return Err(err(key, format!("must be at least 1, got {value}")));
            }
        }
        for (key, value) in [("ffn", self.ffn), ("copy_dim", self.copy_dim)] {
            if value < 0 {
                return Err(err(key, format!("must be 0 or more, got {value}")));
            }
        }
        // Each head gets width / heads dimensions, and rotary positions rotate them in pairs.
        if self.width % self.heads != 0 || (self.width / self.heads) % 2 != 0 {
            return Err(err(
                "heads",
                format!(
                    "width {} must split into {} heads of an even size (width a multiple of \
                     2 × heads)",
                    self.width, self.heads
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(err(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        Ok(())
    }
}

/// The file a tiny student's `predict` job writes beside its predictions: the value rules it
/// learned and decoded with, which `tracelab serve --cell` and `tracelab pack` read.
pub const RULES_FILE: &str = "rules.json";

/// What the orchestrator hands the worker: one JSON file, path given as the only argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerJob {
    /// `tokenizer`, `train` or `predict`.
    pub task: String,
    /// The step's canonical parameters.
    pub params: Value,
    /// Input files by name: `traces`, `tools`, `tokenizer`, `model`, `pairs`, `user_tokenizer`.
    pub inputs: BTreeMap<String, PathBuf>,
    /// Where to write the product (a file, or the `model/` directory).
    pub output: PathBuf,
    /// CPU threads to use.
    pub threads: usize,
}

/// Parameters of the `predict` step (`[predict]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictParams {
    /// Device.
    pub device: DeviceChoice,
    /// Pairs decoded together (sorted by prompt length to limit padding).
    pub batch_size: usize,
    /// Most tokens of one free-text argument value.
    pub max_value_tokens: usize,
    /// Most tokens of a whole call; the prompt keeps this much room in the context.
    pub max_new_tokens: usize,
    /// Span decoding's bonuses (the tiny student).
    pub decoding: DecodeParams,
    /// Thresholds of the value rules decoding learns from the training conversations (the
    /// tiny student).
    pub rules: RuleParams,
    /// Feed the tokens the schema constraints force (the rest of a function's name or key,
    /// `<|val|>` after a key) in one forward pass with the token before them (the tiny
    /// student). The same calls come out either way, greedy or sampled; `false` only measures
    /// what it saves.
    pub forced_runs: bool,
}

/// Log-probability bonuses of the tiny student's span decoding (`[predict.decoding]`). Each is
/// explained where it is applied, in the student's `grammar` module;
/// `crates/student/MEASUREMENTS.md` says on what split each default was chosen. Decoding only:
/// changing one re-runs `predict`, not `train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeParams {
    /// For ending a span value where it is a whole copyable unit.
    pub whole_bonus: f32,
    /// For continuing a value the prompt labels with the argument's own key.
    pub label_bonus: f32,
    /// For a categorical argument's learned value that the user said.
    pub said_bonus: f32,
    /// How much likelier the best free-text token must be than the best span start for a span
    /// argument to be written freely.
    pub free_margin: f32,
    /// Replies state only numbers, names and words their prompt or the training replies hold
    /// (the tiny student's `ground` module).
    pub ground_replies: bool,
    /// A function with a required digits-shaped span argument (a date, a time) is not called
    /// where the prompt has no digits to copy it from (the tiny student's `grammar`).
    pub feasible_calls: bool,
}

impl Default for DecodeParams {
    fn default() -> Self {
        DecodeParams {
            whole_bonus: 3.0,
            label_bonus: 2.0,
            said_bonus: 5.0,
            free_margin: 2.0,
            ground_replies: true,
            feasible_calls: true,
        }
    }
}

impl Default for PredictParams {
    fn default() -> Self {
        PredictParams {
            device: DeviceChoice::Auto,
            batch_size: 32,
            max_value_tokens: 40,
            max_new_tokens: 64,
            decoding: DecodeParams::default(),
            rules: RuleParams::default(),
            forced_runs: true,
        }
    }
}

/// Parameters of the `tokenizer` step (`[tokenizer]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerParams {
    /// Vocabulary size of the trained BPE, special tokens included.
    pub vocab_size: usize,
    /// A pair must occur this often to be merged.
    pub min_frequency: u64,
    /// A user's `tokenizer.json` (relative to the project root) instead of training one; the
    /// template's special tokens are added to it.
    pub path: Option<String>,
    /// A Hugging Face checkpoint directory (relative to the project root) whose `tokenizer.json`
    /// is taken byte for byte, nothing added: the tokenizer of a `[train] family = "qwen3"`
    /// student, which must name the same directory as its `model_dir`.
    pub model_dir: Option<String>,
}

impl Default for TokenizerParams {
    fn default() -> Self {
        TokenizerParams {
            vocab_size: 2048,
            min_frequency: 2,
            path: None,
            model_dir: None,
        }
    }
}

/// One line the server writes to a `serve` worker's stdin: queries to answer together (the
/// worker loads its model once, then answers lines until stdin closes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeBatch {
    /// The queries, decoded as one batch.
    pub batch: Vec<ServeQuery>,
}

/// One conversation prefix to answer with one call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeQuery {
    /// The server's id for it, echoed in the answer.
    pub id: u64,
    /// OpenAI chat messages (read leniently, as training files are).
    pub messages: Value,
    /// The functions the call may name (a subset of the model's).
    pub functions: Vec<String>,
    /// How to choose among the allowed tokens; absent, greedily (as the predict step does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

/// Sampling at a temperature instead of greedy decoding (a request's `temperature` > 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Divides the log-probabilities before the softmax (> 0).
    pub temperature: f32,
    /// Nucleus: sample among the most likely allowed tokens whose probabilities add up to this
    /// share (in (0, 1]; 1 keeps every allowed token).
    pub top_p: f32,
    /// Seeds the query's own generator, so a query with a seed decodes the same way again
    /// whatever it is batched with.
    pub seed: u64,
}

/// The parameters of a `serve` job: how its student decodes, and what serving adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeParams {
    /// The decoding settings of the predict step whose student is served.
    pub predict: PredictParams,
    /// Prompts whose attention caches a worker keeps, so that a prompt beginning as a kept one
    /// does (a conversation's next turn, the same tool header) feeds only what follows; 0
    /// reuses nothing (`tracelab serve --prefix-cache`, which sets the default). The tiny
    /// family only.
    pub prefix_cache: usize,
}

/// One line a `serve` worker writes back per batch (after `{"ready": …}` once at start).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeAnswers {
    /// One per query, in any order.
    pub answers: Vec<ServeAnswer>,
}

/// The call for one query, or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeAnswer {
    /// The query's id.
    pub id: u64,
    /// `{"name", "arguments"}`, absent when `error` says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Value>,
    /// Why the query could not be answered (its messages do not parse…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tokens of the prompt the model saw.
    pub prompt_tokens: usize,
    /// Of those, the tokens whose cache an earlier prompt's served (none were fed again).
    #[serde(default)]
    pub cached_tokens: usize,
    /// Tokens the model generated.
    pub completion_tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(toml_like: Value) -> PredictParams {
        serde_json::from_value(toml_like).expect("parses")
    }

    #[test]
    fn rule_thresholds_are_checked_and_belong_to_predict() {
        let ok = parsed(serde_json::json!({"rules": {"evidence_lift": 3.0}}));
        assert_eq!(ok.rules.evidence_lift, 3.0);
        assert_eq!(ok.rules.keyed_rate, RuleParams::default().keyed_rate);
        ok.rules.check().expect("valid thresholds");

        let e = parsed(serde_json::json!({"rules": {"span_rate": 1.5}}))
            .rules
            .check()
            .unwrap_err();
        assert_eq!(e.path, "rules.span_rate");
        assert!(e.message.contains("[0, 1]"), "{}", e.message);
        let e = parsed(serde_json::json!({"rules": {"evidence_lift": 0.0}}))
            .rules
            .check()
            .unwrap_err();
        assert_eq!(e.path, "rules.evidence_lift");
        assert!(
            serde_json::from_value::<PredictParams>(serde_json::json!({"rules": {"bonus": 1}}))
                .is_err(),
            "unknown rule keys are refused"
        );
        let e =
            TrainParams::canonical(&serde_json::json!({"rules": {"span_rate": 0.4}})).unwrap_err();
        assert_eq!(e.path, "rules");
        assert!(e.message.contains("[predict.rules]"), "{}", e.message);
    }

    #[test]
    fn decoding_bonuses_default_and_parse() {
        let p: PredictParams =
            serde_json::from_value(serde_json::json!({"decoding": {"said_bonus": 8.0}})).unwrap();
        assert_eq!(p.decoding.said_bonus, 8.0);
        assert_eq!(p.decoding.whole_bonus, DecodeParams::default().whole_bonus);
    }
}
