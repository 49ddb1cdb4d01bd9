//! The LLM teacher: builds one prompt per job (task description, tool schemas, a sample of
//! filtered traces as unstructured context, one length bucket), asks an OpenAI-compatible model
//! through [`crate::llm::LlmClient`], and parses the answer into a [`Conversation`].
//!
//! An answer is accepted (and therefore cached) only if it parses into a conversation whose every
//! call names a function of the schema; anything else is a recorded failure that a rerun retries.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use super::{Context, Failure, Job, Outcome, Teacher, TeacherError};
use crate::conversation::{Conversation, Message, ToolCall};
use crate::llm::{ChatMessage, LlmClient, LlmStats};
use crate::tools::{FunctionKind, ToolSet};

/// The LLM teacher.
pub struct HttpTeacher {
    client: Arc<LlmClient>,
    system: String,
    traces: Vec<String>,
    context_traces: usize,
    tools: ToolSet,
}

impl HttpTeacher {
    /// A teacher over `client`; each prompt shows `context_traces` traces drawn per job.
    pub fn new(ctx: &Context<'_>, client: LlmClient, context_traces: usize) -> HttpTeacher {
        HttpTeacher {
            client: Arc::new(client),
            system: system_prompt(ctx),
            traces: ctx.traces.iter().map(transcript).collect(),
            context_traces,
            tools: ctx.tools.clone(),
        }
    }

    /// Client counters (requests, retries, cache hits).
    pub fn stats(&self) -> LlmStats {
        self.client.stats()
    }

    /// The messages sent for `job`.
    pub fn prompt(&self, job: &Job) -> Vec<ChatMessage> {
        let mut rng = ChaCha8Rng::seed_from_u64(job.seed);
        let sample: Vec<&String> = self
            .traces
            .choose_multiple(&mut rng, self.context_traces.min(self.traces.len()))
            .collect();
        let mut user = String::from(
            "Example traces from production follow. Use them only to learn what users ask for, \
             which values occur and how people phrase things. Their function names, arguments and \
             timing may be wrong or outdated: the tool schema above is the only truth.\n\n",
        );
        for (i, t) in sample.iter().enumerate() {
            user.push_str(&format!("--- trace {} ---\n{t}\n", i + 1));
        }
        let t = &job.topic;
        user.push_str(&format!(
            "\nWrite ONE new conversation of type \"{}\" with {} to {} turns (user and assistant \
             messages; tool results not counted).{}{}\nUse new values (other names, places, times) \
             than the examples. Answer with the JSON object only.",
            t.name,
            t.min_turns,
            t.max_turns,
            if t.description.is_empty() { "" } else { " " },
            t.description
        ));
        vec![
            ChatMessage::system(self.system.clone()),
            ChatMessage::user(user),
        ]
    }
}

fn system_prompt(ctx: &Context<'_>) -> String {
    let tools = serde_json::to_string_pretty(&ctx.tools.to_openai(false)).expect("serializes");
    let respond = ctx
        .tools
        .respond()
        .map(|f| f.name.clone())
        .unwrap_or_else(|| crate::tools::DEFAULT_RESPOND.into());
    format!(
        "You write realistic training conversations between a user and a tool-calling assistant.\n\n\
         # Task\n{}\n\n# Tools (OpenAI format)\n{tools}\n\n# Rules\n\
         - Every assistant message makes exactly one tool call; text for the user goes through {respond}.\n\
         - Use only the functions and argument names of the tool schema, with values that fit it.\n\
         - After every call of another function, add a message with role \"tool\" holding its result \
         as a JSON list of records.\n\
         - When an argument value comes from the user, the user says it verbatim.\n\
         - Answer with one JSON object: {{\"messages\": [...]}} in OpenAI chat format \
         (assistant messages carry \"tool_calls\": [{{\"type\": \"function\", \"function\": \
         {{\"name\": ..., \"arguments\": \"<JSON string>\"}}}}]).",
        ctx.task.description.trim()
    )
}

