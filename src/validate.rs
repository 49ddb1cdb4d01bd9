//! The validation layer for generated conversations: schema conformance of every tool call, role
//! order and call/result pairing, exact and near duplicates, turn-count and length outliers, and
//! a maximum total length. Every rejection names its rule and keeps the sample for inspection.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::conversation::{Conversation, Message};
use crate::task::MutationTopic;
use crate::tools::{FunctionKind, ToolSet};

/// Validation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidateConfig {
    /// Most characters of message text (contents, call arguments, results) in one conversation.
    pub max_chars: usize,
    /// Shingle Jaccard similarity at or above which a conversation is a near duplicate.
    pub near_duplicate: f64,
    /// Words per shingle.
    pub shingle: usize,
    /// Length outliers: further than this many robust deviations (MAD·1.4826) from the median.
    pub length_k: f64,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            max_chars: 20_000,
            near_duplicate: 0.9,
            shingle: 5,
            length_k: 6.0,
        }
    }
}

/// The rule a conversation broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A call names no function of the schema, or its arguments fail the JSON Schema.
    Schema,
    /// Roles out of order: not starting with the user, two user turns in a row, an assistant
    /// message without exactly one call, not ending with the assistant.
    Roles,
    /// A service call not followed by its result, or a result without a call.
    Results,
    /// Turn count outside the length bucket.
    TurnCount,
    /// Longer than the maximum total length.
    MaxLength,
    /// Same normalized text as an earlier conversation.
    ExactDuplicate,
    /// Shingle overlap with an earlier conversation at or above the threshold.
    NearDuplicate,
    /// Length far from the set's median.
    LengthOutlier,
}

impl Rule {
    /// The rule's name in statistics and side files.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Schema => "schema",
            Rule::Roles => "roles",
            Rule::Results => "results",
            Rule::TurnCount => "turn_count",
            Rule::MaxLength => "max_length",
            Rule::ExactDuplicate => "exact_duplicate",
            Rule::NearDuplicate => "near_duplicate",
            Rule::LengthOutlier => "length_outlier",
        }
    }

    /// Every rule, in the order they are applied.
    pub const ALL: [Rule; 8] = [
        Rule::Schema,
        Rule::Roles,
        Rule::Results,
        Rule::TurnCount,
        Rule::MaxLength,
        Rule::ExactDuplicate,
        Rule::NearDuplicate,
        Rule::LengthOutlier,
    ];
}

/// One rejected conversation.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// The rule it broke.
    pub rule: Rule,
    /// What exactly.
    pub detail: String,
    /// The conversation.
    pub conversation: Conversation,
}

/// Accepted and rejected conversations.
#[derive(Debug, Clone, Default)]
pub struct ValidateOutcome {
    /// Conversations that passed every rule, in input order.
    pub accepted: Vec<Conversation>,
    /// Rejections, in input order within each rule's pass.
    pub rejected: Vec<Rejection>,
}

impl ValidateOutcome {
    /// Rejections per rule (every rule present, zero included).
    pub fn counts(&self) -> BTreeMap<Rule, usize> {
        let mut m: BTreeMap<Rule, usize> = Rule::ALL.iter().map(|r| (*r, 0)).collect();
        for r in &self.rejected {
            *m.entry(r.rule).or_default() += 1;
        }
        m
    }
}

/// User and assistant messages (tool results and system messages excluded).
pub fn turns(c: &Conversation) -> usize {
    c.messages
        .iter()
        .filter(|m| matches!(m, Message::User { .. } | Message::Assistant { .. }))
        .count()
}

/// Characters of message text: contents, call names and arguments, results.
pub fn text_chars(c: &Conversation) -> usize {
    c.messages
        .iter()
        .map(|m| match m {
            Message::System { content }
            | Message::User { content }
            | Message::Tool { content, .. } => content.chars().count(),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                content.as_deref().map_or(0, |t| t.chars().count())
                    + tool_calls
                        .iter()
                        .map(|c| {
                            c.name.len()
                                + Value::Object(c.arguments.clone())
                                    .to_string()
                                    .chars()
                                    .count()
                        })
                        .sum::<usize>()
            }
        })
        .sum()
}

