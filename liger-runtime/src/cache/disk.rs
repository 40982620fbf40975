//! The disk tier: one directory per entry under `<root>/v2/<key>/`, written atomically, and
//! trusted only after it proves it is the entry asked for.
//!
//! Invariants:
//! - The root and the store are real directories (never symlinks) owned by the user and not
//!   writable by group or others, or the disk tier is not used at all (unless the user opts in
//!   with `LIGER_CACHE_TRUST=1`); everything the cache creates is owner-only (0700 / 0600).
//! - An entry is served only when its directory is a real directory named by the key; its
//!   `key.json` holds the full key (every component, compared one by one, and the hash); its
//!   `meta.json` names the binary by one of two fixed file names (no path leaves the entry);
//!   every file read is a regular file (no symlink); and the **seal** — a keyed hash (blake3,
//!   keyed by the cache's own 32-byte secret, `.secret`, 0600) over `key.json`, the arch, the
//!   binary's name and its bytes — matches. An entry failing any check is moved aside and
//!   recompiled, with a warning saying which check failed.
//! - `clear` and `prune` never follow a symlink out of the store; they collect broken entries,
//!   orphans (no valid `key.json`), temporaries and trash. `entries` lists broken entries as
//!   broken.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Artifacts, Binary, KeyParts};
use crate::Error;

/// The store's directory name (bumped with the entry layout).
const STORE: &str = "v2";

/// The two file names a binary may have.
const BINARY_NAMES: [&str; 2] = ["kernel.cubin", "kernel.ptx"];

/// Temporaries and trash older than this are collected by `prune` (a writer in another
/// process is done with its temporary long before).
const STALE_SECS: u64 = 3600;

/// An entry as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryInfo {
    /// The key (the directory's name).
    pub key: String,
    /// The key's components (empty for a broken entry without a readable `key.json`).
    pub components: Vec<(String, String)>,
    /// The target arch.
    pub arch: String,
    /// Bytes on disk.
    pub bytes: u64,
    /// Disk hits so far.
    pub hits: u64,
    /// Compile time.
    pub compile_ms: f64,
    /// Seconds since the epoch of the last use.
    pub last_used: u64,
    /// Why the entry would not be served, when it would not.
    pub broken: Option<String>,
}

/// An entry with its directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// What `entries` shows.
    pub info: EntryInfo,
    /// Its directory.
    pub dir: PathBuf,
}

impl Entry {
    /// The text of one of the entry's files (`surface.lir`, `grad.lir`, `schedule.txt`,
    /// `kernel.cu`, `kernel.ptx`, `meta.json`, `key.json`); a symlink or a missing file gives
    /// `None`.
    pub fn file(&self, name: &str) -> Option<String> {
        read_regular(&self.dir.join(name))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

/// Totals of the store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Entries (broken ones included).
    pub entries: usize,
    /// Broken entries.
    pub broken: usize,
    /// Bytes.
    pub bytes: u64,
    /// Disk hits over all entries.
    pub hits: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn store_dir(root: &Path) -> PathBuf {
    root.join(STORE)
}

fn unique(tag: &str, key: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(".{tag}-{key}-{}-{nanos}", std::process::id())
}

fn io_err(p: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", p.display())
}

/// The effective user id of this process (from `/proc/self/status`).
fn euid() -> Option<u32> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Creates `dir` (and missing parents) owner-only.
fn create_dir_private(dir: &Path) -> Result<(), String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, e))
}

/// Reads a file that must be a regular file (a symlink is refused, not followed).
fn read_regular(p: &Path) -> Result<Vec<u8>, String> {
    let md = fs::symlink_metadata(p).map_err(|e| io_err(p, e))?;
    if !md.file_type().is_file() {
        return Err(format!("{} is not a regular file", p.display()));
    }
    fs::read(p).map_err(|e| io_err(p, e))
}

fn read_json(p: &Path) -> Result<Value, String> {
    let b = read_regular(p)?;
    serde_json::from_slice(&b).map_err(|e| io_err(p, e))
}

/// Writes `bytes` to a new owner-only file.
fn write_private(p: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| io_err(p, e))?;
    f.write_all(bytes).map_err(|e| io_err(p, e))
}

/// Whether the user opted in to a cache directory that is shared or not their own
/// (`LIGER_CACHE_TRUST=1`): owners and modes are then not checked (symlinked entries and stores
/// are still refused).
fn trust_all() -> bool {
    std::env::var("LIGER_CACHE_TRUST").is_ok_and(|v| v == "1")
}

