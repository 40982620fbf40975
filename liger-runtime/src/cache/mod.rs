//! The kernel cache: in-process map → disk store → NVRTC.
//!
//! A key is a list of **named components** hashed in order (blake3, 32 hex digits), built in
//! one place ([`key::module_key`]): the cache schema; the compiler version and codegen
//! fingerprint; the canonical gradient IR's hash (names and source locations stripped, so
//! renaming or moving a loss keeps its key); the schedule; the codegen options; the target
//! arch; the NVRTC version. Debug and dump flags, sizes, hyperparameters and `ignore_index`
//! never enter it.
//!
//! A disk entry is a directory named by the key holding `key.json` (the components),
//! `surface.lir`, `grad.lir`, `schedule.txt`, `kernel.cu`, `kernel.cubin` or `kernel.ptx`, and
//! `meta.json` (compile time, hits, sizes, registers per kernel, the NVRTC log, the seal).
//! Entries are written to a temporary directory and renamed into place, so a reader sees a
//! whole entry or none, and two processes filling the same entry both succeed. An entry is
//! served only after it proves it is the entry asked for ([`disk`]'s checks: the full key, a
//! binary name inside the entry, regular files, the keyed seal); one that fails is moved aside
//! with a warning and recompiled, never a crash or a wrong kernel. The cache directory must be
//! the user's own and not writable by others (`LIGER_CACHE_TRUST=1` opts in to a shared one);
//! otherwise the disk tier is off, with a warning that says why.
//!
//! Root: `$LIGER_CACHE_DIR`, else `$XDG_CACHE_HOME/liger`, else `~/.cache/liger`.
//! `LIGER_CACHE=off|ro|rw|refresh` (default `rw`). `LIGER_LOG=1` prints a line for every hit,
//! miss (with the component that differs from the nearest entry), write and compile;
//! `LIGER_LOG=code` also prints the generated source.

pub mod disk;
pub mod key;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use disk::{Entry, EntryInfo, Stats};

use crate::Error;

/// The schema of keys and entries; bump on any layout change.
pub const SCHEMA: &str = "liger-cache-v2";

/// How the disk tier is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No disk tier.
    Off,
    /// Read entries, never write.
    ReadOnly,
    /// Read and write (the default).
    ReadWrite,
    /// Ignore existing entries, compile and overwrite.
    Refresh,
}

impl Mode {
    /// From `LIGER_CACHE` (unknown values are `rw`, with a warning).
    pub fn from_env() -> Mode {
        match std::env::var("LIGER_CACHE").ok().as_deref() {
            None | Some("rw") | Some("") => Mode::ReadWrite,
            Some("off") => Mode::Off,
            Some("ro") => Mode::ReadOnly,
            Some("refresh") => Mode::Refresh,
            Some(other) => {
                eprintln!("liger: warning: LIGER_CACHE={other} is not off|ro|rw|refresh; using rw");
                Mode::ReadWrite
            }
        }
    }
}

/// Whether `LIGER_LOG` asks for cache lines, and for code dumps.
pub fn log_level() -> (bool, bool) {
    match std::env::var("LIGER_LOG").ok().as_deref() {
        None | Some("") | Some("0") | Some("off") => (false, false),
        Some("code") => (true, true),
        Some(_) => (true, false),
    }
}

pub(crate) fn log(msg: &str) {
    if log_level().0 {
        eprintln!("liger: {msg}");
    }
}

/// The named components of a key, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyParts {
    /// `(name, value)` pairs.
    pub components: Vec<(String, String)>,
}

impl KeyParts {
    /// An empty key with the schema component.
    pub fn new() -> Self {
        KeyParts {
            components: vec![("schema".into(), SCHEMA.into())],
        }
    }

    /// Adds a component (builder style).
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.components.push((name.into(), value.into()));
        self
    }

    /// The value of a component.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.components
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The key: blake3 of the components in order, 32 hex digits.
    pub fn key(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (n, v) in &self.components {
            h.update(n.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        h.finalize().to_hex()[..32].to_string()
    }
}

impl Default for KeyParts {
    fn default() -> Self {
        Self::new()
    }
}

/// The hash of a text (IR canonical form, codegen fingerprint), 32 hex digits.
pub fn hash_text(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
}

/// Everything an entry stores besides the binary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Artifacts {
    /// The surface IR text.
    pub surface: String,
    /// The simplified gradient IR text.
    pub grad: String,
    /// The schedule, rendered.
    pub schedule: String,
    /// The CUDA source.
    pub cuda: String,
}

/// A compiled module as the cache holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Binary {
    /// The target arch.
    pub arch: String,
    /// CUBIN bytes, or PTX text as bytes.
    pub bytes: Vec<u8>,
    /// Whether `bytes` is PTX.
    pub is_ptx: bool,
    /// Registers per kernel.
    pub registers: Vec<(String, u32)>,
    /// NVRTC's log.
    pub log: String,
    /// Compile time in milliseconds.
    pub compile_ms: f64,
}

/// Where a lookup was served from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// The in-process map.
    Memory,
    /// A disk entry.
    Disk,
    /// NVRTC; with the reason the disk tier did not serve it.
    Compiled {
        /// Why: no entry (with the nearest entry's differing components), a corrupt entry, …
        why: String,
    },
}

/// The kernel cache.
pub struct Cache {
    root: Option<PathBuf>,
    mode: Mode,
    memory: Mutex<HashMap<String, Arc<Binary>>>,
    /// Warnings (corrupt entries recompiled), for callers and tests.
    pub warnings: Mutex<Vec<String>>,
}

