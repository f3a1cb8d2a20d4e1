//! The outbox relay at rest.

use std::time::Duration;

use harness::app::{Environment, shared_stack};
use service::config::Component;

/// An idle relay waits for a commit's notification (or its 500 ms poll) between rounds; it does not
/// spin. Counted in PostgreSQL: every round is a transaction of the environment's database, so over
/// three idle seconds there are a handful, where a relay that did not wait runs thousands.
#[tokio::test]
async fn an_idle_relay_waits_between_rounds_instead_of_spinning() {
    let env = Environment::fresh(shared_stack().await).await;
    let app = env
        .spawn(&[Component::Api, Component::Relay])
        .await
        .expect("the service starts");
    // Start-up's own transactions (the environment's set-up, the pool's first connections) are
    // reported over the first seconds: about 45, then 4 a second (measured).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = transactions(&env).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.create_order().await;
    assert_eq!(
        env.wait_for_empty_outbox(Duration::from_secs(20)).await,
        0,
        "the relay is running: it published the order's event"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = transactions(&env).await - before;
    assert!(
        during <= 50,
        "{during} transactions in about 3 s of an idle relay"
    );
    app.stop().await.expect("a clean stop");
}

/// A commit wakes the relay through `LISTEN`/`NOTIFY`: with its fallback poll set to an hour, an event
/// is still published at once. (Without the listener it would wait for the poll.)
#[tokio::test]
async fn a_commit_wakes_the_relay_without_waiting_for_its_poll() {
    let mut env = Environment::fresh(shared_stack().await).await;
    env.settings.outbox_poll_ms = 3_600_000;
    let app = env
        .spawn(&[Component::Api, Component::Relay])
        .await
        .expect("the service starts");
    // The relay's first round, at start, finds nothing; then it waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.create_order().await;
    assert_eq!(
        env.wait_for_empty_outbox(Duration::from_secs(20)).await,
        0,
        "the commit's notification woke the relay"
    );
    app.stop().await.expect("a clean stop");
}

/// Transactions committed or rolled back in the environment's database, as PostgreSQL counts them
/// (each backend reports its counts at the latest a second after its last report).
async fn transactions(env: &Environment) -> i64 {
    sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(env.storage.pool())
    .await
    .expect("pg_stat_database")
}

/// The backlog gauge reads PostgreSQL's statistics, not the table: it follows the outbox up while no
/// relay runs, and back to 0 once one drained it (the statistics trail by about a second).
#[tokio::test]
async fn the_backlog_estimate_follows_the_outbox_up_and_down() {
    let env = Environment::fresh(shared_stack().await).await;
    let api = env.spawn(&[Component::Api]).await.expect("the API starts");
    for _ in 0..20 {
        api.create_order().await;
    }
    assert_eq!(env.outbox_backlog().await, 20, "the premise: 20 events wait");
    assert_eq!(wait_for_estimate(&env, |rows| rows >= 20).await, 20);

    let relay = env
        .spawn(&[Component::Api, Component::Relay])
        .await
        .expect("an instance with the relay starts");
    assert_eq!(env.wait_for_empty_outbox(Duration::from_secs(20)).await, 0);
    assert_eq!(wait_for_estimate(&env, |rows| rows == 0).await, 0);
    relay.stop().await.expect("a clean stop");
    api.stop().await.expect("a clean stop");
}

/// The estimate once `done` holds of it, or the last one after 15 s.
async fn wait_for_estimate(env: &Environment, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows = service::storage::outbox::estimated_backlog(env.storage.pool())
            .await
            .expect("the statistics answer");
        if done(rows) || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
