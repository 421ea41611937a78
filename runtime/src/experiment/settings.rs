//! What an operator starts an experiment with: the mode, the candidate, the steps and their
//! interval, and the gates that decide. Defaults follow Argo Rollouts and Flagger's habits.

use serde::{Deserialize, Serialize};

/// How the candidate meets traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The candidate also runs a sample of requests; clients get the active version's answer.
    Shadow,
    /// The candidate answers a share of requests, raised step by step.
    Canary,
}

/// An experiment's settings (`PUT /v1/pipelines/{name}/experiment`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub mode: Mode,
    /// The candidate: a retained version of the pipeline.
    pub candidate: u64,
    /// Shadow: the share of requests the candidate also runs, in (0, 1].
    #[serde(default = "one")]
    pub sample: f64,
    /// Shadow: the share of one core the copies may take while the rest of the server keeps
    /// more than half the cores busy; copies beyond it are skipped and counted. 1 runs every
    /// copy whatever the load.
    #[serde(default = "default_shadow_share")]
    pub shadow_share: f64,
    /// Canary: the candidate's share of requests at each step, in percent, rising.
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
    /// How long each step is held, and the window each check judges.
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
    /// Canary: promote after the last step passes (else wait for `promote`).
    #[serde(default = "yes")]
    pub auto_promote: bool,
    /// The header whose value routes a request (one value, one arm); else the V2 `id`.
    #[serde(default = "default_route_header")]
    pub route_header: String,
    #[serde(default)]
    pub gates: Gates,
}

/// The checks each interval's window must pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Requests each arm needs in the window; fewer is inconclusive (holds, never promotes).
    pub min_requests: u64,
    /// The candidate fails above the active version's error rate plus this (0.005: half a
    /// percentage point) ...
    pub max_error_rate_increase: f64,
    /// ... or above this error rate.
    pub max_error_rate: f64,
    /// The candidate fails when its p99 exceeds the active version's times this, plus
    /// `p99_slack_ms`.
    pub max_p99_ratio: f64,
    pub p99_slack_ms: f64,
    /// Shadow: the candidate fails when an output agrees less than this (none: not judged,
    /// since a retrained model may rightly disagree).
    pub min_agreement: Option<f64>,
    /// Numbers within this of each other agree.
    pub tolerance: f64,
    /// Failed checks in a row that abort.
    pub failures_to_abort: u32,
    /// Inconclusive this long, the experiment pauses for a person.
    pub max_inconclusive_seconds: u64,
    /// When both arms have truth enough to judge (`[quality]`), the candidate fails when a
    /// baselined metric is worse than the active version's by more than its warn drop.
    pub quality: bool,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_requests: 200,
            max_error_rate_increase: 0.005,
            max_error_rate: 0.01,
            max_p99_ratio: 1.2,
            p99_slack_ms: 5.0,
            min_agreement: None,
            tolerance: 1e-6,
            failures_to_abort: 2,
            max_inconclusive_seconds: 1800,
            quality: true,
        }
    }
}

fn one() -> f64 {
    1.0
}

fn default_shadow_share() -> f64 {
    0.1
}

fn yes() -> bool {
    true
}

fn default_steps() -> Vec<f64> {
    vec![5.0, 25.0, 50.0]
}

fn default_interval() -> u64 {
    60
}

fn default_route_header() -> String {
    "x-weir-route-key".into()
}

impl Settings {
    /// Refuse settings that cannot run.
    pub fn check(&self) -> Result<(), String> {
        let share = |v: f64| v.is_finite() && v > 0.0;
        if self.mode == Mode::Shadow && !(share(self.sample) && self.sample <= 1.0) {
            return Err(format!("sample is {}; it must be in (0, 1]", self.sample));
        }
        if !(share(self.shadow_share) && self.shadow_share <= 1.0) {
            return Err(format!(
                "shadow_share is {}; it must be in (0, 1]",
                self.shadow_share
            ));
        }
        if self.mode == Mode::Canary {
            if self.steps.is_empty() || self.steps.len() > 100 {
                return Err("steps: give 1 to 100 shares, e.g. [5, 25, 50]".into());
            }
            let rising = self.steps.windows(2).all(|w| w[0] < w[1]);
            if !rising || !self.steps.iter().all(|s| share(*s) && *s <= 100.0) {
                return Err(format!(
                    "steps {:?}: shares in (0, 100] percent, rising",
                    self.steps
                ));
            }
        }
        if !(1..=86_400).contains(&self.interval_seconds) {
            return Err("interval_seconds must be between 1 and 86400".into());
        }
        if self.route_header.is_empty()
            || axum::http::HeaderName::try_from(self.route_header.as_str()).is_err()
        {
            return Err(format!(
                "route_header '{}' is no header name",
                self.route_header
            ));
        }
        let g = &self.gates;
        let rates = [
            g.max_error_rate_increase,
            g.max_error_rate,
            g.tolerance,
            g.p99_slack_ms,
        ];
        let sound = rates.iter().all(|r| r.is_finite() && *r >= 0.0)
            && g.max_p99_ratio.is_finite()
            && g.max_p99_ratio >= 1.0
            && g.min_agreement.is_none_or(|a| (0.0..=1.0).contains(&a))
            && g.failures_to_abort > 0;
        if !sound {
            return Err(
                "gates: rates, slack and tolerance must be 0 or more, max_p99_ratio 1 \
                        or more, min_agreement in [0, 1], failures_to_abort 1 or more"
                    .into(),
            );
        }
        Ok(())
    }
}
