//! `wangge.v1.EvaluationService` (综合评价): the assessment figures of a period for an org of the
//! scope, served by the street and the district. The histories come from this tier's replica a
//! page of cases at a time (`wangge_store::evaluation`), each page counted before the next is read; the counting is `wangge_domain::evaluation`, on
//! the time limits and work calendars the tier's clocks run on ([`crate::clocks::Rules`]).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use tonic::{Request, Response, Status};
use tracing::instrument;
use wangge_domain::Scope;
use wangge_domain::evaluation::{AreaLevel, Evaluation, Evaluator};
use wangge_proto as pb;
use wangge_store::evaluation::{CASES_PER_READ, Named, histories, names, period_cases};

use crate::policy::{Right, authorize, caller};
use crate::validate;
use crate::{Error, Shared};

/// The longest period one call evaluates: ten years. The histories are read a page of cases at a
/// time, so a long period costs time, never the tier's memory.
pub const MAX_PERIOD_DAYS: i64 = 3_653;

/// Mounts the evaluation service. Returns its name, for reflection.
pub fn mount(shared: &Shared, routes: &mut tonic::service::RoutesBuilder) -> Vec<&'static str> {
    routes.add_service(
        shared.guard(
            pb::evaluation_service_server::EvaluationServiceServer::new(Evaluations(
                shared.clone(),
            ))
            .max_decoding_message_size(shared.max_request_bytes),
        ),
    );
    vec![pb::evaluation_service_server::SERVICE_NAME]
}

/// What a command center serves: its console, its departments' service and the evaluation.
pub fn mount_center(
    shared: &Shared,
    routes: &mut tonic::service::RoutesBuilder,
) -> Vec<&'static str> {
    let mut names = crate::console::mount(shared, routes);
    names.extend(mount(shared, routes));
    names
}

/// `EvaluationService/Evaluate`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluate {
    /// A grid-code prefix inside the tier's scope.
    pub prefix: String,
    /// Whether the caller named it (else: the whole scope).
    pub named: bool,
    pub from: DateTime<Utc>,
    /// Not after `now`: a period ends at the latest when it is asked about.
    pub to: DateTime<Utc>,
}

/// How far after now a period may be said to end (it is evaluated up to now): a year ahead covers
/// "this year" asked in January; later is a typing error.
pub const MAX_AHEAD_SECONDS: i64 = 366 * 86_400;

/// A bound of the period: given, from 2000 on (as every recorded time) and at most
/// [`MAX_AHEAD_SECONDS`] after `now`.
fn time(
    field: &'static str,
    value: Option<prost_types::Timestamp>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Error> {
    let value = value.ok_or_else(|| Error::invalid(field, "required"))?;
    validate::time_within(field, &value, now, MAX_AHEAD_SECONDS)
}

impl Evaluate {
    /// The request, checked: both times given, from 2000 on and at most [`MAX_AHEAD_SECONDS`]
    /// after `now`, `from` before `to` and before `now`, at most [`MAX_PERIOD_DAYS`] apart, the
    /// org inside `scope`. A `to` after `now` counts as `now`.
    pub fn parse(
        request: pb::EvaluateRequest,
        scope: &Scope,
        now: DateTime<Utc>,
    ) -> Result<Evaluate, Error> {
        let from = time("from", request.from, now)?;
        let to = time("to", request.to, now)?;
        if to <= from {
            return Err(Error::invalid("to", "must be later than from"));
        }
        if to - from > Duration::days(MAX_PERIOD_DAYS) {
            return Err(Error::invalid(
                "to",
                format!("the period is at most {MAX_PERIOD_DAYS} days"),
            ));
        }
        if from >= now {
            return Err(Error::invalid("from", "lies in the future"));
        }
        let named = !request.org_code.trim().is_empty();
        let prefix = validate::prefix_in_scope(scope, "org_code", &request.org_code)?;
        Ok(Evaluate {
            prefix,
            named,
            from,
            to: to.min(now),
        })
    }
}

/// `wangge.v1.EvaluationService`.
#[derive(Debug, Clone)]
pub struct Evaluations(pub Shared);

#[tonic::async_trait]
impl pb::evaluation_service_server::EvaluationService for Evaluations {
    #[instrument(skip_all, fields(org = %request.get_ref().org_code))]
    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let engine = &self.0.engine;
        let grant = authorize(caller(&request)?, Right::Evaluate, engine.tier())?;
        let ask = Evaluate::parse(request.into_inner(), engine.scope(), engine.now())?;
        // A named org must lie wholly in the caller's scope; without one, the caller's part of
        // the tier's scope is evaluated.
        let prefixes = if ask.named {
            grant.check_whole(&ask.prefix)?;
            vec![ask.prefix.clone()]
        } else {
            grant.narrow(&ask.prefix)?
        };
        let pool = engine.pool();
        let rules = engine.rules();
        let cases = period_cases(pool, &prefixes, ask.from, ask.to)
            .await
            .map_err(Error::from)?;
        let mut evaluator = Evaluator::new(ask.from, ask.to);
        for page in cases.chunks(CASES_PER_READ) {
            let read = histories(pool, page, ask.to).await.map_err(Error::from)?;
            let rules = rules.clone();
            // Counting walks every event on the work calendar: off the async workers.
            evaluator = tokio::task::spawn_blocking(move || {
                for history in &read {
                    evaluator.add(history, &rules.limits, |community| {
                        rules.calendar(community)
                    });
                }
                evaluator
            })
            .await
            .map_err(|e| Error::Internal(format!("the evaluation failed: {e}")))?;
        }
        let figures = evaluator.finish();
        let named = named(pool, &figures).await?;
        Ok(Response::new(response(&figures, &named, &ask, prefixes)))
    }
}

