//! The synthetic history of the scale mode: years of a district's cases, built event by event
//! through the domain's state machine (`wangge_domain::case::apply`, as the tiers build them) and
//! bulk-loaded with `COPY` into a database of its own, which the tiers' databases are then copied
//! from.
//!
//! The history is one timeline of reports at a steady rate over `--scale-years` (more by day
//! than by night), ending at the anchor (when the run began). Each report follows a path a real
//! case takes: filed and dispatched at its street, signed, handled, checked on site and closed;
//! some verified first, rejected, archived or voided, returned by a department, extended, hung
//! for weeks, failed at the check and reworked, escalated to the district (or skipping the
//! street, where the seeds' skip-tier rules say so), or handled on the spot by the grid worker.
//! Each step comes a while after the one before; a step that would fall after the anchor has not
//! happened yet, so the recent cases are the open ones, as in a real district. Where a stage
//! overran its time limit, the history holds the automatic 督办 the owning tier's scan raised
//! (`wangge_tier::supervise::due` on the tier's own clocks), so the tiers start with nothing due.
//!
//! The small history is the newest cases of the timeline; growing it adds the older ones. So
//! both sizes hold the same recent days (the same open cases, the same last 24 hours), and what
//! differs is how far back the history reaches.
//!
//! Every draw is a hash of the case's place on the timeline: the same sizes give the same
//! history in every run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use pb::case_event::Kind;
use pb::{CaseState as State, Role, Tier};
use prost::Message;
use sqlx::{Executor, PgConnection, PgPool};
use uuid::Uuid;
use wangge_domain::case::{self as machine, state_name, tier_name};
use wangge_domain::clock::{china, china_time};
use wangge_domain::codes::GridCode;
use wangge_proto as pb;
use wangge_tier::clocks::{self, Rules};

use crate::load::{self, mix};

/// Cases built and copied at a time.
const CHUNK: usize = 2_000;
/// Above this many cases in one load, the secondary indexes are dropped first and built again
/// afterwards: one sort beats a million random insertions into each.
const REBUILD_INDEXES_ABOVE: usize = 100_000;
/// Report points per grid.
const SPOTS_PER_GRID: usize = 64;
/// Reports by hour of the day, China time: patrols by day, a few calls at night.
const HOURLY: [u32; 24] = [
    1, 1, 1, 1, 1, 2, 4, 8, 12, 12, 11, 10, 8, 9, 11, 11, 10, 9, 7, 6, 5, 4, 2, 1,
];
const SECOND: i64 = 1_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 2000-01-01T00:00:00Z in unix microseconds: PostgreSQL's epoch.
const PG_EPOCH: i64 = 946_684_800 * SECOND;

/// A grid cases are reported in.
#[derive(Debug)]
struct Place {
    grid: String,
    community: String,
    /// The 12-digit org code of its street (its command center).
    street: String,
    spots: Vec<(f64, f64)>,
}

/// A minor class of the registry, with what handles it.
#[derive(Debug)]
struct Category {
    code: String,
    name: String,
    kind: String,
    /// How often it is drawn, relative to the others.
    weight: u64,
}

/// What the history is made of: the registry of the seeded database and the rules the tiers run
/// on.
#[derive(Debug)]
pub(crate) struct Registry {
    places: Vec<Place>,
    categories: Vec<Category>,
    /// The sum of the categories' weights.
    weights: u64,
    /// Department codes by (org code, department kind).
    departments: HashMap<(String, String), String>,
    rules: Rules,
}

impl Registry {
    /// Reads the registry of the seeded database behind `pool`; the report points come from the
    /// seeds' grid boundaries.
    pub async fn load(pool: &PgPool, seeds: &Path) -> anyhow::Result<Registry> {
        use wangge_store::registry;
        let known: HashSet<String> = registry::grids(pool, load::SCOPE)
            .await
            .context("cannot read the grids of the registry")?
            .into_iter()
            .map(|row| row.grid.code)
            .collect();
        let mut places = Vec::new();
        for grid in load::grids_with(seeds, SPOTS_PER_GRID)? {
            if !known.contains(&grid.code) {
                continue;
            }
            let code: GridCode = grid
                .code
                .parse()
                .map_err(|e| anyhow!("grid {}: {e}", grid.code))?;
            places.push(Place {
                grid: grid.code.clone(),
                community: code.community().to_string(),
                street: code.street().to_string(),
                spots: grid.spots,
            });
        }
        anyhow::ensure!(
            !places.is_empty(),
            "no grid of scope {} in both the seeds and the registry",
            load::SCOPE
        );
        let mut departments = HashMap::new();
        for department in registry::departments(pool, load::SCOPE)
            .await
            .context("cannot read the departments")?
        {
            departments
                .entry((department.org_code, department.kind))
                .or_insert(department.code);
        }
        let district = format!("{}000000", load::SCOPE);
        let streets: HashSet<&str> = places.iter().map(|p| p.street.as_str()).collect();
        // Only categories every center of the history can dispatch: a department of their kind
        // at the district and at every street.
        let categories: Vec<Category> = registry::categories(pool, None)
            .await
            .context("cannot read the categories")?
            .into_iter()
            .filter(|c| !c.parent_code.is_empty())
            .filter(|c| {
                std::iter::once(district.as_str())
                    .chain(streets.iter().copied())
                    .all(|org| {
                        departments.contains_key(&(org.to_owned(), c.department_kind.clone()))
                    })
            })
            .map(|c| Category {
                // 市容环境 (rubbish, dirty roads, heaps) is what grid workers report most.
                weight: if c.code.starts_with("szcg-01") { 4 } else { 1 },
                code: c.code,
                name: c.name,
                kind: c.department_kind,
            })
            .collect();
        anyhow::ensure!(
            !categories.is_empty(),
            "no category whose kind of department every center of {} has",
            load::SCOPE
        );
        let communities: HashSet<&str> = places.iter().map(|p| p.community.as_str()).collect();
        let rules = rules(pool, &communities).await?;
        Ok(Registry {
            weights: categories.iter().map(|c| c.weight).sum(),
            places,
            categories,
            departments,
            rules,
        })
    }

