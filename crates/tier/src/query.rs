//! The services every tier answers from its own replica: case queries and the registry.

use std::collections::HashSet;

use tonic::{Request, Response, Status};
use uuid::Uuid;
use wangge_domain::case::{state_name, tier_name};
use wangge_proto as pb;
use wangge_store::{cases, registry};

use crate::policy::{Grant, Right, authorize, caller};
use crate::request::CaseListing;
use crate::validate::{self, prefix_in_scope};
use crate::{Error, Shared};

/// `wangge.v1.CaseQueryService`.
#[derive(Debug, Clone)]
pub struct Cases(pub Shared);

/// The caller's grant of `right` at this tier.
fn grant<T>(shared: &Shared, request: &Request<T>, right: Right) -> Result<Grant, Error> {
    authorize(caller(request)?, right, shared.engine.tier())
}

/// How many merged cases [`may_read`] looks through for the caller's report, at most: a chain
/// of merges is short in practice, and a read must not walk an unbounded graph.
const MERGED_LOOKUPS: usize = 64;

/// The caller may read `case` and its history: it lies in their scope, or they reported it or a
/// case merged into it, directly or through a chain of merges (A into B, B into C: A's reporter
/// follows C). A reporter stays linked to the outcome of what they reported, wherever they are
/// scoped now.
async fn may_read(shared: &Shared, grant: &Grant, case: &pb::Case) -> Result<(), Error> {
    let Err(refused) = grant.check_case(case) else {
        return Ok(());
    };
    let me = grant.actor().id;
    let reported_by_me = |c: &pb::Case| c.reporter.as_ref().is_some_and(|r| r.id == me);
    if reported_by_me(case) {
        return Ok(());
    }
    let mut seen: HashSet<String> = HashSet::from([case.id.clone()]);
    let mut next: Vec<pb::MergedCase> = case.merged.clone();
    while let Some(merged) = next.pop() {
        if merged.reporter.as_ref().is_some_and(|r| r.id == me) {
            return Ok(());
        }
        if seen.len() > MERGED_LOOKUPS || !seen.insert(merged.case_id.clone()) {
            continue;
        }
        // Cases merged into the merged one follow it too.
        let Ok(id) = Uuid::parse_str(&merged.case_id) else {
            continue;
        };
        match shared.engine.case(id).await {
            Ok(earlier) => next.extend(earlier.merged),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Err(refused)
}

/// Database state names of parsed states.
pub fn state_names(states: &[pb::CaseState]) -> Vec<String> {
    states.iter().map(|&s| state_name(s).to_owned()).collect()
}

#[tonic::async_trait]
impl pb::case_query_service_server::CaseQueryService for Cases {
    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let grant = grant(&self.0, &request, Right::Read)?;
        let id = validate::case_id(&request.get_ref().case_id)?;
        let case = self.0.engine.case(id).await?;
        may_read(&self.0, &grant, &case).await?;
        Ok(Response::new(self.0.engine.with_clocks(case)))
    }

    async fn list_case_events(
        &self,
        request: Request<pb::ListCaseEventsRequest>,
    ) -> Result<Response<pb::ListCaseEventsResponse>, Status> {
        let grant = grant(&self.0, &request, Right::Read)?;
        let id = validate::case_id(&request.get_ref().case_id)?;
        // Scope checks first: a case outside the tier's scope does not exist here, one outside
        // the caller's is not theirs to read (unless they follow it as a reporter).
        may_read(&self.0, &grant, &self.0.engine.case(id).await?).await?;
        let events = cases::events(self.0.engine.pool(), id)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListCaseEventsResponse { events }))
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let grant = grant(&self.0, &request, Right::Read)?;
        let engine = &self.0.engine;
        let listing = CaseListing::parse(request.into_inner(), engine.scope())?;
        let limit = listing.page_size;
        let filter = cases::Filter {
            states: state_names(&listing.states),
            grid_prefixes: grant.narrow(&listing.prefix)?,
            owner_tier: listing
                .owned_only
                .then(|| tier_name(engine.tier()).to_owned()),
            after: listing.after,
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
        let cases = cases
            .into_iter()
            .map(|case| engine.with_clocks(case))
            .collect();
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
        grant(&self.0, &request, Right::Reference)?;
        let code = validate::org_code("code", &request.get_ref().code)?;
        let org = registry::org_by_code(self.0.engine.pool(), code.as_str())
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::NotFound(format!("org {code}")))?;
        Ok(Response::new(org))
    }

    async fn list_orgs(
        &self,
        request: Request<pb::ListOrgsRequest>,
    ) -> Result<Response<pb::ListOrgsResponse>, Status> {
        grant(&self.0, &request, Right::Reference)?;
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
            let parent = validate::org_code("parent_code", parent)?;
            registry::children(pool, parent.as_str())
                .await
                .map_err(Error::from)?
        };
        Ok(Response::new(pb::ListOrgsResponse { orgs }))
    }

    async fn list_grids(
        &self,
        request: Request<pb::ListGridsRequest>,
    ) -> Result<Response<pb::ListGridsResponse>, Status> {
        grant(&self.0, &request, Right::Reference)?;
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
        grant(&self.0, &request, Right::Reference)?;
        let point = validate::location("location", request.get_ref().location)?;
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
        grant(&self.0, &request, Right::Reference)?;
        let scheme = validate::optional_code("scheme", &request.get_ref().scheme)?;
        let categories = registry::categories(self.0.engine.pool(), scheme.as_deref())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListCategoriesResponse { categories }))
    }

    async fn list_departments(
        &self,
        request: Request<pb::ListDepartmentsRequest>,
    ) -> Result<Response<pb::ListDepartmentsResponse>, Status> {
        grant(&self.0, &request, Right::Reference)?;
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
        // Workers are people: the registry shows them only inside the caller's scope.
        let grant = grant(&self.0, &request, Right::Read)?;
        let prefix = prefix_in_scope(
            self.0.engine.scope(),
            "org_code",
            &request.get_ref().org_code,
        )?;
        let mut workers = Vec::new();
        for prefix in grant.narrow(&prefix)? {
            workers.extend(
                registry::workers(self.0.engine.pool(), &prefix)
                    .await
                    .map_err(Error::from)?,
            );
        }
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn get_scope(
        &self,
        request: Request<pb::GetScopeRequest>,
    ) -> Result<Response<pb::Scope>, Status> {
        grant(&self.0, &request, Right::Reference)?;
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
