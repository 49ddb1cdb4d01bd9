//! `report`: the study's result table from every judged cell — a row per scenario, a column per
//! pipeline, the delta in percentage points, the trivial baseline — as Markdown, CSV, a long CSV
//! (experiment, scenario, pipeline, seed, metric, value) and an SVG bar chart.
//!
//! When some cells did not complete, the report still runs on those that did (see
//! [`Step::runs_on_partial_inputs`]): a (scenario, pipeline) with a missing seed reads `failed`
//! in the table and has no bar, and the Markdown lists which step failed for each such cell.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{canonicalize, typed, Artifact, ParamError, Step, StepContext, StepError};

/// The report step.
pub struct Report;

/// One judged cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CellRef {
    /// Scenario name.
    pub scenario: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Seed.
    pub seed: u64,
}

/// The label of a cell's input to the report: `scenario/pipeline/s<seed>` (also the DAG's).
pub fn cell_label(scenario: &str, pipeline: &str, seed: u64) -> String {
    format!("{scenario}/{pipeline}/s{seed}")
}

impl CellRef {
    /// See [`cell_label`].
    pub fn label(&self) -> String {
        cell_label(&self.scenario, &self.pipeline, self.seed)
    }
}

/// What the report has of one cell.
#[derive(Debug, Clone, PartialEq)]
pub enum CellResult {
    /// The cell's `metrics.json`.
    Metrics(Value),
    /// The cell did not complete: which step failed.
    Missing(String),
}

/// Parameters (filled in by the engine; `metric` and `delta` may be set in `[report]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// Experiment name (first column of the long CSV).
    #[serde(default)]
    pub experiment: String,
    /// The judged cells, in matrix order; inputs arrive in the same order.
    pub cells: Vec<CellRef>,
    /// Pipeline names in column order.
    pub pipelines: Vec<String>,
    /// The headline metric (a key of `metrics.json`).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// Delta column: first minus second pipeline (default: the first two pipelines).
    #[serde(default)]
    pub delta: Option<(String, String)>,
}

fn default_metric() -> String {
    "score".into()
}

/// The table in memory: metric values per (scenario, pipeline), averaged over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultTable {
    /// Scenario names in order.
    pub scenarios: Vec<String>,
    /// Pipeline names in order.
    pub pipelines: Vec<String>,
    /// Mean headline metric per (scenario, pipeline).
    pub values: BTreeMap<(String, String), f64>,
    /// Mean macro score per (scenario, pipeline).
    pub macro_values: BTreeMap<(String, String), f64>,
    /// Baseline (always reply) score and macro score per scenario (from the cells that
    /// completed).
    pub baseline: BTreeMap<String, (f64, f64)>,
    /// (scenario, pipeline) pairs with a cell that did not complete: `failed` in the table.
    pub failed: BTreeSet<(String, String)>,
    /// One line per cell that did not complete: `label: why`.
    pub notes: Vec<String>,
    /// The delta pair.
    pub delta: Option<(String, String)>,
    /// Long rows: scenario, pipeline, seed, metric, value.
    pub long: Vec<(String, String, u64, String, f64)>,
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => out.push((prefix.to_string(), n.as_f64().unwrap_or(f64::NAN))),
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Value::Array(a) if prefix.ends_with("_ci") => {
            for (i, x) in a.iter().enumerate() {
                flatten(
                    &format!("{prefix}.{}", ["lo", "hi"].get(i).unwrap_or(&"x")),
                    x,
                    out,
                );
            }
        }
        _ => {}
    }
}

