//! The test harness: brings up the real wangge (a nats-server child process, or a district hub
//! with leaf nodes; fresh PostgreSQL databases; the three tiers in-process or as binaries) and
//! gives typed gRPC clients per tier.

#![allow(clippy::unwrap_used)]

pub mod chaos;
pub mod cluster;
pub mod db;
pub mod fixtures;
pub mod identity;
pub mod nats;
pub mod process;
pub mod raw;
pub mod tls;
pub mod topology;

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use cluster::{Cluster, TierClients, Topology};
pub use identity::Channel;

/// The repository's seeds folder.
pub fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../seeds")
}

/// A port nobody listens on right now, below the kernel's ephemeral range (32768–60999 on Linux).
///
/// Tiers and nats-servers are restarted on their old port. A port from the ephemeral range
/// (what binding port 0 hands out) may meanwhile become the local end of any outgoing connection on
/// the machine, and the restart then fails to bind; ports below that range are only ever taken by
/// someone binding them by number.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    // Each test process starts at its own random place and walks on, so neither it nor a test
    // running beside it hands out a port twice.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        use std::hash::{BuildHasher, Hasher};
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u32(std::process::id());
        let start = (random.finish() % u64::from(COUNT)) as u32;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..COUNT {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
        let port = u16::try_from(FIRST + offset).expect("below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}

/// Logs of the code under test, shown for failing tests (`RUST_LOG` to change the level).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,wangge=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `probe` until it yields a value or `timeout` passes; the error names what was awaited.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Some(()) once the gRPC server at `addr` answers its health check as SERVING.
pub async fn serving(addr: std::net::SocketAddr) -> Option<()> {
    serving_at(endpoint(addr, None)).await
}

/// The gRPC endpoint of a tier at `addr`: plain text, or TLS as `tls` says.
pub fn endpoint(
    addr: std::net::SocketAddr,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> tonic::transport::Endpoint {
    match tls {
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls.clone())
            .unwrap(),
    }
}

/// Like [`serving`], for any endpoint.
pub async fn serving_at(endpoint: tonic::transport::Endpoint) -> Option<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let channel = endpoint.connect().await.ok()?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .ok()?;
    (status.into_inner().status == ServingStatus::Serving as i32).then_some(())
}
