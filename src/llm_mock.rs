//! A small OpenAI-protocol server on 127.0.0.1 for tests and benchmarks of [`crate::llm`]: it
//! answers `POST …/chat/completions` with whatever a script decides per request, including faults
//! (429 with `Retry-After`, 5xx, slow answers, truncated bodies), and counts requests by body
//! hash so a test can prove that no request was sent twice.
//!
//! Hand-written HTTP/1.1 (keep-alive, `Content-Length` bodies only): enough for reqwest and curl,
//! no extra dependency.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A normal completion whose message content is this text.
    Content(String),
    /// A normal completion with this assistant message (`content`, `tool_calls`…).
    Message(Value),
    /// An error status, optionally with `Retry-After` seconds.
    Status {
        /// HTTP status.
        code: u16,
        /// `Retry-After` header value in seconds.
        retry_after: Option<u64>,
    },
    /// Waits, then replies.
    Slow(Duration, Box<Reply>),
    /// A 200 whose JSON body is cut in half.
    TruncatedBody,
}

/// One request as the script sees it.
#[derive(Debug, Clone)]
pub struct MockRequest {
    /// Parsed JSON body.
    pub body: Value,
    /// blake3 of the raw body (hex): the identity used for duplicate counting.
    pub body_hash: String,
    /// 0-based arrival number across the server's life.
    pub ordinal: u64,
    /// How many times this exact body arrived before.
    pub seen_before: u64,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// Decides the reply to each request.
pub type Script = Arc<dyn Fn(&MockRequest) -> Reply + Send + Sync>;

#[derive(Default)]
struct Counts {
    total: u64,
    by_body: BTreeMap<String, u64>,
    authorization: Vec<Option<String>>,
}

/// A running mock server; it stops when dropped with its runtime.
pub struct MockServer {
    /// Where it listens.
    pub addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
}

impl MockServer {
    /// Binds 127.0.0.1 on `port` (0 = any free port) and serves on the current tokio runtime.
    pub async fn start(port: u16, script: Script) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Mutex::new(Counts::default()));
        let c2 = counts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, script.clone(), c2.clone()));
            }
        });
        Ok(MockServer { addr, counts })
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received so far.
    pub fn total(&self) -> u64 {
        self.counts.lock().expect("not poisoned").total
    }

    /// Requests whose exact body had arrived before (each repeat counts once).
    pub fn repeats(&self) -> u64 {
        self.counts
            .lock()
            .expect("not poisoned")
            .by_body
            .values()
            .map(|n| n - 1)
            .sum()
    }

    /// The `Authorization` header of every request, in arrival order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.counts
            .lock()
            .expect("not poisoned")
            .authorization
            .clone()
    }

    /// Counters as JSON (`total`, `distinct`, `repeats`, and the `repeated` body hashes), also
    /// served at `GET /stats`.
    pub fn stats_json(&self) -> Value {
        stats_json(&self.counts.lock().expect("not poisoned"))
    }
}

fn stats_json(c: &Counts) -> Value {
    json!({
        "total": c.total,
        "distinct": c.by_body.len(),
        "repeats": c.by_body.values().map(|n| n - 1).sum::<u64>(),
        "repeated": c.by_body.iter().filter(|(_, n)| **n > 1).map(|(h, _)| h.clone()).collect::<Vec<_>>(),
    })
}

/// The chat-completion body for a reply text; `id` is the request's body hash so a client-side
/// cache record can be traced back to the request that produced it.
pub fn completion_body(id: &str, model: &str, text: &str) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    })
}

async fn serve_connection(stream: TcpStream, script: Script, counts: Arc<Mutex<Counts>>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut length = 0usize;
        let mut authorization = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let (status, extra, payload) = if method == "GET" && path.ends_with("/stats") {
            let s = stats_json(&counts.lock().expect("not poisoned"));
            (200, String::new(), s.to_string().into_bytes())
        } else if method == "POST" && path.ends_with("/chat/completions") {
            let body_hash = blake3::hash(&body).to_hex().to_string();
            let (ordinal, seen_before) = {
                let mut c = counts.lock().expect("not poisoned");
                let ordinal = c.total;
                c.total += 1;
                c.authorization.push(authorization.clone());
                let n = c.by_body.entry(body_hash.clone()).or_insert(0);
                *n += 1;
                (ordinal, *n - 1)
            };
            let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let req = MockRequest {
                body: parsed,
                body_hash,
                ordinal,
                seen_before,
                authorization,
            };
            let mut reply = script(&req);
            while let Reply::Slow(d, next) = reply {
                tokio::time::sleep(d).await;
                reply = *next;
            }
            let model = req.body.get("model").and_then(Value::as_str).unwrap_or("");
            match reply {
                Reply::Content(text) => (
                    200,
                    String::new(),
                    completion_body(&req.body_hash, model, &text)
                        .to_string()
                        .into_bytes(),
                ),
                Reply::Message(message) => {
                    let mut body = completion_body(&req.body_hash, model, "");
                    body["choices"][0]["message"] = message;
                    body["choices"][0]["finish_reason"] = json!("tool_calls");
                    (200, String::new(), body.to_string().into_bytes())
                }
                Reply::Status { code, retry_after } => (
                    code,
                    retry_after
                        .map(|s| format!("Retry-After: {s}\r\n"))
                        .unwrap_or_default(),
                    json!({"error": {"message": "injected fault", "code": code}})
                        .to_string()
                        .into_bytes(),
                ),
                Reply::TruncatedBody => {
                    let full = completion_body(&req.body_hash, model, "cut").to_string();
                    (
                        200,
                        String::new(),
                        full.as_bytes()[..full.len() / 2].to_vec(),
                    )
                }
                Reply::Slow(..) => unreachable!("unwrapped above"),
            }
        } else {
            (404, String::new(), b"{\"error\":\"not found\"}".to_vec())
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
            if status == 200 { "OK" } else { "Error" },
            payload.len()
        );
        if w.write_all(head.as_bytes()).await.is_err() || w.write_all(&payload).await.is_err() {
            return;
        }
    }
}
