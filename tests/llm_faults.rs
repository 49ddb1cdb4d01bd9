//! The LLM client and HTTP teacher against the in-process mock server with injected faults:
//! 429 + Retry-After, 5xx, slow answers, truncated bodies, prose, unknown functions, budgets,
//! caching and resume without repeated requests, and the API key's path.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tracelab::llm::{ChatMessage, LlmClient, LlmConfig, LlmError};
use tracelab::llm_mock::{MockRequest, MockServer, Reply};
use tracelab::task::{Task, TaskSettings};
use tracelab::teacher::http::{parse_answer, HttpTeacher};
use tracelab::teacher::{plan_jobs, Context, Teacher};
use tracelab::tools::{ToolSet, DEFAULT_RESPOND};

use crate::common;

fn config(server: &MockServer) -> LlmConfig {
    let mut c = LlmConfig::new(server.base_url(), "mock-model");
    c.backoff_s = 0.01;
    c.timeout_s = 2.0;
    c
}

fn msgs(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::user(text)]
}

fn tools() -> ToolSet {
    ToolSet::from_openai(
        &json!([{"type": "function", "function": {"name": "Find", "x-kind": "search",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": false}}}]),
        DEFAULT_RESPOND,
        &[],
        "test",
    )
    .unwrap()
}

const GOOD: &str = r#"{"messages": [
 {"role": "user", "content": "Find something in Paris"},
 {"role": "assistant", "content": null, "tool_calls": [{"id": "a", "type": "function", "function": {"name": "Find", "arguments": "{\"city\": \"Paris\"}"}}]},
 {"role": "tool", "tool_call_id": "a", "content": "[{\"name\": \"X\"}]"},
 {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "respond_to_user", "arguments": {"message": "X is in Paris."}}}]}
]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_429_with_retry_after_then_500_then_succeeds() {
    let server = MockServer::start(
        0,
        Arc::new(|r: &MockRequest| match r.ordinal {
            0 => Reply::Status {
                code: 429,
                retry_after: Some(1),
            },
            1 => Reply::Status {
                code: 503,
                retry_after: None,
            },
            _ => Reply::Content("hello".into()),
        }),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = LlmClient::new(config(&server), dir.path()).unwrap();
    let t0 = Instant::now();
    let c = client.complete(&msgs("hi"), 0).await.unwrap();
    assert_eq!(c.text, "hello");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(server.total(), 3);
    assert_eq!(client.stats().retries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_and_truncated_bodies_are_retried() {
    let server = MockServer::start(
        0,
        Arc::new(|r: &MockRequest| match r.ordinal {
            0 => Reply::Slow(
                Duration::from_millis(800),
                Box::new(Reply::Content("late".into())),
            ),
            1 => Reply::TruncatedBody,
            _ => Reply::Content("on time".into()),
        }),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server);
    cfg.timeout_s = 0.3;
    let client = LlmClient::new(cfg, dir.path()).unwrap();
    assert_eq!(
        client.complete(&msgs("hi"), 0).await.unwrap().text,
        "on time"
    );
    assert_eq!(client.stats().retries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_retries_and_does_not_retry_400() {
    let server = MockServer::start(
        0,
        Arc::new(|r: &MockRequest| {
            if r.body["messages"][0]["content"] == "bad" {
                Reply::Status {
                    code: 400,
                    retry_after: None,
                }
            } else {
                Reply::Status {
                    code: 500,
                    retry_after: None,
                }
            }
        }),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server);
    cfg.retries = 2;
    let client = LlmClient::new(cfg, dir.path()).unwrap();
    match client.complete(&msgs("x"), 0).await {
        Err(LlmError::Status { status: 500, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(server.total(), 3, "first attempt + 2 retries");
    match client.complete(&msgs("bad"), 0).await {
        Err(LlmError::Status { status: 400, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(server.total(), 4, "400 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_accepted_answers_only_and_respects_the_budget() {
    let server = MockServer::start(
        0,
        Arc::new(|r: &MockRequest| {
            // The first answer to each request is prose; asking again gets the conversation.
            if r.seen_before == 0 {
                Reply::Content("Sure! Here is a nice conversation.".into())
            } else {
                Reply::Content(GOOD.into())
            }
        }),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = tools();
    let client = LlmClient::new(config(&server), dir.path()).unwrap();
    let parse = |s: &str| parse_answer(s, &t);
    match client.complete_parsed(&msgs("q"), 7, parse).await {
        Err(LlmError::Rejected(why)) => assert!(why.contains("prose"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.stats().stored, 0, "a rejected answer is not cached");
    let (c, first) = client.complete_parsed(&msgs("q"), 7, parse).await.unwrap();
    assert!(!first.cached);
    assert_eq!(c.calls().count(), 2);
    let (_, again) = client.complete_parsed(&msgs("q"), 7, parse).await.unwrap();
    assert!(again.cached, "served from the cache");
    assert_eq!(server.total(), 2, "the cached answer cost no request");
    // Another sample index is another request.
    let mut cfg = config(&server);
    cfg.budget = Some(1);
    let limited = LlmClient::new(cfg, dir.path()).unwrap();
    assert!(
        limited.complete_parsed(&msgs("q"), 7, parse).await.is_ok(),
        "cache hits cost no budget"
    );
    let _ = limited.complete(&msgs("q"), 8).await;
    match limited.complete(&msgs("q"), 9).await {
        Err(LlmError::BudgetExhausted(1)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(server.total(), 3, "the spent budget sent nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_goes_in_the_header_and_nowhere_else() {
    let server = MockServer::start(0, Arc::new(|_: &MockRequest| Reply::Content("ok".into())))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: this test binary sets the variable before any thread reads it, and only here.
    unsafe { std::env::set_var("TRACELAB_TEST_KEY", "sk-secret-123") };
    let mut cfg = config(&server);
    cfg.api_key_env = Some("TRACELAB_TEST_KEY".into());
    let client = LlmClient::new(cfg.clone(), dir.path()).unwrap();
    client.complete(&msgs("hi"), 0).await.unwrap();
    assert_eq!(
        server.authorizations(),
        vec![Some("Bearer sk-secret-123".to_string())]
    );
    for e in common::files_under(dir.path()) {
        let text = std::fs::read_to_string(&e).unwrap();
        assert!(
            !text.contains("sk-secret"),
            "key leaked into {}",
            e.display()
        );
    }
    assert!(!format!("{client:?}").contains("sk-secret"));
    assert!(!serde_json::to_string(&cfg).unwrap().contains("sk-secret"));
    cfg.api_key_env = Some("TRACELAB_TEST_KEY_UNSET".into());
    assert!(matches!(
        LlmClient::new(cfg, dir.path()),
        Err(LlmError::MissingKey(_))
    ));
}

#[test]
fn http_teacher_records_failures_and_a_rerun_repeats_only_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    // Job 1 answers prose, job 2 calls an unknown function, job 3 gets 500s, others are good;
    // from the second sight of a request on, every answer is good.
    let server = rt
        .block_on(MockServer::start(
            0,
            Arc::new(|r: &MockRequest| {
                let seed = r.body["seed"].as_u64().unwrap();
                if r.seen_before > 0 && seed != 3 {
                    return Reply::Content(GOOD.into());
                }
                match seed {
                    1 => Reply::Content("I cannot do that, but here is some prose.".into()),
                    2 => Reply::Content(GOOD.replace("\"name\": \"Find\"", "\"name\": \"Book\"")),
                    3 if r.seen_before < 3 => Reply::Status {
                        code: 500,
                        retry_after: None,
                    },
                    _ => Reply::Content(format!("```json\n{GOOD}\n```")),
                }
            }),
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = tools();
    let task = Task {
        settings: TaskSettings::default(),
        description: "Find places.".into(),
    };
    let ctx = Context {
        task: &task,
        tools: &t,
        traces: &[],
    };
    let mut cfg = config(&server);
    cfg.retries = 2;
    let jobs = plan_jobs(8, &task.settings.mutation_topics, 1);
    let run = |cfg: LlmConfig| {
        let teacher = HttpTeacher::new(&ctx, LlmClient::new(cfg, dir.path()).unwrap(), 3);
        let out = teacher
            .generate(&jobs, &|_| {}, &AtomicBool::new(false))
            .unwrap();
        (out, teacher.stats())
    };
    let (out, _) = run(cfg.clone());
    let failed: Vec<u64> = out
        .iter()
        .filter_map(|o| o.as_ref().err().map(|f| f.index))
        .collect();
    assert_eq!(failed, vec![1, 2, 3]);
    let reasons: Vec<String> = out
        .iter()
        .filter_map(|o| o.as_ref().err().map(|f| f.reason.clone()))
        .collect();
    assert!(reasons[0].contains("prose"), "{reasons:?}");
    assert!(reasons[1].contains("unknown function"), "{reasons:?}");
    assert!(reasons[2].contains("500"), "{reasons:?}");
    let before = server.total();
    let (out2, stats) = run(cfg);
    assert!(
        out2.iter().all(|o| o.is_ok()),
        "{:?}",
        out2.iter()
            .filter_map(|o| o.as_ref().err())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        stats.cache_hits, 5,
        "the five good answers came from the cache"
    );
    assert_eq!(
        server.total() - before,
        3,
        "only the three failed jobs were asked again"
    );
}
