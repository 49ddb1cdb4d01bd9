//! Fetches a data set archive (https://, http:// or file://), checks its blake3, and unpacks it
//! atomically into place, so a data path that is absent can be materialized from its source.
//!
//! Nothing is trusted before the hash matches, and the destination appears only complete: the
//! archive is unpacked into a sibling temporary directory that is renamed at the end.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a data set comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadSpec {
    /// Archive URL (`https://…`, `http://…` or `file:///…`), a zip file.
    pub url: String,
    /// Expected blake3 of the archive, hex.
    pub blake3: String,
    /// Folder inside the archive that becomes the data path (e.g. `repo-master`); empty for the
    /// archive's root.
    #[serde(default)]
    pub subdir: String,
}

/// Errors fetching or unpacking.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The transfer failed.
    #[error("downloading {url}: {message}")]
    Fetch { url: String, message: String },
    /// The archive's content is not what the experiment says.
    #[error(
        "{url}: blake3 is {actual}, but the experiment expects {expected}; nothing was unpacked"
    )]
    Hash {
        url: String,
        expected: String,
        actual: String,
    },
    /// The archive is not a valid zip or lacks the folder.
    #[error("{url}: {message}")]
    Archive { url: String, message: String },
    /// A file-system error.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the archive's bytes from its URL.
fn fetch_bytes(url: &str) -> Result<Vec<u8>, DownloadError> {
    let err = |message: String| DownloadError::Fetch {
        url: url.to_string(),
        message,
    };
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read(path).map_err(|e| err(e.to_string()));
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(err(
            "only https://, http:// and file:// URLs are supported".into()
        ));
    }
    crate::steps::runtime().block_on(async {
        let resp = reqwest::get(url).await.map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("HTTP {}", resp.status())));
        }
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| err(e.to_string()))
    })
}

/// Materializes `dest` from `spec` unless it already exists. Returns whether it downloaded.
pub fn ensure(spec: &DownloadSpec, dest: &Path) -> Result<bool, DownloadError> {
    if dest.exists() {
        return Ok(false);
    }
    let bytes = fetch_bytes(&spec.url)?;
    let actual = blake3::hash(&bytes).to_hex().to_string();
    if !actual.eq_ignore_ascii_case(&spec.blake3) {
        return Err(DownloadError::Hash {
            url: spec.url.clone(),
            expected: spec.blake3.clone(),
            actual,
        });
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dest
        .file_name()
        .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    let tmp = parent.join(format!(".{name}.download.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result =
        unpack(&bytes, spec, &tmp).and_then(|root| std::fs::rename(&root, dest).map_err(io(dest)));
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| true)
}

/// Unpacks the zip into `tmp` and returns the folder that becomes the data path.
fn unpack(bytes: &[u8], spec: &DownloadSpec, tmp: &Path) -> Result<PathBuf, DownloadError> {
    let bad = |message: String| DownloadError::Archive {
        url: spec.url.clone(),
        message,
    };
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| bad(e.to_string()))?;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        // enclosed_name refuses absolute paths and `..`, so an archive cannot write elsewhere.
        let Some(rel) = f.enclosed_name() else {
            return Err(bad(format!("unsafe path {:?}", f.name())));
        };
        let out = tmp.join(rel);
        if f.is_dir() {
            std::fs::create_dir_all(&out).map_err(io(&out))?;
            continue;
        }
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(io(p))?;
        }
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf).map_err(|e| bad(e.to_string()))?;
        let mut w = std::fs::File::create(&out).map_err(io(&out))?;
        w.write_all(&buf)
            .and_then(|()| w.sync_all())
            .map_err(io(&out))?;
    }
    let root = if spec.subdir.is_empty() {
        tmp.to_path_buf()
    } else {
        tmp.join(&spec.subdir)
    };
    if !root.is_dir() {
        return Err(bad(format!("no folder {:?} in the archive", spec.subdir)));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_zip(dir: &Path) -> (PathBuf, String) {
        let path = dir.join("sgd.zip");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        z.add_directory("sgd-master/train/", opts).unwrap();
        z.start_file("sgd-master/train/dialogues_001.json", opts)
            .unwrap();
        z.write_all(b"[]").unwrap();
        z.finish().unwrap();
        let hash = blake3::hash(&std::fs::read(&path).unwrap())
            .to_hex()
            .to_string();
        (path, hash)
    }

    #[test]
    fn downloads_checks_and_unpacks_a_local_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let (zip, hash) = make_zip(tmp.path());
        let dest = tmp.path().join("data/sgd");
        let spec = DownloadSpec {
            url: format!("file://{}", zip.display()),
            blake3: hash,
            subdir: "sgd-master".into(),
        };
        assert!(ensure(&spec, &dest).unwrap());
        assert_eq!(
            std::fs::read(dest.join("train/dialogues_001.json")).unwrap(),
            b"[]"
        );
        assert!(!ensure(&spec, &dest).unwrap(), "present: nothing to do");
    }

    #[test]
    fn a_wrong_hash_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let (zip, _) = make_zip(tmp.path());
        let dest = tmp.path().join("data/sgd");
        let spec = DownloadSpec {
            url: format!("file://{}", zip.display()),
            blake3: "00".repeat(32),
            subdir: String::new(),
        };
        let e = ensure(&spec, &dest).unwrap_err();
        assert!(e.to_string().contains("nothing was unpacked"), "{e}");
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(tmp.path().join("data")).map_or(0, |d| d.count()),
            0
        );
    }

    #[test]
    fn fetches_over_http() {
        use std::net::TcpListener;
        let tmp = tempfile::tempdir().unwrap();
        let (zip, hash) = make_zip(tmp.path());
        let body = std::fs::read(&zip).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
        });
        let dest = tmp.path().join("sgd");
        let spec = DownloadSpec {
            url: format!("http://127.0.0.1:{port}/sgd.zip"),
            blake3: hash,
            subdir: "sgd-master".into(),
        };
        assert!(ensure(&spec, &dest).unwrap());
        assert!(dest.join("train/dialogues_001.json").is_file());
        server.join().unwrap();
    }
}