/// Why a directory may not be trusted: not a real directory, another owner, or writable by
/// group or others.
fn untrusted(dir: &Path) -> Option<String> {
    let md = match fs::symlink_metadata(dir) {
        Ok(md) => md,
        Err(_) => return None,
    };
    if md.file_type().is_symlink() {
        return Some(format!("{} is a symbolic link", dir.display()));
    }
    if !md.is_dir() {
        return Some(format!("{} is not a directory", dir.display()));
    }
    if trust_all() {
        return None;
    }
    if let Some(me) = euid()
        && md.uid() != me
    {
        return Some(format!(
            "{} belongs to user {} (you are {me})",
            dir.display(),
            md.uid()
        ));
    }
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "{} is writable by {} (mode {mode:o}); `chmod 700 {}` makes it private",
            dir.display(),
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            dir.display()
        ));
    }
    None
}

/// Prepares the root for use: creates it (owner-only) when missing and returns its canonical
/// path (a symlinked root is followed once, here); says why it must not be used when it belongs
/// to another user or is writable by group or others (unless `LIGER_CACHE_TRUST=1`), or when
/// its store is a symlink.
pub fn prepare_root(root: &Path) -> Result<PathBuf, String> {
    if fs::symlink_metadata(root).is_err() {
        create_dir_private(root)?;
    }
    let root = fs::canonicalize(root).map_err(|e| io_err(root, e))?;
    if let Some(why) = untrusted(&root) {
        return Err(why);
    }
    let store = store_dir(&root);
    if fs::symlink_metadata(&store).is_err() {
        create_dir_private(&store)?;
    }
    if let Some(why) = untrusted(&store) {
        return Err(why);
    }
    Ok(root)
}

/// The cache's secret, created (0600) the first time.
fn secret(root: &Path) -> Result<[u8; 32], String> {
    let p = root.join(".secret");
    match read_regular(&p) {
        Ok(b) if b.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b);
            return Ok(k);
        }
        Ok(_) => return Err(format!("{} is not a 32-byte secret", p.display())),
        Err(_) if fs::symlink_metadata(&p).is_ok() => {
            return Err(format!("{} is not a regular file", p.display()));
        }
        Err(_) => {}
    }
    let mut k = [0u8; 32];
    let mut f = fs::File::open("/dev/urandom").map_err(|e| io_err(Path::new("/dev/urandom"), e))?;
    std::io::Read::read_exact(&mut f, &mut k).map_err(|e| io_err(Path::new("/dev/urandom"), e))?;
    // Written to a temporary and renamed, so two processes agree on the winner's secret.
    let tmp = root.join(unique("tmp", "secret"));
    write_private(&tmp, &k)?;
    if fs::hard_link(&tmp, &p).is_err() {
        // Another process made it first: use theirs.
        let _ = fs::remove_file(&tmp);
        let b = read_regular(&p)?;
        if b.len() != 32 {
            return Err(format!("{} is not a 32-byte secret", p.display()));
        }
        k.copy_from_slice(&b);
        return Ok(k);
    }
    let _ = fs::remove_file(&tmp);
    Ok(k)
}

/// The seal of an entry: a hash keyed by the cache's secret over `key.json`, the arch, the
/// binary's file name and its bytes.
fn seal(secret: &[u8; 32], key_json: &[u8], arch: &str, name: &str, bytes: &[u8]) -> String {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"liger-cache-seal-v1\n");
    h.update(&(key_json.len() as u64).to_le_bytes());
    h.update(key_json);
    h.update(&(arch.len() as u64).to_le_bytes());
    h.update(arch.as_bytes());
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(bytes);
    h.finalize().to_hex().to_string()
}

/// The `key.json` text of a key.
fn key_json(parts: &KeyParts) -> Vec<u8> {
    let components: Vec<Value> = parts
        .components
        .iter()
        .map(|(n, v)| json!([n, v]))
        .collect();
    serde_json::to_string_pretty(&json!({ "key": parts.key(), "components": components }))
        .unwrap_or_default()
        .into_bytes()
}

/// The components stored in a `key.json`.
fn components_of(k: &Value) -> Option<Vec<(String, String)>> {
    k["components"]
        .as_array()?
        .iter()
        .map(|c| Some((c[0].as_str()?.to_string(), c[1].as_str()?.to_string())))
        .collect()
}

