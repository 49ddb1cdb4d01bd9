//! Teachers: whatever writes the synthetic training conversations. A teacher gets the task, the
//! target tool schemas and the filtered traces as context, and answers a list of jobs (one
//! conversation each, in one length bucket) with a conversation or a recorded failure.
//!
//! Two implementations: [`offline::OfflineTeacher`], a schema-guided dialogue simulator that needs
//! no model, and [`http::HttpTeacher`], which asks an OpenAI-compatible LLM.

pub mod builtin;
pub mod http;
pub mod offline;
pub mod phrasebook;
/// Spoken forms of values live in the text layer (`tracelab-core`), shared with the student.
pub use tracelab_core::text::spoken;

use std::sync::atomic::AtomicBool;

use crate::conversation::Conversation;
use crate::task::{MutationTopic, Task};
use crate::tools::ToolSet;

/// The context every teacher reads.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Task description and settings.
    pub task: &'a Task,
    /// The target tool schemas: the only source of truth for names and arguments.
    pub tools: &'a ToolSet,
    /// Filtered (and relabeled) traces: domain signal only.
    pub traces: &'a [Conversation],
}

/// One conversation to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// 0-based index; also the sample index of a teacher request.
    pub index: u64,
    /// The length bucket.
    pub topic: MutationTopic,
    /// Seed for this job's random choices (derived from the step seed and the index).
    pub seed: u64,
}

/// Why a job produced no conversation. Failures are reported, never silently dropped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("job {index}: {reason}")]
pub struct Failure {
    /// The job's index.
    pub index: u64,
    /// What went wrong.
    pub reason: String,
}

/// The result of one job.
pub type Outcome = Result<Conversation, Failure>;

/// Errors that stop a teacher before any job runs (unusable context or configuration).
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// The traces or schema lack what the teacher needs.
    #[error("{0}")]
    Context(String),
    /// The LLM client could not be set up.
    #[error(transparent)]
    Llm(#[from] crate::llm::LlmError),
    /// The run was interrupted.
    #[error("interrupted")]
    Cancelled,
}

/// Something that writes conversations.
pub trait Teacher {
    /// Answers every job, in job order. `progress(done)` is called as jobs finish; `cancel`
    /// stops the run early with [`TeacherError::Cancelled`].
    fn generate(
        &self,
        jobs: &[Job],
        progress: &(dyn Fn(usize) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Vec<Outcome>, TeacherError>;
}

/// The jobs for `n` conversations spread round-robin over `topics`, so every bucket is covered
/// as soon as `n >= topics.len()`. Job seeds are derived from `seed` and the index.
pub fn plan_jobs(n: usize, topics: &[MutationTopic], seed: u64) -> Vec<Job> {
    (0..n)
        .map(|i| Job {
            index: i as u64,
            topic: topics[i % topics.len()].clone(),
            seed: seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i as u64)
                .rotate_left(17),
        })
        .collect()
}
