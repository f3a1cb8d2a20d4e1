//! One short run on the local stack, as the README's command does it: the three reports come out,
//! the HTML one loads nothing from the internet, all of them carry our figures, and goose's throttle
//! holds.

use std::process::Command;

#[test]
fn a_short_run_writes_complete_offline_reports() {
    let directory = tempfile::tempdir().unwrap_or_else(|error| panic!("temporary directory: {error}"));
    let path = |name: &str| directory.path().join(name).to_string_lossy().into_owned();
    let (html, markdown, json) = (path("report.html"), path("report.md"), path("report.json"));
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--start-service",
            "--orders",
            "200",
            "--probe-orders",
            "30",
            "--probe-rate",
            "20",
        ])
        .args([
            "--weights",
            "mix=2,cold-reads=1",
            "-u",
            "3",
            "-t",
            "3s",
            "-q",
            "--throttle-requests",
            "100",
        ])
        .args([
            "--report-file",
            &html,
            "--report-file",
            &markdown,
            "--report-file",
            &json,
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|error| panic!("cannot run loadtest: {error}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadtest failed:\n{stderr}");

    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{path}: {error}"));
    let html = read(&html);
    assert!(
        !html.contains("<script src=\"http"),
        "the HTML report loads a script from the internet"
    );
    assert!(html.contains("echarts") && html.contains("id=\"orders-loadtest\""));
    assert!(html.contains("GetOrder (warm)") && html.contains("UpdateOrderStatus"));
    assert!(read(&markdown).contains("## Orders service: setup, cache, staleness, memory"));

    let report: serde_json::Value =
        serde_json::from_str(&read(&json)).unwrap_or_else(|error| panic!("the JSON report: {error}"));
    let ours = &report["orders_loadtest"];
    assert!(
        ours["staleness"]["converged"].as_u64().is_some_and(|n| n > 0),
        "{ours}"
    );
    assert!(
        ours["reads"]["cold_database"].as_u64().is_some_and(|n| n > 0),
        "{ours}"
    );
    assert!(
        ours["memory"]["samples"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{ours}"
    );
}
