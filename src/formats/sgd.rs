//! The Schema-Guided Dialogue dataset in its original layout (`<split>/dialogues_NNN.json`,
//! `<split>/schema.json`): dialogues of one service as traces, and a service's schema as tools.
//!
//! Conversion of a dialogue: a user turn → a user message. A system turn → for each frame with a
//! `service_call`, an assistant call `method(parameters)` followed by a `tool` message holding the
//! `service_results` as a JSON list; then the system utterance as `respond_to_user(message)`.
//! Values keep SGD's canonical form (dates `2019-03-01`, times `18:30`); "today" in SGD is
//! 2019-03-01 (the task file's `reference_date`).
//!
//! Conversion of a schema: each intent → a function (required slots required, optional slots
//! optional, categorical slots with possible values → `enum`, slot descriptions → descriptions,
//! `x-kind` from `is_transactional`), plus the reply function.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::FormatError;
use crate::cache::FileStat;
use crate::conversation::{Arguments, Conversation, Message, ToolCall};
use crate::tools::{Function, FunctionKind, ToolSet};

/// Which dialogues to take from the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Service name, e.g. `Restaurants_1`.
    pub service: String,
    /// Splits to read, e.g. `["train"]` or `["dev", "test"]`.
    pub splits: Vec<String>,
    /// Only dialogues whose `services` is exactly this service.
    pub single_domain: bool,
}

impl Selection {
    /// Whether a dialogue with these `services` is selected.
    fn selects(&self, services: &[&str]) -> bool {
        if self.single_domain {
            services == [self.service.as_str()]
        } else {
            services.contains(&self.service.as_str())
        }
    }
}

