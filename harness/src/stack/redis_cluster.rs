//! A Redis Cluster as the stack sees it: formed with `redis-cli --cluster create`, judged ready from
//! what its nodes say (`CLUSTER INFO`, `CLUSTER NODES`), and watched through a failover.
//!
//! Nothing here trusts a single node's word while the cluster is changing: a node's view of its peers
//! lags by up to the node timeout, so every wait asks a node that is alive and re-reads until the
//! whole condition holds at once.

use std::path::Path;
use std::time::Duration;

use super::error::{Result, StackError};
use super::readiness::retry_until;

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16_384;

/// How long a failover or a rejoin may take: the node timeout (2 s), the replicas' election delay
/// (about a second plus their rank), and margin for a loaded machine.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets `cluster-node-timeout` on the node at `url` (at run time: `CONFIG SET`), so a test that must
/// hold a node back for longer than the stack's default can do so without a failover.
pub async fn set_node_timeout(url: &str, timeout: Duration) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("cluster-node-timeout")
        .arg(timeout.as_millis() as u64)
        .query_async::<()>(&mut connection)
        .await?;
    Ok(())
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    /// `host:port` of the client port.
    pub address: String,
    pub master: bool,
    /// Flagged `fail` (agreed by a majority of masters) or `fail?` (suspected by this node).
    pub failing: bool,
    /// The master it replicates, for a replica.
    pub master_id: Option<String>,
    pub slots: usize,
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`.
pub fn parse_nodes(text: &str) -> std::result::Result<Vec<NodeView>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return Err(format!("unreadable CLUSTER NODES line {line:?}"));
            }
            let flags: Vec<&str> = fields[2].split(',').collect();
            let address = fields[1].split('@').next().unwrap_or_default().to_string();
            let slots = fields[8..].iter().map(|range| slot_count(range)).sum();
            Ok(NodeView {
                id: fields[0].to_string(),
                address,
                master: flags.contains(&"master"),
                failing: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
                master_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// Slots in one `CLUSTER NODES` slot field: `5`, `0-5460`, or a slot in migration (`[5->-id]`), which
/// the node does not own yet.
fn slot_count(range: &str) -> usize {
    if range.starts_with('[') {
        return 0;
    }
    match range.split_once('-') {
        Some((first, last)) => match (first.parse::<usize>(), last.parse::<usize>()) {
            (Ok(first), Ok(last)) if last >= first => last - first + 1,
            _ => 0,
        },
        None => usize::from(range.parse::<usize>().is_ok()),
    }
}

/// Forms a cluster of `addresses` (`host:port`), one replica per master.
pub async fn create(redis_cli: &Path, addresses: &[String]) -> Result<()> {
    let mut args: Vec<&str> = vec!["--cluster", "create"];
    args.extend(addresses.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
    cluster_command(redis_cli, &args).await
}

/// Moves `slots` slots, with their keys, from the master `from` to the master `to` (both `host:port`)
/// with `redis-cli --cluster reshard`, as an operator rebalancing the cluster would.
pub async fn reshard(redis_cli: &Path, witness: &str, from: &str, to: &str, slots: usize) -> Result<()> {
    let (_, nodes) = view(witness).await.map_err(StackError::Setup)?;
    let id = |address: &str| {
        nodes
            .iter()
            .find(|n| n.address == address)
            .map(|n| n.id.clone())
            .ok_or_else(|| StackError::Setup(format!("{witness} does not know {address}")))
    };
    let (from_id, to_id, slots) = (id(from)?, id(to)?, slots.to_string());
    let args = [
        "--cluster",
        "reshard",
        from,
        "--cluster-from",
        &from_id,
        "--cluster-to",
        &to_id,
        "--cluster-slots",
        &slots,
        "--cluster-yes",
    ];
    cluster_command(redis_cli, &args).await
}

/// Runs `redis-cli ARGS` (`--cluster ...`); its output is the error if it fails.
async fn cluster_command(redis_cli: &Path, args: &[&str]) -> Result<()> {
    let output = tokio::process::Command::new(redis_cli)
        .args(args)
        .output()
        .await?;
    if output.status.success() {
        return Ok(());
    }
    Err(StackError::Setup(format!(
        "redis-cli {} failed ({}): {}{}",
        args[..2].join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

/// What `url`'s node says about the cluster: `CLUSTER INFO` fields and `CLUSTER NODES`.
pub async fn view(url: &str) -> std::result::Result<(ClusterInfo, Vec<NodeView>), String> {
    let info = ask(url, &["CLUSTER", "INFO"]).await?;
    let nodes = ask(url, &["CLUSTER", "NODES"]).await?;
    Ok((ClusterInfo::parse(&info), parse_nodes(&nodes)?))
}

/// Whether the replica at `address` has a working link to its master (`INFO replication`): one that
/// never synced has no data and cannot be promoted.
async fn replica_linked(address: &str) -> std::result::Result<(), String> {
    let info = ask(&format!("redis://{address}/"), &["INFO", "replication"]).await?;
    if info.lines().any(|line| line.trim() == "master_link_status:up") {
        Ok(())
    } else {
        Err(format!("replica {address} has no link to its master yet"))
    }
}

/// One command to one node, answered as text.
async fn ask(url: &str, command: &[&str]) -> std::result::Result<String, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    redis::cmd(command[0])
        .arg(&command[1..])
        .query_async(&mut connection)
        .await
        .map_err(|e| format!("{url}: {e}"))
}

/// The `CLUSTER INFO` fields readiness depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    pub state_ok: bool,
    pub slots_ok: usize,
}

impl ClusterInfo {
    pub fn parse(text: &str) -> Self {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':'))
                .map(str::to_string)
        };
        Self {
            state_ok: field("cluster_state").as_deref() == Some("ok"),
            slots_ok: field("cluster_slots_ok")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// Healthy as `url`'s node sees it: state ok, every slot served, `masters` masters each with a
/// replica, and no node failing; and each replica says its link to its master is up.
pub async fn healthy(url: &str, masters: usize) -> std::result::Result<Vec<NodeView>, String> {
    let nodes = serving(url).await?;
    if let Some(node) = nodes.iter().find(|n| n.failing) {
        return Err(format!("{url}: node {} is failing", node.address));
    }
    let serving: Vec<&NodeView> = nodes.iter().filter(|n| n.master && n.slots > 0).collect();
    if serving.len() != masters {
        return Err(format!(
            "{url}: {} masters serve slots, not {masters}",
            serving.len()
        ));
    }
    for master in &serving {
        let replica = nodes
            .iter()
            .find(|n| n.master_id.as_deref() == Some(&master.id))
            .ok_or_else(|| format!("{url}: master {} has no replica", master.address))?;
        replica_linked(&replica.address).await?;
    }
    Ok(nodes)
}

/// State ok and every slot served, as `url`'s node sees it (a failed node may still be known).
pub async fn serving(url: &str) -> std::result::Result<Vec<NodeView>, String> {
    let (info, nodes) = view(url).await?;
    if !info.state_ok || info.slots_ok != SLOTS {
        return Err(format!("{url}: cluster state {info:?}"));
    }
    Ok(nodes)
}

/// Waits until `url`'s node sees every slot served.
pub async fn wait_serving(url: &str) -> Result<Vec<NodeView>> {
    retry_until(FAILOVER_TIMEOUT, || serving(url))
        .await
        .map_err(|reason| StackError::Setup(format!("the Redis Cluster does not serve every slot: {reason}")))
}

/// Waits until `url`'s node sees a healthy cluster of `masters` masters, each with a replica.
pub async fn wait_healthy(url: &str, masters: usize) -> Result<Vec<NodeView>> {
    retry_until(FAILOVER_TIMEOUT, || healthy(url, masters))
        .await
        .map_err(|reason| StackError::Setup(format!("the Redis Cluster is not healthy: {reason}")))
}

/// Waits until `witness` (a live node) sees `lost` (`host:port`) failed and every slot served by the
/// other masters: the failover is over.
pub async fn wait_failed_over(witness: &str, lost: &str) -> Result<()> {
    let check = || async {
        let (info, nodes) = view(witness).await?;
        let lost_node = nodes
            .iter()
            .find(|n| n.address == lost)
            .ok_or_else(|| format!("{witness} does not know {lost}"))?;
        if !lost_node.failing || lost_node.slots > 0 {
            return Err(format!("{lost} is not failed over yet: {lost_node:?}"));
        }
        if !info.state_ok || info.slots_ok != SLOTS {
            return Err(format!("{witness}: cluster state {info:?}"));
        }
        Ok(())
    };
    retry_until(FAILOVER_TIMEOUT, check)
        .await
        .map_err(|reason| StackError::Setup(format!("no failover of {lost}: {reason}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 disconnected
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master - 0 1426238316232 5 connected 10923-16383 [16383->-292f8b36]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
";

    #[test]
    fn cluster_nodes_lines_read_as_roles_slots_and_failures() {
        let nodes = parse_nodes(NODES).unwrap();
        let summary: Vec<(&str, bool, bool, Option<&str>, usize)> = nodes
            .iter()
            .map(|n| {
                (
                    n.address.as_str(),
                    n.master,
                    n.failing,
                    n.master_id.as_deref().map(|id| &id[..4]),
                    n.slots,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("127.0.0.1:30004", false, false, Some("e7d1"), 0),
                ("127.0.0.1:30002", true, false, None, 5462),
                ("127.0.0.1:30003", true, true, None, 0),
                ("127.0.0.1:30005", true, false, None, 5461),
                ("127.0.0.1:30001", true, false, None, 5461),
            ]
        );
        assert!(parse_nodes("garbage").is_err());
    }

    #[test]
    fn cluster_info_reads_the_state_and_the_slots_served() {
        let info = ClusterInfo::parse(
            "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n",
        );
        assert_eq!(
            info,
            ClusterInfo {
                state_ok: true,
                slots_ok: 16384
            }
        );
        assert!(!ClusterInfo::parse("cluster_state:fail\r\ncluster_slots_ok:10922\r\n").state_ok);
    }
}
