//! Method definitions → bus operations → JSON replies, and the status contract. Pure logic, no
//! I/O: everything here is unit tested without buses or a hub.

pub mod group;
pub mod method;
pub mod plan;
pub mod raw;
pub mod schema;
pub mod status;
pub mod template;
#[cfg(test)]
pub(crate) mod testing;
pub mod value;

pub use method::{Method, Problem, ReplyError, RequestError};
pub use status::{Failure, respond};
