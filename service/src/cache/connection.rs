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
//! * A read of many keys ([`RedisConnection::get_many`]) goes as one pipeline of `GET`s per master,
//!   all at once, after the slot map of `CLUSTER SLOTS` (read again when it sends keys astray). A key
//!   whose master the map has wrong is answered `MOVED`, and read again through the cluster client's
//!   own `MGET`, which it splits by slot (one command per slot: for 50 random orders about 50, which
//!   cost two thirds of the batch read's throughput, docs/BENCHMARKS.md section 8).
//! * A batch of script calls ([`RedisConnection::run_scripts`]) goes as one pipeline per slot, all
//!   sent at once, or, when it waits for replicas, one per master of the slot map; on one Redis, as
//!   one pipeline. Each script touches one key, so none needs a hash tag.
//!
//! # Guarantees
//!
//! * Answers come back in the order of the calls, whatever the grouping.
//! * A node that lost its script cache (a restart, a replica promoted by a failover) answers
//!   `NOSCRIPT`: the calls that got that answer run once more with the script's source (`EVAL`, which
//!   also caches it there), and only those, so no call runs twice.
//! * Script calls run [`Replicated`](Confirm::Replicated) on a cluster succeed only once a replica of
//!   each master they ran on holds what they did: a master replies before its replica copied the
//!   write, and a failover to a replica that had not copied it loses it. The consistency soak caught
//!   exactly that: two of 30 master kills and pauses lost an update the updater had acknowledged to
//!   Kafka, and the cache kept the version before it for good (`[convergence] order 1463: cache has
//!   version 6, database has version 7`, docs/CONSISTENCY.md section 6). Such calls go as one pipeline
//!   per master, ended by `WAIT 1`: `WAIT` holds the connection it is sent on until a replica answers,
//!   and the cluster client has one connection per node that every call shares, so a first version
//!   with one `WAIT` per slot (about a hundred per chunk of updates) jammed a node whose replica had
//!   gone and stopped the updater for good. A master that has no replica in the slot map (`CLUSTER
//!   SLOTS` leaves out failed ones) is not waited for: no replica can take its writes over, and
//!   waiting would stop the updater for as long as it stays alone (a replica just promoted, until its
//!   old master rejoins). Where the map is out of date (writes that wait read it again every
//!   [`SLOT_MAP_AGE`]), a wait for a replica gone fails after [`REPLICA_WAIT`] and the caller retries.
//!   A pipeline that waits goes to the master the map names, not where the cluster client's own map
//!   routes it: the two are learnt apart, and a master the client still routed to while the map
//!   showed its successor alone (a master paused until replaced, answering for a moment on its
//!   return) would take writes no wait covered. Where the map names a node that is no master any
//!   more, the node answers `MOVED` and the wait fails or the client follows it. Left open: writes
//!   are not waited for while the map cannot be read at all (before it is first read).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::CacheError;
use super::scripts::{Invoke, ScriptCall};

/// How long a connection attempt and an answer may take. Redis is an optimisation: a read that waits
/// longer than this is better served by the database.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a replicated call waits for a replica to confirm (`WAIT`'s timeout). On loopback a replica
/// confirms in well under a millisecond; this leaves room for a busy machine and stays far below
/// [`RESPONSE_TIMEOUT`], which the wait counts against.
pub const REPLICA_WAIT: Duration = Duration::from_millis(200);

