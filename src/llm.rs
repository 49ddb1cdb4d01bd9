//! An OpenAI-compatible chat-completions client: messages in, text (or, with tools offered, the
//! assistant message with its tool calls) out, with a concurrency limit,
//! retries (exponential backoff with jitter, honouring `Retry-After`), a request budget, and a
//! durable response cache so an interrupted run never repeats a paid call.
//!
//! Works against any server that speaks `POST {base_url}/chat/completions` (vLLM, llama.cpp's
//! server, Ollama, OpenAI). The API key is read from the environment variable the experiment
//! names, once, and lives only in memory: it is never part of a cache key, a cache file, a
//! manifest or a log line.
//!
//! Caching: a response is stored under `blake3(model, messages, parameters, sample index)` only
//! after the caller's parser accepted it ([`LlmClient::complete_parsed`]), so failed or
//! unparseable answers are retried by the next run. Files are written atomically (temp + rename).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Connection and sampling settings of a chat-completions endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// Base URL up to and including the API version, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Model name sent in every request.
    pub model: String,
    /// Name of the environment variable holding the API key; none sends no `Authorization`.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Sampling temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Upper bound on generated tokens per answer.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Per-request timeout in seconds (a timeout is retried).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Retries after the first attempt on 429, 5xx, timeouts and broken connections.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Most HTTP requests this client may send in all (retries count); none = unlimited.
    #[serde(default)]
    pub budget: Option<u64>,
    /// First backoff delay in seconds; doubles per retry, capped at 30 s, with full jitter.
    #[serde(default = "default_backoff")]
    pub backoff_s: f64,
}

fn default_temperature() -> f64 {
    0.7
}
fn default_max_tokens() -> u32 {
    4096
}
fn default_timeout() -> f64 {
    120.0
}
fn default_concurrency() -> usize {
    16
}
fn default_retries() -> u32 {
    5
}
fn default_backoff() -> f64 {
    0.5
}

impl LlmConfig {
    /// Checks what the types cannot, so an experiment fails when it is loaded rather than at its
    /// first request: the error is the offending key and what is wrong with it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let base = self.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err((
                "base_url",
                format!("{base:?} must start with http:// or https://"),
            ));
        }
        if self.model.trim().is_empty() {
            return Err(("model", "must name the model to ask".into()));
        }
        if self.concurrency == 0 {
            return Err(("concurrency", "must be at least 1".into()));
        }
        if self.timeout_s.is_nan() || self.timeout_s <= 0.0 {
            return Err(("timeout_s", "must be positive".into()));
        }
        Ok(())
    }

    /// A configuration with defaults for everything but the endpoint and model.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        LlmConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            temperature: default_temperature(),
            max_tokens: default_max_tokens(),
            timeout_s: default_timeout(),
            concurrency: default_concurrency(),
            retries: default_retries(),
            budget: None,
            backoff_s: default_backoff(),
        }
    }
}

/// One chat message sent to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "system".into(),
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// What went wrong with one completion. Every variant is final: retries already happened.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The named environment variable is not set.
    #[error("environment variable {0} (api_key_env) is not set")]
    MissingKey(String),
    /// The configuration cannot work (bad URL, zero concurrency…).
    #[error("invalid LLM configuration: {0}")]
    Config(String),
    /// The server answered with an error status that is not retried, or still failed after retries.
    #[error("HTTP {status} from {url}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// Request URL.
        url: String,
        /// Start of the response body.
        body: String,
    },
    /// No answer within the timeout, after all retries.
    #[error("timed out after {attempts} attempts")]
    Timeout {
        /// Attempts made.
        attempts: u32,
    },
    /// The connection failed, after all retries.
    #[error("transport error: {0}")]
    Transport(String),
    /// The request budget is spent; nothing was sent.
    #[error("request budget of {0} requests is spent")]
    BudgetExhausted(u64),
    /// The response is not a chat completion (bad JSON, no choices, no content).
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The caller's parser rejected the answer text (it is not cached).
    #[error("unusable answer: {0}")]
    Rejected(String),
    /// Reading or writing the response cache failed.
    #[error("response cache {path}: {source}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One answer: its text and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The assistant message text.
    pub text: String,
    /// The server's response id (`id` of the completion object), if it sent one.
    pub response_id: Option<String>,
    /// True when served from the response cache (no request was sent).
    pub cached: bool,
}

/// Counters of one client's life, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LlmStats {
    /// HTTP requests sent (attempts, including retries).
    pub requests: u64,
    /// Retried attempts (429, 5xx, timeouts, broken connections, malformed bodies).
    pub retries: u64,
    /// Answers served from the cache.
    pub cache_hits: u64,
    /// Answers stored in the cache.
    pub stored: u64,
}

/// The cache record of one accepted answer.
#[derive(Serialize, Deserialize)]
struct CacheRecord {
    text: String,
    #[serde(default)]
    response_id: Option<String>,
}

