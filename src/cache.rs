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
    /// The file's identity when the entry was committed (or last re-hashed): while it is
    /// unchanged, the content is trusted without reading it; any change means a re-hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<FileStat>,
}

impl OutputFile {
    /// Same path and content (whatever the recorded stat).
    fn same_content(&self, other: &OutputFile) -> bool {
        self.path == other.path && self.size == other.size && self.blake3 == other.blake3
    }
}

/// What identifies a file's version without reading it: an edit changes the change time (which
/// no user call can set back) and usually the modification time; a replacement changes the
/// inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i128,
    /// Inode number.
    pub inode: u64,
}

impl FileStat {
    pub(crate) fn of(meta: &fs::Metadata) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileStat {
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
        }
    }

    /// The stat to record for a file, or `None` while it is too recent to be trusted: file
    /// times come from a coarse clock (one tick can be 10 ms), so an edit in the same tick as
    /// the recording would leave every field unchanged ("racy" files, as git calls them).
    /// Such a file is re-hashed at its next lookup, which records its stat then.
    pub(crate) fn recordable(meta: &fs::Metadata) -> Option<FileStat> {
        let stat = FileStat::of(meta);
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        (stat.ctime_ns.max(stat.mtime_ns) + RACY_NS < now).then_some(stat)
    }
}

/// How long after its last change a file's stat is trusted (see [`FileStat::recordable`]).
const RACY_NS: i128 = 100_000_000;

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
    /// (The cause is part of the message and not a `source()`, so that a chain printed with
    /// `{:#}` says it once.)
    #[error("cache: {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    /// A lock was not free within `--lock-timeout`.
    #[error("gave up after {seconds}s waiting for {what}, held by {holder} (--lock-timeout)")]
    LockTimeout {
        what: String,
        holder: String,
        seconds: f64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |error| CacheError::Io {
        path: path.to_path_buf(),
        error,
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
    pub fn commit(mut self) -> Result<(), CacheError> {
        let out = self.dir.join("out");
        sync_tree(&out)?;
        tracing::debug!(dir = %self.dir.display(), "outputs synced");
        for f in &mut self.manifest.outputs {
            let path = out.join(&f.path);
            f.stat = FileStat::recordable(&fs::metadata(&path).map_err(io_err(&path))?);
        }
        write_manifest(&self.dir, &self.manifest, "tmp")
    }
}

/// Writes `manifest.json` through a synced temporary file (named with `tag`) and a rename.
fn write_manifest(dir: &Path, manifest: &Manifest, tag: &str) -> Result<(), CacheError> {
    let tmp = dir.join(format!("manifest.json.{tag}"));
    let text = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        io::Write::write_all(&mut f, &text)?;
        f.sync_data()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(CacheError::Io {
            path: tmp,
            error: e,
        });
    }
    let path = dir.join("manifest.json");
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// A held file lock, released on drop (with the note that named its holder).
pub struct Lock {
    /// The locked file; `None` for a read-only cache, where no lock could be taken.
    _file: Option<File>,
    /// `.locks/holders/<pid>`, removed on release.
    note: Option<PathBuf>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(note) = &self.note {
            let _ = fs::remove_file(note);
        }
    }
}

/// How a process waits for a lock another one holds.
#[derive(Clone, Copy)]
pub struct LockWait<'a> {
    /// Give up after this long (`--lock-timeout`); `None` waits as long as it takes.
    pub timeout: Option<std::time::Duration>,
    /// Called once, when the lock turns out to be held: what is waited for, and by whom it is
    /// held.
    pub on_wait: &'a dyn Fn(&str, &str),
}

impl LockWait<'_> {
    /// Waits silently and for as long as it takes.
    pub const FOREVER: LockWait<'static> = LockWait {
        timeout: None,
        on_wait: &|_, _| {},
    };
}

/// Opens (creating if needed) a lock file; read-only when it cannot be written, since a lock
/// on a file descriptor opened for reading works as well.
fn open_lock_file(path: &Path) -> Result<File, CacheError> {
    let rw = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path);
    match rw {
        Ok(f) => Ok(f),
        Err(e) if read_only(&e) => File::open(path).map_err(|_| CacheError::Io {
            path: path.to_path_buf(),
            error: e,
        }),
        Err(e) => Err(CacheError::Io {
            path: path.to_path_buf(),
            error: e,
        }),
    }
}

/// An error that says the file system (or its permissions) forbids writing.
fn read_only(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
}

/// Takes `file`'s lock; while it is held elsewhere, says so once through `wait.on_wait` and
/// polls until it is free or `wait.timeout` has passed.
fn acquire(
    file: &File,
    path: &Path,
    exclusive: bool,
    wait: &LockWait<'_>,
    what: &dyn Fn() -> String,
    holder: &dyn Fn() -> String,
) -> Result<(), CacheError> {
    let try_once = || match if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    } {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(CacheError::Io {
            path: path.to_path_buf(),
            error: e,
        }),
    };
    if try_once()? {
        return Ok(());
    }
    let held_by = holder();
    (wait.on_wait)(&what(), &held_by);
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        if let Some(limit) = wait.timeout {
            if start.elapsed() >= limit {
                return Err(CacheError::LockTimeout {
                    what: what(),
                    holder: holder(),
                    seconds: limit.as_secs_f64(),
                });
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
        if try_once()? {
            return Ok(());
        }
    }
}

