//! The `tracelab judge` command's arguments, so the binary only has to list the subcommand:
//! scores any JSONL of `{question, answer, prediction}` rows and prints the metrics.

use std::path::PathBuf;

use crate::judge::{
    judge_file, Bootstrap, JudgeError, JudgeFiles, JudgeKind, JudgeOptions, Metrics,
};

/// Which judge, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JudgeArg {
    /// The offline rubric judge.
    Rubric,
}

/// `tracelab judge --tools TOOLS.json --predictions FILE.jsonl --out VERDICTS.jsonl
/// [--task TASK.md] [--judge rubric]`.
#[derive(Debug, Clone, clap::Args)]
pub struct JudgeArgs {
    /// Tool schemas (OpenAI tools JSON).
    #[arg(long)]
    pub tools: PathBuf,
    /// Rows `{question, answer, prediction}`, one JSON object a line.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Where to write one verdict line per input row.
    #[arg(long)]
    pub out: PathBuf,
    /// Task file (reply function, reference date, synonyms).
    #[arg(long)]
    pub task: Option<PathBuf>,
    /// Which judge gives the verdicts.
    #[arg(long, value_enum, default_value = "rubric")]
    pub judge: JudgeArg,
    /// Where to write the metrics; default: next to --out, as `<stem>.metrics.json`.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Seed of the bootstrap interval.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl JudgeArgs {
    /// The metrics file this invocation writes.
    pub fn metrics_path(&self) -> PathBuf {
        self.metrics.clone().unwrap_or_else(|| {
            let stem = self
                .out
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "verdicts".into());
            self.out.with_file_name(format!("{stem}.metrics.json"))
        })
    }

    /// Runs the judge; the caller prints the returned metrics (`Display`).
    pub fn run(&self) -> Result<Metrics, JudgeError> {
        let files = JudgeFiles {
            tools: self.tools.clone(),
            task: self.task.clone(),
            predictions: self.predictions.clone(),
            verdicts: self.out.clone(),
            metrics: Some(self.metrics_path()),
        };
        let options = JudgeOptions {
            kind: match self.judge {
                JudgeArg::Rubric => JudgeKind::Rubric,
            },
            bootstrap: Bootstrap {
                seed: self.seed,
                ..Bootstrap::default()
            },
        };
        judge_file(&files, &options)
    }
}
