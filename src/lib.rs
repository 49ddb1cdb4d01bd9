//! tracelab: a declarative experiment orchestrator for training small tool-calling students from
//! noisy production traces. The binary (`src/main.rs`) is a thin CLI over this library.
//!
//! Reading order: [`conversation`] and [`tools`] (the data model), [`steps`] (the step trait and
//! the `STEPS` list), then the engine: [`config`] → [`dag`] → [`cache`] → [`executor`], joined to
//! its output by [`events`] and [`reporter`].

pub mod cache;
pub mod config;
pub mod conversation;
pub mod dag;
pub mod dates;
pub mod download;
pub mod events;
pub mod executor;
pub mod filter;
pub mod formats;
pub mod judge;
pub mod llm;
pub mod llm_mock;
pub mod reporter;
pub mod results;
pub mod scenario;
pub mod split;
pub mod steps;
pub mod task;
pub mod teacher;
pub mod tools;
pub mod validate;
