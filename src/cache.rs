//! The content-addressed step cache: keys, manifests, atomic publication, locks, and the stat
//! cache for external files.
//!
//! A step's key is blake3 over a canonical JSON form of its kind, implementation version,
//! canonical parameters, its inputs' *output* hashes (so a rerun that reproduces identical bytes
//! stops invalidation there: early cut-off) and the content hashes of external files it reads.
//! Entries live in `cache/<key>/` (`manifest.json` + `out/`). They are written in `cache/.tmp/`
//! and renamed into place; the manifest, the commit mark, is written only once the outputs are
//! durable, so a crash never leaves an entry a later run trusts; an entry that fails its checks
//! (no manifest, a wrong one, missing files) is a miss, never an error.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A step's cache key: 64 hex digits of blake3.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StepKey(pub String);

impl std::fmt::Display for StepKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StepKey {
    /// The first 12 digits, for display.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

/// Everything a key is computed from. Also stored in the manifest, so `plan` can say what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    /// Step kind.
    pub kind: String,
    /// Step implementation version.
    pub version: u32,
    /// Canonical parameters.
    pub params: Value,
    /// `(input role, producer label, producer output hash)` in the node's input order.
    pub inputs: Vec<(String, String, String)>,
    /// `(path relative to the project root, content hash)` of external files, sorted.
    pub external: Vec<(String, String)>,
}

impl KeyParts {
    /// The key. Labels are cosmetic and left out; everything else is hashed in canonical form.
    pub fn key(&self) -> StepKey {
        let inputs: Vec<Value> = self
            .inputs
            .iter()
            .map(|(r, _, h)| Value::from(vec![r.clone(), h.clone()]))
            .collect();
        let doc = serde_json::json!({
            "kind": self.kind,
            "version": self.version,
            "params": self.params,
            "inputs": inputs,
            "external": self.external,
        });
        StepKey(
            blake3::hash(canonical_json(&doc).as_bytes())
                .to_hex()
                .to_string(),
        )
    }
}

/// JSON text with object keys sorted at every level and no whitespace, so equal values hash equal.
pub fn canonical_json(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            Value::Number(n) => match n.as_f64() {
                // 2.0 and 2 are the same number; serde_json would print them differently.
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    Value::from(f as i64)
                }
                _ => v.clone(),
            },
            _ => v.clone(),
        }
    }
    sort(v).to_string()
}

/// One output file of an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Path relative to `out/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content.
    pub blake3: String,
}

/// `manifest.json` of a cache entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The entry's key.
    pub key: StepKey,
    /// Label of the node that produced it (first run).
    pub label: String,
    /// What the key was computed from.
    pub parts: KeyParts,
    /// Output files, sorted by path.
    pub outputs: Vec<OutputFile>,
    /// blake3 over the sorted (path, hash) list: what consumers' keys use.
    pub output_hash: String,
    /// Version of tracelab that wrote it.
    pub tracelab_version: String,
    /// Start time, seconds since the Unix epoch.
    pub started_at: f64,
    /// Wall time of the step in seconds.
    pub duration_s: f64,
    /// Statistics the step recorded.
    pub stats: Map<String, Value>,
}

/// Errors of the cache itself (not of steps).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// File-system error on a path.
    #[error("cache: {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    /// `cache/`.
    pub dir: PathBuf,
}

