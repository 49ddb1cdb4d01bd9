//! The `judge` step: gives every prediction of a cell a verdict with a reason and writes the
//! cell's metrics (`verdicts.jsonl` and `metrics.json`), which the `report` step aggregates.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::judge::{
    self, Bootstrap, JudgeError, JudgeKind, JudgeOptions, JudgeSetup, LlmJudgeConfig,
};
use crate::llm::LlmConfig;
use crate::steps::{
    canonicalize, typed, Artifact, ParamError, Resource, Step, StepContext, StepError,
};

/// File name of the per-pair verdicts inside the step's output directory.
pub const VERDICTS_FILE: &str = "verdicts.jsonl";

/// Which judge the experiment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JudgeChoice {
    /// The offline rubric judge.
    #[default]
    Rubric,
    /// A model behind an OpenAI-compatible endpoint (`[judge.llm]`).
    Llm,
}

/// Parameters of `[judge]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeParams {
    /// Which judge gives the verdicts.
    #[serde(default)]
    pub judge: JudgeChoice,
    /// Bootstrap resamples for the score's 95% interval.
    #[serde(default = "default_samples")]
    pub bootstrap_samples: usize,
    /// Seed of the bootstrap (fixed, so the interval is reproducible).
    #[serde(default)]
    pub bootstrap_seed: u64,
    /// Endpoint and model of the LLM judge (`[judge.llm]`: base_url, model, api_key_env,
    /// temperature (default 0 here), concurrency, retries, …); used when `judge = "llm"`.
    #[serde(default)]
    pub llm: Option<LlmConfig>,
    /// Answers asked per pair before an unparseable judge answer counts as unanswered.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

fn default_samples() -> usize {
    1000
}

fn default_attempts() -> u32 {
    3
}

/// The judge step.
pub struct Judge;

