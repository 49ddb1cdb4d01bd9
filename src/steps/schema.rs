//! Step `schema`: the target tools (`tools.json`, OpenAI format with `x-kind`) and the task
//! description (`task.md`, a checked copy of the task file).
//!
//! Parameters: `format = "sgd" | "tools" | "jsonl"`, `path` (SGD root, a tools JSON file, or a
//! trace JSONL file whose lines declare their `tools`), `service`
//! (SGD only, required there), `task` (the task Markdown file). Paths are relative to the project
//! root. The reply function and the transactional functions of a tools file without `x-kind`
//! come from the task's front matter.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{canonicalize, typed, Artifact, ParamError, Step, StepContext, StepError};
use crate::formats::sgd;
use crate::task::Task;
use crate::tools::{FunctionKind, ToolSet};

/// Where the tool schemas come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaFormat {
    /// An SGD service's schema.
    Sgd,
    /// A user-given OpenAI tools JSON file.
    Tools,
    /// The `tools` the lines of an OpenAI chat JSONL trace file declare (all must agree).
    Jsonl,
}

/// Parameters of `schema`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaParams {
    /// Source format.
    pub format: SchemaFormat,
    /// SGD root or tools file.
    pub path: String,
    /// SGD service.
    #[serde(default)]
    pub service: Option<String>,
    /// Task description file (Markdown with TOML front matter).
    pub task: String,
}

/// The `schema` step.
pub struct Schema;

impl Step for Schema {
    fn kind(&self) -> &'static str {
        "schema"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "derive the target tool schemas (SGD service or tools file) and check the task file"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Tools, Artifact::Task]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let v = canonicalize::<SchemaParams>(params)?;
        let p: SchemaParams = serde_json::from_value(v.clone()).expect("just canonicalized");
        if p.format == SchemaFormat::Sgd && p.service.as_deref().is_none_or(str::is_empty) {
            return Err(ParamError {
                path: "service".into(),
                message: "format \"sgd\" needs a service, e.g. service = \"Restaurants_1\"".into(),
            });
        }
        Ok(v)
    }
    fn external_files(&self, params: &Value, root: &Path) -> Result<Vec<PathBuf>, StepError> {
        let p: SchemaParams = typed(params)?;
        let mut files = vec![PathBuf::from(&p.task)];
        match p.format {
            SchemaFormat::Tools | SchemaFormat::Jsonl => files.push(PathBuf::from(&p.path)),
            SchemaFormat::Sgd => {
                let found = sgd::find_service_schema(
                    &root.join(&p.path),
                    p.service.as_deref().unwrap_or_default(),
                )
                .map_err(super::ingest::param("service"))?;
                files.extend(
                    found
                        .consulted
                        .into_iter()
                        .map(|f| f.strip_prefix(root).map(Path::to_path_buf).unwrap_or(f)),
                );
            }
        }
        Ok(files)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: SchemaParams = typed(ctx.params)?;
        let task_path = ctx.resolve(&p.task);
        let task_text =
            std::fs::read_to_string(&task_path).map_err(|e| StepError::io(&task_path, e))?;
        let task = Task::parse(&task_text, &task_path.display().to_string())
            .map_err(|e| StepError::Data(e.to_string()))?;
        let respond = task.settings.respond_function.clone();
        let path = ctx.resolve(&p.path);
        let tools = match p.format {
            SchemaFormat::Sgd => {
                let service = p.service.as_deref().unwrap_or_default();
                let found = sgd::find_service_schema(&path, service)
                    .map_err(|e| StepError::Data(e.to_string()))?;
                sgd::service_to_toolset(&found.service, &respond)
                    .map_err(|e| StepError::Data(format!("{}: {e}", found.path.display())))?
            }
            SchemaFormat::Tools => ToolSet::load(&path, &respond, &task.settings.transactional)
                .map_err(|e| StepError::Data(e.to_string()))?,
            SchemaFormat::Jsonl => {
                let declared = crate::formats::declared_tools(&path)
                    .map_err(|e| StepError::Data(e.to_string()))?;
                ToolSet::from_openai(
                    &declared,
                    &respond,
                    &task.settings.transactional,
                    &path.display().to_string(),
                )
                .map_err(|e| StepError::Data(e.to_string()))?
            }
        };
        match tools.respond() {
            Some(f) if f.name == respond => {}
            Some(f) => {
                return Err(StepError::Data(format!(
                "{}: the reply function is {:?} but the task says respond_function = {respond:?}",
                path.display(),
                f.name
            )))
            }
            None => unreachable!("ToolSet loaders always add a reply function"),
        }
        for t in &task.settings.transactional {
            if tools.get(t).is_none() {
                return Err(StepError::Data(format!(
                    "{}: transactional function {t:?} is not among the tools",
                    task_path.display()
                )));
            }
        }
        let out = ctx.output(Artifact::Tools);
        let text = serde_json::to_string_pretty(&tools.to_openai(true)).expect("JSON");
        std::fs::write(&out, text + "\n").map_err(|e| StepError::io(&out, e))?;
        let out = ctx.output(Artifact::Task);
        std::fs::write(&out, &task_text).map_err(|e| StepError::io(&out, e))?;

        let functions: serde_json::Map<String, Value> = tools
            .functions
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    json!({"kind": f.kind, "parameters": f.parameter_names(), "required": f.required()}),
                )
            })
            .collect();
        ctx.stat("functions", Value::Object(functions));
        ctx.stat(
            "service_functions",
            tools
                .functions
                .iter()
                .filter(|f| f.kind != FunctionKind::Respond)
                .count() as u64,
        );
        ctx.stat("respond_function", respond);
        ctx.stat("reference_date", task.settings.reference_date.clone());
        ctx.stat(
            "mutation_topics",
            task.settings.mutation_topics.len() as u64,
        );
        ctx.stat("synonym_groups", task.settings.synonyms.len() as u64);
        Ok(())
    }
}
