//! Per-cell metrics from per-pair scores: judge score with a seeded bootstrap interval, the
//! always-respond baseline and macro averages over reference functions, function-name accuracy
//! and confusion, exact / binary / staged tool-call scores, ROUGE-L on replies, and the share of
//! unparseable outputs.
//!
//! `metrics.json` keys are a contract with the report step; [`Metrics`] serializes to exactly
//! them (plus `judge` and `judge_unanswered`).

use std::collections::BTreeMap;
use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::judge::normalize::words;

/// Label of unparseable predictions in the confusion matrix.
pub const UNPARSEABLE: &str = "<unparseable>";

/// Everything the metrics need about one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairScore {
    /// Reference function name.
    pub reference: String,
    /// Predicted function name; `None` when the output did not parse.
    pub predicted: Option<String>,
    /// The judge's verdict.
    pub verdict: bool,
    /// Same name, same argument names, same canonical values.
    pub exact: bool,
    /// Same name and same argument names.
    pub binary: bool,
    /// Partial credit in [0, 1] (see [`staged`]).
    pub staged: f64,
    /// ROUGE-L F1 of the reply against the reference reply, for pairs whose reference is a
    /// reply (0 when the prediction is not a reply); `None` for service-call references.
    pub rouge_l: Option<f64>,
    /// For service-call references: right name and every reference argument right.
    pub all_args_right: Option<bool>,
}

/// Count and judge score of one reference function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionScore {
    /// Pairs whose reference calls this function.
    pub n: usize,
    /// Mean verdict over them.
    pub score: f64,
}

/// Service-call pairs and the share of them with every argument right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceCalls {
    /// Pairs whose reference is a service call (not the reply function).
    pub n: usize,
    /// Share of those predicted with the right function and every reference argument right.
    pub all_args_right: f64,
}

/// The trivial always-respond baseline scored on the same pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Its judge score (the share of reply references).
    pub score: f64,
    /// Its macro score over reference functions (1 / number of functions).
    pub macro_score: f64,
}

/// Metrics of one cell, serialized as `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Which judge gave the verdicts (`rubric` or `llm:<model>`).
    pub judge: String,
    /// Pairs judged.
    pub n: usize,
    /// Mean verdict.
    pub score: f64,
    /// 95% percentile bootstrap interval of `score`.
    pub score_ci: [f64; 2],
    /// Mean over reference functions of their mean verdict.
    pub macro_score: f64,
    /// Share of pairs whose predicted function is the reference function.
    pub function_accuracy: f64,
    /// Share of exact tool-call matches after normalization.
    pub exact: f64,
    /// Share with the right name and the right argument names.
    pub binary: f64,
    /// Mean staged partial-credit score.
    pub staged: f64,
    /// Mean ROUGE-L F1 over pairs whose reference is a reply.
    pub rouge_l: f64,
    /// Share of outputs that were empty or did not parse as a call.
    pub unparseable: f64,
    /// Service-call pairs with every argument right.
    pub service_calls: ServiceCalls,
    /// Judge score per reference function.
    pub per_function: BTreeMap<String, FunctionScore>,
    /// Reference function → predicted function → count.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
    /// The always-respond baseline on the same pairs.
    pub baseline: Baseline,
    /// Pairs the LLM judge never answered parseably (counted bad); 0 for the rubric judge.
    pub judge_unanswered: usize,
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// Resamples.
    pub samples: usize,
    /// Seed of the resampling.
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            samples: 1000,
            seed: 0,
        }
    }
}

