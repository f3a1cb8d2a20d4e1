//! The binary refuses nonsense before it starts anything, with a message naming the problem.

use std::process::Command;

fn loadtest(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|error| panic!("cannot run loadtest: {error}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn nonsense_flags_are_refused_with_a_reason() {
    let cases: [(&[&str], &str); 7] = [
        (&["--weights", "everything=1"], "unknown scenario \"everything\""),
        (&["--orders", "0"], "--orders"),
        (&["--probe-rate", "fast"], "updates per second"),
        (
            &["--start-service", "--host", "http://127.0.0.1:1"],
            "cannot be used with",
        ),
        (&["--frobnicate"], "--frobnicate"),
        (&["-H", "http://192.0.2.1:50051"], "--allow-remote"),
        (&["--report-file", "report.pdf"], ".html, .htm, .md or .json"),
    ];
    for (args, expected) in cases {
        let (code, stderr) = loadtest(args);
        assert_ne!(code, 0, "{args:?} was accepted");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn help_lists_our_options_and_goose_options() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--help")
        .output()
        .unwrap_or_else(|error| panic!("cannot run loadtest: {error}"));
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--start-service",
        "--weights",
        "--probe-rate",
        "--run-time",
        "--report-file",
        "--users",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
}
