//! The command console of a command center and the department handlers' service: the street and
//! the district serve both, each for its own cases and departments.

use tonic::{Request, Response, Status};
use wangge_domain::GridCode;
use wangge_domain::case::{lower_tier, owner_for, tier_name};
use wangge_proto as pb;
use wangge_proto::case_event::Kind;
use wangge_store::{cases, registry};

use crate::engine::Action;
use crate::policy::{Grant, Right, authorize, caller, delay_deciders};
use crate::query::state_names;
use crate::request::{
    CaseAction, Decision, DelayAsk, DepartmentAction, Dispatch, Merge, NoteKind, Supervision,
};
use crate::validate;
use crate::watch::{
    UpdateStream, by_urgency_then_time_left, existing, snapshot, state_matches, watch,
};
use crate::{Error, Shared};

/// Mounts what a command center serves (the street's or the district's): its console and its
/// departments' service. Returns their names, for reflection.
pub fn mount(shared: &Shared, routes: &mut tonic::service::RoutesBuilder) -> Vec<&'static str> {
    routes
        .add_service(
            shared.guard(
                pb::command_console_service_server::CommandConsoleServiceServer::new(Console(
                    shared.clone(),
                ))
                .max_decoding_message_size(shared.max_request_bytes),
            ),
        )
        .add_service(
            shared.guard(
                pb::department_service_server::DepartmentServiceServer::new(Departments(
                    shared.clone(),
                ))
                .max_decoding_message_size(shared.max_request_bytes),
            ),
        );
    vec![
        pb::command_console_service_server::SERVICE_NAME,
        pb::department_service_server::SERVICE_NAME,
    ]
}

/// `wangge.v1.CommandConsoleService`.
#[derive(Debug, Clone)]
pub struct Console(pub Shared);

impl Console {
    fn grant<T>(&self, request: &Request<T>, right: Right) -> Result<Grant, Error> {
        authorize(caller(request)?, right, self.0.engine.tier())
    }

    /// A step whose note is a remark or, for `NoteKind::Reason`, the reason `kind` records.
    async fn act(
        &self,
        request: Request<pb::CaseActionRequest>,
        right: Right,
        note_kind: NoteKind,
        kind: impl FnOnce(&pb::Case, &str) -> Kind,
    ) -> Result<Response<pb::Case>, Status> {
        let grant = self.grant(&request, right)?;
        let request = CaseAction::console(request.into_inner(), note_kind)?;
        let note = request.note.clone();
        let action = Action {
            actor: grant.actor(),
            note: request.note,
            attachments: request.attachments,
        };
        let case = self
            .0
            .engine
            .act(request.case_id, action, |case| {
                grant.check_case(case)?;
                Ok(kind(case, note.as_str()))
            })
            .await?;
        Ok(Response::new(case))
    }
}

impl Console {
    /// A decision on a request pending in state `pending`: `approved` or `denied` (with the
    /// reason) builds the event; `decider` gives, on the case as locked, the grant to decide in (the
    /// role the decision needs), or refuses the caller's roles.
    async fn decide(
        &self,
        request: Request<pb::DecisionRequest>,
        right: Right,
        pending: pb::CaseState,
        decider: impl FnOnce(&Grant, &pb::Case) -> Result<Grant, Error>,
        approved: impl FnOnce(&pb::Case) -> Kind,
        denied: impl FnOnce(String) -> Kind,
    ) -> Result<Response<pb::Case>, Status> {
        let grant = self.grant(&request, right)?;
        let Decision { action, approve } = Decision::try_from(request.into_inner())?;
        let reason = action.note.as_str().to_owned();
        let tier = self.0.engine.tier();
        let case = self
            .0
            .engine
            .act_as(action.case_id, action.note, action.attachments, |case| {
                grant.check_case(case)?;
                // Nothing to decide here (another state, another tier's case): the state machine
                // refuses the step as such (FAILED_PRECONDITION) before any role is weighed.
                let here = case.owner.as_ref().is_some_and(|o| o.tier() == tier);
                let decider = if here && case.state() == pending {
                    decider(&grant, case)?
                } else {
                    grant.clone()
                };
                let kind = if approve {
                    approved(case)
                } else {
                    denied(reason)
                };
                Ok((decider.actor(), kind))
            })
            .await?;
        Ok(Response::new(case))
    }
}