/// Checks the entry in `dir` as the entry of `parts` (when given) and returns its binary;
/// `Err` says which check failed.
fn verified(root: &Path, dir: &Path, parts: Option<&KeyParts>) -> Result<Binary, String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the entry has no name")?
        .to_string();
    if let Some(why) = untrusted(dir) {
        return Err(why);
    }
    let kj = read_regular(&dir.join("key.json"))?;
    let k: Value =
        serde_json::from_slice(&kj).map_err(|e| format!("key.json does not parse: {e}"))?;
    let stored = components_of(&k).ok_or("key.json lists no components")?;
    let stored_key = k["key"].as_str().ok_or("key.json names no key")?;
    let recomputed = KeyParts {
        components: stored.clone(),
    }
    .key();
    if stored_key != recomputed || stored_key != name {
        return Err(format!(
            "the entry's directory ({name}), its key.json key ({stored_key}) and its components' \
             hash ({recomputed}) disagree: a renamed or swapped entry"
        ));
    }
    if let Some(parts) = parts
        && stored != parts.components
    {
        let diff: Vec<String> = parts
            .components
            .iter()
            .filter(|c| !stored.contains(c))
            .map(|(n, v)| format!("{n} = {v}"))
            .collect();
        return Err(format!(
            "the entry holds another key (it differs in {})",
            diff.join(", ")
        ));
    }
    let meta = read_json(&dir.join("meta.json"))?;
    let file = meta["binary"].as_str().ok_or("meta.json names no binary")?;
    if !BINARY_NAMES.contains(&file) {
        return Err(format!(
            "meta.json names `{file}` as the binary, which is not {} or {}",
            BINARY_NAMES[0], BINARY_NAMES[1]
        ));
    }
    let bytes = read_regular(&dir.join(file))?;
    let arch = meta["arch"].as_str().unwrap_or("").to_string();
    let want = meta["seal"].as_str().ok_or("meta.json has no seal")?;
    if seal(&secret(root)?, &kj, &arch, file, &bytes) != want {
        return Err(format!(
            "{file} or its metadata does not match the entry's seal (changed after it was written)"
        ));
    }
    let registers = meta["registers"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) as u32))
                .collect()
        })
        .unwrap_or_default();
    Ok(Binary {
        arch,
        is_ptx: file.ends_with(".ptx"),
        bytes,
        registers,
        log: meta["nvrtc_log"].as_str().unwrap_or("").to_string(),
        compile_ms: meta["compile_ms"].as_f64().unwrap_or(0.0),
    })
}

/// Loads the binary of `parts`: `Ok(None)` when there is no entry, `Err` (why) when the entry
/// is unusable — which it then no longer is: it has been moved aside.
pub fn load(root: &Path, parts: &KeyParts) -> Result<Option<Binary>, String> {
    let key = parts.key();
    let dir = store_dir(root).join(&key);
    if fs::symlink_metadata(&dir).is_err() {
        return Ok(None);
    }
    match verified(root, &dir, Some(parts)) {
        Ok(b) => Ok(Some(b)),
        Err(why) => {
            quarantine(root, &dir, &key);
            Err(why)
        }
    }
}

/// Moves an entry out of the way (renamed to trash, then removed; a symlink is removed, never
/// followed).
fn quarantine(root: &Path, dir: &Path, key: &str) {
    let trash = store_dir(root).join(unique("trash", key));
    match fs::symlink_metadata(dir) {
        Ok(md) if md.file_type().is_symlink() || !md.is_dir() => {
            let _ = fs::remove_file(dir);
        }
        Ok(_) => {
            if fs::rename(dir, &trash).is_ok() {
                let _ = fs::remove_dir_all(&trash);
            }
        }
        Err(_) => {}
    }
}