/// Checks structure and schema of one conversation.
fn structure(
    c: &Conversation,
    tools: &ToolSet,
    validator: &crate::tools::CallValidator,
) -> Result<(), (Rule, String)> {
    for m in &c.messages {
        for call in m.tool_calls() {
            validator.check(call).map_err(|e| (Rule::Schema, e))?;
        }
    }
    let body: Vec<&Message> = c
        .messages
        .iter()
        .skip_while(|m| matches!(m, Message::System { .. }))
        .collect();
    match body.first() {
        Some(Message::User { .. }) => {}
        _ => return Err((Rule::Roles, "does not start with a user message".into())),
    }
    let mut prev: Option<&Message> = None;
    let mut pending: Option<&str> = None;
    for (i, m) in body.iter().enumerate() {
        if let Some(id) = pending {
            match m {
                Message::Tool { tool_call_id, .. } if tool_call_id == id => {
                    pending = None;
                    prev = Some(m);
                    continue;
                }
                _ => {
                    return Err((
                        Rule::Results,
                        format!("message {i}: the service call {id} has no result after it"),
                    ))
                }
            }
        }
        match m {
            Message::System { .. } => {
                return Err((
                    Rule::Roles,
                    format!("message {i}: system message inside the conversation"),
                ))
            }
            Message::User { .. } => {
                if matches!(prev, Some(Message::User { .. })) {
                    return Err((
                        Rule::Roles,
                        format!("message {i}: two user messages in a row"),
                    ));
                }
                if matches!(prev, Some(Message::Tool { .. })) {
                    return Err((
                        Rule::Roles,
                        format!("message {i}: the user speaks right after a tool result"),
                    ));
                }
            }
            Message::Assistant { tool_calls, .. } => {
                let [call] = tool_calls.as_slice() else {
                    return Err((
                        Rule::Roles,
                        format!(
                            "message {i}: {} tool calls, expected exactly one",
                            tool_calls.len()
                        ),
                    ));
                };
                let kind = tools.get(&call.name).map(|f| f.kind);
                if kind != Some(FunctionKind::Respond) {
                    pending = Some(call.id.as_str());
                }
            }
            Message::Tool { .. } => {
                return Err((
                    Rule::Results,
                    format!("message {i}: a tool result without a service call before it"),
                ))
            }
        }
        prev = Some(m);
    }
    if let Some(id) = pending {
        return Err((
            Rule::Results,
            format!("the service call {id} at the end has no result"),
        ));
    }
    match prev {
        Some(Message::Assistant { .. }) => Ok(()),
        _ => Err((Rule::Roles, "does not end with an assistant message".into())),
    }
}

/// The normalized text used for duplicate detection: roles, lowercased words, calls.
fn normalized(c: &Conversation) -> String {
    let mut s = String::new();
    for m in &c.messages {
        s.push_str(m.role());
        s.push(' ');
        match m {
            Message::System { content }
            | Message::User { content }
            | Message::Tool { content, .. } => s.push_str(content),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                if let Some(t) = content {
                    s.push_str(t);
                }
                for call in tool_calls {
                    s.push_str(&call.name);
                    s.push(' ');
                    let mut args: Vec<(&String, &Value)> = call.arguments.iter().collect();
                    args.sort_by(|a, b| a.0.cmp(b.0));
                    for (k, v) in args {
                        s.push_str(k);
                        s.push(' ');
                        match v {
                            Value::String(t) => s.push_str(t),
                            other => s.push_str(&other.to_string()),
                        }
                        s.push(' ');
                    }
                }
            }
        }
        s.push('\n');
    }
    s.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer: a fast, well-spread hash of a u64.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn shingles(text: &str, k: usize) -> HashSet<u64> {
    let words: Vec<u64> = text
        .split(' ')
        .map(|w| {
            let h = blake3::hash(w.as_bytes());
            u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
        })
        .collect();
    if words.len() < k {
        return [words.iter().fold(0u64, |a, w| mix(a ^ w))]
            .into_iter()
            .collect();
    }
    words
        .windows(k)
        .map(|w| w.iter().fold(0u64, |a, x| mix(a.rotate_left(7) ^ x)))
        .collect()
}

const BANDS: usize = 16;
const ROWS: usize = 4;

