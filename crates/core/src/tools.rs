//! Tool schemas: the functions a student may call, in OpenAI tools format, with each function's
//! role (search, transaction, respond) and JSON Schema validation of calls.
//!
//! `tools.json` is the plain OpenAI array (`[{"type": "function", "function": {…}}]`) so any
//! endpoint accepts it; a function's role travels in the extension key `x-kind` inside the
//! function object, and [`ToolSet::to_openai`] can leave it out for strict servers.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::conversation::ToolCall;

/// The role a function plays in the task policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    /// Looks things up (SGD intents with `is_transactional = false`), e.g. FindRestaurants.
    Search,
    /// Changes the world once the user confirms (SGD `is_transactional = true`), e.g. ReserveRestaurant.
    Transaction,
    /// The assistant's text reply, `respond_to_user(message)`.
    Respond,
}

/// One callable function.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// Function name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments (an object schema).
    pub parameters: Value,
    /// Its role in the policy.
    pub kind: FunctionKind,
}

impl Function {
    /// Argument names in schema order.
    pub fn parameter_names(&self) -> Vec<&str> {
        self.parameters
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Required argument names.
    pub fn required(&self) -> Vec<&str> {
        self.parameters
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The schema of one argument, if it exists.
    pub fn parameter(&self, name: &str) -> Option<&Value> {
        self.parameters.get("properties")?.get(name)
    }

    /// Allowed values of an argument with an `enum`.
    pub fn enum_values(&self, name: &str) -> Option<Vec<&str>> {
        self.parameter(name)?
            .get("enum")?
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
    }
}

/// Errors reading or using tool schemas.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    /// The tools file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The tools file is not valid.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The set of functions of a task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolSet {
    /// Functions in declaration order.
    pub functions: Vec<Function>,
}

/// Name of the reply function when a task does not say otherwise.
pub const DEFAULT_RESPOND: &str = "respond_to_user";

impl ToolSet {
    /// The `respond_to_user(message)` function every task has.
    pub fn respond_function(name: &str) -> Function {
        Function {
            name: name.to_string(),
            description: "Send a message to the user. Every assistant text reply is this call."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {"message": {"type": "string", "description": "The message to the user"}},
                "required": ["message"],
                "additionalProperties": false
            }),
            kind: FunctionKind::Respond,
        }
    }

    /// Looks a function up by name.
    pub fn get(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// Functions of one role.
    pub fn of_kind(&self, kind: FunctionKind) -> impl Iterator<Item = &Function> {
        self.functions.iter().filter(move |f| f.kind == kind)
    }

    /// The reply function (first function of role `Respond`).
    pub fn respond(&self) -> Option<&Function> {
        self.of_kind(FunctionKind::Respond).next()
    }

    /// Parses the OpenAI tools array. Functions without `x-kind` are `respond` when named
    /// `respond_name`, `transaction` when listed in `transactional`, `search` otherwise.
    pub fn from_openai(
        value: &Value,
        respond_name: &str,
        transactional: &[String],
        origin: &str,
    ) -> Result<ToolSet, ToolsError> {
        let invalid = |message: String| ToolsError::Invalid {
            path: origin.to_string(),
            message,
        };
        let list = match value {
            Value::Array(a) => a,
            Value::Object(o) if o.get("tools").is_some_and(Value::is_array) => {
                o["tools"].as_array().expect("checked")
            }
            _ => return Err(invalid("expected a JSON array of tools".into())),
        };
        let mut functions = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let f = t.get("function").unwrap_or(t);
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("tool {i}: missing \"name\"")))?;
            let parameters = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            if !parameters.is_object() {
                return Err(invalid(format!(
                    "tool {name}: \"parameters\" must be a JSON Schema object"
                )));
            }
            if let Err(e) = jsonschema::validator_for(&parameters) {
                return Err(invalid(format!(
                    "tool {name}: parameters are not a valid JSON Schema: {e}"
                )));
            }
            let kind = match f.get("x-kind") {
                Some(k) => serde_json::from_value(k.clone()).map_err(|_| {
                    invalid(format!(
                        "tool {name}: x-kind must be search, transaction or respond"
                    ))
                })?,
                None if name == respond_name => FunctionKind::Respond,
                None if transactional.iter().any(|t| t == name) => FunctionKind::Transaction,
                None => FunctionKind::Search,
            };
            functions.push(Function {
                name: name.to_string(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                parameters,
                kind,
            });
        }
        if functions.iter().all(|f| f.kind != FunctionKind::Respond) {
            functions.push(ToolSet::respond_function(respond_name));
        }
        Ok(ToolSet { functions })
    }

    /// Reads a tools JSON file (see [`ToolSet::from_openai`]).
    pub fn load(
        path: &Path,
        respond_name: &str,
        transactional: &[String],
    ) -> Result<ToolSet, ToolsError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ToolsError::Io {
            path: origin.clone(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| ToolsError::Invalid {
            path: format!("{origin}:{}:{}", e.line(), e.column()),
            message: e.to_string(),
        })?;
        ToolSet::from_openai(&value, respond_name, transactional, &origin)
    }

    /// The OpenAI tools array; with `with_kind` each function keeps its `x-kind`.
    pub fn to_openai(&self, with_kind: bool) -> Value {
        Value::Array(
            self.functions
                .iter()
                .map(|f| {
                    let mut func = json!({"name": f.name, "description": f.description, "parameters": f.parameters});
                    if with_kind {
                        func["x-kind"] = serde_json::to_value(f.kind).expect("enum serializes");
                    }
                    json!({"type": "function", "function": func})
                })
                .collect(),
        )
    }

    /// Compiles every function's schema once, for validating many calls.
    pub fn validator(&self) -> CallValidator {
        CallValidator {
            validators: self
                .functions
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        jsonschema::validator_for(&f.parameters).expect("checked when loaded"),
                    )
                })
                .collect(),
        }
    }
}

/// Validates tool calls against compiled schemas.
pub struct CallValidator {
    validators: Vec<(String, jsonschema::Validator)>,
}

impl CallValidator {
    /// `Ok` when the call names a known function and its arguments fit that function's schema;
    /// otherwise the first problem found.
    pub fn check(&self, call: &ToolCall) -> Result<(), String> {
        let Some((_, v)) = self.validators.iter().find(|(n, _)| *n == call.name) else {
            return Err(format!("unknown function {:?}", call.name));
        };
        let args = Value::Object(call.arguments.clone());
        let first = v
            .iter_errors(&args)
            .next()
            .map(|e| format!("{}: {}", call.name, e));
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_validates_and_round_trips() {
        let v = json!([{"type": "function", "function": {
            "name": "Find", "description": "d",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": false}}}]);
        let t = ToolSet::from_openai(&v, DEFAULT_RESPOND, &[], "t.json").unwrap();
        assert_eq!(t.functions.len(), 2, "respond_to_user is added");
        let val = t.validator();
        let mut args = serde_json::Map::new();
        assert!(val.check(&ToolCall::new("Find", args.clone())).is_err());
        args.insert("city".into(), "Paris".into());
        assert!(val.check(&ToolCall::new("Find", args.clone())).is_ok());
        args.insert("extra".into(), "x".into());
        assert!(val.check(&ToolCall::new("Find", args)).is_err());
        assert!(val
            .check(&ToolCall::new("Nope", Default::default()))
            .is_err());
        let back = ToolSet::from_openai(&t.to_openai(true), "other", &[], "x").unwrap();
        assert_eq!(back, t);
    }
}
