//! The `leafgate` binary: argument parsing, logging, exit codes. The library does the work.

fn main() {
    println!("leafgate {}", env!("CARGO_PKG_VERSION"));
}
