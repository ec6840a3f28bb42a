//! The reports and where they arrive: valid reports from many grid workers at points spread over
//! the grids of the scope, sent closed-loop (N field apps, each sending when its last report was
//! answered) or open-loop (on a fixed schedule, whatever the answers do); and the live
//! `WatchCases` streams of the street and district consoles, which tell when each report is held
//! there, by its client id. Nothing polls the databases.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use geo::{BoundingRect, Contains, Point};
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use wangge_auth::{Claims, SigningKey};
use wangge_proto as pb;

/// 海沧区: the scope the tiers serve and the reports come from.
pub const SCOPE: &str = "350205";
/// Grid workers reporting (each its own token subject, so its own rate limit).
const WORKERS: usize = 256;
/// Report points drawn inside each grid.
const SPOTS_PER_GRID: usize = 32;
/// How long a token of the bench lives: longer than any run.
const TOKEN_TTL_SECS: i64 = 6 * 3600;
/// Minor classes of 数字城管 that never skip the street at normal urgency (skip-tier.toml), so
/// every report travels village → street and district.
const CATEGORIES: [&str; 20] = [
    "szcg-01-01",
    "szcg-01-02",
    "szcg-01-03",
    "szcg-01-04",
    "szcg-01-05",
    "szcg-02-01",
    "szcg-02-02",
    "szcg-02-03",
    "szcg-03-01",
    "szcg-03-02",
    "szcg-03-03",
    "szcg-03-04",
    "szcg-05-01",
    "szcg-05-02",
    "szcg-05-03",
    "szcg-05-04",
    "szcg-05-05",
    "szcg-06-01",
    "szcg-06-02",
    "szcg-06-03",
];

/// A well-mixed 64-bit hash (splitmix64): the same report number picks the same point and
/// category in every run.
pub fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A grid of the scope and points inside it.
#[derive(Debug, Clone)]
pub struct Grid {
    pub code: String,
    pub spots: Vec<(f64, f64)>,
}

/// The grids of the scope from the seeds, each with points drawn inside its boundary (its
/// interior point first).
pub fn grids(seeds: &Path) -> anyhow::Result<Vec<Grid>> {
    grids_with(seeds, SPOTS_PER_GRID)
}

/// [`grids`] with up to `spots_per_grid` points in each.
pub fn grids_with(seeds: &Path, spots_per_grid: usize) -> anyhow::Result<Vec<Grid>> {
    let mut out = Vec::new();
    for (g, grid) in wangge_seed::load_grids(seeds)
        .with_context(|| format!("reading the grids of {}", seeds.display()))?
        .iter()
        .enumerate()
        .filter(|(_, g)| g.code.as_str().starts_with(SCOPE))
    {
        let interior = wangge_seed::interior_point(grid);
        let mut spots = vec![interior];
        if let Some(rect) = grid.boundary.bounding_rect() {
            let (min, max) = (rect.min(), rect.max());
            let mut draw = mix(g as u64);
            for _ in 0..spots_per_grid * 50 {
                if spots.len() >= spots_per_grid {
                    break;
                }
                draw = mix(draw);
                let u = (draw >> 11) as f64 / (1u64 << 53) as f64;
                draw = mix(draw);
                let v = (draw >> 11) as f64 / (1u64 << 53) as f64;
                let point = Point::new(min.x + u * (max.x - min.x), min.y + v * (max.y - min.y));
                if grid.boundary.contains(&point) {
                    spots.push((point.x(), point.y()));
                }
            }
        }
        if interior.0.is_finite() {
            out.push(Grid {
                code: grid.code.to_string(),
                spots,
            });
        }
    }
    anyhow::ensure!(!out.is_empty(), "no grid of scope {SCOPE} in the seeds");
    Ok(out)
}

/// `Bearer <token>` for claims signed with `key`.
pub fn bearer(key: &SigningKey, claims: &Claims) -> anyhow::Result<MetadataValue<Ascii>> {
    Ok(format!("Bearer {}", key.issue(claims)?).parse()?)
}

/// `Bearer <token>` for a demo persona (`op-350205002000` …).
pub fn persona(key: &SigningKey, name: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    let claims = wangge_auth::dev::persona(name, wangge_auth::dev::now(), TOKEN_TTL_SECS)
        .map_err(anyhow::Error::msg)?;
    bearer(key, &claims)
}

