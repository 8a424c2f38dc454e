//! The smallest use of one store as the queue, for the binary-size figure:
//!   cargo build --release --bin probe --no-default-features --features sqlite   (or redb, or none)
//! With no store feature it only builds the messages, as the baseline.

#[allow(dead_code)]
#[path = "../queue.rs"]
mod queue;

#[allow(unused_imports)]
use queue::{Limits, Queue, make_msg};

fn main() -> queue::R<()> {
    let path = std::env::temp_dir().join(format!("probe-{}.db", std::process::id()));
    let msgs: Vec<_> = (1..=10).map(|i| make_msg(i, 0, i)).collect();
    #[cfg(feature = "sqlite")]
    let mut q = queue::sqlite::Sqlite::open(&path, "FULL")?;
    #[cfg(all(feature = "redb", not(feature = "sqlite")))]
    let mut q = queue::redb_q::Redb::open(&path, false, false)?;
    #[cfg(any(feature = "sqlite", feature = "redb"))]
    {
        q.append(&msgs, Limits::NONE, 0)?;
        let got = q.oldest(0, 0, 10)?;
        q.delete(&got.iter().map(|m| (m.device, m.id)).collect::<Vec<_>>())?;
        println!("{:?}", q.meta()?);
    }
    #[cfg(not(any(feature = "sqlite", feature = "redb")))]
    println!("{} messages, {:?}", msgs.len(), path);
    let _ = std::fs::remove_file(&path);
    Ok(())
}
