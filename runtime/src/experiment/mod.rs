//! Experiments: a pipeline's active version against a candidate on live traffic. In `shadow`
//! mode the candidate also runs a sample of requests after the active version answered them,
//! and the two answers are compared; in `canary` mode it answers a share of requests, raised
//! step by step. Every interval, gates judge that interval's window: too little data holds,
//! failed checks in a row abort, a canary that passes its last step is promoted. The
//! experiment's record is in the store; a restart resumes its step with a fresh window.

pub mod compare;
pub mod settings;
pub mod window;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::http::HeaderName;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::store::Store;
use crate::tensor::{Datatype, Tensor};
use settings::{Mode, Settings};
use window::{Verdict, Window};

/// Shadow copies waiting for the shadow thread; beyond this they are dropped and counted.
const SHADOW_QUEUE: usize = 64;

/// How often an idle shadow thread looks for copies.
const POLL: Duration = Duration::from_millis(2);

/// Disagreeing request pairs kept for a person to read.
const KEPT_DISAGREEMENTS: usize = 20;

/// Decisions kept in an experiment's history.
const HISTORY: usize = 100;

/// Elements of an output a kept disagreement shows.
const SHOWN_ELEMENTS: usize = 32;

/// Where an experiment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    /// Inconclusive too long: traffic stays as it is until a person promotes or aborts.
    Paused,
    Promoted,
    Aborted,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Running,
        State::Paused,
        State::Promoted,
        State::Aborted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Promoted => "promoted",
            State::Aborted => "aborted",
        }
    }

    /// Whether the candidate still gets traffic.
    fn live(self) -> bool {
        matches!(self, State::Running | State::Paused)
    }
}

/// Which version answers, or runs, a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    Active,
    Candidate,
}

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Arm::Active => "active",
            Arm::Candidate => "candidate",
        }
    }
}

/// What the store keeps of an experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub settings: Settings,
    /// The version active when it started.
    pub active: u64,
    pub state: State,
    /// Canary: the step now (an index into `settings.steps`).
    pub step: usize,
    /// Failed checks in a row.
    pub failed_checks: u32,
    /// Why it ended or paused.
    pub reason: Option<String>,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub history: Vec<Decision>,
}

/// One decision, for the history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decision {
    pub at: f64,
    pub step: usize,
    pub outcome: String,
    pub reason: String,
}

/// One pipeline's experiment while the server runs.
pub struct Experiment {
    pub pipeline: String,
    candidate: Arc<Pipeline>,
    /// The settings' mode and routing header, which never change while it runs, read by every
    /// request without the record's lock.
    mode: Mode,
    route_header: HeaderName,
    record: Mutex<Record>,
    seen: Mutex<Seen>,
    /// For requests with no routing key: spread by a counter.
    unkeyed: AtomicU64,
    dropped_full: AtomicU64,
    dropped_pressure: AtomicU64,
}

/// What the experiment saw: this interval, and since it (or this process) began.
struct Seen {
    interval: Window,
    total: Window,
    interval_started: Instant,
    inconclusive_since: Option<Instant>,
    disagreements: VecDeque<Value>,
}

/// A request the candidate runs as a shadow.
struct ShadowJob {
    experiment: Arc<Experiment>,
    body: Bytes,
    header_length: Option<String>,
    id: Option<String>,
    /// The active version's outputs.
    active: Vec<Tensor>,
}

/// Every pipeline's experiment, and the shadow thread's queue.
pub struct Experiments {
    store: Arc<Store>,
    running: RwLock<BTreeMap<String, Arc<Experiment>>>,
    /// Shadow copies waiting. A request pushes under a short lock and never wakes the shadow
    /// thread, which polls (a wake per copy cost the request path more than the copy's run).
    shadows: Arc<Mutex<VecDeque<ShadowJob>>>,
}

impl Experiments {
    /// The experiments recorded in `store`, with `load` giving each one's retained candidate;
    /// a running one resumes its step with a fresh window.
    pub fn open(
        store: Arc<Store>,
        load: impl Fn(&str, u64) -> Option<Arc<Pipeline>>,
    ) -> anyhow::Result<Experiments> {
        let shadows = Arc::new(Mutex::new(VecDeque::new()));
        let jobs = Arc::downgrade(&shadows);
        std::thread::Builder::new()
            .name("weir-shadow".into())
            .spawn(move || run_shadows(jobs))?;
        let mut running = BTreeMap::new();
        for (pipeline, text) in store.experiments()? {
            let record: Record = serde_json::from_str(&text)?;
            let Some(candidate) = load(&pipeline, record.settings.candidate) else {
                tracing::error!(%pipeline, "the experiment's candidate is not retained: ended");
                continue;
            };
            if record.state.live() {
                tracing::info!(%pipeline, state = record.state.name(), step = record.step, "experiment resumed with a fresh window");
            }
            running.insert(
                pipeline.clone(),
                Arc::new(Experiment::new(pipeline, candidate, record)),
            );
        }
        Ok(Experiments {
            store,
            running: RwLock::new(running),
            shadows,
        })
    }