/// An entry being written: outputs go into `out_dir`, then [`Cache::expose`] (or
/// [`Cache::publish`], which also commits) moves it into place.
#[derive(Debug)]
pub struct Pending {
    /// The key it will be published under.
    pub key: StepKey,
    /// Temporary entry directory inside `cache/.tmp/`.
    pub dir: PathBuf,
    /// Where the step writes (`<dir>/out`).
    pub out_dir: PathBuf,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Unpublished (failed or interrupted) work never survives.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What [`Cache::expose`] found or did.
#[derive(Debug)]
pub enum Exposure {
    /// Another run published this key meanwhile: its valid entry.
    Existing(Manifest),
    /// The outputs are in place and readable; the entry still needs [`Exposed::commit`].
    New(Exposed),
}

/// An entry in place whose outputs are readable but not yet trusted (no manifest yet).
#[derive(Debug)]
pub struct Exposed {
    dir: PathBuf,
    /// The manifest it will be committed with (outputs and their hashes filled in).
    pub manifest: Manifest,
}

impl Exposed {
    /// Makes the outputs durable, then writes the manifest (through a synced temporary file
    /// and a rename), which is what makes later runs trust the entry. A crash before the rename
    /// leaves an entry without a manifest: a miss, replaced by the next run that computes it.
    pub fn commit(self) -> Result<(), CacheError> {
        sync_tree(&self.dir.join("out"))?;
        tracing::debug!(dir = %self.dir.display(), "outputs synced");
        let tmp = self.dir.join("manifest.json.tmp");
        let text = serde_json::to_vec_pretty(&self.manifest).expect("manifest serializes");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            io::Write::write_all(&mut f, &text)?;
            f.sync_data()
        };
        write().map_err(io_err(&tmp))?;
        let path = self.dir.join("manifest.json");
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

/// A held file lock, released on drop.
pub struct Lock(#[allow(dead_code)] File);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Cache {
    /// Opens (creating if needed) a cache directory.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        for sub in ["", ".tmp", ".locks", "responses"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// Directory of an entry.
    pub fn entry_dir(&self, key: &StepKey) -> PathBuf {
        self.dir.join(&key.0)
    }

    /// Output directory of an entry.
    pub fn out_dir(&self, key: &StepKey) -> PathBuf {
        self.entry_dir(key).join("out")
    }

    /// Directory for durable per-request response records (teacher and judge calls).
    pub fn responses_dir(&self) -> PathBuf {
        self.dir.join("responses")
    }

    /// The manifest of a valid entry, or `None` (absent or corrupt: a miss).
    pub fn lookup(&self, key: &StepKey) -> Option<Manifest> {
        let dir = self.entry_dir(key);
        let text = fs::read(dir.join("manifest.json")).ok()?;
        let m: Manifest = serde_json::from_slice(&text).ok()?;
        if &m.key != key {
            return None;
        }
        let out = dir.join("out");
        for f in &m.outputs {
            match fs::metadata(out.join(&f.path)) {
                Ok(meta) if meta.len() == f.size => {}
                _ => return None,
            }
        }
        Some(m)
    }

    /// Re-hashes an entry's outputs and compares them with its manifest (`tracelab verify`).
    pub fn verify(&self, key: &StepKey) -> Result<bool, CacheError> {
        let Some(m) = self.lookup(key) else {
            return Ok(false);
        };
        let files = hash_tree(&self.out_dir(key))?;
        Ok(files == m.outputs)
    }

    /// Starts writing an entry.
    pub fn begin(&self, key: &StepKey) -> Result<Pending, CacheError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .dir
            .join(".tmp")
            .join(format!("{}.{}.{n}", key.0, std::process::id()));
        let out_dir = dir.join("out");
        fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
        Ok(Pending {
            key: key.clone(),
            dir,
            out_dir,
        })
    }

    /// Hashes the outputs, makes them durable and commits the entry ([`Cache::expose`] then
    /// [`Exposed::commit`]). If another run published the same key meanwhile, theirs is kept
    /// (same content by construction) and ours discarded.
    pub fn publish(&self, pending: Pending, manifest: Manifest) -> Result<Manifest, CacheError> {
        match self.expose(pending, manifest)? {
            Exposure::Existing(m) => Ok(m),
            Exposure::New(e) => {
                let m = e.manifest.clone();
                e.commit()?;
                Ok(m)
            }
        }
    }

