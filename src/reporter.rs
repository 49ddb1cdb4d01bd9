//! Reporters: turn run events into progress bars, plain log lines, or JSON lines.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::events::{Event, Reporter};

/// One JSON object per event on stdout (for scripts and tests).
pub struct JsonReporter {
    out: Mutex<std::io::Stdout>,
}

impl JsonReporter {
    /// A reporter writing to stdout.
    pub fn new() -> Self {
        JsonReporter {
            out: Mutex::new(std::io::stdout()),
        }
    }
}

impl Default for JsonReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for JsonReporter {
    fn event(&self, e: &Event) {
        let line = serde_json::to_string(e).expect("events serialize");
        let mut out = self.out.lock().expect("stdout lock");
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Human output on stderr: progress bars on a terminal, plain lines otherwise; `quiet` keeps
/// only failures.
pub struct HumanReporter {
    quiet: bool,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    steps: Mutex<HashMap<String, ProgressBar>>,
}

impl HumanReporter {
    /// Progress bars when stderr is a terminal and not quiet.
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let bars = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            Bars {
                multi,
                overall,
                steps: Mutex::new(HashMap::new()),
            }
        });
        HumanReporter { quiet, bars }
    }

    fn line(&self, s: String) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(s);
            }
            None => eprintln!("{s}"),
        }
    }
}

impl Reporter for HumanReporter {
    fn event(&self, e: &Event) {
        match e {
            Event::StepFailed { label, error } => self.line(format!("FAILED  {label}: {error}")),
            _ if self.quiet => {}
            Event::RunStarted {
                experiment,
                steps,
                jobs,
            } => {
                if let Some(b) = &self.bars {
                    b.overall.set_length(*steps as u64);
                    b.overall.set_message(experiment.clone());
                } else {
                    eprintln!("run {experiment}: {steps} steps, {jobs} jobs");
                }
            }
            Event::StepCached { label, cut_off, .. } => {
                if let Some(b) = &self.bars {
                    b.overall.inc(1);
                }
                if *cut_off {
                    self.line(format!("cached  {label} (input reran, same output)"));
                }
            }
            Event::StepStarted { label, job, .. } => match &self.bars {
                Some(b) => {
                    let pb = b.multi.add(ProgressBar::new_spinner());
                    pb.set_style(
                        ProgressStyle::with_template("  {spinner} {prefix} {wide_msg}")
                            .expect("valid template"),
                    );
                    pb.set_prefix(label.clone());
                    if let Some(job) = job {
                        pb.set_message(format!("slurm job {job}"));
                    }
                    pb.enable_steady_tick(Duration::from_millis(200));
                    b.steps.lock().expect("bars lock").insert(label.clone(), pb);
                }
                None => match job {
                    Some(job) => eprintln!("start   {label} (slurm job {job})"),
                    None => eprintln!("start   {label}"),
                },
            },
            Event::RunWaiting { what, holder } => {
                self.line(format!("waiting for {what}, held by {holder}"))
            }
            Event::StepWaiting {
                label,
                what,
                holder,
            } => self.line(format!("waiting {label}: for {what}, held by {holder}")),
            Event::StepProgress {
                label,
                done,
                total,
                message,
            } => {
                if let Some(b) = &self.bars {
                    if let Some(pb) = b.steps.lock().expect("bars lock").get(label) {
                        let frac = total.map_or(String::new(), |t| format!("{done}/{t} "));
                        pb.set_message(format!("{frac}{message}"));
                    }
                }
            }
            Event::StepFinished { label, seconds, .. } => {
                if let Some(b) = &self.bars {
                    if let Some(pb) = b.steps.lock().expect("bars lock").remove(label) {
                        pb.finish_and_clear();
                    }
                    b.overall.inc(1);
                }
                self.line(format!("done    {label} ({seconds:.1}s)"));
            }
            Event::StepWarning { label, message } => {
                self.line(format!("warning {label}: {message}"));
            }
            Event::StepSkipped { label, reason } => {
                if let Some(b) = &self.bars {
                    if let Some(pb) = b.steps.lock().expect("bars lock").remove(label) {
                        pb.finish_and_clear();
                    }
                    b.overall.inc(1);
                }
                self.line(format!("skipped {label}: {reason}"));
            }
            Event::RunFinished {
                ran,
                cached,
                failed,
                skipped,
                interrupted,
                seconds,
            } => {
                if let Some(b) = &self.bars {
                    b.overall.finish_and_clear();
                }
                let tail = if *interrupted { " (interrupted)" } else { "" };
                eprintln!("{ran} ran, {cached} cached, {failed} failed, {skipped} skipped in {seconds:.2}s{tail}");
            }
        }
    }
}
