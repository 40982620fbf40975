//! `liger cache`: inspect and manage the kernel cache, and warm it.

use std::time::Instant;

use super::target::{dtype_of, pipelines_of, strategy_for};
use super::{CacheCommand, out};
use crate::Error;
use crate::ir::emit::EmitOptions;

pub(crate) fn cache(what: CacheCommand) -> Result<(), Error> {
    use crate::runtime::cache::Cache;
    let c = Cache::from_env();
    let root = || {
        c.root()
            .map(|r| r.display().to_string())
            .unwrap_or_else(|| "(off)".into())
    };
    match what {
        CacheCommand::Path => out(&format!("{}\n", root())),
        CacheCommand::Ls { json } => {
            let es = c.entries();
            if json {
                let v: Vec<serde_json::Value> = es
                    .iter()
                    .map(|e| {
                        let comps: serde_json::Map<String, serde_json::Value> =
                            e.components.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
                        serde_json::json!({"key": e.key, "arch": e.arch, "bytes": e.bytes, "hits": e.hits, "compile_ms": e.compile_ms, "components": comps, "broken": e.broken})
                    })
                    .collect();
                out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                ));
            } else {
                let mut s = format!(
                    "{:<14} {:<7} {:<14} {:<7} {:>6} {:>10}\n",
                    "key", "arch", "schedule", "dtype", "hits", "compile"
                );
                for e in &es {
                    let get = |n: &str| {
                        e.components
                            .iter()
                            .find(|(k, _)| k == n)
                            .map_or("?", |(_, v)| v.as_str())
                            .to_string()
                    };
                    if let Some(why) = &e.broken {
                        s += &format!(
                            "{:<14} BROKEN (not served; `liger cache prune` removes it): {why}\n",
                            &e.key[..12.min(e.key.len())]
                        );
                        continue;
                    }
                    s += &format!(
                        "{:<14} {:<7} {:<14} {:<7} {:>6} {:>8.0}ms\n",
                        &e.key[..12.min(e.key.len())],
                        e.arch,
                        get("schedule"),
                        get("dtype"),
                        e.hits,
                        e.compile_ms
                    );
                }
                s += &format!("{} entries in {}\n", es.len(), root());
                out(&s);
            }
        }
        CacheCommand::Show {
            key,
            ir,
            grad,
            schedule,
            cuda,
            ptx,
            meta,
        } => {
            let e = c.get(&key).ok_or_else(|| Error::File {
                path: root(),
                why: format!("no single entry with key prefix `{key}`"),
            })?;
            let pick = [
                (ir, "surface.lir"),
                (grad, "grad.lir"),
                (schedule, "schedule.txt"),
                (cuda, "kernel.cu"),
                (ptx, "kernel.ptx"),
                (meta, "meta.json"),
            ];
            let mut any = false;
            for (on, file) in pick {
                if on {
                    any = true;
                    out(&e
                        .file(file)
                        .unwrap_or_else(|| format!("(no {file} in this entry)\n")));
                }
            }
            if !any {
                let mut s = format!("entry {}\n  dir {}\n", e.info.key, e.dir.display());
                for (k, v) in &e.info.components {
                    s += &format!("  {k:<15} {v}\n");
                }
                s += &format!(
                    "  hits {}, {} bytes, compiled in {:.0} ms\n",
                    e.info.hits, e.info.bytes, e.info.compile_ms
                );
                out(&s);
            }
        }
        CacheCommand::Stats { json } => {
            let st = c.stats();
            if json {
                out(&format!(
                    "{}\n",
                    serde_json::json!({"root": root(), "entries": st.entries, "broken": st.broken, "bytes": st.bytes, "hits": st.hits})
                ));
            } else {
                out(&format!(
                    "{}: {} entries ({} broken), {} bytes, {} disk hits\n",
                    root(),
                    st.entries,
                    st.broken,
                    st.bytes,
                    st.hits
                ));
            }
        }
        CacheCommand::Diff { a, b } => {
            let ea = c.get(&a).ok_or_else(|| Error::File {
                path: root(),
                why: format!("no single entry `{a}`"),
            })?;
            let eb = c.get(&b).ok_or_else(|| Error::File {
                path: root(),
                why: format!("no single entry `{b}`"),
            })?;
            let mut s = String::new();
            for (k, va) in &ea.info.components {
                let vb = eb
                    .info
                    .components
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or("(absent)", |(_, v)| v.as_str());
                if va != vb {
                    s += &format!("{k}: {va} -> {vb}\n");
                }
            }
            if s.is_empty() {
                s = "no component differs\n".into();
            }
            out(&s);
        }
        CacheCommand::Clear => out(&format!("removed {} entries\n", c.clear()?)),
        CacheCommand::Prune { max_size } => {
            let max = crate::runtime::plan::parse_bytes(&max_size)? as u64;
            out(&format!("removed {} entries\n", c.prune(max)?));
        }
        CacheCommand::Warm { target, arch } => {
            let opts = EmitOptions::new(dtype_of(&target.dtype)?);
            // The runtime's I/O kernels, which device-API runs and bf16/f16 gradients use.
            let (key, _, origin) = crate::runtime::cuda::compile::io_module(&arch, &c)?;
            out(&format!(
                "runtime I/O kernels: key {} from {}\n",
                key.key(),
                origin_name(&origin)
            ));
            for (p, label) in pipelines_of(&target)? {
                // Every schedule the planner may pick, unless one is asked for.
                let strategies = match target.schedule.as_deref() {
                    None | Some("auto") => p.schedule().candidates.clone(),
                    Some(_) => vec![strategy_for(&p, &target)?],
                };
                for strategy in strategies {
                    let start = Instant::now();
                    let k = crate::runtime::cuda::compile::compile(&p, strategy, &opts, &arch, &c)?;
                    let origin = match &k.origin {
                        crate::runtime::cache::Origin::Memory => "memory".to_string(),
                        crate::runtime::cache::Origin::Disk => "disk".to_string(),
                        crate::runtime::cache::Origin::Compiled { why } => {
                            format!("compiled ({why})")
                        }
                    };
                    out(&format!(
                        "{label} {strategy}: key {} from {origin} in {:.0} ms\n",
                        k.key.key(),
                        start.elapsed().as_secs_f64() * 1e3
                    ));
                }
            }
        }
    }
    Ok(())
}

fn origin_name(o: &crate::runtime::cache::Origin) -> String {
    match o {
        crate::runtime::cache::Origin::Memory => "memory".to_string(),
        crate::runtime::cache::Origin::Disk => "disk".to_string(),
        crate::runtime::cache::Origin::Compiled { why } => format!("compiled ({why})"),
    }
}