    /// Hashes the outputs and renames the entry into place *without* its manifest: dependents
    /// in this run may read its outputs at once, while no run trusts it (an entry without
    /// `manifest.json` is a miss) until [`Exposed::commit`] has made the outputs durable and
    /// written the manifest. The caller holds the key's lock until then.
    pub fn expose(&self, pending: Pending, mut manifest: Manifest) -> Result<Exposure, CacheError> {
        manifest.outputs = hash_tree(&pending.out_dir)?;
        manifest.output_hash = output_hash(&manifest.outputs);
        tracing::debug!(key = %pending.key.short(), "outputs hashed");
        let target = self.entry_dir(&pending.key);
        if let Some(existing) = self.lookup(&pending.key) {
            return Ok(Exposure::Existing(existing));
        }
        if target.exists() {
            // A leftover that is no valid entry (a crash before its commit, bit rot, hand
            // edits): replace it.
            let _ = fs::remove_dir_all(&target);
        }
        match fs::rename(&pending.dir, &target) {
            Ok(()) => {}
            Err(_) if self.lookup(&pending.key).is_some() => {
                return self
                    .lookup(&pending.key)
                    .map(Exposure::Existing)
                    .ok_or_else(|| unreachable_io(&target))
            }
            Err(e) => {
                return Err(CacheError::Io {
                    path: target,
                    source: e,
                })
            }
        }
        Ok(Exposure::New(Exposed {
            dir: target,
            manifest,
        }))
    }

    /// Deletes an entry (used by `gc` and tests).
    pub fn remove(&self, key: &StepKey) -> Result<(), CacheError> {
        let dir = self.entry_dir(key);
        // Rename first so a concurrent reader never sees a half-deleted entry as valid.
        let trash = self
            .dir
            .join(".tmp")
            .join(format!("{}.trash.{}", key.0, std::process::id()));
        match fs::rename(&dir, &trash) {
            Ok(()) => fs::remove_dir_all(&trash).map_err(io_err(&trash)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::Io {
                path: dir,
                source: e,
            }),
        }
    }

    /// Every entry key present.
    pub fn keys(&self) -> Result<Vec<StepKey>, CacheError> {
        let mut v = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                v.push(StepKey(name));
            }
        }
        v.sort();
        Ok(v)
    }

    /// Blocks until this process holds the exclusive lock for computing `key`.
    pub fn lock_key(&self, key: &StepKey) -> Result<Lock, CacheError> {
        self.lock(
            &self.dir.join(".locks").join(format!("{}.lock", key.0)),
            true,
        )
    }

    /// Lock held by every run (shared) and by `gc` (exclusive).
    pub fn lock_cache(&self, exclusive: bool) -> Result<Lock, CacheError> {
        self.lock(&self.dir.join(".lock"), exclusive)
    }

    fn lock(&self, path: &Path, exclusive: bool) -> Result<Lock, CacheError> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        if exclusive {
            f.lock_exclusive()
        } else {
            f.lock_shared()
        }
        .map_err(io_err(path))?;
        Ok(Lock(f))
    }

    /// Removes temporary directories left by runs that died (kill -9, power loss).
    pub fn clean_stale_tmp(&self) {
        let tmp = self.dir.join(".tmp");
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .split('.')
                .nth(if name.contains(".trash.") { 2 } else { 1 })
                .and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

fn unreachable_io(path: &Path) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        source: io::Error::other("entry vanished after publication"),
    }
}

