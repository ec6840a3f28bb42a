//! The people of the development demo and the tests, named by convention so a name says who it
//! is: `gw-<grid>` a grid worker of that grid, `cs-<community>` community staff, `op-<org>` /
//! `dc-<org>` an operator / duty chief of the street or district whose 12-digit code follows,
//! `dh-<department>` a handler of that department, `sv-<org>` a supervisor and `au-<org>` an
//! auditor there, `admin-<org>` its admin, and `observer` an auditor and admin of Haicang (what
//! `wangge status` and the demo's read-backs use). Never for production: a real deployment's
//! identity provider says who is who.

use crate::Claims;

/// The demo district, 海沧区.
const HAICANG: &str = "350205";

/// The scope of a 12-digit org code as a center sees it: the district's 6 digits, a street's 9,
/// a community's 12; other codes as they are.
fn center(code: &str) -> &str {
    if code.len() == 12 && code.ends_with("000000") {
        &code[..6]
    } else if code.len() == 12 && code.ends_with("000") {
        &code[..9]
    } else {
        code
    }
}

/// The claims of the persona `name`, valid from `now` for `ttl_secs`.
pub fn persona(name: &str, now: i64, ttl_secs: i64) -> Result<Claims, String> {
    let (roles, orgs, departments): (&[&str], Vec<&str>, Vec<&str>) = if let Some(grid) =
        name.strip_prefix("gw-")
    {
        (&["grid_worker"], vec![grid], vec![])
    } else if let Some(community) = name.strip_prefix("cs-") {
        (&["community_staff"], vec![community], vec![])
    } else if let Some(code) = name.strip_prefix("op-") {
        let org = center(code);
        let roles: &[&str] = if org.len() == 6 {
            &["district_operator"]
        } else {
            &["street_operator"]
        };
        (roles, vec![org], vec![])
    } else if let Some(code) = name.strip_prefix("dc-") {
        (&["duty_chief"], vec![center(code)], vec![])
    } else if let Some(code) = name.strip_prefix("ld-") {
        (&["leader"], vec![center(code)], vec![])
    } else if let Some(department) = name.strip_prefix("dh-") {
        (&["department_handler"], vec![], vec![department])
    } else if let Some(code) = name.strip_prefix("sv-") {
        (&["supervisor"], vec![center(code)], vec![])
    } else if let Some(code) = name.strip_prefix("au-") {
        (&["auditor"], vec![center(code)], vec![])
    } else if let Some(code) = name.strip_prefix("admin-") {
        (&["admin"], vec![center(code)], vec![])
    } else if name == "admin" {
        (&["admin"], vec![HAICANG], vec![])
    } else if name == "observer" {
        (&["auditor", "admin"], vec![HAICANG], vec![])
    } else {
        return Err(format!(
            "no persona named {name:?} (gw-<grid>, cs-<community>, op-/dc-/ld-/sv-/au-/admin-<org>, \
                 dh-<department>, admin, observer)"
        ));
    };
    Ok(Claims::new(name, roles, &orgs, &departments, now, ttl_secs))
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personas_say_who_they_are() {
        let op = persona("op-350205002000", 0, 60).unwrap();
        assert_eq!(
            (op.roles[0].as_str(), op.orgs[0].as_str()),
            ("street_operator", "350205002")
        );
        let op = persona("op-350205000000", 0, 60).unwrap();
        assert_eq!(
            (op.roles[0].as_str(), op.orgs[0].as_str()),
            ("district_operator", "350205")
        );
        let gw = persona("gw-350205002006001", 0, 60).unwrap();
        assert_eq!(gw.orgs, vec!["350205002006001"]);
        let dh = persona("dh-350205002-cgzd", 0, 60).unwrap();
        assert_eq!(dh.departments, vec!["350205002-cgzd"]);
        assert!(persona("mayor", 0, 60).is_err());
    }
}