    /// The grids cases are reported in.
    pub fn grids(&self) -> impl Iterator<Item = &str> {
        self.places.iter().map(|p| p.grid.as_str())
    }

    /// The report points of a grid.
    pub fn spots(&self, grid: &str) -> &[(f64, f64)] {
        self.places
            .iter()
            .find(|p| p.grid == grid)
            .map_or(&[], |p| p.spots.as_slice())
    }

    /// The category codes a report at normal urgency at the street of `street` (12 digits) is
    /// filed under without skipping the street, each with the street's department of its kind.
    pub fn street_categories(&self, street: &str) -> Vec<(String, String)> {
        self.categories
            .iter()
            .filter(|c| !self.rules.skips.skips_street(&c.code, pb::Urgency::Normal))
            .filter_map(|c| {
                let department = self.departments.get(&(street.to_owned(), c.kind.clone()))?;
                Some((c.code.clone(), department.clone()))
            })
            .collect()
    }

    /// The org (a street's or the district's 12-digit code) a department belongs to.
    pub fn department_org(&self, code: &str) -> Option<&str> {
        self.departments
            .iter()
            .find(|(_, department)| *department == code)
            .map(|((org, _), _)| org.as_str())
    }

    fn category(&self, draw: u64) -> &Category {
        let mut left = draw % self.weights.max(1);
        for category in &self.categories {
            if left < category.weight {
                return category;
            }
            left -= category.weight;
        }
        &self.categories[0]
    }
}

/// The time limits, skip-tier rules and work calendars, read as the tiers read them
/// (`wangge_tier::engine::load_rules`).
async fn rules(pool: &PgPool, communities: &HashSet<&str>) -> anyhow::Result<Rules> {
    use wangge_store::rules;
    let mut calendars = HashMap::new();
    for community in communities {
        let calendar = rules::calendar_for(pool, community)
            .await
            .with_context(|| format!("cannot read the work calendar of {community}"))?;
        calendars.insert((*community).to_owned(), Arc::new(calendar));
    }
    Ok(Rules {
        limits: rules::limit_rules(pool)
            .await
            .context("cannot read the time limits")?,
        skips: rules::skip_rules(pool)
            .await
            .context("cannot read the skip-tier rules")?,
        calendars,
        fallback: Arc::new(
            rules::calendar_for(pool, load::SCOPE)
                .await
                .context("cannot read the work calendar")?,
        ),
        categories: wangge_store::registry::categories(pool, None)
            .await
            .context("cannot read the categories")?
            .into_iter()
            .map(|c| c.code)
            .collect(),
    })
}

/// One report of the timeline.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When it was reported, unix microseconds.
    at: i64,
    place: u32,
    /// Its number of the day in its community.
    sequence: u32,
}

/// Every report of the history, oldest first, and when the history ends.
#[derive(Debug)]
pub(crate) struct Timeline {
    /// Unix microseconds: every event of the history lies before it.
    anchor: i64,
    slots: Vec<Slot>,
}

impl Timeline {
    /// `cases` reports spread over `span` before `anchor`.
    pub fn new(
        registry: &Registry,
        cases: usize,
        span: Duration,
        anchor: DateTime<Utc>,
    ) -> Timeline {
        let anchor = anchor.timestamp_micros();
        let span = i64::try_from(span.as_micros()).unwrap_or(i64::MAX).max(DAY);
        let hours: u32 = HOURLY.iter().sum();
        let mut times: Vec<i64> = (0..cases as u64)
            .map(|n| {
                let draw = mix(n ^ 0x7f4a_7c15_9e37_79b9);
                let instant = anchor - (draw % span as u64) as i64;
                // The day stays, the hour follows the day's rhythm.
                let mut pick = (mix(draw) % u64::from(hours)) as u32;
                let mut hour = 0;
                while pick >= HOURLY[hour] {
                    pick -= HOURLY[hour];
                    hour += 1;
                }
                let day = china_time(utc(instant)).date();
                let within = (mix(draw ^ 1) % (HOUR as u64)) as i64;
                let local = day
                    .and_hms_opt(hour as u32, 0, 0)
                    .and_then(|t| china().from_local_datetime(&t).single())
                    .map(|t| t.timestamp_micros() + within)
                    .unwrap_or(instant);
                if local < anchor { local } else { instant }
            })
            .collect();
        times.sort_unstable();
        let mut numbers: HashMap<(u32, NaiveDate), u32> = HashMap::new();
        let communities: Vec<u32> = {
            let mut seen: HashMap<&str, u32> = HashMap::new();
            registry
                .places
                .iter()
                .map(|p| {
                    let next = seen.len() as u32;
                    *seen.entry(p.community.as_str()).or_insert(next)
                })
                .collect()
        };
        let slots = times
            .into_iter()
            .enumerate()
            .map(|(n, at)| {
                let place =
                    (mix(n as u64 ^ 0x2545_f491_4f6c_dd1d) % registry.places.len() as u64) as u32;
                let day = china_time(utc(at)).date();
                let sequence = numbers
                    .entry((communities[place as usize], day))
                    .or_default();
                *sequence += 1;
                Slot {
                    at,
                    place,
                    sequence: *sequence,
                }
            })
            .collect();
        Timeline { anchor, slots }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The case id of report `n` (UUIDv7 of its report time, as the village makes them).
    pub fn case_id(&self, n: usize) -> Uuid {
        let at = self.slots.get(n).map_or(self.anchor, |s| s.at);
        uuid_v7(at, mix(n as u64 ^ 0xc2b2_ae3d_27d4_eb4f))
    }

    /// The grid of report `n`.
    pub fn grid<'r>(&self, registry: &'r Registry, n: usize) -> &'r str {
        self.slots
            .get(n)
            .and_then(|s| registry.places.get(s.place as usize))
            .map_or("", |p| p.grid.as_str())
    }

    /// When the history ends.
    pub fn anchor(&self) -> DateTime<Utc> {
        utc(self.anchor)
    }
}