/// blake3 of a file's content, hex.
pub fn hash_file(path: &Path) -> Result<String, CacheError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Hashes every file below `dir`, sorted by relative path.
pub fn hash_tree(dir: &Path) -> Result<Vec<OutputFile>, CacheError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err(&d))? {
            let e = e.map_err(io_err(&d))?;
            let p = e.path();
            let ft = e.file_type().map_err(io_err(&p))?;
            if ft.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("below dir")
                    .to_string_lossy()
                    .replace('\\', "/");
                let size = e.metadata().map_err(io_err(&p))?.len();
                files.push(OutputFile {
                    path: rel,
                    size,
                    blake3: hash_file(&p)?,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The hash consumers' keys use: over the sorted (path, content hash) list.
pub fn output_hash(files: &[OutputFile]) -> String {
    let mut h = blake3::Hasher::new();
    for f in files {
        h.update(f.path.as_bytes());
        h.update(&[0]);
        h.update(f.blake3.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex().to_string()
}

/// Makes every file's content durable before the entry's manifest is written. Directories are
/// not synced: if a crash loses a directory entry or a rename, the entry is absent, has no
/// manifest or lacks a file its manifest lists, and [`Cache::lookup`] treats it as a miss.
/// Content is what must never be half-written under a valid manifest, and that is what this
/// guarantees.
///
/// Writeback of every file is started before the first `fdatasync` waits: their block
/// allocations then land in one journal commit, instead of each `fdatasync` waiting for a
/// commit of its own (on ext4 that made an entry of three files cost three commits). The
/// `fdatasync` of each file is still what guarantees durability.
fn sync_tree(dir: &Path) -> Result<(), CacheError> {
    let mut paths = Vec::new();
    list_files(dir, &mut paths)?;
    // Bounded batches, so an entry of many files cannot run out of file descriptors.
    for batch in paths.chunks(256) {
        let files = batch
            .iter()
            .map(|p| File::open(p).map_err(io_err(p)))
            .collect::<Result<Vec<File>, CacheError>>()?;
        #[cfg(target_os = "linux")]
        for f in &files {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a file descriptor `f` owns; it only starts writeback.
            // Its failure is harmless: the fdatasync below reports real errors.
            unsafe {
                libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        for (f, p) in files.iter().zip(batch) {
            f.sync_data().map_err(io_err(p))?;
        }
    }
    Ok(())
}

/// Every file below `dir`.
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CacheError> {
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let p = e.path();
        if e.file_type().map_err(io_err(&p))?.is_dir() {
            list_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Remembers content hashes of external files by (path, size, mtime, inode), so unchanged files
/// are not read again. Stored in `cache/.statcache.json`; a lost or corrupt file only costs time.
#[derive(Debug, Default)]
pub struct StatCache {
    path: PathBuf,
    entries: BTreeMap<String, StatEntry>,
    dirty: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: u128,
    inode: u64,
    hash: String,
}

impl StatCache {
    /// Loads the stat cache of a cache directory.
    pub fn load(cache: &Cache) -> StatCache {
        let path = cache.dir.join(".statcache.json");
        let entries = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StatCache {
            path,
            entries,
            dirty: false,
        }
    }

    /// Content hashes of files, in order; only files whose stat changed are read. Those are
    /// hashed in parallel: a fresh cache reads every dataset file before the first step can
    /// start, and that read is on the critical path of a cold run.
    pub fn hash_all(&mut self, files: &[PathBuf]) -> Result<Vec<String>, CacheError> {
        use rayon::prelude::*;
        use std::os::unix::fs::MetadataExt;
        let mut hashes: Vec<Option<String>> = Vec::with_capacity(files.len());
        let mut misses: Vec<(usize, String, StatEntry)> = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let meta = fs::metadata(file).map_err(io_err(file))?;
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let key = std::path::absolute(file)
                .unwrap_or_else(|_| file.to_path_buf())
                .to_string_lossy()
                .into_owned();
            match self.entries.get(&key) {
                Some(e)
                    if e.size == meta.len() && e.mtime_ns == mtime_ns && e.inode == meta.ino() =>
                {
                    hashes.push(Some(e.hash.clone()));
                }
                _ => {
                    hashes.push(None);
                    let entry = StatEntry {
                        size: meta.len(),
                        mtime_ns,
                        inode: meta.ino(),
                        hash: String::new(),
                    };
                    misses.push((i, key, entry));
                }
            }
        }
        let read = |(i, _, _): &(usize, String, StatEntry)| hash_file(&files[*i]);
        let computed: Vec<Result<String, CacheError>> = if misses.len() > 1 {
            misses.par_iter().map(read).collect()
        } else {
            misses.iter().map(read).collect()
        };
        for ((i, key, mut entry), hash) in misses.into_iter().zip(computed) {
            let hash = hash?;
            hashes[i] = Some(hash.clone());
            entry.hash = hash;
            self.entries.insert(key, entry);
            self.dirty = true;
        }
        Ok(hashes
            .into_iter()
            .map(|h| h.expect("every file hashed"))
            .collect())
    }

    /// Writes the stat cache back if it changed (atomically).
    pub fn save(&self) {
        if !self.dirty {
            return;
        }
        let tmp = self
            .path
            .with_extension(format!("json.{}", std::process::id()));
        if fs::write(&tmp, serde_json::to_vec(&self.entries).expect("serializes")).is_ok() {
            let _ = fs::rename(&tmp, &self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(params: Value) -> KeyParts {
        KeyParts {
            kind: "k".into(),
            version: 1,
            params,
            inputs: vec![],
            external: vec![],
        }
    }

    #[test]
    fn key_ignores_key_order_and_number_spelling() {
        let a = parts(serde_json::json!({"a": 1, "b": 2.0}));
        let b = parts(serde_json::json!({"b": 2, "a": 1}));
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), parts(serde_json::json!({"a": 1, "b": 3})).key());
    }

    /// A manifest for `parts`, before publication fills in its outputs.
    fn manifest(parts: KeyParts) -> Manifest {
        Manifest {
            key: parts.key(),
            label: "t".into(),
            parts,
            outputs: vec![],
            output_hash: String::new(),
            tracelab_version: "t".into(),
            started_at: 0.0,
            duration_s: 0.0,
            stats: Map::new(),
        }
    }

    #[test]
    fn publish_is_atomic_and_corrupt_entries_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let p = parts(Value::Null);
        let key = p.key();
        assert!(cache.lookup(&key).is_none());
        let pending = cache.begin(&key).unwrap();
        fs::write(pending.out_dir.join("x.txt"), "hello").unwrap();
        let m = cache.publish(pending, manifest(p)).unwrap();
        assert_eq!(m.outputs.len(), 1);
        assert!(cache.lookup(&key).is_some());
        assert!(cache.verify(&key).unwrap());
        fs::write(cache.out_dir(&key).join("x.txt"), "truncated!!").unwrap();
        assert!(cache.lookup(&key).is_none(), "size mismatch is a miss");
        fs::write(cache.entry_dir(&key).join("manifest.json"), "{not json").unwrap();
        assert!(cache.lookup(&key).is_none(), "corrupt manifest is a miss");
        assert!(
            fs::read_dir(tmp.path().join(".tmp"))
                .unwrap()
                .next()
                .is_none(),
            "no temp left"
        );
    }

    #[test]
    fn an_exposed_entry_is_readable_but_untrusted_until_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let p = parts(serde_json::json!({"exposed": true}));
        let key = p.key();
        let manifest = manifest(p);
        let write = |text: &str| {
            let pending = cache.begin(&key).unwrap();
            fs::write(pending.out_dir.join("x.txt"), text).unwrap();
            pending
        };
        // Exposed and never committed (a crash before the commit): readable, but a miss.
        let Exposure::New(e) = cache.expose(write("first"), manifest.clone()).unwrap() else {
            panic!("nothing was published before")
        };
        assert_eq!(
            fs::read_to_string(cache.out_dir(&key).join("x.txt")).unwrap(),
            "first"
        );
        assert!(cache.lookup(&key).is_none(), "no manifest, no trust");
        drop(e);
        // The next run that computes the key replaces the leftover and commits.
        let m = cache.publish(write("second"), manifest).unwrap();
        assert_eq!(cache.lookup(&key).unwrap().output_hash, m.output_hash);
        assert_eq!(
            fs::read_to_string(cache.out_dir(&key).join("x.txt")).unwrap(),
            "second"
        );
        assert!(cache.verify(&key).unwrap());
        assert!(!cache.entry_dir(&key).join("manifest.json.tmp").exists());
    }
}
