//! `predict`: the trained student answers every evaluation pair with one schema-valid call
//! (constrained greedy decoding in the `tracelab-student` worker).

use serde_json::Value;

use super::train::{job, run_worker};

use super::{canonicalize, Artifact, ParamError, Resource, Step, StepContext, StepError};
pub use tracelab_core::job::PredictParams;

/// The `predict` step.
pub struct Predict;

/// Revision of the worker's decoding alone on top of [`super::train::WORKER_VERSION`] (which
/// covers what all three worker steps share): bumped for a decoding change that needs no
/// retraining. Since version 10: none yet.
const DECODE_REVISION: u32 = 0;

impl Step for Predict {
    fn kind(&self) -> &'static str {
        "predict"
    }
    fn version(&self) -> u32 {
        // Decoding changes alone do not retrain: they bump DECODE_REVISION.
        super::train::WORKER_VERSION * 100 + DECODE_REVISION
    }
    fn about(&self) -> &'static str {
        "answer every evaluation pair with the student (schema-constrained greedy decoding)"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[
            Artifact::Model,
            Artifact::Tokenizer,
            Artifact::Pairs,
            Artifact::Tools,
        ]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Predictions]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        canonicalize::<PredictParams>(params)
    }
    fn resource(&self, params: &Value, jobs: usize) -> Resource {
        super::train::worker_resource(params, jobs)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let out = ctx.output(Artifact::Predictions);
        let job = job(
            ctx,
            "predict",
            &[
                ("model", Artifact::Model),
                ("tokenizer", Artifact::Tokenizer),
                ("pairs", Artifact::Pairs),
                ("tools", Artifact::Tools),
            ],
            &out,
        )?;
        let stats = run_worker(ctx, &job)?;
        for (k, v) in stats {
            ctx.stat(&k, v);
        }
        Ok(())
    }
}
