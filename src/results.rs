//! Publishes a finished report to `results/<experiment>/`: each file copied to a temporary name
//! that belongs to this process alone, then renamed into place, so concurrent runs of one
//! experiment each publish whole files and never trip over each other's temporaries.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The report files copied to the results folder.
pub const FILES: [&str; 4] = ["table.md", "table.csv", "long.csv", "chart.svg"];

/// A file-system error while publishing, with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("publishing results: {path}: {error}")]
pub struct PublishError {
    /// The path that could not be read or written.
    pub path: PathBuf,
    /// The cause (in the message, not a `source()`, so a `{:#}` chain says it once).
    pub error: std::io::Error,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Copies the report's files from `report` into `dest` (created if absent); each file appears
/// whole or not at all. Returns `dest`.
pub fn publish(report: &Path, dest: &Path) -> Result<PathBuf, PublishError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| PublishError { path, error }
    };
    std::fs::create_dir_all(dest).map_err(err(dest))?;
    for f in FILES {
        // A name unique to this process and call: another run publishing the same experiment
        // at the same moment must not rename (or overwrite) our temporary file.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dest.join(format!(".{f}.{}.{n}.tmp", std::process::id()));
        let src = report.join(f);
        if let Err(e) = std::fs::copy(&src, &tmp) {
            let _ = std::fs::remove_file(&tmp);
            // Name the side that failed: the report's file, or the results folder.
            let path = if src.is_file() { tmp } else { src };
            return Err(PublishError { path, error: e });
        }
        let target = dest.join(f);
        if let Err(e) = std::fs::rename(&tmp, &target) {
            let _ = std::fs::remove_file(&tmp);
            return Err(PublishError {
                path: target,
                error: e,
            });
        }
    }
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(dir: &Path, body: &str) {
        std::fs::create_dir_all(dir).unwrap();
        for f in FILES {
            std::fs::write(dir.join(f), format!("{f}: {body}")).unwrap();
        }
    }

    #[test]
    fn concurrent_publications_of_one_experiment_all_succeed() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("results/exp");
        let sources: Vec<PathBuf> = (0..2)
            .map(|i| {
                let d = tmp.path().join(format!("report{i}"));
                report(&d, "same table");
                d
            })
            .collect();
        // Two "runs" publishing the same experiment over and over, as two processes would: with
        // one shared temporary name, one run's rename took the other's file away.
        std::thread::scope(|s| {
            for src in &sources {
                let dest = &dest;
                s.spawn(move || {
                    for _ in 0..300 {
                        publish(src, dest).expect("every publication succeeds");
                    }
                });
            }
        });
        for f in FILES {
            assert_eq!(
                std::fs::read_to_string(dest.join(f)).unwrap(),
                format!("{f}: same table")
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left behind");
    }

    #[test]
    fn an_error_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-report");
        let e = publish(&missing, &tmp.path().join("out")).unwrap_err();
        assert!(
            e.to_string().contains("no-report/table.md"),
            "the error names the file: {e}"
        );
    }
}
