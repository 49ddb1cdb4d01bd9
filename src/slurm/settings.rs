//! The Slurm options of a project: `[slurm]` in `tracelab.toml` at the project root (or the file
//! `--settings` names). Where a step runs is a property of the environment, not of the
//! experiment, so none of this enters a cache key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::SlurmError;

/// Step kinds that stay on the client by default: cheap steps, which would otherwise spend
/// longer in the queue than running.
pub const CLIENT_STEPS: &[&str] = &[
    "ingest", "schema", "split", "corrupt", "filter", "validate", "judge", "report",
];

/// `[slurm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Options every job gets, `[slurm.job]` (a step kind's own table adds to or overrides
    /// them).
    #[serde(default)]
    pub job: JobOptions,
    /// Step kinds that run on the client, not as jobs.
    #[serde(default = "default_client_steps")]
    pub client_steps: Vec<String>,
    /// Per step kind: `[slurm.steps.train]`.
    #[serde(default)]
    pub steps: BTreeMap<String, JobOptions>,
    /// Times a failed job is submitted again before its step fails.
    #[serde(default)]
    pub retries: u32,
    /// Most jobs of one run queued or running at once.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: usize,
    /// Status polling: first interval after a change, in seconds.
    #[serde(default = "default_poll_min")]
    pub poll_min_s: f64,
    /// Status polling: the longest interval, reached by backing off while nothing changes.
    #[serde(default = "default_poll_max")]
    pub poll_max_s: f64,
    /// The tracelab binary jobs run (default: the one running the client; it must be reachable
    /// at the same path from the compute nodes).
    #[serde(default)]
    pub tracelab: Option<PathBuf>,
}

/// sbatch options of a job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// `--time` (Slurm's format, e.g. `"02:00:00"`).
    pub time: Option<String>,
    /// `--mem` (e.g. `"16G"`).
    pub mem: Option<String>,
    /// `--cpus-per-task`, which is also the step's thread count (default: the threads the step
    /// asks for).
    pub cpus: Option<usize>,
    /// `--gres` (e.g. `"gpu:1"`; a step that runs on CUDA gets `gpu:1` unless `gres` or `gpus`
    /// says otherwise).
    pub gres: Option<String>,
    /// `--gpus`.
    pub gpus: Option<String>,
    /// Further sbatch arguments, as given.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

fn default_client_steps() -> Vec<String> {
    CLIENT_STEPS.iter().map(|s| s.to_string()).collect()
}
fn default_max_jobs() -> usize {
    500
}
fn default_poll_min() -> f64 {
    0.25
}
fn default_poll_max() -> f64 {
    5.0
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            job: JobOptions::default(),
            client_steps: default_client_steps(),
            steps: BTreeMap::new(),
            retries: 0,
            max_jobs: default_max_jobs(),
            poll_min_s: default_poll_min(),
            poll_max_s: default_poll_max(),
            tracelab: None,
        }
    }
}

/// The whole settings file; only `[slurm]` is tracelab's today.
#[derive(Debug, Deserialize)]
struct File {
    #[serde(default)]
    slurm: Option<Settings>,
}

impl Settings {
    /// Reads `[slurm]` from `path`; a missing file gives the defaults when `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<Settings, SlurmError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Settings::default())
            }
            Err(e) => return Err(SlurmError::Settings(format!("{}: {e}", path.display()))),
        };
        let file: File = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .map_or(String::new(), |l| format!(" line {l}:"));
            SlurmError::Settings(format!("{}:{line} {}", path.display(), e.message()))
        })?;
        let s = file.slurm.unwrap_or_default();
        s.check()
            .map_err(|e| SlurmError::Settings(format!("{}: [slurm] {e}", path.display())))?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        if !(self.poll_min_s > 0.0 && self.poll_min_s <= self.poll_max_s) {
            return Err(format!(
                "poll_min_s ({}) must be positive and at most poll_max_s ({})",
                self.poll_min_s, self.poll_max_s
            ));
        }
        if self.max_jobs == 0 {
            return Err("max_jobs must be at least 1".into());
        }
        for kind in self.steps.keys().chain(&self.client_steps) {
            if crate::steps::find(kind).is_none() {
                return Err(format!(
                    "no step kind {kind:?} (`tracelab steps` lists them)"
                ));
            }
        }
        Ok(())
    }

    /// The options of a job running a step of `kind`: its own table over the common one.
    pub fn for_kind(&self, kind: &str) -> JobOptions {
        let mut o = self.job.clone();
        if let Some(k) = self.steps.get(kind) {
            let over = |a: &mut Option<String>, b: &Option<String>| {
                if b.is_some() {
                    a.clone_from(b);
                }
            };
            over(&mut o.partition, &k.partition);
            over(&mut o.account, &k.account);
            over(&mut o.qos, &k.qos);
            over(&mut o.time, &k.time);
            over(&mut o.mem, &k.mem);
            over(&mut o.gres, &k.gres);
            over(&mut o.gpus, &k.gpus);
            o.cpus = k.cpus.or(o.cpus);
            o.extra_args.extend(k.extra_args.iter().cloned());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, SlurmError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tracelab.toml");
        std::fs::write(&p, text).unwrap();
        Settings::load(&p, true)
    }

    #[test]
    fn a_kind_table_overrides_the_common_options_and_adds_arguments() {
        let s = parse(
            "[slurm.job]\npartition = \"cpu\"\ntime = \"1:00:00\"\nextra_args = [\"--exclusive\"]\n\
             [slurm.steps.train]\npartition = \"gpu\"\ngres = \"gpu:1\"\nextra_args = [\"-C\", \"a100\"]\n",
        )
        .unwrap();
        let t = s.for_kind("train");
        assert_eq!(t.partition.as_deref(), Some("gpu"));
        assert_eq!(t.time.as_deref(), Some("1:00:00"));
        assert_eq!(t.gres.as_deref(), Some("gpu:1"));
        assert_eq!(t.extra_args, ["--exclusive", "-C", "a100"]);
        assert_eq!(s.for_kind("predict").partition.as_deref(), Some("cpu"));
        assert!(s.client_steps.iter().any(|k| k == "report"));
    }

    #[test]
    fn a_missing_file_is_the_defaults_unless_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tracelab.toml");
        assert_eq!(Settings::load(&p, false).unwrap().max_jobs, 500);
        let e = Settings::load(&p, true).unwrap_err().to_string();
        assert!(e.contains("tracelab.toml"), "{e}");
    }

    #[test]
    fn bad_settings_name_the_file_line_and_problem() {
        let e = parse("[slurm.job]\npartition = \"gpu\"\npartitoin = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tracelab.toml: line 3") && e.contains("partitoin"),
            "{e}"
        );
        let e = parse("[slurm.steps.trian]\ngres = \"gpu:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"trian\""), "{e}");
        let e = parse("[slurm]\npoll_min_s = 0\n").unwrap_err().to_string();
        assert!(e.contains("poll_min_s"), "{e}");
    }
}