/// The registry's names of what the rows name.
async fn named(
    pool: &sqlx::PgPool,
    figures: &Evaluation,
) -> Result<HashMap<(Named, String), String>, Error> {
    let workers: Vec<String> = figures
        .workers
        .iter()
        .map(|w| w.worker_id.clone())
        .collect();
    let mut orgs: BTreeSet<String> = figures.centers.iter().map(|c| c.org_code.clone()).collect();
    let mut grids = Vec::new();
    for area in &figures.areas {
        match area.level {
            AreaLevel::Grid => grids.push(area.code.clone()),
            AreaLevel::Street | AreaLevel::Community => {
                orgs.insert(area.code.clone());
            }
        }
    }
    let orgs: Vec<String> = orgs.into_iter().collect();
    let departments: Vec<String> = figures
        .departments
        .iter()
        .map(|d| d.department_code.clone())
        .collect();
    names(pool, &workers, &orgs, &grids, &departments)
        .await
        .map_err(Error::from)
}

fn wire(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

fn area_level(level: AreaLevel) -> pb::AreaLevel {
    match level {
        AreaLevel::Street => pb::AreaLevel::Street,
        AreaLevel::Community => pb::AreaLevel::Community,
        AreaLevel::Grid => pb::AreaLevel::Grid,
    }
}

/// The figures as the API sends them, with the registry's names.
pub fn response(
    figures: &Evaluation,
    names: &HashMap<(Named, String), String>,
    ask: &Evaluate,
    prefixes: Vec<String>,
) -> pb::EvaluateResponse {
    let name = |kind: Named, key: &str| {
        names
            .get(&(kind, key.to_owned()))
            .cloned()
            .unwrap_or_default()
    };
    pb::EvaluateResponse {
        from: Some(wire(ask.from)),
        to: Some(wire(ask.to)),
        prefixes,
        workers: figures
            .workers
            .iter()
            .map(|w| pb::WorkerEvaluation {
                worker_id: w.worker_id.clone(),
                name: name(Named::Worker, &w.worker_id),
                reports: w.reports,
                valid_reports: w.valid_reports,
                verified: w.verified,
                verified_on_time: w.verified_on_time,
                checked: w.checked,
                checked_on_time: w.checked_on_time,
                grid_reports: w.grid_reports,
                missed: w.missed,
                valid_rate: w.valid_rate(),
                verified_on_time_rate: w.verified_on_time_rate(),
                checked_on_time_rate: w.checked_on_time_rate(),
                missed_rate: w.missed_rate(),
            })
            .collect(),
        centers: figures
            .centers
            .iter()
            .map(|c| pb::CenterEvaluation {
                org_code: c.org_code.clone(),
                name: name(Named::Org, &c.org_code),
                filed: c.filed,
                filed_on_time: c.filed_on_time,
                voided: c.voided,
                dispatched: c.dispatched,
                dispatched_on_time: c.dispatched_on_time,
                dispatch_reworked: c.dispatch_reworked,
                filed_on_time_rate: c.filed_on_time_rate(),
                filing_accuracy: c.filing_accuracy(),
                dispatched_on_time_rate: c.dispatched_on_time_rate(),
                dispatch_accuracy: c.dispatch_accuracy(),
            })
            .collect(),
        departments: figures
            .departments
            .iter()
            .map(|d| pb::DepartmentEvaluation {
                department_code: d.department_code.clone(),
                name: name(Named::Department, &d.department_code),
                dispatched: d.dispatched,
                dispatched_handled: d.dispatched_handled,
                handled: d.handled,
                handled_on_time: d.handled_on_time,
                handled_late: d.handled_late(),
                reworked: d.reworked,
                handling_rate: d.handling_rate(),
                handled_on_time_rate: d.handled_on_time_rate(),
                rework_rate: d.rework_rate(),
            })
            .collect(),
        areas: figures
            .areas
            .iter()
            .map(|a| pb::AreaEvaluation {
                level: area_level(a.level) as i32,
                code: a.code.clone(),
                name: match a.level {
                    AreaLevel::Grid => name(Named::Grid, &a.code),
                    AreaLevel::Street | AreaLevel::Community => name(Named::Org, &a.code),
                },
                reported: a.reported,
                reported_closed: a.reported_closed,
                closed: a.closed,
                closed_on_time: a.closed_on_time,
                open_overdue: a.open_overdue,
                closing_rate: a.closing_rate(),
                closed_on_time_rate: a.closed_on_time_rate(),
            })
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ts(at: &str) -> Option<prost_types::Timestamp> {
        Some(wire(at.parse::<DateTime<Utc>>().unwrap()))
    }

    fn field_of(result: Result<Evaluate, Error>) -> String {
        match result {
            Err(Error::InvalidArgument { field, .. }) => field.into_owned(),
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let scope: Scope = "350205002000".parse().unwrap();
        let now = "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let request = |org: &str, from: &str, to: &str| pb::EvaluateRequest {
            org_code: org.into(),
            from: ts(from),
            to: ts(to),
        };
        let ok = Evaluate::parse(
            request("", "2026-11-01T00:00:00Z", "2026-11-08T00:00:00Z"),
            &scope,
            now,
        )
        .unwrap();
        assert_eq!((ok.prefix.as_str(), ok.named), ("350205002", false));
        let community = Evaluate::parse(
            request(
                "350205002006",
                "2026-11-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            &scope,
            now,
        )
        .unwrap();
        assert_eq!(
            (community.prefix.as_str(), community.named),
            ("350205002006", true)
        );
        // A period reaching past now ends now.
        assert_eq!(community.to, now);

        let bad = |org: &str, from: &str, to: &str| {
            field_of(Evaluate::parse(request(org, from, to), &scope, now))
        };
        let week = ("2026-11-01T00:00:00Z", "2026-11-08T00:00:00Z");
        assert_eq!(bad("", week.1, week.0), "to");
        assert_eq!(bad("", week.0, week.0), "to");
        assert_eq!(
            bad("", "2010-01-01T00:00:00Z", "2026-11-01T00:00:00Z"),
            "to"
        );
        assert_eq!(
            bad("", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"),
            "from"
        );
        assert_eq!(bad("350205003", week.0, week.1), "org_code");
        assert_eq!(bad("35020500200x", week.0, week.1), "org_code");
        let missing = pb::EvaluateRequest {
            from: None,
            ..request("", week.0, week.1)
        };
        assert_eq!(field_of(Evaluate::parse(missing, &scope, now)), "from");
        let nanos = pb::EvaluateRequest {
            to: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: -1,
            }),
            ..request("", week.0, week.1)
        };
        assert_eq!(field_of(Evaluate::parse(nanos, &scope, now)), "to");
    }

    #[test]
    fn both_bounds_lie_between_2000_and_a_year_from_now() {
        let scope: Scope = "350205002000".parse().unwrap();
        let now = "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let at = |seconds: i64| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let parse = |from, to| {
            Evaluate::parse(
                pb::EvaluateRequest {
                    org_code: String::new(),
                    from,
                    to,
                },
                &scope,
                now,
            )
        };
        let day = 86_400;
        // A short period in year 1 or in 1999 was accepted before: no case is that old.
        let year_one = -62_135_596_800; // 0001-01-01
        assert_eq!(field_of(parse(at(year_one), at(year_one + day))), "from");
        let earliest = validate::EARLIEST_SECONDS;
        assert_eq!(
            field_of(parse(at(earliest - day), at(earliest + day))),
            "from"
        );
        assert_eq!(field_of(parse(at(earliest), at(earliest - 1))), "to");
        assert!(parse(at(earliest), at(earliest + day)).is_ok());
        // A `to` a year ahead is a period ending in the future (evaluated up to now); beyond, and
        // the far end of what a timestamp holds, is refused by name before the span is looked at.
        let ahead = now.timestamp() + MAX_AHEAD_SECONDS;
        let recent = now.timestamp() - day / 2;
        assert_eq!(parse(at(recent), at(ahead - day)).unwrap().to, now);
        for far in [ahead + 1, 8_000_000_000_000, i64::MAX] {
            let refused = parse(at(recent), at(far)).unwrap_err();
            assert!(
                refused.to_string().starts_with("to: lies in the future"),
                "{refused}"
            );
        }
        assert_eq!(field_of(parse(at(i64::MAX - 1), at(i64::MAX))), "from");
    }
}
