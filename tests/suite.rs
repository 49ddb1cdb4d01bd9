//! The integration tests, one module per concern, linked into one test binary: each binary links
//! the whole orchestrator, so one binary instead of one per file saves most of the build's disk
//! and link time. Run one module with `cargo nextest run --test suite MODULE::` (e.g.
//! `judge_labels::`).

mod common;
#[path = "fixtures/generated.rs"]
mod generated;

mod cli_runs;
mod config_errors;
mod data_formats;
mod data_scenarios;
mod data_sgd;
mod data_steps;
mod engine;
mod http_predictor;
mod judge_labels;
mod judge_sgd;
mod llm_faults;
mod load_checks;
mod pretrain;
mod qwen3_run;
mod serve;
mod slurm;
mod smoke;
mod steps_synthetic;
mod synthetic_sgd;
mod trace_warnings;
mod worker_process;
