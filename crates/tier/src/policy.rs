//! Authority by the org tree: what a verified caller may do, and where. The one place that decides;
//! every handler asks it before it acts or reads, and a refusal (PERMISSION_DENIED) changes nothing.
//!
//! A right is granted by roles ([`roles_for`]) and applies inside the caller's org scopes: a grid
//! worker's grids, a community's, a street's or a district's grids, or, for a department handler,
//! the cases dispatched to their departments. The command-center rights (accept, dispatch, close,
//! void) also need the scope to be the center's own level: a street operator acts at the street
//! center, a district operator at the district's.
//!
//! Personal data of residents (unmasking, audited reads) comes with the resident registries: it
//! will be one more right here, asked for by the handlers that return such data.

use tonic::Request;
use wangge_auth::{Caller, Level, OrgScope, role_name};
use wangge_proto as pb;

use crate::Error;

/// One thing a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// 上报: report a case from the field.
    Report,
    /// The field app's tasks (on-site checks) of the caller's grids.
    ReadTasks,
    /// 核查: confirm an on-site check.
    ConfirmCheck,
    /// 自处置审核: approve or reject a community's own handling.
    ReviewSelfHandled,
    /// 受理: accept a case, ask for a check, send it back for rework, escalate it.
    Accept,
    /// 派遣: dispatch to a department; 交办: hand a case down to a lower tier's center.
    Dispatch,
    /// 结案: close a case.
    Close,
    /// 不予受理: reject a report.
    Void,
    /// 审批: decide a void, a return, a first standard extension; reopen or archive a case.
    Approve,
    /// 领导审批: decide hanging a case, a second extension request or a longer one.
    Lead,
    /// 签收/回退/处置: a department's steps on a case dispatched to it.
    Handle,
    /// 督办: supervise deadlines (the command clock).
    Supervise,
    /// Read cases, their history and the people of the registry.
    Read,
    /// 综合评价: the assessment figures of an org's workers, centers, departments and areas.
    Evaluate,
    /// Org tree, grids, categories, departments: what every client needs to draw its forms.
    Reference,
    /// Status and operations of the tier itself.
    Admin,
}

/// The roles that hold a right, the least senior first: a caller holding several of them acts in
/// the first (see [`authorize`]) unless the step needs a more senior one ([`Grant::in_role_of`]).
pub fn roles_for(right: Right) -> &'static [pb::Role] {
    use pb::Role::*;
    match right {
        Right::Report | Right::ReadTasks | Right::ConfirmCheck => &[GridWorker],
        Right::ReviewSelfHandled => &[CommunityStaff],
        Right::Accept | Right::Dispatch => &[StreetOperator, DistrictOperator, DutyChief],
        Right::Close | Right::Void => &[DutyChief],
        Right::Approve => &[DutyChief, Leader],
        Right::Lead => &[Leader],
        Right::Handle => &[DepartmentHandler],
        Right::Supervise => &[Supervisor, DutyChief, Leader],
        Right::Read => &[
            GridWorker,
            CommunityStaff,
            StreetOperator,
            DutyChief,
            DistrictOperator,
            DepartmentHandler,
            Supervisor,
            Auditor,
            Leader,
        ],
        Right::Evaluate => &[
            StreetOperator,
            DutyChief,
            DistrictOperator,
            Supervisor,
            Auditor,
            Leader,
        ],
        // Every role a token may carry.
        Right::Reference => &wangge_auth::ROLES,
        Right::Admin => &[Admin],
    }
}

fn describe(right: Right) -> &'static str {
    match right {
        Right::Report => "reporting a case",
        Right::ReadTasks => "reading field tasks",
        Right::ConfirmCheck => "confirming a check",
        Right::ReviewSelfHandled => "reviewing a community's own handling",
        Right::Accept => "this console step",
        Right::Dispatch => "dispatching",
        Right::Close => "closing a case",
        Right::Void => "rejecting a report",
        Right::Approve => "this decision",
        Right::Lead => "a leader's decision",
        Right::Handle => "a department step",
        Right::Supervise => "supervising",
        Right::Read => "reading cases",
        Right::Evaluate => "evaluating",
        Right::Reference => "reading the registry",
        Right::Admin => "operating the tier",
    }
}

/// The org level a command center's rights need at `tier`.
fn center_level(right: Right, tier: pb::Tier) -> Option<Level> {
    match right {
        Right::Accept
        | Right::Dispatch
        | Right::Close
        | Right::Void
        | Right::Approve
        | Right::Lead => Some(match tier {
            pb::Tier::District => Level::District,
            _ => Level::Street,
        }),
        _ => None,
    }
}

