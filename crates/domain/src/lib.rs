//! The wangge domain, free of I/O: org and grid codes, the case state machine, grid lookup, the
//! work calendar, the command clock (time limits and their lights) and the time-limit rules.

pub mod calendar;
pub mod case;
pub mod clock;
pub mod codes;
pub mod evaluation;
pub mod grids;
pub mod limits;

pub use codes::{CodeError, GridCode, OrgCode, OrgLevel, Scope};
