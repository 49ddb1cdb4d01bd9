//! Generated alternative names for functions and parameters, by function kind and word shape
//! only (no domain vocabulary), so renaming applies to any service.

use crate::tools::FunctionKind;

/// Verbs a search function may be renamed to.
const SEARCH_VERBS: &[&str] = &[
    "search", "lookup", "query", "get", "list", "browse", "fetch", "discover", "scan",
];
/// Verbs a transaction function may be renamed to.
const TRANSACTION_VERBS: &[&str] = &[
    "book", "make", "create", "submit", "place", "confirm", "request", "secure", "commit",
];
/// Names a reply function may be renamed to (the reply role is the same in every domain).
const RESPOND_NAMES: &[&str] = &[
    "send_user_message",
    "reply_to_user",
    "messageUser",
    "PostReply",
    "answer_user",
    "sayToUser",
    "notify_user",
    "UserMessage",
    "write_reply",
];
/// Leading verbs that mark a function as a transaction when nothing else says its kind.
const TRANSACTION_HINTS: &[&str] = &[
    "reserve", "book", "buy", "make", "transfer", "pay", "add", "schedule", "rent", "order",
    "create", "set", "submit", "place", "purchase", "confirm", "cancel", "request", "send",
];

/// Splits an identifier into lowercase words (the text layer's reading of names).
pub(crate) use tracelab_core::text::identifier_words as words;

fn cap(w: &str) -> String {
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn pascal(ws: &[String]) -> String {
    ws.iter().map(|w| cap(w)).collect()
}

fn camel(ws: &[String]) -> String {
    let mut s = ws.first().cloned().unwrap_or_default();
    s.extend(ws.iter().skip(1).map(|w| cap(w)));
    s
}

fn snake(ws: &[String]) -> String {
    ws.join("_")
}

/// The kind a function name suggests by its leading verb (used only when no schema says it).
pub(crate) fn kind_from_verb(name: &str) -> FunctionKind {
    match words(name).first() {
        Some(v) if TRANSACTION_HINTS.contains(&v.as_str()) => FunctionKind::Transaction,
        _ => FunctionKind::Search,
    }
}

/// Up to `n` alternative names for a function of `kind`: a new verb with the same object words,
/// cycling PascalCase, snake_case and camelCase; reply functions take from a fixed list of reply
/// names. No alternative equals (ignoring case) the name itself or any name in `avoid`.
pub fn function_alternatives(
    name: &str,
    kind: FunctionKind,
    n: usize,
    avoid: &[&str],
) -> Vec<String> {
    let ws = words(name);
    let taken = |c: &str, out: &[String]| {
        c.eq_ignore_ascii_case(name)
            || avoid.iter().any(|a| a.eq_ignore_ascii_case(c))
            || out.iter().any(|o| o.eq_ignore_ascii_case(c))
    };
    let mut out = Vec::new();
    let candidates: Vec<String> = match kind {
        FunctionKind::Respond => RESPOND_NAMES.iter().map(|s| s.to_string()).collect(),
        FunctionKind::Search | FunctionKind::Transaction => {
            let verbs = if kind == FunctionKind::Search {
                SEARCH_VERBS
            } else {
                TRANSACTION_VERBS
            };
            let object: Vec<String> = if ws.len() > 1 {
                ws[1..].to_vec()
            } else {
                ws.clone()
            };
            let first = ws.first().map(String::as_str).unwrap_or("");
            verbs
                .iter()
                .filter(|v| **v != first)
                .enumerate()
                .map(|(i, v)| {
                    let mut w = vec![v.to_string()];
                    w.extend(object.iter().cloned());
                    match i % 3 {
                        0 => pascal(&w),
                        1 => snake(&w),
                        _ => camel(&w),
                    }
                })
                .collect()
        }
    };
    for c in candidates {
        if out.len() == n {
            break;
        }
        if !taken(&c, &out) {
            out.push(c);
        }
    }
    out
}

/// Up to `n` alternative names for a parameter: other word shapes and affixes (`partySize`,
/// `PartySize`, `party_size_value`, `req_party_size`, `party_size_param`, `PARTY_SIZE`, …). None
/// equals the name itself or any name in `avoid` (exact comparison: JSON keys are case-sensitive).
pub fn parameter_alternatives(name: &str, n: usize, avoid: &[&str]) -> Vec<String> {
    let ws = words(name);
    let s = snake(&ws);
    let candidates = [
        camel(&ws),
        pascal(&ws),
        format!("{s}_value"),
        format!("req_{s}"),
        format!("{s}_param"),
        s.to_uppercase(),
        ws.join("-"),
        format!("arg_{s}"),
        ws.concat(),
        format!("{s}_field"),
        format!("in_{s}"),
    ];
    let mut out: Vec<String> = Vec::new();
    for c in candidates {
        if out.len() == n {
            break;
        }
        if c != name && !avoid.contains(&c.as_str()) && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_splitting_and_alternatives() {
        assert_eq!(words("FindRestaurants"), ["find", "restaurants"]);
        assert_eq!(words("respond_to_user"), ["respond", "to", "user"]);
        assert_eq!(words("getHTTPStatus"), ["get", "http", "status"]);
        let f = function_alternatives("FindRestaurants", FunctionKind::Search, 6, &[]);
        assert_eq!(
            f,
            [
                "SearchRestaurants",
                "lookup_restaurants",
                "queryRestaurants",
                "GetRestaurants",
                "list_restaurants",
                "browseRestaurants"
            ]
        );
        let p = parameter_alternatives("city", 6, &[]);
        assert_eq!(p.len(), 6);
        assert!(!p.contains(&"city".to_string()));
        assert_eq!(
            parameter_alternatives("party_size", 2, &[]),
            ["partySize", "PartySize"]
        );
        assert_eq!(kind_from_verb("ReserveHotel"), FunctionKind::Transaction);
        assert_eq!(kind_from_verb("SearchHotel"), FunctionKind::Search);
        let r = function_alternatives("respond_to_user", FunctionKind::Respond, 6, &[]);
        assert_eq!(r.len(), 6);
    }
}
