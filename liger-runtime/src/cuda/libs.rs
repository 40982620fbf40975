//! Finding the CUDA libraries at run time.
//!
//! cudarc opens libraries by bare name (`libnvrtc.so.13`, `libcuda.so.1`, …), which needs
//! `LD_LIBRARY_PATH` or the loader cache. So that users need neither, the runtime searches the
//! usual places itself and preloads what it finds with `RTLD_GLOBAL`; the loader then satisfies
//! cudarc's (and libnvrtc's own) later opens by SONAME. Searched, in order:
//! `$LIGER_CUDA_LIB_DIR` (colon-separated), `$LD_LIBRARY_PATH`, `$CUDA_HOME`/`$CUDA_PATH`
//! (`lib64`, `lib`, `targets/x86_64-linux/lib`), `/usr/local/cuda`, the system library
//! directories, pip's `nvidia/cu13/lib` in the active virtualenv, the user and system
//! site-packages, and a `.cuda-wheels/nvidia/cu13/lib` in the working directory or above.
//! `lib64/stubs` is never used (its libcuda is a link-time stub).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Error;

fn push_split(out: &mut Vec<PathBuf>, var: &str) {
    if let Ok(v) = std::env::var(var) {
        out.extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
}

fn glob_python(base: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    let mut pys: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .collect();
    pys.sort();
    for p in pys {
        for sub in ["site-packages", "dist-packages"] {
            out.push(p.join(sub).join("nvidia/cu13/lib"));
        }
    }
}

/// Every directory searched for CUDA libraries, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    push_split(&mut out, "LIGER_CUDA_LIB_DIR");
    push_split(&mut out, "LD_LIBRARY_PATH");
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(h) = std::env::var(var) {
            let h = PathBuf::from(h);
            out.extend([
                h.join("lib64"),
                h.join("lib"),
                h.join("targets/x86_64-linux/lib"),
            ]);
        }
    }
    let cuda = PathBuf::from("/usr/local/cuda");
    out.extend([cuda.join("lib64"), cuda.join("targets/x86_64-linux/lib")]);
    out.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/nvidia/lib64",
        ]
        .map(PathBuf::from),
    );
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        glob_python(&PathBuf::from(v).join("lib"), &mut out);
    }
    if let Ok(h) = std::env::var("HOME") {
        glob_python(&PathBuf::from(h).join(".local/lib"), &mut out);
    }
    glob_python(Path::new("/usr/local/lib"), &mut out);
    glob_python(Path::new("/usr/lib"), &mut out);
    if let Ok(mut d) = std::env::current_dir() {
        loop {
            out.push(d.join(".cuda-wheels/nvidia/cu13/lib"));
            if !d.pop() {
                break;
            }
        }
    }
    out.retain(|d| !d.ends_with("stubs"));
    out
}

/// The first of `names` found in the search directories.
pub fn find(names: &[&str]) -> Option<PathBuf> {
    for d in search_dirs() {
        for n in names {
            let p = d.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn preload(path: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's CUDA
    // libraries found in CUDA install locations, loaded once per process and never unloaded
    // (the handle is leaked below), as cudarc itself does when it opens them by name.
    let lib =
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| e.to_string())?;
    std::mem::forget(lib);
    Ok(())
}

/// Preloads a library by path (see the module docs).
pub fn preload_path(path: &Path) -> Result<(), String> {
    preload(path)
}

/// NVRTC as found: library path and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nvrtc {
    /// Where libnvrtc was loaded from (`None`: the loader found it by name).
    pub path: Option<PathBuf>,
    /// `(major, minor)`.
    pub version: (i32, i32),
}

static NVRTC: OnceLock<Result<Nvrtc, String>> = OnceLock::new();

/// Makes NVRTC loadable (searching and preloading it when needed) and returns its version.
pub fn nvrtc() -> Result<Nvrtc, Error> {
    NVRTC
        .get_or_init(|| {
            // SAFETY: `is_culib_present` only tries to open the library by name.
            let mut path = None;
            if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                let lib = find(&["libnvrtc.so.13", "libnvrtc.so"]).ok_or_else(|| {
                    "libnvrtc.so.13 was not found (install NVRTC 13.0, e.g. `pip install nvidia-cuda-nvrtc==13.0.88`, or set LIGER_CUDA_LIB_DIR)".to_string()
                })?;
                if let Some(dir) = lib.parent() {
                    for b in ["libnvrtc-builtins.so.13.0", "libnvrtc-builtins.so"] {
                        let p = dir.join(b);
                        if p.is_file() {
                            preload(&p)?;
                            break;
                        }
                    }
                }
                preload(&lib)?;
                // SAFETY: as above.
                if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                    return Err(format!("{} was loaded but NVRTC is still not usable", lib.display()));
                }
                path = Some(lib);
            }
            let (mut major, mut minor) = (0, 0);
            // SAFETY: NVRTC is loaded (checked above); the out-pointers are valid locals.
            let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
            if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(format!("nvrtcVersion failed: {rc:?}"));
            }
            Ok(Nvrtc { path, version: (major, minor) })
        })
        .clone()
        .map_err(|why| Error::Cuda { lib: "nvrtc", why })
}
