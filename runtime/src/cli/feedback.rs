//! `weir feedback PIPELINE FILE`: bulk truth for a `[quality]` pipeline's predictions, from a
//! CSV file with `id` and `target` columns or JSON lines with `id` and `target` fields, sent
//! to the running server in batches with a progress bar.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::admin::{Client, Connection, admin_token};
use crate::http::auth;
use crate::http::feedback::MAX_FEEDBACK;

/// Truth pieces per request.
const BATCH: usize = 10_000;

#[derive(clap::Args)]
pub struct FeedbackArgs {
    /// The pipeline whose predictions the truth is for.
    pub pipeline: String,
    /// A .csv file with a header naming `id` and `target` columns, or a .jsonl file of
    /// {"id": ..., "target": ...} lines. A CSV target that reads as a number is sent as one.
    pub file: PathBuf,
    /// File holding the server's inference token, when it has one (feedback then needs it);
    /// otherwise the admin token is sent, found as for the management commands.
    #[arg(long, value_name = "FILE")]
    pub inference_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub connection: Connection,
}

/// Send the file's truth and print what became of it.
pub fn run(args: FeedbackArgs) -> anyhow::Result<()> {
    let truths = read(&args.file)?;
    let token = match &args.inference_token_file {
        Some(file) => auth::read_token(file)?,
        None => admin_token(&args.connection)?,
    };
    let client = Client::with_token(&args.connection, token)?;
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| indicatif::ProgressBar::new(truths.len() as u64).with_message("sending feedback"));
    let mut total = json!({});
    let path = format!("/v1/pipelines/{}/feedback", args.pipeline);
    for batch in truths.chunks(BATCH.min(MAX_FEEDBACK)) {
        let body = json!({ "feedback": batch }).to_string();
        let answer = client.post("sending feedback", &path, body.into())?;
        add(&mut total, &answer);
        if let Some(bar) = &bar {
            bar.inc(batch.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!(
        "{} sent: {} matched, {} unknown ids, {} expired, {} duplicates, {} invalid",
        truths.len(),
        total["matched"].as_u64().unwrap_or(0),
        total["unknown"].as_u64().unwrap_or(0),
        total["expired"].as_u64().unwrap_or(0),
        total["duplicates"].as_u64().unwrap_or(0),
        total["invalid"].as_u64().unwrap_or(0),
    );
    for error in total["errors"].as_array().into_iter().flatten() {
        println!("  {}", error.as_str().unwrap_or_default());
    }
    Ok(())
}

/// Add one answer's counts (and first errors) to the running total.
fn add(total: &mut Value, answer: &Value) {
    for field in ["matched", "unknown", "expired", "duplicates", "invalid"] {
        let sum = total[field].as_u64().unwrap_or(0) + answer[field].as_u64().unwrap_or(0);
        total[field] = json!(sum);
    }
    for error in answer["errors"].as_array().into_iter().flatten() {
        if let Value::Array(errors) = &mut total["errors"] {
            errors.push(error.clone());
        } else {
            total["errors"] = json!([error]);
        }
    }
}

/// Every `{"id", "target"}` of the file.
fn read(path: &Path) -> anyhow::Result<Vec<Value>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv(file).with_context(|| format!("reading {}", path.display())),
        Some("jsonl" | "ndjson") => {
            let mut truths = Vec::new();
            for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let truth: Value = serde_json::from_str(&line)
                    .with_context(|| format!("{}:{}", path.display(), n + 1))?;
                if truth.get("id").is_none() || truth.get("target").is_none() {
                    bail!(
                        "{}:{}: a line needs \"id\" and \"target\"",
                        path.display(),
                        n + 1
                    );
                }
                truths.push(json!({ "id": truth["id"], "target": truth["target"] }));
            }
            Ok(truths)
        }
        _ => bail!("{}: give a .csv or a .jsonl file", path.display()),
    }
}

fn read_csv(file: std::fs::File) -> anyhow::Result<Vec<Value>> {
    let mut reader = csv::Reader::from_reader(file);
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        (headers.iter().position(|h| h.trim() == name))
            .with_context(|| format!("no `{name}` column in the header"))
    };
    let (id, target) = (column("id")?, column("target")?);
    let mut truths = Vec::new();
    for record in reader.records() {
        let record = record?;
        let value = record.get(target).unwrap_or_default();
        let target = match value.trim().parse::<f64>() {
            Ok(number) if number.is_finite() => json!(number),
            _ => json!(value),
        };
        truths.push(json!({ "id": record.get(id).unwrap_or_default(), "target": target }));
    }
    Ok(truths)
}