/// When a batch of script calls counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// When the master answered: for writes whose loss costs nothing but a miss.
    Master,
    /// On a cluster, when a replica of each master holds the writes too (see the module documentation);
    /// on one Redis, which has no replica to fail over to, as [`Confirm::Master`].
    Replicated,
}

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
    Cluster(ClusterConnection, Arc<SlotOwners>),
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
                    Arc::default(),
                ))
            }
        }
    }

    /// The value of each key, in the order of `keys`: one `MGET` on one Redis; on a cluster one
    /// pipeline of `GET`s per master (see the module documentation).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let Self::Cluster(connection, owners) = self else {
            let mut redis = self.clone();
            return Ok(redis::cmd("MGET").arg(keys).query_async(&mut redis).await?);
        };
        let slots: Vec<u16> = keys.iter().map(|key| slot(key.as_bytes())).collect();
        let masters = owners.current(connection, None).await;
        // Keys of a slot the map has no master for are left `None`: they go the slow way below.
        let mut by_master: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, slot) in slots.iter().enumerate() {
            if let Some(master) = masters.owner(*slot) {
                by_master.entry(master).or_default().push(index);
            }
        }
        let reads = by_master.values().map(|indices| {
            let mut pipeline = redis::pipe();
            for &index in indices {
                pipeline.cmd("GET").arg(&keys[index]);
            }
            // The cluster client routes the pipeline to the master of its first key's slot, by its
            // own map; a key that master does not serve answers MOVED.
            let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slots[indices[0]], SlotAddr::Master));
            let mut connection = connection.clone();
            async move {
                let count = indices.len();
                connection.route_pipeline(pipeline, 0, count, route).await
            }
        });
        let answers = futures::future::join_all(reads).await;
        let mut values: Vec<Option<Option<Vec<u8>>>> = vec![None; keys.len()];
        for (indices, answer) in by_master.values().zip(answers) {
            let Ok(answer) = answer else { continue };
            for (&index, value) in indices.iter().zip(answer) {
                values[index] = match value {
                    Value::Nil => Some(None),
                    Value::BulkString(bytes) => Some(Some(bytes)),
                    _ => None,
                };
            }
        }
        // What the map sent astray, or a master that did not answer: the cluster client's own MGET.
        let astray: Vec<usize> = (0..keys.len()).filter(|&i| values[i].is_none()).collect();
        if !astray.is_empty() {
            owners.mark_stale();
            owners.astray.fetch_add(astray.len() as u64, Ordering::Relaxed);
            let astray_keys: Vec<&String> = astray.iter().map(|&i| &keys[i]).collect();
            let mut redis = self.clone();
            let fetched: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(astray_keys)
                .query_async(&mut redis)
                .await?;
            for (index, value) in astray.into_iter().zip(fetched) {
                values[index] = Some(value);
            }
        }
        Ok(values.into_iter().map(Option::flatten).collect())
    }

    /// Keys [`get_many`](Self::get_many) read the slow way on a cluster so far (always 0 on one
    /// Redis): what shows whether the slot map serves.
    pub fn keys_read_astray(&self) -> u64 {
        match self {
            Self::Single(_) => 0,
            Self::Cluster(_, owners) => owners.astray.load(Ordering::Relaxed),
        }
    }

    /// Runs script calls, each on its own key, and answers in the order of `calls` (see the module
    /// documentation for how they are grouped and what `confirm` waits for).
    pub async fn run_scripts(
        &self,
        calls: &[ScriptCall<'_>],
        confirm: Confirm,
    ) -> Result<Vec<i64>, CacheError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.groups(calls, confirm).await;
        let runs = groups.iter().map(|group| self.run_group(calls, group));
        let answers = futures::future::try_join_all(runs).await?;
        let mut replies = vec![0; calls.len()];
        for (group, answers) in groups.iter().zip(answers) {
            for (&index, reply) in group.calls.iter().zip(answers) {
                replies[index] = reply;
            }
        }
        Ok(replies)
    }

    /// The pipelines `calls` go in, each with whether it ends waiting for a replica: on one Redis one
    /// pipeline; on a cluster one per slot, or, for calls to be [`Replicated`](Confirm::Replicated), one
    /// per master of the slot map (so that one `WAIT` per master covers them, instead of one per slot:
    /// `WAIT` holds the connection it is sent on, which every call to that node shares), waiting where
    /// the map shows the master with a replica.
    async fn groups(&self, calls: &[ScriptCall<'_>], confirm: Confirm) -> Vec<Group> {
        let Self::Cluster(connection, owners) = self else {
            return vec![Group {
                calls: (0..calls.len()).collect(),
                wait: None,
            }];
        };
        let slots: Vec<u16> = calls.iter().map(|call| slot(call.key.as_bytes())).collect();
        let map = match confirm {
            Confirm::Master => None,
            Confirm::Replicated => Some(owners.current(connection, Some(SLOT_MAP_AGE)).await),
        };
        // Keyed (master, 0) where the map knows the slot's master, (None, slot) where it does not (or
        // for calls that do not wait): those go per slot, as the cluster client routes them.
        let mut by_node: BTreeMap<(Option<&str>, u16), Vec<usize>> = BTreeMap::new();
        for (index, &slot) in slots.iter().enumerate() {
            let master = map.as_ref().and_then(|map| map.owner(slot));
            let node = match master {
                Some(master) => (Some(master), 0),
                None => (None, slot),
            };
            by_node.entry(node).or_default().push(index);
        }
        by_node
            .into_iter()
            .map(|((master, _), calls)| {
                // Not where the map does not know the slot (it could not be read yet): a wait per slot
                // is what jammed the connections (see the module documentation).
                let replicated = map
                    .as_ref()
                    .and_then(|map| map.replicas(slots[calls[0]]))
                    .is_some_and(|replicas| replicas > 0);
                let wait = master.filter(|_| replicated).map(str::to_string);
                Group { calls, wait }
            })
            .collect()
    }

    /// One pipeline of the group's calls, ended by `WAIT 1` if it waits; if the node lost its scripts,
    /// once more with their source. On a cluster a pipeline that waits goes to the master the slot map
    /// names, the one whose replica count decided the wait; one that does not, to the master of its
    /// first call's slot as the cluster client knows it. A call to a key that node does not serve is
    /// answered `MOVED`, and the client sends the pipeline again where it points.
    async fn run_group(&self, calls: &[ScriptCall<'_>], group: &Group) -> Result<Vec<i64>, CacheError> {
        let indices = &group.calls;
        let wait = group.wait.is_some();
        let pipeline = |invoke: Invoke| {
            let mut pipeline = redis::pipe();
            for &index in indices {
                pipeline.add_command(calls[index].command(invoke));
            }
            if wait {
                // WAIT counts the replicas that acknowledged everything this connection wrote so far,
                // so it covers the calls before it.
                pipeline.cmd("WAIT").arg(1).arg(REPLICA_WAIT.as_millis() as u64);
            }
            pipeline
        };
        let send = async |pipeline: Pipeline| -> redis::RedisResult<Vec<i64>> {
            match self {
                Self::Single(connection) => pipeline.query_async(&mut connection.clone()).await,
                Self::Cluster(connection, _) => {
                    let route = match group.wait.as_deref().and_then(|master| master.rsplit_once(':')) {
                        // By the map's address, not the client's routing: the two are learnt apart,
                        // and a master the client still routes to while the map shows its successor
                        // alone (one paused until replaced, answering for a moment on its return)
                        // would take writes that no wait covers, and lose them when it rejoins.
                        Some((host, port)) => SingleNodeRoutingInfo::ByAddress {
                            host: host.to_string(),
                            port: port.parse().unwrap_or_default(),
                        },
                        None => SingleNodeRoutingInfo::SpecificNode(Route::new(
                            slot(calls[indices[0]].key.as_bytes()),
                            SlotAddr::Master,
                        )),
                    };
                    let count = pipeline.len();
                    let values = connection
                        .clone()
                        .route_pipeline(pipeline, 0, count, route)
                        .await?;
                    // An error answer (NOSCRIPT) as the error it is, not as a reply that is no number.
                    if let Some(error) = values.iter().find_map(|value| match value {
                        Value::ServerError(error) => Some(error.clone()),
                        _ => None,
                    }) {
                        return Err(error.into());
                    }
                    redis::from_redis_value(Value::Array(values)).map_err(Into::into)
                }
            }
        };
        let mut replies = match send(pipeline(Invoke::ByHash)).await {
            Ok(replies) => replies,
            Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                send(pipeline(Invoke::WithSource)).await?
            }
            Err(error) => return Err(error.into()),
        };
        if wait && replies.pop().is_none_or(|replicas| replicas < 1) {
            return Err(CacheError::NotReplicated {
                writes: indices.len(),
                within: REPLICA_WAIT,
            });
        }
        Ok(replies)
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection, _) => connection.req_packed_command(cmd),
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
            Self::Cluster(connection, _) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection, _) => connection.get_db(),
        }
    }
}

