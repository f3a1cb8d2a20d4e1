//! Where a failed test leaves the logs of the servers it ran: `target/test-logs/<binary>/<test>/`.
//!
//! A stack's directory, with every server's log in it, lives in `$TMPDIR` and is deleted with the
//! stack. When the test fails (the stack is dropped while its thread panics) or the stack never
//! became ready, its logs are copied here first, and the path printed, so that a red run in CI can
//! be read after the fact: PostgreSQL's, Kafka's `server.log`, each Redis node's, each service
//! process's. Data files are not copied: only what ends in `.log`.
//!
//! The test is named by cargo-nextest (`NEXTEST_BINARY_ID`, `NEXTEST_TEST_NAME`, and the iteration of
//! a stress run), or by libtest's thread name under `cargo test`.

use std::path::{Path, PathBuf};

/// The name of the servers' data directories in a stack's directory, which are not copied.
const DATA_DIR: &str = "data";

/// The directory of the current test's logs (not created).
pub fn dir() -> PathBuf {
    let mut dir = target_dir().join("test-logs");
    if let Ok(binary) = std::env::var("NEXTEST_BINARY_ID") {
        dir.push(sanitize(&binary));
    }
    dir.push(sanitize(&test_name()));
    // nextest sets it to "none" outside a stress run.
    if let Ok(iteration) = std::env::var("NEXTEST_STRESS_CURRENT")
        && iteration != "none"
    {
        dir.push(format!("stress-{}", sanitize(&iteration)));
    }
    dir
}

/// Copies every `*.log` file under `from` into [`dir`]`/label`, keeping their relative paths, and
/// prints where they went. Returns that directory, or `None` if nothing could be copied (the copy is
/// best effort: it runs while a test is already failing).
pub fn keep(from: &Path, label: &str) -> Option<PathBuf> {
    let to = dir().join(label);
    let copied = copy_logs(from, from, &to);
    if copied == 0 {
        return None;
    }
    eprintln!(
        "test logs: {copied} log files of {label} kept in {}",
        to.display()
    );
    Some(to)
}

fn copy_logs(root: &Path, from: &Path, to: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(from) else {
        return 0;
    };
    let mut copied = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            // Kafka's `log.dirs` (each node's `data/`) hold its partitions, in segment files that end
            // in `.log` too: data, not logs.
            if path.file_name().is_some_and(|name| name == DATA_DIR) {
                continue;
            }
            copied += copy_logs(root, &path, to);
        } else if path.extension().is_some_and(|e| e == "log") {
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let target = to.join(relative);
            let made = target.parent().is_none_or(|p| std::fs::create_dir_all(p).is_ok());
            if made && std::fs::copy(&path, &target).is_ok() {
                copied += 1;
            }
        }
    }
    copied
}

fn test_name() -> String {
    std::env::var("NEXTEST_TEST_NAME")
        .ok()
        .or_else(|| std::thread::current().name().map(str::to_string))
        .unwrap_or_else(|| format!("process-{}", std::process::id()))
}

/// `CARGO_TARGET_DIR`, else the `target` directory this binary was built into, else `$TMPDIR`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

/// A test or binary id as one path component.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_log_files_are_kept_with_their_relative_paths() {
        let from = tempfile::tempdir().expect("a directory");
        std::fs::create_dir_all(from.path().join("kafka-1/data")).expect("dirs");
        std::fs::write(from.path().join("postgres.log"), "pg").expect("a log");
        std::fs::write(from.path().join("kafka-1/server.log"), "kafka").expect("a log");
        std::fs::write(from.path().join("kafka-1/data/00000.index"), "data").expect("data");
        std::fs::write(from.path().join("kafka-1/data/00000.log"), "a segment").expect("data");
        let to = tempfile::tempdir().expect("a directory");

        assert_eq!(copy_logs(from.path(), from.path(), to.path()), 2);
        let read = |p: &str| std::fs::read_to_string(to.path().join(p)).expect("a kept log");
        assert_eq!(read("postgres.log"), "pg");
        assert_eq!(read("kafka-1/server.log"), "kafka");
        assert!(!to.path().join("kafka-1/data").exists(), "data is not copied");
    }

    #[test]
    fn test_ids_become_single_path_components() {
        assert_eq!(sanitize("service::api"), "service__api");
        assert_eq!(sanitize("faults::a/b c"), "faults__a_b_c");
    }
}
