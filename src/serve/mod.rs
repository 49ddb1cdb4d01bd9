//! `tracelab serve`: a trained student behind the OpenAI Chat Completions API.
//!
//! Three parts: [`resolve_cell`] finds a cell's trained model, tokenizer, tools and the value
//! rules its predict step learned in the cache (or [`student_dir`] reads them from a directory
//! [`pack`] wrote); a [`Pool`] keeps long-lived `tracelab-student` workers (the model loaded
//! once; libtorch stays out of this process) and batches the requests that arrive together into
//! one line per worker; [`serve`] answers HTTP with [`api`]'s protocol.

pub mod api;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tracelab_core::job::{
    Sampling, ServeAnswer, ServeAnswers, ServeBatch, ServeQuery, WorkerJob, RULES_FILE,
};

use crate::cache::Cache;
use crate::dag::{Dag, InputRole};
use crate::executor;
use crate::steps::train::worker_command;
use crate::steps::Artifact;
use api::{Answer, ApiError, ModelCard};

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The cell, its model or the worker cannot be found or started.
    #[error("{0}")]
    Setup(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a worker serves: the files of a trained tiny student and its decoding parameters.
#[derive(Debug, Clone)]
pub struct Target {
    /// The train step's `model/` directory.
    pub model: PathBuf,
    /// The tokenizer file.
    pub tokenizer: PathBuf,
    /// The tools file.
    pub tools: PathBuf,
    /// The value rules predict learned and decoded with (`rules.json`, a tiny student's); none
    /// for a packed student (its `model/config.json` holds them) or a qwen3 one.
    pub rules: Option<PathBuf>,
    /// The predict step's canonical parameters (decoding settings).
    pub params: Value,
}

/// The cached inputs of cell `cell`'s predict step (`clean/synthetic/s1`).
pub fn resolve_cell(
    dag: &Dag,
    cache: &Cache,
    root: &Path,
    experiment: &str,
    cell: &str,
) -> Result<Target, ServeError> {
    let label = format!("{cell}/predict");
    let node = dag
        .order
        .iter()
        .copied()
        .find(|&n| dag.graph[n].label == label || dag.graph[n].aliases.contains(&label))
        .ok_or_else(|| {
            ServeError::Setup(format!(
                "no step {label}: `tracelab plan` lists the cells (scenario/pipeline/s<seed>)"
            ))
        })?;
    if dag.graph[node].params.get("model").and_then(Value::as_str) == Some("http") {
        return Err(ServeError::Setup(format!(
            "{label} asks an HTTP endpoint; there is no trained student to serve"
        )));
    }
    let plan = executor::plan(dag, cache, root, experiment, None)
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let mut files = std::collections::BTreeMap::new();
    for (role, from) in &dag.graph[node].inputs {
        let InputRole::Artifact(a) = role else {
            continue;
        };
        let producer = &dag.graph[*from].label;
        let key = plan
            .iter()
            .find(|l| &l.label == producer)
            .and_then(|l| l.cached.clone())
            .ok_or_else(|| {
                ServeError::Setup(format!(
                    "{producer} is not in the cache: run `tracelab run EXP --only '{cell}/*'` first"
                ))
            })?;
        files.insert(*a, cache.out_dir(&key).join(a.file_name()));
    }
    let take = |a: Artifact| {
        files
            .get(&a)
            .cloned()
            .ok_or_else(|| ServeError::Setup(format!("{label} has no {}", a.noun())))
    };
    // The rules the cell's predictions were decoded with: served the same way.
    let predicted = plan
        .iter()
        .find(|l| l.label == label)
        .and_then(|l| l.cached.clone())
        .ok_or_else(|| {
            ServeError::Setup(format!(
                "{label} is not in the cache (it learns the student's value rules): run \
                 `tracelab run EXP --only '{cell}/*'` first"
            ))
        })?;
    let rules = cache.out_dir(&predicted).join(RULES_FILE);
    Ok(Target {
        model: take(Artifact::Model)?,
        tokenizer: take(Artifact::Tokenizer)?,
        tools: take(Artifact::Tools)?,
        rules: rules.is_file().then_some(rules),
        params: dag.graph[node].params.clone(),
    })
}

/// The files of a student directory (what [`pack`] writes and `tracelab serve --model` reads).
const STUDENT_MODEL: &str = "model";
const STUDENT_TOKENIZER: &str = "tokenizer.json";
const STUDENT_TOOLS: &str = "tools.json";
const STUDENT_PARAMS: &str = "predict.json";

/// Copies a target's files into `dir` (which must not exist yet) as a student directory:
/// `model/`, `tokenizer.json`, `tools.json` and `predict.json` (the decoding parameters). The
/// copy is made in a temporary sibling and renamed, so an interrupted pack leaves no half
/// directory behind.
pub fn pack(target: &Target, dir: &Path) -> Result<(), ServeError> {
    if dir.exists() {
        return Err(ServeError::Setup(format!(
            "{} already exists",
            dir.display()
        )));
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(tmp.join(STUDENT_MODEL))?;
        for e in std::fs::read_dir(&target.model)? {
            let e = e?;
            std::fs::copy(e.path(), tmp.join(STUDENT_MODEL).join(e.file_name()))?;
        }
        if let Some(rules) = &target.rules {
            with_rules(&tmp.join(STUDENT_MODEL).join("config.json"), rules)?;
        }
        std::fs::copy(&target.tokenizer, tmp.join(STUDENT_TOKENIZER))?;
        std::fs::copy(&target.tools, tmp.join(STUDENT_TOOLS))?;
        let params = serde_json::to_string_pretty(&target.params).expect("params serialize");
        std::fs::write(tmp.join(STUDENT_PARAMS), params)?;
        std::fs::rename(&tmp, dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(result?)
}

/// Puts the value rules of `rules` (a `rules.json`) into the model's `config.json`, where a
/// packed student keeps them (their keys are the config's top-level rule keys).
fn with_rules(config: &Path, rules: &Path) -> std::io::Result<()> {
    let read = |p: &Path| -> std::io::Result<serde_json::Map<String, Value>> {
        match serde_json::from_str(&std::fs::read_to_string(p)?) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a JSON object", p.display()),
            )),
        }
    };
    let mut merged = read(config)?;
    merged.extend(read(rules)?);
    let text = serde_json::to_string_pretty(&Value::Object(merged)).expect("JSON serializes");
    std::fs::write(config, text)
}

