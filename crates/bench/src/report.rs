//! What a run measured: figures in table rows for people, the same figures keyed in a JSON file
//! for comparing runs, and how each phase went.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// Percentiles of a set of latencies.
#[derive(Debug, Clone, Copy)]
pub struct Dist {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    /// The distribution of `samples` in milliseconds; none for no samples.
    pub fn of(samples: &mut [Duration]) -> Option<Dist> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        // Nearest rank: the smallest sample at or above the share p of all.
        let at = |p: f64| {
            let rank = (p * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1000.0
        };
        Some(Dist {
            count: samples.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// One call timed at a small and a large history (the scale mode): the large one's median
/// against the small one's, and whether it keeps within the target factor.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub key: String,
    pub label: String,
    /// What the sizes are called in the table ("1k", "1M").
    pub sizes: (String, String),
    pub small: Dist,
    pub large: Dist,
    /// Items in the answers (cases, events, updates), on average, at each size.
    pub items: (f64, f64),
    /// The most the large median may be, as a multiple of the small one.
    pub target: f64,
}

impl Comparison {
    /// Large median / small median.
    pub fn ratio(&self) -> f64 {
        self.large.p50 / self.small.p50
    }

    pub fn within(&self) -> bool {
        self.ratio() <= self.target
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
enum Row {
    Section(String),
    Value {
        key: String,
        label: String,
        value: f64,
        unit: &'static str,
        /// The value as a share of a baseline: (share, which baseline).
        ratio: Option<(f64, &'static str)>,
    },
    Dist {
        key: String,
        label: String,
        dist: Dist,
    },
    /// A figure for the JSON file only.
    Hidden {
        key: String,
        label: String,
        value: f64,
        unit: &'static str,
    },
    /// A call timed at two sizes of the history, the larger against the smaller.
    Compare(Comparison),
    /// One figure per part (per process, per tier) on one line.
    Parts {
        key: String,
        label: String,
        parts: Vec<(String, f64)>,
        unit: &'static str,
    },
}

/// How a phase went.
#[derive(Debug, Clone)]
struct Phase {
    name: String,
    seconds: f64,
    error: Option<String>,
}

/// Everything measured so far, in the order measured.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    phases: Vec<Phase>,
    notes: Vec<String>,
    meta: Map<String, Value>,
}

/// A number with as many decimals as it needs to show three significant digits or so.
fn number(value: f64) -> String {
    if !value.is_finite() {
        return "-".into();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

impl Report {
    pub fn section(&mut self, title: &str) {
        self.rows.push(Row::Section(title.to_owned()));
    }

    pub fn value(&mut self, key: &str, label: &str, value: f64, unit: &'static str) {
        self.rows.push(Row::Value {
            key: key.to_owned(),
            label: label.to_owned(),
            value,
            unit,
            ratio: None,
        });
    }

    /// A value shown beside its share of the baseline `of` (a key given to [`Report::value`]
    /// earlier), when that was measured.
    pub fn value_against(
        &mut self,
        key: &str,
        label: &str,
        value: f64,
        unit: &'static str,
        of: &'static str,
    ) {
        let ratio = self
            .get(of)
            .filter(|base| *base > 0.0)
            .map(|base| (value / base, of));
        self.rows.push(Row::Value {
            key: key.to_owned(),
            label: label.to_owned(),
            value,
            unit,
            ratio,
        });
    }

    /// A figure for the JSON file, not the table.
    pub fn json_only(&mut self, key: &str, label: &str, value: f64, unit: &'static str) {
        self.rows.push(Row::Hidden {
            key: key.to_owned(),
            label: label.to_owned(),
            value,
            unit,
        });
    }

    pub fn dist(&mut self, key: &str, label: &str, dist: Option<Dist>) {
        match dist {
            Some(dist) => self.rows.push(Row::Dist {
                key: key.to_owned(),
                label: label.to_owned(),
                dist,
            }),
            None => self.note(format!("{label}: no samples")),
        }
    }

    pub fn compare(&mut self, comparison: Comparison) {
        self.rows.push(Row::Compare(comparison));
    }

    /// The comparisons that missed their target: (label, ratio).
    pub fn missed(&self) -> Vec<(String, f64)> {
        self.rows
            .iter()
            .filter_map(|row| match row {
                Row::Compare(c) if !c.within() => Some((c.label.clone(), c.ratio())),
                _ => None,
            })
            .collect()
    }

    pub fn parts(&mut self, key: &str, label: &str, parts: Vec<(String, f64)>, unit: &'static str) {
        if parts.is_empty() {
            self.note(format!("{label}: not measured"));
            return;
        }
        self.rows.push(Row::Parts {
            key: key.to_owned(),
            label: label.to_owned(),
            parts,
            unit,
        });
    }

    /// A value measured earlier.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.rows.iter().find_map(|row| match row {
            Row::Value { key: k, value, .. } if k == key => Some(*value),
            _ => None,
        })
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub fn meta(&mut self, key: &str, value: Value) {
        self.meta.insert(key.to_owned(), value);
    }

    /// Records how a phase went.
    pub fn phase(&mut self, name: &str, took: Duration, error: Option<String>) {
        self.phases.push(Phase {
            name: name.to_owned(),
            seconds: took.as_secs_f64(),
            error,
        });
    }

    /// The phases that failed, with why.
    pub fn failures(&self) -> Vec<String> {
        self.phases
            .iter()
            .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.name)))
            .collect()
    }

    /// The table people read.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            match row {
                Row::Section(title) => {
                    out.push_str(&format!("\n{title}\n"));
                }
                Row::Value {
                    label,
                    value,
                    unit,
                    ratio,
                    ..
                } => {
                    let ratio = ratio.map_or(String::new(), |(share, of)| {
                        format!("  = {:.1} % of {of}", share * 100.0)
                    });
                    out.push_str(&format!(
                        "  {label:<58} {:>10} {unit}{ratio}\n",
                        number(*value)
                    ));
                }
                Row::Dist { label, dist, .. } => {
                    out.push_str(&format!(
                        "  {label:<58} p50 {} · p90 {} · p99 {} · max {} ms  (n={})\n",
                        number(dist.p50),
                        number(dist.p90),
                        number(dist.p99),
                        number(dist.max),
                        dist.count
                    ));
                }
                Row::Hidden { .. } => {}
                Row::Compare(c) => {
                    let mark = if c.within() { "✓" } else { "✗" };
                    out.push_str(&format!(
                        "  {:<50} {:>4} {:>6} · {:>6}  {:>4} {:>6} · {:>6} ms  ×{:<6} {mark}  ({} → {} items)\n",
                        c.label,
                        c.sizes.0,
                        number(c.small.p50),
                        number(c.small.p90),
                        c.sizes.1,
                        number(c.large.p50),
                        number(c.large.p90),
                        format!("{:.2}", c.ratio()),
                        number(c.items.0),
                        number(c.items.1),
                    ));
                }
                Row::Parts {
                    label, parts, unit, ..
                } => {
                    let parts: Vec<String> = parts
                        .iter()
                        .map(|(name, value)| format!("{name} {}", number(*value)))
                        .collect();
                    out.push_str(&format!("  {label:<58} {} {unit}\n", parts.join(" · ")));
                }
            }
        }
        out.push_str("\nPhases\n");
        for phase in &self.phases {
            let outcome = match &phase.error {
                None => "ok".to_owned(),
                Some(error) => format!("FAILED: {error}"),
            };
            out.push_str(&format!(
                "  {:<58} {:>8.1} s  {outcome}\n",
                phase.name, phase.seconds
            ));
        }
        if !self.notes.is_empty() {
            out.push_str("\nNotes\n");
            for note in &self.notes {
                out.push_str(&format!("  - {note}\n"));
            }
        }
        out
    }

    /// Every figure, keyed, with the run's facts.
    pub fn json(&self) -> Value {
        let mut figures = Map::new();
        for row in &self.rows {
            match row {
                Row::Section(_) => {}
                Row::Value {
                    key,
                    label,
                    value,
                    unit,
                    ratio,
                } => {
                    let mut figure =
                        json!({ "value": finite(*value), "unit": unit, "label": label });
                    if let Some((share, of)) = ratio {
                        figure["ratio"] = json!({ "of": of, "value": finite(*share) });
                    }
                    figures.insert(key.clone(), figure);
                }
                Row::Dist { key, label, dist } => {
                    figures.insert(
                        key.clone(),
                        json!({
                            "unit": "ms", "label": label, "count": dist.count,
                            "p50": finite(dist.p50), "p90": finite(dist.p90),
                            "p99": finite(dist.p99), "max": finite(dist.max),
                        }),
                    );
                }
                Row::Hidden {
                    key,
                    label,
                    value,
                    unit,
                } => {
                    figures.insert(
                        key.clone(),
                        json!({ "value": finite(*value), "unit": unit, "label": label }),
                    );
                }
                Row::Compare(c) => {
                    let dist = |d: &Dist, size: &str, items: f64| {
                        json!({
                            "size": size, "count": d.count, "items": finite(items),
                            "p50": finite(d.p50), "p90": finite(d.p90),
                            "p99": finite(d.p99), "max": finite(d.max),
                        })
                    };
                    figures.insert(
                        c.key.clone(),
                        json!({
                            "unit": "ms", "label": c.label,
                            "small": dist(&c.small, &c.sizes.0, c.items.0),
                            "large": dist(&c.large, &c.sizes.1, c.items.1),
                            "ratio_p50": finite(c.ratio()),
                            "ratio_p90": finite(c.large.p90 / c.small.p90),
                            "target": c.target,
                            "within": c.within(),
                        }),
                    );
                }
                Row::Parts {
                    key,
                    label,
                    parts,
                    unit,
                } => {
                    for (name, value) in parts {
                        figures.insert(
                            format!("{key}.{name}"),
                            json!({
                                "value": finite(*value),
                                "unit": unit,
                                "label": format!("{label}: {name}"),
                            }),
                        );
                    }
                }
            }
        }
        let phases: Vec<Value> = self
            .phases
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "seconds": p.seconds,
                    "ok": p.error.is_none(),
                    "error": p.error,
                })
            })
            .collect();
        let mut out = self.meta.clone();
        out.insert("figures".into(), Value::Object(figures));
        out.insert("phases".into(), Value::Array(phases));
        out.insert("notes".into(), json!(self.notes));
        Value::Object(out)
    }
}

/// JSON has no NaN or infinity.
fn finite(value: f64) -> Value {
    if value.is_finite() {
        json!(value)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let dist = Dist::of(&mut samples).expect("samples");
        assert_eq!(
            (dist.p50, dist.p90, dist.p99, dist.max),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert!(Dist::of(&mut []).is_none());
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(Dist::of(&mut one).expect("one").p50, 7.0);
    }

    #[test]
    fn a_ratio_names_its_baseline_and_the_json_holds_every_figure() {
        let mut report = Report::default();
        report.value("baseline.commits", "commits", 1000.0, "commits/s");
        report.value_against(
            "system.intake",
            "intake",
            250.0,
            "reports/s",
            "baseline.commits",
        );
        report.value_against(
            "system.other",
            "other",
            1.0,
            "reports/s",
            "baseline.missing",
        );
        let table = report.table();
        assert!(table.contains("= 25.0 % of baseline.commits"), "{table}");
        let json = report.json();
        assert_eq!(json["figures"]["system.intake"]["ratio"]["value"], 0.25);
        assert!(json["figures"]["system.other"].get("ratio").is_none());
    }
}