/// Script calls that go as one pipeline.
struct Group {
    /// Indices into the calls.
    calls: Vec<usize>,
    /// The `host:port` of the master the pipeline goes to and waits for a replica of, as the slot map
    /// has it; `None` for a pipeline that does not wait.
    wait: Option<String>,
}

/// Which master serves which slots, and with how many replicas, as `CLUSTER SLOTS` last said. A map
/// that is out of date costs a read the slow way (see [`RedisConnection::get_many`]) or a write's wait
/// for a replica that is not there (see [`RedisConnection::run_scripts`]), never a wrong answer: a
/// node the map names wrongly answers `MOVED`.
#[derive(Default)]
pub struct SlotOwners {
    /// The last map read (empty before the first); kept in use while it cannot be read again.
    map: RwLock<Arc<SlotMap>>,
    /// When the map was last read.
    read_at: RwLock<Option<Instant>>,
    /// The map sent keys astray: read it again.
    stale: std::sync::atomic::AtomicBool,
    /// Keys read the slow way so far (the map had their master wrong, or it did not answer).
    astray: AtomicU64,
}

/// How old a slot map a write that waits for replicas may go by. A replica that joins or fails shows
/// in the map within this (nothing else would tell: a write not waited for cannot find the map wrong);
/// one `CLUSTER SLOTS` a second costs the cluster nothing. Reads go by the map until it sends keys
/// astray.
pub const SLOT_MAP_AGE: Duration = Duration::from_secs(1);

