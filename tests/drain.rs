//! Graceful drain of the real binary: SIGTERM during a steady load. Readiness turns false at once while requests (and
//! new connections) are still served for the pre-stop delay; then the listeners close, what was accepted is answered,
//! and the process exits within its deadline. No accepted request fails.

use bytes::Bytes;
use crate::common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn identity_body(seed: f32) -> Bytes {
    let data: Vec<f32> = (0..256).map(|i| seed + i as f32).collect();
    Bytes::from(json!({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": data}]}).to_string())
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    ok_after_signal: AtomicU64,
    /// Answers other than 200: accepted requests that failed.
    failed: parking_lot::Mutex<Vec<String>>,
    /// Connection refused or closed before a request was read: not accepted, so not failed.
    not_accepted: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_fails_no_accepted_request() {
    let repo = TempRepo::new().link("identity");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[shutdown]\npre_stop_delay = \"1s\"\ndrain_timeout = \"5s\"\n").expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--models")
        .arg(repo.path())
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--scaler", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("sluice listening http=") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let http = rx.recv_timeout(Duration::from_secs(60)).expect("the server did not start");

    let tally = Arc::new(Tally::default());
    let signalled = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut clients = Vec::new();
    for c in 0..4 {
        let (tally, signalled, http) = (tally.clone(), signalled.clone(), http.clone());
        clients.push(tokio::spawn(async move {
            // Keep-alive connections, as a load balancer or client library keeps them.
            let client = client();
            let mut refused_in_a_row = 0;
            let mut i = 0u64;
            while Instant::now() < deadline && refused_in_a_row < 20 {
                i += 1;
                let req = Request::post(format!("http://{http}/v2/models/identity/infer"))
                    .header("content-type", "application/json")
                    .body(Full::new(identity_body((c * 100_000 + i) as f32)))
                    .expect("request");
                match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(r)) => {
                        refused_in_a_row = 0;
                        let status = r.status();
                        let body = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        if status == StatusCode::OK {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            if signalled.load(Ordering::Relaxed) {
                                tally.ok_after_signal.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            tally.failed.lock().push(format!("{status}: {}", String::from_utf8_lossy(&body)));
                        }
                    }
                    Ok(Err(_)) => {
                        tally.not_accepted.fetch_add(1, Ordering::Relaxed);
                        refused_in_a_row += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => tally.failed.lock().push("no answer within 10 s".into()),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tally.ok.load(Ordering::Relaxed) > 0, "no request succeeded before the signal");

    let signalled_at = Instant::now();
    signalled.store(true, Ordering::Relaxed);
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    // Readiness: a fresh connection every few ms (new connections are still accepted during the pre-stop delay).
    let probe = client();
    let not_ready_after = loop {
        let uri: hyper::Uri = format!("http://{http}/v2/health/ready").parse().expect("uri");
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), probe.get(uri)).await {
            if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                break signalled_at.elapsed();
            }
        }
        assert!(signalled_at.elapsed() < Duration::from_secs(2), "readiness still true 2 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let exited = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some((status, started.elapsed()));
            }
            if started.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    for c in clients {
        c.await.expect("client");
    }
    let (status, _) = exited.await.expect("waiter").expect("the server did not exit within 15 s of SIGTERM");
    let exit_after = signalled_at.elapsed();

    let failed = tally.failed.lock().clone();
    assert!(failed.is_empty(), "accepted requests failed: {:?}", &failed[..failed.len().min(5)]);
    assert!(status.success(), "exit status {status:?}");
    assert!(not_ready_after < Duration::from_millis(100), "readiness turned false {not_ready_after:?} after SIGTERM");
    // Pre-stop delay 1 s + drain (immediate: nothing slow is in flight) + flush, with room for a busy machine.
    assert!(exit_after < Duration::from_millis(1000 + 5000 + 1500), "exited {exit_after:?} after SIGTERM");
    assert!(exit_after >= Duration::from_millis(900), "exited {exit_after:?} after SIGTERM, before the pre-stop delay was over");
    let after = tally.ok_after_signal.load(Ordering::Relaxed);
    assert!(after > 0, "no request was served during the pre-stop delay");
    eprintln!(
        "{} requests answered 200 ({after} after SIGTERM), {} not accepted after the listeners closed; readiness false after {not_ready_after:?}; exit after {exit_after:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.not_accepted.load(Ordering::Relaxed)
    );
}