/// A trace as compact text: one line per message, calls as `name(args)`.
fn transcript(c: &Conversation) -> String {
    let mut out = String::new();
    for m in &c.messages {
        match m {
            Message::System { .. } => {}
            Message::User { content } => out.push_str(&format!("user: {content}\n")),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                if let Some(t) = content.as_deref().filter(|t| !t.is_empty()) {
                    out.push_str(&format!("assistant: {t}\n"));
                }
                for call in tool_calls {
                    out.push_str(&format!(
                        "assistant -> {}({})\n",
                        call.name,
                        Value::Object(call.arguments.clone())
                    ));
                }
            }
            Message::Tool { content, .. } => {
                let short: String = content.chars().take(600).collect();
                out.push_str(&format!("tool: {short}\n"));
            }
        }
    }
    out
}

/// Parses a teacher answer into a conversation that only calls functions of `tools`.
pub fn parse_answer(text: &str, tools: &ToolSet) -> Result<Conversation, String> {
    let body = strip_fences(text);
    let start = body
        .find(['{', '['])
        .ok_or("the answer holds no JSON (prose instead of a conversation)")?;
    let end = body
        .rfind(['}', ']'])
        .ok_or("the JSON in the answer is not closed")?;
    if end < start {
        return Err("the JSON in the answer is not closed".into());
    }
    let v: Value = serde_json::from_str(&body[start..=end])
        .map_err(|e| format!("the answer is not valid JSON: {e}"))?;
    let list = match &v {
        Value::Array(a) => a,
        Value::Object(o) => o
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("the JSON object has no \"messages\" list")?,
        _ => return Err("the answer is neither a message list nor {\"messages\": [...]}".into()),
    };
    let mut messages = Vec::with_capacity(list.len());
    let mut after_service_call = false;
    for (i, m) in list.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or(format!("message {i}: no role"))?;
        let content = match m.get("content") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        let msg = match role {
            "system" => Message::System {
                content: content.unwrap_or_default(),
            },
            "user" if after_service_call && content.as_deref().is_some_and(is_json_list) => {
                Message::Tool {
                    tool_call_id: String::new(),
                    content: content.unwrap_or_default(),
                }
            }
            "user" => Message::User {
                content: content.ok_or(format!("message {i}: user without content"))?,
            },
            "tool" => Message::Tool {
                tool_call_id: m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                content: content.ok_or(format!("message {i}: tool without content"))?,
            },
            "assistant" => {
                let calls = parse_calls(m).map_err(|e| format!("message {i}: {e}"))?;
                for c in &calls {
                    if tools.get(&c.name).is_none() {
                        return Err(format!("message {i}: calls unknown function {:?}", c.name));
                    }
                }
                Message::Assistant {
                    content: content.filter(|c| !c.is_empty()),
                    tool_calls: calls,
                }
            }
            other => return Err(format!("message {i}: unknown role {other:?}")),
        };
        after_service_call = msg.tool_calls().iter().any(|c| {
            tools
                .get(&c.name)
                .is_some_and(|f| f.kind != FunctionKind::Respond)
        });
        messages.push(msg);
    }
    let mut c = Conversation {
        id: String::new(),
        messages,
        meta: Map::new(),
    };
    if !c.messages.iter().any(|m| matches!(m, Message::User { .. })) || c.calls().next().is_none() {
        return Err("the conversation has no user message or no tool call".into());
    }
    // Models invent call ids (or repeat them); results belong to the call right before them, so
    // ids are reassigned in order rather than trusted.
    for m in &mut c.messages {
        match m {
            Message::Assistant { tool_calls, .. } => {
                tool_calls.iter_mut().for_each(|t| t.id.clear())
            }
            Message::Tool { tool_call_id, .. } => tool_call_id.clear(),
            _ => {}
        }
    }
    c.assign_call_ids();
    Ok(c)
}

