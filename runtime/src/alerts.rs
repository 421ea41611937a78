//! Alerts people receive: one model for the drift monitor's and the quality monitor's status
//! changes. Each is logged; with `--alert-webhook URL`, a change into or out of the
//! `--alert-min-status` level (default `alert`) is also POSTed there as JSON by a thread of
//! its own, through a bounded queue, with retries: never on a request's path, and a webhook
//! that is down or slow delays no request (a full queue drops the alert and counts it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Alerts waiting for the webhook; beyond this they are dropped and counted.
const QUEUE: usize = 256;

/// Tries per alert, the waits between them doubling from one second.
const ATTEMPTS: u32 = 4;

/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// One status change, as the webhook receives it.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub pipeline: String,
    /// The version judged (quality is per version; drift is per pipeline: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `drift` or `quality`.
    pub what: &'static str,
    /// The drifting column, or `status` for a version's quality.
    pub subject: String,
    pub from: String,
    pub to: String,
    /// The scores behind the change (a drift score, or the quality metrics).
    pub scores: Value,
    /// The route with the whole report.
    pub report: String,
    /// Seconds since the Unix epoch.
    pub at: f64,
}

/// Where alerts go: the log, and the webhook when there is one. Cheap to clone.
#[derive(Clone, Default)]
pub struct Alerts {
    webhook: Option<SyncSender<Alert>>,
    /// The least severe status whose changes the webhook gets.
    min_status: MinStatus,
    counts: Arc<Counts>,
}

/// The least severe status whose changes (into it or beyond, or back) reach the webhook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MinStatus {
    Warn,
    #[default]
    Alert,
}

impl MinStatus {
    /// Whether a change `from` → `to` (status names) reaches this level.
    fn reached_by(self, from: &str, to: &str) -> bool {
        let severity = |status: &str| match status {
            "alert" => 2,
            "warn" => 1,
            _ => 0,
        };
        let level = match self {
            MinStatus::Warn => 1,
            MinStatus::Alert => 2,
        };
        severity(from).max(severity(to)) >= level
    }
}

/// What became of the alerts.
#[derive(Default)]
pub struct Counts {
    /// Raised (logged), whether or not a webhook is set.
    pub raised: AtomicU64,
    /// Delivered to the webhook (a 2xx answer).
    pub delivered: AtomicU64,
    /// Given up on after every attempt, or dropped because the queue was full.
    pub failed: AtomicU64,
}

impl Alerts {
    /// Alerts that are logged only.
    pub fn log_only() -> Alerts {
        Alerts::default()
    }

    /// Alerts that are logged, and POSTed to `url` when they reach `min_status`.
    pub fn webhook(url: &str, min_status: MinStatus) -> anyhow::Result<Alerts> {
        let url =
            reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--alert-webhook {url}: {e}"))?;
        anyhow::ensure!(
            url.scheme() == "http",
            "--alert-webhook {url}: only http:// URLs (this build has no TLS; relay https \
             through a local proxy such as Alertmanager)"
        );
        let client = reqwest::blocking::Client::builder()
            .timeout(POST_TIMEOUT)
            .build()?;
        let (queue, alerts) = sync_channel::<Alert>(QUEUE);
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        std::thread::Builder::new()
            .name("weir-alerts".into())
            .spawn(move || {
                for alert in alerts {
                    let outcome = if deliver(&client, &url, &alert) {
                        &counted.delivered
                    } else {
                        &counted.failed
                    };
                    outcome.fetch_add(1, Ordering::Relaxed);
                }
            })?;
        Ok(Alerts {
            webhook: Some(queue),
            min_status,
            counts,
        })
    }

    /// Log `alert`, and queue it for the webhook when it reaches the webhook's level.
    pub fn raise(&self, alert: Alert) {
        tracing::warn!(
            target: "weir::alert",
            pipeline = %alert.pipeline,
            version = alert.version,
            what = alert.what,
            subject = %alert.subject,
            from = %alert.from,
            to = %alert.to,
            scores = %alert.scores,
            "{} status changed",
            alert.what
        );
        self.counts.raised.fetch_add(1, Ordering::Relaxed);
        if let Some(queue) = &self.webhook
            && self.min_status.reached_by(&alert.from, &alert.to)
            && queue.try_send(alert).is_err()
        {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many were raised, delivered and failed.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }
}

/// POST `alert` to `url` until it is answered with a 2xx, or [`ATTEMPTS`] tries fail.
fn deliver(client: &reqwest::blocking::Client, url: &reqwest::Url, alert: &Alert) -> bool {
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        match client.post(url.clone()).json(alert).send() {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => {
                tracing::warn!(
                    status = response.status().as_u16(),
                    attempt,
                    "the alert webhook refused an alert"
                )
            }
            Err(e) => tracing::warn!(error = %e, attempt, "the alert webhook is unreachable"),
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(wait);
            wait *= 2;
        }
    }
    tracing::error!(pipeline = %alert.pipeline, what = alert.what, "alert not delivered: giving up");
    false
}

/// Seconds since the Unix epoch, now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
