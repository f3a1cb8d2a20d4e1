//! Finding the programs the local backend runs, with an install hint when one is missing.
//!
//! Debian installs PostgreSQL's server binaries under `/usr/lib/postgresql/<major>/bin`, off `PATH`, so
//! that directory is searched too. The Kafka broker is not a Debian package: its official jars come
//! from Maven Central into a cache directory (see `ci/kafka/pom.xml`), fetched here on first use when
//! `mvn` is available, so `cargo test` works even before `ci/setup.sh` ran.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{Result, StackError};

/// Looks `name` up on `PATH`, then in `extra_dirs`.
pub fn find_program(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `initdb` and `postgres`, from `PG_BIN`, `PATH`, or the newest `/usr/lib/postgresql/*/bin`.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut debian_dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    debian_dirs.sort();
    let extra: Vec<PathBuf> = debian_dirs.into_iter().rev().map(|(_, dir)| dir).collect();
    let initdb = find_program("initdb", &extra).ok_or_else(|| StackError::Missing {
        what: "PostgreSQL (initdb, postgres)".into(),
        hint: "run `bash ci/setup.sh`, or `apt-get install -y postgresql`".into(),
    })?;
    Ok(initdb
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/bin")))
}

pub fn redis_server() -> Result<PathBuf> {
    find_program("redis-server", &[]).ok_or_else(|| StackError::Missing {
        what: "redis-server".into(),
        hint: "run `bash ci/setup.sh`, or `apt-get install -y redis-server`".into(),
    })
}

/// `redis-cli`, which forms a cluster (`--cluster create`); Debian's `redis-server` brings it.
pub fn redis_cli() -> Result<PathBuf> {
    find_program("redis-cli", &[]).ok_or_else(|| StackError::Missing {
        what: "redis-cli".into(),
        hint: "run `bash ci/setup.sh`, or `apt-get install -y redis-tools`".into(),
    })
}

pub fn java() -> Result<PathBuf> {
    let java_home = std::env::var_os("JAVA_HOME")
        .map(|home| vec![PathBuf::from(home).join("bin")])
        .unwrap_or_default();
    find_program("java", &java_home).ok_or_else(|| StackError::Missing {
        what: "java (a JDK 17 or newer, for the Kafka broker)".into(),
        hint: "run `bash ci/setup.sh`, or `apt-get install -y openjdk-17-jre-headless`".into(),
    })
}

/// The workspace's `ci/kafka/pom.xml`, which names the Kafka version and its jars.
fn kafka_pom() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/kafka/pom.xml")
}

/// The Kafka version pinned in the pom (`<kafka.version>`).
pub fn kafka_version() -> Result<String> {
    let pom = std::fs::read_to_string(kafka_pom())?;
    pom.split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split("</kafka.version>").next())
        .map(|v| v.trim().to_string())
        .ok_or_else(|| StackError::Setup(format!("no <kafka.version> in {}", kafka_pom().display())))
}

/// `$XDG_CACHE_HOME` (default `~/.cache`) `/orders-cache`, where ci/setup.sh puts what it downloads.
fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("orders-cache")
}

/// Where the jars live: `KAFKA_LIBS`, or `$XDG_CACHE_HOME` (default `~/.cache`) `/orders-cache/kafka-<version>`.
pub fn kafka_libs_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KAFKA_LIBS") {
        return Ok(PathBuf::from(dir));
    }
    Ok(cache_root().join(format!("kafka-{}", kafka_version()?)))
}

/// Kafka's command-line tools (`kafka-tools` and its dependencies, of the broker's version), for the
/// consumer benchmark's outside anchor: `KAFKA_TOOLS_LIBS`, or `orders-cache/kafka-tools-<version>`, where
/// `bash ci/setup.sh` puts them.
pub fn kafka_tools_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("KAFKA_TOOLS_LIBS") {
        Some(dir) => PathBuf::from(dir),
        None => cache_root().join(format!("kafka-tools-{}", kafka_version()?)),
    };
    if dir.join(".complete").is_file() {
        Ok(dir)
    } else {
        Err(StackError::Missing {
            what: format!("Kafka's tools jars (expected in {})", dir.display()),
            hint: "run `bash ci/setup.sh`".into(),
        })
    }
}

/// kcat, librdkafka's command-line client.
pub fn kcat() -> Result<PathBuf> {
    find_program("kcat", &[]).ok_or_else(|| StackError::Missing {
        what: "kcat".into(),
        hint: "run `bash ci/setup.sh`, or `apt-get install -y kcat`".into(),
    })
}

/// The Kafka jars, downloaded with Maven into the cache on first use.
pub fn kafka_libs() -> Result<PathBuf> {
    let dir = kafka_libs_dir()?;
    let complete = dir.join(".complete");
    if complete.is_file() {
        return Ok(dir);
    }
    let Some(mvn) = find_program("mvn", &[]) else {
        return Err(StackError::Missing {
            what: format!("the Apache Kafka jars (expected in {})", dir.display()),
            hint: "run `bash ci/setup.sh`, or `apt-get install -y maven` and run the tests again".into(),
        });
    };
    let staging = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let output = Command::new(mvn)
        .args([
            "-q",
            "-B",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
        ])
        .arg(format!("-DoutputDirectory={}", staging.display()))
        .arg("-f")
        .arg(kafka_pom())
        .output()?;
    if !output.status.success() {
        return Err(StackError::Setup(format!(
            "downloading the Kafka jars with `mvn dependency:copy-dependencies -f {}` failed:\n{}{}",
            kafka_pom().display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    std::fs::write(staging.join(".complete"), "")?;
    // Another process may have finished the same download first; either copy is complete.
    if std::fs::rename(&staging, &dir).is_err() && !complete.is_file() {
        return Err(StackError::Setup(format!(
            "cannot move the Kafka jars into {}",
            dir.display()
        )));
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(dir)
}