/// A deterministic stream of draws.
#[derive(Debug, Clone, Copy)]
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// An exponentially distributed wait with mean `mean` (microseconds), at least a minute.
    fn wait(&mut self, mean: i64) -> i64 {
        let u = self.unit().max(1e-12);
        ((-u.ln() * mean as f64) as i64).max(MINUTE)
    }

    fn hex(&mut self, digits: usize) -> String {
        let mut out = String::with_capacity(digits + 16);
        while out.len() < digits {
            out.push_str(&format!("{:016x}", self.next()));
        }
        out.truncate(digits);
        out
    }
}

fn utc(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn wire(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(SECOND),
        nanos: (micros.rem_euclid(SECOND) * 1000) as i32,
    }
}

fn micros(at: Option<prost_types::Timestamp>) -> i64 {
    at.map_or(0, |t| t.seconds * SECOND + i64::from(t.nanos) / 1000)
}

fn uuid_v7(at: i64, random: u64) -> Uuid {
    let mut bytes = [0u8; 10];
    bytes[..8].copy_from_slice(&random.to_le_bytes());
    bytes[8..].copy_from_slice(&mix(random).to_le_bytes()[..2]);
    uuid::Builder::from_unix_timestamp_millis((at / 1000).max(0) as u64, &bytes).into_uuid()
}

fn actor(id: impl Into<String>, role: Role) -> pb::Actor {
    pb::Actor {
        id: id.into(),
        role: role as i32,
    }
}

/// What people write, a few of each.
const PHRASES: [&str; 6] = [
    "巡查发现，已拍照取证",
    "居民反映，影响通行",
    "路边发现，需尽快处理",
    "多次出现，请相关部门处置",
    "夜间巡查发现",
    "群众来电反映",
];
const RESULTS: [&str; 4] = ["已处理完毕", "已清理，现场恢复", "已整改到位", "已协调处置"];
const REASONS: [&str; 4] = ["非本部门职责", "需多部门协调", "重复上报", "现场条件不具备"];

/// A case walking through the state machine.
struct Walk<'a> {
    registry: &'a Registry,
    /// Unix microseconds: steps after it have not happened yet.
    anchor: i64,
    draw: Draw,
    case: Option<pb::Case>,
    events: Vec<pb::CaseEvent>,
    /// When the last event happened.
    at: i64,
    /// A step fell after the anchor: the case stays as it is.
    stopped: bool,
}

impl Walk<'_> {
    /// Appends `kind` by the case's owner a while after the last event (a wait drawn with mean
    /// `mean`), with the automatic supervisions due before it. False (and nothing appended) when
    /// that lies after the anchor: the case waits there, open.
    fn step(
        &mut self,
        mean: i64,
        by: pb::Actor,
        note: &str,
        attachments: Vec<pb::Attachment>,
        kind: Kind,
    ) -> anyhow::Result<bool> {
        let at = self.at + self.draw.wait(mean);
        if self.stopped || at > self.anchor {
            self.stopped = true;
            return Ok(false);
        }
        self.supervise(at)?;
        let at = at.max(self.at + SECOND);
        let case = self.case.as_ref().context("a step before the report")?;
        let owner = case.owner.clone().unwrap_or_default();
        let event = pb::CaseEvent {
            event_id: uuid_v7(at, self.draw.next()).to_string(),
            case_id: case.id.clone(),
            seq: case.version + 1,
            at: Some(wire(at)),
            tier: owner.tier,
            org_code: owner.org_code,
            actor: Some(by),
            note: note.to_owned(),
            attachments,
            state_after: 0,
            owner_after: None,
            kind: Some(kind),
        };
        self.push(event)?;
        Ok(true)
    }

    /// Runs the state machine on `event`, as the author does before committing.
    fn push(&mut self, mut event: pb::CaseEvent) -> anyhow::Result<()> {
        let after = machine::apply(self.case.as_ref(), &event).map_err(|refusal| {
            anyhow!(
                "the synthetic history broke the state machine at event {} of case {}: {refusal}",
                event.seq,
                event.case_id
            )
        })?;
        machine::seal(&mut event, &after);
        self.at = micros(event.at);
        self.case = Some(after);
        self.events.push(event);
        Ok(())
    }

    /// The automatic 督办 the owner's scan raises before `until`: yellow at 80 % of the stage's
    /// limit, red at its deadline (`wangge_tier::supervise`), each at about when it came due.
    fn supervise(&mut self, until: i64) -> anyhow::Result<()> {
        let Some(case) = self.case.as_ref() else {
            return Ok(());
        };
        if machine::is_finished(case.state()) {
            return Ok(());
        }
        let Some(clock) = clocks::clocks(case, &self.registry.rules, utc(until)).stage else {
            return Ok(());
        };
        let levels = wangge_tier::supervise::due(case, &clock);
        if levels.is_empty() {
            return Ok(());
        }
        let owner = case.owner.clone().unwrap_or_default();
        let started = micros(clock.started_at);
        let deadline = micros(clock.deadline).max(started);
        for level in levels {
            let Some(case) = self.case.as_ref() else {
                break;
            };
            let due = match level {
                pb::SupervisionLevel::Red => deadline,
                _ => started + (deadline - started) * 4 / 5,
            };
            let at = due.min(until - SECOND).max(self.at + SECOND);
            let event = pb::CaseEvent {
                event_id: uuid_v7(at, self.draw.next()).to_string(),
                case_id: case.id.clone(),
                seq: case.version + 1,
                at: Some(wire(at)),
                tier: owner.tier,
                org_code: owner.org_code.clone(),
                actor: Some(actor(
                    format!("system:{}-{}", tier_name(owner.tier()), load::SCOPE),
                    Role::System,
                )),
                note: match level {
                    pb::SupervisionLevel::Red => "超期: the stage's time limit has run out",
                    _ => "预警: 80 % of the stage's time limit is used",
                }
                .to_owned(),
                attachments: Vec::new(),
                state_after: 0,
                owner_after: None,
                kind: Some(Kind::Supervised(pb::Supervised {
                    level: level as i32,
                    stage: clock.stage,
                    automatic: true,
                    stage_started_at: case.stage_started_at,
                })),
            };
            self.push(event)?;
        }
        Ok(())
    }

    fn photos(&mut self, most: usize, p: f64) -> Vec<pb::Attachment> {
        if !self.draw.chance(p) {
            return Vec::new();
        }
        let count = 1 + self.draw.below(most);
        (0..count)
            .map(|_| pb::Attachment {
                id: format!("photo-{}", self.draw.hex(20)),
                content_type: "image/jpeg".into(),
                size_bytes: 200_000 + self.draw.next() % 2_800_000,
                sha256: self.draw.hex(64),
                caption: String::new(),
            })
            .collect()
    }

    fn pick(&mut self, of: &'static [&'static str]) -> &'static str {
        of[self.draw.below(of.len())]
    }
}