/// A chat-completions client with its own concurrency limit, budget and response cache.
pub struct LlmClient {
    config: LlmConfig,
    url: String,
    api_key: Option<String>,
    http: reqwest::Client,
    permits: Semaphore,
    cache_dir: PathBuf,
    requests: AtomicU64,
    retries: AtomicU64,
    cache_hits: AtomicU64,
    stored: AtomicU64,
}

impl std::fmt::Debug for LlmClient {
    // Hand-written so the API key can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("url", &self.url)
            .field("model", &self.config.model)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

/// Outcome of one attempt, before retry policy is applied.
enum Attempt {
    Done(Completion),
    Retry {
        why: LlmError,
        after: Option<Duration>,
    },
    Fail(LlmError),
}

impl Attempt {
    /// A transport failure while sending or reading the body: retried; a timeout is its own
    /// error, and the URL (which may hold credentials) never reaches the message.
    fn transport(e: &reqwest::Error) -> Attempt {
        let why = if e.is_timeout() {
            LlmError::Timeout { attempts: 1 }
        } else {
            LlmError::Transport(without_url_secrets(e))
        };
        Attempt::Retry { why, after: None }
    }
}

impl LlmClient {
    /// Builds a client; reads the API key from `config.api_key_env` now. Answers are cached in
    /// `cache_dir` (created when the first answer is stored).
    pub fn new(config: LlmConfig, cache_dir: &Path) -> Result<Self, LlmError> {
        config
            .check()
            .map_err(|(key, message)| LlmError::Config(format!("{key} {message}")))?;
        let base = config.base_url.trim_end_matches('/');
        let api_key = match &config.api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| LlmError::MissingKey(var.clone()))?),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(config.timeout_s))
            .pool_max_idle_per_host(config.concurrency)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| LlmError::Config(e.to_string()))?;
        Ok(LlmClient {
            url: format!("{base}/chat/completions"),
            api_key,
            http,
            permits: Semaphore::new(config.concurrency),
            cache_dir: cache_dir.to_path_buf(),
            config,
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            stored: AtomicU64::new(0),
        })
    }

    /// The configuration this client runs with.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> LlmStats {
        LlmStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
        }
    }

    /// The cache key of a request: blake3 over model, messages, sampling parameters and the
    /// sample index (hex). Endpoint and key are not part of it: the same model elsewhere answers
    /// the same question.
    pub fn cache_key(&self, messages: &[ChatMessage], sample: u64) -> String {
        self.key_of(&json!(messages), None, sample)
    }

    /// [`LlmClient::cache_key`] for any messages, with the tools offered (absent for text
    /// requests, so their keys stay what they were before tools existed).
    fn key_of(&self, messages: &Value, tools: Option<&Value>, sample: u64) -> String {
        let mut identity = json!({
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "sample": sample,
        });
        if let Some(t) = tools {
            identity["tools"] = t.clone();
        }
        blake3::hash(identity.to_string().as_bytes())
            .to_hex()
            .to_string()
    }

    fn cache_path(&self, key: &str) -> PathBuf {
        self.cache_dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// Returns the answer to `messages` (sample `sample`), accepted by `parse`: from the cache if
    /// an accepted answer is stored, else from the server, storing it once `parse` accepts it.
    /// A rejected answer is returned as [`LlmError::Rejected`] and not stored.
    pub async fn complete_parsed<T>(
        &self,
        messages: &[ChatMessage],
        sample: u64,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<(T, Completion), LlmError> {
        self.cached(&json!(messages), None, sample, parse).await
    }

    /// The assistant message (`{"content", "tool_calls"}`, as the server sent it) answering
    /// `messages` (OpenAI chat messages, tool calls and results included) with `tools` (an
    /// OpenAI `tools` list) offered under `tool_choice: "auto"`; cached like
    /// [`LlmClient::complete_parsed`], whose parser here reads the message. The completion's
    /// `text` is the message as JSON.
    pub async fn complete_message<T>(
        &self,
        messages: &Value,
        tools: &Value,
        sample: u64,
        parse: impl Fn(&Value) -> Result<T, String>,
    ) -> Result<(T, Completion), LlmError> {
        self.cached(messages, Some(tools), sample, |text| {
            let message: Value =
                serde_json::from_str(text).map_err(|e| format!("stored message: {e}"))?;
            parse(&message)
        })
        .await
    }

    /// The cache lookup, request and store shared by text and tool requests.
    async fn cached<T>(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        sample: u64,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<(T, Completion), LlmError> {
        let key = self.key_of(messages, tools, sample);
        let path = self.cache_path(&key);
        if let Some(c) = self.read_cached(&path)? {
            // A stored answer was accepted by this parser's version before; should the parser
            // have become stricter since, fall through and ask again.
            if let Ok(v) = parse(&c.text) {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok((v, c));
            }
        }
        let c = self.request(messages, tools, sample).await?;
        let v = parse(&c.text).map_err(LlmError::Rejected)?;
        self.store(&path, &c)?;
        Ok((v, c))
    }

    /// The answer text, cached like [`LlmClient::complete_parsed`] with a parser that accepts
    /// any text.
    pub async fn complete(
        &self,
        messages: &[ChatMessage],
        sample: u64,
    ) -> Result<Completion, LlmError> {
        self.complete_parsed(messages, sample, |_| Ok(()))
            .await
            .map(|(_, c)| c)
    }

    fn read_cached(&self, path: &Path) -> Result<Option<Completion>, LlmError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LlmError::Cache {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        // Files are renamed into place complete, so a bad one means outside damage: ask again.
        Ok(serde_json::from_slice::<CacheRecord>(&bytes)
            .ok()
            .map(|r| Completion {
                text: r.text,
                response_id: r.response_id,
                cached: true,
            }))
    }

    fn store(&self, path: &Path, c: &Completion) -> Result<(), LlmError> {
        let err = |source| LlmError::Cache {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().expect("cache paths have a parent");
        std::fs::create_dir_all(dir).map_err(err)?;
        let record = CacheRecord {
            text: c.text.clone(),
            response_id: c.response_id.clone(),
        };
        // Unique per write: two in-flight requests with the same key must not share a temp file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{}.{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("r"),
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&tmp, serde_json::to_vec(&record).expect("serializes")).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends the request with retries; holds one concurrency permit for the whole exchange.
    async fn request(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        sample: u64,
    ) -> Result<Completion, LlmError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "seed": sample,
            "stream": false,
        });
        if let Some(t) = tools {
            body["tools"] = t.clone();
            body["tool_choice"] = json!("auto");
        }
        let mut attempt = 0u32;
        loop {
            if let Some(budget) = self.config.budget {
                // Reserve the request before sending so concurrent tasks never overshoot.
                let prev = self.requests.fetch_add(1, Ordering::Relaxed);
                if prev >= budget {
                    self.requests.fetch_sub(1, Ordering::Relaxed);
                    return Err(LlmError::BudgetExhausted(budget));
                }
            } else {
                self.requests.fetch_add(1, Ordering::Relaxed);
            }
            attempt += 1;
            match self.attempt(&body).await {
                Attempt::Done(c) => return Ok(c),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { why, after } => {
                    if attempt > self.config.retries {
                        return Err(match why {
                            LlmError::Timeout { .. } => LlmError::Timeout { attempts: attempt },
                            other => other,
                        });
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(after.unwrap_or_else(|| self.backoff(attempt))).await;
                }
            }
        }
    }

    /// Full-jitter exponential backoff: uniform in [0, min(30 s, base · 2^(attempt-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = (self.config.backoff_s * 2f64.powi(attempt as i32 - 1)).min(30.0);
        Duration::from_secs_f64(rand::rng().random_range(0.0..=cap.max(0.0)))
    }

    async fn attempt(&self, body: &Value) -> Attempt {
        let mut req = self.http.post(&self.url).json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::transport(&e),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(300.0)));
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::transport(&e),
        };
        if !status.is_success() {
            let err = LlmError::Status {
                status: status.as_u16(),
                url: self.url.clone(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            };
            return if status.as_u16() == 429 || status.is_server_error() {
                Attempt::Retry {
                    why: err,
                    after: retry_after,
                }
            } else {
                Attempt::Fail(err)
            };
        }
        match parse_completion(&bytes, body.get("tools").is_some()) {
            Ok(c) => Attempt::Done(c),
            // A cut-off body is a broken exchange, not an answer: ask again.
            Err(e) => Attempt::Retry {
                why: e,
                after: None,
            },
        }
    }
}