/// Writes an entry atomically; with `replace`, an existing entry is replaced.
pub fn store(
    root: &Path,
    parts: &KeyParts,
    a: &Artifacts,
    b: &Binary,
    replace: bool,
) -> Result<PathBuf, String> {
    let key = parts.key();
    let base = store_dir(root);
    let tmp = base.join(unique("tmp", &key));
    DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    let result = (|| {
        let kj = key_json(parts);
        write_private(&tmp.join("key.json"), &kj)?;
        write_private(&tmp.join("surface.lir"), a.surface.as_bytes())?;
        write_private(&tmp.join("grad.lir"), a.grad.as_bytes())?;
        write_private(&tmp.join("schedule.txt"), a.schedule.as_bytes())?;
        write_private(&tmp.join("kernel.cu"), a.cuda.as_bytes())?;
        let name = if b.is_ptx {
            BINARY_NAMES[1]
        } else {
            BINARY_NAMES[0]
        };
        write_private(&tmp.join(name), &b.bytes)?;
        let regs: serde_json::Map<String, Value> = b
            .registers
            .iter()
            .map(|(k, r)| (k.clone(), json!(r)))
            .collect();
        let meta = json!({
            "key": key,
            "arch": b.arch,
            "binary": name,
            "size": b.bytes.len(),
            "seal": seal(&secret(root)?, &kj, &b.arch, name, &b.bytes),
            "compile_ms": b.compile_ms,
            "hits": 0,
            "created": now(),
            "last_used": now(),
            "registers": regs,
            "source_bytes": a.cuda.len(),
            "nvrtc_log": b.log,
        });
        write_private(
            &tmp.join("meta.json"),
            serde_json::to_string_pretty(&meta)
                .unwrap_or_default()
                .as_bytes(),
        )
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dst = base.join(&key);
    if replace && fs::symlink_metadata(&dst).is_ok() {
        quarantine(root, &dst, &key);
    }
    match fs::rename(&tmp, &dst) {
        Ok(()) => Ok(dst),
        Err(_) if fs::symlink_metadata(&dst).is_ok() => {
            // Another process filled the entry first: keep theirs.
            let _ = fs::remove_dir_all(&tmp);
            Ok(dst)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(io_err(&dst, e))
        }
    }
}

/// Counts a disk hit (best effort: meta.json replaced atomically; the seal does not cover the
/// counters).
pub fn count_hit(root: &Path, key: &str) {
    let dir = store_dir(root).join(key);
    let Ok(mut meta) = read_json(&dir.join("meta.json")) else {
        return;
    };
    let hits = meta["hits"].as_u64().unwrap_or(0) + 1;
    meta["hits"] = json!(hits);
    meta["last_used"] = json!(now());
    let tmp = dir.join(unique("meta", key));
    let text = serde_json::to_string_pretty(&meta).unwrap_or_default();
    if write_private(&tmp, text.as_bytes()).is_ok()
        && fs::rename(&tmp, dir.join("meta.json")).is_err()
    {
        let _ = fs::remove_file(&tmp);
    }
}

fn dir_bytes(d: &Path) -> u64 {
    fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// What `entries` shows of the entry in `dir` (valid or broken).
fn info(root: &Path, dir: &Path) -> Option<EntryInfo> {
    let key = dir.file_name()?.to_str()?.to_string();
    let broken = verified(root, dir, None).err();
    let k = read_json(&dir.join("key.json")).ok();
    let meta = read_json(&dir.join("meta.json")).unwrap_or(Value::Null);
    Some(EntryInfo {
        key,
        components: k.as_ref().and_then(components_of).unwrap_or_default(),
        arch: meta["arch"].as_str().unwrap_or("?").to_string(),
        bytes: dir_bytes(dir),
        hits: meta["hits"].as_u64().unwrap_or(0),
        compile_ms: meta["compile_ms"].as_f64().unwrap_or(0.0),
        last_used: meta["last_used"].as_u64().unwrap_or(0),
        broken,
    })
}

/// The store's children that are not temporaries: `(path, is a real directory)`.
fn children(root: &Path) -> Vec<(PathBuf, bool)> {
    let store = store_dir(root);
    if untrusted(&store).is_some() {
        return Vec::new();
    }
    let Ok(rd) = fs::read_dir(&store) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let p = e.path();
            let dir = fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            (p, dir)
        })
        .collect()
}

/// Every entry, sorted by key; broken ones (symlinks, orphans, failed checks) included and
/// marked.
pub fn entries(root: &Path) -> Vec<EntryInfo> {
    let mut out: Vec<EntryInfo> = children(root)
        .into_iter()
        .filter_map(|(p, dir)| {
            if dir {
                info(root, &p)
            } else {
                Some(EntryInfo {
                    key: p.file_name()?.to_string_lossy().into_owned(),
                    components: Vec::new(),
                    arch: "?".into(),
                    bytes: 0,
                    hits: 0,
                    compile_ms: 0.0,
                    last_used: 0,
                    broken: Some("not a directory (a symlink or a stray file)".into()),
                })
            }
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The entry whose key starts with `prefix` (when exactly one does).
pub fn get(root: &Path, prefix: &str) -> Option<Entry> {
    let mut found = entries(root)
        .into_iter()
        .filter(|e| e.key.starts_with(prefix));
    let first = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Some(Entry {
        dir: store_dir(root).join(&first.key),
        info: first,
    })
}

/// The nearest valid entry to `parts` and the components that differ.
pub fn explain_miss(root: &Path, parts: &KeyParts) -> String {
    let all: Vec<EntryInfo> = entries(root)
        .into_iter()
        .filter(|e| e.broken.is_none())
        .collect();
    if all.is_empty() {
        return "the cache has no entries".into();
    }
    let score = |e: &EntryInfo| {
        parts
            .components
            .iter()
            .filter(|c| e.components.contains(c))
            .count()
    };
    let Some(best) = all.iter().max_by_key(|e| score(e)) else {
        return "no entry".into();
    };
    let diffs: Vec<String> = parts
        .components
        .iter()
        .filter(|c| !best.components.contains(c))
        .map(|(n, v)| {
            let old = best
                .components
                .iter()
                .find(|(m, _)| m == n)
                .map_or("(absent)", |(_, w)| w.as_str());
            format!("{n}: {old} -> {v}")
        })
        .collect();
    format!(
        "nearest entry {} differs in {}",
        &best.key[..12.min(best.key.len())],
        diffs.join("; ")
    )
}

/// Totals.
pub fn stats(root: &Path) -> Stats {
    let all = entries(root);
    Stats {
        entries: all.len(),
        broken: all.iter().filter(|e| e.broken.is_some()).count(),
        bytes: all.iter().map(|e| e.bytes).sum(),
        hits: all.iter().map(|e| e.hits).sum(),
    }
}

/// Removes one child of the store without following a symlink.
fn remove_child(p: &Path) -> Result<(), Error> {
    let md = fs::symlink_metadata(p).map_err(|source| Error::Io {
        path: p.display().to_string(),
        source,
    })?;
    let r = if md.is_dir() {
        // remove_dir_all does not follow symlinks inside the tree.
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    r.map_err(|source| Error::Io {
        path: p.display().to_string(),
        source,
    })
}

/// Temporaries, trash and quarantined entries of the store older than `age` seconds.
fn leftovers(root: &Path, age: u64) -> Vec<PathBuf> {
    let store = store_dir(root);
    if untrusted(&store).is_some() {
        return Vec::new();
    }
    let Ok(rd) = fs::read_dir(&store) else {
        return Vec::new();
    };
    let cutoff = now().saturating_sub(age);
    rd.flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(".tmp-") || n.starts_with(".trash-") || n.starts_with(".meta-")
        })
        .filter(|e| {
            fs::symlink_metadata(e.path())
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .is_none_or(|d| d.as_secs() <= cutoff)
        })
        .map(|e| e.path())
        .collect()
}

/// Removes every entry, broken ones, orphans, temporaries and trash; returns how many
/// entries.
pub fn clear(root: &Path) -> Result<usize, Error> {
    if let Some(why) = untrusted(root).or_else(|| untrusted(&store_dir(root))) {
        return Err(Error::Io {
            path: root.display().to_string(),
            source: std::io::Error::other(format!("refusing to clear: {why}")),
        });
    }
    let all = children(root);
    for (p, _) in &all {
        remove_child(p)?;
    }
    for p in leftovers(root, 0) {
        remove_child(&p)?;
    }
    Ok(all.len())
}

/// Removes broken entries and stale temporaries, then least recently used entries until at
/// most `max_bytes` remain; returns how many entries were removed.
pub fn prune(root: &Path, max_bytes: u64) -> Result<usize, Error> {
    if let Some(why) = untrusted(root).or_else(|| untrusted(&store_dir(root))) {
        return Err(Error::Io {
            path: root.display().to_string(),
            source: std::io::Error::other(format!("refusing to prune: {why}")),
        });
    }
    for p in leftovers(root, STALE_SECS) {
        remove_child(&p)?;
    }
    let mut all = entries(root);
    let mut removed = 0;
    for e in all.iter().filter(|e| e.broken.is_some()) {
        remove_child(&store_dir(root).join(&e.key))?;
        removed += 1;
    }
    all.retain(|e| e.broken.is_none());
    all.sort_by_key(|e| e.last_used);
    let mut total: u64 = all.iter().map(|e| e.bytes).sum();
    for e in all {
        if total <= max_bytes {
            break;
        }
        remove_child(&store_dir(root).join(&e.key))?;
        total -= e.bytes;
        removed += 1;
    }
    Ok(removed)
}
