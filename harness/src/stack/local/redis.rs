//! Throwaway Redis servers: `redis-server` on loopback ports with persistence off, so a restart starts
//! empty (which is exactly the "Redis restarted with its data wiped" fault).
//!
//! One server, or six forming a Redis Cluster (three masters, one replica each). A cluster node keeps
//! its view of the cluster (`nodes.conf`) in its own directory even without persistence: a node killed
//! and started again comes back as the same node, finds its slots taken over by its former replica,
//! and rejoins as that one's replica, empty.

use std::path::Path;

use crate::stack::error::Result;
use crate::stack::process::Launch;
use crate::stack::tools;

/// How long a cluster node may be unreachable before its peers mark it failed and promote its
/// replica. Redis's default is 15 s; 2 s keeps a failover test short and still far above the local
/// round trip, so a busy machine does not fail nodes over by itself.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 2_000;

pub struct RedisLaunch {
    pub launch: Launch,
    pub url: String,
}

/// The ports of one cluster node: clients, and the cluster bus between nodes.
#[derive(Debug, Clone, Copy)]
pub struct ClusterPorts {
    pub client: u16,
    pub bus: u16,
}

/// A single Redis.
pub fn prepare(dir: &Path, port: u16) -> Result<RedisLaunch> {
    prepare_server(dir, "redis", port, &[])
}

/// Node `index` of a cluster: cluster mode on, its own data directory and cluster bus port.
pub fn prepare_cluster_node(dir: &Path, index: usize, ports: ClusterPorts) -> Result<RedisLaunch> {
    let name = format!("redis-{index}");
    let cluster = [
        "--cluster-enabled".to_string(),
        "yes".to_string(),
        "--cluster-config-file".to_string(),
        "nodes.conf".to_string(),
        "--cluster-port".to_string(),
        ports.bus.to_string(),
        "--cluster-node-timeout".to_string(),
        CLUSTER_NODE_TIMEOUT_MS.to_string(),
        // A replica syncs at once rather than after the default 5 s wait for more replicas to join
        // the same transfer: a master killed before its replica's first sync has no replica to fail
        // over to (seen: the replica kept asking the dead master for a sync).
        "--repl-diskless-sync-delay".to_string(),
        "0".to_string(),
    ];
    prepare_server(dir, &name, ports.client, &cluster)
}

fn prepare_server(dir: &Path, name: &str, port: u16, extra: &[String]) -> Result<RedisLaunch> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    let mut args: Vec<String> = [
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
    .collect();
    args.extend_from_slice(extra);
    let launch = Launch {
        name: "redis",
        program: tools::redis_server()?,
        args,
        envs: vec![],
        log: dir.join(format!("{name}.log")),
        server_log: None,
        run_as: None,
        stop_signal: libc::SIGTERM,
    };
    Ok(RedisLaunch {
        launch,
        url: format!("redis://127.0.0.1:{port}/"),
    })
}