/// reqwest errors print the URL; keep them but drop any query string (where some proxies put keys).
fn without_url_secrets(e: &reqwest::Error) -> String {
    let mut e2 = e.to_string();
    if let Some(url) = e.url() {
        if url.query().is_some() {
            let mut clean = url.clone();
            clean.set_query(None);
            e2 = e2.replace(url.as_str(), clean.as_str());
        }
    }
    e2
}

/// Extracts the first choice's message text from a chat-completion body; with `tools`, the
/// whole message as JSON, which must hold some content or a tool call.
fn parse_completion(bytes: &[u8], tools: bool) -> Result<Completion, LlmError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| LlmError::Malformed(format!("response is not JSON: {e}")))?;
    let msg = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .ok_or_else(|| LlmError::Malformed("no choices[0].message".into()))?;
    let response_id = v.get("id").and_then(Value::as_str).map(str::to_string);
    if tools {
        let has = |k: &str| match msg.get(k) {
            Some(Value::String(s)) => !s.trim().is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            _ => false,
        };
        if !has("content") && !has("tool_calls") {
            return Err(LlmError::Malformed(
                "choices[0].message has neither content nor tool_calls".into(),
            ));
        }
        return Ok(Completion {
            text: msg.to_string(),
            response_id,
            cached: false,
        });
    }
    let text = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| LlmError::Malformed("choices[0].message.content is empty".into()))?;
    Ok(Completion {
        text: text.to_string(),
        response_id,
        cached: false,
    })
}