fn mean(xs: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn share(scores: &[PairScore], f: impl Fn(&PairScore) -> bool) -> f64 {
    mean(scores.iter().map(|s| f64::from(u8::from(f(s)))))
}

/// 95% percentile bootstrap interval of the mean of `xs`, deterministic per seed.
pub fn bootstrap_ci(xs: &[f64], b: Bootstrap) -> [f64; 2] {
    if xs.is_empty() || b.samples == 0 {
        let m = mean(xs.iter().copied());
        return [m, m];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(b.seed);
    let n = xs.len();
    let mut means: Vec<f64> = (0..b.samples)
        .map(|_| (0..n).map(|_| xs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (b.samples - 1) as f64).round() as usize).min(b.samples - 1)];
    [at(0.025), at(0.975)]
}

/// ROUGE-L F1 between two texts over folded words (longest common subsequence).
pub fn rouge_l(reference: &str, candidate: &str) -> f64 {
    let (r, c) = (words(reference), words(candidate));
    if r.is_empty() && c.is_empty() {
        return 1.0;
    }
    if r.is_empty() || c.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0usize; c.len() + 1];
    for rw in &r {
        let mut cur = vec![0usize; c.len() + 1];
        for (j, cw) in c.iter().enumerate() {
            cur[j + 1] = if rw == cw {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    let lcs = prev[c.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, rec) = (lcs / c.len() as f64, lcs / r.len() as f64);
    2.0 * p * rec / (p + rec)
}

/// Staged partial credit: 0 when the output is unparseable or names the wrong function;
/// otherwise 0.5 for the name, plus 0.25 × the Jaccard overlap of argument names, plus 0.25 ×
/// `values` (the share of arguments with the right value, or ROUGE-L for replies).
pub fn staged(name_right: bool, key_jaccard: f64, values: f64) -> f64 {
    if name_right {
        0.5 + 0.25 * key_jaccard + 0.25 * values
    } else {
        0.0
    }
}

impl Metrics {
    /// Computes the metrics of `scores`; `respond` names the reply function (the baseline's
    /// prediction) and `judge` the judge that gave the verdicts.
    pub fn compute(scores: &[PairScore], respond: &str, judge: &str, b: Bootstrap) -> Metrics {
        let verdicts: Vec<f64> = scores
            .iter()
            .map(|s| f64::from(u8::from(s.verdict)))
            .collect();
        let mut per_function: BTreeMap<String, FunctionScore> = BTreeMap::new();
        let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for s in scores {
            let f = per_function
                .entry(s.reference.clone())
                .or_insert(FunctionScore { n: 0, score: 0.0 });
            f.n += 1;
            f.score += f64::from(u8::from(s.verdict));
            let pred = s
                .predicted
                .clone()
                .unwrap_or_else(|| UNPARSEABLE.to_string());
            *confusion
                .entry(s.reference.clone())
                .or_default()
                .entry(pred)
                .or_default() += 1;
        }
        for f in per_function.values_mut() {
            f.score /= f.n as f64;
        }
        let macro_score = mean(per_function.values().map(|f| f.score));
        // The always-respond baseline: a reply is good wherever the reference is a reply (the
        // rubric only rejects replies that contradict results, and an empty-content baseline
        // claims nothing), bad everywhere else.
        let baseline = Baseline {
            score: share(scores, |s| s.reference == respond),
            macro_score: mean(
                per_function
                    .keys()
                    .map(|k| f64::from(u8::from(k == respond))),
            ),
        };
        let service: Vec<bool> = scores.iter().filter_map(|s| s.all_args_right).collect();
        Metrics {
            judge: judge.to_string(),
            n: scores.len(),
            score: mean(verdicts.iter().copied()),
            score_ci: bootstrap_ci(&verdicts, b),
            macro_score,
            function_accuracy: share(scores, |s| s.predicted.as_deref() == Some(&s.reference)),
            exact: share(scores, |s| s.exact),
            binary: share(scores, |s| s.binary),
            staged: mean(scores.iter().map(|s| s.staged)),
            rouge_l: mean(scores.iter().filter_map(|s| s.rouge_l)),
            unparseable: share(scores, |s| s.predicted.is_none()),
            service_calls: ServiceCalls {
                n: service.len(),
                all_args_right: mean(service.iter().map(|&b| f64::from(u8::from(b)))),
            },
            per_function,
            confusion,
            baseline,
            judge_unanswered: 0,
        }
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        writeln!(f, "judge {}: {} pairs", self.judge, self.n)?;
        writeln!(
            f,
            "  score        {:.3}  (95% CI {:.3}–{:.3})   always-reply baseline {:.3}",
            self.score, self.score_ci[0], self.score_ci[1], self.baseline.score
        )?;
        writeln!(
            f,
            "  macro score  {:.3}                        baseline macro {:.3}",
            self.macro_score, self.baseline.macro_score
        )?;
        writeln!(
            f,
            "  function accuracy {}   exact {}   binary {}   staged {:.3}   ROUGE-L {:.3}   unparseable {}",
            pct(self.function_accuracy),
            pct(self.exact),
            pct(self.binary),
            self.staged,
            self.rouge_l,
            pct(self.unparseable)
        )?;
        writeln!(
            f,
            "  service calls {}: every argument right {}",
            self.service_calls.n,
            pct(self.service_calls.all_args_right)
        )?;
        if self.judge_unanswered > 0 {
            writeln!(
                f,
                "  judge gave no usable answer for {} pairs (counted bad)",
                self.judge_unanswered
            )?;
        }
        writeln!(f, "  per reference function:")?;
        for (name, s) in &self.per_function {
            let row = &self.confusion[name];
            let preds: Vec<String> = row.iter().map(|(p, c)| format!("{p} {c}")).collect();
            writeln!(
                f,
                "    {name:<24} n {:>4}  score {:.3}   predicted: {}",
                s.n,
                s.score,
                preds.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(reference: &str, predicted: Option<&str>, verdict: bool) -> PairScore {
        let name_right = predicted == Some(reference);
        PairScore {
            reference: reference.into(),
            predicted: predicted.map(String::from),
            verdict,
            exact: verdict && name_right,
            binary: name_right,
            staged: staged(name_right, 1.0, if verdict { 1.0 } else { 0.0 }),
            rouge_l: (reference == "respond").then_some(if verdict { 1.0 } else { 0.0 }),
            all_args_right: (reference != "respond").then_some(verdict),
        }
    }

    #[test]
    fn known_values_on_a_tiny_set() {
        // 6 reply references (5 good), 3 searches (1 good, 1 predicted as reply, 1 unparseable),
        // 1 reservation (bad, right name).
        let mut s = vec![pair("respond", Some("respond"), true); 5];
        s.push(pair("respond", Some("Find"), false));
        s.push(pair("Find", Some("Find"), true));
        s.push(pair("Find", Some("respond"), false));
        s.push(pair("Find", None, false));
        s.push(pair("Reserve", Some("Reserve"), false));
        let m = Metrics::compute(&s, "respond", "rubric", Bootstrap::default());
        assert_eq!(m.n, 10);
        assert!((m.score - 0.6).abs() < 1e-12);
        let macro_want = (5.0 / 6.0 + 1.0 / 3.0 + 0.0) / 3.0;
        assert!((m.macro_score - macro_want).abs() < 1e-12);
        assert!((m.function_accuracy - 0.7).abs() < 1e-12);
        assert!((m.unparseable - 0.1).abs() < 1e-12);
        assert!((m.baseline.score - 0.6).abs() < 1e-12);
        assert!((m.baseline.macro_score - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.service_calls.n, 4);
        assert!((m.service_calls.all_args_right - 0.25).abs() < 1e-12);
        assert_eq!(m.per_function["Find"].n, 3);
        assert_eq!(m.confusion["Find"][UNPARSEABLE], 1);
        assert_eq!(m.confusion["respond"]["Find"], 1);
        assert!((m.rouge_l - 5.0 / 6.0).abs() < 1e-12);
        // staged: 5 × 1.0 (good replies) + Find good 1.0 + Reserve 0.75 (name and keys) = 6.75.
        assert!((m.staged - 0.675).abs() < 1e-12);
        assert!(
            m.score_ci[0] < m.score && m.score < m.score_ci[1],
            "{:?}",
            m.score_ci
        );
        let v = serde_json::to_value(&m).unwrap();
        for key in [
            "n",
            "score",
            "score_ci",
            "macro_score",
            "function_accuracy",
            "exact",
            "binary",
            "staged",
            "rouge_l",
            "unparseable",
            "service_calls",
            "per_function",
            "confusion",
            "baseline",
        ] {
            assert!(v.get(key).is_some(), "metrics.json lacks {key}");
        }
        assert!(v["service_calls"].get("all_args_right").is_some());
        assert!(v["baseline"].get("macro_score").is_some());
        let shown = m.to_string();
        assert!(
            shown.contains("10 pairs") && shown.contains("Find"),
            "{shown}"
        );
    }

    #[test]
    fn bootstrap_is_deterministic_per_seed() {
        let xs: Vec<f64> = (0..200).map(|i| f64::from(u8::from(i % 3 != 0))).collect();
        let b = Bootstrap {
            samples: 500,
            seed: 7,
        };
        let a = bootstrap_ci(&xs, b);
        assert_eq!(a, bootstrap_ci(&xs, b));
        let other = bootstrap_ci(&xs, Bootstrap { seed: 8, ..b });
        assert_ne!(a, other);
        let m = 2.0 / 3.0;
        assert!(a[0] < m && m < a[1] && a[1] - a[0] < 0.2, "{a:?}");
        assert_eq!(bootstrap_ci(&[1.0; 10], b), [1.0, 1.0]);
    }

    #[test]
    fn rouge_values() {
        assert_eq!(rouge_l("the cat sat", "the cat sat"), 1.0);
        assert_eq!(rouge_l("a b", "c d"), 0.0);
        assert_eq!(rouge_l("hi", ""), 0.0);
        // LCS "a c" of 3 and 2 words: P = 1, R = 2/3, F = 0.8.
        assert!((rouge_l("a b c", "a c") - 0.8).abs() < 1e-12);
    }
}