impl Cache {
    /// The cache at the default root with the mode from the environment.
    pub fn from_env() -> Cache {
        Cache::open(default_root(), Mode::from_env())
    }

    /// A cache at `root` (`None`: memory only). The directory is created owner-only when
    /// missing; one that is not the user's own or is writable by others is not used (a warning
    /// says why and how to fix it), unless `LIGER_CACHE_TRUST=1`.
    pub fn open(root: Option<PathBuf>, mode: Mode) -> Cache {
        let mut c = Cache {
            root: None,
            mode,
            memory: Mutex::new(HashMap::new()),
            warnings: Mutex::new(Vec::new()),
        };
        if let (Some(r), true) = (root, mode != Mode::Off) {
            match disk::prepare_root(&r) {
                Ok(canonical) => c.root = Some(canonical),
                Err(why) => c.warn(format!(
                    "the kernel cache at {} is not used: {why} (set LIGER_CACHE_TRUST=1 to use a shared cache anyway)",
                    r.display()
                )),
            }
        }
        c
    }

    /// The disk root, if any.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn warn(&self, msg: String) {
        eprintln!("liger: warning: {msg}");
        if let Ok(mut w) = self.warnings.lock() {
            w.push(msg);
        }
    }

    /// The binary for `parts`, from memory, disk or `compile` (whose result is stored).
    pub fn get_or_compile(
        &self,
        parts: &KeyParts,
        artifacts: &Artifacts,
        compile: impl FnOnce() -> Result<Binary, Error>,
    ) -> Result<(Arc<Binary>, Origin), Error> {
        let key = parts.key();
        if let Some(b) = self.memory.lock().ok().and_then(|m| m.get(&key).cloned()) {
            log(&format!("cache hit (memory) {key}"));
            return Ok((b, Origin::Memory));
        }
        let mut why = String::from("the disk tier is off");
        let mut replace = self.mode == Mode::Refresh;
        if let Some(root) = &self.root {
            if self.mode == Mode::Refresh {
                why = "LIGER_CACHE=refresh".into();
            } else {
                match disk::load(root, parts) {
                    Ok(Some(b)) => {
                        log(&format!("cache hit (disk) {key} in {}", root.display()));
                        if self.mode == Mode::ReadWrite {
                            disk::count_hit(root, &key);
                        }
                        let b = Arc::new(b);
                        if let Ok(mut m) = self.memory.lock() {
                            m.insert(key.clone(), b.clone());
                        }
                        return Ok((b, Origin::Disk));
                    }
                    Ok(None) => {
                        why = disk::explain_miss(root, parts);
                        log(&format!("cache miss {key}: {why}"));
                    }
                    Err(e) => {
                        replace = true;
                        why = format!("entry {key} is unusable ({e}); recompiling");
                        self.warn(format!(
                            "cache entry {key} in {} was not served and was moved aside: {e}; recompiling",
                            root.display()
                        ));
                    }
                }
            }
        }
        if log_level().1 {
            eprintln!("liger: generated code for {key}:\n{}", artifacts.cuda);
        }
        let b = compile()?;
        log(&format!(
            "nvrtc compile {} for {key}: {:.0} ms",
            b.arch, b.compile_ms
        ));
        if let (Some(root), Mode::ReadWrite | Mode::Refresh) = (&self.root, self.mode) {
            match disk::store(root, parts, artifacts, &b, replace) {
                Ok(dir) => log(&format!("cache write {}", dir.display())),
                Err(e) => self.warn(format!("could not write cache entry {key}: {e}")),
            }
        }
        let b = Arc::new(b);
        if let Ok(mut m) = self.memory.lock() {
            m.insert(key, b.clone());
        }
        Ok((b, Origin::Compiled { why }))
    }

    /// Every disk entry.
    pub fn entries(&self) -> Vec<EntryInfo> {
        self.root.as_deref().map(disk::entries).unwrap_or_default()
    }

    /// The disk entry of `key` (a unique prefix is enough).
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.root.as_deref().and_then(|r| disk::get(r, key))
    }

    /// Why `parts` would miss: the nearest entry and the components that differ.
    pub fn explain_miss(&self, parts: &KeyParts) -> String {
        match &self.root {
            Some(r) => disk::explain_miss(r, parts),
            None => "the disk tier is off".into(),
        }
    }

    /// Entry count, bytes and hits.
    pub fn stats(&self) -> Stats {
        self.root.as_deref().map(disk::stats).unwrap_or_default()
    }

    /// Removes every entry; returns how many.
    pub fn clear(&self) -> Result<usize, Error> {
        match &self.root {
            Some(r) => disk::clear(r),
            None => Ok(0),
        }
    }

    /// Removes least recently used entries until the store holds at most `max_bytes`.
    pub fn prune(&self, max_bytes: u64) -> Result<usize, Error> {
        match &self.root {
            Some(r) => disk::prune(r, max_bytes),
            None => Ok(0),
        }
    }
}

/// `$LIGER_CACHE_DIR`, else `$XDG_CACHE_HOME/liger`, else `~/.cache/liger`.
pub fn default_root() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("LIGER_CACHE_DIR")
        && !d.is_empty()
    {
        return Some(PathBuf::from(d));
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME")
        && !d.is_empty()
    {
        return Some(PathBuf::from(d).join("liger"));
    }
    std::env::var("HOME")
        .ok()
        .map(|h| PathBuf::from(h).join(".cache/liger"))
}
