//! The checker: reads every tier's database directly and holds it to what the callers were told.
//!
//! Converged means: every acknowledged report is there exactly once at every tier; every case event
//! is the same at all three tiers (event id, case id, seq, body bytes); every acknowledged console
//! step is in the history; nothing is left parked (`parked_events`, once it exists) and every
//! outbox is empty. What a fault put in besides the load ([`Injected`]) is held to its own rule: a
//! refused report is at no tier, an event that cannot travel ends as a dead letter at its sender.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Instant;

use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use uuid::Uuid;
use wangge_domain::case::tier_name;
use wangge_proto::Tier;

use super::testbed::TIERS;
use super::workload::Entries;

/// The application name of the checker's and the fault injector's own connections, which the
/// "terminate connections" fault spares.
pub const APPLICATION_NAME: &str = "wangge-chaos";

/// What a fault put into the system besides the load. None of it was acknowledged to a client,
/// so none of it can count as lost.
#[derive(Debug, Clone, Default)]
pub struct Injected {
    /// Client ids of reports the village refused: no tier may hold them.
    pub refused: Vec<String>,
    /// Events written straight into the village's outbox that can never travel: each must be set
    /// aside as an outgoing dead letter there, and leave the outbox.
    pub undeliverable: Vec<Uuid>,
}

/// An event as a tier stored it; the body is left out when only presence matters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    event_id: Uuid,
    body: Vec<u8>,
}

/// What one tier holds.
#[derive(Debug, Default)]
struct TierView {
    /// client id → the cases carrying it.
    cases: HashMap<String, Vec<Uuid>>,
    events: HashMap<(Uuid, i64), Stored>,
    outbox: i64,
    parked: i64,
    dead_letters: i64,
    /// Events set aside at this tier as outgoing dead letters.
    set_aside: HashSet<Uuid>,
}

/// What the checker found; converged when everything is in place.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Acknowledged reports missing at one tier or more.
    pub lost_reports: usize,
    /// Acknowledged console steps missing at one tier or more.
    pub lost_steps: usize,
    /// Client ids held by more than one case at some tier, or acknowledged with two case ids.
    pub duplicated: usize,
    /// (case, seq) positions not held identically by all three tiers.
    pub diverging_events: usize,
    /// Per tier (village, street, district).
    pub missing_reports: [usize; 3],
    pub cases: [usize; 3],
    pub events: [usize; 3],
    pub outbox: [i64; 3],
    pub parked: [i64; 3],
    pub dead_letters: [i64; 3],
    /// Refused reports some tier holds anyway.
    pub refused_held: usize,
    /// Undeliverable events written into the village's outbox, and how many of them it set aside.
    pub undeliverable: usize,
    pub undeliverable_set_aside: usize,
    /// A few concrete findings, for the person who reads the report.
    pub examples: Vec<String>,
}

impl Verdict {
    pub fn converged(&self) -> bool {
        self.lost_reports == 0
            && self.lost_steps == 0
            && self.duplicated == 0
            && self.diverging_events == 0
            && self.outbox == [0; 3]
            && self.parked == [0; 3]
            && self.refused_held == 0
            && self.undeliverable_set_aside == self.undeliverable
    }

    /// One line on what is wrong (empty when converged).
    pub fn findings(&self) -> String {
        let mut parts = Vec::new();
        for (i, tier) in TIERS.into_iter().enumerate() {
            let name = tier_name(tier);
            if self.missing_reports[i] > 0 {
                parts.push(format!(
                    "{name} lacks {} acked reports",
                    self.missing_reports[i]
                ));
            }
            if self.outbox[i] > 0 {
                parts.push(format!("{name} outbox {}", self.outbox[i]));
            }
            if self.parked[i] > 0 {
                parts.push(format!("{name} parked {}", self.parked[i]));
            }
            if self.dead_letters[i] > 0 {
                let planted = if i == 0 {
                    self.undeliverable_set_aside
                } else {
                    0
                };
                parts.push(format!(
                    "{name} dead letters {} ({planted} of them written there to be set aside)",
                    self.dead_letters[i]
                ));
            }
        }
        if self.refused_held > 0 {
            parts.push(format!(
                "{} refused reports held somewhere",
                self.refused_held
            ));
        }
        if self.undeliverable_set_aside < self.undeliverable {
            parts.push(format!(
                "{} of {} undeliverable events not set aside",
                self.undeliverable - self.undeliverable_set_aside,
                self.undeliverable
            ));
        }
        if self.lost_steps > 0 {
            parts.push(format!("{} acked steps missing", self.lost_steps));
        }
        if self.diverging_events > 0 {
            parts.push(format!(
                "{} events differ between tiers (events held: {}/{}/{})",
                self.diverging_events, self.events[0], self.events[1], self.events[2]
            ));
        }
        if self.duplicated > 0 {
            parts.push(format!("{} duplicated", self.duplicated));
        }
        parts.join("; ")
    }
}

