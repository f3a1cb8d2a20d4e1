//! The two Lua scripts every cache write goes through, and what they answer.
//!
//! Each touches one key only, so that they also run on a Redis Cluster, and each is atomic: nothing
//! else happens to the key between its `GET` and its `SET`.

/// Grants a lease on a missing entry: `SET key lease:{token}` if the key is absent, or still holds the
/// unreadable value the reader found there.
///
/// `KEYS[1]` the order's key; `ARGV[1]` the token, `ARGV[2]` the lease's time to live in ms, `ARGV[3]`
/// the unreadable value the reader saw (empty when it saw nothing). Answers 1 when granted, 0 when the
/// key holds an entry or another reader's lease (that reader fills it; this one reads the database
/// without filling).
pub const LEASE: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false or (ARGV[3] ~= '' and current == ARGV[3]) then
  redis.call('SET', KEYS[1], 'lease:' .. ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Writes an entry where that is safe, given who writes:
///
/// * absent key: nothing is written ([`WriteOutcome::Absent`]); whatever was there may have been newer;
/// * the writer's own lease: written (a fill after a miss);
/// * an entry of an older version: written; of this version or newer: [`WriteOutcome::Stale`], and the
///   updater renews its time to live: a write, so that a `WAIT` after it also covers the writes of
///   others that put that entry there (see [`super::Confirm::Replicated`]);
/// * another reader's lease, or something unreadable: a writer without a lease (the updater) deletes
///   it, so that the pending fill, which may hold an older version, cannot land
///   ([`WriteOutcome::Invalidated`]); a writer with a lease gives up ([`WriteOutcome::LeaseLost`]).
///
/// `KEYS[1]` the order's key; `ARGV[1]` the version, `ARGV[2]` the entry, `ARGV[3]` its time to live
/// in ms, `ARGV[4]` the writer's lease token (empty for none).
pub const WRITE: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false then
  return -1
end
if ARGV[4] ~= '' and current == 'lease:' .. ARGV[4] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
local cached = tonumber(string.match(current, '^(%d+):'))
if cached then
  if cached < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
  end
  if ARGV[4] == '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return 0
end
if ARGV[4] == '' then
  redis.call('DEL', KEYS[1])
  return 2
end
return 3
";

/// A cache script: its source and the SHA1 that `EVALSHA` names it by.
#[derive(Debug)]
pub struct CacheScript {
    source: &'static str,
    hash: String,
}

impl CacheScript {
    pub fn new(source: &'static str) -> Self {
        Self {
            source,
            hash: redis::Script::new(source).get_hash().to_string(),
        }
    }

    /// A call of this script on `key` with `args`.
    pub fn call(&self, key: String, args: Vec<Vec<u8>>) -> ScriptCall<'_> {
        ScriptCall {
            script: self,
            key,
            args,
        }
    }
}

/// How a call names its script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invoke {
    /// `EVALSHA`: the usual way, the script is cached on the node.
    ByHash,
    /// `EVAL` with the source, after a node answered `NOSCRIPT`; it caches the script there.
    WithSource,
}

/// One call of a cache script on one key.
#[derive(Debug)]
pub struct ScriptCall<'s> {
    script: &'s CacheScript,
    pub key: String,
    args: Vec<Vec<u8>>,
}

impl ScriptCall<'_> {
    pub fn command(&self, invoke: Invoke) -> redis::Cmd {
        let (name, script) = match invoke {
            Invoke::ByHash => ("EVALSHA", self.script.hash.as_str()),
            Invoke::WithSource => ("EVAL", self.script.source),
        };
        let mut command = redis::cmd(name);
        command.arg(script).arg(1).arg(&self.key);
        for arg in &self.args {
            command.arg(arg.as_slice());
        }
        command
    }
}

/// What [`WRITE`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// The cache holds this version or a newer one.
    Stale,
    /// Nothing was cached: nothing to update, and a fill's lease was lost.
    Absent,
    /// A pending lease (or an unreadable value) was deleted; the next reader fills from the database.
    Invalidated,
    /// The fill's lease was replaced: another writer got there first.
    LeaseLost,
}

impl WriteOutcome {
    /// The script's answer.
    pub fn from_reply(reply: i64) -> Option<Self> {
        match reply {
            1 => Some(Self::Written),
            0 => Some(Self::Stale),
            -1 => Some(Self::Absent),
            2 => Some(Self::Invalidated),
            3 => Some(Self::LeaseLost),
            _ => None,
        }
    }

    /// The label of the outcome in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Stale => "stale",
            Self::Absent => "absent",
            Self::Invalidated => "invalidated",
            Self::LeaseLost => "lease_lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels are a contract with dashboards (`orders_updater_events_total{result=...}`), and each
    /// reply maps to its own outcome.
    #[test]
    fn each_outcome_has_its_reply_and_its_metric_label() {
        let outcomes: Vec<(i64, &str)> = [1, 0, -1, 2, 3]
            .into_iter()
            .map(|reply| {
                let outcome = WriteOutcome::from_reply(reply).expect("a known reply");
                (reply, outcome.as_str())
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                (1, "written"),
                (0, "stale"),
                (-1, "absent"),
                (2, "invalidated"),
                (3, "lease_lost")
            ]
        );
        assert_eq!(WriteOutcome::from_reply(4), None);
    }
}
