//! One step as a Slurm job, seen from the client: write its job file, submit it (or adopt the
//! job a killed client left running for the same key), forward its progress events, and take
//! its result from the shared cache, where the committed manifest is the only proof of success.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cache::{Cache, Manifest, StepKey};
use crate::dag::Node;
use crate::events::{Event, Reporter};
use crate::executor::{Failure, Launch, Published};
use crate::steps::{Inputs, Resource};

use super::node::{write_atomically, JobFile, JobPaths};
use super::{JobState, Slurm};

/// Runs `node` as a Slurm job (with the configured retries) and returns its committed entry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn execute(
    slurm: &Slurm,
    node: &Node,
    cache: &Cache,
    root: &Path,
    launch: &Launch,
    inputs: &Inputs,
    reporter: &dyn Reporter,
    cancel: &AtomicBool,
) -> Result<Published, Failure> {
    let key = &launch.key;
    let dir = slurm.step_dir(&key.0);
    let paths = JobPaths::in_dir(&dir);
    let mut attempt = 0;
    loop {
        let adopted = if attempt == 0 {
            slurm.adopt(&key.0)
        } else {
            None
        };
        let id = match adopted {
            Some(id) => id,
            None => submit(slurm, node, cache, root, launch, inputs, &dir, &paths)
                .map_err(Failure::Error)?,
        };
        if attempt == 0 {
            reporter.event(&Event::StepStarted {
                label: node.label.clone(),
                key: key.0.clone(),
                job: Some(id.clone()),
            });
        } else {
            reporter.event(&Event::StepProgress {
                label: node.label.clone(),
                done: 0,
                total: None,
                message: format!("retry {attempt}: slurm job {id}"),
            });
        }
        let end = follow(slurm, &id, &paths.events, &node.label, reporter);
        slurm.release(&id);
        if let Some(m) = committed(cache, key, end.state == "COMPLETED") {
            return Ok(Published {
                manifest: m,
                commit: None,
            });
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Failure::Cancelled);
        }
        let cause = describe(&id, &end, &paths.error, &dir);
        if attempt >= slurm.settings().retries {
            return Err(Failure::Error(cause));
        }
        tracing::warn!(label = %node.label, "{cause}; submitting again");
        attempt += 1;
    }
}

