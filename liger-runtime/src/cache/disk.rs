//! The disk tier: one directory per entry under `<root>/v1/<key>/`, written atomically.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Artifacts, Binary, KeyParts};
use crate::Error;

/// An entry as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryInfo {
    /// The key.
    pub key: String,
    /// The key's components.
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
    /// `kernel.cu`, `kernel.ptx`, `meta.json`, `key.json`).
    pub fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(name)).ok()
    }
}

/// Totals of the store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Entries.
    pub entries: usize,
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
    root.join("v1")
}

fn unique(tag: &str, key: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(".{tag}-{key}-{}-{nanos}", std::process::id())
}

fn read_json(p: &Path) -> Result<Value, String> {
    let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&t).map_err(|e| format!("{}: {e}", p.display()))
}

/// Loads the binary of `key`: `Ok(None)` when there is no entry, `Err` when it is unusable.
pub fn load(root: &Path, key: &str) -> Result<Option<Binary>, String> {
    let dir = store_dir(root).join(key);
    if !dir.exists() {
        return Ok(None);
    }
    let meta = read_json(&dir.join("meta.json"))?;
    let file = meta["binary"].as_str().ok_or("meta.json names no binary")?;
    let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
    if meta["size"].as_u64() != Some(bytes.len() as u64) {
        return Err(format!(
            "{file} has {} bytes, meta.json says {}",
            bytes.len(),
            meta["size"]
        ));
    }
    if meta["blake3"].as_str() != Some(blake3::hash(&bytes).to_hex().as_str()) {
        return Err(format!("{file} does not match its checksum"));
    }
    let registers = meta["registers"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) as u32))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(Binary {
        arch: meta["arch"].as_str().unwrap_or("").to_string(),
        is_ptx: file.ends_with(".ptx"),
        bytes,
        registers,
        log: meta["nvrtc_log"].as_str().unwrap_or("").to_string(),
        compile_ms: meta["compile_ms"].as_f64().unwrap_or(0.0),
    }))
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(p, bytes).map_err(|e| format!("{}: {e}", p.display()))
}

/// Writes an entry atomically; with `replace`, an existing entry is replaced.
pub fn store(
    root: &Path,
    key: &str,
    parts: &KeyParts,
    a: &Artifacts,
    b: &Binary,
    replace: bool,
) -> Result<PathBuf, String> {
    let base = store_dir(root);
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let tmp = base.join(unique("tmp", key));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = (|| {
        let components: Vec<Value> = parts
            .components
            .iter()
            .map(|(n, v)| json!([n, v]))
            .collect();
        write_file(
            &tmp.join("key.json"),
            serde_json::to_string_pretty(&json!({ "key": key, "components": components }))
                .unwrap_or_default()
                .as_bytes(),
        )?;
        write_file(&tmp.join("surface.lir"), a.surface.as_bytes())?;
        write_file(&tmp.join("grad.lir"), a.grad.as_bytes())?;
        write_file(&tmp.join("schedule.txt"), a.schedule.as_bytes())?;
        write_file(&tmp.join("kernel.cu"), a.cuda.as_bytes())?;
        let name = if b.is_ptx {
            "kernel.ptx"
        } else {
            "kernel.cubin"
        };
        write_file(&tmp.join(name), &b.bytes)?;
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
            "blake3": blake3::hash(&b.bytes).to_hex().as_str(),
            "compile_ms": b.compile_ms,
            "hits": 0,
            "created": now(),
            "last_used": now(),
            "registers": regs,
            "source_bytes": a.cuda.len(),
            "nvrtc_log": b.log,
        });
        write_file(
            &tmp.join("meta.json"),
            serde_json::to_string_pretty(&meta)
                .unwrap_or_default()
                .as_bytes(),
        )
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dst = base.join(key);
    if dst.exists() && replace {
        let trash = base.join(unique("trash", key));
        let _ = std::fs::rename(&dst, &trash);
        let _ = std::fs::remove_dir_all(&trash);
    }
    match std::fs::rename(&tmp, &dst) {
        Ok(()) => Ok(dst),
        Err(_) if dst.exists() => {
            // Another process filled the entry first: keep theirs.
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dst)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(format!("{}: {e}", dst.display()))
        }
    }
}

/// Counts a disk hit (best effort, atomic replace of meta.json).
pub fn count_hit(root: &Path, key: &str) {
    let dir = store_dir(root).join(key);
    let Ok(mut meta) = read_json(&dir.join("meta.json")) else {
        return;
    };
    let hits = meta["hits"].as_u64().unwrap_or(0) + 1;
    meta["hits"] = json!(hits);
    meta["last_used"] = json!(now());
    let tmp = dir.join(unique("meta", key));
    if std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&meta).unwrap_or_default(),
    )
    .is_ok()
    {
        let _ = std::fs::rename(&tmp, dir.join("meta.json"));
    }
}

fn dir_bytes(d: &Path) -> u64 {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn info(dir: &Path) -> Option<EntryInfo> {
    let key = dir.file_name()?.to_str()?.to_string();
    let k = read_json(&dir.join("key.json")).ok()?;
    let components = k["components"]
        .as_array()?
        .iter()
        .filter_map(|c| Some((c[0].as_str()?.to_string(), c[1].as_str()?.to_string())))
        .collect();
    let meta = read_json(&dir.join("meta.json")).unwrap_or(Value::Null);
    Some(EntryInfo {
        key,
        components,
        arch: meta["arch"].as_str().unwrap_or("?").to_string(),
        bytes: dir_bytes(dir),
        hits: meta["hits"].as_u64().unwrap_or(0),
        compile_ms: meta["compile_ms"].as_f64().unwrap_or(0.0),
        last_used: meta["last_used"].as_u64().unwrap_or(0),
    })
}

/// Every entry, sorted by key.
pub fn entries(root: &Path) -> Vec<EntryInfo> {
    let Ok(rd) = std::fs::read_dir(store_dir(root)) else {
        return Vec::new();
    };
    let mut out: Vec<EntryInfo> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .filter_map(|p| info(&p))
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

/// The nearest entry to `parts` and the components that differ.
pub fn explain_miss(root: &Path, parts: &KeyParts) -> String {
    let all = entries(root);
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
        bytes: all.iter().map(|e| e.bytes).sum(),
        hits: all.iter().map(|e| e.hits).sum(),
    }
}

/// Removes every entry.
pub fn clear(root: &Path) -> Result<usize, Error> {
    let all = entries(root);
    for e in &all {
        let d = store_dir(root).join(&e.key);
        std::fs::remove_dir_all(&d).map_err(|source| Error::Io {
            path: d.display().to_string(),
            source,
        })?;
    }
    Ok(all.len())
}

/// Removes least recently used entries until at most `max_bytes` remain.
pub fn prune(root: &Path, max_bytes: u64) -> Result<usize, Error> {
    let mut all = entries(root);
    all.sort_by_key(|e| e.last_used);
    let mut total: u64 = all.iter().map(|e| e.bytes).sum();
    let mut removed = 0;
    for e in all {
        if total <= max_bytes {
            break;
        }
        let d = store_dir(root).join(&e.key);
        std::fs::remove_dir_all(&d).map_err(|source| Error::Io {
            path: d.display().to_string(),
            source,
        })?;
        total -= e.bytes;
        removed += 1;
    }
    Ok(removed)
}