/// Stops the walk (the case stays open) when a step lies after the anchor.
macro_rules! step {
    ($walk:expr, $($arg:expr),+ $(,)?) => {
        if !$walk.step($($arg),+)? {
            return Ok(());
        }
    };
}

/// The people of a command center.
struct Center {
    org: String,
    operator: pb::Actor,
    chief: pb::Actor,
    leader: pb::Actor,
}

impl Center {
    fn of(tier: Tier, street: &str) -> Center {
        let (org, operator) = match tier {
            Tier::District => (format!("{}000000", load::SCOPE), Role::DistrictOperator),
            _ => (street.to_owned(), Role::StreetOperator),
        };
        Center {
            operator: actor(format!("op-{org}"), operator),
            chief: actor(format!("dc-{org}"), Role::DutyChief),
            leader: actor(format!("ld-{org}"), Role::Leader),
            org,
        }
    }
}

/// Report `n` of the timeline and everything that happened to it before the anchor.
fn build<'r>(registry: &'r Registry, timeline: &Timeline, n: usize) -> anyhow::Result<Walk<'r>> {
    let slot = timeline.slots[n];
    let place = &registry.places[slot.place as usize];
    let mut draw = Draw(mix(n as u64 ^ 0x9e37_79b9_7f4a_7c15));
    let category = registry.category(draw.next());
    let urgency = match draw.unit() {
        u if u < 0.90 => pb::Urgency::Normal,
        u if u < 0.98 => pb::Urgency::Urgent,
        _ => pb::Urgency::Emergency,
    };
    let skip_street = registry.rules.skips.skips_street(&category.code, urgency);
    let on_the_spot = !skip_street && draw.chance(0.10);
    let (longitude, latitude) = place.spots[draw.below(place.spots.len())];
    // A few metres around the point, so that no two reports stand on the same spot.
    let jitter = |d: &mut Draw| (d.unit() - 0.5) * 0.0001;
    let location = pb::GeoPoint {
        longitude: longitude + jitter(&mut draw),
        latitude: latitude + jitter(&mut draw),
    };
    let day = china_time(utc(slot.at)).date();
    let reporter = actor(format!("gw-{}", place.grid), Role::GridWorker);
    let mut walk = Walk {
        registry,
        anchor: timeline.anchor,
        draw,
        case: None,
        events: Vec::new(),
        at: slot.at,
        stopped: false,
    };
    let phrase = walk.pick(&PHRASES);
    let attachments = walk.photos(3, 0.7);
    let report = pb::CaseEvent {
        event_id: uuid_v7(slot.at, walk.draw.next()).to_string(),
        case_id: timeline.case_id(n).to_string(),
        seq: 1,
        at: Some(wire(slot.at)),
        tier: Tier::Village as i32,
        org_code: place.community.clone(),
        actor: Some(reporter.clone()),
        note: String::new(),
        attachments,
        state_after: 0,
        owner_after: None,
        kind: Some(Kind::Reported(pb::Reported {
            client_id: uuid_v7(slot.at - 30 * SECOND, walk.draw.next()).to_string(),
            number: wangge_store::cases::case_number(&place.community, day, slot.sequence as i32),
            category_code: category.code.clone(),
            description: format!("{}：{phrase}", category.name),
            location: Some(location),
            grid_code: place.grid.clone(),
            captured_at: Some(wire(slot.at - walk.draw.wait(3 * MINUTE))),
            urgency: urgency as i32,
            self_handling: on_the_spot.then(|| pb::SelfHandling {
                resolution: "现场已处置".into(),
            }),
            possible_duplicates: Vec::new(),
            skip_street,
        })),
    };
    walk.push(report)?;
    path(&mut walk, place, category, on_the_spot, skip_street)?;
    if walk.stopped {
        // Open at the anchor: what the owner's scan has raised by now.
        walk.supervise(timeline.anchor)?;
    }
    Ok(walk)
}

