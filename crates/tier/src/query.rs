//! The services every tier answers from its own replica: case queries and the registry.

use tonic::{Request, Response, Status};
use uuid::Uuid;
use wangge_domain::case::{state_name, tier_name};
use wangge_domain::{OrgCode, Scope};
use wangge_proto as pb;
use wangge_store::{cases, registry};

use crate::engine::parse_case_id;
use crate::{Error, Shared};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;

/// `wangge.v1.CaseQueryService`.
#[derive(Debug, Clone)]
pub struct Cases(pub Shared);

/// An org code prefix inside the scope: empty means the whole scope.
pub fn prefix_in_scope(scope: &Scope, field: &'static str, code: &str) -> Result<String, Error> {
    let code = code.trim();
    if code.is_empty() {
        return Ok(scope.prefix().to_owned());
    }
    if !code.bytes().all(|b| b.is_ascii_digit()) || code.len() > 15 {
        return Err(Error::invalid(
            field,
            format!("{code:?} is not an org or grid code"),
        ));
    }
    // A full 12-digit org code stands for its significant prefix.
    let prefix = match code.parse::<OrgCode>() {
        Ok(org) => org.prefix().to_owned(),
        Err(_) => code.to_owned(),
    };
    if prefix.starts_with(scope.prefix()) {
        Ok(prefix)
    } else if scope.prefix().starts_with(&prefix) {
        // A wider area than the scope: its part in the scope.
        Ok(scope.prefix().to_owned())
    } else {
        Err(Error::invalid(
            field,
            format!("{code} is outside scope {scope}"),
        ))
    }
}

/// Database state names of proto states, refusing unknown numbers.
pub fn state_names(states: &[i32]) -> Result<Vec<String>, Error> {
    states
        .iter()
        .map(|&s| match pb::CaseState::try_from(s) {
            Ok(pb::CaseState::Unspecified) | Err(_) => {
                Err(Error::invalid("states", format!("unknown state {s}")))
            }
            Ok(state) => Ok(state_name(state).to_owned()),
        })
        .collect()
}

#[tonic::async_trait]
impl pb::case_query_service_server::CaseQueryService for Cases {
    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let id = parse_case_id(&request.get_ref().case_id)?;
        Ok(Response::new(self.0.engine.case(id).await?))
    }

    async fn list_case_events(
        &self,
        request: Request<pb::ListCaseEventsRequest>,
    ) -> Result<Response<pb::ListCaseEventsResponse>, Status> {
        let id = parse_case_id(&request.get_ref().case_id)?;
        // Scope check first: a case outside the scope does not exist here.
        self.0.engine.case(id).await?;
        let events = cases::events(self.0.engine.pool(), id)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListCaseEventsResponse { events }))
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let request = request.into_inner();
        let engine = &self.0.engine;
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after =
            match request.page_token.as_str() {
                "" => None,
                token => Some(Uuid::parse_str(token).map_err(|_| {
                    Error::invalid("page_token", "not a token from a previous page")
                })?),
            };
        let filter = cases::Filter {
            states: state_names(&request.states)?,
            grid_prefix: prefix_in_scope(engine.scope(), "org_code", &request.org_code)?,
            owner_tier: request
                .owned_only
                .then(|| tier_name(engine.tier()).to_owned()),
            after,
            limit: i64::from(limit) + 1,
            ..Default::default()
        };
        let mut cases = cases::list(engine.pool(), &filter)
            .await
            .map_err(Error::from)?;
        let next_page_token = if cases.len() > limit as usize {
            cases.truncate(limit as usize);
            cases.last().map(|c| c.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListCasesResponse {
            cases,
            next_page_token,
        }))
    }
}

