//! The field app's and the community workstation's services.

use tonic::{Request, Response, Status};
use wangge_proto as pb;
use wangge_proto::case_event::Kind;
use wangge_store::cases;
use wangge_tier::engine::Action;
use wangge_tier::policy::{Grant, Right, authorize, caller};
use wangge_tier::request::{CaseAction, CheckResult, NewReport, NoteKind, VerificationAnswer};
use wangge_tier::validate::prefixes_in_scope;
use wangge_tier::watch::{UpdateStream, by_urgency_then_time_left, snapshot, watch};
use wangge_tier::worklist::read_all;
use wangge_tier::{Error, Shared};

/// `wangge.v1.FieldAppService`.
#[derive(Debug, Clone)]
pub struct FieldApp(pub Shared);

/// A task of the field app: an on-site check (核查) or verification (核实) the village holds.
fn is_task(case: &pb::Case, prefixes: &[String]) -> bool {
    let pending = match case.state() {
        pb::CaseState::Checking => case.check_outcome() == pb::CheckOutcome::Pending,
        pb::CaseState::Verifying => true,
        _ => false,
    };
    pending
        && prefixes
            .iter()
            .any(|p| case.grid_code.starts_with(p.as_str()))
}

/// The caller's grant of `right` at the village.
fn grant<T>(shared: &Shared, request: &Request<T>, right: Right) -> Result<Grant, Error> {
    authorize(caller(request)?, right, shared.engine.tier())
}

impl FieldApp {
    /// The grids whose tasks the caller asked for (the whole village when none), narrowed to the
    /// caller's own.
    fn prefixes(&self, grant: &Grant, codes: &[String]) -> Result<Vec<String>, Error> {
        let mut prefixes = Vec::new();
        for prefix in prefixes_in_scope(self.0.engine.scope(), "org_codes", codes)? {
            for part in grant.narrow(&prefix)? {
                if !prefixes.contains(&part) {
                    prefixes.push(part);
                }
            }
        }
        Ok(prefixes)
    }

    /// The caller's tasks, most urgent first, then least time left: the order holds over all of
    /// them (a grid worker's pending checks and verifications are few), so all are read.
    async fn tasks(&self, prefixes: &[String]) -> Result<Vec<pb::Case>, Error> {
        let mut tasks = Vec::new();
        for prefix in prefixes {
            let filter = cases::Filter {
                grid_prefixes: vec![prefix.clone()],
                states: vec!["checking".into(), "verifying".into()],
                pending_check: true,
                ..Default::default()
            };
            tasks.extend(read_all(self.0.engine.pool(), filter).await?);
        }
        let engine = &self.0.engine;
        let mut tasks: Vec<pb::Case> = tasks.into_iter().map(|c| engine.with_clocks(c)).collect();
        by_urgency_then_time_left(&mut tasks);
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
        let grant = grant(&self.0, &request, Right::Report)?;
        let report = NewReport::parse(request.into_inner(), chrono::Utc::now())?;
        Ok(Response::new(self.0.engine.report(&grant, report).await?))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let grant = grant(&self.0, &request, Right::ReadTasks)?;
        let prefixes = self.prefixes(&grant, &request.get_ref().org_codes)?;
        Ok(Response::new(pb::ListTasksResponse {
            cases: self.tasks(&prefixes).await?,
        }))
    }

    async fn watch_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let grant = grant(&self.0, &request, Right::ReadTasks)?;
        let prefixes = self.prefixes(&grant, &request.get_ref().org_codes)?;
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
        let grant = grant(&self.0, &request, Right::ConfirmCheck)?;
        let CheckResult {
            action: request,
            passed,
        } = CheckResult::try_from(request.into_inner())?;
        self.answer(grant, request, Kind::Checked(pb::Checked { passed }))
            .await
    }

    async fn confirm_verification(
        &self,
        request: Request<pb::ConfirmVerificationRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let grant = grant(&self.0, &request, Right::ConfirmCheck)?;
        let VerificationAnswer {
            action: request,
            genuine,
        } = VerificationAnswer::try_from(request.into_inner())?;
        self.answer(grant, request, Kind::Verified(pb::Verified { genuine }))
            .await
    }
}

impl FieldApp {
    /// A grid worker's answer from the field: a check or a verification.
    async fn answer(
        &self,
        grant: Grant,
        request: CaseAction,
        kind: Kind,
    ) -> Result<Response<pb::Case>, Status> {
        let action = Action {
            actor: grant.actor(),
            note: request.note,
            attachments: request.attachments,
        };
        Ok(Response::new(
            self.0
                .engine
                .act(request.case_id, action, |case| {
                    grant.check_case(case)?;
                    Ok(kind)
                })
                .await?,
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
        let grant = grant(&self.0, &request, Right::ReviewSelfHandled)?;
        // A rejection says why the case goes up to the street after all.
        let note_kind = if approve {
            NoteKind::Remark
        } else {
            NoteKind::Reason
        };
        let request = CaseAction::review(request.into_inner(), note_kind)?;
        let kind = if approve {
            Kind::SelfHandleApproved(pb::SelfHandleApproved {})
        } else {
            Kind::SelfHandleRejected(pb::SelfHandleRejected {
                reason: request.note.as_str().to_owned(),
            })
        };
        let action = Action {
            actor: grant.actor(),
            note: request.note,
            attachments: request.attachments,
        };
        Ok(Response::new(
            self.0
                .engine
                .act(request.case_id, action, |case| {
                    grant.check_case(case)?;
                    Ok(kind)
                })
                .await?,
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