/// The steps after the report.
fn path(
    walk: &mut Walk<'_>,
    place: &Place,
    category: &Category,
    on_the_spot: bool,
    skip_street: bool,
) -> anyhow::Result<()> {
    let staff = actor(format!("cs-{}", place.community), Role::CommunityStaff);
    let worker = actor(format!("gw-{}", place.grid), Role::GridWorker);
    if on_the_spot {
        if walk.draw.chance(0.9) {
            step!(
                walk,
                3 * HOUR,
                staff,
                "",
                Vec::new(),
                Kind::SelfHandleApproved(pb::SelfHandleApproved {})
            );
            return Ok(());
        }
        let reason = walk.pick(&REASONS).to_owned();
        step!(
            walk,
            3 * HOUR,
            staff,
            "",
            Vec::new(),
            Kind::SelfHandleRejected(pb::SelfHandleRejected { reason })
        );
    }
    let mut center = Center::of(
        if skip_street {
            Tier::District
        } else {
            Tier::Street
        },
        &place.street,
    );
    if !skip_street && walk.draw.chance(0.06) {
        let reason = walk.pick(&REASONS).to_owned();
        step!(
            walk,
            15 * MINUTE,
            center.operator.clone(),
            "",
            Vec::new(),
            Kind::Escalated(pb::Escalated { reason })
        );
        center = Center::of(Tier::District, &place.street);
    }

    // 受理: filed, verified first, rejected or archived.
    match walk.draw.unit() {
        u if u < 0.05 => {
            let reason = walk.pick(&REASONS).to_owned();
            step!(
                walk,
                12 * MINUTE,
                center.operator.clone(),
                "",
                Vec::new(),
                Kind::Rejected(pb::Rejected { reason })
            );
            return Ok(());
        }
        u if u < 0.07 => {
            let reason = walk.pick(&REASONS).to_owned();
            step!(
                walk,
                12 * MINUTE,
                center.operator.clone(),
                "",
                Vec::new(),
                Kind::Archived(pb::Archived { reason })
            );
            return Ok(());
        }
        u if u < 0.15 => {
            step!(
                walk,
                10 * MINUTE,
                center.operator.clone(),
                "",
                Vec::new(),
                Kind::VerifyRequested(pb::VerifyRequested {
                    community_code: place.community.clone()
                })
            );
            let genuine = walk.draw.chance(0.9);
            let photos = walk.photos(1, 0.5);
            step!(
                walk,
                3 * HOUR,
                worker.clone(),
                "",
                photos,
                Kind::Verified(pb::Verified { genuine })
            );
            if !genuine {
                return Ok(());
            }
        }
        _ => {
            step!(
                walk,
                12 * MINUTE,
                center.operator.clone(),
                "",
                Vec::new(),
                Kind::Accepted(pb::Accepted {})
            );
        }
    }

    // 派遣, after a void asked for and denied now and then.
    if walk.draw.chance(0.02) {
        let reason = walk.pick(&REASONS).to_owned();
        step!(
            walk,
            2 * HOUR,
            center.operator.clone(),
            "",
            Vec::new(),
            Kind::VoidRequested(pb::VoidRequested { reason })
        );
        if walk.draw.chance(0.6) {
            step!(
                walk,
                HOUR,
                center.chief.clone(),
                "",
                Vec::new(),
                Kind::VoidApproved(pb::VoidApproved {})
            );
            return Ok(());
        }
        let reason = walk.pick(&REASONS).to_owned();
        step!(
            walk,
            HOUR,
            center.chief.clone(),
            "",
            Vec::new(),
            Kind::VoidDenied(pb::VoidDenied { reason })
        );
    }
    let department = walk
        .registry
        .departments
        .get(&(center.org.clone(), category.kind.clone()))
        .with_context(|| format!("no department of kind {} at {}", category.kind, center.org))?
        .clone();
    let handler = actor(format!("dh-{department}"), Role::DepartmentHandler);
    step!(
        walk,
        6 * MINUTE,
        center.operator.clone(),
        "",
        Vec::new(),
        Kind::Dispatched(pb::Dispatched {
            department_code: department.clone(),
            ..Default::default()
        })
    );
    if walk.draw.chance(0.03) {
        let reason = walk.pick(&REASONS).to_owned();
        step!(
            walk,
            HOUR,
            handler.clone(),
            "",
            Vec::new(),
            Kind::ReturnRequested(pb::ReturnRequested {
                department_code: department.clone(),
                reason
            })
        );
        if walk.draw.chance(0.7) {
            step!(
                walk,
                HOUR,
                center.chief.clone(),
                "",
                Vec::new(),
                Kind::ReturnApproved(pb::ReturnApproved {})
            );
            step!(
                walk,
                10 * MINUTE,
                center.operator.clone(),
                "",
                Vec::new(),
                Kind::Dispatched(pb::Dispatched {
                    department_code: department.clone(),
                    ..Default::default()
                })
            );
        } else {
            let reason = walk.pick(&REASONS).to_owned();
            step!(
                walk,
                HOUR,
                center.chief.clone(),
                "",
                Vec::new(),
                Kind::ReturnDenied(pb::ReturnDenied { reason })
            );
        }
    }
    step!(
        walk,
        2 * HOUR,
        handler.clone(),
        "",
        Vec::new(),
        Kind::Signed(pb::Signed {
            department_code: department.clone()
        })
    );

    // 处置 and 核查, again after a failed check.
    loop {
        if walk.draw.chance(0.04) {
            let extension = Some(pb::TimeLimit {
                amount: 2,
                unit: pb::TimeUnit::WorkingDays as i32,
            });
            let reason = walk.pick(&REASONS).to_owned();
            step!(
                walk,
                DAY,
                handler.clone(),
                "",
                Vec::new(),
                Kind::DelayRequested(pb::DelayRequested {
                    department_code: department.clone(),
                    extension,
                    reason
                })
            );
            if walk.draw.chance(0.8) {
                step!(
                    walk,
                    2 * HOUR,
                    center.chief.clone(),
                    "",
                    Vec::new(),
                    Kind::DelayApproved(pb::DelayApproved { extension })
                );
            } else {
                let reason = walk.pick(&REASONS).to_owned();
                step!(
                    walk,
                    2 * HOUR,
                    center.chief.clone(),
                    "",
                    Vec::new(),
                    Kind::DelayDenied(pb::DelayDenied { reason })
                );
            }
        }
        if walk.draw.chance(0.01) {
            let reason = walk.pick(&REASONS).to_owned();
            step!(
                walk,
                2 * DAY,
                handler.clone(),
                "",
                Vec::new(),
                Kind::HangRequested(pb::HangRequested {
                    department_code: department.clone(),
                    reason
                })
            );
            if walk.draw.chance(0.8) {
                step!(
                    walk,
                    DAY,
                    center.leader.clone(),
                    "",
                    Vec::new(),
                    Kind::HangApproved(pb::HangApproved {})
                );
                step!(
                    walk,
                    45 * DAY,
                    center.operator.clone(),
                    "",
                    Vec::new(),
                    Kind::Resumed(pb::Resumed {})
                );
            } else {
                let reason = walk.pick(&REASONS).to_owned();
                step!(
                    walk,
                    DAY,
                    center.leader.clone(),
                    "",
                    Vec::new(),
                    Kind::HangDenied(pb::HangDenied { reason })
                );
            }
        }
        // Most within a day or two; some take a week and more.
        let handling = if walk.draw.chance(0.15) {
            6 * DAY
        } else {
            20 * HOUR
        };
        let result = walk.pick(&RESULTS).to_owned();
        let photos = walk.photos(2, 0.6);
        step!(
            walk,
            handling,
            handler.clone(),
            &result,
            photos,
            Kind::Handled(pb::Handled {
                department_code: department.clone(),
                result: result.clone()
            })
        );
        step!(
            walk,
            30 * MINUTE,
            center.operator.clone(),
            "",
            Vec::new(),
            Kind::CheckRequested(pb::CheckRequested {
                community_code: place.community.clone()
            })
        );
        let reworked = walk.case.as_ref().map_or(0, |c| c.rework_count);
        let passed = reworked >= 2 || walk.draw.chance(0.92);
        let photos = walk.photos(1, 0.5);
        step!(
            walk,
            4 * HOUR,
            worker.clone(),
            "",
            photos,
            Kind::Checked(pb::Checked { passed })
        );
        if passed {
            break;
        }
        step!(
            walk,
            30 * MINUTE,
            center.operator.clone(),
            "",
            Vec::new(),
            Kind::Reworked(pb::Reworked {
                department_code: department.clone()
            })
        );
        step!(
            walk,
            2 * HOUR,
            handler.clone(),
            "",
            Vec::new(),
            Kind::Signed(pb::Signed {
                department_code: department.clone()
            })
        );
    }
    step!(
        walk,
        40 * MINUTE,
        center.chief.clone(),
        "",
        Vec::new(),
        Kind::Closed(pb::Closed {})
    );
    Ok(())
}

