//! The field app's and the community workstation's services.

use tonic::{Request, Response, Status};
use wangge_proto as pb;
use wangge_proto::case_event::Kind;
use wangge_store::cases;
use wangge_tier::actor::actor;
use wangge_tier::engine::{Action, NewReport, parse_case_id};
use wangge_tier::query::prefix_in_scope;
use wangge_tier::watch::{UpdateStream, snapshot, watch};
use wangge_tier::{Error, Shared};

const MAX_DESCRIPTION_CHARS: usize = 2000;

/// `wangge.v1.FieldAppService`.
#[derive(Debug, Clone)]
pub struct FieldApp(pub Shared);

/// Parses a report, field by field, into what the engine takes.
fn parse_report(request: pb::ReportCaseRequest) -> Result<NewReport, Error> {
    let client_id = request.client_id.trim().to_owned();
    let client_id_ok = !client_id.is_empty()
        && client_id.len() <= 64
        && client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !client_id_ok {
        return Err(Error::invalid(
            "client_id",
            "required: 1-64 letters, digits, - or _ (a UUID from the app)",
        ));
    }
    let category_code = request.category_code.trim().to_owned();
    if category_code.is_empty() {
        return Err(Error::invalid("category_code", "required"));
    }
    let description = request.description.trim().to_owned();
    if description.is_empty() {
        return Err(Error::invalid("description", "required"));
    }
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Error::invalid(
            "description",
            format!("longer than {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    let location = request
        .location
        .ok_or_else(|| Error::invalid("location", "required"))?;
    let in_range = location.longitude.is_finite()
        && location.latitude.is_finite()
        && (-180.0..=180.0).contains(&location.longitude)
        && (-90.0..=90.0).contains(&location.latitude);
    if !in_range {
        return Err(Error::invalid(
            "location",
            "longitude must be within ±180 and latitude within ±90",
        ));
    }
    if let Some(captured) = &request.captured_at {
        let now = chrono::Utc::now().timestamp();
        if captured.seconds > now + 300 {
            return Err(Error::invalid("captured_at", "lies in the future"));
        }
    }
    let urgency = match pb::Urgency::try_from(request.urgency) {
        Ok(pb::Urgency::Unspecified) => pb::Urgency::Normal,
        Ok(urgency) => urgency,
        Err(_) => {
            return Err(Error::invalid(
                "urgency",
                format!("unknown urgency {}", request.urgency),
            ));
        }
    };
    if let Some(handling) = &request.self_handling
        && handling.resolution.trim().is_empty()
    {
        return Err(Error::invalid(
            "self_handling.resolution",
            "say what was done on the spot",
        ));
    }
    Ok(NewReport {
        client_id,
        category_code,
        description,
        location,
        captured_at: request.captured_at,
        urgency,
        attachments: request.attachments,
        self_handling: request.self_handling,
    })
}

/// A task of the field app: an on-site check the village holds.
fn is_task(case: &pb::Case, prefixes: &[String]) -> bool {
    case.state() == pb::CaseState::Checking
        && case.check_outcome() == pb::CheckOutcome::Pending
        && prefixes
            .iter()
            .any(|p| case.grid_code.starts_with(p.as_str()))
}

impl FieldApp {
    fn prefixes(&self, codes: &[String]) -> Result<Vec<String>, Error> {
        let scope = self.0.engine.scope();
        if codes.is_empty() {
            return Ok(vec![scope.prefix().to_owned()]);
        }
        codes
            .iter()
            .map(|c| prefix_in_scope(scope, "org_codes", c))
            .collect()
    }

    async fn tasks(&self, prefixes: &[String]) -> Result<Vec<pb::Case>, Error> {
        let mut tasks = Vec::new();
        for prefix in prefixes {
            let filter = cases::Filter {
                grid_prefix: prefix.clone(),
                pending_check: true,
                limit: 1000,
                ..Default::default()
            };
            tasks.extend(cases::list(self.0.engine.pool(), &filter).await?);
        }
        Ok(tasks)
    }
}

#[tonic::async_trait]
impl pb::field_app_service_server::FieldAppService for FieldApp {
    type WatchTasksStream = UpdateStream;

    async fn report_case(
        &self,
        request: Request<pb::ReportCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let actor = actor(&request, pb::Role::GridWorker)?;
        let report = parse_report(request.into_inner())?;
        Ok(Response::new(self.0.engine.report(actor, report).await?))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        actor(&request, pb::Role::GridWorker)?;
        let prefixes = self.prefixes(&request.get_ref().org_codes)?;
        Ok(Response::new(pb::ListTasksResponse {
            cases: self.tasks(&prefixes).await?,
        }))
    }

    async fn watch_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        actor(&request, pb::Role::GridWorker)?;
        let prefixes = self.prefixes(&request.get_ref().org_codes)?;
        let live = self.0.engine.subscribe();
        let initial = snapshot(self.tasks(&prefixes).await?);
        let stream = watch(&self.0, live, initial, move |update| {
            update
                .case
                .as_ref()
                .is_some_and(|case| is_task(case, &prefixes))
        });
        Ok(Response::new(stream))
    }

    async fn confirm_check(
        &self,
        request: Request<pb::ConfirmCheckRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let actor = actor(&request, pb::Role::GridWorker)?;
        let request = request.into_inner();
        let id = parse_case_id(&request.case_id)?;
        let kind = Kind::Checked(pb::Checked {
            passed: request.passed,
        });
        let action = Action {
            actor,
            note: request.note,
            attachments: request.attachments,
        };
        Ok(Response::new(
            self.0.engine.act(id, action, |_| Ok(kind)).await?,
        ))
    }
}

/// `wangge.v1.CommunityService`.
#[derive(Debug, Clone)]
pub struct Community(pub Shared);

impl Community {
    async fn review(
        &self,
        request: Request<pb::ReviewRequest>,
        approve: bool,
    ) -> Result<Response<pb::Case>, Status> {
        let actor = actor(&request, pb::Role::CommunityStaff)?;
        let request = request.into_inner();
        let id = parse_case_id(&request.case_id)?;
        let kind = if approve {
            Kind::SelfHandleApproved(pb::SelfHandleApproved {})
        } else {
            Kind::SelfHandleRejected(pb::SelfHandleRejected {
                reason: request.note.clone(),
            })
        };
        let action = Action {
            actor,
            note: request.note,
            attachments: Vec::new(),
        };
        Ok(Response::new(
            self.0.engine.act(id, action, |_| Ok(kind)).await?,
        ))
    }
}

#[tonic::async_trait]
impl pb::community_service_server::CommunityService for Community {
    async fn approve_self_handled(
        &self,
        request: Request<pb::ReviewRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.review(request, true).await
    }

    async fn reject_self_handled(
        &self,
        request: Request<pb::ReviewRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.review(request, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> pb::ReportCaseRequest {
        pb::ReportCaseRequest {
            client_id: "0195f3c2-7d4e-7a10-9c61-2f1d0e8b4a21".into(),
            category_code: "szcg-01-01".into(),
            description: "暴露垃圾".into(),
            location: Some(pb::GeoPoint {
                longitude: 118.0,
                latitude: 24.5,
            }),
            ..Default::default()
        }
    }

    fn field_of(request: pb::ReportCaseRequest) -> &'static str {
        match parse_report(request) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_report_parses_with_normal_urgency() {
        let report = parse_report(valid()).unwrap();
        assert_eq!(report.urgency, pb::Urgency::Normal);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                client_id: "".into(),
                ..valid()
            }),
            "client_id"
        );
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                client_id: "a b".into(),
                ..valid()
            }),
            "client_id"
        );
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                category_code: " ".into(),
                ..valid()
            }),
            "category_code"
        );
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                description: "".into(),
                ..valid()
            }),
            "description"
        );
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                location: None,
                ..valid()
            }),
            "location"
        );
        let far = Some(pb::GeoPoint {
            longitude: 500.0,
            latitude: 24.5,
        });
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                location: far,
                ..valid()
            }),
            "location"
        );
        let nan = Some(pb::GeoPoint {
            longitude: f64::NAN,
            latitude: 24.5,
        });
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                location: nan,
                ..valid()
            }),
            "location"
        );
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                urgency: 99,
                ..valid()
            }),
            "urgency"
        );
        let future = Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 3600,
            nanos: 0,
        });
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                captured_at: future,
                ..valid()
            }),
            "captured_at"
        );
        let empty = Some(pb::SelfHandling {
            resolution: "".into(),
        });
        assert_eq!(
            field_of(pb::ReportCaseRequest {
                self_handling: empty,
                ..valid()
            }),
            "self_handling.resolution"
        );
    }
}