/// Direct read access to the three tiers' databases.
pub struct Checker {
    pools: [PgPool; 3],
}

impl Checker {
    /// Connects to the databases at `urls` (village, street, district).
    pub async fn connect(urls: &[String; 3]) -> anyhow::Result<Checker> {
        let mut pools = Vec::new();
        for url in urls {
            let options = PgConnectOptions::from_str(url)?.application_name(APPLICATION_NAME);
            pools.push(
                PgPoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await?,
            );
        }
        let [village, street, district]: [PgPool; 3] = pools
            .try_into()
            .map_err(|_| anyhow::anyhow!("three databases"))?;
        Ok(Checker {
            pools: [village, street, district],
        })
    }

    async fn view(pool: &PgPool, bodies: bool) -> anyhow::Result<TierView> {
        let mut view = TierView::default();
        for row in sqlx::query("SELECT client_id, id FROM cases")
            .fetch_all(pool)
            .await?
        {
            view.cases
                .entry(row.try_get("client_id")?)
                .or_default()
                .push(row.try_get("id")?);
        }
        let events = if bodies {
            "SELECT case_id, seq, event_id, body FROM case_events"
        } else {
            "SELECT case_id, seq, event_id, ''::bytea AS body FROM case_events"
        };
        for row in sqlx::query(events).fetch_all(pool).await? {
            view.events.insert(
                (row.try_get("case_id")?, row.try_get("seq")?),
                Stored {
                    event_id: row.try_get("event_id")?,
                    body: row.try_get("body")?,
                },
            );
        }
        view.outbox = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await?;
        view.dead_letters = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(pool)
            .await?;
        view.set_aside = sqlx::query_scalar(
            "SELECT event_id FROM dead_letters WHERE direction = 'outgoing' AND event_id IS NOT NULL",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
        // The parking table comes with the bus work; before it, nothing can be parked.
        let parking: bool = sqlx::query_scalar("SELECT to_regclass('parked_events') IS NOT NULL")
            .fetch_one(pool)
            .await?;
        if parking {
            view.parked = sqlx::query_scalar("SELECT count(*) FROM parked_events")
                .fetch_one(pool)
                .await?;
        }
        Ok(view)
    }

    async fn views(&self, bodies: bool) -> anyhow::Result<[TierView; 3]> {
        let (village, street, district) = tokio::try_join!(
            Self::view(&self.pools[0], bodies),
            Self::view(&self.pools[1], bodies),
            Self::view(&self.pools[2], bodies),
        )?;
        Ok([village, street, district])
    }

    /// True when every report and step acknowledged before `before` is at every tier: the backlog
    /// of a fault has arrived. Cheap enough to poll while the load goes on.
    pub async fn caught_up(&self, entries: &Entries, before: Instant) -> anyhow::Result<bool> {
        let views = self.views(false).await?;
        let reports_there = entries
            .reports
            .iter()
            .filter(|r| r.at < before)
            .all(|r| views.iter().all(|v| v.cases.contains_key(&r.client_id)));
        let steps_there = entries.steps.iter().filter(|s| s.at < before).all(|s| {
            Uuid::parse_str(&s.case_id).is_ok_and(|case| {
                views
                    .iter()
                    .all(|v| v.events.contains_key(&(case, s.version as i64)))
            })
        });
        Ok(reports_there && steps_there)
    }

    /// Acknowledged reports (before `before`) the tier does not hold yet.
    pub async fn missing_at(
        &self,
        tier: Tier,
        entries: &Entries,
        before: Instant,
    ) -> anyhow::Result<usize> {
        let held: HashSet<String> = sqlx::query_scalar("SELECT client_id FROM cases")
            .fetch_all(&self.pools[index(tier)])
            .await?
            .into_iter()
            .collect();
        Ok(entries
            .reports
            .iter()
            .filter(|r| r.at < before && !held.contains(&r.client_id))
            .count())
    }

    /// Outbox depth per tier.
    pub async fn outboxes(&self) -> anyhow::Result<[i64; 3]> {
        let mut depths = [0; 3];
        for (depth, pool) in depths.iter_mut().zip(&self.pools) {
            *depth = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(pool)
                .await?;
        }
        Ok(depths)
    }

    /// The full comparison.
    pub async fn verdict(&self, entries: &Entries, injected: &Injected) -> anyhow::Result<Verdict> {
        let views = self.views(true).await?;
        let mut verdict = Verdict::default();
        for (i, view) in views.iter().enumerate() {
            verdict.cases[i] = view.cases.values().map(Vec::len).sum();
            verdict.events[i] = view.events.len();
            verdict.outbox[i] = view.outbox;
            verdict.parked[i] = view.parked;
            verdict.dead_letters[i] = view.dead_letters;
        }

        for client_id in &injected.refused {
            let at: Vec<_> = views
                .iter()
                .zip(TIERS)
                .filter(|(v, _)| v.cases.contains_key(client_id))
                .map(|(_, t)| tier_name(t))
                .collect();
            if !at.is_empty() {
                verdict.refused_held += 1;
                note(
                    &mut verdict,
                    format!("refused report {client_id} held at {}", at.join(", ")),
                );
            }
        }
        verdict.undeliverable = injected.undeliverable.len();
        for event_id in &injected.undeliverable {
            if views[0].set_aside.contains(event_id) {
                verdict.undeliverable_set_aside += 1;
            } else {
                note(
                    &mut verdict,
                    format!("undeliverable event {event_id} not set aside at the village"),
                );
            }
        }

        let mut acked_as: HashMap<&str, &str> = HashMap::new();
        for report in &entries.reports {
            if let Some(earlier) = acked_as.insert(&report.client_id, &report.case_id)
                && earlier != report.case_id
            {
                verdict.duplicated += 1;
                note(
                    &mut verdict,
                    format!("report {} acked as two cases", report.client_id),
                );
            }
            let mut lost = false;
            for (i, view) in views.iter().enumerate() {
                match view.cases.get(&report.client_id).map(Vec::len) {
                    None | Some(0) => {
                        verdict.missing_reports[i] += 1;
                        lost = true;
                    }
                    Some(1) => {}
                    Some(n) => {
                        verdict.duplicated += 1;
                        note(
                            &mut verdict,
                            format!(
                                "report {} held {n} times at {}",
                                report.client_id,
                                tier_name(TIERS[i])
                            ),
                        );
                    }
                }
            }
            if lost {
                verdict.lost_reports += 1;
                if verdict.lost_reports <= 3 {
                    let at: Vec<_> = views
                        .iter()
                        .zip(TIERS)
                        .filter(|(v, _)| !v.cases.contains_key(&report.client_id))
                        .map(|(_, t)| tier_name(t))
                        .collect();
                    note(
                        &mut verdict,
                        format!(
                            "report {} (case {}) missing at {}",
                            report.client_id,
                            report.case_id,
                            at.join(", ")
                        ),
                    );
                }
            }
        }

        for step in &entries.steps {
            let Ok(case) = Uuid::parse_str(&step.case_id) else {
                continue;
            };
            let key = (case, step.version as i64);
            if !views.iter().all(|v| v.events.contains_key(&key)) {
                verdict.lost_steps += 1;
                if verdict.lost_steps <= 3 {
                    note(
                        &mut verdict,
                        format!(
                            "step {} of case {} (seq {}) missing somewhere",
                            step.step, step.case_id, step.version
                        ),
                    );
                }
            }
        }

        let positions: HashSet<&(Uuid, i64)> = views.iter().flat_map(|v| v.events.keys()).collect();
        for key in positions {
            let copies: Vec<Option<&Stored>> = views.iter().map(|v| v.events.get(key)).collect();
            let same = copies.iter().all(|c| c.is_some() && *c == copies[0]);
            if !same {
                verdict.diverging_events += 1;
                if verdict.diverging_events <= 3 {
                    let held: Vec<_> = copies
                        .iter()
                        .zip(TIERS)
                        .map(|(c, t)| {
                            let state = match c {
                                None => "missing".to_owned(),
                                Some(s) => format!("event {}", s.event_id),
                            };
                            format!("{} {state}", tier_name(t))
                        })
                        .collect();
                    note(
                        &mut verdict,
                        format!("case {} seq {}: {}", key.0, key.1, held.join(", ")),
                    );
                }
            }
        }
        Ok(verdict)
    }
}

/// Keeps a few concrete findings, not thousands.
fn note(verdict: &mut Verdict, finding: String) {
    if verdict.examples.len() < 8 {
        verdict.examples.push(finding);
    }
}

fn index(tier: Tier) -> usize {
    match tier {
        Tier::Village => 0,
        Tier::Street => 1,
        _ => 2,
    }
}