pub fn authorized<T>(token: &MetadataValue<Ascii>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

/// A channel to a tier at `url`, its calls timed out after `timeout`.
pub async fn connect(url: String, timeout: Duration) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(url.clone())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// A tier's `GetStatus`, asked with `token`.
pub async fn status(
    channel: &Channel,
    token: &MetadataValue<Ascii>,
) -> Result<pb::TierStatus, tonic::Status> {
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    Ok(admin
        .get_status(authorized(token, pb::GetStatusRequest::default()))
        .await?
        .into_inner())
}

/// Where a report is seen held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Street,
    District,
}

/// One report of a phase.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When it was sent, or for the open loop when it was due.
    start: Instant,
    replied: Option<Instant>,
    ok: bool,
    street: Option<Instant>,
    district: Option<Instant>,
}

/// The reports of one phase and what became of them.
#[derive(Debug, Default)]
pub struct Log {
    samples: Mutex<Vec<Sample>>,
    errors: Mutex<BTreeMap<String, usize>>,
    street: AtomicUsize,
    district: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder left plain data behind: still good to read.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Log {
    pub fn new() -> Arc<Log> {
        Arc::new(Log::default())
    }

    fn register(&self, start: Instant) -> usize {
        let mut samples = lock(&self.samples);
        samples.push(Sample {
            start,
            replied: None,
            ok: false,
            street: None,
            district: None,
        });
        samples.len() - 1
    }

    fn replied(&self, index: usize, outcome: Result<(), &tonic::Status>) {
        let now = Instant::now();
        if let Some(sample) = lock(&self.samples).get_mut(index) {
            sample.replied = Some(now);
            sample.ok = outcome.is_ok();
        }
        if let Err(status) = outcome {
            let mut message = status.message().to_owned();
            message.truncate(120);
            *lock(&self.errors)
                .entry(format!("{:?}: {message}", status.code()))
                .or_default() += 1;
        }
    }

    /// Records the arrival; true once the report is held on both sides.
    fn arrived(&self, index: usize, side: Side, at: Instant) -> bool {
        let mut samples = lock(&self.samples);
        let Some(sample) = samples.get_mut(index) else {
            return false;
        };
        let slot = match side {
            Side::Street => &mut sample.street,
            Side::District => &mut sample.district,
        };
        if slot.is_none() {
            *slot = Some(at);
            match side {
                Side::Street => self.street.fetch_add(1, Ordering::Relaxed),
                Side::District => self.district.fetch_add(1, Ordering::Relaxed),
            };
        }
        sample.street.is_some() && sample.district.is_some()
    }

    /// Reports answered with a case.
    pub fn ok(&self) -> usize {
        lock(&self.samples).iter().filter(|s| s.ok).count()
    }

    pub fn arrivals(&self, side: Side) -> usize {
        match side {
            Side::Street => self.street.load(Ordering::Relaxed),
            Side::District => self.district.load(Ordering::Relaxed),
        }
    }

    /// Refusals and failures, by code and message.
    pub fn errors(&self) -> BTreeMap<String, usize> {
        lock(&self.errors).clone()
    }

    /// How long answered reports took, from their start.
    pub fn reply_latencies(&self) -> Vec<Duration> {
        lock(&self.samples)
            .iter()
            .filter(|s| s.ok)
            .filter_map(|s| Some(s.replied? - s.start))
            .collect()
    }

    /// How long answered reports took to be held on `side`, from their start.
    pub fn arrival_latencies(&self, side: Side) -> Vec<Duration> {
        lock(&self.samples)
            .iter()
            .filter(|s| s.ok)
            .filter_map(|s| {
                let at = match side {
                    Side::Street => s.street?,
                    Side::District => s.district?,
                };
                Some(at.saturating_duration_since(s.start))
            })
            .collect()
    }

    pub fn first_start(&self) -> Option<Instant> {
        lock(&self.samples).iter().map(|s| s.start).min()
    }

    pub fn last_reply(&self) -> Option<Instant> {
        lock(&self.samples).iter().filter_map(|s| s.replied).max()
    }

    pub fn last_arrival(&self, side: Side) -> Option<Instant> {
        lock(&self.samples)
            .iter()
            .filter_map(|s| match side {
                Side::Street => s.street,
                Side::District => s.district,
            })
            .max()
    }

    /// Waits until every answered report is held on each of `sides`, at most `within`.
    pub async fn wait(&self, sides: &[Side], within: Duration, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.ok();
            let missing: Vec<String> = sides
                .iter()
                .filter(|side| self.arrivals(**side) < ok)
                .map(|side| {
                    format!(
                        "{} of {ok} at the {side:?}",
                        ok - self.arrivals(*side).min(ok)
                    )
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {within:?} waiting for {what} to be held: {} still missing",
                    missing.join(", ").to_lowercase()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Which phase and report a client id belongs to, until it is held on both sides.
#[derive(Debug, Default)]
pub struct Tracker {
    pending: Mutex<HashMap<String, (Arc<Log>, usize)>>,
    breaks: Mutex<Vec<(Side, String)>>,
}

impl Tracker {
    fn expect(&self, client_id: String, log: Arc<Log>, index: usize) {
        lock(&self.pending).insert(client_id, (log, index));
    }

    fn arrived(&self, client_id: &str, side: Side, at: Instant) {
        let mut pending = lock(&self.pending);
        if let Some((log, index)) = pending.get(client_id)
            && log.arrived(*index, side, at)
        {
            pending.remove(client_id);
        }
    }

    /// Watch streams that broke (each is opened again at once); reports whose updates were lost
    /// then never show as held.
    pub fn breaks(&self) -> Vec<String> {
        lock(&self.breaks).iter().map(|(_, b)| b.clone()).collect()
    }
}

/// Opens a console's live watch (`CommandConsoleService/WatchCases` as `persona`) and follows it
/// in the background, telling `tracker` what is held on `side`; a broken stream is opened again.
pub async fn watch(
    channel: Channel,
    token: MetadataValue<Ascii>,
    side: Side,
    who: String,
    tracker: Arc<Tracker>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let open = {
        let (channel, token) = (channel.clone(), token.clone());
        move || {
            let mut console = pb::command_console_service_client::CommandConsoleServiceClient::new(
                channel.clone(),
            );
            let request = authorized(&token, pb::WatchCasesRequest::default());
            async move {
                tokio::time::timeout(Duration::from_secs(10), console.watch_cases(request))
                    .await
                    .map_err(|_| tonic::Status::deadline_exceeded("no answer within 10 s"))?
                    .map(tonic::Response::into_inner)
            }
        }
    };
    let mut stream = open()
        .await
        .with_context(|| format!("cannot open the {side:?} watch of {who}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let broke = loop {
                match stream.message().await {
                    Ok(Some(update)) => {
                        let at = Instant::now();
                        if let Some(case) = update.case {
                            tracker.arrived(&case.client_id, side, at);
                        }
                    }
                    Ok(None) => break "the stream ended".to_owned(),
                    Err(status) => break format!("{:?}: {}", status.code(), status.message()),
                }
            };
            lock(&tracker.breaks).push((side, format!("{side:?} watch of {who}: {broke}")));
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(again) = open().await {
                    stream = again;
                    break;
                }
            }
        }
    }))
}

/// The field apps: a connection each to the village, and the grid workers' tokens.
#[derive(Debug)]
pub struct Field {
    apps: Vec<pb::field_app_service_client::FieldAppServiceClient<Channel>>,
    workers: Vec<MetadataValue<Ascii>>,
    grids: Vec<Grid>,
    spots: Vec<(f64, f64)>,
    tracker: Arc<Tracker>,
    next: AtomicU64,
}

impl Field {
    /// `apps` connections to the village at `url`, tokens signed with `key`.
    pub async fn connect(
        url: &str,
        apps: usize,
        key: &SigningKey,
        grids: Vec<Grid>,
        tracker: Arc<Tracker>,
    ) -> anyhow::Result<Field> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            // No report waits forever: an answer after a minute is a failure.
            .timeout(Duration::from_secs(60));
        let mut connections = Vec::with_capacity(apps);
        for _ in 0..apps.max(1) {
            let channel = endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to the village at {url}"))?;
            connections.push(pb::field_app_service_client::FieldAppServiceClient::new(
                channel,
            ));
        }
        let now = wangge_auth::dev::now();
        let workers = (0..WORKERS)
            .map(|k| {
                let claims = Claims::new(
                    &format!("gw-bench-{k:03}"),
                    &["grid_worker"],
                    &[SCOPE],
                    &[],
                    now,
                    TOKEN_TTL_SECS,
                );
                bearer(key, &claims)
            })
            .collect::<anyhow::Result<_>>()?;
        let mut field = Field {
            apps: connections,
            workers,
            grids,
            spots: Vec::new(),
            tracker,
            next: AtomicU64::new(0),
        };
        field.spread();
        Ok(field)
    }