/// The processes registered as holding the cache lock that are still alive, described.
fn live_holders(dir: &Path) -> String {
    let mut found: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_file(e.path()); // a holder that died without cleaning up
                return None;
            }
            let who = fs::read_to_string(e.path()).unwrap_or_default();
            Some(format!("pid {pid} ({})", who.trim()))
        })
        .collect();
    found.sort();
    if found.is_empty() {
        "another process".into()
    } else {
        found.join(", ")
    }
}

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

    /// The manifest of an entry as written, without checking its outputs; `None` when absent
    /// or unreadable.
    pub fn read_manifest(&self, key: &StepKey) -> Option<Manifest> {
        let text = fs::read(self.entry_dir(key).join("manifest.json")).ok()?;
        let m: Manifest = serde_json::from_slice(&text).ok()?;
        (&m.key == key).then_some(m)
    }

    /// The manifest of a valid entry, or `None` (absent or corrupt: a miss).
    ///
    /// An output whose stat still matches the one recorded is trusted unread; one whose stat
    /// changed (an edit, a copy of the cache, bit rot that touched it) is re-hashed, and a
    /// content that differs from the manifest's makes the entry a miss. When the content is
    /// intact, the new stat is recorded (best effort: a read-only cache just re-hashes again).
    pub fn lookup(&self, key: &StepKey) -> Option<Manifest> {
        let mut m = self.read_manifest(key)?;
        let out = self.out_dir(key);
        let mut refreshed = false;
        for f in &mut m.outputs {
            let path = out.join(&f.path);
            let meta = fs::metadata(&path).ok()?;
            if meta.len() != f.size {
                return None;
            }
            if f.stat.as_ref() == Some(&FileStat::of(&meta)) {
                continue;
            }
            if hash_file(&path).ok()? != f.blake3 {
                tracing::warn!(file = %path.display(), "cached output changed since its commit: a miss");
                return None;
            }
            let stat = FileStat::recordable(&meta);
            refreshed |= stat.is_some();
            f.stat = stat;
        }
        if refreshed {
            let tag = format!(
                "{}.{}.tmp",
                std::process::id(),
                TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let _ = write_manifest(&self.entry_dir(key), &m, &tag);
        }
        Some(m)
    }

    /// Re-hashes every output of an entry (`tracelab verify`), whatever its recorded stat says,
    /// and lists what differs from its manifest: empty when the entry is intact.
    pub fn verify(&self, key: &StepKey) -> Result<Vec<String>, CacheError> {
        let Some(m) = self.read_manifest(key) else {
            return Ok(vec!["no readable manifest".into()]);
        };
        let out = self.out_dir(key);
        let found = if out.is_dir() {
            hash_tree(&out)?
        } else {
            Vec::new()
        };
        let mut problems = Vec::new();
        for f in &m.outputs {
            match found.iter().find(|x| x.path == f.path) {
                None => problems.push(format!("{}: missing", f.path)),
                Some(x) if !x.same_content(f) => {
                    problems.push(format!("{}: content differs from the manifest", f.path))
                }
                Some(_) => {}
            }
        }
        for x in &found {
            if !m.outputs.iter().any(|f| f.path == x.path) {
                problems.push(format!("{}: not in the manifest", x.path));
            }
        }
        Ok(problems)
    }

    /// Starts writing an entry.
    pub fn begin(&self, key: &StepKey) -> Result<Pending, CacheError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            self.dir
                .join(".tmp")
                .join(format!("{}.{}.{n}@{}", key.0, std::process::id(), host()));
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
                    error: e,
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
        let trash = self.dir.join(".tmp").join(format!(
            "{}.trash.{}@{}",
            key.0,
            std::process::id(),
            host()
        ));
        match fs::rename(&dir, &trash) {
            Ok(()) => fs::remove_dir_all(&trash).map_err(io_err(&trash)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::Io {
                path: dir,
                error: e,
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

    /// Takes the exclusive lock for computing `key` (`who`: the step's label, recorded in the
    /// lock file so that a waiting process can say who holds it). While another process holds
    /// it, `wait` describes whom this one waits for (see [`LockWait`]).
    pub fn lock_key(
        &self,
        key: &StepKey,
        who: &str,
        wait: &LockWait<'_>,
    ) -> Result<Lock, CacheError> {
        let path = self.dir.join(".locks").join(format!("{}.lock", key.0));
        let file = open_lock_file(&path)?;
        let what = || format!("the lock of step {who}");
        let holder = || {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let text = text.trim();
            if text.is_empty() {
                "another process".to_string()
            } else {
                text.to_string()
            }
        };
        acquire(&file, &path, true, wait, &what, &holder)?;
        // Say who holds it (best effort: a waiter without it says "another process").
        if file.set_len(0).is_ok() {
            let _ = io::Write::write_all(
                &mut &file,
                format!("pid {} ({who})", std::process::id()).as_bytes(),
            );
        }
        Ok(Lock {
            _file: Some(file),
            note: None,
        })
    }

    /// The lock held by every run (shared) and by `gc` (exclusive); `who` (e.g. "tracelab run
    /// smoke") is registered in `.locks/holders/<pid>` for as long as it is held, so that a
    /// process that has to wait can say whom for. A cache this process cannot write (a
    /// read-only mount, another user's) is read without the lock: nothing can be computed or
    /// removed there anyway, and what can be read is still served.
    pub fn lock_cache(
        &self,
        exclusive: bool,
        who: &str,
        wait: &LockWait<'_>,
    ) -> Result<Lock, CacheError> {
        let path = self.dir.join(".lock");
        let file = match open_lock_file(&path) {
            Ok(f) => f,
            Err(CacheError::Io { ref error, .. }) if !exclusive && read_only(error) => {
                tracing::info!(cache = %self.dir.display(), "read-only cache: no lock taken");
                return Ok(Lock {
                    _file: None,
                    note: None,
                });
            }
            Err(e) => return Err(e),
        };
        let holders = self.dir.join(".locks").join("holders");
        let what = || "the cache".to_string();
        let holder = || live_holders(&holders);
        acquire(&file, &path, exclusive, wait, &what, &holder)?;
        let note = holders.join(std::process::id().to_string());
        let note =
            (fs::create_dir_all(&holders).is_ok() && fs::write(&note, who).is_ok()).then_some(note);
        Ok(Lock {
            _file: Some(file),
            note,
        })
    }

    /// Removes temporary directories left by runs that died (kill -9, power loss).
    pub fn clean_stale_tmp(&self) {
        let tmp = self.dir.join(".tmp");
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        for e in entries.flatten() {
            let full = e.file_name().to_string_lossy().into_owned();
            // A directory made on another host (a cluster job's, in a shared cache) belongs to a
            // process this one cannot see: left for a run on that host to judge.
            let (name, made_on) = full.split_once('@').unwrap_or((full.as_str(), host()));
            if made_on != host() {
                continue;
            }
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

/// This machine's name, which tells whose processes a temporary directory's process id refers to
/// when several hosts share one cache (a cluster's compute nodes).
fn host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['@', '/', '.'], "_"))
            .unwrap_or_default()
    })
}

fn unreachable_io(path: &Path) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        error: io::Error::other("entry vanished after publication"),
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
                    stat: None,
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
        assert!(cache.verify(&key).unwrap().is_empty());
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

    /// Publishes one entry with `x.txt` = `text`.
    fn published(cache: &Cache, text: &str) -> StepKey {
        let p = parts(serde_json::json!({"text": text}));
        let pending = cache.begin(&p.key()).unwrap();
        fs::write(pending.out_dir.join("x.txt"), text).unwrap();
        cache.publish(pending, manifest(p)).unwrap().key
    }

    fn edit_keeping_size(cache: &Cache, key: &StepKey) {
        let path = cache.out_dir(key).join("x.txt");
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 0x20; // "respond_to_user" → "Respond_to_user": same size
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        io::Write::write_all(&mut f, &bytes).unwrap();
    }

    #[test]
    fn a_same_size_edit_right_after_the_commit_is_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let key = published(&cache, "respond_to_user");
        edit_keeping_size(&cache, &key);
        assert!(
            cache.lookup(&key).is_none(),
            "the edited content is not trusted"
        );
        assert_eq!(
            cache.verify(&key).unwrap(),
            vec!["x.txt: content differs from the manifest".to_string()]
        );
    }

    #[test]
    fn a_recorded_stat_spares_the_read_and_any_change_re_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let key = published(&cache, "respond_to_user");
        // Past the racy window, a lookup records the file's stat in the manifest.
        std::thread::sleep(std::time::Duration::from_nanos(2 * RACY_NS as u64));
        assert!(cache.lookup(&key).is_some());
        let recorded = cache.read_manifest(&key).unwrap().outputs[0].stat.clone();
        assert!(
            recorded.is_some(),
            "the stat is recorded once the file is settled"
        );
        // Rewriting the same bytes changes the stat, not the content: still a hit.
        let path = cache.out_dir(&key).join("x.txt");
        fs::write(&path, "respond_to_user").unwrap();
        assert!(cache.lookup(&key).is_some(), "same content after a re-hash");
        // A same-size edit of a file whose stat was recorded is a miss.
        std::thread::sleep(std::time::Duration::from_nanos(2 * RACY_NS as u64));
        assert!(cache.lookup(&key).is_some());
        edit_keeping_size(&cache, &key);
        assert!(cache.lookup(&key).is_none(), "the edit is noticed");
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
        assert!(cache.verify(&key).unwrap().is_empty());
        assert!(!cache.entry_dir(&key).join("manifest.json.tmp").exists());
    }
}
