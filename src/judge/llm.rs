//! The LLM judge: asks an OpenAI-compatible model for a good/bad verdict with a reason, with the
//! study's rubric, the task description and the tool schemas in the prompt and the conversation,
//! reference and prediction as JSON.
//!
//! Requests go through [`crate::llm::LlmClient`] (concurrency limit, HTTP retries, response
//! cache). An answer that does not parse is asked again as a new sample (`attempts` in all); a
//! pair whose every answer was unparseable is counted bad and reported in
//! `metrics.judge_unanswered`. Only parseable answers are cached, so a rerun asks again for those.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::conversation::ToolCall;
use crate::judge::rubric::Verdict;
use crate::llm::{ChatMessage, LlmClient, LlmConfig, LlmError};
use crate::tools::ToolSet;

/// Settings of the LLM judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmJudgeConfig {
    /// Endpoint, model and client limits.
    pub llm: LlmConfig,
    /// Answers asked per pair before it counts as unanswered (new samples, not HTTP retries).
    pub attempts: u32,
    /// Directory of the response cache.
    pub responses: PathBuf,
}

/// The rubric the judge model reads (BENCHMARK.md's, in the judge's words).
pub const RUBRIC: &str = "\
You judge one turn of a tool-calling assistant. At every turn the assistant makes exactly one \
function call; a text reply to the user is a call of the reply function. You get the conversation \
so far (including tool results), the reference call a correct assistant made at this turn, and the \
predicted call. Decide whether the prediction is acceptable.

Rubric:
1. The predicted function must be the reference function; otherwise the prediction is bad.
2. Service calls (anything but the reply function): good if every argument refers to the same \
real-world entity and intent as the reference. Accept synonyms and subcategories (e.g. \
Barbecue/American, Asian Fusion/Asian, Gastropub/Gastrobar, Ramen/Japanese, Szechuan/Chinese, \
Cambodian/Vietnamese), other date and time formats ('today' vs the reference date, '6:00 PM' vs \
'18:00'), other spelling, case and argument order. An optional argument the reference leaves out \
is fine unless it contradicts the conversation. Bad for a wrong entity (place, city), a missing \
argument the user gave, or a hallucinated value.
3. Replies: good for any reasonable reply at that point: more or less detail, asking for a \
different missing value, confirming instead of asking, other wording. Bad only if it contradicts \
the tool results in the conversation (e.g. says a place serves alcohol when the result says it does \
not; says a booking failed when it succeeded; names a place as found that no result contains; \
gives a wrong phone number, address or price range).

Answer with one JSON object and nothing else: {\"verdict\": \"good\" or \"bad\", \"reason\": \"one \
short sentence\"}.";

/// A judge model's answer, or why none was usable.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmVerdict {
    /// A parsed verdict.
    Answered(Verdict),
    /// Every attempt was unparseable; the last reason.
    Unanswered(String),
}

/// One pair to judge.
#[derive(Debug, Clone)]
pub struct LlmItem {
    /// The conversation prefix (OpenAI messages, as given).
    pub question: Value,
    /// Reference call.
    pub reference: ToolCall,
    /// Predicted call.
    pub prediction: ToolCall,
}

/// Errors of the LLM judge that stop judging (HTTP failures after retries, budget, cache I/O).
#[derive(Debug, thiserror::Error)]
pub enum LlmJudgeError {
    /// The client failed.
    #[error("judge model: {0}")]
    Llm(#[from] LlmError),
    /// The run was cancelled.
    #[error("interrupted")]
    Cancelled,
    /// A judging task panicked or was aborted.
    #[error("judge task failed: {0}")]
    Task(String),
}

/// The LLM judge for one task.
pub struct LlmJudge {
    client: Arc<LlmClient>,
    system: String,
    attempts: u32,
}

impl LlmJudge {
    /// A judge using `config`, whose prompt carries the rubric, the task `description`, the
    /// reference date and the tool schemas.
    pub fn new(
        config: &LlmJudgeConfig,
        description: &str,
        reference_date: &str,
        tools: &ToolSet,
    ) -> Result<LlmJudge, LlmJudgeError> {
        let client = LlmClient::new(config.llm.clone(), &config.responses)?;
        let tools_json = serde_json::to_string(&tools.to_openai(false)).expect("serializes");
        let system = format!(
            "{RUBRIC}\n\nTask description:\n{}\n\n\"Today\" in these conversations is {reference_date}.\n\nTools:\n{tools_json}",
            description.trim()
        );
        Ok(LlmJudge {
            client: Arc::new(client),
            system,
            attempts: config.attempts.max(1),
        })
    }

    /// The messages sent for one pair.
    pub fn prompt(&self, item: &LlmItem) -> Vec<ChatMessage> {
        let user = json!({
            "conversation": item.question,
            "reference": item.reference.to_plain_json(),
            "prediction": item.prediction.to_plain_json(),
        });
        vec![
            ChatMessage::system(self.system.clone()),
            ChatMessage::user(serde_json::to_string_pretty(&user).expect("serializes")),
        ]
    }