/// A `COPY … FROM STDIN (FORMAT binary)` payload.
struct Copy {
    buf: Vec<u8>,
}

impl Copy {
    fn new(capacity: usize) -> Copy {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        Copy { buf }
    }

    fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        // A field is at most a few kB here, far below i32::MAX.
        self.buf
            .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn text(&mut self, text: &str) {
        self.field(text.as_bytes());
    }

    fn maybe(&mut self, text: Option<&str>) {
        match text {
            Some(text) => self.text(text),
            None => self.null(),
        }
    }

    fn uuid(&mut self, id: &str) -> anyhow::Result<()> {
        let id = Uuid::parse_str(id).with_context(|| format!("{id:?} is not a UUID"))?;
        self.field(id.as_bytes());
        Ok(())
    }

    fn int8(&mut self, value: i64) {
        self.field(&value.to_be_bytes());
    }

    fn float8(&mut self, value: f64) {
        self.field(&value.to_be_bytes());
    }

    /// timestamptz: microseconds since 2000-01-01 UTC.
    fn time(&mut self, at: Option<prost_types::Timestamp>) {
        self.int8(micros(at) - PG_EPOCH);
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

const CASE_COLUMNS: &str = "COPY cases (id, number, client_id, category_code, description, \
     longitude, latitude, grid_code, state, owner_tier, owner_org, department, check_outcome, \
     check_by_tier, urgency, reporter_id, captured_at, reported_at, updated_at, version, snapshot) \
     FROM STDIN (FORMAT binary)";
const EVENT_COLUMNS: &str =
    "COPY case_events (event_id, case_id, seq, at, tier, kind, body) FROM STDIN (FORMAT binary)";

/// The row of the projection, as `wangge_store::cases::append` writes it.
fn case_row(copy: &mut Copy, case: &pb::Case) -> anyhow::Result<()> {
    let owner = case.owner.clone().unwrap_or_default();
    let location = case.location.unwrap_or_default();
    copy.row(21);
    copy.uuid(&case.id)?;
    copy.text(&case.number);
    copy.text(&case.client_id);
    copy.text(&case.category_code);
    copy.text(&case.description);
    copy.float8(location.longitude);
    copy.float8(location.latitude);
    copy.text(&case.grid_code);
    copy.text(state_name(case.state()));
    copy.text(tier_name(owner.tier()));
    copy.text(&owner.org_code);
    copy.maybe(Some(case.department_code.as_str()).filter(|d| !d.is_empty()));
    copy.maybe(match case.check_outcome() {
        pb::CheckOutcome::Unspecified => None,
        pb::CheckOutcome::Pending => Some("pending"),
        pb::CheckOutcome::Passed => Some("passed"),
        pb::CheckOutcome::Failed => Some("failed"),
    });
    copy.maybe(match case.check_requested_by() {
        Tier::Unspecified => None,
        tier => Some(tier_name(tier)),
    });
    copy.text(case.urgency().as_str_name());
    copy.text(
        case.reporter
            .as_ref()
            .map(|a| a.id.as_str())
            .unwrap_or_default(),
    );
    copy.time(case.captured_at);
    copy.time(case.reported_at);
    copy.time(case.updated_at);
    copy.int8(case.version as i64);
    copy.field(&case.encode_to_vec());
    Ok(())
}

fn event_row(copy: &mut Copy, event: &pb::CaseEvent) -> anyhow::Result<()> {
    copy.row(7);
    copy.uuid(&event.event_id)?;
    copy.uuid(&event.case_id)?;
    copy.int8(event.seq as i64);
    copy.time(event.at);
    copy.text(tier_name(event.tier()));
    copy.text(event.kind.as_ref().map_or("none", machine::kind_name));
    copy.field(&event.encode_to_vec());
    Ok(())
}

/// What a load put into the history.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub cases: u64,
    pub events: u64,
    /// Bytes sent to PostgreSQL.
    pub bytes: u64,
    pub states: BTreeMap<&'static str, u64>,
    /// Open cases in a department's work list (dispatched to it, not yet handled), by department.
    pub assigned: HashMap<String, u64>,
    /// The field's tasks (checks pending, verifications asked for), by grid.
    pub tasks: HashMap<String, u64>,
    /// The highest case number of the day, by (community, day).
    numbers: HashMap<(String, NaiveDate), i32>,
}

impl Stats {
    pub fn open(&self) -> u64 {
        self.states
            .iter()
            .filter(|(state, _)| !FINISHED.contains(state))
            .map(|(_, n)| n)
            .sum()
    }