impl ResultTable {
    /// Builds the table from what the report has of each cell, in the order of `p.cells`.
    pub fn build(p: &ReportParams, results: &[CellResult]) -> ResultTable {
        let mut scenarios: Vec<String> = Vec::new();
        let mut sums: BTreeMap<(String, String), (f64, f64, usize)> = BTreeMap::new();
        let mut base: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
        let mut failed = BTreeSet::new();
        let mut notes = Vec::new();
        let mut long = Vec::new();
        for (cell, r) in p.cells.iter().zip(results) {
            if !scenarios.contains(&cell.scenario) {
                scenarios.push(cell.scenario.clone());
            }
            let pair = (cell.scenario.clone(), cell.pipeline.clone());
            let m = match r {
                CellResult::Metrics(m) => m,
                CellResult::Missing(why) => {
                    notes.push(format!("{}: {why}", cell.label()));
                    failed.insert(pair);
                    continue;
                }
            };
            let get = |path: &str| {
                path.split('.')
                    .try_fold(m, |v, k| v.get(k))
                    .and_then(Value::as_f64)
            };
            let e = sums.entry(pair).or_default();
            e.0 += get(&p.metric).unwrap_or(f64::NAN);
            e.1 += get("macro_score").unwrap_or(f64::NAN);
            e.2 += 1;
            let b = base.entry(cell.scenario.clone()).or_default();
            b.0 += get("baseline.score").unwrap_or(f64::NAN);
            b.1 += get("baseline.macro_score").unwrap_or(f64::NAN);
            b.2 += 1;
            let mut flat = Vec::new();
            flatten("", m, &mut flat);
            for (k, v) in flat {
                long.push((
                    cell.scenario.clone(),
                    cell.pipeline.clone(),
                    cell.seed,
                    k,
                    v,
                ));
            }
        }
        // A mean over the seeds that completed is not the quantity the other cells show.
        sums.retain(|k, _| !failed.contains(k));
        let delta = p.delta.clone().or_else(|| match p.pipelines.as_slice() {
            [a, b, ..] => Some((a.clone(), b.clone())),
            _ => None,
        });
        ResultTable {
            scenarios,
            pipelines: p.pipelines.clone(),
            values: sums
                .iter()
                .map(|(k, (s, _, n))| (k.clone(), s / *n as f64))
                .collect(),
            macro_values: sums
                .iter()
                .map(|(k, (_, m, n))| (k.clone(), m / *n as f64))
                .collect(),
            baseline: base
                .into_iter()
                .map(|(k, (s, m, n))| (k, (s / n as f64, m / n as f64)))
                .collect(),
            failed,
            notes,
            delta,
            long,
        }
    }

    fn get(&self, s: &str, p: &str) -> Option<f64> {
        self.values.get(&(s.to_string(), p.to_string())).copied()
    }

    fn delta_pp(&self, s: &str) -> Option<f64> {
        let (a, b) = self.delta.as_ref()?;
        Some((self.get(s, a)? - self.get(s, b)?) * 100.0)
    }

    /// Wide rows: header, then one row per scenario.
    pub fn rows(&self) -> Vec<Vec<String>> {
        let mut header = vec!["scenario".to_string()];
        header.extend(self.pipelines.iter().cloned());
        if self.delta.is_some() {
            header.push("delta_pp".into());
        }
        header.extend(self.pipelines.iter().map(|p| format!("{p}_macro")));
        header.push("baseline".into());
        header.push("baseline_macro".into());
        let mut rows = vec![header];
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        for s in &self.scenarios {
            let failed = |p: &String| self.failed.contains(&(s.clone(), p.clone()));
            let cell = |p: &String, v: Option<f64>| {
                if failed(p) {
                    "failed".to_string()
                } else {
                    f(v)
                }
            };
            let mut r = vec![s.clone()];
            r.extend(self.pipelines.iter().map(|p| cell(p, self.get(s, p))));
            if self.delta.is_some() {
                r.push(self.delta_pp(s).map_or("-".into(), |d| format!("{d:+.1}")));
            }
            r.extend(
                self.pipelines
                    .iter()
                    .map(|p| cell(p, self.macro_values.get(&(s.clone(), p.clone())).copied())),
            );
            let b = self.baseline.get(s).copied();
            r.push(f(b.map(|b| b.0)));
            r.push(f(b.map(|b| b.1)));
            rows.push(r);
        }
        rows
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let rows = self.rows();
        let mut s = String::new();
        for (i, r) in rows.iter().enumerate() {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
            if i == 0 {
                s.push_str(&format!(
                    "|{}\n",
                    r.iter().map(|_| "---|").collect::<String>()
                ));
            }
        }
        if !self.notes.is_empty() {
            s.push_str(&format!(
                "\n{} cell(s) did not complete (`failed` above):\n",
                self.notes.len()
            ));
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }

    /// Draws the grouped bar chart as SVG.
    pub fn chart_svg(&self, path: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let n = self.scenarios.len().max(1);
        let groups = self.pipelines.len() + 1;
        let caption = if self.failed.is_empty() {
            "judge score by scenario (last bar: always-reply baseline)".to_string()
        } else {
            format!(
                "judge score by scenario (last bar: always-reply baseline; {} cell(s) failed)",
                self.notes.len()
            )
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n as f64, 0f64..1f64)
            .map_err(|e| e.to_string())?;
        let names = self.scenarios.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.01 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("score")
            .draw()
            .map_err(|e| e.to_string())?;
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
        ];
        let width = 0.8 / groups as f64;
        for (gi, p) in self.pipelines.iter().enumerate() {
            let color = colors[gi % colors.len()];
            let bars = self.scenarios.iter().enumerate().filter_map(|(si, s)| {
                let v = self.get(s, p)?;
                let x0 = si as f64 + 0.1 + gi as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, v)],
                    color.filled(),
                ))
            });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(p.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        // A failed cell has no bar: the word stands in its place.
        let marks = self.pipelines.iter().enumerate().flat_map(|(gi, p)| {
            self.scenarios
                .iter()
                .enumerate()
                .filter(move |(_, s)| self.failed.contains(&((*s).clone(), p.clone())))
                .map(move |(si, _)| {
                    let x = si as f64 + 0.1 + gi as f64 * width;
                    Text::new("failed", (x, 0.03), ("sans-serif", 11).into_font())
                })
        });
        chart.draw_series(marks).map_err(|e| e.to_string())?;
        let grey = RGBColor(150, 150, 150);
        let gi = self.pipelines.len();
        let bars = self.scenarios.iter().enumerate().filter_map(|(si, s)| {
            let v = self.baseline.get(s)?.0;
            let x0 = si as f64 + 0.1 + gi as f64 * width;
            v.is_finite()
                .then(|| Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], grey.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(|e| e.to_string())?
            .label("baseline")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], grey.filled()));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}