    fn spread(&mut self) {
        self.spots = self
            .grids
            .iter()
            .flat_map(|g| g.spots.iter().copied())
            .collect();
    }

    pub fn grids(&self) -> &[Grid] {
        &self.grids
    }

    /// Reports only in these grids from now on.
    pub fn keep_grids(&mut self, keep: impl Fn(&Grid) -> bool) {
        self.grids.retain(keep);
        self.spread();
    }

    /// The streets (9-digit codes) the grids lie in.
    pub fn streets(&self) -> Vec<String> {
        let mut streets: Vec<String> = self.grids.iter().map(|g| g.code[..9].to_owned()).collect();
        streets.sort();
        streets.dedup();
        streets
    }

    /// Sends the next report, at a point drawn from all grids; `start` is when it counts from
    /// (now, or when it was due). True when the village answered with a case.
    pub async fn report(&self, start: Instant, log: &Arc<Log>) -> bool {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let spot = self.spots[(mix(n) % self.spots.len() as u64) as usize];
        self.report_at(n, spot, start, log).await.is_ok()
    }

    /// Sends report number `n` at `spot`.
    pub async fn report_at(
        &self,
        n: u64,
        (longitude, latitude): (f64, f64),
        start: Instant,
        log: &Arc<Log>,
    ) -> Result<(), tonic::Status> {
        let client_id = uuid::Uuid::now_v7().to_string();
        let worker = &self.workers[(n % self.workers.len() as u64) as usize];
        let mut app = self.apps[(n % self.apps.len() as u64) as usize].clone();
        let category = CATEGORIES[(mix(n ^ 0x5bd1_e995) % CATEGORIES.len() as u64) as usize];
        let request = authorized(
            worker,
            pb::ReportCaseRequest {
                client_id: client_id.clone(),
                category_code: category.to_owned(),
                description: format!("基准测试报告 {n}"),
                location: Some(pb::GeoPoint {
                    longitude,
                    latitude,
                }),
                ..Default::default()
            },
        );
        let index = log.register(start);
        // Known before it is sent: a watch may see it before the answer comes back.
        self.tracker.expect(client_id, log.clone(), index);
        let outcome = app.report_case(request).await.map(|_| ());
        log.replied(index, outcome.as_ref().map(|_| ()));
        outcome
    }
}

