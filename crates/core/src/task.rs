//! The task file: the description a teacher and a judge read, plus structured settings in TOML
//! front matter (between `+++` lines): reply function, reference date, mutation topics, synonyms.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A length bucket a teacher writes conversations in ("mutation topic" in the study).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutationTopic {
    /// Name shown in prompts and statistics.
    pub name: String,
    /// Fewest messages (user and assistant turns, tool results excluded).
    pub min_turns: usize,
    /// Most messages.
    pub max_turns: usize,
    /// What the conversation should cover (free text for an LLM teacher).
    #[serde(default)]
    pub description: String,
}

/// Structured settings of a task (the front matter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSettings {
    /// Name of the reply function.
    #[serde(default = "default_respond")]
    pub respond_function: String,
    /// The date "today" means in the data (SGD: 2019-03-01).
    #[serde(default = "default_reference_date")]
    pub reference_date: String,
    /// Functions that are transactions, for tools files without `x-kind`.
    #[serde(default)]
    pub transactional: Vec<String>,
    /// Length buckets for generation.
    #[serde(default = "default_topics")]
    pub mutation_topics: Vec<MutationTopic>,
    /// Value synonyms the judge accepts: canonical value → accepted alternatives (e.g. cuisines).
    #[serde(default)]
    pub synonyms: BTreeMap<String, Vec<String>>,
}

fn default_respond() -> String {
    crate::tools::DEFAULT_RESPOND.to_string()
}

fn default_reference_date() -> String {
    "2019-03-01".to_string()
}

fn default_topics() -> Vec<MutationTopic> {
    [
        ("short", 9, 13),
        ("medium", 13, 17),
        ("full-flow", 15, 19),
        ("long", 21, 29),
    ]
    .into_iter()
    .map(|(n, a, b)| MutationTopic {
        name: n.into(),
        min_turns: a,
        max_turns: b,
        description: String::new(),
    })
    .collect()
}

impl Default for TaskSettings {
    fn default() -> Self {
        toml::from_str("").expect("all fields have defaults")
    }
}

/// A parsed task file.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Structured settings.
    pub settings: TaskSettings,
    /// The description in prose (Markdown), without the front matter.
    pub description: String,
}

/// Errors reading a task file.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The front matter is not valid.
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

impl Task {
    /// Parses task text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Task, TaskError> {
        let Some(rest) = text
            .strip_prefix("+++\n")
            .or_else(|| text.strip_prefix("+++\r\n"))
        else {
            return Ok(Task {
                settings: TaskSettings::default(),
                description: text.to_string(),
            });
        };
        let end = rest.find("\n+++").ok_or_else(|| TaskError::Invalid {
            path: origin.into(),
            line: 1,
            message: "front matter opened with +++ is never closed".into(),
        })?;
        let front = &rest[..end + 1];
        let settings: TaskSettings = toml::from_str(front).map_err(|e| {
            // Lines are counted from the file's first line, which holds the opening `+++`.
            let line = e
                .span()
                .map(|s| front[..s.start].matches('\n').count() + 2)
                .unwrap_or(1);
            TaskError::Invalid {
                path: origin.into(),
                line,
                message: e.message().to_string(),
            }
        })?;
        let after = &rest[end + 4..];
        let description = after
            .strip_prefix('\n')
            .or_else(|| after.strip_prefix("\r\n"))
            .unwrap_or(after);
        Ok(Task {
            settings,
            description: description.trim_start_matches('\n').to_string(),
        })
    }

    /// Reads and parses a task file.
    pub fn load(path: &Path) -> Result<Task, TaskError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
            path: origin.clone(),
            source,
        })?;
        Task::parse(&text, &origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_is_parsed_and_errors_name_the_line() {
        let t = Task::parse(
            "+++\nreference_date = \"2020-01-01\"\n+++\n# Hello\n",
            "t.md",
        )
        .unwrap();
        assert_eq!(t.settings.reference_date, "2020-01-01");
        assert_eq!(t.settings.mutation_topics.len(), 4);
        assert_eq!(t.description, "# Hello\n");
        let e = Task::parse("+++\nreference_date = \"x\"\nbogus = 1\n+++\n", "t.md").unwrap_err();
        assert!(e.to_string().starts_with("t.md:3:"), "{e}");
        assert_eq!(Task::parse("plain", "t.md").unwrap().description, "plain");
    }
}
