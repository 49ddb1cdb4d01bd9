//! Judging predictions: reads rows `{question, answer, prediction}`, gives each a verdict with a
//! reason (the offline [`rubric`] judge, or an LLM judge), and computes the cell's [`Metrics`].
//!
//! Entry points: [`judge_file`] (the `tracelab judge` command and the `judge` step) and
//! [`judge_rows`] for rows already in memory. Output: `verdicts.jsonl`, one line per input row in
//! order (`{"id", "verdict": 0|1, "reason", …}`), and `metrics.json`.

pub mod cli;
pub mod context;
pub mod llm;
pub mod metrics;
pub mod normalize;
pub mod rubric;

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::{json, Value};

use crate::conversation::ToolCall;
use crate::task::{Task, TaskError, TaskSettings};
use crate::tools::{ToolSet, ToolsError};

pub use context::{parse_call, Context};
pub use llm::{LlmJudge, LlmJudgeConfig, LlmJudgeError, LlmVerdict};
pub use metrics::{Bootstrap, Metrics, PairScore};
pub use normalize::Normalizer;
pub use rubric::{Fault, Lexicon, Rubric, Verdict};

use metrics::{rouge_l, staged};
use normalize::{fold, value_text};

/// Errors of judging. Bad input names the file, the line and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A row of the predictions file is malformed.
    #[error("{path}:{line}: {message}")]
    Input {
        /// The predictions file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The predictions file has no rows.
    #[error("{0}: no rows to judge")]
    Empty(PathBuf),
    /// The tools file is invalid.
    #[error(transparent)]
    Tools(#[from] ToolsError),
    /// The task file is invalid.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A task setting the judge needs is invalid.
    #[error("task settings: {0}")]
    Settings(String),
    /// The LLM judge failed (after the client's retries) or was interrupted.
    #[error(transparent)]
    Llm(#[from] LlmJudgeError),
}

/// Which judge gives the verdicts.
#[derive(Debug, Clone, PartialEq)]
pub enum JudgeKind {
    /// The offline rubric judge.
    Rubric,
    /// A model behind an OpenAI-compatible endpoint.
    Llm(LlmJudgeConfig),
}

impl JudgeKind {
    /// The name recorded in `metrics.json`.
    pub fn label(&self) -> String {
        match self {
            JudgeKind::Rubric => "rubric".to_string(),
            JudgeKind::Llm(c) => format!("llm:{}", c.llm.model),
        }
    }
}

/// How to judge.
#[derive(Debug, Clone)]
pub struct JudgeOptions {
    /// Which judge.
    pub kind: JudgeKind,
    /// Bootstrap settings of the score's interval.
    pub bootstrap: Bootstrap,
}

impl Default for JudgeOptions {
    fn default() -> Self {
        JudgeOptions {
            kind: JudgeKind::Rubric,
            bootstrap: Bootstrap::default(),
        }
    }
}

/// The files of one judging run.
#[derive(Debug, Clone)]
pub struct JudgeFiles {
    /// Tool schemas (OpenAI tools JSON).
    pub tools: PathBuf,
    /// Task file (front matter: reply function, reference date, synonyms); defaults if absent.
    pub task: Option<PathBuf>,
    /// Rows `{question, answer, prediction}` (JSONL).
    pub predictions: PathBuf,
    /// Where to write one verdict line per row.
    pub verdicts: PathBuf,
    /// Where to write the metrics (JSON), if anywhere.
    pub metrics: Option<PathBuf>,
}

/// One row to judge.
#[derive(Debug, Clone)]
pub struct Row {
    /// The row's `id`, or its line number.
    pub id: String,
    /// 1-based line of the row in its file (for errors).
    pub line: usize,
    /// The conversation prefix as OpenAI messages.
    pub question: Value,
    /// The reference call.
    pub answer: ToolCall,
    /// The predicted call, or why the output could not be read as one.
    pub prediction: Result<ToolCall, String>,
}

/// What the judge needs besides the rows.
#[derive(Debug, Clone)]
pub struct JudgeSetup {
    /// Tool schemas.
    pub tools: ToolSet,
    /// Task settings.
    pub settings: TaskSettings,
    /// The task description (for the LLM judge's prompt).
    pub description: String,
}

impl JudgeSetup {
    /// Loads the tools file and, if given, the task file.
    pub fn load(tools: &Path, task: Option<&Path>) -> Result<JudgeSetup, JudgeError> {
        let task = match task {
            Some(p) => Task::load(p)?,
            None => Task {
                settings: TaskSettings::default(),
                description: String::new(),
            },
        };
        let tools = ToolSet::load(
            tools,
            &task.settings.respond_function,
            &task.settings.transactional,
        )?;
        Ok(JudgeSetup {
            tools,
            settings: task.settings,
            description: task.description,
        })
    }
}

/// The judgement of one row.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Row id.
    pub id: String,
    /// Verdict and reason.
    pub verdict: Verdict,
    /// The pair's scores for the metrics.
    pub score: PairScore,
}

impl Outcome {
    /// The `verdicts.jsonl` line.
    pub fn to_json(&self) -> Value {
        let s = &self.score;
        json!({
            "id": self.id,
            "verdict": u8::from(self.verdict.good),
            "reason": self.verdict.reason,
            "class": self.verdict.class(),
            "reference": s.reference,
            "predicted": s.predicted,
            "exact": s.exact,
            "binary": s.binary,
            "staged": s.staged,
            "rouge_l": s.rouge_l,
        })
    }
}

/// Reads rows `{question, answer, prediction}` (and optional `id`). The answer must parse; a
/// prediction that does not is kept as the reason it failed (it becomes verdict 0).
pub fn read_rows(path: &Path) -> Result<Vec<Row>, JudgeError> {
    let text = std::fs::read_to_string(path).map_err(|source| JudgeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| JudgeError::Input {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let v: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let o = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let question = o
            .get("question")
            .filter(|q| q.is_array())
            .ok_or_else(|| bad("no \"question\" list of messages".into()))?
            .clone();
        let answer = o
            .get("answer")
            .ok_or_else(|| bad("no \"answer\" (the reference call)".into()))
            .and_then(|a| parse_call(a).map_err(|e| bad(format!("answer: {e}"))))?;
        let prediction = match o.get("prediction") {
            Some(p) => parse_call(p),
            None => Err("no prediction in the row".to_string()),
        };
        let id = match o.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("{}", i + 1),
        };
        rows.push(Row {
            id,
            line: i + 1,
            question,
            answer,
            prediction,
        });
    }
    Ok(rows)
}

/// Judges rows in memory and computes the metrics. `origin` names the input in errors.
pub fn judge_rows(
    rows: &[Row],
    setup: &JudgeSetup,
    options: &JudgeOptions,
    origin: &Path,
) -> Result<(Vec<Outcome>, Metrics), JudgeError> {
    judge_rows_with(
        rows,
        setup,
        options,
        origin,
        &|_| {},
        &AtomicBool::new(false),
    )
}

/// [`judge_rows`] with progress (pairs judged so far) and cancellation, for long LLM runs.
pub fn judge_rows_with(
    rows: &[Row],
    setup: &JudgeSetup,
    options: &JudgeOptions,
    origin: &Path,
    progress: &(dyn Fn(usize) + Sync),
    cancel: &AtomicBool,
) -> Result<(Vec<Outcome>, Metrics), JudgeError> {
    let respond = setup.settings.respond_function.as_str();
    let norm = Normalizer::new(&setup.settings.reference_date, &setup.settings.synonyms)
        .map_err(JudgeError::Settings)?;
    let contexts = rows
        .iter()
        .map(|r| {
            Context::from_messages(&r.question, respond).map_err(|message| JudgeError::Input {
                path: origin.to_path_buf(),
                line: r.line,
                message: format!("question: {message}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rubric = Rubric::new(&setup.tools, &norm, respond, Lexicon::build(&contexts));
    let unparseable =
        |why: &str| Verdict::bad(Fault::Unreadable, format!("unparseable prediction: {why}"));
    let mut unanswered = 0usize;
    let verdicts: Vec<Verdict> = match &options.kind {
        JudgeKind::Rubric => rows
            .iter()
            .zip(&contexts)
            .map(|(r, ctx)| match &r.prediction {
                Ok(pred) => rubric.judge(ctx, &r.answer, pred),
                Err(why) => unparseable(why),
            })
            .collect(),
        JudgeKind::Llm(config) => {
            let judge = LlmJudge::new(
                config,
                &setup.description,
                &setup.settings.reference_date,
                &setup.tools,
            )?;
            // Only parseable predictions go to the model; the rest are bad without asking.
            let items: Vec<llm::LlmItem> = rows
                .iter()
                .filter_map(|r| {
                    r.prediction.as_ref().ok().map(|p| llm::LlmItem {
                        question: r.question.clone(),
                        reference: r.answer.clone(),
                        prediction: p.clone(),
                    })
                })
                .collect();
            let mut answers = judge.judge_all(&items, progress, cancel)?.into_iter();
            rows.iter()
                .map(|r| match &r.prediction {
                    Err(why) => unparseable(why),
                    Ok(_) => match answers.next().expect("one answer per item") {
                        LlmVerdict::Answered(v) => v,
                        LlmVerdict::Unanswered(why) => {
                            unanswered += 1;
                            Verdict {
                                good: false,
                                reason: format!("the judge gave no usable answer ({why})"),
                                fault: None,
                            }
                        }
                    },
                })
                .collect()
        }
    };
    let outcomes: Vec<Outcome> = rows
        .iter()
        .zip(&contexts)
        .zip(verdicts)
        .map(|((r, ctx), verdict)| Outcome {
            id: r.id.clone(),
            score: score_pair(
                &rubric,
                &norm,
                ctx,
                &r.answer,
                r.prediction.as_ref().ok(),
                verdict.good,
            ),
            verdict,
        })
        .collect();
    let scores: Vec<PairScore> = outcomes.iter().map(|o| o.score.clone()).collect();
    let mut metrics = Metrics::compute(&scores, respond, &options.kind.label(), options.bootstrap);
    metrics.judge_unanswered = unanswered;
    Ok((outcomes, metrics))
}

/// The secondary scores of one pair (exact, binary, staged, ROUGE-L, every argument right).
pub fn score_pair(
    rubric: &Rubric<'_>,
    norm: &Normalizer,
    ctx: &Context,
    reference: &ToolCall,
    pred: Option<&ToolCall>,
    verdict: bool,
) -> PairScore {
    let is_reply = reference.name == rubric.respond_name();
    let mut s = PairScore {
        reference: reference.name.clone(),
        predicted: pred.map(|p| p.name.clone()),
        verdict,
        exact: false,
        binary: false,
        staged: 0.0,
        rouge_l: is_reply.then_some(0.0),
        all_args_right: (!is_reply).then_some(false),
    };
    let Some(pred) = pred.filter(|p| p.name == reference.name) else {
        return s;
    };
    let rk: BTreeSet<&String> = reference.arguments.keys().collect();
    let pk: BTreeSet<&String> = pred.arguments.keys().collect();
    let union = rk.union(&pk).count();
    let jaccard = if union == 0 {
        1.0
    } else {
        rk.intersection(&pk).count() as f64 / union as f64
    };
    s.binary = rk == pk;
    if is_reply {
        let text = |c: &ToolCall| {
            c.arguments
                .get("message")
                .map(value_text)
                .unwrap_or_default()
        };
        let (r, p) = (text(reference), text(pred));
        let rouge = rouge_l(&r, &p);
        s.rouge_l = Some(rouge);
        s.exact = s.binary && fold(&r) == fold(&p);
        s.staged = staged(true, jaccard, rouge);
    } else {
        s.exact = s.binary
            && reference.arguments.iter().all(|(k, rv)| {
                pred.arguments.get(k).is_some_and(|pv| {
                    norm.canonical(k, &value_text(rv)) == norm.canonical(k, &value_text(pv))
                })
            });
        let report = rubric.compare_args(ctx, reference, pred);
        // Problems beyond the unmatched reference arguments are invented or unknown arguments.
        let extra = report
            .problems
            .len()
            .saturating_sub(report.total - report.matched);
        let denom = report.total + extra;
        let values = if denom == 0 {
            1.0
        } else {
            report.matched as f64 / denom as f64
        };
        s.staged = staged(true, jaccard, values);
        s.all_args_right = Some(report.all_reference_args_right());
    }
    s
}

/// Writes one verdict line per outcome, in order.
pub fn write_verdicts(path: &Path, outcomes: &[Outcome]) -> Result<(), JudgeError> {
    let io = |source| JudgeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = BufWriter::new(file);
    for o in outcomes {
        writeln!(w, "{}", o.to_json()).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Writes `metrics.json` (pretty-printed).
pub fn write_metrics(path: &Path, metrics: &Metrics) -> Result<(), JudgeError> {
    let text = serde_json::to_string_pretty(metrics).expect("metrics serialize");
    std::fs::write(path, text + "\n").map_err(|source| JudgeError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Judges a predictions file: reads tools, task and rows, writes the verdicts (and metrics when
/// asked), and returns the metrics. This is `tracelab judge`.
pub fn judge_file(files: &JudgeFiles, options: &JudgeOptions) -> Result<Metrics, JudgeError> {
    let setup = JudgeSetup::load(&files.tools, files.task.as_deref())?;
    let rows = read_rows(&files.predictions)?;
    if rows.is_empty() {
        return Err(JudgeError::Empty(files.predictions.clone()));
    }
    let (outcomes, metrics) = judge_rows(&rows, &setup, options, &files.predictions)?;
    write_verdicts(&files.verdicts, &outcomes)?;
    if let Some(m) = &files.metrics {
        write_metrics(m, &metrics)?;
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::LlmConfig;
    use crate::llm_mock::{MockRequest, MockServer, Reply};
    use std::sync::Arc;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/judge")
            .join(name)
    }

    fn expected() -> Vec<(String, u8)> {
        std::fs::read_to_string(fixture("predictions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["id"].as_str().unwrap().to_string(),
                    v["expect"].as_u64().unwrap() as u8,
                )
            })
            .collect()
    }

    fn read_lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn judge_file_scores_every_accepted_shape() {
        let dir = tempfile::tempdir().unwrap();
        let files = JudgeFiles {
            tools: fixture("tools.json"),
            task: Some(fixture("task.md")),
            predictions: fixture("predictions.jsonl"),
            verdicts: dir.path().join("verdicts.jsonl"),
            metrics: Some(dir.path().join("metrics.json")),
        };
        let m = judge_file(&files, &JudgeOptions::default()).unwrap();
        let lines = read_lines(&files.verdicts);
        let want = expected();
        assert_eq!(lines.len(), want.len(), "one verdict line per row");
        for (line, (id, verdict)) in lines.iter().zip(&want) {
            assert_eq!(line["id"], id.as_str());
            assert_eq!(line["verdict"], *verdict, "{id}: {}", line["reason"]);
            assert!(!line["reason"].as_str().unwrap().is_empty(), "{id}");
        }
        let unparseable = &lines[5];
        assert!(unparseable["reason"]
            .as_str()
            .unwrap()
            .starts_with("unparseable prediction"));
        assert_eq!(lines[6]["predicted"], Value::Null);
        assert_eq!(m.n, 12);
        assert!((m.score - 7.0 / 12.0).abs() < 1e-12);
        assert!((m.unparseable - 2.0 / 12.0).abs() < 1e-12);
        assert!((m.function_accuracy - 9.0 / 12.0).abs() < 1e-12);
        assert_eq!(m.service_calls.n, 10);
        assert_eq!(m.confusion["FindRestaurants"][metrics::UNPARSEABLE], 2);
        assert!((m.baseline.score - 2.0 / 12.0).abs() < 1e-12);
        let written: Metrics =
            serde_json::from_str(&std::fs::read_to_string(files.metrics.unwrap()).unwrap())
                .unwrap();
        assert_eq!(written, m);
        assert!(m.to_string().contains("12 pairs"));
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(
            &p,
            "{\"question\": [], \"answer\": {\"name\": \"F\"}}\n\n{\"question\": []}\n",
        )
        .unwrap();
        let e = read_rows(&p).unwrap_err().to_string();
        assert!(
            e.ends_with("p.jsonl:3: no \"answer\" (the reference call)"),
            "{e}"
        );
        std::fs::write(&p, "[1]\n").unwrap();
        assert!(read_rows(&p)
            .unwrap_err()
            .to_string()
            .contains("p.jsonl:1: not a JSON object"));
        std::fs::write(&p, "").unwrap();
        let files = JudgeFiles {
            tools: fixture("tools.json"),
            task: None,
            predictions: p,
            verdicts: dir.path().join("v.jsonl"),
            metrics: None,
        };
        assert!(matches!(
            judge_file(&files, &JudgeOptions::default()),
            Err(JudgeError::Empty(_))
        ));
    }

    /// The fake judge model: good when the predicted name is the reference's; garbage for any
    /// call in Oakland; garbage on the first sample for a "Fish" search.
    fn fake_judge(r: &MockRequest) -> Reply {
        let user = r.body["messages"][1]["content"].as_str().unwrap_or("");
        let pair: Value = serde_json::from_str(user).unwrap_or(Value::Null);
        let args = &pair["prediction"]["arguments"];
        if args["city"] == "Oakland" || (args["cuisine"] == "Fish" && r.body["seed"] == 0) {
            return Reply::Content("I am not sure what to say.".into());
        }
        let good = pair["prediction"]["name"] == pair["reference"]["name"];
        let text = json!({"verdict": if good { "good" } else { "bad" }, "reason": "fake judge"});
        Reply::Content(text.to_string())
    }

    #[test]
    fn llm_judge_against_a_local_server() {
        let server = crate::steps::runtime()
            .block_on(MockServer::start(0, Arc::new(fake_judge)))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut llm = LlmConfig::new(server.base_url(), "fake-judge");
        llm.temperature = 0.0;
        llm.concurrency = 4;
        let options = JudgeOptions {
            kind: JudgeKind::Llm(LlmJudgeConfig {
                llm,
                attempts: 3,
                responses: dir.path().join("responses"),
            }),
            bootstrap: Bootstrap::default(),
        };
        let files = JudgeFiles {
            tools: fixture("tools.json"),
            task: Some(fixture("task.md")),
            predictions: fixture("predictions.jsonl"),
            verdicts: dir.path().join("verdicts.jsonl"),
            metrics: None,
        };
        let m = judge_file(&files, &options).unwrap();
        // 10 parseable predictions, 8 distinct prompts (three rows are the same call in other
        // shapes): 6 answered at once, "Fish" on the second sample, Oakland never (3 attempts).
        // Unparseable predictions are not sent.
        assert_eq!(server.total(), 11);
        assert_eq!(m.judge, "llm:fake-judge");
        assert_eq!(m.judge_unanswered, 1);
        let lines = read_lines(&files.verdicts);
        let by_id = |id: &str| lines.iter().find(|l| l["id"] == id).unwrap().clone();
        assert_eq!(by_id("obj-parameters")["verdict"], 1);
        assert_eq!(by_id("obj-parameters")["reason"], "fake judge");
        assert_eq!(by_id("wrong-function")["verdict"], 0);
        assert_eq!(by_id("unparseable")["verdict"], 0);
        let oakland = by_id("wrong-city");
        assert_eq!(oakland["verdict"], 0);
        assert!(
            oakland["reason"]
                .as_str()
                .unwrap()
                .contains("no usable answer"),
            "{oakland}"
        );
        // A rerun answers from the response cache; only never-accepted requests go out again.
        let again = judge_file(&files, &options).unwrap();
        assert_eq!(server.total(), 11 + 1 + 3);
        assert_eq!(again, m);
        assert_eq!(read_lines(&files.verdicts), lines);
    }
}
