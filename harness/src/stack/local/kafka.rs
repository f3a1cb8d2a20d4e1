//! Apache Kafka in KRaft mode from the official jars: every node is a combined broker and controller.
//!
//! One node is the usual stack; three give a quorum that survives the loss of one (failover tests). Each
//! node's storage is formatted once with `kafka.tools.StorageTool format`; restarts reuse it, so a
//! stopped or killed broker comes back with its data. Replication settings follow the node count, so a
//! single node works and three nodes keep every partition on all of them.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::RngCore;

use crate::stack::error::{Result, StackError};
use crate::stack::process::Launch;
use crate::stack::tools;

/// The ports of one node.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub broker: u16,
    pub controller: u16,
}

pub fn prepare(dir: &Path, nodes: &[NodePorts]) -> Result<Vec<Launch>> {
    let java = tools::java()?;
    let libs = tools::kafka_libs()?;
    let classpath = format!("{}/*", libs.display());
    let cluster_id = cluster_id();
    let voters = nodes
        .iter()
        .enumerate()
        .map(|(i, ports)| format!("{}@127.0.0.1:{}", i + 1, ports.controller))
        .collect::<Vec<_>>()
        .join(",");
    let replication = nodes.len().min(3);
    let min_isr = if replication >= 3 { 2 } else { 1 };

    let mut launches = Vec::with_capacity(nodes.len());
    for (i, ports) in nodes.iter().enumerate() {
        let node_id = i + 1;
        let node_dir = dir.join(format!("kafka-{node_id}"));
        std::fs::create_dir_all(&node_dir)?;
        let properties = node_dir.join("server.properties");
        std::fs::write(
            &properties,
            format!(
                "process.roles=broker,controller\n\
                 node.id={node_id}\n\
                 controller.quorum.voters={voters}\n\
                 listeners=PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{broker}\n\
                 controller.listener.names=CONTROLLER\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 log.dirs={data}\n\
                 num.partitions=3\n\
                 default.replication.factor={replication}\n\
                 min.insync.replicas={min_isr}\n\
                 offsets.topic.replication.factor={replication}\n\
                 offsets.topic.num.partitions=10\n\
                 transaction.state.log.replication.factor={replication}\n\
                 transaction.state.log.min.isr={min_isr}\n\
                 share.coordinator.state.topic.replication.factor={replication}\n\
                 share.coordinator.state.topic.min.isr={min_isr}\n\
                 group.initial.rebalance.delay.ms=0\n\
                 auto.create.topics.enable=false\n\
                 log.flush.interval.messages=9223372036854775807\n",
                broker = ports.broker,
                controller = ports.controller,
                data = node_dir.join("data").display(),
            ),
        )?;
        let log4j = node_dir.join("log4j2.properties");
        std::fs::write(&log4j, log4j_config(&node_dir.join("server.log")))?;

        format_storage(&java, &classpath, &cluster_id, &properties)?;

        launches.push(Launch {
            name: "kafka",
            program: java.clone(),
            args: vec![
                "-Xms256m".into(),
                "-Xmx768m".into(),
                "-XX:+UseG1GC".into(),
                "-Djava.awt.headless=true".into(),
                format!("-Dlog4j2.configurationFile={}", log4j.display()),
                "-cp".into(),
                classpath.clone(),
                "kafka.Kafka".into(),
                properties.to_string_lossy().into_owned(),
            ],
            envs: vec![],
            log: node_dir.join("stdout.log"),
            server_log: Some(node_dir.join("server.log")),
            run_as: None,
            stop_signal: libc::SIGTERM,
        });
    }
    Ok(launches)
}

fn format_storage(java: &Path, classpath: &str, cluster_id: &str, properties: &PathBuf) -> Result<()> {
    let output = Command::new(java)
        .args([
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
        ])
        // `=`: a cluster id may start with '-', which would read as an option.
        .arg(format!("--cluster-id={cluster_id}"))
        .arg("-c")
        .arg(properties)
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(StackError::Setup(format!(
            "kafka storage format failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what `random-uuid` prints).
fn cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let bits: u128 = u128::from_be_bytes(bytes);
    // 22 characters of 6 bits cover 132 bits; the 16 bytes are the top 128 of them.
    (0..22)
        .map(|i| {
            let shift = 128i32 - 6 * (i + 1);
            let index = if shift >= 0 {
                (bits >> shift) & 0x3f
            } else {
                (bits << (-shift)) & 0x3f
            };
            ALPHABET[index as usize] as char
        })
        .collect()
}

/// Broker logs go to a file in the node's directory, not to our terminal.
fn log4j_config(file: &Path) -> String {
    format!(
        "status = error\n\
         appender.file.type = File\n\
         appender.file.name = file\n\
         appender.file.fileName = {}\n\
         appender.file.layout.type = PatternLayout\n\
         appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
         rootLogger.level = INFO\n\
         rootLogger.appenderRef.file.ref = file\n\
         logger.kafka.name = kafka\n\
         logger.kafka.level = INFO\n\
         logger.apache.name = org.apache.kafka\n\
         logger.apache.level = INFO\n",
        file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let id = cluster_id();
        assert_eq!(id.len(), 22);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(id, cluster_id());
    }
}
