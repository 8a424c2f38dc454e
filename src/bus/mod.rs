//! Hardware: one actor per physical bus owns its transport and runs jobs one at a time.

pub mod error;
pub mod frame;
pub mod op;

pub use error::Error;
pub use op::{Op, Output, WriteData};
