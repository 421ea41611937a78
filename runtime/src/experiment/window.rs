//! What an experiment saw in one interval (and since it began): per arm requests, errors and a
//! latency histogram; in shadow mode, how the answers agreed per output. And the gates that
//! judge an interval.

use std::collections::BTreeMap;

use serde::Serialize;

use super::compare::Agreement;
use super::settings::{Gates, Mode};

/// Latency buckets: each 5% wider than the last, from 10 µs to about a minute, so a p99 is
/// known within 5% (the latency gate compares at 1.2x) in fixed memory.
const GROWTH: f64 = 1.05;
const SMALLEST: f64 = 10e-6;
const BUCKETS: usize = 330;

/// One arm's requests.
#[derive(Clone, Debug)]
pub struct Arm {
    pub requests: u64,
    pub errors: u64,
    latency: Vec<u64>,
}

impl Default for Arm {
    fn default() -> Self {
        Arm {
            requests: 0,
            errors: 0,
            latency: vec![0; BUCKETS],
        }
    }
}

impl Arm {
    /// Count one request that took `seconds`, failed or not.
    pub fn add(&mut self, ok: bool, seconds: f64) {
        self.requests += 1;
        if !ok {
            self.errors += 1;
        }
        let bucket = ((seconds.max(SMALLEST) / SMALLEST).ln() / GROWTH.ln()).ceil() as usize;
        self.latency[bucket.min(BUCKETS - 1)] += 1;
    }

    pub fn merge(&mut self, other: &Arm) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine += theirs;
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The `q` quantile of latency in ms (the upper bound of its bucket), if any request came.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        let bucket = self.latency.iter().position(|n| {
            seen += n;
            seen >= rank
        })?;
        Some(SMALLEST * GROWTH.powi(bucket as i32) * 1e3)
    }

    /// As the status reports it.
    pub fn summary(&self) -> ArmSummary {
        ArmSummary {
            requests: self.requests,
            errors: self.errors,
            error_rate: self.error_rate(),
            p50_ms: self.quantile_ms(0.5),
            p99_ms: self.quantile_ms(0.99),
        }
    }
}

/// An arm in the status.
#[derive(Clone, Debug, Serialize)]
pub struct ArmSummary {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Both arms, and in shadow mode the agreement per output.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub active: Arm,
    pub candidate: Arm,
    pub agreement: BTreeMap<String, Agreement>,
}

impl Window {
    pub fn merge(&mut self, other: &Window) {
        self.active.merge(&other.active);
        self.candidate.merge(&other.candidate);
        for (output, agreement) in &other.agreement {
            self.agreement
                .entry(output.clone())
                .or_default()
                .merge(agreement);
        }
    }
}

/// What a check of one interval's window decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// Too little to judge: hold.
    Inconclusive(String),
    Fail(String),
}

/// Judge `window` by `gates`. `quality` is the quality gate's finding, when both arms have
/// enough truth to judge.
pub fn judge(window: &Window, gates: &Gates, mode: Mode, quality: Option<Verdict>) -> Verdict {
    let (a, c) = (&window.active, &window.candidate);
    if a.requests < gates.min_requests || c.requests < gates.min_requests {
        return Verdict::Inconclusive(format!(
            "{} requests on the active version and {} on the candidate; each needs {}",
            a.requests, c.requests, gates.min_requests
        ));
    }
    let limit = (a.error_rate() + gates.max_error_rate_increase).max(gates.max_error_rate);
    if c.error_rate() > limit {
        return Verdict::Fail(format!(
            "the candidate's error rate {:.2}% is above {:.2}% (the active version's {:.2}%)",
            100.0 * c.error_rate(),
            100.0 * limit,
            100.0 * a.error_rate()
        ));
    }
    if let (Some(pa), Some(pc)) = (a.quantile_ms(0.99), c.quantile_ms(0.99)) {
        let limit = pa * gates.max_p99_ratio + gates.p99_slack_ms;
        if pc > limit {
            return Verdict::Fail(format!(
                "the candidate's p99 {pc:.1} ms is above {limit:.1} ms (the active version's \
                 {pa:.1} ms × {} + {} ms)",
                gates.max_p99_ratio, gates.p99_slack_ms
            ));
        }
    }
    if mode == Mode::Shadow
        && let Some(least) = gates.min_agreement
    {
        for (output, agreement) in &window.agreement {
            if agreement.share() < least {
                return Verdict::Fail(format!(
                    "output '{output}' agrees on {:.1}% of the compared, under {:.1}%",
                    100.0 * agreement.share(),
                    100.0 * least
                ));
            }
        }
    }
    match quality {
        Some(Verdict::Fail(reason)) => Verdict::Fail(reason),
        _ => Verdict::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(requests: u64, errors: u64, seconds: f64) -> Arm {
        let mut arm = Arm::default();
        for i in 0..requests {
            arm.add(i >= errors, seconds);
        }
        arm
    }

    #[test]
    fn gates_hold_on_little_data_and_fail_on_errors_and_latency() {
        let gates = Gates::default();
        let judged = |active: Arm, candidate: Arm| {
            let window = Window {
                active,
                candidate,
                agreement: BTreeMap::new(),
            };
            judge(&window, &gates, Mode::Canary, None)
        };
        assert!(matches!(
            judged(arm(300, 0, 0.001), arm(100, 0, 0.001)),
            Verdict::Inconclusive(_)
        ));
        assert_eq!(
            judged(arm(300, 0, 0.001), arm(300, 0, 0.001)),
            Verdict::Pass
        );
        assert!(
            matches!(judged(arm(300, 0, 0.001), arm(300, 6, 0.001)), Verdict::Fail(r) if r.contains("error rate"))
        );
        assert!(
            matches!(judged(arm(300, 0, 0.001), arm(300, 0, 0.010)), Verdict::Fail(r) if r.contains("p99"))
        );
        assert_eq!(
            judged(arm(300, 0, 0.001), arm(300, 0, 0.005)),
            Verdict::Pass,
            "within 5 ms of slack"
        );
    }

    #[test]
    fn a_quantile_is_known_within_five_percent() {
        let mut arm = Arm::default();
        for ms in 1..=100 {
            arm.add(true, ms as f64 / 1000.0);
        }
        let p99 = arm.quantile_ms(0.99).unwrap();
        assert!((99.0..=99.0 * 1.05).contains(&p99), "{p99}");
    }
}