    /// Judges every item concurrently (the client's limit applies); answers in input order.
    /// `progress(done)` is called as answers arrive; `cancel` stops the run (answers stored so
    /// far stay in the response cache).
    pub fn judge_all(
        &self,
        items: &[LlmItem],
        progress: &(dyn Fn(usize) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Vec<LlmVerdict>, LlmJudgeError> {
        // Identical prompts (the same prediction in different spellings) are asked once: that
        // saves paid calls, and no two requests in flight share a cache entry.
        let mut distinct: Vec<Vec<ChatMessage>> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let slots: Vec<usize> = items
            .iter()
            .map(|item| {
                let messages = self.prompt(item);
                let key = serde_json::to_string(&messages).expect("serializes");
                *index.entry(key).or_insert_with(|| {
                    distinct.push(messages);
                    distinct.len() - 1
                })
            })
            .collect();
        let done = AtomicUsize::new(0);
        let answers: Vec<LlmVerdict> = crate::steps::runtime().block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (slot, messages) in distinct.into_iter().enumerate() {
                let client = self.client.clone();
                let attempts = self.attempts;
                set.spawn(async move {
                    let mut last = String::new();
                    for sample in 0..u64::from(attempts) {
                        match client
                            .complete_parsed(&messages, sample, parse_answer)
                            .await
                        {
                            Ok((v, _)) => return (slot, Ok(LlmVerdict::Answered(v))),
                            Err(LlmError::Rejected(why)) => last = why,
                            Err(e) => return (slot, Err(e)),
                        }
                    }
                    (slot, Ok(LlmVerdict::Unanswered(last)))
                });
            }
            let mut out: Vec<Option<LlmVerdict>> = vec![None; set.len()];
            while let Some(joined) = set.join_next().await {
                let (slot, r) = joined.map_err(|e| LlmJudgeError::Task(e.to_string()))?;
                out[slot] = Some(r?);
                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                if cancel.load(Ordering::Relaxed) {
                    set.abort_all();
                    return Err(LlmJudgeError::Cancelled);
                }
            }
            Ok::<_, LlmJudgeError>(
                out.into_iter()
                    .map(|v| v.expect("every task joined"))
                    .collect(),
            )
        })?;
        Ok(slots.into_iter().map(|i| answers[i].clone()).collect())
    }

    /// Requests sent and cache hits so far.
    pub fn stats(&self) -> crate::llm::LlmStats {
        self.client.stats()
    }
}

/// Reads a judge answer: a JSON object `{"verdict": "good"|"bad"|1|0|true|false, "reason": …}`
/// (possibly after reasoning in `<think>` tags or inside a code fence), or a first line starting
/// with "good" or "bad" followed by the reason.
pub fn parse_answer(text: &str) -> Result<Verdict, String> {
    let t = match text.rfind("</think>") {
        Some(i) => &text[i + "</think>".len()..],
        None => text,
    }
    .trim();
    if let (Some(a), Some(b)) = (t.find('{'), t.rfind('}')) {
        if a < b {
            if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&t[a..=b]) {
                let good = match o.get("verdict").or_else(|| o.get("score")) {
                    Some(Value::String(s)) => word_verdict(s),
                    Some(Value::Number(n)) => match n.as_u64() {
                        Some(1) => Some(true),
                        Some(0) => Some(false),
                        _ => None,
                    },
                    Some(Value::Bool(b)) => Some(*b),
                    _ => None,
                }
                .ok_or_else(|| "the answer's \"verdict\" is not good or bad".to_string())?;
                let reason = o
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .unwrap_or("(the judge gave no reason)");
                return Ok(Verdict {
                    good,
                    reason: reason.to_string(),
                    fault: None,
                });
            }
        }
    }
    let first = t.lines().next().unwrap_or("").trim();
    let word: String = first
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect();
    match word_verdict(&word) {
        Some(good) => {
            let rest = first[first.find(&word).unwrap_or(0) + word.len()..]
                .trim_start_matches(|c: char| !c.is_alphanumeric())
                .trim();
            let reason = if rest.is_empty() {
                t.lines().nth(1).unwrap_or("").trim()
            } else {
                rest
            };
            Ok(Verdict {
                good,
                reason: if reason.is_empty() {
                    "(the judge gave no reason)".into()
                } else {
                    reason.to_string()
                },
                fault: None,
            })
        }
        None => {
            let shown: String = t.chars().take(80).collect();
            Err(format!(
                "judge answer is neither JSON nor good/bad: {shown:?}"
            ))
        }
    }
}

fn word_verdict(s: &str) -> Option<bool> {
    match s.trim().to_lowercase().as_str() {
        "good" | "1" | "yes" | "pass" | "correct" => Some(true),
        "bad" | "0" | "no" | "fail" | "incorrect" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let cases: &[(&str, Option<(bool, &str)>)] = &[
            (
                r#"{"verdict": "good", "reason": "same city"}"#,
                Some((true, "same city")),
            ),
            (
                r#"<think>hmm {x}</think>{"verdict":"BAD","reason":"wrong city"}"#,
                Some((false, "wrong city")),
            ),
            (
                "```json\n{\"verdict\": 1, \"reason\": \"ok\"}\n```",
                Some((true, "ok")),
            ),
            (
                r#"{"verdict": false}"#,
                Some((false, "(the judge gave no reason)")),
            ),
            (
                "Good - the reply is consistent.",
                Some((true, "the reply is consistent.")),
            ),
            (
                "BAD\nIt names a place no result has.",
                Some((false, "It names a place no result has.")),
            ),
            (r#"{"verdict": "maybe", "reason": "?"}"#, None),
            ("I cannot decide.", None),
            ("", None),
        ];
        for (text, want) in cases {
            let got = parse_answer(text).ok().map(|v| (v.good, v.reason));
            assert_eq!(got, want.map(|(g, r)| (g, r.to_string())), "{text:?}");
        }
    }
}
