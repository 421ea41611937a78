//! Reference profiles: per-column summaries of training (or other reference) data, made by
//! `weir profile`, that the `observe` stage compares live data against and from which a
//! `validate` schema can start. Numeric columns keep quantile bins; text columns keep category
//! shares. A profile is small and fixed in size whatever the data's size.

use std::collections::BTreeMap;
use std::io::BufRead;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Category shares below this are folded into `other`, so a profile stays small.
const MAX_CATEGORIES: usize = 50;

/// A profile of reference data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Rows profiled.
    pub rows: u64,
    pub columns: Vec<ColumnProfile>,
}

/// One column's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    pub name: String,
    /// Share of rows with no value (empty, or NaN).
    pub missing_share: f64,
    #[serde(flatten)]
    pub summary: Summary,
}

/// Numeric or categorical summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Summary {
    Numeric {
        min: f64,
        max: f64,
        mean: f64,
        std: f64,
        /// Inner bin edges at the reference's quantiles; the first and last bins are open-ended,
        /// so every value has a bin.
        edges: Vec<f64>,
        /// The reference's share in each of the `edges.len() + 1` bins.
        proportions: Vec<f64>,
    },
    Categorical {
        /// Share of each category seen in the reference.
        categories: BTreeMap<String, f64>,
        /// Share of categories folded out of the list (rare ones).
        other: f64,
    },
}

impl Summary {
    /// The bin of a numeric value: the number of edges at or below it.
    pub fn bin(edges: &[f64], value: f64) -> usize {
        edges.partition_point(|e| *e <= value)
    }
}

/// Read rows of named values (CSV with a header, or JSON lines of objects) and profile each
/// column with `bins` quantile bins.
pub fn profile_file(path: &std::path::Path, bins: usize) -> anyhow::Result<Profile> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "ndjson");
    let table = if jsonl {
        read_jsonl(file)?
    } else {
        read_csv(file)?
    };
    profile(&table, bins)
}

/// Columns of text cells, by name, in header order.
type Table = Vec<(String, Vec<String>)>;

fn read_csv(file: std::fs::File) -> anyhow::Result<Table> {
    let mut reader = csv::Reader::from_reader(file);
    let mut table: Table = reader
        .headers()?
        .iter()
        .map(|h| (h.to_owned(), Vec::new()))
        .collect();
    for (row, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("CSV row {}", row + 2))?;
        for ((_, cells), cell) in table.iter_mut().zip(record.iter()) {
            cells.push(cell.to_owned());
        }
    }
    Ok(table)
}

fn read_jsonl(file: std::fs::File) -> anyhow::Result<Table> {
    let mut table: Table = Vec::new();
    for (row, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(&line).with_context(|| format!("JSON line {}", row + 1))?;
        for (name, value) in object {
            let cells = match table.iter_mut().find(|(n, _)| *n == name) {
                Some((_, cells)) => cells,
                None => {
                    table.push((name, vec![String::new(); row]));
                    &mut table.last_mut().unwrap().1
                }
            };
            cells.resize(row, String::new());
            cells.push(match value {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            });
        }
    }
    let rows = table.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    for (_, cells) in &mut table {
        cells.resize(rows, String::new());
    }
    Ok(table)
}

/// Profile every column: numeric when every present cell parses as a number, else categorical.
pub fn profile(table: &Table, bins: usize) -> anyhow::Result<Profile> {
    let rows = table.first().map_or(0, |(_, c)| c.len());
    if rows == 0 {
        bail!("no rows to profile");
    }
    let columns = table
        .iter()
        .map(|(name, cells)| column(name, cells, bins.max(2)))
        .collect();
    Ok(Profile {
        rows: rows as u64,
        columns,
    })
}

fn column(name: &str, cells: &[String], bins: usize) -> ColumnProfile {
    let present: Vec<&str> = cells
        .iter()
        .map(|c| c.trim())
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("nan"))
        .collect();
    let missing_share = 1.0 - present.len() as f64 / cells.len() as f64;
    let numbers: Option<Vec<f64>> = present.iter().map(|c| c.parse::<f64>().ok()).collect();
    let summary = match numbers {
        Some(values) if !values.is_empty() => numeric(values, bins),
        _ => categorical(&present),
    };
    ColumnProfile {
        name: name.to_owned(),
        missing_share,
        summary,
    }
}

fn numeric(mut values: Vec<f64>, bins: usize) -> Summary {
    values.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let edges = quantile_edges(&values, bins);
    let mut counts = vec![0u64; edges.len() + 1];
    for v in &values {
        counts[Summary::bin(&edges, *v)] += 1;
    }
    Summary::Numeric {
        min: values[0],
        max: values[values.len() - 1],
        mean,
        std,
        proportions: counts.iter().map(|c| *c as f64 / n).collect(),
        edges,
    }
}

