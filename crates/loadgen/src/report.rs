//! `report`: lines up the figures of two systems' runs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::result::{Better, ScenarioResult, format_value};

pub const REPORT_SCHEMA: &str = "mailfleet-loadgen-report/1";

/// Parameters that naturally differ between the two systems.
const SIDE_SPECIFIC: &[&str] = &["seed", "cpu_pids", "process_name", "process_root", "open_file_limit"];

/// One figure of one result, on both sides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The result's `name` (its label, or the scenario).
    pub result: String,
    pub figure: String,
    pub unit: String,
    pub better: Better,
    pub mailfleet: Option<f64>,
    pub reference: Option<f64>,
    /// mailfleet / reference, when both exist and reference ≠ 0.
    pub ratio: Option<f64>,
    /// `mailfleet`, `reference` or `equal`, by `better`; absent for counts.
    pub ahead: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub rows: Vec<Row>,
    pub warnings: Vec<String>,
    pub mailfleet: Vec<ScenarioResult>,
    pub reference: Vec<ScenarioResult>,
}

/// Reads results from files that each hold run documents (`{"results": […]}`),
/// bare results, arrays of either, or several of these concatenated.
pub fn load(paths: &[PathBuf]) -> Result<Vec<ScenarioResult>, Error> {
    let mut out = Vec::new();
    for path in paths {
        let text = fs::read_to_string(path).map_err(|source| Error::File { path: path.clone(), source })?;
        for value in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
            let value = value.map_err(|source| Error::Json { path: path.clone(), source })?;
            collect(value, path, &mut out)?;
        }
    }
    Ok(out)
}

fn collect(value: Value, path: &Path, out: &mut Vec<ScenarioResult>) -> Result<(), Error> {
    let json = |source| Error::Json { path: path.to_owned(), source };
    match value {
        Value::Array(items) => items.into_iter().try_for_each(|v| collect(v, path, out)),
        Value::Object(mut map) => {
            if let Some(results) = map.remove("results") {
                collect(results, path, out)
            } else {
                out.push(serde_json::from_value(Value::Object(map)).map_err(json)?);
                Ok(())
            }
        }
        other => Err(json(serde::de::Error::custom(format!("expected an object or array, found {other}")))),
    }
}

fn by_name<'a>(
    side: &str,
    results: &'a [ScenarioResult],
    warnings: &mut Vec<String>,
) -> BTreeMap<String, &'a ScenarioResult> {
    let mut map = BTreeMap::new();
    for r in results {
        if map.insert(r.name.clone(), r).is_some() {
            warnings.push(format!("{side}: result {:?} appears more than once; the last one is used", r.name));
        }
    }
    map
}

/// Matches results by name; a name repeated on one side keeps the last.
pub fn compare(mailfleet: Vec<ScenarioResult>, reference: Vec<ScenarioResult>) -> Report {
    let mut warnings = Vec::new();
    let mf = by_name("mailfleet", &mailfleet, &mut warnings);
    let rf = by_name("reference", &reference, &mut warnings);
    let mut names: Vec<&String> = mf.keys().collect();
    names.extend(rf.keys().filter(|k| !mf.contains_key(*k)));

    let mut rows = Vec::new();
    for name in names {
        let (m, r) = (mf.get(name), rf.get(name));
        match (m, r) {
            (Some(m), Some(r)) => {
                for (key, mv) in &m.params {
                    if !SIDE_SPECIFIC.contains(&key.as_str()) && r.params.get(key) != Some(mv) {
                        let rv = r.params.get(key).map_or_else(|| "absent".to_owned(), Value::to_string);
                        warnings.push(format!("{name}: parameter {key} differs: mailfleet {mv}, reference {rv}"));
                    }
                }
            }
            (Some(_), None) => warnings.push(format!("{name}: only in the mailfleet runs")),
            (None, Some(_)) => warnings.push(format!("{name}: only in the reference runs")),
            (None, None) => {}
        }
        for (side, res) in [("mailfleet", m), ("reference", r)] {
            if let Some(res) = res
                && !res.complete
            {
                warnings.push(format!("{name}: the {side} run is incomplete (deadline or failures)"));
            }
        }
        let mut figures: Vec<&String> = m.map(|m| m.figures.keys().collect()).unwrap_or_default();
        if let Some(r) = r {
            figures.extend(r.figures.keys().filter(|k| m.is_none_or(|m| !m.figures.contains_key(*k))));
        }
        figures.sort();
        for figure in figures {
            let fm = m.and_then(|m| m.figures.get(figure));
            let fr = r.and_then(|r| r.figures.get(figure));
            let Some(any) = fm.or(fr) else { continue };
            let (mv, rv) = (fm.and_then(|f| f.value), fr.and_then(|f| f.value));
            let ratio = match (mv, rv) {
                (Some(a), Some(b)) if b != 0.0 => Some(a / b),
                _ => None,
            };
            rows.push(Row {
                result: name.clone(),
                figure: figure.clone(),
                unit: any.unit.clone(),
                better: any.better,
                mailfleet: mv,
                reference: rv,
                ratio,
                ahead: ahead(any.better, mv, rv),
            });
        }
    }
    Report { schema: REPORT_SCHEMA.to_owned(), rows, warnings, mailfleet, reference }
}