    fn add(&mut self, other: Stats) {
        self.cases += other.cases;
        self.events += other.events;
        self.bytes += other.bytes;
        for (state, n) in other.states {
            *self.states.entry(state).or_default() += n;
        }
        for (department, n) in other.assigned {
            *self.assigned.entry(department).or_default() += n;
        }
        for (grid, n) in other.tasks {
            *self.tasks.entry(grid).or_default() += n;
        }
        for (key, last) in other.numbers {
            let entry = self.numbers.entry(key).or_default();
            *entry = (*entry).max(last);
        }
    }

    fn count(&mut self, case: &pb::Case, events: usize) {
        self.cases += 1;
        self.events += events as u64;
        let state = case.state();
        *self.states.entry(state_name(state)).or_default() += 1;
        if matches!(
            state,
            State::Dispatched
                | State::InProgress
                | State::DelayRequested
                | State::HangRequested
                | State::Hung
        ) {
            *self
                .assigned
                .entry(case.department_code.clone())
                .or_default() += 1;
        }
        let task = match state {
            State::Checking => case.check_outcome() == pb::CheckOutcome::Pending,
            State::Verifying => true,
            _ => false,
        };
        if task {
            *self.tasks.entry(case.grid_code.clone()).or_default() += 1;
        }
    }

    /// Notes a case number of a community's day, for `case_numbers`.
    fn number(&mut self, community: &str, day: NaiveDate, sequence: u32) {
        let entry = self.numbers.entry((community.to_owned(), day)).or_default();
        *entry = (*entry).max(sequence as i32);
    }
}

const FINISHED: [&str; 5] = ["closed", "rejected", "void", "merged", "archived"];

/// One chunk of rows, ready to copy.
struct Chunk {
    cases: Vec<u8>,
    events: Vec<u8>,
    stats: Stats,
}

/// The reports of `range` that calls about the present touch: open at the anchor, or changed
/// within `recent` before it (built as the load builds them, so the same walks).
pub(crate) fn working_set(
    registry: &Registry,
    timeline: &Timeline,
    range: Range<usize>,
    recent: Duration,
) -> anyhow::Result<Vec<usize>> {
    let since = timeline.anchor - i64::try_from(recent.as_micros())?;
    let mut active = Vec::new();
    for n in range {
        let walk = build(registry, timeline, n)?;
        if walk.stopped || walk.at >= since {
            active.push(n);
        }
    }
    Ok(active)
}

fn chunk(registry: &Registry, timeline: &Timeline, indexes: &[usize]) -> anyhow::Result<Chunk> {
    let mut cases = Copy::new(indexes.len() * 1200);
    let mut events = Copy::new(indexes.len() * 8 * 400);
    let mut stats = Stats::default();
    for &n in indexes {
        let walk = build(registry, timeline, n)?;
        let case = walk.case.as_ref().context("a case without events")?;
        case_row(&mut cases, case)?;
        for event in &walk.events {
            event_row(&mut events, event)?;
        }
        stats.count(case, walk.events.len());
        let slot = timeline.slots[n];
        let community = &registry.places[slot.place as usize].community;
        stats.number(community, china_time(utc(slot.at)).date(), slot.sequence);
    }
    let (cases, events) = (cases.finish(), events.finish());
    stats.bytes = (cases.len() + events.len()) as u64;
    Ok(Chunk {
        cases,
        events,
        stats,
    })
}

/// How a load went.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub stats: Stats,
    /// Building and copying the rows.
    pub copy: Duration,
    /// Building the secondary indexes again, when they were dropped for the load.
    pub indexes: Duration,
    /// VACUUM and ANALYZE.
    pub vacuum: Duration,
}

