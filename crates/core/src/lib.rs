//! tracelab-core: what the orchestrator (`tracelab`) and the student worker (`tracelab-student`)
//! both need, and nothing that needs a network, an async runtime or plotting: the data model
//! ([`conversation`], [`tools`]), the task file ([`task`]), trace files ([`formats`]), the worker
//! job contract ([`job`]) and the text layer ([`text`], [`dates`]) that reads times, dates and
//! numbers in messages the same way for the teacher, the student and the judge.

pub mod conversation;
pub mod dates;
pub mod formats;
pub mod job;
pub mod task;
pub mod text;
pub mod tools;
