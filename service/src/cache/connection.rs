//! Where the cache lives: one Redis, or a Redis Cluster, behind one connection type.
//!
//! `REDIS_URL` names one node (`redis://127.0.0.1:6379/`), or, comma-separated, several nodes of a
//! cluster (`redis://127.0.0.1:7000,redis://127.0.0.1:7001`). From whichever of those answers, the
//! cluster client learns the other nodes and which master serves which hash slot; it follows `MOVED`
//! and `ASK` redirections and learns the new map after a failover, within the response timeout
//! (after that the caller treats the call as a miss and reads the database). Listing more than one
//! node lets the service start while one of them is down.
//!
//! # Keys across slots
//!
//! A cluster refuses a command or a pipeline whose keys hash to different slots (`CROSSSLOT`), and
//! every order's key (`order:{id}`) has a slot of its own. So:
//!
//! * `MGET` goes as it is: the cluster client splits it by slot, sends the parts at once and puts the
//!   answers back in the order of the keys.
//! * A batch of script calls ([`RedisConnection::run_scripts`]) goes as one pipeline per slot, all
//!   sent at once; on one Redis, as one pipeline. Each script touches one key, so none needs a hash
//!   tag.
//!
//! # Guarantees
//!
//! * Answers come back in the order of the calls, whatever the grouping.
//! * A node that lost its script cache (a restart, a replica promoted by a failover) answers
//!   `NOSCRIPT`: the calls that got that answer run once more with the script's source (`EVAL`, which
//!   also caches it there), and only those, so no call runs twice.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::CacheError;
use super::scripts::{Invoke, ScriptCall};

/// How long a connection attempt and an answer may take. Redis is an optimisation: a read that waits
/// longer than this is better served by the database.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// What `REDIS_URL` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    /// Seed nodes of a cluster, two or more.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// One URL, or a comma-separated list of a cluster's nodes.
    pub fn parse(url: &str) -> Result<Self, CacheError> {
        let nodes: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(str::to_string)
            .collect();
        let target = match nodes.as_slice() {
            [] => return Err(CacheError::NoUrl),
            [single] => Self::Single(single.clone()),
            _ => Self::Cluster(nodes),
        };
        // Each URL is checked here, so that a typo stops the start-up instead of every read.
        for node in target.nodes() {
            redis::Client::open(node.as_str()).map_err(|source| CacheError::BadUrl {
                url: node.clone(),
                source,
            })?;
        }
        Ok(target)
    }

    pub fn nodes(&self) -> &[String] {
        match self {
            Self::Single(url) => std::slice::from_ref(url),
            Self::Cluster(nodes) => nodes,
        }
    }
}

/// A connection to one Redis or to a cluster; cheap to clone (clones share the connections).
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Connects lazily: the service starts while Redis is down and uses it once it answers.
    pub fn connect_lazy(target: &RedisTarget) -> Result<Self, CacheError> {
        match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(RESPONSE_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                Ok(Self::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            RedisTarget::Cluster(nodes) => {
                // The overall timeout (redirections and retries included) defaults to the response
                // timeout: a read waits no longer on a cluster in failover than on a hung Redis.
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(RESPONSE_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(RESPONSE_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                Ok(Self::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    /// Runs script calls, each on its own key, and answers in the order of `calls` (see the module
    /// documentation for how they are grouped).
    pub async fn run_scripts(&self, calls: &[ScriptCall<'_>]) -> Result<Vec<i64>, CacheError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let groups: Vec<Vec<usize>> = match self {
            Self::Single(_) => vec![(0..calls.len()).collect()],
            Self::Cluster(_) => {
                let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
                for (index, call) in calls.iter().enumerate() {
                    by_slot.entry(slot(call.key.as_bytes())).or_default().push(index);
                }
                by_slot.into_values().collect()
            }
        };
        let answers =
            futures::future::try_join_all(groups.iter().map(|group| self.run_group(calls, group))).await?;
        let mut replies = vec![0; calls.len()];
        for (group, answers) in groups.iter().zip(answers) {
            for (&index, reply) in group.iter().zip(answers) {
                replies[index] = reply;
            }
        }
        Ok(replies)
    }

    /// One pipeline of the calls at `indices`; if the node lost its scripts, once more with their source.
    async fn run_group(&self, calls: &[ScriptCall<'_>], indices: &[usize]) -> Result<Vec<i64>, CacheError> {
        let pipeline = |invoke: Invoke| {
            let mut pipeline = redis::pipe();
            for &index in indices {
                pipeline.add_command(calls[index].command(invoke));
            }
            pipeline
        };
        let mut redis = self.clone();
        match pipeline(Invoke::ByHash).query_async(&mut redis).await {
            Ok(replies) => Ok(replies),
            Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                Ok(pipeline(Invoke::WithSource).query_async(&mut redis).await?)
            }
            Err(error) => Err(error.into()),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The hash slot of a key, as Redis Cluster computes it: CRC16 (XMODEM) of the key, or of its hash
/// tag (the part between the first `{` and the next `}`, when not empty), modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the Redis Cluster specification and `CLUSTER KEYSLOT` on redis-server 7.
    #[test]
    fn a_key_hashes_to_the_slot_redis_gives_it() {
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"order:1"), 14374);
        assert_eq!(slot(b"order:42"), 8691);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), 8363);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn one_url_is_one_redis_and_a_list_is_a_cluster() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379/").unwrap(),
            RedisTarget::Single("redis://127.0.0.1:6379/".into())
        );
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:7000, redis://127.0.0.1:7001").unwrap(),
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        assert!(matches!(RedisTarget::parse(" , "), Err(CacheError::NoUrl)));
        let error = RedisTarget::parse("redis://127.0.0.1:7000,http://127.0.0.1:7001").unwrap_err();
        assert!(error.to_string().contains("http://127.0.0.1:7001"), "{error}");
    }
}
