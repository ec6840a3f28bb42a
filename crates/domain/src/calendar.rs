//! Work calendar (placeholder, written next).
