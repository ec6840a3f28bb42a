//! The one mapping from what went wrong inside a tier to a gRPC status.
//!
//! A client acts on the code: INVALID_ARGUMENT names the field to fix, ALREADY_EXISTS a key that is
//! taken, FAILED_PRECONDITION a step the case's state does not allow, UNAVAILABLE and ABORTED mean
//! "nothing was decided, try again", INTERNAL a bug of ours (logged, opaque).

use std::borrow::Cow;

use tonic::Status;
use tracing::{error, warn};
use wangge_domain::case::Refusal;
use wangge_store::Class;

/// Everything a tier's gRPC handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: the field and what is wrong with it.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The path of the field, `attachments[2].sha256`.
        field: Cow<'static, str>,
        message: String,
    },
    #[error("{0} not found")]
    NotFound(String),
    /// A key the caller chose is taken by something else: the field and what holds it.
    #[error("{field}: {message}")]
    AlreadyExists {
        field: &'static str,
        message: String,
    },
    /// The state machine refused the step.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's roles or scope do not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit of the caller (rate, size) was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A bug of ours: logged, opaque to the caller.
    #[error("{0}")]
    Internal(String),
    /// Nothing was decided because a dependency is away; the cause was logged where it was seen.
    #[error("{0}")]
    Unavailable(String),
    /// Nothing was decided because a concurrent change got in the way; try again.
    #[error("{0}")]
    Aborted(String),
    #[error(transparent)]
    Store(#[from] wangge_store::Error),
}

impl Error {
    pub fn invalid(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, with the field `from` called `to` (a request that names it otherwise).
    pub fn renamed(self, from: &str, to: &'static str) -> Error {
        match self {
            Error::InvalidArgument { field, message } if field == from => Error::InvalidArgument {
                field: to.into(),
                message,
            },
            other => other,
        }
    }
}

impl Error {
    /// The same failure for each caller of a batch that failed as a whole (a database error is
    /// not `Clone`): its class decides the code, as [`Status::from`] would.
    pub(crate) fn for_each_caller(&self) -> Error {
        match self {
            Error::Store(store) => match store.class() {
                Class::Unavailable => {
                    Error::Unavailable("the database is unavailable, try again".into())
                }
                Class::Contention => {
                    Error::Aborted("a concurrent change got in the way, try again".into())
                }
                Class::Permanent => Error::Internal(format!("storage failure: {store}")),
            },
            Error::Unavailable(message) => Error::Unavailable(message.clone()),
            Error::Aborted(message) => Error::Aborted(message.clone()),
            other => Error::Internal(format!("a batch failed as a whole: {other}")),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        Error::Store(e.into())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            Error::NotFound(_) => Status::not_found(e.to_string()),
            Error::AlreadyExists { .. } => Status::already_exists(e.to_string()),
            Error::Refused(refusal) if refusal.is_bad_input() => {
                Status::invalid_argument(refusal.to_string())
            }
            Error::Refused(refusal) => Status::failed_precondition(refusal.to_string()),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::Internal(message) => {
                error!(%message, "internal error");
                Status::internal("internal error")
            }
            Error::Unavailable(message) => Status::unavailable(message),
            Error::Aborted(message) => Status::aborted(message),
            Error::Store(store) => match store.class() {
                Class::Unavailable => {
                    warn!(error = %store, "database unavailable");
                    Status::unavailable("the database is unavailable, try again")
                }
                Class::Contention => {
                    warn!(error = %store, "transaction lost a race");
                    Status::aborted("a concurrent change got in the way, try again")
                }
                Class::Permanent => {
                    error!(error = %store, "storage failure");
                    Status::internal("internal storage error")
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_maps_to_its_code() {
        let cases = [
            (Error::invalid("location", "outside"), Code::InvalidArgument),
            (Error::NotFound("case x".into()), Code::NotFound),
            (
                Error::Refused(Refusal::NoUpperTier("district")),
                Code::FailedPrecondition,
            ),
            (
                Error::Refused(Refusal::Malformed {
                    field: "reason",
                    message: "empty".into(),
                }),
                Code::InvalidArgument,
            ),
            (Error::Unauthenticated("who".into()), Code::Unauthenticated),
            (
                Error::PermissionDenied("where".into()),
                Code::PermissionDenied,
            ),
            (
                Error::ResourceExhausted("slow".into()),
                Code::ResourceExhausted,
            ),
            (Error::Internal("bug".into()), Code::Internal),
            (
                Error::AlreadyExists {
                    field: "client_id",
                    message: "taken".into(),
                },
                Code::AlreadyExists,
            ),
            (
                Error::Store(sqlx::Error::Io(std::io::ErrorKind::UnexpectedEof.into()).into()),
                Code::Unavailable,
            ),
            (
                Error::Store(sqlx::Error::PoolTimedOut.into()),
                Code::Unavailable,
            ),
            (
                Error::Store(sqlx::Error::RowNotFound.into()),
                Code::Internal,
            ),
            (Error::Unavailable("away".into()), Code::Unavailable),
            (Error::Aborted("raced".into()), Code::Aborted),
        ];
        for (error, code) in cases {
            // Each caller of a failed batch gets the code the failure itself maps to.
            let shared = error.for_each_caller();
            let expected_shared = match &error {
                Error::Store(_) | Error::Unavailable(_) | Error::Aborted(_) => code,
                _ => Code::Internal,
            };
            assert_eq!(Status::from(shared).code(), expected_shared, "{error:?}");
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let status = Status::from(Error::Store(
            sqlx::Error::ColumnNotFound("secret detail".into()).into(),
        ));
        assert!(!status.message().contains("secret"));
    }
}
