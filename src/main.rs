//! `tracelab`: the command line. A thin layer over the library: parse flags, load the experiment,
//! build the DAG, hand it to the executor or the planner, print what comes back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use globset::{Glob, GlobSet, GlobSetBuilder};

use tracelab::cache::{Cache, LockWait, StepKey};
use tracelab::config::{Experiment, SetOverride};
use tracelab::dag::{self, Dag};
use tracelab::events::Reporter;
use tracelab::executor::{self, RunOptions};
use tracelab::reporter::{HumanReporter, JsonReporter};
use tracelab::steps;

#[derive(Parser)]
#[command(
    name = "tracelab",
    version,
    about = "Train small tool-calling students from noisy traces: experiments as cached, parallel DAGs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print only failures and results.
    #[arg(long, global = true)]
    quiet: bool,
    /// Print run events as JSON lines on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Cache directory (default: `cache/` in the project root).
    #[arg(long, global = true, env = "TRACELAB_CACHE")]
    cache: Option<PathBuf>,
    /// Give up after this many seconds waiting for a lock another tracelab process holds (a
    /// run computing the same step, `gc`); by default wait as long as it takes.
    #[arg(long, global = true, value_name = "SECONDS")]
    lock_timeout: Option<f64>,
}

impl Cli {
    fn lock_timeout(&self) -> Result<Option<std::time::Duration>> {
        self.lock_timeout
            .map(|s| {
                std::time::Duration::try_from_secs_f64(s)
                    .map_err(|_| anyhow::anyhow!("--lock-timeout {s}: not a number of seconds"))
            })
            .transpose()
    }
}