/// Slot ranges, sorted, each with its master's `host:port` and how many replicas it has.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SlotMap(Vec<(u16, u16, String, usize)>);

impl SlotMap {
    /// The master of `slot`, if the map has one.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        self.range(slot).map(|(_, _, master, _)| master.as_str())
    }

    /// How many replicas the master of `slot` has (`CLUSTER SLOTS` leaves out those the cluster
    /// marked failed), if the map has the slot.
    pub fn replicas(&self, slot: u16) -> Option<usize> {
        self.range(slot).map(|(_, _, _, replicas)| *replicas)
    }

    fn range(&self, slot: u16) -> Option<&(u16, u16, String, usize)> {
        let index = self
            .0
            .partition_point(|(start, ..)| *start <= slot)
            .checked_sub(1)?;
        let range = &self.0[index];
        (slot <= range.1).then_some(range)
    }

    /// From the answer to `CLUSTER SLOTS`: `[start, end, [host, port, id, ...], replicas...]` per range.
    pub fn parse(reply: &Value) -> Option<Self> {
        let Value::Array(ranges) = reply else { return None };
        let mut map = Vec::with_capacity(ranges.len());
        for range in ranges {
            let Value::Array(fields) = range else { return None };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return None;
            };
            map.push((
                u16::try_from(*start).ok()?,
                u16::try_from(*end).ok()?,
                format!("{host}:{port}"),
                fields.len() - 3,
            ));
        }
        map.sort();
        Some(Self(map))
    }
}

impl SlotOwners {
    /// The map; read again first if it was never read, sent keys astray, or is older than `max_age`,
    /// but at most once a second (after a failover every read finds it stale). While it cannot be
    /// read, the last one serves (an empty one sends every key the slow way, and no write waits for a
    /// replica).
    async fn current(&self, connection: &ClusterConnection, max_age: Option<Duration>) -> Arc<SlotMap> {
        let last = || self.map.read().map(|map| map.clone()).unwrap_or_default();
        let age = self.read_at.read().ok().and_then(|at| *at).map(|at| at.elapsed());
        let due = match age {
            None => true,
            Some(age) if age < Duration::from_secs(1) => false,
            Some(age) => self.stale.load(Ordering::Relaxed) || max_age.is_some_and(|max| age >= max),
        };
        if !due {
            return last();
        }
        // Marked read before the answer, so that the calls meanwhile do not all ask too.
        if let Ok(mut at) = self.read_at.write() {
            *at = Some(Instant::now());
        }
        let mut connection = connection.clone();
        let reply: Option<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await
            .ok();
        let Some(map) = reply.as_ref().and_then(SlotMap::parse).map(Arc::new) else {
            return last();
        };
        self.stale.store(false, Ordering::Relaxed);
        if let Ok(mut slot) = self.map.write() {
            *slot = map.clone();
        }
        map
    }

    fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
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
    fn the_slot_map_names_each_slots_master() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("127.0.0.1", 7000)]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("redis-node-3", 6379),
            ]),
        ]);
        let map = SlotMap::parse(&reply).expect("a slot map");
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5460), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(16383), Some("redis-node-3:6379"));
        assert_eq!(
            (map.replicas(0), map.replicas(5461), map.replicas(16383)),
            (Some(0), Some(1), Some(0))
        );
        let partial = SlotMap(vec![(100, 200, "a:1".into(), 1)]);
        assert_eq!(
            (partial.owner(99), partial.owner(201), partial.owner(150)),
            (None, None, Some("a:1"))
        );
        assert_eq!((partial.replicas(99), partial.replicas(150)), (None, Some(1)));
        assert_eq!(SlotMap::parse(&Value::Nil), None);
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
