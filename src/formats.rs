//! Reading and writing trace files. The OpenAI chat JSONL and evaluation-pair readers and writers
//! are `tracelab-core`'s (the student worker reads the same files); the SGD dataset's own layout
//! is read here ([`sgd`]), since only the orchestrator ingests it.

pub use tracelab_core::formats::*;

pub mod sgd;
