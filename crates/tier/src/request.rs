//! RPC requests as the handlers and the engine take them: parsed once at the edge from the wire
//! message, with the checks of [`crate::validate`]. A value of these types is a request that passed
//! every field check; what is left to refuse needs the database or the case's state.

use chrono::{DateTime, Utc};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;
use wangge_domain::Scope;
use wangge_proto as pb;

use crate::error::Error;
use crate::validate::{self, Attachments, MAX_DESCRIPTION_CHARS, MAX_NOTE_CHARS, Note};

/// A grid worker's report (`FieldAppService/ReportCase`).
#[derive(Debug, Clone)]
pub struct NewReport {
    pub(crate) client_id: String,
    pub(crate) category_code: String,
    pub(crate) description: String,
    pub(crate) location: pb::GeoPoint,
    /// As the app sent it; the engine fills in the time of receipt when absent.
    pub(crate) captured_at: Option<prost_types::Timestamp>,
    pub(crate) urgency: pb::Urgency,
    pub(crate) attachments: Attachments,
    pub(crate) self_handling: Option<pb::SelfHandling>,
}

impl NewReport {
    /// Parses a report field by field; `now` bounds its capture time.
    pub fn parse(request: pb::ReportCaseRequest, now: DateTime<Utc>) -> Result<NewReport, Error> {
        let client_id = validate::identifier("client_id", &request.client_id)?;
        let category_code = validate::code("category_code", &request.category_code)?;
        let description =
            validate::free_text("description", &request.description, MAX_DESCRIPTION_CHARS)?;
        let location = validate::location("location", request.location)?;
        let captured_at = match request.captured_at {
            Some(at) => {
                validate::timestamp("captured_at", &at, now)?;
                Some(at)
            }
            None => None,
        };
        let urgency = validate::urgency("urgency", request.urgency)?;
        let attachments = Attachments::parse("attachments", request.attachments)?;
        let self_handling = match request.self_handling {
            Some(handling) => Some(pb::SelfHandling {
                resolution: validate::free_text(
                    "self_handling.resolution",
                    &handling.resolution,
                    MAX_NOTE_CHARS,
                )?,
            }),
            None => None,
        };
        Ok(NewReport {
            client_id,
            category_code,
            description,
            location,
            captured_at,
            urgency,
            attachments,
            self_handling,
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn category_code(&self) -> &str {
        &self.category_code
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn urgency(&self) -> pb::Urgency {
        self.urgency
    }

    pub fn attachments(&self) -> &[pb::Attachment] {
        self.attachments.as_slice()
    }

    pub fn self_handling(&self) -> Option<&pb::SelfHandling> {
        self.self_handling.as_ref()
    }

    /// SHA-256 of the report as parsed (trimmed text, urgency defaulted), encoded as the wire
    /// message: the same report sent twice has the same digest, whatever whitespace the app added.
    pub fn digest(&self) -> [u8; 32] {
        let normalized = pb::ReportCaseRequest {
            client_id: self.client_id.clone(),
            category_code: self.category_code.clone(),
            description: self.description.clone(),
            location: Some(self.location),
            captured_at: self.captured_at,
            urgency: self.urgency as i32,
            attachments: self.attachments.as_slice().to_vec(),
            self_handling: self.self_handling.clone(),
        };
        // prost encodes fields in tag order and this message has no maps: the bytes are canonical.
        Sha256::digest(normalized.encode_to_vec()).into()
    }
}

/// Whether a step's note is a remark it may go without, or a reason (result) it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    Remark,
    Reason,
}

/// A step on a case: which case, the note and the attachments.
#[derive(Debug, Clone)]
pub struct CaseAction {
    pub case_id: Uuid,
    pub note: Note,
    pub attachments: Attachments,
}

impl CaseAction {
    fn parse(
        case_id: &str,
        note: &str,
        attachments: Vec<pb::Attachment>,
        kind: NoteKind,
    ) -> Result<CaseAction, Error> {
        let case_id = validate::case_id(case_id)?;
        let note = match kind {
            NoteKind::Remark => Note::optional("note", note)?,
            NoteKind::Reason => Note::required("note", note)?,
        };
        let attachments = Attachments::parse("attachments", attachments)?;
        Ok(CaseAction {
            case_id,
            note,
            attachments,
        })
    }

    /// `CommandConsoleService` steps (accept, reject, check, rework, close, escalate).
    pub fn console(request: pb::CaseActionRequest, kind: NoteKind) -> Result<CaseAction, Error> {
        CaseAction::parse(&request.case_id, &request.note, request.attachments, kind)
    }

    /// `CommunityService` reviews.
    pub fn review(request: pb::ReviewRequest, kind: NoteKind) -> Result<CaseAction, Error> {
        CaseAction::parse(&request.case_id, &request.note, Vec::new(), kind)
    }
}

/// `FieldAppService/ConfirmCheck`.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub action: CaseAction,
    pub passed: bool,
}

impl TryFrom<pb::ConfirmCheckRequest> for CheckResult {
    type Error = Error;

    fn try_from(request: pb::ConfirmCheckRequest) -> Result<CheckResult, Error> {
        Ok(CheckResult {
            action: CaseAction::parse(
                &request.case_id,
                &request.note,
                request.attachments,
                NoteKind::Remark,
            )?,
            passed: request.passed,
        })
    }
}

/// `FieldAppService/ConfirmVerification`.
#[derive(Debug, Clone)]
pub struct VerificationAnswer {
    pub action: CaseAction,
    pub genuine: bool,
}

impl TryFrom<pb::ConfirmVerificationRequest> for VerificationAnswer {
    type Error = Error;

    fn try_from(request: pb::ConfirmVerificationRequest) -> Result<VerificationAnswer, Error> {
        Ok(VerificationAnswer {
            action: CaseAction::parse(
                &request.case_id,
                &request.note,
                request.attachments,
                NoteKind::Remark,
            )?,
            genuine: request.genuine,
        })
    }
}

/// An approval or a denial (`CommandConsoleService/Decide*`): a denial needs its reason.
#[derive(Debug, Clone)]
pub struct Decision {
    pub action: CaseAction,
    pub approve: bool,
}

impl TryFrom<pb::DecisionRequest> for Decision {
    type Error = Error;

    fn try_from(request: pb::DecisionRequest) -> Result<Decision, Error> {
        let kind = if request.approve {
            NoteKind::Remark
        } else {
            NoteKind::Reason
        };
        Ok(Decision {
            action: CaseAction::parse(&request.case_id, &request.note, Vec::new(), kind)?,
            approve: request.approve,
        })
    }
}

/// `CommandConsoleService/MergeCase`.
#[derive(Debug, Clone)]
pub struct Merge {
    pub action: CaseAction,
    pub into: Uuid,
}

impl TryFrom<pb::MergeCaseRequest> for Merge {
    type Error = Error;

    fn try_from(request: pb::MergeCaseRequest) -> Result<Merge, Error> {
        let action = CaseAction::parse(
            &request.case_id,
            &request.note,
            Vec::new(),
            NoteKind::Remark,
        )?;
        let into = Uuid::parse_str(request.into_case_id.trim()).map_err(|_| {
            Error::invalid(
                "into_case_id",
                format!("{:?} is not a UUID", request.into_case_id),
            )
        })?;
        if into == action.case_id {
            return Err(Error::invalid(
                "into_case_id",
                "a case cannot be merged into itself",
            ));
        }
        Ok(Merge { action, into })
    }
}

/// `CommandConsoleService/SuperviseCase`: 督办 by hand.
#[derive(Debug, Clone)]
pub struct Supervision {
    pub action: CaseAction,
    pub level: pb::SupervisionLevel,
}

impl TryFrom<pb::SuperviseCaseRequest> for Supervision {
    type Error = Error;

    fn try_from(request: pb::SuperviseCaseRequest) -> Result<Supervision, Error> {
        let level = match pb::SupervisionLevel::try_from(request.level) {
            Ok(
                level @ (pb::SupervisionLevel::Normal
                | pb::SupervisionLevel::Yellow
                | pb::SupervisionLevel::Red),
            ) => level,
            _ => {
                return Err(Error::invalid(
                    "level",
                    format!(
                        "{} is not a supervision level: normal (2), yellow (3) or red (4)",
                        request.level
                    ),
                ));
            }
        };
        Ok(Supervision {
            action: CaseAction::parse(
                &request.case_id,
                &request.note,
                Vec::new(),
                NoteKind::Reason,
            )?,
            level,
        })
    }
}

/// Most of one unit an extension may ask for: more is a typing error, not a delay.
const MAX_EXTENSION: u32 = 10_000;

/// `DepartmentService/RequestDelay`.
#[derive(Debug, Clone)]
pub struct DelayAsk {
    pub action: DepartmentAction,
    pub extension: pb::TimeLimit,
}

impl TryFrom<pb::DelayRequest> for DelayAsk {
    type Error = Error;

    fn try_from(request: pb::DelayRequest) -> Result<DelayAsk, Error> {
        let extension = request
            .extension
            .ok_or_else(|| Error::invalid("extension", "is required"))?;
        if extension.amount == 0 || extension.amount > MAX_EXTENSION {
            return Err(Error::invalid(
                "extension.amount",
                format!("{} is not between 1 and {MAX_EXTENSION}", extension.amount),
            ));
        }
        if !matches!(
            pb::TimeUnit::try_from(extension.unit),
            Ok(pb::TimeUnit::Minutes
                | pb::TimeUnit::WorkingMinutes
                | pb::TimeUnit::WorkingHours
                | pb::TimeUnit::WorkingDays)
        ) {
            return Err(Error::invalid(
                "extension.unit",
                format!(
                    "{} is not a unit: minutes (1), working hours (2), working days (3) or \
                     working minutes (4)",
                    extension.unit
                ),
            ));
        }
        let action = DepartmentAction::parse(
            pb::DepartmentActionRequest {
                case_id: request.case_id,
                department_code: request.department_code,
                note: request.reason,
                attachments: Vec::new(),
            },
            NoteKind::Reason,
        )
        .map_err(|e| e.renamed("note", "reason"))?;
        Ok(DelayAsk { action, extension })
    }
}

/// `CommandConsoleService/DispatchCase`.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub case_id: Uuid,
    pub department_code: String,
    pub note: Note,
}

impl TryFrom<pb::DispatchCaseRequest> for Dispatch {
    type Error = Error;