fn ahead(better: Better, m: Option<f64>, r: Option<f64>) -> Option<String> {
    let (m, r) = (m?, r?);
    let side = match better {
        Better::Neither => return None,
        _ if m == r => "equal",
        Better::Higher if m > r => "mailfleet",
        Better::Lower if m < r => "mailfleet",
        _ => "reference",
    };
    Some(side.to_owned())
}

/// The table, for people.
pub fn table(report: &Report) -> String {
    let header = ["result", "figure", "unit", "mailfleet", "reference", "ratio", "better", "ahead"];
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), format_value);
    let rows: Vec<[String; 8]> = report
        .rows
        .iter()
        .map(|r| {
            [
                r.result.clone(),
                r.figure.clone(),
                r.unit.clone(),
                cell(r.mailfleet),
                cell(r.reference),
                r.ratio.map_or_else(|| "-".to_owned(), |x| format!("{x:.3}")),
                r.better.word().to_owned(),
                r.ahead.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            // Text columns left, numbers right.
            if (3..=5).contains(&i) {
                s += &format!("{c:>w$}  ");
            } else {
                s += &format!("{c:<w$}  ");
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header.map(str::to_owned));
    out += &line(&widths.map(|w| "-".repeat(w)));
    for row in &rows {
        out += &line(row);
    }
    for w in &report.warnings {
        out += &format!("warning: {w}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::RunDocument;

    fn result(name: &str, figures: &[(&str, f64, Better)]) -> ScenarioResult {
        let mut r = ScenarioResult::new("smtp", Some(name));
        for (f, v, b) in figures {
            r.figure(f, *v, "x", *b);
        }
        r.param("messages", 500);
        r
    }

    #[test]
    fn ratios_and_direction() {
        let m = vec![result("smtp", &[("rate", 200.0, Better::Higher), ("p99", 5.0, Better::Lower)])];
        let mut r = vec![result("smtp", &[("rate", 100.0, Better::Higher), ("p99", 4.0, Better::Lower)])];
        r[0].param("messages", 400);
        let report = compare(m, r);
        let rate = report.rows.iter().find(|r| r.figure == "rate").expect("rate");
        assert_eq!(rate.ratio, Some(2.0));
        assert_eq!(rate.ahead.as_deref(), Some("mailfleet"));
        let p99 = report.rows.iter().find(|r| r.figure == "p99").expect("p99");
        assert_eq!(p99.ahead.as_deref(), Some("reference"));
        assert!(report.warnings.iter().any(|w| w.contains("messages differs")));
        let text = table(&report);
        assert!(text.contains("2.000"), "{text}");
    }

    #[test]
    fn loads_documents_arrays_and_concatenation() {
        let dir = std::env::temp_dir().join(format!("loadgen-report-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let target = crate::result::TargetInfo { host: "127.0.0.1".into(), smtp_port: 1, imap_port: 2, pop3_port: 3 };
        let doc = |name: &str| RunDocument::new(target.clone(), vec![result(name, &[("rate", 1.0, Better::Higher)])]);
        let concatenated = dir.join("all.json");
        let text = format!(
            "{}\n{}\n",
            serde_json::to_string(&doc("a")).expect("json"),
            serde_json::to_string_pretty(&doc("b")).expect("json")
        );
        fs::write(&concatenated, text).expect("write");
        let array = dir.join("array.json");
        fs::write(&array, serde_json::to_string(&vec![doc("c")]).expect("json")).expect("write");
        let loaded = load(&[concatenated, array]).expect("load");
        assert_eq!(loaded.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let bad = dir.join("bad.json");
        fs::write(&bad, "42").expect("write");
        assert!(load(&[bad]).is_err());
        fs::remove_dir_all(&dir).ok();
    }
}
