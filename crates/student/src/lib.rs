//! The student: tokenizer, transformer, training and schema-constrained prediction in tch.
//! Only this crate links libtorch; the orchestrator runs it as the `tracelab-student` worker.

pub mod chat_template;
pub mod hf;
pub mod lora;
pub mod qwen3;
