//! Trace formats: lenient OpenAI JSONL reading, standard writing, round trips, pairs, and every
//! malformed-input class (error naming file:line, or skipped and listed).

use std::path::Path;

use serde_json::{json, Value};
use tracelab::conversation::{EvalPair, Message, ToolCall};
use tracelab::formats::{
    read_conversations, read_pairs, write_conversations, write_pairs, FormatError, OnBadTrace,
};

fn write(dir: &Path, name: &str, lines: &[Value]) -> std::path::PathBuf {
    let p = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&p, text).unwrap();
    p
}

fn study_style_line() -> Value {
    json!({
        "tools": [{"type": "function", "function": {"name": "FindRestaurants", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "You help find restaurants."},
            {"role": "user", "content": "Italian food in Palo Alto please"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c0", "type": "function", "function": {"name": "FindRestaurants",
                 "arguments": "{\"cuisine\": \"Italian\", \"city\": \"Palo Alto\"}"}}]},
            {"role": "user", "content": "[{\"restaurant_name\": \"Osteria\", \"city\": \"Palo Alto\"}]"},
            {"role": "assistant", "tool_calls": [
                {"name": "respond_to_user", "arguments": {"message": "Osteria is nice."}}]},
            {"role": "user", "content": "Book it at 6pm"},
            {"role": "assistant", "content": "Booked."}
        ]
    })
}

#[test]
fn lenient_read_then_standard_write_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let standard_tool = json!({"id": "conv-2", "meta": {"service": "X"}, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "tool_calls": [{"id": "a", "type": "function",
            "function": {"name": "Find", "arguments": {"city": "SF"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": [{"name": "A"}]},
        {"role": "assistant", "tool_calls": [{"name": "respond_to_user", "parameters": {"message": "A"}}]}
    ]});
    let p = write(
        dir.path(),
        "in.jsonl",
        &[study_style_line(), json!({}), standard_tool],
    );
    // The empty object line is malformed: skip it and check it is listed.
    let read = read_conversations(&p, OnBadTrace::Skip).unwrap();
    assert_eq!(read.conversations.len(), 2);
    assert_eq!(read.skipped.len(), 1);
    assert!(
        read.skipped[0].contains("in.jsonl:2:"),
        "{:?}",
        read.skipped
    );

    let c = &read.conversations[0];
    assert_eq!(c.id, "in.jsonl:1");
    assert!(c.meta.contains_key("tools"));
    match &c.messages[3] {
        Message::Tool {
            tool_call_id,
            content,
        } => {
            assert_eq!(tool_call_id, "c0");
            assert!(content.contains("Osteria"));
        }
        m => panic!("expected a tool result, got {m:?}"),
    }
    let last = &c.messages[6].tool_calls()[0];
    assert_eq!(last.name, "respond_to_user");
    assert_eq!(last.arguments["message"], "Booked.");
    let d = &read.conversations[1];
    assert_eq!(d.id, "conv-2");
    assert_eq!(
        d.messages[0],
        Message::User {
            content: "hi".into()
        }
    );
    assert!(
        matches!(&d.messages[2], Message::Tool { content, .. } if content == "[{\"name\":\"A\"}]")
    );

    // Standard form out, the same conversations back, byte-identical on a second write.
    let out = dir.path().join("out.jsonl");
    write_conversations(&out, &read.conversations).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["messages"][3]["role"], "tool");
    assert!(first["messages"][2]["tool_calls"][0]["function"]["arguments"].is_string());
    let back = read_conversations(&out, OnBadTrace::Error).unwrap();
    assert_eq!(back.conversations, read.conversations);
    let out2 = dir.path().join("out2.jsonl");
    write_conversations(&out2, &back.conversations).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
}

#[test]
fn pairs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = serde_json::Map::new();
    args.insert("city".into(), "SF".into());
    let pairs = vec![EvalPair {
        id: "c#0".into(),
        question: vec![Message::User {
            content: "food in SF".into(),
        }],
        answer: ToolCall::new("Find", args),
    }];
    let p = dir.path().join("pairs.jsonl");
    write_pairs(&p, &pairs).unwrap();
    let row: Value = serde_json::from_str(std::fs::read_to_string(&p).unwrap().trim()).unwrap();
    assert_eq!(
        row["answer"],
        json!({"name": "Find", "arguments": {"city": "SF"}})
    );
    assert_eq!(read_pairs(&p).unwrap(), pairs);
    std::fs::write(
        &p,
        "{\"id\": \"x\", \"question\": [], \"answer\": {\"arguments\": {}}}\n",
    )
    .unwrap();
    let e = read_pairs(&p).unwrap_err().to_string();
    assert!(
        e.contains("pairs.jsonl:1:") && e.contains("without a name"),
        "{e}"
    );
}

/// Each malformed class: the error names file:line and the problem; with Skip it is listed.
#[test]
fn every_malformed_class_is_an_error_or_listed() {
    let good = json!({"messages": [{"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]});
    let cases: Vec<(&str, String)> = vec![
        ("bad JSON", "{\"messages\": [".to_string()),
        ("not an object", "[1, 2]".to_string()),
        ("messages", json!({"id": "x"}).to_string()),
        (
            "unknown role",
            json!({"messages": [{"role": "robot", "content": "x"}]}).to_string(),
        ),
        (
            "without a name",
            json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]})
                .to_string(),
        ),
        (
            "not a JSON object",
            json!({"messages": [{"role": "assistant", "tool_calls": [{"name": "F", "arguments": "[1]"}]}]})
                .to_string(),
        ),
        (
            "not a JSON object",
            json!({"messages": [{"role": "assistant", "tool_calls": [{"name": "F", "arguments": 7}]}]})
                .to_string(),
        ),
        (
            "not valid JSON",
            json!({"messages": [{"role": "assistant", "tool_calls": [{"name": "F", "arguments": "{oops"}]}]})
                .to_string(),
        ),
        (
            "neither text nor a tool call",
            json!({"messages": [{"role": "assistant", "content": null}]}).to_string(),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (needle, bad)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&p, format!("{good}\n\n{bad}\n{good}\n")).unwrap();
        let e = read_conversations(&p, OnBadTrace::Error).unwrap_err();
        let FormatError::Invalid { line, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(*line, 3, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("bad{i}.jsonl:3:")) && msg.contains(needle),
            "case {i}: {msg} should mention {needle:?}"
        );
        let r = read_conversations(&p, OnBadTrace::Skip).unwrap();
        assert_eq!(r.conversations.len(), 2);
        assert_eq!(r.skipped.len(), 1);
        assert!(r.skipped[0].contains(needle), "{:?}", r.skipped);
    }
    let missing = dir.path().join("nope.jsonl");
    assert!(matches!(
        read_conversations(&missing, OnBadTrace::Skip),
        Err(FormatError::Io { .. })
    ));
}
