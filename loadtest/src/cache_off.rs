//! A Redis stand-in that answers every command with an error, at once: the cache-off baseline.
//!
//! A service pointed at it finds its cache unusable on every call and reads from PostgreSQL, as it
//! does when Redis is down. Why not a Redis that is really down (a closed port)? Then the service's
//! connection manager makes each call wait for its reconnection attempt, with back-off of up to
//! ~100 ms, and the benchmark would measure that back-off rather than the database. What remains
//! here is one loopback round trip to this stub per cache call (two per read: the `MGET` and the
//! fill), which the figures include.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The one reply: a RESP error, which the Redis client reports as a server error (not an I/O error, so
/// it does not reconnect).
const REFUSAL: &[u8] = b"-ERR cache off (loadtest stand-in)\r\n";

/// Longest bulk string accepted in a command (the service's fills carry one order each).
const MAX_BULK: usize = 16 << 20;

/// The stand-in, listening on a loopback port until dropped.
pub struct RefusingRedis {
    address: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl RefusingRedis {
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let acceptor = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // One task per connection; a connection that sends garbage just ends.
                tokio::spawn(async move {
                    if let Err(error) = refuse_all(stream).await {
                        tracing::debug!(%error, "refusing redis: connection ended");
                    }
                });
            }
        });
        Ok(Self { address, acceptor })
    }

    /// `redis://127.0.0.1:<port>/`, for the service's `REDIS_URL`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.address)
    }
}

impl Drop for RefusingRedis {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Reads commands and answers each with [`REFUSAL`], in order, so that pipelines get one reply per
/// command as the client expects.
async fn refuse_all(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    while read_command(&mut reader).await? {
        writer.write_all(REFUSAL).await?;
    }
    Ok(())
}

/// Skips one RESP command (`*<n>\r\n` then `n` bulk strings `$<len>\r\n<bytes>\r\n`, which is all the
/// Redis client sends). `false` at the end of the stream.
async fn read_command<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> io::Result<bool> {
    let Some(count) = read_header(reader, b'*').await? else {
        return Ok(false);
    };
    for _ in 0..count {
        let length = read_header(reader, b'$')
            .await?
            .ok_or_else(|| invalid("the stream ended inside a command"))?;
        if length > MAX_BULK {
            return Err(invalid("bulk string too long"));
        }
        let mut skipped = vec![0; length + 2];
        reader.read_exact(&mut skipped).await?;
    }
    Ok(true)
}

/// Reads a line `<marker><number>\r\n`; `None` at the end of the stream.
async fn read_header<R: AsyncBufReadExt + Unpin>(reader: &mut R, marker: u8) -> io::Result<Option<usize>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    let text = line
        .strip_prefix(&[marker])
        .and_then(|rest| rest.strip_suffix(b"\r\n"))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .ok_or_else(|| invalid("not a RESP command"))?;
    text.parse().map(Some).map_err(|_| invalid("not a RESP length"))
}

fn invalid(reason: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_command_of_a_pipeline_gets_its_refusal() -> Result<(), Box<dyn std::error::Error>> {
        let stub = RefusingRedis::start().await?;
        let client = redis::Client::open(stub.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let get: Result<Option<String>, _> = redis::cmd("GET")
            .arg("order:1")
            .query_async(&mut connection)
            .await;
        assert!(get.is_err_and(|e| e.to_string().contains("cache off")));
        let pipelined: Result<Vec<i64>, _> = redis::pipe()
            .cmd("SET")
            .arg("a")
            .arg("1")
            .cmd("SET")
            .arg("b")
            .arg("2")
            .query_async(&mut connection)
            .await;
        assert!(pipelined.is_err());
        // The connection is still usable after the refusals: the replies stayed in step.
        let again: Result<Option<String>, _> = redis::cmd("GET").arg("x").query_async(&mut connection).await;
        assert!(again.is_err_and(|e| e.to_string().contains("cache off")));
        Ok(())
    }

    #[tokio::test]
    async fn garbage_ends_the_connection() -> Result<(), Box<dyn std::error::Error>> {
        let mut input: &[u8] = b"HELLO\r\n";
        assert!(read_command(&mut input).await.is_err());
        let mut empty: &[u8] = b"";
        assert!(!read_command(&mut empty).await?);
        Ok(())
    }
}
