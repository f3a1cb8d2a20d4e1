//! The temporary directory a local stack lives in, and the clean-up of those a crashed run left.
//!
//! Each stack gets `$TMPDIR/orders-cache-stack-XXXXXX/` holding every server's data and logs, and an
//! `owner` file with the pid of the process that started it. A run that was killed (so `Drop` never ran)
//! leaves its directory behind; its servers died with it (parent-death signal), so the next start only
//! has to notice that the owner is gone and delete the directory. Ports are never reused from a
//! previous run, so a leftover can never make a new stack fail to bind.

use std::net::TcpListener;
use std::path::Path;

use tempfile::TempDir;

use crate::stack::error::Result;

const PREFIX: &str = "orders-cache-stack-";

pub struct WorkDir {
    dir: TempDir,
}

impl WorkDir {
    pub fn create() -> Result<Self> {
        remove_leftovers();
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        // PostgreSQL runs as an unprivileged user when we are root: it must be able to reach its directory.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::write(dir.path().join("owner"), std::process::id().to_string())?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Deletes the directories of earlier stacks whose owner process no longer exists.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join("owner")).ok();
        let alive = owner
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A loopback port that is free right now (the kernel picks it; we release it for the server to bind).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` distinct free loopback ports: all are held at once before they are released, so that the
/// kernel cannot hand out the same port twice (which separate [`free_port`] calls may).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}