/// Whether the extension `case` asks for is longer than the category's standard extension (or
/// any, where the category has none); [`crate::policy::delay_deciders`] says who decides it.
pub fn extension_longer_than_standard(
    case: &pb::Case,
    standard: Option<wangge_domain::clock::Limit>,
    working_day: chrono::Duration,
) -> bool {
    let Some(asked) = case.requested_extension else {
        return false;
    };
    let Some(standard) = standard else {
        return true;
    };
    let nominal = |amount: u32, unit: wangge_domain::clock::LimitUnit| {
        use wangge_domain::clock::LimitUnit;
        let amount = i64::from(amount);
        match unit {
            LimitUnit::Minutes | LimitUnit::WorkingMinutes => chrono::Duration::minutes(amount),
            LimitUnit::WorkingHours => chrono::Duration::hours(amount),
            LimitUnit::WorkingDays => working_day * amount as i32,
        }
    };
    let Some(asked_unit) = crate::clocks::unit_of(asked.unit()) else {
        return true;
    };
    nominal(asked.amount, asked_unit) > nominal(standard.amount, standard.unit)
}

#[tonic::async_trait]
impl pb::command_console_service_server::CommandConsoleService for Console {
    type WatchCasesStream = UpdateStream;

    async fn watch_cases(
        &self,
        request: Request<pb::WatchCasesRequest>,
    ) -> Result<Response<Self::WatchCasesStream>, Status> {
        let grant = self.grant(&request, Right::Read)?;
        let request = request.into_inner();
        let states = validate::states("states", &request.states)?;
        let names = state_names(&states);
        let engine = &self.0.engine;
        let prefixes = grant.narrow(engine.scope().prefix())?;
        let live = engine.subscribe();
        let initial = if request.include_existing {
            let filter = cases::Filter {
                states: names,
                grid_prefixes: prefixes,
                ..Default::default()
            };
            existing(engine.pool().clone(), filter)
        } else {
            snapshot(Vec::new())
        };
        let states: Vec<i32> = states.into_iter().map(|s| s as i32).collect();
        let stream = watch(&self.0, live, initial, move |update| {
            update
                .case
                .as_ref()
                .is_some_and(|case| state_matches(&states, case) && grant.check_case(case).is_ok())
        });
        Ok(Response::new(stream))
    }