fn minhash(s: &HashSet<u64>) -> [u64; BANDS * ROWS] {
    let mut sig = [u64::MAX; BANDS * ROWS];
    for &x in s {
        for (i, slot) in sig.iter_mut().enumerate() {
            let h = mix(x ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            if h < *slot {
                *slot = h;
            }
        }
    }
    sig
}

fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Validates `conversations` against `tools`; turn bounds come from the conversation's topic
/// (`meta.topic`) when it names one of `topics`, else from the widest range of all topics.
pub fn validate(
    conversations: Vec<Conversation>,
    tools: &ToolSet,
    topics: &[MutationTopic],
    cfg: &ValidateConfig,
) -> ValidateOutcome {
    let validator = tools.validator();
    let lo = topics.iter().map(|t| t.min_turns).min().unwrap_or(0);
    let hi = topics
        .iter()
        .map(|t| t.max_turns)
        .max()
        .unwrap_or(usize::MAX);
    let mut out = ValidateOutcome::default();
    let mut survivors = Vec::new();
    for c in conversations {
        let (tlo, thi) = c
            .meta
            .get("topic")
            .and_then(Value::as_str)
            .and_then(|n| topics.iter().find(|t| t.name == n))
            .map_or((lo, hi), |t| (t.min_turns, t.max_turns));
        let n = turns(&c);
        let chars = text_chars(&c);
        let verdict = structure(&c, tools, &validator)
            .and_then(|()| {
                if n < tlo || n > thi {
                    Err((
                        Rule::TurnCount,
                        format!("{n} turns, bucket allows {tlo}..={thi}"),
                    ))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| {
                if chars > cfg.max_chars {
                    Err((
                        Rule::MaxLength,
                        format!("{chars} characters, maximum {}", cfg.max_chars),
                    ))
                } else {
                    Ok(())
                }
            });
        match verdict {
            Ok(()) => survivors.push(c),
            Err((rule, detail)) => out.rejected.push(Rejection {
                rule,
                detail,
                conversation: c,
            }),
        }
    }

    // Duplicates, against conversations accepted earlier in input order.
    let mut exact: HashMap<blake3::Hash, String> = HashMap::new();
    let mut bands: HashMap<(usize, u64), Vec<usize>> = HashMap::new();
    let mut kept: Vec<(Conversation, HashSet<u64>)> = Vec::new();
    for c in survivors {
        let norm = normalized(&c);
        let h = blake3::hash(norm.as_bytes());
        if let Some(first) = exact.get(&h) {
            out.rejected.push(Rejection {
                rule: Rule::ExactDuplicate,
                detail: format!("same as {first}"),
                conversation: c,
            });
            continue;
        }
        let sh = shingles(&norm, cfg.shingle);
        let sig = minhash(&sh);
        let keys: Vec<(usize, u64)> = (0..BANDS)
            .map(|b| {
                (
                    b,
                    sig[b * ROWS..(b + 1) * ROWS]
                        .iter()
                        .fold(0u64, |a, x| mix(a ^ x)),
                )
            })
            .collect();
        let mut candidates: Vec<usize> = keys
            .iter()
            .filter_map(|k| bands.get(k))
            .flatten()
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let near = candidates.into_iter().find_map(|i| {
            let j = jaccard(&sh, &kept[i].1);
            (j >= cfg.near_duplicate).then(|| (kept[i].0.id.clone(), j))
        });
        if let Some((other, j)) = near {
            out.rejected.push(Rejection {
                rule: Rule::NearDuplicate,
                detail: format!("shingle overlap {j:.3} with {other}"),
                conversation: c,
            });
            continue;
        }
        exact.insert(h, c.id.clone());
        let idx = kept.len();
        for k in keys {
            bands.entry(k).or_default().push(idx);
        }
        kept.push((c, sh));
    }

    // Length outliers against the robust spread of what is left.
    let mut lens: Vec<usize> = kept.iter().map(|(c, _)| text_chars(c)).collect();
    lens.sort_unstable();
    let median = lens.get(lens.len() / 2).copied().unwrap_or(0) as f64;
    let mut devs: Vec<f64> = lens.iter().map(|&l| (l as f64 - median).abs()).collect();
    devs.sort_by(f64::total_cmp);
    let mad = devs.get(devs.len() / 2).copied().unwrap_or(0.0) * 1.4826;
    for (c, _) in kept {
        let l = text_chars(&c) as f64;
        if mad > 0.0 && (l - median).abs() > cfg.length_k * mad {
            out.rejected.push(Rejection {
                rule: Rule::LengthOutlier,
                detail: format!("{l} characters, median {median}, robust deviation {mad:.0}"),
                conversation: c,
            });
        } else {
            out.accepted.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::ToolCall;
    use serde_json::{json, Map};

    fn tools() -> ToolSet {
        ToolSet::from_openai(
            &json!([{"type": "function", "function": {"name": "Find", "x-kind": "search",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": false}}}]),
            crate::tools::DEFAULT_RESPOND,
            &[],
            "t",
        )
        .unwrap()
    }

    fn say(t: &str) -> Message {
        let mut a = Map::new();
        a.insert("message".into(), t.into());
        Message::call(ToolCall::new("respond_to_user", a))
    }

    fn find(city: Value) -> Message {
        let mut a = Map::new();
        a.insert("city".into(), city);
        Message::call(ToolCall::new("Find", a))
    }

    fn user(t: &str) -> Message {
        Message::User { content: t.into() }
    }

    fn result() -> Message {
        Message::Tool {
            tool_call_id: String::new(),
            content: "[]".into(),
        }
    }

    fn conv(id: &str, messages: Vec<Message>) -> Conversation {
        let mut c = Conversation {
            id: id.into(),
            messages,
            meta: Map::new(),
        };
        c.assign_call_ids();
        c
    }

    fn good(id: &str, city: &str) -> Conversation {
        conv(
            id,
            vec![
                user(&format!("find something in {city} for me please today")),
                find(city.into()),
                result(),
                say(&format!("nothing found in {city}, sorry about that")),
                user("ok thanks anyway, goodbye"),
                say("goodbye and have a nice day"),
            ],
        )
    }

    fn rule_of(c: Conversation) -> Option<Rule> {
        let topics = vec![MutationTopic {
            name: "any".into(),
            min_turns: 3,
            max_turns: 10,
            description: String::new(),
        }];
        let out = validate(
            vec![c],
            &tools(),
            &topics,
            &ValidateConfig {
                length_k: 1e9,
                ..Default::default()
            },
        );
        out.rejected.first().map(|r| r.rule)
    }

    #[test]
    fn each_rule_catches_its_fault() {
        assert_eq!(rule_of(good("a", "Paris")), None);
        let mut bad = good("a", "Paris");
        bad.messages[1] = find(json!(3));
        assert_eq!(rule_of(bad), Some(Rule::Schema), "wrong argument type");
        let mut unknown = good("a", "Paris");
        unknown.messages[5] = Message::call(ToolCall::new("Book", Map::new()));
        assert_eq!(rule_of(unknown), Some(Rule::Schema), "unknown function");
        assert_eq!(
            rule_of(conv("b", vec![say("hi"), user("x"), say("y")])),
            Some(Rule::Roles)
        );
        assert_eq!(
            rule_of(conv("c", vec![user("a"), user("b"), say("c")])),
            Some(Rule::Roles)
        );
        assert_eq!(
            rule_of(conv("d", vec![user("a"), find("X".into()), say("c")])),
            Some(Rule::Results)
        );
        assert_eq!(
            rule_of(conv("e", vec![user("a"), result(), say("c")])),
            Some(Rule::Results)
        );
        assert_eq!(
            rule_of(conv("f", vec![user("a"), say("b"), user("c")])),
            Some(Rule::Roles),
            "ends with the user"
        );
        let one = say("b").tool_calls()[0].clone();
        let two = Message::Assistant {
            content: None,
            tool_calls: vec![one.clone(), one],
        };
        assert_eq!(rule_of(conv("g", vec![user("a"), two])), Some(Rule::Roles));
        assert_eq!(
            rule_of(conv("h", vec![user("a"), say("b")])),
            Some(Rule::TurnCount)
        );
        let mut long = good("i", "Paris");
        long.messages[0] = user(&"word ".repeat(5000));
        assert_eq!(rule_of(long), Some(Rule::MaxLength));
    }

    #[test]
    fn duplicates_and_outliers() {
        let topics = vec![MutationTopic {
            name: "any".into(),
            min_turns: 2,
            max_turns: 10,
            description: String::new(),
        }];
        let mut convs: Vec<Conversation> = [
            "Paris", "Lyon", "Nice", "Lille", "Nantes", "Brest", "Dijon", "Metz",
        ]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut x = good(&format!("c{i}"), c);
            x.messages[4] = user(&format!("{c} is a fine town, but number {i} thanks"));
            x
        })
        .collect();
        convs.push(good("dup", "Paris"));
        let mut case = good("case", "PARIS");
        case.messages = good("x", "Paris").messages;
        case.messages[0] = user("FIND something   in Paris for me please today");
        convs.push(case);
        let mut near = good("near", "Paris");
        near.messages[5] = say("goodbye and have a nice day!!");
        convs.push(near);
        let mut outlier = good("outlier", "Toulouse");
        outlier.messages[3] = say(&"Toulouse has so much to offer you ".repeat(60));
        convs.push(outlier);
        let out = validate(convs, &tools(), &topics, &ValidateConfig::default());
        let rules: Vec<(String, Rule)> = out
            .rejected
            .iter()
            .map(|r| (r.conversation.id.clone(), r.rule))
            .collect();
        assert!(
            rules.contains(&("case".into(), Rule::ExactDuplicate)),
            "{rules:?}"
        );
        assert!(
            rules.contains(&("near".into(), Rule::NearDuplicate)),
            "{rules:?}"
        );
        assert!(
            rules.contains(&("outlier".into(), Rule::LengthOutlier)),
            "{rules:?}"
        );
        assert_eq!(out.accepted.len(), 9, "{rules:?}");
        assert_eq!(out.counts()[&Rule::Schema], 0);
    }
}