/// Builds reports `indexes` of the timeline and copies them into the database behind `conn` (a
/// migrated, seeded wangge database nobody else writes to), with their events, the day's case
/// numbers, the case count, the village's intake keys; then VACUUM ANALYZE, as a database that
/// has lived for years has been vacuumed.
pub(crate) async fn load(
    conn: &mut PgConnection,
    registry: Arc<Registry>,
    timeline: Arc<Timeline>,
    indexes: Vec<usize>,
) -> anyhow::Result<Loaded> {
    let total = indexes.len();
    // The rows are consistent by construction (each chunk's cases before its events): the
    // per-row foreign-key triggers would only slow the load. Needs a superuser; without one the
    // triggers run.
    if let Err(error) = run(conn, "SET session_replication_role = replica").await {
        eprintln!("    foreign keys stay checked during the load ({error})");
    }
    run(conn, "SET maintenance_work_mem = '512MB'").await?;
    let dropped = if total > REBUILD_INDEXES_ABOVE {
        drop_secondary_indexes(conn).await?
    } else {
        Vec::new()
    };

    let started = Instant::now();
    // Building runs on the blocking pool while the rows before it are copied.
    let (sender, mut chunks) = tokio::sync::mpsc::channel::<anyhow::Result<Chunk>>(4);
    let builder = {
        let (registry, timeline) = (registry.clone(), timeline.clone());
        tokio::task::spawn_blocking(move || {
            for part in indexes.chunks(CHUNK) {
                let built = chunk(&registry, &timeline, part);
                let failed = built.is_err();
                if sender.blocking_send(built).is_err() || failed {
                    return;
                }
            }
        })
    };
    let mut stats = Stats::default();
    let mut next_note = total / 10;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(300), chunks.recv())
            .await
            .context("no rows built within 300 s")?;
        let Some(built) = next else {
            break;
        };
        let built = built?;
        copy(conn, CASE_COLUMNS, built.cases).await?;
        copy(conn, EVENT_COLUMNS, built.events).await?;
        stats.add(built.stats);
        if stats.cases as usize >= next_note && total >= 50_000 {
            next_note += total / 10;
            let seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "    {} of {total} cases, {} events ({:.0} cases/s)",
                stats.cases,
                stats.events,
                stats.cases as f64 / seconds
            );
        }
    }
    builder.await.context("the history builder panicked")?;
    anyhow::ensure!(
        stats.cases as usize == total,
        "built {} of {total} cases",
        stats.cases
    );

    let (communities, days, lasts): (Vec<String>, Vec<NaiveDate>, Vec<i32>) = stats
        .numbers
        .iter()
        .map(|((community, day), last)| (community.clone(), *day, *last))
        .fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |mut acc, (c, d, l)| {
                acc.0.push(c);
                acc.1.push(d);
                acc.2.push(l);
                acc
            },
        );
    sqlx::query(
        "INSERT INTO case_numbers (community_code, day, last)
         SELECT * FROM UNNEST($1::text[], $2::date[], $3::int[])
         ON CONFLICT (community_code, day) DO UPDATE SET last = GREATEST(case_numbers.last, EXCLUDED.last)",
    )
    .bind(&communities)
    .bind(&days)
    .bind(&lasts)
    .execute(&mut *conn)
    .await
    .context("cannot write the case numbers")?;
    sqlx::query("UPDATE case_counts SET cases = cases + $1")
        .bind(stats.cases as i64)
        .execute(&mut *conn)
        .await
        .context("cannot count the cases")?;
    // The village's key of every report it took (a resubmission finds its case by it). The
    // street's and district's copies drop them again.
    bounded(
        Duration::from_secs(1800),
        "writing the intake keys",
        sqlx::query(
            "INSERT INTO intake_keys (reporter_id, client_id, case_id, payload_digest, created_at)
             SELECT reporter_id, client_id, id, sha256(convert_to(client_id, 'UTF8')), reported_at
             FROM cases
             ON CONFLICT DO NOTHING",
        )
        .execute(&mut *conn),
    )
    .await?;
    let copied = started.elapsed();

    let started = Instant::now();
    for (name, definition) in &dropped {
        bounded(
            Duration::from_secs(1800),
            &format!("building index {name}"),
            run(conn, definition),
        )
        .await?;
    }
    let indexes = started.elapsed();
    let started = Instant::now();
    bounded(
        Duration::from_secs(3600),
        "VACUUM ANALYZE",
        run(conn, "VACUUM (ANALYZE)"),
    )
    .await?;
    Ok(Loaded {
        stats,
        copy: copied,
        indexes,
        vacuum: started.elapsed(),
    })
}

/// One statement, its result left aside.
async fn run(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    conn.execute(sql).await.map(|_| ())
}

/// `what` within `within`, or an error naming it.
async fn bounded<T>(
    within: Duration,
    what: &str,
    future: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(within, future)
        .await
        .with_context(|| format!("{what} took over {within:?}"))?
        .with_context(|| format!("{what} failed"))
}

async fn copy(conn: &mut PgConnection, statement: &str, rows: Vec<u8>) -> anyhow::Result<()> {
    let copying = async {
        let mut copy = conn.copy_in_raw(statement).await?;
        copy.send(rows).await?;
        copy.finish().await
    };
    bounded(Duration::from_secs(300), "a COPY of the history", copying).await?;
    Ok(())
}

/// Drops the indexes of `cases` and `case_events` that back no constraint; returns their names
/// and definitions, to build them again.
async fn drop_secondary_indexes(conn: &mut PgConnection) -> anyhow::Result<Vec<(String, String)>> {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.relname::text, pg_get_indexdef(i.oid)
         FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_class t ON t.oid = x.indrelid
         WHERE t.relname IN ('cases', 'case_events')
           AND t.relnamespace = 'public'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
    )
    .fetch_all(&mut *conn)
    .await
    .context("cannot read the indexes")?;
    for (name, _) in &indexes {
        run(conn, &format!(r#"DROP INDEX "{name}""#))
            .await
            .with_context(|| format!("cannot drop index {name}"))?;
    }
    Ok(indexes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_copy_has_its_header_rows_and_trailer() {
        let mut copy = Copy::new(0);
        copy.row(2);
        copy.text("ab");
        copy.null();
        let bytes = copy.finish();
        assert_eq!(&bytes[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&bytes[19..21], &2i16.to_be_bytes());
        assert_eq!(&bytes[21..25], &2i32.to_be_bytes());
        assert_eq!(&bytes[25..27], b"ab");
        assert_eq!(&bytes[27..31], &(-1i32).to_be_bytes());
        assert_eq!(&bytes[31..], &(-1i16).to_be_bytes());
    }

    #[test]
    fn a_case_id_is_a_uuid_v7_of_its_report_time() {
        let at = 1_790_000_000 * SECOND;
        let id = uuid_v7(at, 42);
        assert_eq!(id.get_version_num(), 7);
        let (seconds, _) = id.get_timestamp().expect("v7 has a time").to_unix();
        assert_eq!(seconds as i64, at / SECOND);
    }
}