/// A student directory's files (see [`pack`]); a missing one is named.
pub fn student_dir(dir: &Path) -> Result<Target, ServeError> {
    let need = |name: &str| {
        let p = dir.join(name);
        if p.exists() {
            Ok(p)
        } else {
            Err(ServeError::Setup(format!(
                "{} is not a student directory: it has no {name} (`tracelab pack` writes one)",
                dir.display()
            )))
        }
    };
    let params_path = need(STUDENT_PARAMS)?;
    let text = std::fs::read_to_string(&params_path)?;
    let params = serde_json::from_str(&text)
        .map_err(|e| ServeError::Setup(format!("{}: {e}", params_path.display())))?;
    Ok(Target {
        model: need(STUDENT_MODEL)?,
        tokenizer: need(STUDENT_TOKENIZER)?,
        tools: need(STUDENT_TOOLS)?,
        rules: None,
        params,
    })
}

/// One query waiting for the worker, with where its answer goes.
struct Pending {
    query: ServeQuery,
    reply: oneshot::Sender<Result<ServeAnswer, String>>,
}

/// How many workers serve, and how.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Worker processes, each holding the model.
    pub workers: usize,
    /// CPU threads per worker.
    pub threads: usize,
    /// Most queued queries a worker takes at a time (decoded as one batch).
    pub batch: usize,
    /// Prompts whose caches each worker keeps for reuse (`ServeParams::prefix_cache`).
    pub prefix_cache: usize,
}

/// Long-lived workers fed from one queue; what they can call.
pub struct Pool {
    queue: mpsc::UnboundedSender<Pending>,
    /// The functions of the served model, as the worker reported them; the reply function last.
    pub functions: Vec<String>,
    next_id: AtomicU64,
}

