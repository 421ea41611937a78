//! The server process over time: graceful shutdown on SIGTERM, and a soak at steady load with
//! resident memory flat after warm-up.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::Served;
use crate::support::{faulty_manifest_file, repo_root};

fn iris_request() -> String {
    json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] }] })
        .to_string()
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let data = tempfile::tempdir().unwrap();
    // Spins for 800 ms on requests with the `fault` parameter.
    let busy = faulty_manifest_file(
        data.path(),
        "busy",
        "mode = \"busy\", ms = 800, on_request = true",
    );
    let mut served = Served::start_with(
        data.path(),
        &[&busy, &repo_root().join("examples/iris/pipeline.toml")],
    );
    let addr = served.addr.clone();
    let in_flight = std::thread::spawn(move || {
        let body = json!({ "parameters": { "fault": true },
            "inputs": [{ "name": "x", "shape": [1], "datatype": "INT8", "data": [1] }] });
        reqwest::blocking::Client::new()
            .post(format!("http://{addr}/v2/models/busy/infer"))
            .body(body.to_string())
            .send()
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    served.wait_for_log(|r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    });
    let refused = reqwest::blocking::Client::new()
        .post(format!("http://{}/v2/models/iris/infer", served.addr))
        .body(iris_request())
        .send();
    assert!(
        refused.is_err(),
        "a new connection after SIGTERM was accepted"
    );
    assert_eq!(
        in_flight.join().unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    let status = served.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(5));
    served.wait_for_log(|r| r["message"] == "stopped");
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Steady load for `WEIR_SOAK_SECS` (default 60) from 4 clients; zero errors, and resident
/// memory after warm-up (the first fifth) stays within 10% (or 8 MiB) of where it started.
#[test]
fn soak_at_steady_load_keeps_memory_flat_and_answers_every_request() {
    let seconds: u64 = std::env::var("WEIR_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(
        data.path(),
        &repo_root().join("examples/iris/pipeline.toml"),
    );
    let pid = served.child.id();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let warm = Instant::now() + Duration::from_secs(seconds / 5);
    let url = format!("http://{}/v2/models/iris/infer", served.addr);
    let (ok, failed, samples) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let url = &url;
                scope.spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        match client.post(url).body(iris_request()).send() {
                            Ok(r) if r.status().is_success() => ok += 1,
                            _ => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            if Instant::now() >= warm {
                samples.push(rss_kib(pid));
            }
        }
        let (ok, failed) = clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        (ok, failed, samples)
    });
    let first = samples[0];
    let peak = *samples.iter().max().unwrap();
    println!(
        "soak: {seconds} s, {ok} requests ({} req/s), {failed} failed, RSS after warm-up {first} KiB -> peak {peak} KiB",
        ok / seconds
    );
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 1000, "only {ok} requests in {seconds} s");
    let allowed = (first / 10).max(8 << 10);
    assert!(
        peak <= first + allowed,
        "RSS grew from {first} KiB to {peak} KiB under steady load"
    );
}