    async fn accept_case(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Accept, NoteKind::Remark, |_, _| {
            Kind::Accepted(pb::Accepted {})
        })
        .await
    }

    async fn reject_case(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Void, NoteKind::Reason, |_, note| {
            Kind::Rejected(pb::Rejected {
                reason: note.to_owned(),
            })
        })
        .await
    }

    async fn dispatch_case(
        &self,
        request: Request<pb::DispatchCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let grant = self.grant(&request, Right::Dispatch)?;
        let request = Dispatch::try_from(request.into_inner())?;
        let engine = &self.0.engine;
        let code = request.department_code.as_str();
        let department = registry::department_by_code(engine.pool(), code)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| {
                Error::invalid("department_code", format!("unknown department {code:?}"))
            })?;
        let tier = engine.tier();
        let action = Action {
            actor: grant.actor(),
            note: request.note,
            attachments: Default::default(),
        };
        let case = engine
            .act(request.case_id, action, |case| {
                grant.check_case(case)?;
                // A center dispatches to the departments of its own org: the street to the
                // street's, the district to the district's.
                let grid: GridCode = case
                    .grid_code
                    .parse()
                    .map_err(|e| Error::invalid("grid_code", format!("{e}")))?;
                let org = owner_for(tier, &grid).org_code;
                if department.org_code != org {
                    return Err(Error::FailedPrecondition(format!(
                        "department {} belongs to {}, not to the {} center {org}",
                        department.code,
                        department.org_code,
                        tier_name(tier)
                    )));
                }
                Ok(Kind::Dispatched(pb::Dispatched {
                    department_code: department.code,
                    ..Default::default()
                }))
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn assign_case(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        // 交办 to the tier below, the street of the case's grid; the state machine refuses it
        // where that tier has no center (the street's tier below is the village).
        let down = lower_tier(self.0.engine.tier()).unwrap_or_default();
        self.act(request, Right::Dispatch, NoteKind::Remark, |_, _| {
            Kind::Dispatched(pb::Dispatched {
                department_code: String::new(),
                to_tier: down as i32,
            })
        })
        .await
    }

    async fn request_check(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Accept, NoteKind::Remark, |case, _| {
            Kind::CheckRequested(pb::CheckRequested {
                community_code: case.community_code.clone(),
            })
        })
        .await
    }

    async fn rework_case(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Accept, NoteKind::Remark, |case, _| {
            Kind::Reworked(pb::Reworked {
                department_code: case.department_code.clone(),
            })
        })
        .await
    }

    async fn close_case(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Close, NoteKind::Remark, |_, _| {
            Kind::Closed(pb::Closed {})
        })
        .await
    }

    async fn escalate_case(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Accept, NoteKind::Reason, |_, note| {
            Kind::Escalated(pb::Escalated {
                reason: note.to_owned(),
            })
        })
        .await
    }

    async fn request_verification(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Accept, NoteKind::Remark, |case, _| {
            Kind::VerifyRequested(pb::VerifyRequested {
                community_code: case.community_code.clone(),
            })
        })
        .await
    }

    async fn request_void(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Accept, NoteKind::Reason, |_, note| {
            Kind::VoidRequested(pb::VoidRequested {
                reason: note.to_owned(),
            })
        })
        .await
    }

    async fn decide_void(
        &self,
        request: Request<pb::DecisionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.decide(
            request,
            Right::Approve,
            pb::CaseState::VoidRequested,
            |grant, _| Ok(grant.clone()),
            |_| Kind::VoidApproved(pb::VoidApproved {}),
            |reason| Kind::VoidDenied(pb::VoidDenied { reason }),
        )
        .await
    }

    async fn decide_return(
        &self,
        request: Request<pb::DecisionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.decide(
            request,
            Right::Approve,
            pb::CaseState::ReturnRequested,
            |grant, _| Ok(grant.clone()),
            |_| Kind::ReturnApproved(pb::ReturnApproved {}),
            |reason| Kind::ReturnDenied(pb::ReturnDenied { reason }),
        )
        .await
    }

    async fn decide_delay(
        &self,
        request: Request<pb::DecisionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let rules = self.0.engine.rules();
        self.decide(
            request,
            Right::Approve,
            pb::CaseState::DelayRequested,
            |grant, case| {
                let standard = rules.standard_extension(&case.category_code);
                let day = rules.working_day(&case.community_code);
                let longer = extension_longer_than_standard(case, standard, day);
                grant
                    .in_role_of(delay_deciders(case, longer))
                    .map_err(|refused| {
                        Error::PermissionDenied(format!(
                            "a second extension request, or one longer than the category's \
                             standard extension, is decided by the center's leader: {refused}"
                        ))
                    })
            },
            |case| {
                Kind::DelayApproved(pb::DelayApproved {
                    extension: case.requested_extension,
                })
            },
            |reason| Kind::DelayDenied(pb::DelayDenied { reason }),
        )
        .await
    }

    async fn decide_hang(
        &self,
        request: Request<pb::DecisionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.decide(
            request,
            Right::Lead,
            pb::CaseState::HangRequested,
            |grant, _| Ok(grant.clone()),
            |_| Kind::HangApproved(pb::HangApproved {}),
            |reason| Kind::HangDenied(pb::HangDenied { reason }),
        )
        .await
    }

    async fn resume_case(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Accept, NoteKind::Remark, |_, _| {
            Kind::Resumed(pb::Resumed {})
        })
        .await
    }

    async fn reopen_case(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Approve, NoteKind::Reason, |_, note| {
            Kind::Reopened(pb::Reopened {
                reason: note.to_owned(),
            })
        })
        .await
    }

    async fn archive_case(
        &self,
        request: Request<pb::CaseActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, Right::Approve, NoteKind::Reason, |_, note| {
            Kind::Archived(pb::Archived {
                reason: note.to_owned(),
            })
        })
        .await
    }

    async fn merge_case(
        &self,
        request: Request<pb::MergeCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let grant = self.grant(&request, Right::Accept)?;
        let Merge { action, into } = Merge::try_from(request.into_inner())?;
        let step = Action {
            actor: grant.actor(),
            note: action.note,
            attachments: action.attachments,
        };
        let case = self
            .0
            .engine
            .merge(action.case_id, into, step, |case| grant.check_case(case))
            .await?;
        Ok(Response::new(case))
    }

    async fn supervise_case(
        &self,
        request: Request<pb::SuperviseCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let grant = self.grant(&request, Right::Supervise)?;
        let Supervision { action, level } = Supervision::try_from(request.into_inner())?;
        let step = Action {
            actor: grant.actor(),
            note: action.note,
            attachments: action.attachments,
        };
        let case = self
            .0
            .engine
            .act(action.case_id, step, |case| {
                grant.check_case(case)?;
                let stage =
                    wangge_domain::limits::Stage::of_state(case.state()).ok_or_else(|| {
                        Error::FailedPrecondition(format!(
                            "case {} is {}: no stage runs to supervise",
                            case.id,
                            wangge_domain::case::state_name(case.state())
                        ))
                    })?;
                Ok(Kind::Supervised(pb::Supervised {
                    level: level as i32,
                    stage: wangge_domain::case::stage_of(stage) as i32,
                    automatic: false,
                    stage_started_at: case.stage_started_at,
                }))
            })
            .await?;
        Ok(Response::new(case))
    }
}