impl Step for Judge {
    fn kind(&self) -> &'static str {
        "judge"
    }

    fn version(&self) -> u32 {
        // 2: reasons for unparseable predictions come from `formats::parse_call`.
        // 3: clock times and ISO dates side by side no longer read as a phone number.
        // 4: dialogue checks on replies (outcomes, stated values, requests), a class per verdict.
        // 5: replies' times and dates found by the shared text layer; chain names; counts.
        // 6: no built-in synonyms (the task file's only); swapped values contradict the user.
        // 7: closing replies that leave the user unanswered; outcomes the reference reports
        // where the record is ambiguous; "found 1"; negated categories; overridden defaults.
        // 8: repeated replies, names nobody said, a city given in words asked again, values
        // the user just gave ignored, questions asked before a transaction, counts checked
        // against the reference's values, "13:15." read as a time.
        // 9: words nobody can read; counts labelled with a parameter's words; a place given as
        // the answer to "where"; "found 1 restaurants"; no question carried past a transaction.
        // 10: the same result again after the user asked for another; a clock time whose hour
        // is a word.
        // 11: a request to confirm that states nothing to confirm.
        // 12: a question asked in the turn that confirmed a transaction is answered by the
        // reply that reports it.
        // 13: ... even when the question names no field of the record ("their contact
        // number?", "is a band playing?"): the reply must talk about one of its facts; a
        // reply that proposes again only values of a proposal the user just declined.
        13
    }

    fn about(&self) -> &'static str {
        "judge predictions against references (rubric or LLM judge) and compute the cell's metrics"
    }

    fn consumes(&self) -> &'static [Artifact] {
        &[Artifact::Predictions, Artifact::Tools, Artifact::Task]
    }

    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Verdicts]
    }

    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        // A judge should be deterministic: its temperature defaults to 0, not the client's 0.7.
        let mut params = params.clone();
        if let Some(llm) = params.get_mut("llm").and_then(Value::as_object_mut) {
            llm.entry("temperature").or_insert(Value::from(0.0));
        }
        let v = canonicalize::<JudgeParams>(&params)?;
        let mut p: JudgeParams = serde_json::from_value(v).map_err(|e| ParamError {
            path: String::new(),
            message: e.to_string(),
        })?;
        if p.bootstrap_samples == 0 {
            return Err(ParamError {
                path: "bootstrap_samples".into(),
                message: "must be at least 1".into(),
            });
        }
        match p.judge {
            JudgeChoice::Llm if p.llm.is_none() => {
                return Err(ParamError {
                    path: "llm".into(),
                    message: "judge = \"llm\" needs a [judge.llm] table with base_url and model"
                        .into(),
                })
            }
            JudgeChoice::Llm if p.attempts == 0 => {
                return Err(ParamError {
                    path: "attempts".into(),
                    message: "must be at least 1".into(),
                })
            }
            JudgeChoice::Llm => {
                if let Some(llm) = &p.llm {
                    llm.check().map_err(|(key, message)| ParamError {
                        path: format!("llm.{key}"),
                        message,
                    })?;
                }
            }
            // An LLM table kept "one table away" must not change the rubric judge's cache key.
            JudgeChoice::Rubric => {
                p.llm = None;
                p.attempts = default_attempts();
            }
        }
        serde_json::to_value(&p).map_err(|e| ParamError {
            path: String::new(),
            message: e.to_string(),
        })
    }

    fn resource(&self, params: &Value, _jobs: usize) -> Resource {
        if params["judge"] == "llm" {
            Resource::Http
        } else {
            Resource::Cpu { slots: 1 }
        }
    }

    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: JudgeParams = typed(ctx.params)?;
        let kind = match (p.judge, p.llm) {
            (JudgeChoice::Rubric, _) => JudgeKind::Rubric,
            (JudgeChoice::Llm, Some(llm)) => JudgeKind::Llm(LlmJudgeConfig {
                llm,
                attempts: p.attempts,
                responses: ctx.responses.join("judge"),
            }),
            (JudgeChoice::Llm, None) => {
                return Err(StepError::Param {
                    key: "llm".into(),
                    message: "judge = \"llm\" needs a [judge.llm] table".into(),
                })
            }
        };
        let options = JudgeOptions {
            kind,
            bootstrap: Bootstrap {
                samples: p.bootstrap_samples,
                seed: p.bootstrap_seed,
            },
        };
        let tools = ctx.input(Artifact::Tools)?;
        let task = ctx.input(Artifact::Task)?;
        let predictions = ctx.input(Artifact::Predictions)?;
        let setup = JudgeSetup::load(&tools, Some(&task)).map_err(step_error)?;
        let rows = judge::read_rows(&predictions).map_err(step_error)?;
        if rows.is_empty() {
            return Err(step_error(JudgeError::Empty(predictions)));
        }
        ctx.check_cancelled()?;
        let total = rows.len() as u64;
        let (outcomes, metrics) = {
            let view: &StepContext<'_> = ctx;
            let progress = |done: usize| view.report(done as u64, Some(total), "judged");
            judge::judge_rows_with(
                &rows,
                &setup,
                &options,
                &predictions,
                &progress,
                view.cancel,
            )
            .map_err(step_error)?
        };
        ctx.report(total, Some(total), "judged");
        judge::write_verdicts(&ctx.out_dir.join(VERDICTS_FILE), &outcomes).map_err(step_error)?;
        judge::write_metrics(&ctx.output(Artifact::Verdicts), &metrics).map_err(step_error)?;
        ctx.stat("pairs", metrics.n);
        ctx.stat("score", metrics.score);
        ctx.stat("score_ci", vec![metrics.score_ci[0], metrics.score_ci[1]]);
        ctx.stat("macro_score", metrics.macro_score);
        ctx.stat("baseline_score", metrics.baseline.score);
        ctx.stat("baseline_macro_score", metrics.baseline.macro_score);
        ctx.stat("function_accuracy", metrics.function_accuracy);
        ctx.stat("unparseable", metrics.unparseable);
        ctx.stat("judge", metrics.judge.clone());
        ctx.stat("judge_unanswered", metrics.judge_unanswered);
        Ok(())
    }
}

fn step_error(e: JudgeError) -> StepError {
    match e {
        JudgeError::Io { path, source } => StepError::io(path, source),
        JudgeError::Llm(judge::LlmJudgeError::Cancelled) => StepError::Cancelled,
        JudgeError::Llm(other) => StepError::External(other.to_string()),
        other => StepError::Data(other.to_string()),
    }
}