impl Step for Report {
    fn kind(&self) -> &'static str {
        "report"
    }
    fn version(&self) -> u32 {
        // 2: runs on the cells that completed and marks the others `failed`; a baseline no
        // cell gave reads `-`, not `NaN`.
        2
    }
    fn about(&self) -> &'static str {
        "the result table (scenario × pipeline, delta in pp, baseline) as Markdown, CSV and SVG"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Table]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        canonicalize::<ReportParams>(params)
    }
    fn runs_on_partial_inputs(&self) -> bool {
        true
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: ReportParams = typed(ctx.params)?;
        let results = cell_results(&p, ctx)?;
        let table = ResultTable::build(&p, &results);
        write_csv(&ctx.output(Artifact::Table), &table.rows())?;
        let long: Vec<Vec<String>> = std::iter::once(
            [
                "experiment",
                "scenario",
                "pipeline",
                "seed",
                "metric",
                "value",
            ]
            .map(String::from)
            .to_vec(),
        )
        .chain(table.long.iter().map(|(s, pl, seed, m, v)| {
            vec![
                p.experiment.clone(),
                s.clone(),
                pl.clone(),
                seed.to_string(),
                m.clone(),
                format!("{v}"),
            ]
        }))
        .collect();
        write_csv(&ctx.out_dir.join("long.csv"), &long)?;
        let md = ctx.out_dir.join("table.md");
        std::fs::write(&md, table.markdown()).map_err(|e| StepError::io(&md, e))?;
        table
            .chart_svg(&ctx.out_dir.join("chart.svg"))
            .map_err(|e| StepError::Data(format!("chart: {e}")))?;
        ctx.stat("cells", p.cells.len());
        ctx.stat("failed_cells", table.notes.len());
        ctx.stat("scenarios", table.scenarios.len());
        Ok(())
    }
}

