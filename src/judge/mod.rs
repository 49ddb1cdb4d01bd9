//! Judging predictions: reads rows `{question, answer, prediction}`, gives each a verdict with a
//! reason (the offline [`rubric`] judge, or an LLM judge), and computes the cell's [`Metrics`].
//!
//! Entry points: [`judge_file`] (the `tracelab judge` command and the `judge` step) and
//! [`judge_rows`] for rows already in memory. Output: `verdicts.jsonl`, one line per input row in
//! order (`{"id", "verdict": 0|1, "reason", …}`), and `metrics.json`.

pub mod cli;
pub mod context;
pub mod metrics;
pub mod normalize;
pub mod rubric;

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::conversation::ToolCall;
use crate::task::{Task, TaskError, TaskSettings};
use crate::tools::{ToolSet, ToolsError};

pub use context::{parse_call, Context};
pub use metrics::{Bootstrap, Metrics, PairScore};
pub use normalize::Normalizer;
pub use rubric::{Lexicon, Rubric, Verdict};

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
}

/// Which judge gives the verdicts.
#[derive(Debug, Clone, PartialEq)]
pub enum JudgeKind {
    /// The offline rubric judge.
    Rubric,
}

impl JudgeKind {
    /// The name recorded in `metrics.json`.
    pub fn label(&self) -> String {
        match self {
            JudgeKind::Rubric => "rubric".to_string(),
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
    let verdicts: Vec<Verdict> = match &options.kind {
        JudgeKind::Rubric => rows
            .iter()
            .zip(&contexts)
            .map(|(r, ctx)| match &r.prediction {
                Ok(pred) => rubric.judge(ctx, &r.answer, pred),
                Err(why) => Verdict {
                    good: false,
                    reason: format!("unparseable prediction: {why}"),
                },
            })
            .collect(),
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
    let metrics = Metrics::compute(&scores, respond, &options.kind.label(), options.bootstrap);
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
