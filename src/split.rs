//! The held-out test split and its expansion into evaluation pairs.
//!
//! Test conversations leave the pool before any corruption, and never come back: besides the
//! chosen conversations themselves, every pool conversation with the same normalized content
//! (see [`content_key`]) is removed too, so a duplicate in the data or a user-given test file
//! that overlaps the pool cannot leak into training.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::conversation::{Conversation, EvalPair, Message, ToolCall};

/// The outcome of separating test conversations from a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Held-out conversations, in pool order (or file order for a given test file).
    pub test: Vec<Conversation>,
    /// What remains for training, in pool order.
    pub pool: Vec<Conversation>,
    /// Pool conversations removed because their content equals a test conversation's (besides
    /// the chosen ones themselves).
    pub removed_duplicates: usize,
}

/// Errors of the split.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// More test conversations were asked for than the pool has.
    #[error("asked for {wanted} test conversations but the pool has only {available}")]
    TooFew {
        /// Requested test size.
        wanted: usize,
        /// Pool size.
        available: usize,
    },
}

/// Chooses `n` test conversations with a seeded shuffle and removes them (and content
/// duplicates of them) from the pool. Both outputs keep the input order.
pub fn hold_out(pool: Vec<Conversation>, n: usize, seed: u64) -> Result<Split, SplitError> {
    if n > pool.len() {
        return Err(SplitError::TooFew {
            wanted: n,
            available: pool.len(),
        });
    }
    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let chosen: BTreeSet<usize> = order[..n].iter().copied().collect();
    let mut test = Vec::with_capacity(n);
    let mut rest = Vec::with_capacity(pool.len() - n);
    for (i, c) in pool.into_iter().enumerate() {
        if chosen.contains(&i) {
            test.push(c);
        } else {
            rest.push(c);
        }
    }
    let (pool, removed_duplicates) = remove_matching(rest, &test);
    Ok(Split {
        test,
        pool,
        removed_duplicates,
    })
}

/// Uses a given test set: removes from the pool every conversation whose normalized content
/// equals one of `test`.
pub fn with_test_set(pool: Vec<Conversation>, test: Vec<Conversation>) -> Split {
    let (pool, removed_duplicates) = remove_matching(pool, &test);
    Split {
        test,
        pool,
        removed_duplicates,
    }
}

fn remove_matching(pool: Vec<Conversation>, test: &[Conversation]) -> (Vec<Conversation>, usize) {
    let keys: BTreeSet<String> = test.iter().map(content_key).collect();
    let before = pool.len();
    let kept: Vec<Conversation> = pool
        .into_iter()
        .filter(|c| !keys.contains(&content_key(c)))
        .collect();
    let removed = before - kept.len();
    (kept, removed)
}

/// A conversation's content in normalized form: roles, texts with whitespace collapsed, calls as
/// name plus arguments with sorted keys; ids, call ids and metadata left out. Two conversations
/// with the same key are the same conversation for the purpose of the split.
pub fn content_key(c: &Conversation) -> String {
    fn text(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            Value::String(s) => Value::String(text(s)),
            other => other.clone(),
        }
    }
    let mut parts = Vec::with_capacity(c.messages.len());
    for m in &c.messages {
        let p = match m {
            Message::System { content } => format!("s:{}", text(content)),
            Message::User { content } => format!("u:{}", text(content)),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let calls: Vec<String> = tool_calls
                    .iter()
                    .map(|t| format!("{}{}", t.name, sorted(&Value::Object(t.arguments.clone()))))
                    .collect();
                format!(
                    "a:{}|{}",
                    text(content.as_deref().unwrap_or("")),
                    calls.join(";")
                )
            }
            Message::Tool { content, .. } => {
                // Results compare as JSON when they are JSON, so formatting does not matter.
                match content.parse::<Value>() {
                    Ok(v) => format!("t:{}", sorted(&v)),
                    Err(_) => format!("t:{}", text(content)),
                }
            }
        };
        parts.push(p);
    }
    parts.join("\n")
}

/// Expands a conversation into evaluation pairs: one per assistant message with a call, the
/// prefix before it as the question and its (first) call as the reference. Ids are
/// `<conversation id>#<n>` with `n` counting assistant calls from 0. The reference keeps no call
/// id (pairs store calls as `{"name", "arguments"}`).
pub fn expand(c: &Conversation) -> Vec<EvalPair> {
    let mut pairs = Vec::new();
    for (i, m) in c.messages.iter().enumerate() {
        let Some(call) = m.tool_calls().first() else {
            continue;
        };
        pairs.push(EvalPair {
            id: format!("{}#{}", c.id, pairs.len()),
            question: c.messages[..i].to_vec(),
            answer: ToolCall::new(call.name.clone(), call.arguments.clone()),
        });
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::Arguments;

    fn conv(id: &str, user: &str) -> Conversation {
        let mut args = Arguments::new();
        args.insert("message".into(), "hi".into());
        Conversation {
            id: id.into(),
            messages: vec![
                Message::User {
                    content: user.into(),
                },
                Message::call(ToolCall::new("respond_to_user", args.clone())),
                Message::User {
                    content: "more".into(),
                },
                Message::call(ToolCall::new("respond_to_user", args)),
            ],
            meta: Default::default(),
        }
    }

    #[test]
    fn expansion_and_duplicates() {
        let c = conv("a", "hello");
        let pairs = expand(&c);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].id, "a#1");
        assert_eq!(pairs[1].question.len(), 3);
        let pool: Vec<Conversation> = (0..10)
            .map(|i| conv(&i.to_string(), &format!("u{i}")))
            .chain([conv("dup", "u3  ")])
            .collect();
        let s = with_test_set(pool.clone(), vec![conv("x", "u3")]);
        assert_eq!(
            s.pool.len(),
            9,
            "u3 and its whitespace-variant duplicate left"
        );
        assert_eq!(s.removed_duplicates, 2);
        for seed in 0..20 {
            let s = hold_out(pool.clone(), 5, seed).unwrap();
            assert_eq!(s.test.len(), 5);
            assert_eq!(s.test.len() + s.pool.len() + s.removed_duplicates, 11);
            let keys: BTreeSet<String> = s.test.iter().map(content_key).collect();
            assert!(s.pool.iter().all(|c| !keys.contains(&content_key(c))));
        }
        assert!(hold_out(pool, 12, 0).is_err());
    }
}
