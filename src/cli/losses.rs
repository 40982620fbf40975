//! `liger losses`: the built-in losses (or a loss file's) with their parameters, kinds,
//! defaults, variants and domains.

use super::out;
use crate::Error;

pub(crate) fn losses(json: bool, file: Option<&str>) -> Result<(), Error> {
    let compiled;
    let all: Vec<&dyn crate::ChunkedLoss> = match file {
        Some(path) => {
            compiled = crate::compile_loss_file(path)?;
            compiled
                .iter()
                .map(|l| l as &dyn crate::ChunkedLoss)
                .collect()
        }
        None => crate::losses::builtin(),
    };
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|l| {
                let params: Vec<serde_json::Value> = l
                    .params()
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "kind": p.kind.name(),
                            "type": p.type_name,
                            "optional": p.optional,
                            "default": match p.default {
                                crate::DefaultValue::None => serde_json::Value::Null,
                                crate::DefaultValue::Float(x) => serde_json::json!(x),
                                crate::DefaultValue::Bool(b) => serde_json::json!(b),
                                crate::DefaultValue::Variant(s) => serde_json::json!(s),
                            },
                            "choices": p.choices,
                            "ranges": p.ranges.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": l.name(),
                    "doc": l.doc(),
                    "specializations": l.specializations().len(),
                    "params": params,
                })
            })
            .collect();
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        ));
        return Ok(());
    }
    let mut s = String::new();
    for l in all {
        let first = l.doc().lines().next().unwrap_or("");
        s += &format!(
            "{}  ({} specialisations)  {first}\n",
            l.name(),
            l.specializations().len()
        );
        // The name column is as wide as the loss's longest parameter name.
        let w = l
            .params()
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0)
            .max("parameter".len());
        s += &format!(
            "  {:<w$} {:<16} {:<10} {:<10} choices / domain\n",
            "parameter", "kind", "optional", "default"
        );
        for p in l.params() {
            let domain = p
                .ranges
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            s += &format!(
                "  {:<w$} {:<16} {:<10} {:<10} {}\n",
                p.name,
                p.kind.name(),
                if p.optional { "yes" } else { "" },
                p.default.to_string(),
                if p.choices.is_empty() {
                    domain
                } else {
                    p.choices.join(" | ")
                }
            );
        }
        s += "\n";
    }
    out(&s);
    Ok(())
}
