//! A child process that the stack owns: started, stopped, killed, paused, and never left behind.
//!
//! Two mechanisms make sure no server outlives the test or tool that started it:
//!
//! * `Drop` kills the process and reaps it, which covers normal ends and panics (unwinding runs `Drop`).
//! * `PR_SET_PDEATHSIG(SIGKILL)` covers the rest: a test binary killed with `kill -9` cannot run `Drop`,
//!   but the kernel then kills every child whose parent died.
//!
//! The kernel ties the death signal to the *thread* that forked the child, not to the process. A tokio
//! blocking-pool thread, or the thread of one `#[test]`, can end while the stack lives on, and would take
//! its children with it. So every child is forked by one dedicated spawner thread that lives as long as
//! the process does.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Forks `command` from the long-lived spawner thread, with the parent-death signal set.
fn spawn_with_death_signal(mut command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("stack-spawner".into())
            .spawn(move || {
                for (mut command, reply) in requests {
                    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
                    // functions (prctl, getppid, kill).
                    unsafe {
                        command.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(io::Error::last_os_error());
                            }
                            // The parent may have died before prctl took effect.
                            if libc::getppid() == 1 {
                                libc::kill(libc::getpid(), libc::SIGKILL);
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the stack-spawner thread must start");
        std::sync::Mutex::new(sender)
    });
    let (reply, answer) = mpsc::channel();
    command.stdin(Stdio::null());
    sender
        .lock()
        .map_err(|_| io::Error::other("stack-spawner lock poisoned"))?
        .send((command, reply))
        .map_err(|_| io::Error::other("stack-spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("stack-spawner thread did not answer"))?
}

/// How to (re)start one server: the program, its arguments, and where its output goes.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub log: PathBuf,
    /// Where the server writes its own log, when that is not its output (Kafka logs through log4j2 to
    /// `server.log` and prints next to nothing): the log that says why it did not start.
    pub server_log: Option<PathBuf>,
    /// Run as this uid/gid (PostgreSQL refuses to run as root).
    pub run_as: Option<(u32, u32)>,
    /// The signal of a graceful stop: SIGTERM, but for PostgreSQL, whose SIGTERM ("smart" shutdown)
    /// waits for every client to disconnect, which a service's pool never does; SIGINT is its "fast"
    /// shutdown (`pg_ctl stop`'s default): clients are disconnected, and the server stops cleanly.
    pub stop_signal: libc::c_int,
}

impl Launch {
    fn command(&self) -> io::Result<Command> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        Ok(command)
    }
}

/// One running (or stopped) server process.
#[derive(Debug)]
pub struct ManagedProcess {
    launch: Launch,
    child: Option<Child>,
}

impl ManagedProcess {
    /// A placeholder that runs nothing (stop and kill do nothing).
    pub fn idle() -> Self {
        Self {
            launch: Launch {
                name: "idle",
                program: PathBuf::from("/bin/true"),
                args: Vec::new(),
                envs: Vec::new(),
                log: PathBuf::from("/dev/null"),
                server_log: None,
                run_as: None,
                stop_signal: libc::SIGTERM,
            },
            child: None,
        }
    }

    pub fn spawn(launch: Launch) -> io::Result<Self> {
        let mut process = Self { launch, child: None };
        process.start()?;
        Ok(process)
    }

    /// Starts the process again with the same arguments (same ports, same data directory).
    pub fn start(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let child = spawn_with_death_signal(self.launch.command()?)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", self.launch.name)))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log that has the server's own account: [`Launch::server_log`], else its output.
    pub fn log_path(&self) -> &Path {
        self.launch.server_log.as_deref().unwrap_or(&self.launch.log)
    }

    /// True while the process has not exited (reaping it if it has).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Graceful stop: SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.signal(libc::SIGCONT) {
            self.signal(self.launch.stop_signal);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !self.is_running() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&mut self) -> bool {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) -> bool {
        self.signal(libc::SIGCONT)
    }

    fn signal(&mut self, signal: libc::c_int) -> bool {
        if !self.is_running() {
            return false;
        }
        let Some(pid) = self.pid() else { return false };
        // SAFETY: `pid` is our own unreaped child, so it cannot have been recycled.
        unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
    }

    /// The last lines of the server's log, for error messages, and of its output if that is another
    /// file and not empty (a JVM that cannot start says so on its output).
    pub fn log_tail(&self, lines: usize) -> String {
        let server = log_tail(self.log_path(), lines);
        let output = match &self.launch.server_log {
            Some(_) => log_tail(&self.launch.log, lines),
            None => String::new(),
        };
        if output.trim().is_empty() {
            server
        } else {
            format!(
                "{server}\n--- last lines of {} ---\n{output}",
                self.launch.log.display()
            )
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
