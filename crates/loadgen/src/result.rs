//! What a scenario reports: named figures with units, in one JSON shape
//! that `report` can line up against another run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `schema` of a run document.
pub const SCHEMA: &str = "mailfleet-loadgen/1";

/// Which direction of a figure is the good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// A count or a setting, not a score.
    Neither,
}

impl Better {
    pub fn word(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
            Better::Neither => "-",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// `null` when there was nothing to measure (no samples, no time).
    pub value: Option<f64>,
    pub unit: String,
    pub better: Better,
}

/// One scenario run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// `populate`, `smtp`, `imap`, `pop3` or `idle`.
    pub scenario: String,
    /// What `report` matches the two sides on: `--label`, or the scenario.
    pub name: String,
    /// False if the deadline or a failure stopped the run before it did
    /// all it was asked to; the figures then cover what was done.
    pub complete: bool,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub elapsed_s: f64,
    /// The options the run was made with (no password).
    pub params: BTreeMap<String, serde_json::Value>,
    pub figures: BTreeMap<String, Figure>,
    /// Failures counted by kind, e.g. `"RCPT 550"`, `"io"`.
    pub errors: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

impl ScenarioResult {
    /// One result for several passes of the same scenario: each score
    /// (a figure with a better direction) is the median of the passes'
    /// values (for a percentile, the median of the passes' percentiles),
    /// each count the sum; complete only if every pass was.
    pub fn median_of(passes: Vec<ScenarioResult>) -> Option<ScenarioResult> {
        let mut iter = passes.into_iter();
        let mut out = iter.next()?;
        let rest: Vec<ScenarioResult> = iter.collect();
        out.params.insert("passes".into(), (rest.len() + 1).into());
        for (name, figure) in out.figures.iter_mut() {
            let others = rest.iter().filter_map(|r| r.figures.get(name)).filter_map(|f| f.value);
            match figure.better {
                Better::Neither => {
                    figure.value = figure.value.map(|v| v + others.sum::<f64>());
                }
                Better::Higher | Better::Lower => {
                    let values: crate::stats::Samples = figure.value.into_iter().chain(others).collect();
                    figure.value = values.percentile(50.0);
                }
            }
        }
        for r in rest {
            out.complete &= r.complete;
            out.elapsed_s += r.elapsed_s;
            for (k, n) in r.errors {
                *out.errors.entry(k).or_default() += n;
            }
            out.notes.extend(r.notes);
        }
        out.notes.dedup();
        Some(out)
    }

    pub fn new(scenario: &str, label: Option<&str>) -> Self {
        let started_at =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        Self {
            scenario: scenario.to_owned(),
            name: label.unwrap_or(scenario).to_owned(),
            complete: true,
            started_at,
            elapsed_s: 0.0,
            params: BTreeMap::new(),
            figures: BTreeMap::new(),
            errors: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    pub fn figure(&mut self, name: &str, value: impl Into<Option<f64>>, unit: &str, better: Better) {
        let value = value.into().filter(|v| v.is_finite());
        self.figures.insert(name.to_owned(), Figure { value, unit: unit.to_owned(), better });
    }

    pub fn count(&mut self, name: &str, value: u64, unit: &str) {
        self.figure(name, value as f64, unit, Better::Neither);
    }

    pub fn param(&mut self, name: &str, value: impl Serialize) {
        self.params.insert(name.to_owned(), serde_json::to_value(value).unwrap_or(serde_json::Value::Null));
    }

    pub fn error(&mut self, key: impl Into<String>) {
        *self.errors.entry(key.into()).or_default() += 1;
    }

    pub fn merge_errors(&mut self, errors: BTreeMap<String, u64>) {
        for (k, n) in errors {
            *self.errors.entry(k).or_default() += n;
        }
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Human-readable lines, for stderr.
    pub fn human(&self) -> String {
        let mut out = format!(
            "== {} ({}): {} in {:.2} s\n",
            self.name,
            self.scenario,
            if self.complete { "complete" } else { "INCOMPLETE" },
            self.elapsed_s
        );
        let width = self.figures.keys().map(String::len).max().unwrap_or(0);
        for (name, f) in &self.figures {
            let value = f.value.map_or_else(|| "n/a".to_owned(), format_value);
            out += &format!("  {name:<width$}  {value:>14} {:<8} {}\n", f.unit, better_hint(f.better));
        }
        for (k, n) in &self.errors {
            out += &format!("  error {k}: {n}\n");
        }
        for note in &self.notes {
            out += &format!("  note: {note}\n");
        }
        out
    }
}

fn better_hint(b: Better) -> &'static str {
    match b {
        Better::Higher => "(higher is better)",
        Better::Lower => "(lower is better)",
        Better::Neither => "",
    }
}

/// Few significant digits for people; JSON keeps the full value.
pub fn format_value(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Where the run went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub host: String,
    pub smtp_port: u16,
    pub imap_port: u16,
    pub pop3_port: u16,
}

/// What one `loadgen` scenario command prints on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDocument {
    pub schema: String,
    pub loadgen_version: String,
    pub target: TargetInfo,
    pub results: Vec<ScenarioResult>,
}

impl RunDocument {
    pub fn new(target: TargetInfo, results: Vec<ScenarioResult>) -> Self {
        Self { schema: SCHEMA.to_owned(), loadgen_version: env!("CARGO_PKG_VERSION").to_owned(), target, results }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes combine as the median of each score and the sum of each count.
    #[test]
    fn passes_combine_by_median_and_sum() {
        let pass = |rate: f64, count: u64, ok: bool| {
            let mut r = ScenarioResult::new("smtp", None);
            r.figure("rate", rate, "msg/s", Better::Higher);
            r.count("messages", count, "messages");
            r.complete = ok;
            r
        };
        let r = ScenarioResult::median_of(vec![pass(10.0, 5, true), pass(30.0, 5, true), pass(20.0, 6, false)])
            .expect("passes");
        assert_eq!(r.figures["rate"].value, Some(20.0));
        assert_eq!(r.figures["messages"].value, Some(16.0));
        assert!(!r.complete);
        assert_eq!(r.params["passes"], serde_json::json!(3));
        assert!(ScenarioResult::median_of(Vec::new()).is_none());
    }
}