/// The verified caller of a request (put there by the authentication interceptor).
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, Error> {
    request.extensions().get::<Caller>().ok_or_else(|| {
        // Every service but health and reflection sits behind the interceptor: a bug if not.
        Error::Internal("a call reached a handler without a verified caller".into())
    })
}

/// 延期审批: the roles that may decide the extension `case` asks for, the least senior first. The
/// duty chief decides a first request within the category's standard extension; a second request
/// (the first one granted or not) or one longer than the standard (`longer_than_standard`, also
/// where the category has none) needs the center's leader.
pub fn delay_deciders(case: &pb::Case, longer_than_standard: bool) -> &'static [pb::Role] {
    if case.delay_requests > 1 || longer_than_standard {
        roles_for(Right::Lead)
    } else {
        roles_for(Right::Approve)
    }
}

/// What a caller was granted for one call: the role it acts in and where.
#[derive(Debug, Clone)]
pub struct Grant {
    subject: String,
    role: pb::Role,
    /// Every role of the caller that holds `right`, in the order of [`roles_for`].
    roles: Vec<pb::Role>,
    right: Right,
    /// The grid-code prefixes the right applies in (empty for department handlers).
    scopes: Vec<OrgScope>,
    departments: Vec<String>,
}

/// Grants `right` at `tier` to `caller`, or says why not.
pub fn authorize(caller: &Caller, right: Right, tier: pb::Tier) -> Result<Grant, Error> {
    let roles = roles_for(right);
    // In the order of the right's roles, not of the token's: a caller holding several acts in the
    // least senior, whatever order its identity provider listed them in.
    let holding: Vec<pb::Role> = roles
        .iter()
        .copied()
        .filter(|r| caller.roles.contains(r))
        .collect();
    let Some(&role) = holding.first() else {
        let names: Vec<&str> = roles.iter().map(|&r| role_name(r)).collect();
        return Err(Error::PermissionDenied(format!(
            "{} needs the role {}; {} holds {}",
            describe(right),
            names.join(" or "),
            caller.subject,
            held(caller)
        )));
    };
    let level = center_level(right, tier);
    let scopes: Vec<OrgScope> = caller
        .orgs
        .iter()
        .filter(|o| level.is_none_or(|l| o.level() == l))
        .cloned()
        .collect();
    let departments = if holding.contains(&pb::Role::DepartmentHandler) {
        caller.departments.clone()
    } else {
        Vec::new()
    };
    if scopes.is_empty() && departments.is_empty() && right != Right::Reference {
        return Err(Error::PermissionDenied(match level {
            Some(level) => format!(
                "{} at this center needs a scope at its level ({level:?}); {} has {}",
                describe(right),
                caller.subject,
                orgs(caller)
            ),
            None => format!("{} has no org scope or department", caller.subject),
        }));
    }
    Ok(Grant {
        subject: caller.subject.clone(),
        role,
        roles: holding,
        right,
        scopes,
        departments,
    })
}

fn held(caller: &Caller) -> String {
    let names: Vec<&str> = caller.roles.iter().map(|&r| role_name(r)).collect();
    names.join(", ")
}

fn orgs(caller: &Caller) -> String {
    if caller.orgs.is_empty() {
        return "no org".into();
    }
    let codes: Vec<&str> = caller.orgs.iter().map(OrgScope::prefix).collect();
    codes.join(", ")
}

impl Grant {
    /// Who acts, as the history records it: the verified subject in the granting role.
    pub fn actor(&self) -> pb::Actor {
        pb::Actor {
            id: self.subject.clone(),
            role: self.role as i32,
        }
    }

    pub fn role(&self) -> pb::Role {
        self.role
    }

    /// The grant acting in the first of `roles` the caller holds: what a step whose role depends
    /// on the case (an extension that needs the leader) asks for on the case as locked. The
    /// history then records the role the step needed.
    pub fn in_role_of(&self, roles: &[pb::Role]) -> Result<Grant, Error> {
        let Some(&role) = roles.iter().find(|r| self.roles.contains(r)) else {
            let names: Vec<&str> = roles.iter().map(|&r| role_name(r)).collect();
            let held: Vec<&str> = self.roles.iter().map(|&r| role_name(r)).collect();
            return Err(Error::PermissionDenied(format!(
                "{} needs the role {} here; {} acts as {}",
                describe(self.right),
                names.join(" or "),
                self.subject,
                held.join(", ")
            )));
        };
        Ok(Grant {
            role,
            ..self.clone()
        })
    }

