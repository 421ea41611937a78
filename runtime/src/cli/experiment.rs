//! The experiment commands: `shadow` and `canary` start one, `experiment` shows it, `promote`
//! and `abort` end it; each a client of `/v1/pipelines/{name}/experiment`.

use std::io::IsTerminal;

use serde_json::{Value, json};

use super::admin::{Client, Connection};

#[derive(clap::Args)]
pub struct ShadowArgs {
    /// The pipeline.
    pub pipeline: String,
    /// The candidate: a retained version (`weir deploy --candidate` makes one).
    #[arg(long)]
    pub candidate: u64,
    /// The share of requests the candidate also runs, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub sample: f64,
    /// How often the gates judge the last window: 60s, 5m, 1h.
    #[arg(long, default_value = "60s", value_parser = parse_seconds)]
    pub interval: u64,
    /// Fail the candidate when an output agrees on less than this share (default: not judged).
    #[arg(long)]
    pub min_agreement: Option<f64>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct CanaryArgs {
    /// The pipeline.
    pub pipeline: String,
    /// The candidate: a retained version (`weir deploy --candidate` makes one).
    #[arg(long)]
    pub candidate: u64,
    /// The candidate's share of requests at each step, percent, rising.
    #[arg(long, default_value = "5,25,50", value_delimiter = ',')]
    pub steps: Vec<f64>,
    /// How long each step is held before the gates judge it: 60s, 5m, 1h.
    #[arg(long, default_value = "60s", value_parser = parse_seconds)]
    pub interval: u64,
    /// Wait for `weir promote` after the last step instead of promoting.
    #[arg(long)]
    pub manual: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct ExperimentArgs {
    /// The pipeline.
    pub pipeline: String,
    /// Print the status as JSON (the default when not on a terminal).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct EndArgs {
    /// The pipeline.
    pub pipeline: String,
    #[command(flatten)]
    pub connection: Connection,
}

/// `60`, `60s`, `5m` or `1h` as seconds.
fn parse_seconds(text: &str) -> Result<u64, String> {
    let (number, unit) = text.trim().split_at(
        text.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.trim().len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is no duration (60s, 5m, 1h)"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("'{text}': the unit is s, m or h")),
    };
    Ok(number * scale)
}

fn path(pipeline: &str) -> String {
    format!("/v1/pipelines/{pipeline}/experiment")
}

pub fn shadow(args: ShadowArgs) -> anyhow::Result<()> {
    let mut settings = json!({
        "mode": "shadow", "candidate": args.candidate, "sample": args.sample,
        "interval_seconds": args.interval,
    });
    if let Some(least) = args.min_agreement {
        settings["gates"] = json!({ "min_agreement": least });
    }
    start(&args.connection, &args.pipeline, settings)
}

pub fn canary(args: CanaryArgs) -> anyhow::Result<()> {
    let settings = json!({
        "mode": "canary", "candidate": args.candidate, "steps": args.steps,
        "interval_seconds": args.interval, "auto_promote": !args.manual,
    });
    start(&args.connection, &args.pipeline, settings)
}

fn start(connection: &Connection, pipeline: &str, settings: Value) -> anyhow::Result<()> {
    let client = Client::new(connection)?;
    let what = format!("starting an experiment on {pipeline}");
    let status = client.put(&what, &path(pipeline), settings.to_string())?;
    print_status(&status, false);
    Ok(())
}

pub fn status(args: ExperimentArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let status = client.get("reading the experiment", &path(&args.pipeline))?;
    print_status(&status, args.json);
    Ok(())
}

pub fn promote(args: EndArgs) -> anyhow::Result<()> {
    end(&args, "promote")
}

pub fn abort(args: EndArgs) -> anyhow::Result<()> {
    end(&args, "abort")
}

fn end(args: &EndArgs, action: &str) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let what = format!("{action} on {}", args.pipeline);
    let status = client.post(
        &what,
        &format!("{}/{action}", path(&args.pipeline)),
        "".into(),
    )?;
    print_status(&status, false);
    Ok(())
}

/// The status as a table on a terminal, else (or with `json`) as JSON.
fn print_status(status: &Value, json: bool) {
    if json || !std::io::stdout().is_terminal() {
        println!("{status}");
        return;
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!(
        "{} {} experiment: version {} against candidate {}: {}{}",
        text(&status["pipeline"]),
        text(&status["mode"]),
        status["active"],
        status["candidate"],
        text(&status["state"]),
        status["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
    );
    println!(
        "candidate share {}%, step {}",
        status["candidate_share_percent"], status["step"]
    );
    println!(
        "{:<10} {:>10} {:>8} {:>9} {:>9}",
        "arm", "requests", "errors", "p50 ms", "p99 ms"
    );
    for arm in ["active", "candidate"] {
        let a = &status["arms"][arm];
        let ms = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
        println!(
            "{arm:<10} {:>10} {:>8} {:>9} {:>9}",
            a["requests"],
            a["errors"],
            ms(&a["p50_ms"]),
            ms(&a["p99_ms"])
        );
    }
    for (output, agreement) in status["agreement"].as_object().into_iter().flatten() {
        println!(
            "agreement on {output}: {:.1}% of {}",
            100.0 * agreement["share"].as_f64().unwrap_or(0.0),
            agreement["compared"]
        );
    }
    if let Some(last) = status["history"].as_array().and_then(|h| h.last()) {
        println!(
            "last decision: {} {}",
            text(&last["outcome"]),
            text(&last["reason"])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_seconds("60s"), Ok(60));
        assert_eq!(parse_seconds("5m"), Ok(300));
        assert_eq!(parse_seconds("2"), Ok(2));
        assert!(parse_seconds("1d").is_err());
    }
}