/// `wangge.v1.DepartmentService`.
#[derive(Debug, Clone)]
pub struct Departments(pub Shared);

impl Departments {
    /// The department (a checked code), which must belong to this tier's scope.
    async fn department(&self, code: &str) -> Result<pb::Department, Error> {
        let engine = &self.0.engine;
        registry::department_by_code(engine.pool(), code)
            .await?
            .filter(|d| d.org_code.starts_with(engine.scope().prefix()))
            .ok_or_else(|| {
                Error::NotFound(format!("department {code} in scope {}", engine.scope()))
            })
    }

    /// A step whose note is a remark or, for `NoteKind::Reason`, the reason or result `kind`
    /// records.
    async fn act(
        &self,
        request: Request<pb::DepartmentActionRequest>,
        note_kind: NoteKind,
        kind: impl FnOnce(String, String) -> Kind,
    ) -> Result<Response<pb::Case>, Status> {
        let grant = authorize(caller(&request)?, Right::Handle, self.0.engine.tier())?;
        let DepartmentAction {
            action: request,
            department_code,
        } = DepartmentAction::parse(request.into_inner(), note_kind)?;
        grant.check_department(&department_code)?;
        let department = self.department(&department_code).await?;
        let kind = kind(department.code, request.note.as_str().to_owned());
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
impl pb::department_service_server::DepartmentService for Departments {
    async fn list_assigned(
        &self,
        request: Request<pb::ListAssignedRequest>,
    ) -> Result<Response<pb::ListAssignedResponse>, Status> {
        let grant = authorize(caller(&request)?, Right::Handle, self.0.engine.tier())?;
        let code = validate::code("department_code", &request.get_ref().department_code)?;
        grant.check_department(&code)?;
        let page = crate::worklist::Page::parse(
            request.get_ref().page_size,
            &request.get_ref().page_token,
        )?;
        let department = self.department(&code).await?;
        let engine = &self.0.engine;
        let filter = cases::Filter {
            states: vec![
                "dispatched".into(),
                "in_progress".into(),
                "delay_requested".into(),
                "hang_requested".into(),
                "hung".into(),
            ],
            grid_prefixes: vec![engine.scope().prefix().to_owned()],
            department: Some(department.code),
            ..Default::default()
        };
        // The order holds over all the department's open work, so all of it is read.
        let mut cases: Vec<pb::Case> = crate::worklist::read_all(engine.pool(), filter)
            .await?
            .into_iter()
            .map(|case| engine.with_clocks(case))
            .collect();
        by_urgency_then_time_left(&mut cases);
        let (cases, next_page_token) = page.cut(cases);
        Ok(Response::new(pb::ListAssignedResponse {
            cases,
            next_page_token,
        }))
    }

    async fn sign_case(
        &self,
        request: Request<pb::DepartmentActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, NoteKind::Remark, |department_code, _| {
            Kind::Signed(pb::Signed { department_code })
        })
        .await
    }

    async fn return_case(
        &self,
        request: Request<pb::DepartmentActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, NoteKind::Reason, |department_code, reason| {
            Kind::ReturnRequested(pb::ReturnRequested {
                department_code,
                reason,
            })
        })
        .await
    }

    async fn report_handled(
        &self,
        request: Request<pb::DepartmentActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, NoteKind::Reason, |department_code, result| {
            Kind::Handled(pb::Handled {
                department_code,
                result,
            })
        })
        .await
    }

    async fn request_delay(
        &self,
        request: Request<pb::DelayRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let grant = authorize(caller(&request)?, Right::Handle, self.0.engine.tier())?;
        let DelayAsk { action, extension } = DelayAsk::try_from(request.into_inner())?;
        let DepartmentAction {
            action,
            department_code,
        } = action;
        grant.check_department(&department_code)?;
        let department = self.department(&department_code).await?;
        let kind = Kind::DelayRequested(pb::DelayRequested {
            department_code: department.code,
            extension: Some(extension),
            reason: action.note.as_str().to_owned(),
        });
        let step = Action {
            actor: grant.actor(),
            note: action.note,
            attachments: action.attachments,
        };
        Ok(Response::new(
            self.0
                .engine
                .act(action.case_id, step, |case| {
                    grant.check_case(case)?;
                    Ok(kind)
                })
                .await?,
        ))
    }

    async fn request_hang(
        &self,
        request: Request<pb::DepartmentActionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        self.act(request, NoteKind::Reason, |department_code, reason| {
            Kind::HangRequested(pb::HangRequested {
                department_code,
                reason,
            })
        })
        .await
    }
}