/// When a closed loop stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this long.
    Elapsed(Duration),
    /// After this many reports were sent, or this long, whichever comes first.
    Sent(u64, Duration),
}

/// `apps` field apps each sending its next report as soon as the last was answered.
pub async fn closed_loop(
    field: &Arc<Field>,
    apps: usize,
    until: Until,
    log: &Arc<Log>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (limit, within) = match until {
        Until::Elapsed(within) => (u64::MAX, within),
        Until::Sent(count, within) => (count, within),
    };
    let end = started + within;
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..apps.max(1) {
        let (field, log, sent) = (field.clone(), log.clone(), sent.clone());
        tasks.spawn(async move {
            while Instant::now() < end && sent.fetch_add(1, Ordering::Relaxed) < limit {
                field.report(Instant::now(), &log).await;
            }
        });
    }
    // Each call has the channel's own timeout: the loop ends within a minute of its end.
    while let Some(joined) = tasks.join_next().await {
        joined.context("a field app panicked")?;
    }
    Ok(())
}

/// Reports due at `rate` a second for `run`, each sent when due whatever the earlier ones are
/// doing (open loop), timed from when it was due; also stops when `stop` is set. Returns how late
/// the sender was at worst.
pub async fn open_loop(
    field: &Arc<Field>,
    rate: f64,
    run: Duration,
    log: &Arc<Log>,
    stop: Option<Arc<AtomicBool>>,
) -> anyhow::Result<Duration> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let count = (rate * run.as_secs_f64()).round() as u64;
    let first = Instant::now() + Duration::from_millis(20);
    let mut late = Duration::ZERO;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let due = first + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        late = late.max(Instant::now().saturating_duration_since(due));
        let (field, log) = (field.clone(), log.clone());
        tasks.spawn(async move { field.report(due, &log).await });
        // Reap what is done, so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a report task panicked")?;
    }
    Ok(late)
}