#[derive(clap::Args)]
struct ExpArgs {
    /// The experiment file (TOML).
    experiment: PathBuf,
    /// Override any experiment value by its dotted path, e.g. `--set train.epochs=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<SetOverride>,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment: every step not in the cache runs, in parallel where possible.
    Run {
        #[command(flatten)]
        exp: ExpArgs,
        /// Parallel job slots (default: number of cores).
        #[arg(long, short)]
        jobs: Option<usize>,
        /// Run only steps whose label matches (and what they need), e.g. `clean/*`.
        #[arg(long, value_name = "GLOB")]
        only: Vec<String>,
        /// Ignore the cache for steps whose label matches.
        #[arg(long, value_name = "GLOB")]
        force: Vec<String>,
        /// Show the plan instead of running.
        #[arg(long)]
        dry_run: bool,
        /// Where steps run: here, or as Slurm jobs (options in the settings file's `[slurm]`).
        #[arg(long, value_enum, default_value = "local", env = "TRACELAB_EXECUTOR")]
        executor: ExecutorKind,
        /// The settings file (default: `tracelab.toml` in the project root, if there is one).
        #[arg(long, value_name = "FILE", env = "TRACELAB_SETTINGS")]
        settings: Option<PathBuf>,
    },
    /// Run one step from a job file written by `run --executor slurm` (what a Slurm job runs
    /// on the compute node).
    #[command(hide = true)]
    ExecStep {
        /// The job file (`cache/slurm/<key>/job.json`).
        job: PathBuf,
    },
    /// List every step as cached or to-run, with the reason.
    Plan {
        #[command(flatten)]
        exp: ExpArgs,
    },
    /// Print the DAG as Graphviz DOT or Mermaid.
    Graph {
        #[command(flatten)]
        exp: ExpArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
    /// Print the result table of a finished run.
    Show {
        #[command(flatten)]
        exp: ExpArgs,
    },
    /// Write the results in long format (experiment, scenario, pipeline, seed, metric, value).
    Export {
        #[command(flatten)]
        exp: ExpArgs,
        /// Destination CSV file.
        #[arg(long, value_name = "FILE")]
        csv: PathBuf,
    },
    /// Serve a trained student over the OpenAI Chat Completions API (`/v1/models`,
    /// `/v1/chat/completions`, streaming included): a cell's (`EXP --cell C`) or a student
    /// directory's (`--model DIR`).
    Serve {
        /// The experiment file (TOML), with `--cell`.
        #[arg(required_unless_present = "model", conflicts_with = "model")]
        experiment: Option<PathBuf>,
        /// Override any experiment value by its dotted path.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<SetOverride>,
        /// The cell whose student to serve: `scenario/pipeline/s<seed>`, e.g. `clean/synthetic/s1`.
        #[arg(long, requires = "experiment")]
        cell: Option<String>,
        /// A student directory written by `tracelab pack`.
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0 picks a free one; the address is printed).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// The model name clients send (default: `EXPERIMENT-NAME/CELL`, or the directory's name).
        #[arg(long)]
        name: Option<String>,
        /// Worker processes, each holding the model.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// CPU threads per worker (measured: 1 thread answers 2.7x faster than 2 on this tiny
        /// model; more workers, not threads, use more cores).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Most requests decoded together in one batch.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Prompts whose attention caches each worker keeps: a request that begins as a kept
        /// prompt does (the conversation's previous turn, the same tools) feeds only the rest.
        /// 0 turns reuse off. The tiny family only.
        #[arg(long, default_value_t = 16, value_name = "PROMPTS")]
        prefix_cache: usize,
    },
    /// Copy a cell's trained student (model, tokenizer, tools, decoding settings) into a new
    /// directory that `tracelab serve --model DIR` serves, anywhere.
    Pack {
        #[command(flatten)]
        exp: ExpArgs,
        /// The cell: `scenario/pipeline/s<seed>`.
        #[arg(long)]
        cell: String,
        /// The directory to create.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print the statistics a step recorded (traces, turns, calls per function, …).
    Inspect {
        #[command(flatten)]
        exp: ExpArgs,
        /// Step label or glob, e.g. `data/ingest` or `*/corrupt`.
        #[arg(long)]
        step: String,
    },
    /// Re-hash every cache entry a run of the experiment reaches; remove those whose files
    /// no longer match their manifest (the next run recomputes them).
    Verify {
        #[command(flatten)]
        exp: ExpArgs,
        /// Only report damaged entries; keep them.
        #[arg(long)]
        keep: bool,
    },
    /// Delete cache entries that no experiment under `experiments/` reaches.
    Gc {
        /// Project root (default: current directory).
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Score any JSONL of `{question, answer, prediction}` rows and print the metrics.
    Judge(tracelab::judge::cli::JudgeArgs),
    /// List the step kinds.
    Steps,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ExecutorKind {
    /// Every step runs on this machine.
    Local,
    /// Steps not listed in `[slurm] client_steps` run as Slurm jobs.
    Slurm,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

struct Loaded {
    exp: Experiment,
    dag: Dag,
    cache: Cache,
}

fn load(args: &ExpArgs, cache_dir: Option<&Path>) -> Result<Loaded> {
    let exp = Experiment::load(&args.experiment, &args.sets)?;
    if let Some(spec) = &exp.data.download {
        let dest = exp.root.join(&exp.data.path);
        if !dest.exists() {
            eprintln!(
                "data: {} is absent; downloading {}",
                dest.display(),
                spec.url
            );
            tracelab::download::ensure(spec, &dest)?;
        }
    }
    let dag = dag::build(&exp)?;
    let dir = cache_dir.map_or_else(|| exp.root.join("cache"), Path::to_path_buf);
    let cache = Cache::open(&dir)?;
    Ok(Loaded { exp, dag, cache })
}

fn globs(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).with_context(|| format!("bad glob {p:?}"))?);
    }
    Ok(Some(b.build()?))
}

fn gpus() -> usize {
    if let Some(n) = std::env::var("TRACELAB_GPUS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, |d| d.count())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRACELAB_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let cache_dir = cli.cache.as_deref();
    match &cli.command {
        Command::Run {
            exp,
            jobs,
            only,
            force,
            dry_run,
            executor,
            settings,
        } => {
            let l = load(exp, cache_dir)?;
            if *dry_run {
                return print_plan(&l, globs(force)?.as_ref());
            }
            let cancel = Arc::new(AtomicBool::new(false));
            let flag = cancel.clone();
            let on_cluster = *executor == ExecutorKind::Slurm;
            ctrlc::set_handler(move || {
                if flag.swap(true, Ordering::SeqCst) {
                    // Second Ctrl-C: leave now. Unpublished work sits in cache/.tmp and is
                    // cleaned by the next run; published entries are complete. Cluster jobs
                    // go on, and the next run waits for them.
                    std::process::exit(130);
                }
                if on_cluster {
                    eprintln!(
                        "interrupted: cancelling the run's slurm jobs (Ctrl-C again to quit now)"
                    );
                } else {
                    eprintln!("interrupted: finishing running steps (Ctrl-C again to quit now)");
                }
            })
            .context("installing the Ctrl-C handler")?;
            let slurm = match executor {
                ExecutorKind::Local => None,
                ExecutorKind::Slurm => {
                    let path = settings
                        .clone()
                        .unwrap_or_else(|| l.exp.root.join("tracelab.toml"));
                    let s = tracelab::slurm::Settings::load(&path, settings.is_some())?;
                    Some(tracelab::slurm::Slurm::new(
                        s,
                        &l.cache.dir,
                        cancel.clone(),
                    )?)
                }
            };
            let opts = RunOptions {
                jobs: jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                gpus: gpus(),
                only: globs(only)?,
                force: globs(force)?,
                lock_timeout: cli.lock_timeout()?,
                slurm: slurm.clone(),
            };
            let reporter: Box<dyn Reporter> = if cli.json {
                Box::new(JsonReporter::new())
            } else {
                Box::new(HumanReporter::new(cli.quiet))
            };
            let summary = executor::run(
                &l.exp.name,
                &l.dag,
                &l.cache,
                &l.exp.root,
                &opts,
                reporter.as_ref(),
                &cancel,
            );
            if let Some(slurm) = &slurm {
                slurm.finish();
                let c = slurm.counts();
                eprintln!(
                    "slurm: {} jobs submitted, {} adopted from an earlier run, {} status queries \
                     (job name {})",
                    c.submitted,
                    c.adopted,
                    c.queries,
                    slurm.job_name()
                );
            }
            let summary = summary?;
            let failures = summary.failures();
            if !failures.is_empty() {
                eprintln!("\n{} step(s) failed:", failures.len());
                for (label, cause) in &failures {
                    eprintln!("  {label}: {cause}");
                }
            }
            if let Some(dir) = l.dag.report.and_then(|n| summary.out_dirs.get(&n)) {
                let results = publish_results(&l.exp, dir)?;
                if !cli.json {
                    print!("{}", read_table(dir)?);
                    eprintln!("results: {}", results.display());
                }
            }
            Ok(if summary.interrupted {
                ExitCode::from(130)
            } else if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::ExecStep { job } => {
            let cancel = Arc::new(AtomicBool::new(false));
            let flag = cancel.clone();
            // scancel sends SIGTERM: stop the step as Ctrl-C stops a local one.
            ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
                .context("installing the signal handler")?;
            Ok(ExitCode::from(tracelab::slurm::node::exec_step(
                job, &cancel,
            )?))
        }
        Command::Plan { exp } => {
            let l = load(exp, cache_dir)?;
            print_plan(&l, None)
        }
        Command::Graph { exp, format } => {
            let l = load(exp, cache_dir)?;
            print!(
                "{}",
                match format {
                    GraphFormat::Dot => l.dag.to_dot(),
                    GraphFormat::Mermaid => l.dag.to_mermaid(),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { exp } => {
            let l = load(exp, cache_dir)?;
            let dir = report_dir(&l)?;
            print!("{}", read_table(&dir)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { exp, csv } => {
            let l = load(exp, cache_dir)?;
            let dir = report_dir(&l)?;
            std::fs::copy(dir.join("long.csv"), csv)
                .with_context(|| format!("writing {}", csv.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pack { exp, cell, out } => {
            let l = load(exp, cache_dir)?;
            let target =
                tracelab::serve::resolve_cell(&l.dag, &l.cache, &l.exp.root, &l.exp.name, cell)?;
            tracelab::serve::pack(&target, out)?;
            eprintln!("packed {cell} into {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            experiment,
            sets,
            cell,
            model,
            host,
            port,
            name,
            workers,
            threads,
            batch,
            prefix_cache,
        } => {
            let (target, default_name) = match (experiment, model) {
                (_, Some(dir)) => (
                    tracelab::serve::student_dir(dir)?,
                    dir.file_name()
                        .map_or("student".into(), |n| n.to_string_lossy().into_owned()),
                ),
                (Some(experiment), None) => {
                    let Some(cell) = cell else {
                        bail!("serving an experiment's student needs --cell scenario/pipeline/s<seed>");
                    };
                    let exp = ExpArgs {
                        experiment: experiment.clone(),
                        sets: sets.clone(),
                    };
                    let l = load(&exp, cache_dir)?;
                    let target = tracelab::serve::resolve_cell(
                        &l.dag,
                        &l.cache,
                        &l.exp.root,
                        &l.exp.name,
                        cell,
                    )?;
                    (target, format!("{}/{cell}", l.exp.name))
                }
                (None, None) => bail!("give an experiment and --cell, or --model DIR"),
            };
            let pool = tracelab::serve::Pool::start(
                &target,
                &tracelab::serve::PoolOptions {
                    workers: *workers,
                    threads: *threads,
                    batch: *batch,
                    prefix_cache: *prefix_cache,
                },
            )?;
            let name = name.clone().unwrap_or(default_name);
            let max_call = target.params["max_new_tokens"].as_u64().unwrap_or(64) as usize;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind((host.as_str(), *port))
                    .await
                    .with_context(|| format!("cannot listen on {host}:{port}"))?;
                let addr = listener.local_addr()?;
                eprintln!(
                    "serving {name} ({} functions) at http://{addr}/v1",
                    pool.functions.len()
                );
                tracelab::serve::serve(listener, pool, name.clone(), max_call).await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { exp, step } => {
            let l = load(exp, cache_dir)?;
            let g = globs(std::slice::from_ref(step))?.expect("one pattern");
            let lines = executor::plan(&l.dag, &l.cache, &l.exp.root, &l.exp.name, None)?;
            let mut found = 0;
            for line in lines.iter().filter(|x| g.is_match(&x.label)) {
                found += 1;
                match &line.cached {
                    Some(key) => {
                        let m = l.cache.lookup(key).context("entry vanished")?;
                        println!(
                            "{}  ({}, {:.1}s, key {})",
                            line.label,
                            m.parts.kind,
                            m.duration_s,
                            key.short()
                        );
                        for (k, v) in &m.stats {
                            println!("  {k}: {}", serde_json::to_string(v)?);
                        }
                    }
                    None => println!("{}  not run yet ({})", line.label, line.reason),
                }
            }
            if found == 0 {
                bail!(
                    "no step label matches {step:?}; `tracelab plan {}` lists them",
                    exp.experiment.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { exp, keep } => verify(&load(exp, cache_dir)?, *keep),
        Command::Gc { root, dry_run } => gc(root, cache_dir, *dry_run, cli.lock_timeout()?),
        Command::Judge(args) => {
            let metrics = args.run()?;
            print!("{metrics}");
            eprintln!(
                "verdicts: {}; metrics: {}",
                args.out.display(),
                args.metrics_path().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Steps => {
            for s in steps::STEPS {
                println!("{:<10} v{}  {}", s.kind(), s.version(), s.about());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_plan(l: &Loaded, force: Option<&GlobSet>) -> Result<ExitCode> {
    let lines = executor::plan(&l.dag, &l.cache, &l.exp.root, &l.exp.name, force)?;
    let width = lines.iter().map(|x| x.label.len()).max().unwrap_or(0);
    for x in &lines {
        match &x.cached {
            Some(k) => println!("cached  {:<width$}  {}", x.label, k.short()),
            None => println!("run     {:<width$}  {}", x.label, x.reason),
        }
    }
    let cached = lines.iter().filter(|x| x.cached.is_some()).count();
    eprintln!(
        "{} steps: {cached} cached, {} to run",
        lines.len(),
        lines.len() - cached
    );
    Ok(ExitCode::SUCCESS)
}

fn read_table(report: &Path) -> Result<String> {
    let path = report.join("table.md");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn report_dir(l: &Loaded) -> Result<PathBuf> {
    let Some(report) = l.dag.report else {
        bail!("this experiment's pipelines judge nothing, so it has no result table")
    };
    let lines = executor::plan(&l.dag, &l.cache, &l.exp.root, &l.exp.name, None)?;
    let label = &l.dag.graph[report].label;
    match lines
        .iter()
        .find(|x| &x.label == label)
        .and_then(|x| x.cached.clone())
    {
        Some(key) => Ok(l.cache.out_dir(&key)),
        None => bail!(
            "no results for this experiment yet: run `tracelab run {}`",
            l.exp.path.display()
        ),
    }
}

/// Copies the report's files to `results/<experiment>/` (each written atomically).
fn publish_results(exp: &Experiment, report: &Path) -> Result<PathBuf> {
    let dest = exp.root.join("results").join(&exp.name);
    Ok(tracelab::results::publish(report, &dest)?)
}

/// `tracelab verify`: re-hashes each reachable entry; exit status 1 when any was damaged.
fn verify(l: &Loaded, keep: bool) -> Result<ExitCode> {
    let entries = executor::reachable(&l.dag, &l.cache, &l.exp.root, &l.exp.name)?;
    let mut damaged = 0;
    for (label, key) in &entries {
        let problems = l.cache.verify(key)?;
        if problems.is_empty() {
            continue;
        }
        damaged += 1;
        println!("damaged {label} ({}): {}", key.short(), problems.join("; "));
        if !keep {
            // Not while a run recomputes it.
            let _lock = l
                .cache
                .lock_key(key, "tracelab verify", &LockWait::FOREVER)?;
            l.cache.remove(key)?;
            println!("removed {label}: the next run recomputes it");
        }
    }
    eprintln!(
        "{} entries verified, {damaged} damaged{}",
        entries.len(),
        if damaged > 0 && !keep {
            " (removed)"
        } else {
            ""
        }
    );
    Ok(if damaged == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn gc(
    root: &Path,
    cache_dir: Option<&Path>,
    dry_run: bool,
    lock_timeout: Option<std::time::Duration>,
) -> Result<ExitCode> {
    let dir = cache_dir.map_or_else(|| root.join("cache"), Path::to_path_buf);
    let cache = Cache::open(&dir)?;
    let on_wait = |what: &str, holder: &str| eprintln!("gc: waiting for {what}, held by {holder}");
    let wait = LockWait {
        timeout: lock_timeout,
        on_wait: &on_wait,
    };
    let _lock = cache.lock_cache(true, "tracelab gc", &wait)?;
    let mut keep: std::collections::BTreeSet<StepKey> = Default::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("experiments"))
        .with_context(|| format!("{}: no experiments/ folder", root.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for f in &files {
        let args = ExpArgs {
            experiment: f.clone(),
            sets: Vec::new(),
        };
        let l = match load(&args, Some(&dir)) {
            Ok(l) => l,
            // A well-formed experiment whose data or checkpoint is not there yet cannot run, so
            // it reaches nothing in the cache; anything else may be a typo, so keep everything.
            Err(e)
                if e.downcast_ref::<tracelab::config::ConfigError>()
                    .is_some_and(|c| c.missing_file) =>
            {
                eprintln!("gc: skipping {}: {e:#}", f.display());
                continue;
            }
            Err(e) => bail!(
                "{}: {e:#}\n(gc keeps everything while an experiment cannot be read)",
                f.display()
            ),
        };
        for line in executor::plan(&l.dag, &cache, &l.exp.root, &l.exp.name, None)? {
            keep.extend(line.cached);
        }
    }
    let mut removed = 0;
    for key in cache.keys()? {
        if !keep.contains(&key) {
            removed += 1;
            if dry_run {
                println!("would delete {key}");
            } else {
                cache.remove(&key)?;
            }
        }
    }
    cache.clean_stale_tmp();
    eprintln!(
        "{} entries kept, {removed} {}",
        keep.len(),
        if dry_run { "to delete" } else { "deleted" }
    );
    Ok(ExitCode::SUCCESS)
}