    fn try_from(request: pb::DispatchCaseRequest) -> Result<Dispatch, Error> {
        Ok(Dispatch {
            case_id: validate::case_id(&request.case_id)?,
            department_code: validate::code("department_code", &request.department_code)?,
            note: Note::optional("note", &request.note)?,
        })
    }
}

/// `DepartmentService` steps (sign, return, handled).
#[derive(Debug, Clone)]
pub struct DepartmentAction {
    pub action: CaseAction,
    pub department_code: String,
}

impl DepartmentAction {
    pub fn parse(
        request: pb::DepartmentActionRequest,
        kind: NoteKind,
    ) -> Result<DepartmentAction, Error> {
        let department_code = validate::code("department_code", &request.department_code)?;
        Ok(DepartmentAction {
            action: CaseAction::parse(&request.case_id, &request.note, request.attachments, kind)?,
            department_code,
        })
    }
}

/// Most cases on one page of `ListCases`.
pub const MAX_PAGE: u32 = 500;
/// Cases on a page when the caller does not say.
pub const DEFAULT_PAGE: u32 = 100;

/// `CaseQueryService/ListCases`.
#[derive(Debug, Clone)]
pub struct CaseListing {
    pub states: Vec<pb::CaseState>,
    /// A grid code prefix inside the scope.
    pub prefix: String,
    pub owned_only: bool,
    /// 1 to [`MAX_PAGE`].
    pub page_size: u32,
    /// The last case of the previous page.
    pub after: Option<Uuid>,
}

impl CaseListing {
    pub fn parse(request: pb::ListCasesRequest, scope: &Scope) -> Result<CaseListing, Error> {
        let after =
            match request.page_token.trim() {
                "" => None,
                token => Some(Uuid::parse_str(token).map_err(|_| {
                    Error::invalid("page_token", "not a token from a previous page")
                })?),
            };
        Ok(CaseListing {
            states: validate::states("states", &request.states)?,
            prefix: validate::prefix_in_scope(scope, "org_code", &request.org_code)?,
            owned_only: request.owned_only,
            page_size: match request.page_size {
                0 => DEFAULT_PAGE,
                n => n.min(MAX_PAGE),
            },
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn valid_report() -> pb::ReportCaseRequest {
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

    fn field_of<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
        match result {
            Err(Error::InvalidArgument { field, .. }) => field.into_owned(),
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    fn report_field(change: impl FnOnce(&mut pb::ReportCaseRequest)) -> String {
        let mut request = valid_report();
        change(&mut request);
        field_of(NewReport::parse(request, Utc::now()))
    }

    #[test]
    fn a_valid_report_parses_with_normal_urgency() {
        let report = NewReport::parse(valid_report(), Utc::now()).unwrap();
        assert_eq!(report.urgency(), pb::Urgency::Normal);
    }

    #[test]
    fn each_bad_report_field_is_named() {
        assert_eq!(report_field(|r| r.client_id = "".into()), "client_id");
        assert_eq!(report_field(|r| r.client_id = "a b".into()), "client_id");
        assert_eq!(
            report_field(|r| r.category_code = " ".into()),
            "category_code"
        );
        assert_eq!(report_field(|r| r.description = "".into()), "description");
        assert_eq!(
            report_field(|r| r.description = "\u{200B}\u{FEFF}".into()),
            "description"
        );
        assert_eq!(
            report_field(|r| r.description = "a\u{0}b".into()),
            "description"
        );
        assert_eq!(report_field(|r| r.location = None), "location");
        assert_eq!(
            report_field(|r| r.location = Some(pb::GeoPoint {
                longitude: 500.0,
                latitude: 24.5
            })),
            "location"
        );
        assert_eq!(
            report_field(|r| r.location = Some(pb::GeoPoint {
                longitude: f64::NAN,
                latitude: 24.5
            })),
            "location"
        );
        assert_eq!(report_field(|r| r.urgency = 99), "urgency");
        let future = prost_types::Timestamp {
            seconds: Utc::now().timestamp() + 3600,
            nanos: 0,
        };
        assert_eq!(
            report_field(|r| r.captured_at = Some(future)),
            "captured_at"
        );
        let ancient = prost_types::Timestamp {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(
            report_field(|r| r.captured_at = Some(ancient)),
            "captured_at"
        );
        assert_eq!(
            report_field(|r| r.self_handling = Some(pb::SelfHandling {
                resolution: "\u{200B}".into()
            })),
            "self_handling.resolution"
        );
        assert_eq!(
            report_field(|r| r.attachments = vec![pb::Attachment {
                id: "../etc/passwd".into(),
                ..Default::default()
            }]),
            "attachments[0].id"
        );
    }

    #[test]
    fn the_digest_ignores_what_parsing_normalizes_and_sees_the_rest() {
        let digest = |change: fn(&mut pb::ReportCaseRequest)| {
            let mut request = valid_report();
            change(&mut request);
            NewReport::parse(request, Utc::now()).unwrap().digest()
        };
        let plain = digest(|_| {});
        assert_eq!(
            digest(|r| r.description = " 暴露垃圾\u{200B}\n".into()),
            plain
        );
        assert_eq!(digest(|r| r.urgency = pb::Urgency::Normal as i32), plain);
        assert_ne!(digest(|r| r.description = "另一处垃圾".into()), plain);
        assert_ne!(digest(|r| r.urgency = pb::Urgency::Urgent as i32), plain);
    }

    #[test]
    fn reasons_are_required_where_the_step_needs_one() {
        let request = |note: &str| pb::CaseActionRequest {
            case_id: Uuid::now_v7().to_string(),
            note: note.into(),
            attachments: Vec::new(),
        };
        assert!(CaseAction::console(request(""), NoteKind::Remark).is_ok());
        assert_eq!(
            field_of(CaseAction::console(request(" \u{200B}"), NoteKind::Reason)),
            "note"
        );
        let action = CaseAction::console(request(" 不属于本区 "), NoteKind::Reason).unwrap();
        assert_eq!(action.note.as_str(), "不属于本区");
    }

    #[test]
    fn listings_stay_inside_the_scope_and_pages_are_bounded() {
        let scope: Scope = "350205002".parse().unwrap();
        let listing = CaseListing::parse(
            pb::ListCasesRequest {
                page_size: 100_000,
                ..Default::default()
            },
            &scope,
        )
        .unwrap();
        assert_eq!(
            (listing.page_size, listing.prefix.as_str()),
            (MAX_PAGE, "350205002")
        );
        let bad_token = pb::ListCasesRequest {
            page_token: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            field_of(CaseListing::parse(bad_token, &scope)),
            "page_token"
        );
    }
}
