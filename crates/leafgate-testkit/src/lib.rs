//! What leafgate's integration tests and its benchmark harness share: finding the binaries cargo
//! built, running `leafgate run` as a child process ([`daemon`]), and reading a process's RSS
//! and CPU time from `/proc` ([`procfs`]).
//!
//! Test support only: never a dependency of the daemon.

pub mod daemon;
pub mod procfs;

use std::path::PathBuf;

/// The path of a binary of this workspace (`leafgate`, `leafgate-bench`) in the target
/// directory the running test or harness was built in. `cargo test` builds every default
/// member's binaries before it runs a test, but `CARGO_BIN_EXE_*` names only the binaries of the
/// test's own package.
///
/// # Panics
/// When the running executable's path cannot be read (test support: a panic is the report).
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    #[allow(clippy::expect_used)]
    let exe = std::env::current_exe().expect("the running executable's path");
    // target/<profile>/deps/<test> for tests, target/<profile>/<bin> for binaries.
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
