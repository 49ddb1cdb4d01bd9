//! The student crate's integration tests, one module per concern, linked into one test binary
//! (one link of libtorch's bindings instead of one per file). Run one module with
//! `cargo nextest run -p tracelab-student --test suite MODULE::`.

mod common;

mod qwen3_parity;
mod qwen3_worker;
mod rules_other_domain;
mod student;
mod template;
mod worker;
