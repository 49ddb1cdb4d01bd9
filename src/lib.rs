//! tracelab: a declarative experiment orchestrator for training small tool-calling students from
//! noisy production traces. The binary (`src/main.rs`) is a thin CLI over this library.
//!
//! Reading order: [`conversation`] and [`tools`] (the data model), [`steps`] (the step trait and
//! the `STEPS` list), then the engine: [`config`] → [`dag`] → [`cache`] → [`executor`], joined to
//! its output by [`events`] and [`reporter`].

pub mod cache;
pub mod config;
pub mod dag;
pub mod download;
pub mod events;
pub mod executor;
pub mod filter;
pub mod formats;
pub mod http_predictor;
pub mod judge;
pub mod llm;
pub mod llm_mock;
pub mod reporter;
pub mod results;
pub mod scenario;
pub mod serve;
pub mod slurm;
pub mod split;
pub mod steps;
pub mod teacher;
pub mod validate;

// The data model, the task file, trace files and dates live in `tracelab-core`, shared with the
// student worker; they keep their paths here.
pub use tracelab_core::{conversation, dates, task, tools};
