//! Hugging Face model directories: finding and reading `config.json`, the weights
//! (`model.safetensors`, or shards listed in `model.safetensors.index.json`) and the tokenizer
//! files, and writing a checkpoint back in the same layout (safetensors with `{"format": "pt"}`
//! metadata, which transformers requires).
//!
//! Weights load in bf16 on a GPU and fp32 on the CPU by default ([`default_kind`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::qwen3::{Config, Qwen3, WeightsError};

/// Files copied next to a saved checkpoint when the source directory has them: tokenizer, chat
/// template and generation settings.
pub const COMPANION_FILES: [&str; 8] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
];

/// Size above which a saved checkpoint is split into shards with an index.
pub const MAX_SHARD_BYTES: usize = 4 << 30;

/// What went wrong reading or writing a model directory.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// A file the directory must have is absent.
    #[error("{dir}: missing {what}")]
    MissingFile {
        /// The model directory.
        dir: PathBuf,
        /// Which file(s).
        what: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file does not parse or lacks required fields.
    #[error("{path}:{line}:{column}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Line of the error (1-based).
        line: usize,
        /// Column of the error (1-based).
        column: usize,
        /// What serde_json said.
        message: String,
    },
    /// The checkpoint is of an architecture, or uses a feature, this implementation lacks.
    #[error("{path}: unsupported {what}")]
    Unsupported {
        /// The config.json.
        path: PathBuf,
        /// What is unsupported.
        what: String,
    },
    /// A safetensors file could not be read or written.
    #[error("{path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The weights do not fit the config.
    #[error("{dir}: {source}")]
    Weights {
        /// The model directory.
        dir: PathBuf,
        /// Which tensor and why.
        source: WeightsError,
    },
    /// tokenizer.json could not be loaded.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The tokenizer.json.
        path: PathBuf,
        /// What the tokenizers crate said.
        message: String,
    },
}

impl HfError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        HfError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a loaded model came from: used to save merged weights in the same dtype and to copy the
/// tokenizer and config files.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The model directory.
    pub dir: PathBuf,
    /// Dtype the weights were stored in (bf16 for released Qwen3 checkpoints).
    pub storage_kind: Kind,
}

/// bf16 on a GPU, fp32 on the CPU.
pub fn default_kind(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// A Hugging Face model directory whose config and weight files have been found and checked.
#[derive(Debug, Clone)]
pub struct HfModelDir {
    /// The directory.
    pub dir: PathBuf,
    /// Its parsed `config.json`, known to be a supported Qwen3.
    pub config: Config,
    /// The safetensors files holding the weights, in shard order.
    pub weight_files: Vec<PathBuf>,
}

impl HfModelDir {
    /// Finds `config.json` and the weights (`model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`) and checks the architecture.
    pub fn open(dir: &Path) -> Result<Self, HfError> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(HfError::MissingFile {
                dir: dir.to_path_buf(),
                what: "config.json".into(),
            });
        }
        let config: Config = read_json(&config_path)?;
        if let Some(what) = config.unsupported() {
            return Err(HfError::Unsupported {
                path: config_path,
                what,
            });
        }
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let weight_files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let idx: Value = read_json(&index)?;
            let map = idx["weight_map"].as_object().ok_or_else(|| HfError::Json {
                path: index.clone(),
                line: 1,
                column: 1,
                message: "no \"weight_map\" object".into(),
            })?;
            let mut files: Vec<PathBuf> = Vec::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| HfError::Json {
                    path: index.clone(),
                    line: 1,
                    column: 1,
                    message: format!("weight_map[{name:?}] is not a file name"),
                })?;
                let path = dir.join(file);
                if !files.contains(&path) {
                    if !path.is_file() {
                        return Err(HfError::MissingFile {
                            dir: dir.to_path_buf(),
                            what: format!("shard {file} (listed in model.safetensors.index.json)"),
                        });
                    }
                    files.push(path);
                }
            }
            files.sort();
            files
        } else {
            return Err(HfError::MissingFile {
                dir: dir.to_path_buf(),
                what: "model.safetensors or model.safetensors.index.json (only safetensors weights are read)"
                    .into(),
            });
        };
        Ok(HfModelDir {
            dir: dir.to_path_buf(),
            config,
            weight_files,
        })
    }

    /// Reads every weight file into CPU tensors, by checkpoint name.
    pub fn read_weights(&self) -> Result<BTreeMap<String, Tensor>, HfError> {
        let mut out = BTreeMap::new();
        for file in &self.weight_files {
            for (name, t) in read_safetensors(file)? {
                out.insert(name, t);
            }
        }
        Ok(out)
    }

    /// Builds the model on `device` in `kind` (see [`default_kind`]).
    pub fn load(&self, device: Device, kind: Kind) -> Result<Qwen3, HfError> {
        let mut weights = self.read_weights()?;
        let storage_kind = weights
            .values()
            .map(Tensor::kind)
            .find(|k| matches!(k, Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double))
            .unwrap_or(kind);
        let mut model = Qwen3::from_weights(self.config.clone(), &mut weights, device, kind)
            .map_err(|source| HfError::Weights {
                dir: self.dir.clone(),
                source,
            })?;
        model.checkpoint = Some(CheckpointInfo {
            dir: self.dir.clone(),
            storage_kind,
        });
        Ok(model)
    }

    /// The tokenizer from `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer, HfError> {
        load_tokenizer(&self.dir)
    }
}