fn is_json_list(s: &str) -> bool {
    serde_json::from_str::<Value>(s.trim()).is_ok_and(|v| v.is_array())
}

fn strip_fences(t: &str) -> &str {
    let t = t.trim();
    match t.strip_prefix("```") {
        Some(rest) => {
            let rest = rest.split_once('\n').map(|x| x.1).unwrap_or(rest);
            rest.rsplit_once("```").map(|x| x.0).unwrap_or(rest)
        }
        None => t,
    }
}

/// Calls of an assistant message: standard `tool_calls`, or a lone `{"name", "arguments"}`.
fn parse_calls(m: &Value) -> Result<Vec<ToolCall>, String> {
    let raw: Vec<&Value> = match (
        m.get("tool_calls"),
        m.get("tool_call"),
        m.get("function_call"),
    ) {
        (Some(Value::Array(a)), _, _) => a.iter().collect(),
        (_, Some(c), _) | (_, _, Some(c)) => vec![c],
        _ => Vec::new(),
    };
    raw.into_iter()
        .map(|c| {
            let f = c.get("function").unwrap_or(c);
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or("tool call without a name")?;
            let arguments = match f.get("arguments") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(o)) => o.clone(),
                Some(Value::String(s)) => match serde_json::from_str(s) {
                    Ok(Value::Object(o)) => o,
                    _ => return Err(format!("arguments of {name} are not a JSON object")),
                },
                Some(_) => return Err(format!("arguments of {name} are not a JSON object")),
            };
            Ok(ToolCall {
                id: c
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                name: name.to_string(),
                arguments,
            })
        })
        .collect()
}

impl Teacher for HttpTeacher {
    fn generate(
        &self,
        jobs: &[Job],
        progress: &(dyn Fn(usize) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Vec<Outcome>, TeacherError> {
        let done = Arc::new(AtomicUsize::new(0));
        let tools = Arc::new(self.tools.clone());
        // At most this many jobs are spawned at once: the client's semaphore limits requests,
        // this bounds the prompts held in memory.
        let window = self.client.config().concurrency * 2;
        let outcomes = crate::steps::runtime().block_on(async {
            let mut set = tokio::task::JoinSet::new();
            let mut out: Vec<Option<Outcome>> = vec![None; jobs.len()];
            let mut next = 0usize;
            loop {
                while next < jobs.len() && set.len() < window {
                    let job = &jobs[next];
                    let client = self.client.clone();
                    let tools = tools.clone();
                    let messages = self.prompt(job);
                    let (slot, index, topic) = (next, job.index, job.topic.name.clone());
                    set.spawn(async move {
                        let r = client
                            .complete_parsed(&messages, index, |t| parse_answer(t, &tools))
                            .await;
                        let outcome = match r {
                            Ok((mut c, _)) => {
                                c.id = format!("gen-{index:05}");
                                c.meta.insert("teacher".into(), "http".into());
                                c.meta.insert("topic".into(), topic.into());
                                Ok(c)
                            }
                            Err(e) => Err(Failure {
                                index,
                                reason: e.to_string(),
                            }),
                        };
                        (slot, outcome)
                    });
                    next += 1;
                }
                let Some(joined) = set.join_next().await else {
                    break;
                };
                let (slot, outcome) = joined
                    .map_err(|e| TeacherError::Context(format!("teacher task failed: {e}")))?;
                out[slot] = Some(outcome);
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n & 31 == 0 {
                    progress(n);
                }
                if cancel.load(Ordering::Relaxed) {
                    // Answers stored so far stay in the response cache; a rerun picks them up.
                    set.abort_all();
                    return Err(TeacherError::Cancelled);
                }
            }
            Ok(out
                .into_iter()
                .map(|o| o.expect("every job joined"))
                .collect::<Vec<_>>())
        })?;
        progress(jobs.len());
        Ok(outcomes)
    }
}
