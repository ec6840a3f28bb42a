//! The machine's raw limits, measured in the same run as the system: durable single-row commits in
//! PostgreSQL, JetStream publishes and pull consumption on the same nats-server, and a trivial
//! gRPC call over loopback. What the system does is read against these.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor, PgConnection};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::report::Dist;

/// What a commit loop measured.
#[derive(Debug)]
pub struct Commits {
    pub count: u64,
    pub elapsed: Duration,
    pub latency: Option<Dist>,
}

/// Makes the table the commit baseline writes to.
pub async fn prepare_commits(options: &PgConnectOptions) -> anyhow::Result<()> {
    let mut conn = connect(options).await?;
    conn.execute(
        "CREATE TABLE commits (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), \
         payload text NOT NULL)",
    )
    .await?;
    Ok(())
}

async fn connect(options: &PgConnectOptions) -> anyhow::Result<PgConnection> {
    tokio::time::timeout(Duration::from_secs(10), options.connect())
        .await
        .context("no connection to the bench database within 10 s")?
        .context("cannot connect to the bench database")
}

/// `count` connections to the bench database.
pub async fn connections(
    options: &PgConnectOptions,
    count: usize,
) -> anyhow::Result<Vec<PgConnection>> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        conns.push(connect(options).await?);
    }
    Ok(conns)
}

/// Single-row INSERTs, each its own (durable, synchronous) commit, from every connection at once
/// for `run`; the connections are handed back (still open, so their backends' CPU time can be
/// read).
pub async fn commits(
    conns: Vec<PgConnection>,
    run: Duration,
) -> anyhow::Result<(Commits, Vec<PgConnection>)> {
    let payload = "x".repeat(200);
    let started = Instant::now();
    let end = started + run;
    let mut tasks = Vec::new();
    for mut conn in conns {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let sent = Instant::now();
                let insert = sqlx::query("INSERT INTO commits (payload) VALUES ($1)")
                    .bind(&payload)
                    .execute(&mut conn);
                tokio::time::timeout(Duration::from_secs(10), insert)
                    .await
                    .context("an INSERT took over 10 s")??;
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>((latencies, conn))
        }));
    }
    let mut latencies = Vec::new();
    let mut conns = Vec::new();
    for task in tasks {
        let (taken, conn) = task.await??;
        latencies.extend(taken);
        conns.push(conn);
    }
    let elapsed = started.elapsed();
    let commits = Commits {
        count: latencies.len() as u64,
        elapsed,
        latency: Dist::of(&mut latencies),
    };
    Ok((commits, conns))
}

/// The stream the JetStream baselines use, stored on file like the case stream.
const STREAM: &str = "WANGGE_BENCH_RAW";
const SUBJECT: &str = "wangge.bench.raw";
/// About the size of a case event's envelope.
const PAYLOAD_BYTES: usize = 512;
/// How long the pull consumer may bring nothing before its stream is opened again.
const STALL: Duration = Duration::from_secs(2);
/// Publishes awaiting their acknowledgement at once in the pipelined baseline.
const WINDOW: usize = 256;

/// The JetStream rates, in messages per second.
#[derive(Debug, Default)]
pub struct JetStream {
    pub publish_each: Option<f64>,
    pub publish_pipelined: Option<f64>,
    pub consume: Option<f64>,
}

/// A publish as the relay makes it: with a message id, which JetStream checks for duplicates.
async fn publish(
    js: &jetstream::Context,
    payload: &[u8],
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        uuid::Uuid::now_v7().simple().to_string().as_str(),
    );
    Ok(js
        .publish_with_headers(SUBJECT, headers, payload.to_vec().into())
        .await?)
}

/// Publish awaiting each acknowledgement, pipelined publish, then pull consumption of what they
/// stored; the stream is deleted afterwards. Figures measured before a failure are kept in `out`.
pub async fn jetstream(url: &str, run: Duration, out: &mut JetStream) -> anyhow::Result<()> {
    let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(url))
        .await
        .context("no connection to nats-server within 10 s")??;
    let js = jetstream::new(client);
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![SUBJECT.to_owned()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .context("cannot create the bench stream")?;
    let result = measure(&js, run, out).await;
    let _ = js.delete_stream(STREAM).await;
    result
}

async fn measure(
    js: &jetstream::Context,
    run: Duration,
    out: &mut JetStream,
) -> anyhow::Result<()> {
    let payload = vec![b'x'; PAYLOAD_BYTES];
    let ack_timeout = Duration::from_secs(10);

    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < run {
        tokio::time::timeout(ack_timeout, publish(js, &payload).await?.into_future())
            .await
            .context("no publish acknowledgement within 10 s")??;
        sent += 1;
    }
    out.publish_each = Some(sent as f64 / started.elapsed().as_secs_f64());

    let started = Instant::now();
    let mut acked = 0u64;
    let mut acks = FuturesUnordered::new();
    loop {
        let sending = started.elapsed() < run;
        if sending && acks.len() < WINDOW {
            acks.push(tokio::time::timeout(
                ack_timeout,
                publish(js, &payload).await?.into_future(),
            ));
            continue;
        }
        match acks.next().await {
            Some(ack) => {
                ack.context("no publish acknowledgement within 10 s")??;
                acked += 1;
            }
            None => break,
        }
    }
    out.publish_pipelined = Some(acked as f64 / started.elapsed().as_secs_f64());

    let total = sent + acked;
    let stream = js.get_stream(STREAM).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .context("cannot create the bench consumer")?;
    let started = Instant::now();
    let deadline = started + run * 3 + Duration::from_secs(10);
    let mut messages = consumer.messages().await?;
    let mut consumed = 0u64;
    while consumed < total {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // A pull stream that goes quiet with messages left (seen once in CI: 40 000 of 134 055,
        // then nothing) is opened again rather than waited on until the deadline.
        match tokio::time::timeout(left.min(STALL), messages.next()).await {
            Err(_) if left > STALL => {
                messages = consumer.messages().await?;
                continue;
            }
            Ok(Some(message)) => {
                let message = message.map_err(|e| anyhow::anyhow!("pull consumer: {e}"))?;
                message
                    .ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                consumed += 1;
            }
            Ok(None) => anyhow::bail!("the pull consumer's message stream ended"),
            Err(_) => break,
        }
    }
    out.consume = Some(consumed as f64 / started.elapsed().as_secs_f64());
    anyhow::ensure!(
        consumed == total,
        "pulled {consumed} of {total} messages before the deadline"
    );
    Ok(())
}

/// gRPC unary calls per second: `grpc.health.v1.Health/Check` served in this process over loopback
/// TCP (Nagle off on both sides), `in_flight` calls at once on one connection.
pub async fn echo(run: Duration, in_flight: usize) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (_reporter, service) = tonic_health::server::health_reporter();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    let measured = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        let started = Instant::now();
        let end = started + run;
        let mut tasks = Vec::new();
        for _ in 0..in_flight {
            let mut client = HealthClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < end {
                    client.check(HealthCheckRequest::default()).await?;
                    calls += 1;
                }
                Ok::<_, tonic::Status>(calls)
            }));
        }
        let mut calls = 0;
        for task in tasks {
            calls += task.await??;
        }
        Ok::<_, anyhow::Error>(calls as f64 / started.elapsed().as_secs_f64())
    }
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    measured
}