impl Qwen3 {
    /// Loads a Hugging Face Qwen3 directory onto `device` in `kind` (bf16 on GPU / fp32 on CPU
    /// via [`default_kind`]).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Qwen3, HfError> {
        HfModelDir::open(dir)?.load(device, kind)
    }
}

/// Loads `dir/tokenizer.json`.
pub fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer, HfError> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(HfError::MissingFile {
            dir: dir.to_path_buf(),
            what: "tokenizer.json".into(),
        });
    }
    tokenizers::Tokenizer::from_file(&path).map_err(|e| HfError::Tokenizer {
        path,
        message: e.to_string(),
    })
}

/// Reads and parses a JSON file, with line and column in errors.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, HfError> {
    let text = std::fs::read_to_string(path).map_err(|e| HfError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| HfError::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Writes pretty JSON.
pub fn write_json(path: &Path, value: &Value) -> Result<(), HfError> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text + "\n").map_err(|e| HfError::io(path, e))
}

/// Reads a safetensors file into CPU tensors.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, HfError> {
    if !path.is_file() {
        return Err(HfError::MissingFile {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            what: path
                .file_name()
                .map_or("?".into(), |f| f.to_string_lossy().into_owned()),
        });
    }
    Tensor::read_safetensors(path).map_err(|e| HfError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The safetensors dtype name of a tch kind.
fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

/// Writes tensors as one safetensors file with `{"format": "pt"}` metadata (tch's own writer
/// omits the metadata, and transformers refuses files without it).
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), HfError> {
    let err = |message: String| HfError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = dtype_name(t.kind()).ok_or_else(|| {
            err(format!(
                "{name}: dtype {:?} has no safetensors name",
                t.kind()
            ))
        })?;
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
        cpu.push(t);
    }
    let mut head = serde_json::to_string(&Value::Object(header)).expect("JSON values serialize");
    // Pad the header to 8 bytes so the data is aligned, as the reference writer does.
    let pad = (8 - head.len() % 8) % 8;
    head.push_str(&" ".repeat(pad));
    let file = std::fs::File::create(path).map_err(|e| HfError::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e| HfError::io(path, e);
    w.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(head.as_bytes()).map_err(io)?;
    for t in &cpu {
        let numel = t.numel();
        let mut buf = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut buf, numel)
            .map_err(|e| err(e.to_string()))?;
        w.write_all(&buf).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Writes a checkpoint directory in Hugging Face layout: the weights (one `model.safetensors`, or
/// shards with `model.safetensors.index.json` above [`MAX_SHARD_BYTES`]), `config.json` (the
/// source's file verbatim when there is one, else `config` serialized) and the source's
/// [`COMPANION_FILES`].
pub fn save_checkpoint(
    out_dir: &Path,
    config: &Config,
    source: Option<&CheckpointInfo>,
    tensors: &[(String, Tensor)],
) -> Result<(), HfError> {
    std::fs::create_dir_all(out_dir).map_err(|e| HfError::io(out_dir, e))?;
    let size = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
    let total: usize = tensors.iter().map(|(_, t)| size(t)).sum();
    if total <= MAX_SHARD_BYTES {
        write_safetensors(&out_dir.join("model.safetensors"), tensors)?;
    } else {
        let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
        let mut filled = 0usize;
        for (name, t) in tensors {
            if filled > 0 && filled + size(t) > MAX_SHARD_BYTES {
                shards.push(Vec::new());
                filled = 0;
            }
            filled += size(t);
            shards
                .last_mut()
                .expect("non-empty")
                .push((name.clone(), t.shallow_clone()));
        }
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
            write_safetensors(&out_dir.join(&file), shard)?;
            for (name, _) in shard {
                weight_map.insert(name.clone(), Value::String(file.clone()));
            }
        }
        write_json(
            &out_dir.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }
    let source_config = source
        .map(|s| s.dir.join("config.json"))
        .filter(|p| p.is_file());
    match source_config {
        Some(p) => copy(&p, &out_dir.join("config.json"))?,
        None => write_json(
            &out_dir.join("config.json"),
            &serde_json::to_value(config).expect("config serializes"),
        )?,
    }
    if let Some(src) = source {
        for name in COMPANION_FILES {
            let p = src.dir.join(name);
            if p.is_file() {
                copy(&p, &out_dir.join(name))?;
            }
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<(), HfError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| HfError::io(from, e))
}
