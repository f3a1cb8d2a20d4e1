//! A throwaway PostgreSQL server: `initdb` into the stack's directory, then `postgres` on a loopback port.
//!
//! Durability is switched off (`fsync`, `synchronous_commit`, `full_page_writes`): the data lives only as
//! long as the test, and a crash test kills the server, not the machine, so the OS page cache still
//! holds every committed write. PostgreSQL refuses to run as root, so under root (CI) it runs as the
//! `postgres` user that Debian's package creates, or `nobody`.

use std::ffi::CString;
use std::path::Path;
use std::process::Command;

use crate::stack::error::{Result, StackError};
use crate::stack::process::Launch;
use crate::stack::tools;

pub struct PostgresLaunch {
    pub launch: Launch,
    pub url: String,
}

pub fn prepare(dir: &Path, port: u16) -> Result<PostgresLaunch> {
    let bin = tools::postgres_bin_dir()?;
    let data = dir.join("postgres");
    std::fs::create_dir_all(&data)?;
    let run_as = unprivileged_user();
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
    }
    let mut initdb = Command::new(bin.join("initdb"));
    initdb.arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
        "--locale=C",
    ]);
    if let Some((uid, gid)) = run_as {
        std::os::unix::process::CommandExt::uid(&mut initdb, uid);
        std::os::unix::process::CommandExt::gid(&mut initdb, gid);
    }
    let output = initdb.output()?;
    if !output.status.success() {
        return Err(StackError::Setup(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let launch = Launch {
        name: "postgres",
        program: bin.join("postgres"),
        args: [
            "-D",
            &data.to_string_lossy(),
            "-p",
            &port.to_string(),
            "-k",
            &data.to_string_lossy(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        envs: vec![],
        log: dir.join("postgres.log"),
        server_log: None,
        run_as,
        stop_signal: libc::SIGINT,
    };
    Ok(PostgresLaunch {
        launch,
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
    })
}

/// `Some((uid, gid))` of `postgres` (or `nobody`) when we run as root, `None` otherwise.
fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    ["postgres", "nobody"].iter().find_map(|name| {
        let name = CString::new(*name).ok()?;
        // SAFETY: getpwnam returns a pointer into static storage or null; we copy the ids out at once.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if entry.is_null() {
            return None;
        }
        // SAFETY: checked non-null above.
        let entry = unsafe { &*entry };
        Some((entry.pw_uid, entry.pw_gid))
    })
}