/// A running `tracelab-student serve` process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Starts a worker and waits for its `ready` line; returns it and its functions (the reply
    /// function last). The job file lives only until the worker has read it.
    fn start(job: &WorkerJob) -> Result<(Worker, Vec<String>), String> {
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let job_path = std::env::temp_dir().join(format!(
            "tracelab-serve-{}-{}.json",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let text = serde_json::to_string_pretty(job).expect("job serializes");
        std::fs::write(&job_path, text)
            .map_err(|e| format!("cannot write {}: {e}", job_path.display()))?;
        let started = Worker::spawn(&job_path);
        let _ = std::fs::remove_file(&job_path);
        started
    }

    fn spawn(job_path: &Path) -> Result<(Worker, Vec<String>), String> {
        let (exe, mut cmd) = worker_command().map_err(|e| e.to_string())?;
        let mut child = cmd
            .arg(job_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| format!("worker: {e}"))?;
        let ready: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let Some(functions) = ready["ready"]["functions"].as_array() else {
            let _ = child.wait();
            return Err(
                "the student worker stopped before it was ready (its error is above)".into(),
            );
        };
        let respond = ready["ready"]["respond"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut functions: Vec<String> = functions
            .iter()
            .filter_map(|f| f.as_str().map(str::to_string))
            .filter(|f| *f != respond)
            .collect();
        functions.push(respond);
        Ok((
            Worker {
                child,
                stdin,
                stdout,
            },
            functions,
        ))
    }

    /// Sends one batch and reads its answers.
    fn ask(&mut self, batch: &ServeBatch) -> Result<ServeAnswers, String> {
        let line = serde_json::to_string(batch).expect("batch serializes");
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("worker stdin: {e}"))?;
        let mut back = String::new();
        match self.stdout.read_line(&mut back) {
            Ok(0) => Err("the student worker exited".into()),
            Ok(_) => serde_json::from_str(&back).map_err(|e| format!("worker answer: {e}")),
            Err(e) => Err(format!("worker stdout: {e}")),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pool {
    /// Starts the workers for `target` as `opts` says.
    pub fn start(target: &Target, opts: &PoolOptions) -> Result<Pool, ServeError> {
        let PoolOptions {
            workers,
            threads,
            batch,
            prefix_cache,
        } = *opts;
        let job = WorkerJob {
            task: "serve".into(),
            params: json!({"predict": target.params, "prefix_cache": prefix_cache}),
            inputs: [
                ("model".to_string(), target.model.clone()),
                ("tokenizer".to_string(), target.tokenizer.clone()),
                ("tools".to_string(), target.tools.clone()),
            ]
            .into_iter()
            .chain(target.rules.clone().map(|r| ("rules".to_string(), r)))
            .collect(),
            // `serve` writes nothing.
            output: PathBuf::new(),
            threads: threads.max(1),
        };
        let (tx, rx) = mpsc::unbounded_channel::<Pending>();
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for _ in 0..workers.max(1) {
            let (rx, job, ready_tx) = (rx.clone(), job.clone(), ready_tx.clone());
            // A worker that cannot start fails `start`, and with it the server.
            std::thread::spawn(move || match Worker::start(&job) {
                Ok((worker, functions)) => {
                    let _ = ready_tx.send(Ok(functions));
                    drive(worker, &job, &rx, batch.max(1));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            });
        }
        drop(ready_tx);
        let mut functions = None;
        // One report per worker (the threads keep their senders while they serve).
        for _ in 0..workers.max(1) {
            match ready_rx.recv() {
                Ok(Ok(f)) => functions = Some(f),
                Ok(Err(e)) => return Err(ServeError::Setup(e)),
                Err(_) => return Err(ServeError::Setup("a worker thread ended".into())),
            }
        }
        Ok(Pool {
            queue: tx,
            functions: functions.expect("at least one worker reported"),
            next_id: AtomicU64::new(1),
        })
    }

    /// The call for one query's messages and functions, decoded greedily or with `sampling`.
    pub async fn ask(
        &self,
        messages: Value,
        functions: Vec<String>,
        sampling: Option<Sampling>,
    ) -> Result<ServeAnswer, String> {
        let (reply, answer) = oneshot::channel();
        let query = ServeQuery {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            messages,
            functions,
            sampling,
        };
        self.queue
            .send(Pending { query, reply })
            .map_err(|_| "no student worker is running".to_string())?;
        answer
            .await
            .map_err(|_| "the student worker dropped the request".to_string())?
    }
}

/// A worker thread's loop: take what is queued (waiting for the first), ask, hand out answers.
/// A worker that dies is restarted and its batch asked again; when that fails too, every request
/// from then on gets the error.
fn drive(
    mut worker: Worker,
    job: &WorkerJob,
    rx: &Mutex<mpsc::UnboundedReceiver<Pending>>,
    batch: usize,
) {
    loop {
        let pending = {
            let mut rx = rx.lock().expect("queue lock");
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            let mut pending = vec![first];
            while pending.len() < batch {
                match rx.try_recv() {
                    Ok(p) => pending.push(p),
                    Err(_) => break,
                }
            }
            pending
        };
        let request = ServeBatch {
            batch: pending.iter().map(|p| p.query.clone()).collect(),
        };
        // A worker that died (killed, out of memory) is replaced and the batch asked again once.
        let answered = worker.ask(&request).or_else(|e| {
            tracing::warn!("student worker failed ({e}); starting another");
            worker = Worker::start(job)?.0;
            worker.ask(&request)
        });
        match answered {
            Ok(answers) => {
                let mut by_id: std::collections::HashMap<u64, ServeAnswer> =
                    answers.answers.into_iter().map(|a| (a.id, a)).collect();
                for p in pending {
                    let a = by_id
                        .remove(&p.query.id)
                        .ok_or_else(|| "the worker skipped the request".to_string());
                    let _ = p.reply.send(a);
                }
            }
            Err(e) => {
                for p in pending {
                    let _ = p.reply.send(Err(e.clone()));
                }
                fail_all(rx, &e);
                return;
            }
        }
    }
}

/// Answers every query still to come with `why` (no worker is left to answer them).
fn fail_all(rx: &Mutex<mpsc::UnboundedReceiver<Pending>>, why: &str) {
    let mut rx = rx.lock().expect("queue lock");
    while let Some(p) = rx.blocking_recv() {
        let _ = p.reply.send(Err(why.to_string()));
    }
}

/// What the HTTP handlers share.
struct Served {
    pool: Pool,
    card: ModelCard,
    completions: AtomicU64,
}

/// Serves the OpenAI API on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: Pool,
    name: String,
    max_call_tokens: usize,
) -> Result<(), ServeError> {
    let card = ModelCard {
        name,
        functions: pool.functions.clone(),
        respond: pool.functions.last().cloned().unwrap_or_default(),
        max_call_tokens,
    };
    let state = Arc::new(Served {
        pool,
        card,
        completions: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(completions))
        .fallback(not_found)
        .with_state(state);
    axum::serve(listener, app).await?;
    Ok(())
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(e.body())).into_response()
}

async fn not_found() -> Response {
    error_response(&ApiError {
        status: 404,
        kind: "not_found_error",
        code: Some("not_found"),
        ..ApiError::invalid(
            "",
            "this server has GET /v1/models and POST /v1/chat/completions",
        )
    })
}

async fn models(State(s): State<Arc<Served>>) -> Response {
    axum::Json(json!({"object": "list", "data": [
        {"id": s.card.name, "object": "model", "created": 0, "owned_by": "tracelab"}]}))
    .into_response()
}

async fn completions(State(s): State<Arc<Served>>, body: Bytes) -> Response {
    let req = match api::parse_request(&body, &s.card) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let answer = match s.pool.ask(req.messages, req.functions, req.sampling).await {
        Ok(a) => a,
        Err(e) => return error_response(&ApiError::server(e)),
    };
    let call = match (answer.call, answer.error) {
        (Some(c), _) => c,
        // The server checked the request before the worker saw it: what the worker refuses
        // (a call it could not finish) is the server's failure.
        (None, Some(e)) => return error_response(&ApiError::server(e)),
        (None, None) => return error_response(&ApiError::server("the worker gave no call")),
    };
    let n = s.completions.fetch_add(1, Ordering::Relaxed);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = call["name"].as_str().unwrap_or_default().to_string();
    let a = Answer {
        id: format!("chatcmpl-{:x}{n:x}", stamp.as_micros()),
        call_id: format!("call_{:x}{n:x}", stamp.as_micros()),
        created: stamp.as_secs(),
        model: s.card.name.clone(),
        is_reply: name == s.card.respond,
        name,
        arguments: call["arguments"].as_object().cloned().unwrap_or_default(),
        prompt_tokens: answer.prompt_tokens,
        completion_tokens: answer.completion_tokens,
        cached_tokens: answer.cached_tokens,
    };
    if req.stream {
        let body = api::sse_body(&a.chunks(req.include_usage));
        return (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response();
    }
    axum::Json(a.completion()).into_response()
}