    fn outside(&self, what: String) -> Error {
        let mut within: Vec<&str> = self.scopes.iter().map(OrgScope::prefix).collect();
        within.extend(self.departments.iter().map(String::as_str));
        Error::PermissionDenied(format!(
            "{what} lies outside the scope of {} ({}) for {}",
            self.subject,
            within.join(", "),
            describe(self.right)
        ))
    }

    /// Whether the grid `code` lies in the caller's scopes.
    pub fn covers_grid(&self, code: &str) -> bool {
        self.scopes.iter().any(|s| s.covers(code))
    }

    /// The caller may act on (or read) `case`: its grid is in scope, or, for a department
    /// handler, it is dispatched to one of their departments.
    pub fn check_case(&self, case: &pb::Case) -> Result<(), Error> {
        let by_department =
            !case.department_code.is_empty() && self.departments.contains(&case.department_code);
        if self.covers_grid(&case.grid_code) || by_department {
            Ok(())
        } else {
            Err(self.outside(format!("case {}", case.id)))
        }
    }

    pub fn check_grid(&self, code: &str) -> Result<(), Error> {
        if self.covers_grid(code) {
            Ok(())
        } else {
            Err(self.outside(format!("grid {code}")))
        }
    }

    /// A department the caller acts for.
    pub fn check_department(&self, code: &str) -> Result<(), Error> {
        if self.departments.iter().any(|d| d == code) {
            Ok(())
        } else {
            Err(self.outside(format!("department {code}")))
        }
    }

    /// The caller's scopes cover the whole org (or prefix) `code`.
    pub fn check_whole(&self, code: &str) -> Result<(), Error> {
        if self.scopes.iter().any(|s| code.starts_with(s.prefix())) {
            Ok(())
        } else {
            Err(self.outside(format!("org {code}")))
        }
    }

    /// The part of `requested` (a prefix already inside the tier's scope) the caller may see: the
    /// prefix itself where a scope covers it, the caller's narrower scopes inside it otherwise.
    pub fn narrow(&self, requested: &str) -> Result<Vec<String>, Error> {
        let mut prefixes: Vec<String> = Vec::new();
        for scope in &self.scopes {
            let p = scope.prefix();
            let part = if requested.starts_with(p) {
                requested
            } else if p.starts_with(requested) {
                p
            } else {
                continue;
            };
            if !prefixes.iter().any(|q| part.starts_with(q.as_str())) {
                prefixes.retain(|q| !q.starts_with(part));
                prefixes.push(part.to_owned());
            }
        }
        if prefixes.is_empty() {
            return Err(self.outside(format!("org {requested}")));
        }
        Ok(prefixes)
    }