/// Inner bin edges near the quantiles of `sorted`, each halfway between two distinct values,
/// never on one. Reference data is often recorded to a fixed precision (0.1 cm, whole
/// counts), so many rows share a value; an edge on such a value would put the same number on
/// either side of it depending on how it was rounded in transit (1.4 as FP32 is 1.39999998,
/// just below an f64 edge at 1.4), and a monitor fed the training data itself would alarm. An
/// edge at the quantile that falls inside a run of equal values moves to the nearer end of the
/// run. A constant column gets two edges tight around its value, so any other value shows.
fn quantile_edges(sorted: &[f64], bins: usize) -> Vec<f64> {
    let n = sorted.len();
    let (first, last) = (sorted[0], sorted[n - 1]);
    if first == last {
        let tolerance = (first.abs() * 1e-6).max(1e-12);
        return vec![first - tolerance, first + tolerance];
    }
    let mut splits: Vec<usize> = (1..bins)
        .filter_map(|i| {
            let at = ((i as f64 / bins as f64) * n as f64) as usize;
            let value = sorted[at];
            // The run of values equal to `sorted[at]` is sorted[low..high].
            let low = sorted.partition_point(|v| *v < value);
            let high = sorted.partition_point(|v| *v <= value);
            match (low > 0, high < n) {
                (true, true) if at - low <= high - at => Some(low),
                (_, true) => Some(high),
                (true, false) => Some(low),
                (false, false) => None,
            }
        })
        .collect();
    splits.dedup();
    splits
        .into_iter()
        .map(|at| sorted[at - 1] + (sorted[at] - sorted[at - 1]) / 2.0)
        .collect()
}

fn categorical(present: &[&str]) -> Summary {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for c in present {
        *counts.entry(c).or_default() += 1;
    }
    let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let n = present.len().max(1) as f64;
    let other = ranked
        .iter()
        .skip(MAX_CATEGORIES)
        .map(|(_, c)| *c as f64)
        .sum::<f64>()
        / n;
    Summary::Categorical {
        categories: ranked
            .into_iter()
            .take(MAX_CATEGORIES)
            .map(|(k, c)| (k.to_owned(), c as f64 / n))
            .collect(),
        other,
    }
}

/// A starting `validate` schema for the profiled columns, as manifest TOML: the categories
/// seen, missing values refused where the reference had none, and ranges that catch gross
/// errors (a unit mistake, a -999 sentinel) rather than rare legitimate values: the observed
/// range widened by three times its span on each side (in the breast-cancer data, held-out
/// values reach 1.6 spans past the reference's range), and never below 0 for a column that
/// had no negative values. Subtler shifts are the drift monitor's to catch.
pub fn schema_toml(profile: &Profile) -> String {
    let mut out = String::from("columns = [\n");
    for c in &profile.columns {
        let missing = if c.missing_share > 0.0 {
            ", allow_missing = true"
        } else {
            ""
        };
        match &c.summary {
            Summary::Numeric { min, max, .. } => {
                let span = 3.0 * (max - min);
                let low = if *min >= 0.0 {
                    (min - span).max(0.0)
                } else {
                    min - span
                };
                out.push_str(&format!(
                    "    {{ name = {:?}, min = {}, max = {}{missing} }},\n",
                    c.name,
                    round(low),
                    round(max + span)
                ));
            }
            Summary::Categorical { categories, .. } => {
                let names: Vec<String> = categories.keys().map(|k| format!("{k:?}")).collect();
                out.push_str(&format!(
                    "    {{ name = {:?}, categories = [{}]{missing} }},\n",
                    c.name,
                    names.join(", ")
                ));
            }
        }
    }
    out.push_str("]\n");
    out
}

/// Four significant decimals: enough for a range bound, short enough to read.
fn round(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_fall_between_distinct_values_never_on_one() {
        // Recorded to 0.1, heavily tied, as iris's petal lengths are.
        let values: Vec<f64> = (0..200).map(|i| f64::from(10 + i % 7) / 10.0).collect();
        let Summary::Numeric { edges, .. } = numeric(values.clone(), 10) else {
            panic!("numeric")
        };
        assert!(!edges.is_empty());
        for edge in &edges {
            assert!(values.iter().all(|v| v != edge), "edge {edge} is a value");
        }
        // So a value rounded to FP32 on its way lands in the bin of the value it stands for.
        for v in &values {
            let narrowed = f64::from(*v as f32);
            assert_eq!(
                Summary::bin(&edges, narrowed),
                Summary::bin(&edges, *v),
                "{v}"
            );
        }
    }

    #[test]
    fn an_edge_inside_a_run_of_ties_moves_to_the_nearer_end() {
        // 0: 10 rows, 1: 80 rows, 2: 10 rows; deciles all fall on 1 except the ends.
        let mut values = vec![0.0; 10];
        values.extend([1.0; 80]);
        values.extend([2.0; 10]);
        assert_eq!(quantile_edges(&values, 10), vec![0.5, 1.5]);
        let Summary::Numeric { proportions, .. } = numeric(values, 10) else {
            panic!("numeric")
        };
        assert_eq!(proportions, vec![0.1, 0.8, 0.1]);
    }

    #[test]
    fn a_constant_column_still_tells_other_values_apart() {
        let edges = quantile_edges(&[3.0; 20], 10);
        assert_eq!(Summary::bin(&edges, 3.0), 1);
        assert_eq!(Summary::bin(&edges, f64::from(3.0f32)), 1);
        assert_eq!(Summary::bin(&edges, 2.9), 0);
        assert_eq!(Summary::bin(&edges, 3.1), 2);
    }
}
