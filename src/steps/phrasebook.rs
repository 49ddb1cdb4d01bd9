//! `phrasebook`: learns the offline teacher's phrasebook ([`Phrasebook`]) from dialogues that
//! share nothing with the experiment — by default every single-service dialogue of SGD's
//! services the experiment does not read, as `pretrain` reads them. A `generate` step with
//! `phrasebook = true` lets those phrasings word part of its conversations.
//!
//! Like `pretrain`, the step reads no cell artifact: every cell, and every experiment file with
//! the same corpus, shares one node and one cache entry.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::pretrain::{sgd_corpus_files, sgd_groups, sort_exclusions};
use super::{canonicalize, Artifact, ParamError, Step, StepContext, StepError};
use crate::teacher::phrasebook::{Kind, Phrasebook};
use tracelab_core::job::CorpusParams;

/// The `phrasebook` step.
pub struct MakePhrasebook;

/// Parameters of `[phrasebook]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhrasebookParams {
    /// The dialogues to learn from (SGD's layout; the experiment's services are left out).
    pub corpus: CorpusParams,
}

impl Step for MakePhrasebook {
    fn kind(&self) -> &'static str {
        "phrasebook"
    }
    fn version(&self) -> u32 {
        // 2: "account_type" is no count (a count's words are whole words of its name).
        // 3: the values of places, names and counts, by role.
        3
    }
    fn about(&self) -> &'static str {
        "learn the offline teacher's phrasings from dialogues of services the experiment does not use"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Phrasebook]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let mut canonical = canonicalize::<PhrasebookParams>(params)?;
        let err = |path: &str, message: &str| ParamError {
            path: path.into(),
            message: message.into(),
        };
        if canonical["corpus"]["format"] != "sgd" {
            return Err(err(
                "corpus.format",
                "the phrasebook learns from SGD's annotated dialogues (format \"sgd\")",
            ));
        }
        if canonical["corpus"]["path"] == "" {
            return Err(err(
                "corpus.path",
                "no corpus: data.path is not SGD's, so name one ([phrasebook.corpus] path)",
            ));
        }
        sort_exclusions(&mut canonical["corpus"]);
        Ok(canonical)
    }
    fn external_files(&self, params: &Value, root: &Path) -> Result<Vec<PathBuf>, StepError> {
        let p: PhrasebookParams = super::typed(params)?;
        sgd_corpus_files(&p.corpus, root)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: PhrasebookParams = super::typed(ctx.params)?;
        let mut groups = sgd_groups(&ctx.resolve(&p.corpus.path), &p.corpus)?;
        if groups.is_empty() {
            return Err(StepError::Data(format!(
                "{}: no single-service dialogue outside the excluded services ({})",
                p.corpus.path,
                p.corpus.exclude.join(", ")
            )));
        }
        if p.corpus.per_service > 0 {
            for g in &mut groups {
                g.2.truncate(p.corpus.per_service);
            }
        }
        ctx.report(0, None, format!("{} services", groups.len()));
        let book = Phrasebook::learn(&groups);
        let out = ctx.output(Artifact::Phrasebook);
        // The executor commits the output directory whole: no half-written file is ever read.
        let text = serde_json::to_string(&book).expect("JSON");
        std::fs::write(&out, text).map_err(|e| StepError::io(&out, e))?;
        ctx.stat("services", book.services.len());
        ctx.stat("phrasings", book.entries.len());
        for kind in [Kind::Inform, Kind::Request, Kind::Ask, Kind::Opener] {
            let n = book.entries.iter().filter(|e| e.kind == kind).count();
            ctx.stat(
                &format!("phrasings_{}", json!(kind).as_str().unwrap_or("?")),
                n,
            );
        }
        Ok(())
    }
}
