//! The wangge domain, free of I/O: org and grid codes, the case state machine, grid lookup and the
//! work calendar.

pub mod calendar;
pub mod case;
pub mod codes;
pub mod grids;

pub use codes::{CodeError, GridCode, OrgCode, OrgLevel, Scope};
