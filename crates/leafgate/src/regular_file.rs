//! Reading the files an operator points leafgate at (config, drop-ins, device keys, CA
//! certificates) without ever blocking or exhausting memory.
//!
//! It sits below `config` and `hub`, which both read such files: the config loader and key
//! check on one side, the TLS settings (CA file) on the other. Keeping it here lets neither
//! import the other for it.

use std::path::Path;

/// Reads at most `limit` bytes of a text file; more is an error rather than a truncation.
///
/// # Errors
/// When the file cannot be read, is not a regular file (see [`read_regular`]), is larger than
/// `limit`, or is not UTF-8.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_regular(path, limit)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Reads at most `limit` bytes of a regular file (after following symlinks); more is an error
/// rather than a truncation.
///
/// Config, key and CA files are read on the daemon's reload path, so nothing here may block: a
/// FIFO blocks its opener until a writer comes and a terminal (`/dev/ptmx`) blocks its reader
/// forever. So: refuse what `stat` says is not a regular file before opening it (opening a
/// device can itself have effects), open with `O_NONBLOCK` (a FIFO swapped in meanwhile opens
/// at once instead of waiting for a writer) and `O_NOCTTY`, and check the *opened* file again,
/// so a swap between the two checks is caught too.
///
/// # Errors
/// When the file cannot be opened or read, is not a regular file, or is larger than `limit`.
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    refuse_unless_regular(path, &std::fs::metadata(path)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    refuse_unless_regular(path, &file.metadata()?)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

/// `is a FIFO (named pipe), not a regular file` and, for a symlink, what it resolves to: the
/// operator sees the configured path and may not know it points at a device.
fn refuse_unless_regular(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "a special file"
    };
    let mut message = format!("is {what}, not a regular file");
    if let Ok(target) = std::fs::canonicalize(path)
        && std::path::absolute(path).is_ok_and(|given| given != target)
    {
        message.push_str(&format!(" (it resolves to {})", target.display()));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        message,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt as _;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// Nobody writes to the FIFO and nobody types on the terminal: a blocking read would never
    /// return, so each of these returning at all is half the test.
    #[test]
    fn only_regular_files_are_read_and_nothing_else_is_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let regular = dir.path().join("key");
        std::fs::write(&regular, "abc\n").unwrap();
        assert_eq!(read_limited(&regular, 4).unwrap(), "abc\n");
        let err = read_limited(&regular, 3).unwrap_err().to_string();
        assert_eq!(err, "larger than 3 bytes");

        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let terminal = dir.path().join("terminal");
        std::os::unix::fs::symlink("/dev/ptmx", &terminal).unwrap();
        let to_fifo = dir.path().join("to-fifo");
        std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
        let cases: [(&Path, String); 5] = [
            (
                &fifo,
                "is a FIFO (named pipe), not a regular file".to_owned(),
            ),
            (
                &to_fifo,
                format!(
                    "is a FIFO (named pipe), not a regular file (it resolves to {})",
                    std::fs::canonicalize(&fifo).unwrap().display()
                ),
            ),
            (
                &terminal,
                format!(
                    "is a character device, not a regular file (it resolves to {})",
                    std::fs::canonicalize("/dev/ptmx").unwrap().display()
                ),
            ),
            (
                Path::new("/dev/null"),
                "is a character device, not a regular file".to_owned(),
            ),
            (dir.path(), "is a directory, not a regular file".to_owned()),
        ];
        for (path, want) in cases {
            let err = read_limited(path, 4096).unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::InvalidInput,
                "{}",
                path.display()
            );
            assert_eq!(err.to_string(), want, "{}", path.display());
        }
        let missing = read_limited(&dir.path().join("missing"), 10).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_limited(&binary, 10).unwrap_err().to_string(),
            "not UTF-8 text"
        );
    }
}
