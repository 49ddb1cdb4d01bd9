//! Pretraining the tiny student: one tokenizer and one model trained on a corpus of many
//! services' conversations, each service's rendered with its own tools in the template's header,
//! so the base learns how tool calls look in general before a cell teaches it its own tools.

use std::path::Path;

use serde_json::{json, Value};
use tracelab_core::conversation::Conversation;
use tracelab_core::job::PretrainParams;
use tracelab_core::tools::{ToolSet, DEFAULT_RESPOND};

use crate::template::{ChatTemplate, Window};
use crate::train::{fit, save, tiny_config, Fitted, ValueRules};
use crate::{corpus_texts, data, tokenizer, Progress, WorkerError};

/// Where a pretrained base's tokenizer is, given its `model/` directory: beside it, in the
/// `pretrain` step's output, as `tokenizer.json`.
pub fn base_tokenizer(model_dir: &Path) -> std::path::PathBuf {
    model_dir
        .parent()
        .unwrap_or(Path::new("."))
        .join("tokenizer.json")
}

/// One service of the corpus: its tools and conversations.
pub struct Service {
    /// The service's name.
    pub name: String,
    /// Its tools.
    pub tools: ToolSet,
    /// Its conversations.
    pub conversations: Vec<Conversation>,
}

/// Reads the corpus directory the `pretrain` step writes: `<service>.tools.json` next to
/// `<service>.jsonl`, in name order.
pub fn read_corpus(dir: &Path) -> Result<Vec<Service>, WorkerError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| WorkerError::io(dir, e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".tools.json").map(String::from)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let tools = ToolSet::load(
                &dir.join(format!("{name}.tools.json")),
                DEFAULT_RESPOND,
                &[],
            )
            .map_err(|e| WorkerError::Invalid(e.to_string()))?;
            let conversations = data::read_conversations(&dir.join(format!("{name}.jsonl")))?;
            Ok(Service {
                name,
                tools,
                conversations,
            })
        })
        .collect()
}

/// Trains the tokenizer (`out/tokenizer.json`) and the base model (`out/model/`) on the corpus.
pub fn pretrain(
    p: &PretrainParams,
    corpus: &[Service],
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Value, WorkerError> {
    let texts: Vec<String> = corpus
        .iter()
        .flat_map(|s| corpus_texts(&s.conversations, &s.tools))
        .collect();
    let tok = tokenizer::train_bpe(&texts, p.tokenizer.vocab_size, p.tokenizer.min_frequency)?;
    tokenizer::save(&tok, &out.join("tokenizer.json"))?;
    let mut windows: Vec<Window> = Vec::new();
    let mut first: Option<ChatTemplate> = None;
    for s in corpus {
        let tpl = ChatTemplate::new(tok.clone(), &s.tools, p.train.max_records, None)
            .map_err(WorkerError::Invalid)?;
        let context = p.train.context as usize;
        windows.extend(
            s.conversations
                .iter()
                .flat_map(|c| tpl.windows(&tpl.render(&c.messages), context)),
        );
        first.get_or_insert(tpl);
    }
    let Some(tpl) = first else {
        return Err(WorkerError::Invalid(
            "the pretraining corpus is empty".into(),
        ));
    };
    let cfg = tiny_config(&p.train, tpl.vocab)?;
    let Fitted { vs, mut stats } = fit(&p.train, &cfg, &tpl, &windows, None, progress)?;
    // No value rules: those are learned from each cell's own conversations.
    let rules = ValueRules::default();
    save(
        &vs,
        &cfg,
        p.train.max_records,
        None,
        &rules,
        &out.join("model"),
    )?;
    stats.insert("vocab_size".into(), json!(tok.get_vocab_size(true)));
    Ok(Value::Object(stats))
}