/// Writes the job file (fresh progress and error files) and submits the job.
#[allow(clippy::too_many_arguments)]
fn submit(
    slurm: &Slurm,
    node: &Node,
    cache: &Cache,
    root: &Path,
    launch: &Launch,
    inputs: &Inputs,
    dir: &Path,
    paths: &JobPaths,
) -> Result<String, String> {
    let kind = node.step.kind();
    let mut opts = slurm.settings().for_kind(kind);
    let resource = node.step.resource(&node.params, usize::MAX);
    let threads = opts.cpus.unwrap_or(match resource {
        Resource::Cpu { slots } => slots,
        Resource::Http | Resource::Gpu => 1,
    });
    if resource == Resource::Gpu && opts.gres.is_none() && opts.gpus.is_none() {
        opts.gres = Some("gpu:1".into());
    }
    let job = JobFile {
        label: node.label.clone(),
        parts: launch.parts.clone(),
        forced: launch.forced,
        inputs: inputs.clone(),
        root: root.to_path_buf(),
        cache: cache.dir.clone(),
        threads,
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for stale in [&paths.events, &paths.error] {
            match std::fs::remove_file(stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let text = serde_json::to_vec_pretty(&job).expect("job file serializes");
        write_atomically(&paths.job, &text)
    };
    write().map_err(|e| format!("{}: {e}", paths.job.display()))?;
    let mut args = vec![
        format!("--comment={}", launch.key.0),
        format!("--output={}", dir.join("slurm-%j.log").display()),
        format!("--chdir={}", root.display()),
        format!("--cpus-per-task={threads}"),
    ];
    let named = [
        ("partition", &opts.partition),
        ("account", &opts.account),
        ("qos", &opts.qos),
        ("time", &opts.time),
        ("mem", &opts.mem),
        ("gres", &opts.gres),
        ("gpus", &opts.gpus),
    ];
    for (flag, value) in named {
        if let Some(v) = value {
            args.push(format!("--{flag}={v}"));
        }
    }
    args.extend(opts.extra_args.iter().cloned());
    let script = format!(
        "exec {} exec-step {}",
        shell_quote(&slurm.exe.to_string_lossy()),
        shell_quote(&paths.job.to_string_lossy())
    );
    slurm
        .submit(&args, &script)
        .map_err(|e| format!("submitting its slurm job: {e}"))
}

/// Waits for the job's final state, forwarding the progress it writes.
fn follow(
    slurm: &Slurm,
    id: &str,
    events: &Path,
    label: &str,
    reporter: &dyn Reporter,
) -> JobState {
    let mut offset = 0u64;
    let mut warned = false;
    loop {
        let (state, error) = slurm.wait(id, Duration::from_millis(500));
        offset = forward(events, offset, label, reporter);
        match (state, error) {
            (Some(s), _) if s.is_final() => return s,
            (_, Some(e)) if !warned => {
                warned = true;
                reporter.event(&Event::StepProgress {
                    label: label.to_string(),
                    done: 0,
                    total: None,
                    message: format!("cannot query slurm ({e}); retrying"),
                });
            }
            (_, None) => warned = false,
            _ => {}
        }
    }
}

/// Forwards the complete event lines after `offset` (progress and lock waits: the rest the
/// client tells itself); returns the new offset.
fn forward(path: &Path, offset: u64, label: &str, reporter: &dyn Reporter) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else {
        return offset;
    };
    let mut text = String::new();
    if f.seek(SeekFrom::Start(offset)).is_err() || f.read_to_string(&mut text).is_err() {
        return offset;
    }
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    for line in text[..complete].lines() {
        match serde_json::from_str::<Event>(line) {
            Ok(e @ (Event::StepProgress { .. } | Event::StepWaiting { .. })) => reporter.event(&e),
            Ok(_) => {}
            Err(e) => tracing::debug!(label, "unreadable progress line: {e}"),
        }
    }
    offset + complete as u64
}

/// The step's committed entry. When the job says it succeeded and the entry is not visible yet
/// (a network file system's attribute cache), the directory is listed again for a few seconds
/// before the entry is called absent.
fn committed(cache: &Cache, key: &StepKey, job_succeeded: bool) -> Option<Manifest> {
    let patience = if job_succeeded {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    };
    let start = Instant::now();
    loop {
        if let Some(m) = cache.lookup(key) {
            return Some(m);
        }
        if start.elapsed() >= patience {
            return None;
        }
        let _ = std::fs::read_dir(&cache.dir).map(|d| d.count());
        let _ = std::fs::read_dir(cache.out_dir(key)).map(|d| d.count());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Why a job left no entry: the step's own cause when it wrote one, the job's id, state and
/// exit code, and where its log is.
fn describe(id: &str, end: &JobState, error_file: &Path, dir: &Path) -> String {
    let cause = std::fs::read_to_string(error_file).unwrap_or_default();
    let cause = cause.trim();
    let log: PathBuf = dir.join(format!("slurm-{id}.log"));
    let code = end
        .exit_code
        .map_or(String::new(), |c| format!(", exit code {c}"));
    let detail = if end.reason.is_empty() || end.reason == "None" {
        String::new()
    } else {
        format!(" ({})", end.reason)
    };
    let head = if cause.is_empty() {
        "no cache entry".to_string()
    } else {
        cause.to_string()
    };
    format!(
        "{head} [slurm job {id} {}{detail}{code}; log {}]",
        end.state,
        log.display()
    )
}

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_spaces_and_quotes() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn a_failure_names_the_cause_the_job_and_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let err = dir.path().join("error.txt");
        std::fs::write(&err, "student worker not found\n").unwrap();
        let end = JobState {
            state: "FAILED".into(),
            exit_code: Some(1),
            reason: "NonZeroExitCode".into(),
        };
        let d = describe("42", &end, &err, dir.path());
        assert!(
            d.starts_with("student worker not found [slurm job 42 FAILED"),
            "{d}"
        );
        assert!(
            d.contains("exit code 1") && d.contains("slurm-42.log"),
            "{d}"
        );
    }
}