/// Reads a judge step's metrics back (for the report step).
pub fn read_metrics(dir: &Path) -> Result<judge::Metrics, StepError> {
    let path = dir.join(Artifact::Verdicts.file_name());
    let text = std::fs::read_to_string(&path).map_err(|e| StepError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| StepError::Data(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::{Inputs, Progress};
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn params_are_canonical_and_checked() {
        let s = Judge;
        let a = s.canonical_params(&json!({})).unwrap();
        let b = s
            .canonical_params(&json!({"judge": "rubric", "bootstrap_samples": 1000}))
            .unwrap();
        assert_eq!(a, b);
        assert!(s.canonical_params(&json!({"judge": "oracle"})).is_err());
        // An LLM table next to the rubric judge does not change its key; llm needs the table.
        let with_table = s
            .canonical_params(&json!({"llm": {"base_url": "http://x/v1", "model": "m"}}))
            .unwrap();
        assert_eq!(with_table, a);
        assert_eq!(
            s.canonical_params(&json!({"judge": "llm"}))
                .unwrap_err()
                .path,
            "llm"
        );
        let llm = s
            .canonical_params(
                &json!({"judge": "llm", "llm": {"base_url": "http://x/v1", "model": "m"}}),
            )
            .unwrap();
        assert_eq!(s.resource(&llm, 2), Resource::Http);
        assert_eq!(llm["llm"]["temperature"], 0.0);
        assert_eq!(s.resource(&a, 2), Resource::Cpu { slots: 1 });
        assert!(s.canonical_params(&json!({"bogus": 1})).is_err());
        let e = s
            .canonical_params(&json!({"bootstrap_samples": 0}))
            .unwrap_err();
        assert_eq!(e.path, "bootstrap_samples");
    }

    #[test]
    fn runs_on_artifacts_and_writes_verdicts_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(
            input.join("tools.json"),
            json!([{"type": "function", "function": {"name": "Find", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            input.join("task.md"),
            "+++\nreference_date = \"2019-03-01\"\n+++\nFind places.\n",
        )
        .unwrap();
        let q = json!([{"role": "user", "content": "Places in Paris"}]);
        let rows = [
            json!({"id": "a#0", "question": q, "answer": {"name": "Find", "arguments": {"city": "Paris"}},
                   "prediction": {"name": "Find", "arguments": {"city": "paris"}}}),
            json!({"id": "a#1", "question": q, "answer": {"name": "Find", "arguments": {"city": "Paris"}},
                   "prediction": "nonsense"}),
        ];
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(input.join("predictions.jsonl"), text).unwrap();
        let mut by_artifact = BTreeMap::new();
        for a in [Artifact::Tools, Artifact::Task, Artifact::Predictions] {
            by_artifact.insert(a, input.clone());
        }
        let inputs = Inputs {
            by_artifact,
            ..Inputs::default()
        };
        let params = Judge.canonical_params(&json!({})).unwrap();
        let cancel = AtomicBool::new(false);
        let progress = |_: Progress| {};
        let mut ctx = StepContext {
            params: &params,
            inputs: &inputs,
            out_dir: &out,
            root: dir.path(),
            responses: dir.path(),
            threads: 1,
            stats: Default::default(),
            cancel: &cancel,
            progress: &progress,
        };
        Judge.run(&mut ctx).unwrap();
        assert_eq!(ctx.stats["pairs"], 2);
        let lines: Vec<Value> = std::fs::read_to_string(out.join(VERDICTS_FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["id"], "a#0");
        assert_eq!(lines[0]["verdict"], 1);
        assert_eq!(lines[1]["verdict"], 0);
        assert!(lines[1]["reason"].as_str().unwrap().contains("unparseable"));
        let m = read_metrics(&out).unwrap();
        assert_eq!(m.n, 2);
        assert!((m.score - 0.5).abs() < 1e-12);
        assert!((m.unparseable - 0.5).abs() < 1e-12);
    }
}
