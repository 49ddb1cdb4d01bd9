//! Benchmark driver for the HTTP teacher (used by `bench/teacher_http.sh`).
//!
//! - `serve PORT`: a mock OpenAI server on 127.0.0.1:PORT answering every request at once with a
//!   valid conversation; `GET /stats` returns its request counts by body hash.
//! - `run BASE_URL N CONCURRENCY CACHE_DIR`: generates N conversations with the HTTP teacher
//!   (real prompts: SGD Restaurants_1 traces as context when `../shared/sgd` exists) and prints
//!   one JSON line of results.
//! - `cached-ids CACHE_DIR`: prints the server response id of every cached answer, one a line
//!   (the mock uses the request body hash as id, so the script can match cache and server).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tracelab::conversation::Conversation;
use tracelab::llm::{LlmClient, LlmConfig};
use tracelab::llm_mock::{MockRequest, MockServer, Reply};
use tracelab::task::{Task, TaskSettings};
use tracelab::teacher::http::HttpTeacher;
use tracelab::teacher::{plan_jobs, Context, Teacher};
use tracelab::tools::{ToolSet, DEFAULT_RESPOND};

const ANSWER: &str = r#"{"messages": [
 {"role": "user", "content": "I want Thai food in Fremont."},
 {"role": "assistant", "content": null, "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "FindRestaurants", "arguments": "{\"cuisine\": \"Thai\", \"city\": \"Fremont\"}"}}]},
 {"role": "tool", "tool_call_id": "c0", "content": "[{\"restaurant_name\": \"Thai Basil\", \"city\": \"Fremont\"}]"},
 {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "respond_to_user", "arguments": "{\"message\": \"How about Thai Basil in Fremont?\"}"}}]},
 {"role": "user", "content": "Great, thanks."},
 {"role": "assistant", "content": null, "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "respond_to_user", "arguments": "{\"message\": \"Enjoy your meal!\"}"}}]}
]}"#;

fn tools() -> ToolSet {
    let s = |d: &str| json!({"type": "string", "description": d});
    ToolSet::from_openai(
        &json!([
            {"type": "function", "function": {"name": "FindRestaurants", "x-kind": "search",
              "description": "Find a restaurant of a particular cuisine in a city",
              "parameters": {"type": "object", "properties": {"cuisine": s("Cuisine"), "city": s("City")},
                             "required": ["cuisine", "city"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "ReserveRestaurant", "x-kind": "transaction",
              "description": "Reserve a table at a restaurant",
              "parameters": {"type": "object", "properties": {"restaurant_name": s("Name"), "city": s("City"), "time": s("Time")},
                             "required": ["restaurant_name", "city", "time"], "additionalProperties": false}}}
        ]),
        DEFAULT_RESPOND,
        &[],
        "bench",
    )
    .expect("valid tools")
}

fn traces() -> Vec<Conversation> {
    let root = std::env::var_os("TRACELAB_SGD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/sgd"));
    if !root.is_dir() {
        eprintln!(
            "note: no SGD at {}: prompts carry no example traces",
            root.display()
        );
        return Vec::new();
    }
    let sel = tracelab::formats::sgd::Selection {
        service: "Restaurants_1".into(),
        splits: vec!["train".into()],
        single_domain: true,
    };
    tracelab::formats::sgd::read_dialogues(&root, &sel).expect("SGD readable")
}

fn serve(port: u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = MockServer::start(
            port,
            Arc::new(|_: &MockRequest| Reply::Content(ANSWER.into())),
        )
        .await
        .expect("bind");
        println!("listening {}", server.base_url());
        std::future::pending::<()>().await;
    });
}

fn run(base_url: &str, n: usize, concurrency: usize, cache: &Path) {
    let tools = tools();
    let traces = traces();
    let task = Task {
        settings: TaskSettings::default(),
        description:
            "A restaurant assistant: find restaurants, answer questions, make reservations.".into(),
    };
    let ctx = Context {
        task: &task,
        tools: &tools,
        traces: &traces,
    };
    let mut cfg = LlmConfig::new(base_url, "bench-model");
    cfg.concurrency = concurrency;
    cfg.timeout_s = 30.0;
    let client = LlmClient::new(cfg, cache).expect("client");
    let teacher = HttpTeacher::new(&ctx, client, 3);
    let jobs = plan_jobs(n, &task.settings.mutation_topics, 1);
    let t0 = Instant::now();
    let out = teacher
        .generate(&jobs, &|_| {}, &AtomicBool::new(false))
        .expect("generate");
    let wall = t0.elapsed().as_secs_f64();
    let s = teacher.stats();
    let failures = out.iter().filter(|o| o.is_err()).count();
    println!(
        "{}",
        json!({"n": n, "concurrency": concurrency, "wall_s": wall, "requests": s.requests,
               "cache_hits": s.cache_hits, "retries": s.retries, "failures": failures,
               "requests_per_s": s.requests as f64 / wall})
    );
}

fn cached_ids(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let v: Value = serde_json::from_slice(&std::fs::read(&p).expect("readable"))
                    .expect("cache records are whole");
                if let Some(id) = v.get("response_id").and_then(Value::as_str) {
                    println!("{id}");
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", port] => serve(port.parse().expect("port")),
        ["run", url, n, c, cache] => run(
            url,
            n.parse().expect("N"),
            c.parse().expect("concurrency"),
            Path::new(cache),
        ),
        ["cached-ids", cache] => cached_ids(Path::new(cache)),
        _ => {
            eprintln!("usage: teacher_http_bench serve PORT | run BASE_URL N CONCURRENCY CACHE_DIR | cached-ids CACHE_DIR");
            std::process::exit(2);
        }
    }
}