/// The dialogue files of the given splits, sorted by name within each split (the read order).
pub fn dialogue_files(root: &Path, splits: &[String]) -> Result<Vec<PathBuf>, FormatError> {
    let mut out = Vec::new();
    for split in splits {
        let dir = root.join(split);
        let entries = std::fs::read_dir(&dir).map_err(|e| FormatError::io(&dir, e))?;
        let mut files = Vec::new();
        for e in entries {
            let e = e.map_err(|e| FormatError::io(&dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("dialogues_") && name.ends_with(".json") {
                files.push(e.path());
            }
        }
        if files.is_empty() {
            return Err(FormatError::Invalid {
                file: dir.display().to_string(),
                line: 1,
                message: "no dialogues_NNN.json files in this SGD split".into(),
            });
        }
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// Reads the dialogues of `sel.service` from the selected splits, converted to conversations, in
/// split and file order. Ids are `<split>/<dialogue_id>` (SGD ids restart in every split).
pub fn read_dialogues(root: &Path, sel: &Selection) -> Result<Vec<Conversation>, FormatError> {
    let mut out = Vec::new();
    visit_dialogues(root, &sel.splits, &mut |split, d, services, invalid| {
        if sel.selects(services) {
            out.push(converted(d, split, &sel.service).map_err(invalid)?);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Every single-service dialogue of the given splits whose service `keep` accepts, by service,
/// each list in split and file order (the pretraining corpus: one pass over the files for all
/// services).
pub fn read_single_service(
    root: &Path,
    splits: &[String],
    keep: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, Vec<Conversation>>, FormatError> {
    let mut out: BTreeMap<String, Vec<Conversation>> = BTreeMap::new();
    visit_dialogues(root, splits, &mut |split, d, services, invalid| {
        if let [service] = services {
            if keep(service) {
                let c = converted(d, split, service).map_err(invalid)?;
                out.entry(service.to_string()).or_default().push(c);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// A dialogue as a conversation with its id `<split>/<dialogue_id>` and its origin in `meta`.
fn converted(d: &Value, split: &str, service: &str) -> Result<Conversation, String> {
    let mut c = dialogue_to_conversation(d)?;
    c.id = format!("{split}/{}", c.id);
    c.meta.insert("source".into(), "sgd".into());
    c.meta.insert("service".into(), service.into());
    c.meta.insert("split".into(), split.into());
    Ok(c)
}

/// Calls `f(split, dialogue, its services, an error maker naming file and dialogue)` for every
/// dialogue of the splits, in split and file order.
#[allow(clippy::type_complexity)]
fn visit_dialogues(
    root: &Path,
    splits: &[String],
    f: &mut dyn FnMut(
        &str,
        &Value,
        &[&str],
        &dyn Fn(String) -> FormatError,
    ) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    for split in splits {
        for file in dialogue_files(root, std::slice::from_ref(split))? {
            let text = std::fs::read_to_string(&file).map_err(|e| FormatError::io(&file, e))?;
            let fname = file.display().to_string();
            // `str::parse` runs serde_json's own (optimized) instantiation, which matters for
            // ~40 MB of dialogues in debug builds.
            let dialogues: Value =
                text.parse()
                    .map_err(|e: serde_json::Error| FormatError::Invalid {
                        file: fname.clone(),
                        line: e.line(),
                        message: format!("bad JSON: {e}"),
                    })?;
            let list = dialogues.as_array().ok_or_else(|| FormatError::Invalid {
                file: fname.clone(),
                line: 1,
                message: "expected a list of dialogues".into(),
            })?;
            for (i, d) in list.iter().enumerate() {
                let invalid = |message: String| FormatError::Invalid {
                    file: fname.clone(),
                    line: 1,
                    message: format!("dialogue {i}: {message}"),
                };
                let services: Vec<&str> = d
                    .get("services")
                    .and_then(Value::as_array)
                    .ok_or_else(|| invalid("no \"services\" list".into()))?
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                f(split, d, &services, &invalid)?;
            }
        }
    }
    Ok(())
}

/// Converts one SGD dialogue (see the module documentation). The id is the `dialogue_id`.
pub fn dialogue_to_conversation(d: &Value) -> Result<Conversation, String> {
    let id = d
        .get("dialogue_id")
        .and_then(Value::as_str)
        .ok_or("no \"dialogue_id\"")?
        .to_string();
    let turns = d
        .get("turns")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{id}: no \"turns\" list"))?;
    let mut messages = Vec::new();
    for (t, turn) in turns.iter().enumerate() {
        let at = |e: &str| format!("{id}: turn {t}: {e}");
        let utterance = turn
            .get("utterance")
            .and_then(Value::as_str)
            .ok_or_else(|| at("no utterance"))?
            .to_string();
        match turn.get("speaker").and_then(Value::as_str) {
            Some("USER") => messages.push(Message::User { content: utterance }),
            Some("SYSTEM") => {
                let frames = turn
                    .get("frames")
                    .and_then(Value::as_array)
                    .ok_or_else(|| at("no frames"))?;
                for f in frames {
                    let Some(sc) = f.get("service_call") else {
                        continue;
                    };
                    let method = sc
                        .get("method")
                        .and_then(Value::as_str)
                        .ok_or_else(|| at("service_call without a method"))?;
                    let params = sc
                        .get("parameters")
                        .and_then(Value::as_object)
                        .cloned()
                        .ok_or_else(|| at("service_call parameters are not an object"))?;
                    let results = f.get("service_results").cloned().unwrap_or(json!([]));
                    messages.push(Message::call(ToolCall::new(method, params)));
                    messages.push(Message::Tool {
                        tool_call_id: String::new(),
                        content: results.to_string(),
                    });
                }
                let mut args = Arguments::new();
                args.insert("message".into(), Value::String(utterance));
                messages.push(Message::call(ToolCall::new(
                    crate::tools::DEFAULT_RESPOND,
                    args,
                )));
            }
            other => return Err(at(&format!("unknown speaker {other:?}"))),
        }
    }
    let mut c = Conversation {
        id,
        messages,
        meta: Map::new(),
    };
    c.assign_call_ids();
    Ok(c)
}

/// A service's schema as found in the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSchema {
    /// The `schema.json` it came from.
    pub path: PathBuf,
    /// The service object.
    pub service: Value,
    /// Every `schema.json` read to find it, in order (the last is `path`).
    pub consulted: Vec<PathBuf>,
}

/// Finds a service's schema in the first split (train, dev, test order) whose `schema.json` lists
/// it.
pub fn find_service_schema(root: &Path, service: &str) -> Result<ServiceSchema, FormatError> {
    let mut consulted = Vec::new();
    let mut known = std::collections::BTreeSet::new();
    for split in ["train", "dev", "test"] {
        let path = root.join(split).join("schema.json");
        if !path.exists() {
            continue;
        }
        consulted.push(path.clone());
        let text = std::fs::read_to_string(&path).map_err(|e| FormatError::io(&path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| FormatError::Invalid {
            file: path.display().to_string(),
            line: e.line(),
            message: format!("bad JSON: {e}"),
        })?;
        let found = v.as_array().and_then(|a| {
            a.iter()
                .find(|s| s.get("service_name").and_then(Value::as_str) == Some(service))
        });
        if let Some(s) = found {
            return Ok(ServiceSchema {
                path,
                service: s.clone(),
                consulted,
            });
        }
        let names = v.as_array().into_iter().flatten();
        known.extend(names.filter_map(|s| s.get("service_name")?.as_str().map(String::from)));
    }
    let known = if known.is_empty() {
        "none (no train/dev/test/schema.json here)".to_string()
    } else {
        known.into_iter().collect::<Vec<_>>().join(", ")
    };
    Err(FormatError::NotFound {
        path: root.to_path_buf(),
        message: format!(
            "no schema.json under train/dev/test lists service {service:?}; known: {known}"
        ),
    })
}

/// How many dialogues [`read_dialogues`] would select, without converting them: an experiment
/// checks the size of its pool when it is loaded.
pub fn count_dialogues(root: &Path, sel: &Selection) -> Result<usize, FormatError> {
    let mut memo = ServicesMemo::load();
    let mut n = 0;
    for file in dialogue_files(root, &sel.splits)? {
        for (services, count) in memo.counts(&file)? {
            let services: Vec<&str> = services.split('\t').collect();
            if sel.selects(&services) {
                n += count;
            }
        }
    }
    memo.save();
    Ok(n)
}

/// How many dialogues of each `services` list the dialogue files hold, remembered by each
/// file's size, modification time and inode in the system's temporary directory: the pool is
/// counted at every load of an experiment, and reading 40 MB of dialogues each time cost more
/// than everything else a no-op run does. A missing or unreadable memo is only a miss.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct ServicesMemo {
    /// Absolute path → what was counted.
    files: BTreeMap<String, FileCounts>,
    #[serde(skip)]
    changed: bool,
}

#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct FileCounts {
    /// The file's identity when counted (the cache's own notion: a same-tick edit is never
    /// remembered, see [`FileStat::recordable`]).
    stat: FileStat,
    /// Services joined by tabs → dialogues.
    counts: BTreeMap<String, usize>,
}

impl ServicesMemo {
    fn path() -> PathBuf {
        std::env::temp_dir().join("tracelab-sgd-services.json")
    }

    fn load() -> ServicesMemo {
        std::fs::read(Self::path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self) {
        if !self.changed {
            return;
        }
        let path = Self::path();
        let tmp = path.with_extension(format!("json.{}", std::process::id()));
        let text = serde_json::to_vec(self).expect("memo serializes");
        if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The counts of one file: remembered while its stat is unchanged, else read.
    fn counts(&mut self, file: &Path) -> Result<BTreeMap<String, usize>, FormatError> {
        /// A dialogue's `services`, the rest skipped unread.
        #[derive(serde::Deserialize)]
        struct Services {
            services: Vec<String>,
        }
        let meta = std::fs::metadata(file).map_err(|e| FormatError::io(file, e))?;
        let key = std::path::absolute(file)
            .unwrap_or_else(|_| file.to_path_buf())
            .to_string_lossy()
            .into_owned();
        if let Some(f) = self.files.get(&key) {
            if f.stat == FileStat::of(&meta) {
                return Ok(f.counts.clone());
            }
        }
        let text = std::fs::read_to_string(file).map_err(|e| FormatError::io(file, e))?;
        let dialogues: Vec<Services> =
            serde_json::from_str(&text).map_err(|e| FormatError::Invalid {
                file: file.display().to_string(),
                line: e.line(),
                message: format!("bad JSON: {e}"),
            })?;
        let mut counts = BTreeMap::new();
        for d in dialogues {
            *counts.entry(d.services.join("\t")).or_insert(0) += 1;
        }
        if let Some(stat) = FileStat::recordable(&meta) {
            let entry = FileCounts {
                stat,
                counts: counts.clone(),
            };
            self.files.insert(key, entry);
            self.changed = true;
        }
        Ok(counts)
    }
}

/// Converts one SGD service schema into tools (see the module documentation); the reply function
/// `respond_name` is appended.
pub fn service_to_toolset(service: &Value, respond_name: &str) -> Result<ToolSet, String> {
    let name = service
        .get("service_name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let slots = service
        .get("slots")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{name}: no slots"))?;
    let slot_schema = |slot: &str| -> Result<Value, String> {
        let s = slots
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(slot))
            .ok_or_else(|| format!("{name}: intent uses unknown slot {slot:?}"))?;
        let mut p = json!({"type": "string"});
        if let Some(d) = s.get("description").and_then(Value::as_str) {
            p["description"] = d.into();
        }
        let categorical = s.get("is_categorical").and_then(Value::as_bool) == Some(true);
        let values = s.get("possible_values").and_then(Value::as_array);
        if let Some(v) = values.filter(|v| categorical && !v.is_empty()) {
            p["enum"] = Value::Array(v.clone());
        }
        Ok(p)
    };
    let intents = service
        .get("intents")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{name}: no intents"))?;
    let mut functions = Vec::new();
    for intent in intents {
        let iname = intent
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{name}: intent without a name"))?;
        let required: Vec<&str> = intent
            .get("required_slots")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let optional: Vec<&str> = intent
            .get("optional_slots")
            .and_then(Value::as_object)
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut props = Map::new();
        for s in required.iter().chain(&optional) {
            props.insert(s.to_string(), slot_schema(s)?);
        }
        let kind = if intent.get("is_transactional").and_then(Value::as_bool) == Some(true) {
            FunctionKind::Transaction
        } else {
            FunctionKind::Search
        };
        functions.push(Function {
            name: iname.to_string(),
            description: intent
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            parameters: json!({
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": false
            }),
            kind,
        });
    }
    // Search first, then transactions: the order a conversation uses them (and BENCHMARK.md's).
    functions.sort_by_key(|f| f.kind);
    functions.push(ToolSet::respond_function(respond_name));
    Ok(ToolSet { functions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_count_is_remembered_until_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train");
        std::fs::create_dir_all(&train).unwrap();
        let file = train.join("dialogues_001.json");
        let write = |services: &[&[&str]]| {
            let list: Vec<Value> = services.iter().map(|s| json!({"services": s})).collect();
            std::fs::write(&file, Value::from(list).to_string()).unwrap();
        };
        let sel = Selection {
            service: "A_1".into(),
            splits: vec!["train".into()],
            single_domain: true,
        };
        let remembered = |file: &Path| {
            let key = std::path::absolute(file)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            ServicesMemo::load().files.contains_key(&key)
        };
        write(&[&["A_1"], &["A_1", "B_1"], &["A_1"]]);
        assert_eq!(count_dialogues(dir.path(), &sel).unwrap(), 2);
        assert!(
            !remembered(&file),
            "a file changed this tick is not remembered (racy)"
        );
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(count_dialogues(dir.path(), &sel).unwrap(), 2);
        assert!(remembered(&file));
        assert_eq!(
            count_dialogues(dir.path(), &sel).unwrap(),
            2,
            "from the memo"
        );
        let any = Selection {
            single_domain: false,
            ..sel.clone()
        };
        assert_eq!(count_dialogues(dir.path(), &any).unwrap(), 3);
        write(&[&["A_1"]]);
        assert_eq!(
            count_dialogues(dir.path(), &sel).unwrap(),
            1,
            "a changed file is recounted"
        );
    }
}
