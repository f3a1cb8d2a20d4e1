//! A throwaway Redis: `redis-server` on a loopback port with persistence off, so a restart starts empty
//! (which is exactly the "Redis restarted with its data wiped" fault).

use std::path::Path;

use crate::stack::error::Result;
use crate::stack::process::Launch;
use crate::stack::tools;

pub struct RedisLaunch {
    pub launch: Launch,
    pub url: String,
}

pub fn prepare(dir: &Path, port: u16) -> Result<RedisLaunch> {
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let launch = Launch {
        name: "redis",
        program: tools::redis_server()?,
        args: [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &data.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        envs: vec![],
        log: dir.join("redis.log"),
        run_as: None,
        stop_signal: libc::SIGTERM,
    };
    Ok(RedisLaunch {
        launch,
        url: format!("redis://127.0.0.1:{port}/"),
    })
}