    /// The departments of a department handler (empty for the other roles).
    pub fn departments(&self) -> &[String] {
        &self.departments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[pb::Role], orgs: &[&str], departments: &[&str]) -> Caller {
        Caller {
            subject: "someone".into(),
            roles: roles.to_vec(),
            orgs: orgs.iter().map(|o| o.parse().unwrap()).collect(),
            departments: departments.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn denied<T: std::fmt::Debug>(result: Result<T, Error>) -> bool {
        matches!(result, Err(Error::PermissionDenied(_)))
    }

    #[test]
    fn rights_follow_roles_and_center_rights_need_the_center_level() {
        let operator = caller(&[pb::Role::StreetOperator], &["350205002"], &[]);
        assert!(authorize(&operator, Right::Accept, pb::Tier::Street).is_ok());
        assert!(denied(authorize(
            &operator,
            Right::Accept,
            pb::Tier::District
        )));
        assert!(denied(authorize(&operator, Right::Close, pb::Tier::Street)));
        assert!(denied(authorize(
            &operator,
            Right::Report,
            pb::Tier::Village
        )));
        let chief = caller(&[pb::Role::DutyChief], &["350205"], &[]);
        assert!(authorize(&chief, Right::Close, pb::Tier::District).is_ok());
        assert!(denied(authorize(&chief, Right::Close, pb::Tier::Street)));
        let admin = caller(&[pb::Role::Admin], &["350205"], &[]);
        assert!(denied(authorize(&admin, Right::Read, pb::Tier::Street)));
        assert!(authorize(&admin, Right::Admin, pb::Tier::Street).is_ok());
    }

    #[test]
    fn scopes_narrow_what_a_caller_sees() {
        let worker = caller(
            &[pb::Role::GridWorker],
            &["350205002006001", "350205002006002"],
            &[],
        );
        let grant = authorize(&worker, Right::Read, pb::Tier::Village).unwrap();
        assert_eq!(
            grant.narrow("350205002006").unwrap(),
            vec!["350205002006001", "350205002006002"]
        );
        assert_eq!(
            grant.narrow("350205002006001").unwrap(),
            vec!["350205002006001"]
        );
        assert!(denied(grant.narrow("350205002007")));
        assert!(grant.check_grid("350205002006002").is_ok());
        assert!(denied(grant.check_grid("350205002006003")));
    }

    #[test]
    fn a_caller_with_several_roles_acts_in_the_one_the_step_needs() {
        // The token lists the duty chief first; the order must not matter.
        let both = caller(
            &[pb::Role::DutyChief, pb::Role::Leader],
            &["350205002"],
            &[],
        );
        let grant = authorize(&both, Right::Approve, pb::Tier::Street).unwrap();
        assert_eq!(
            grant.role(),
            pb::Role::DutyChief,
            "the least senior that suffices"
        );
        let leader = grant.in_role_of(roles_for(Right::Lead)).unwrap();
        assert_eq!(leader.actor().role(), pb::Role::Leader);
        let reversed = caller(
            &[pb::Role::Leader, pb::Role::DutyChief],
            &["350205002"],
            &[],
        );
        let grant = authorize(&reversed, Right::Approve, pb::Tier::Street).unwrap();
        assert_eq!(grant.role(), pb::Role::DutyChief);
        // A duty chief alone is refused what needs the leader; a leader alone may decide what a
        // duty chief may.
        let chief = caller(&[pb::Role::DutyChief], &["350205002"], &[]);
        let grant = authorize(&chief, Right::Approve, pb::Tier::Street).unwrap();
        assert!(denied(grant.in_role_of(roles_for(Right::Lead))));
        let leader = caller(&[pb::Role::Leader], &["350205002"], &[]);
        let grant = authorize(&leader, Right::Approve, pb::Tier::Street).unwrap();
        let acting = grant.in_role_of(roles_for(Right::Approve)).unwrap();
        assert_eq!(acting.role(), pb::Role::Leader);
    }

    #[test]
    fn a_second_delay_request_or_a_longer_one_needs_the_leader() {
        use wangge_domain::clock::{Limit, LimitUnit};
        let day = chrono::Duration::hours(7);
        let four_hours = Limit {
            amount: 4,
            unit: LimitUnit::WorkingHours,
        };
        let asking = |amount: u32, unit: pb::TimeUnit, requests: u32| pb::Case {
            requested_extension: Some(pb::TimeLimit {
                amount,
                unit: unit as i32,
            }),
            delay_requests: requests,
            ..Default::default()
        };
        let chief_or_leader = roles_for(Right::Approve);
        let leader = roles_for(Right::Lead);
        let longer = |case: &pb::Case, standard| {
            crate::console::extension_longer_than_standard(case, standard, day)
        };
        // A first request within the standard: the duty chief.
        let first = asking(4, pb::TimeUnit::WorkingHours, 1);
        assert!(!longer(&first, Some(four_hours)));
        assert_eq!(
            delay_deciders(&first, longer(&first, Some(four_hours))),
            chief_or_leader
        );
        // Longer than the standard (a working day is 7 working hours here), or no standard.
        let long = asking(1, pb::TimeUnit::WorkingDays, 1);
        assert!(longer(&long, Some(four_hours)));
        assert_eq!(delay_deciders(&long, true), leader);
        assert!(longer(&first, None));
        // The second request, whatever became of the first (denied: nothing was extended).
        let second = asking(1, pb::TimeUnit::WorkingHours, 2);
        assert!(second.extensions.is_empty());
        assert_eq!(
            delay_deciders(&second, longer(&second, Some(four_hours))),
            leader
        );
    }

    #[test]
    fn a_handler_acts_on_the_cases_of_their_departments_only() {
        let handler = caller(&[pb::Role::DepartmentHandler], &[], &["350205002-cgzd"]);
        let grant = authorize(&handler, Right::Handle, pb::Tier::Street).unwrap();
        let mut case = pb::Case {
            grid_code: "350205002006001".into(),
            department_code: "350205002-cgzd".into(),
            ..Default::default()
        };
        assert!(grant.check_case(&case).is_ok());
        case.department_code = "350205002-sz".into();
        assert!(denied(grant.check_case(&case)));
        assert!(denied(grant.check_department("350205002-sz")));
    }
}