/// `wangge.v1.RegistryService`.
#[derive(Debug, Clone)]
pub struct Registry(pub Shared);

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for Registry {
    async fn get_org(
        &self,
        request: Request<pb::GetOrgRequest>,
    ) -> Result<Response<pb::Org>, Status> {
        let code = request.get_ref().code.trim();
        code.parse::<OrgCode>()
            .map_err(|e| Error::invalid("code", e.to_string()))?;
        let org = registry::org_by_code(self.0.engine.pool(), code)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::NotFound(format!("org {code}")))?;
        Ok(Response::new(org))
    }

    async fn list_orgs(
        &self,
        request: Request<pb::ListOrgsRequest>,
    ) -> Result<Response<pb::ListOrgsResponse>, Status> {
        let parent = request.get_ref().parent_code.trim();
        let pool = self.0.engine.pool();
        let orgs = if parent.is_empty() {
            let top = self.0.engine.scope().org().to_string();
            registry::org_by_code(pool, &top)
                .await
                .map_err(Error::from)?
                .into_iter()
                .collect()
        } else {
            parent
                .parse::<OrgCode>()
                .map_err(|e| Error::invalid("parent_code", e.to_string()))?;
            registry::children(pool, parent)
                .await
                .map_err(Error::from)?
        };
        Ok(Response::new(pb::ListOrgsResponse { orgs }))
    }

    async fn list_grids(
        &self,
        request: Request<pb::ListGridsRequest>,
    ) -> Result<Response<pb::ListGridsResponse>, Status> {
        let prefix = prefix_in_scope(
            self.0.engine.scope(),
            "org_code",
            &request.get_ref().org_code,
        )?;
        let rows = registry::grids(self.0.engine.pool(), &prefix)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListGridsResponse {
            grids: rows.into_iter().map(|r| r.grid).collect(),
        }))
    }

    async fn locate_grid(
        &self,
        request: Request<pb::LocateGridRequest>,
    ) -> Result<Response<pb::Grid>, Status> {
        let point = request
            .get_ref()
            .location
            .ok_or_else(|| Error::invalid("location", "required"))?;
        let engine = &self.0.engine;
        let code = engine
            .grids()
            .locate(point.longitude, point.latitude)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "grid at ({}, {}) in scope {}",
                    point.longitude,
                    point.latitude,
                    engine.scope()
                ))
            })?;
        let rows = registry::grids(engine.pool(), code.as_str())
            .await
            .map_err(Error::from)?;
        let grid = rows
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound(format!("grid {code}")))?;
        Ok(Response::new(grid.grid))
    }

    async fn list_categories(
        &self,
        request: Request<pb::ListCategoriesRequest>,
    ) -> Result<Response<pb::ListCategoriesResponse>, Status> {
        let scheme = Some(request.get_ref().scheme.trim()).filter(|s| !s.is_empty());
        let categories = registry::categories(self.0.engine.pool(), scheme)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListCategoriesResponse { categories }))
    }

    async fn list_departments(
        &self,
        request: Request<pb::ListDepartmentsRequest>,
    ) -> Result<Response<pb::ListDepartmentsResponse>, Status> {
        let prefix = prefix_in_scope(
            self.0.engine.scope(),
            "org_code",
            &request.get_ref().org_code,
        )?;
        let departments = registry::departments(self.0.engine.pool(), &prefix)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListDepartmentsResponse { departments }))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let prefix = prefix_in_scope(
            self.0.engine.scope(),
            "org_code",
            &request.get_ref().org_code,
        )?;
        let workers = registry::workers(self.0.engine.pool(), &prefix)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn get_scope(
        &self,
        _request: Request<pb::GetScopeRequest>,
    ) -> Result<Response<pb::Scope>, Status> {
        let engine = &self.0.engine;
        let org = registry::org_by_code(engine.pool(), engine.scope().org().as_str())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::Scope {
            tier: engine.tier() as i32,
            org_prefix: engine.scope().prefix().to_owned(),
            org,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_kept_inside_the_scope() {
        let scope: Scope = "350205002".parse().unwrap();
        assert_eq!(prefix_in_scope(&scope, "f", "").unwrap(), "350205002");
        assert_eq!(
            prefix_in_scope(&scope, "f", "350205002006").unwrap(),
            "350205002006"
        );
        assert_eq!(
            prefix_in_scope(&scope, "f", "350205002006001").unwrap(),
            "350205002006001"
        );
        assert_eq!(
            prefix_in_scope(&scope, "f", "350205000000").unwrap(),
            "350205002"
        );
        assert!(prefix_in_scope(&scope, "f", "350203001000").is_err());
        assert!(prefix_in_scope(&scope, "f", "abc").is_err());
    }
}
