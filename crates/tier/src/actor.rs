//! Who is calling. Until signed tokens arrive (roadmap: security), the caller names itself in the
//! `x-wangge-actor` metadata entry; handlers take the role from the API they serve.

use tonic::Request;
use wangge_proto as pb;

use crate::Error;

/// The metadata key naming the acting person.
pub const ACTOR_HEADER: &str = "x-wangge-actor";

/// The acting person of a request, in the given role.
pub fn actor<T>(request: &Request<T>, role: pb::Role) -> Result<pb::Actor, Error> {
    let id = request
        .metadata()
        .get(ACTOR_HEADER)
        .ok_or_else(|| Error::Unauthenticated(format!("missing {ACTOR_HEADER} metadata")))?
        .to_str()
        .map_err(|_| Error::Unauthenticated(format!("{ACTOR_HEADER} must be ASCII")))?
        .trim();
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if !valid {
        return Err(Error::Unauthenticated(format!(
            "{ACTOR_HEADER} must be 1-64 letters, digits or -_.@"
        )));
    }
    Ok(pb::Actor {
        id: id.to_owned(),
        role: role as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_comes_from_metadata() {
        let mut request = Request::new(());
        assert!(matches!(
            actor(&request, pb::Role::GridWorker),
            Err(Error::Unauthenticated(_))
        ));
        request
            .metadata_mut()
            .insert(ACTOR_HEADER, "gw-350205002006001".parse().unwrap());
        let who = actor(&request, pb::Role::GridWorker).unwrap();
        assert_eq!(who.id, "gw-350205002006001");
        assert_eq!(who.role(), pb::Role::GridWorker);
        request
            .metadata_mut()
            .insert(ACTOR_HEADER, "a b".parse().unwrap());
        assert!(actor(&request, pb::Role::GridWorker).is_err());
    }
}
