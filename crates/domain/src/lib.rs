//! The wangge domain, free of I/O: org and grid codes, the case state machine, grid lookup and the
//! work calendar.

pub mod calendar;
pub mod codes;

pub use codes::{CodeError, GridCode, OrgCode, OrgLevel, Scope};