/// What the report has of each cell of `p.cells`, in order: its metrics, or why it is missing.
fn cell_results(p: &ReportParams, ctx: &StepContext<'_>) -> Result<Vec<CellResult>, StepError> {
    let dirs: BTreeMap<&str, &Path> = ctx
        .inputs
        .all
        .iter()
        .map(|(l, d)| (l.as_str(), d.as_path()))
        .collect();
    let missing: BTreeMap<&str, &str> = ctx
        .inputs
        .missing
        .iter()
        .map(|(l, w)| (l.as_str(), w.as_str()))
        .collect();
    let mut out = Vec::new();
    for cell in &p.cells {
        let label = cell.label();
        if let Some(why) = missing.get(label.as_str()) {
            out.push(CellResult::Missing(why.to_string()));
            continue;
        }
        let Some(dir) = dirs.get(label.as_str()) else {
            return Err(StepError::Data(format!(
                "internal: no input for cell {label}"
            )));
        };
        let path = dir.join(Artifact::Verdicts.file_name());
        let text = std::fs::read_to_string(&path).map_err(|e| StepError::io(&path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| StepError::Data(format!("{}: metrics of {label}: {e}", path.display())))?;
        out.push(CellResult::Metrics(v));
    }
    Ok(out)
}

fn write_csv(path: &Path, rows: &[Vec<String>]) -> Result<(), StepError> {
    let mut w = csv::Writer::from_path(path)
        .map_err(|e| StepError::Data(format!("{}: {e}", path.display())))?;
    for r in rows {
        w.write_record(r)
            .map_err(|e| StepError::Data(format!("{}: {e}", path.display())))?;
    }
    w.flush().map_err(|e| StepError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Report parameters over `cells` (scenario, pipeline, seed) of pipelines "syn" and "dir".
    fn params(cells: &[(&str, &str, u64)]) -> ReportParams {
        ReportParams {
            experiment: "e".into(),
            cells: cells
                .iter()
                .map(|&(s, p, seed)| CellRef {
                    scenario: s.into(),
                    pipeline: p.into(),
                    seed,
                })
                .collect(),
            pipelines: vec!["syn".into(), "dir".into()],
            metric: "score".into(),
            delta: None,
        }
    }

    #[test]
    fn table_averages_seeds_and_computes_delta() {
        let params = params(&[
            ("clean", "syn", 1),
            ("clean", "dir", 1),
            ("clean", "syn", 2),
            ("clean", "dir", 2),
        ]);
        let m = |s: f64| json!({"score": s, "macro_score": s / 2.0, "baseline": {"score": 0.78, "macro_score": 0.33}});
        let ok = |s: f64| CellResult::Metrics(m(s));
        let t = ResultTable::build(&params, &[ok(0.9), ok(0.7), ok(0.8), ok(0.7)]);
        let rows = t.rows();
        assert_eq!(
            rows[0][..4],
            ["scenario", "syn", "dir", "delta_pp"].map(String::from)
        );
        assert_eq!(
            rows[1][..4],
            ["clean", "0.850", "0.700", "+15.0"].map(String::from)
        );
        assert!(t
            .markdown()
            .starts_with("| scenario | syn | dir | delta_pp |"));
        let dir = tempfile::tempdir().unwrap();
        t.chart_svg(&dir.path().join("c.svg")).unwrap();
        assert!(std::fs::read_to_string(dir.path().join("c.svg"))
            .unwrap()
            .contains("<svg"));
    }

    #[test]
    fn a_cell_that_did_not_complete_reads_failed_and_says_why() {
        let params = params(&[
            ("clean", "syn", 1),
            ("clean", "dir", 1),
            ("clean", "syn", 2),
            ("clean", "dir", 2),
            ("drift", "syn", 1),
            ("drift", "dir", 1),
        ]);
        let ok = |s: f64| {
            CellResult::Metrics(
                json!({"score": s, "macro_score": s, "baseline": {"score": 0.8, "macro_score": 0.3}}),
            )
        };
        let gone = |w: &str| CellResult::Missing(w.into());
        let results = [
            ok(0.9),
            ok(0.7),
            ok(0.8),
            gone("clean/dir/s2/train failed"),
            gone("drift/s1/corrupt failed"),
            gone("drift/s1/corrupt failed"),
        ];
        let t = ResultTable::build(&params, &results);
        let rows = t.rows();
        // One seed of two missing: the mean of the other is not shown as the cell's value.
        assert_eq!(
            rows[1],
            ["clean", "0.850", "failed", "-", "0.850", "failed", "0.800", "0.300"]
        );
        assert_eq!(
            rows[2],
            ["drift", "failed", "failed", "-", "failed", "failed", "-", "-"]
        );
        let md = t.markdown();
        assert!(
            md.contains("3 cell(s) did not complete")
                && md.contains("- clean/dir/s2: clean/dir/s2/train failed")
                && md.contains("- drift/syn/s1: drift/s1/corrupt failed"),
            "{md}"
        );
        assert_eq!(t.long.iter().filter(|r| r.3 == "score").count(), 3);
        let dir = tempfile::tempdir().unwrap();
        t.chart_svg(&dir.path().join("c.svg")).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("c.svg")).unwrap();
        let marks = svg.lines().filter(|l| l.trim() == "failed").count();
        assert_eq!(marks, 3, "one mark per failed bar: {svg}");
    }
}