    /// `pipeline`'s experiment, if one is live (running or paused).
    pub fn live(&self, pipeline: &str) -> Option<Arc<Experiment>> {
        let running = self.running.read().unwrap();
        running.get(pipeline).filter(|e| e.state().live()).cloned()
    }

    /// `pipeline`'s experiment, live or ended.
    pub fn get(&self, pipeline: &str) -> Result<Arc<Experiment>, Error> {
        let running = self.running.read().unwrap();
        running
            .get(pipeline)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("pipeline '{pipeline}' has no experiment")))
    }

    /// Every experiment.
    pub fn all(&self) -> Vec<Arc<Experiment>> {
        self.running.read().unwrap().values().cloned().collect()
    }

    /// Start an experiment of `pipeline` (active version `active`) against `candidate`.
    /// Refused while another one is live.
    pub fn start(
        &self,
        pipeline: &str,
        active: u64,
        candidate: Arc<Pipeline>,
        settings: Settings,
    ) -> Result<Arc<Experiment>, Error> {
        settings.check().map_err(Error::InvalidInput)?;
        if let Some(live) = self.live(pipeline) {
            return Err(live.conflict());
        }
        if settings.mode == Mode::Canary && candidate.number == active {
            return Err(Error::InvalidInput(format!(
                "version {active} is the active version: a canary needs another one (an A/A \
                 comparison is a shadow)"
            )));
        }
        let record = Record {
            settings,
            active,
            state: State::Running,
            step: 0,
            failed_checks: 0,
            reason: None,
            started_at: crate::alerts::now(),
            history: Vec::new(),
        };
        let experiment = Arc::new(Experiment::new(pipeline.to_owned(), candidate, record));
        experiment.note("started", "");
        self.save(&experiment)?;
        self.running
            .write()
            .unwrap()
            .insert(pipeline.to_owned(), experiment.clone());
        tracing::info!(pipeline, "experiment started");
        Ok(experiment)
    }

    /// Refuse a swap or rollback of `pipeline` while an experiment is live, unless `force`,
    /// which ends it as superseded.
    pub fn guard(&self, pipeline: &str, force: bool) -> Result<(), Error> {
        let Some(live) = self.live(pipeline) else {
            return Ok(());
        };
        if !force {
            return Err(live.conflict());
        }
        self.end(&live, State::Aborted, "superseded", None)
    }

    /// End `experiment` in `state` for `reason`. The record is written first (when promoting,
    /// with the new active version in the same transaction), then `promote`'s version
    /// `switch`es in, and only then does the experiment stop routing: no request falls back to
    /// the old version in between.
    pub fn end(
        &self,
        experiment: &Experiment,
        state: State,
        reason: &str,
        promote: Option<(u64, &dyn Fn())>,
    ) -> Result<(), Error> {
        let mut ended = experiment.record.lock().unwrap().clone();
        ended.state = state;
        ended.reason = Some(reason.to_owned());
        let step = ended.step;
        push_history(&mut ended, state.name(), reason, step);
        self.write(
            &experiment.pipeline,
            &ended,
            promote.map(|(version, _)| version),
        )?;
        if let Some((_, switch)) = promote {
            switch();
        }
        *experiment.record.lock().unwrap() = ended;
        tracing::warn!(pipeline = %experiment.pipeline, state = state.name(), reason, "experiment ended");
        Ok(())
    }

    /// Write `experiment`'s record as it is.
    fn save(&self, experiment: &Experiment) -> Result<(), Error> {
        let record = experiment.record.lock().unwrap().clone();
        self.write(&experiment.pipeline, &record, None)
    }

    /// Write `record` (and make `activate` the active version) at once.
    fn write(&self, pipeline: &str, record: &Record, activate: Option<u64>) -> Result<(), Error> {
        let text = serde_json::to_string(record).map_err(|e| Error::StageFailed(e.to_string()))?;
        (self.store.set_experiment(pipeline, &text, activate)).map_err(Error::refused)
    }

    /// Judge every live experiment whose interval is over; what each decided. A canary that
    /// should be promoted is returned for the registry to promote.
    pub fn check(&self, quality: &crate::quality::Quality) -> Vec<Arc<Experiment>> {
        let mut promote = Vec::new();
        for experiment in self.all() {
            if !experiment.state().live() {
                continue;
            }
            let Some(window) = experiment.close_interval() else {
                continue;
            };
            let verdict = experiment.judge(&window, quality);
            match experiment.apply(verdict) {
                Next::Stay => {}
                Next::Save => {
                    if let Err(e) = self.save(&experiment) {
                        tracing::error!(error = %e, "saving the experiment failed");
                    }
                }
                Next::Abort(reason) => {
                    if let Err(e) = self.end(&experiment, State::Aborted, &reason, None) {
                        tracing::error!(error = %e, "ending the experiment failed");
                    }
                }
                Next::Promote => promote.push(experiment),
            }
        }
        promote
    }

    /// Queue a shadow run of the request for `experiment`'s candidate; dropped and counted
    /// when the queue is full (or, when its turn comes, if the server is busy).
    pub fn shadow(&self, experiment: &Arc<Experiment>, request: ShadowRequest) {
        let job = ShadowJob {
            experiment: experiment.clone(),
            body: request.body,
            header_length: request.header_length,
            id: request.id,
            active: request.active,
        };
        let mut queue = self.shadows.lock().unwrap();
        if queue.len() < SHADOW_QUEUE {
            queue.push_back(job);
        } else {
            drop(queue);
            experiment.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a shadow copy needs of the request the active version answered.
pub struct ShadowRequest {
    pub body: Bytes,
    pub header_length: Option<String>,
    pub id: Option<String>,
    pub active: Vec<Tensor>,
}

/// What a check leads to.
enum Next {
    Stay,
    Save,
    Abort(String),
    Promote,
}

impl Experiment {
    fn new(pipeline: String, candidate: Arc<Pipeline>, record: Record) -> Experiment {
        // Checked when the experiment started.
        let route_header = HeaderName::try_from(record.settings.route_header.as_str())
            .unwrap_or_else(|_| HeaderName::from_static("x-weir-route-key"));
        Experiment {
            pipeline,
            candidate,
            mode: record.settings.mode,
            route_header,
            record: Mutex::new(record),
            seen: Mutex::new(Seen {
                interval: Window::default(),
                total: Window::default(),
                interval_started: Instant::now(),
                inconclusive_since: None,
                disagreements: VecDeque::new(),
            }),
            unkeyed: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_pressure: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> State {
        self.record.lock().unwrap().state
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The candidate version.
    pub fn candidate(&self) -> &Arc<Pipeline> {
        &self.candidate
    }

    /// The header that routes requests.
    pub fn route_header(&self) -> &HeaderName {
        &self.route_header
    }

    /// The 409 for a change while this experiment is live.
    fn conflict(&self) -> Error {
        let record = self.record.lock().unwrap();
        Error::Conflict(format!(
            "pipeline '{}' has a {} {:?} experiment against version {}: promote or abort it \
             first, or force the change (which ends it as superseded)",
            self.pipeline,
            record.state.name(),
            record.settings.mode,
            record.settings.candidate
        ))
    }

    /// The arm that answers (canary) or whether the candidate also runs (shadow) a request
    /// with routing `key` (the header's value, else the V2 id; none: spread by a counter). A
    /// key's hash places it in [0, 10000); the candidate takes those under its share, so
    /// raising the share only moves more keys to it.
    pub fn route(&self, key: Option<&str>) -> Arm {
        let bucket = match key {
            Some(key) => bucket(key.as_bytes()),
            None => bucket(&self.unkeyed.fetch_add(1, Ordering::Relaxed).to_le_bytes()),
        };
        let record = self.record.lock().unwrap();
        let share = match record.settings.mode {
            Mode::Shadow => record.settings.sample,
            Mode::Canary => record.settings.steps[record.step] / 100.0,
        };
        if f64::from(bucket) < share * 10_000.0 {
            Arm::Candidate
        } else {
            Arm::Active
        }
    }

    /// Count a request the active version (or, in a canary, the candidate) answered.
    pub fn count(&self, arm: Arm, ok: bool, seconds: f64) {
        let mut guard = self.seen.lock().unwrap();
        let seen = &mut *guard;
        for window in [&mut seen.interval, &mut seen.total] {
            match arm {
                Arm::Active => window.active.add(ok, seconds),
                Arm::Candidate => window.candidate.add(ok, seconds),
            }
        }
    }

    /// The interval's window once the interval is over (a fresh one starts), else `None`.
    fn close_interval(&self) -> Option<Window> {
        let interval = Duration::from_secs(self.record.lock().unwrap().settings.interval_seconds);
        let mut seen = self.seen.lock().unwrap();
        if seen.interval_started.elapsed() < interval {
            return None;
        }
        seen.interval_started = Instant::now();
        Some(std::mem::take(&mut seen.interval))
    }

    /// The gates' verdict on `window`, the quality gate included when both arms have truth
    /// enough.
    fn judge(&self, window: &Window, quality: &crate::quality::Quality) -> Verdict {
        let record = self.record.lock().unwrap();
        let gates = &record.settings.gates;
        let quality = gates
            .quality
            .then(|| quality.compare(&self.pipeline, record.active, record.settings.candidate))
            .flatten()
            .map(|worse| match worse {
                Some(reason) => Verdict::Fail(reason),
                None => Verdict::Pass,
            });
        window::judge(window, gates, record.settings.mode, quality)
    }

    /// Apply a check's verdict to the record.
    fn apply(&self, verdict: Verdict) -> Next {
        let mut record = self.record.lock().unwrap();
        let gates = record.settings.gates.clone();
        let (outcome, reason, next) = match verdict {
            Verdict::Inconclusive(reason) => {
                let mut seen = self.seen.lock().unwrap();
                let since = *seen.inconclusive_since.get_or_insert_with(Instant::now);
                let waited = since.elapsed() >= Duration::from_secs(gates.max_inconclusive_seconds);
                if waited && record.state == State::Running {
                    record.state = State::Paused;
                    record.reason = Some(format!(
                        "inconclusive for over {} s: {reason}",
                        gates.max_inconclusive_seconds
                    ));
                    ("paused", reason, Next::Save)
                } else {
                    ("inconclusive", reason, Next::Stay)
                }
            }
            Verdict::Fail(reason) => {
                self.seen.lock().unwrap().inconclusive_since = None;
                record.failed_checks += 1;
                if record.failed_checks >= gates.failures_to_abort {
                    drop(record);
                    return Next::Abort(reason);
                }
                let note = format!(
                    "{reason} ({} of {} failed checks)",
                    record.failed_checks, gates.failures_to_abort
                );
                ("fail", note, Next::Save)
            }
            Verdict::Pass => {
                self.seen.lock().unwrap().inconclusive_since = None;
                record.failed_checks = 0;
                let last = record.step + 1 >= record.settings.steps.len();
                match record.settings.mode {
                    Mode::Canary if !last => {
                        record.step += 1;
                        let share = record.settings.steps[record.step];
                        (
                            "pass",
                            format!("step {} to {share}%", record.step),
                            Next::Save,
                        )
                    }
                    Mode::Canary
                        if record.settings.auto_promote && record.state == State::Running =>
                    {
                        drop(record);
                        return Next::Promote;
                    }
                    Mode::Canary => (
                        "pass",
                        "the last step passed: waiting for promote".into(),
                        Next::Save,
                    ),
                    Mode::Shadow => ("pass", String::new(), Next::Stay),
                }
            }
        };
        let step = record.step;
        push_history(&mut record, outcome, &reason, step);
        tracing::info!(pipeline = %self.pipeline, outcome, reason, step, "experiment check");
        next
    }

    /// Add a decision to the history.
    fn note(&self, outcome: &str, reason: &str) {
        let mut record = self.record.lock().unwrap();
        let step = record.step;
        push_history(&mut record, outcome, reason, step);
    }

    /// The status: settings, state, both arms since the start, the interval so far, and in
    /// shadow mode the agreement per output with the kept disagreements.
    pub fn status(&self) -> Value {
        let record = self.record.lock().unwrap().clone();
        let seen = self.seen.lock().unwrap();
        let share = match record.settings.mode {
            Mode::Shadow => record.settings.sample * 100.0,
            Mode::Canary => record.settings.steps[record.step],
        };
        let agreement: BTreeMap<&String, Value> = (seen.total.agreement.iter())
            .map(|(output, a)| {
                (
                    output,
                    json!({ "share": a.share(), "compared": a.compared,
                                 "mean_difference": a.mean_difference(),
                                 "max_difference": a.max_difference }),
                )
            })
            .collect();
        let left = (Duration::from_secs(record.settings.interval_seconds))
            .saturating_sub(seen.interval_started.elapsed());
        json!({
            "pipeline": self.pipeline,
            "mode": record.settings.mode,
            "active": record.active,
            "candidate": record.settings.candidate,
            "state": record.state,
            "reason": record.reason,
            "step": record.step,
            "candidate_share_percent": share,
            "started_at": record.started_at,
            "arms": { "active": seen.total.active.summary(), "candidate": seen.total.candidate.summary() },
            "interval": {
                "active": seen.interval.active.summary(),
                "candidate": seen.interval.candidate.summary(),
                "seconds_left": left.as_secs_f64(),
            },
            "agreement": agreement,
            "disagreements": seen.disagreements,
            "shadow_dropped": self.dropped(),
            "settings": record.settings,
            "history": record.history,
        })
    }

    /// Shadow copies dropped, by reason.
    pub fn dropped(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("queue_full", self.dropped_full.load(Ordering::Relaxed)),
            ("pressure", self.dropped_pressure.load(Ordering::Relaxed)),
        ])
    }

    /// The agreement per output since the start.
    pub fn agreement(&self) -> Vec<(String, f64)> {
        let seen = self.seen.lock().unwrap();
        (seen.total.agreement.iter())
            .map(|(output, a)| (output.clone(), a.share()))
            .collect()
    }

    /// Count a shadow run that took `seconds` and, when it answered, its comparison. Locks
    /// are held only to add: this runs on the low-priority shadow thread, which must not keep
    /// a lock the request path waits for while the scheduler runs others.
    fn count_shadow(&self, job: &ShadowJob, seconds: f64, outputs: Option<Vec<Tensor>>) {
        let tolerance = self.record.lock().unwrap().settings.gates.tolerance;
        let compared = (outputs.as_ref()).map(|o| compare::compare(&job.active, o, tolerance));
        let example = (compared.as_ref())
            .zip(outputs.as_deref())
            .and_then(|(compared, outputs)| disagreement(job, compared, outputs));
        let mut guard = self.seen.lock().unwrap();
        let seen = &mut *guard;
        for window in [&mut seen.interval, &mut seen.total] {
            window.candidate.add(outputs.is_some(), seconds);
            for (output, agreement) in compared.iter().flatten() {
                let total = window.agreement.entry(output.clone()).or_default();
                total.merge(agreement);
            }
        }
        if let Some(example) = example {
            if seen.disagreements.len() == KEPT_DISAGREEMENTS {
                seen.disagreements.pop_front();
            }
            seen.disagreements.push_back(example);
        }
    }
}

/// A disagreeing pair as a person reads it: the request, and both versions' outputs that
/// differ; `None` when they agree everywhere.
fn disagreement(
    job: &ShadowJob,
    compared: &BTreeMap<String, compare::Agreement>,
    outputs: &[Tensor],
) -> Option<Value> {
    let differing: Vec<&String> = (compared.iter())
        .filter(|(_, a)| a.agreed < a.compared)
        .map(|(output, _)| output)
        .collect();
    if differing.is_empty() {
        return None;
    }
    let show = |tensors: &[Tensor]| -> Value {
        (tensors.iter())
            .filter(|t| differing.contains(&&t.name))
            .map(|t| (t.name.clone(), shown(t)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    Some(json!({
        "id": job.id,
        "request": request_shown(&job.body, job.header_length.is_some()),
        "active": show(&job.active),
        "candidate": show(outputs),
    }))
}

fn push_history(record: &mut Record, outcome: &str, reason: &str, step: usize) {
    if record.history.len() == HISTORY {
        record.history.remove(0);
    }
    record.history.push(Decision {
        at: crate::alerts::now(),
        step,
        outcome: outcome.to_owned(),
        reason: reason.to_owned(),
    });
}

/// A routing key's place in [0, 10000), the same in every process and version.
fn bucket(key: &[u8]) -> u32 {
    let hash = Sha256::digest(key);
    u32::from_le_bytes([hash[0], hash[1], hash[2], hash[3]]) % 10_000
}

/// An output's first elements, as JSON.
fn shown(tensor: &Tensor) -> Value {
    if tensor.datatype == Datatype::Bytes {
        let strings = tensor.strings().unwrap_or_default();
        return json!(strings.into_iter().take(SHOWN_ELEMENTS).collect::<Vec<_>>());
    }
    json!(
        tensor
            .numbers()
            .into_iter()
            .take(SHOWN_ELEMENTS)
            .collect::<Vec<_>>()
    )
}

/// A request as a kept disagreement shows it: its JSON (up to 4 KiB), or its size.
fn request_shown(body: &Bytes, binary: bool) -> Value {
    if binary || body.len() > 4096 {
        return json!({ "bytes": body.len() });
    }
    serde_json::from_slice(body).unwrap_or_else(|_| json!({ "bytes": body.len() }))
}

/// How often the shadow thread measures how busy the rest of the server is.
const LOAD_SAMPLE: Duration = Duration::from_millis(100);

/// The shadow thread: runs queued copies one at a time on its own runtime. While the rest of
/// the server keeps more than half the cores busy it keeps to the experiment's `shadow_share`
/// of a core,
/// skipping (and counting) the copies beyond it, so the active version's requests keep the
/// cores; otherwise it runs all it can. Requests in flight were no measure: under load the
/// shadow thread's own work kept them waiting in sockets, unadmitted, and it took a core. (Running the thread at a low CPU priority instead let it be descheduled while
/// holding locks the requests need, in wasmtime's pool or the kernel's memory map: p99 at
/// c=8 went from 2 to 70–150 ms.)
fn run_shadows(jobs: Weak<Mutex<VecDeque<ShadowJob>>>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the shadow thread's runtime");
    let mut budget = Budget::default();
    let mut load = Load::default();
    // Until the experiments are dropped (a test's server), polling every 2 ms when idle.
    while let Some(queue) = jobs.upgrade() {
        let next = queue.lock().unwrap().pop_front();
        drop(queue);
        let Some(job) = next else {
            std::thread::sleep(POLL);
            continue;
        };
        let share = (job.experiment.record.lock().unwrap())
            .settings
            .shadow_share;
        if share < 1.0 && load.busy() && budget.spent(share) {
            job.experiment
                .dropped_pressure
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let started = Instant::now();
        let outputs = runtime.block_on(shadow_outputs(&job));
        budget.spend(started.elapsed());
        let seconds = started.elapsed().as_secs_f64();
        job.experiment.count_shadow(&job, seconds, outputs.ok());
    }
}

/// How busy the rest of the process keeps the cores: its CPU time, less the shadow thread's,
/// over the last [`LOAD_SAMPLE`].
struct Load {
    since: Instant,
    process: Duration,
    own: Duration,
    busy: bool,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            since: Instant::now(),
            process: cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID),
            own: cpu_time(libc::CLOCK_THREAD_CPUTIME_ID),
            busy: false,
        }
    }
}

impl Load {
    /// Whether the rest of the server used more than half the cores over the last sample.
    fn busy(&mut self) -> bool {
        let elapsed = self.since.elapsed();
        if elapsed >= LOAD_SAMPLE {
            let now = Load::default();
            let others = (now.process - self.process).saturating_sub(now.own - self.own);
            let cores = crate::cores() as f64;
            let busy = others.as_secs_f64() > 0.5 * cores * elapsed.as_secs_f64();
            *self = Load { busy, ..now };
        }
        self.busy
    }
}

/// The CPU time `clock` (the process's or this thread's) has counted.
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid timespec for clock_gettime to fill; the clock ids are the
    // POSIX CPU-time clocks, which every supported platform has.
    unsafe { libc::clock_gettime(clock, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// The shadow thread's time in the current second.
struct Budget {
    since: Instant,
    used: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            since: Instant::now(),
            used: Duration::ZERO,
        }
    }
}

impl Budget {
    /// Whether the copies took `share` of the time since the second began.
    fn spent(&mut self, share: f64) -> bool {
        if self.since.elapsed() >= Duration::from_secs(1) {
            *self = Budget::default();
        }
        self.used.as_secs_f64() >= share * self.since.elapsed().as_secs_f64().max(0.01)
    }

    fn spend(&mut self, took: Duration) {
        self.used += took;
    }
}

/// The candidate's declared outputs for the job's request.
async fn shadow_outputs(job: &ShadowJob) -> Result<Vec<Tensor>, Error> {
    let candidate = &job.experiment.candidate;
    let limits = &candidate.spec.limits;
    let request = crate::protocol::decode_request(
        &job.body,
        job.header_length.as_deref(),
        limits.max_tensor_elements,
    )?;
    Ok(candidate.run_shadow(request.batch).await?.tensors)
}
