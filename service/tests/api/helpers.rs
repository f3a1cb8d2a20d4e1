//! What only these tests need beyond the workspace's test support (`harness::app`): the
//! `orders-service` binary as a process of its own, for tests that kill it with SIGKILL.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use harness::app::Environment;

pub struct ServiceProcess {
    child: Child,
}

impl ServiceProcess {
    pub fn start(env: &Environment, components: &str, grpc_addr: SocketAddr) -> Self {
        let settings = &env.settings;
        let child = Command::new(env!("CARGO_BIN_EXE_orders-service"))
            .args(["run", "--components", components])
            .env("DATABASE_URL", &settings.database_url)
            .env("REDIS_URL", &settings.redis_url)
            .env("KAFKA_BROKERS", &settings.kafka_brokers)
            .env("ORDERS_TOPIC", &settings.orders_topic)
            .env("UPDATER_GROUP", &settings.updater_group)
            .env("GRPC_ADDR", grpc_addr.to_string())
            .env_remove("AUTH_TOKEN")
            .env_remove("METRICS_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start orders-service");
        Self { child }
    }

    /// SIGKILL: no shutdown, no flush, no commit.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address no other process can take before the service binds it.
pub fn free_address() -> SocketAddr {
    harness::stack::ports::reserve_address().expect("a free loopback port")
}
