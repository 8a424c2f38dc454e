//! Serial ports shared by the Modbus RTU and raw serial links: opening with the configured line
//! settings, and draining stray input so the next exchange starts clean.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_serial::{DataBits, Parity as SParity, SerialPortBuilderExt, SerialStream, StopBits};

use super::Error;
use super::spec::{Line, Parity};

/// Opens a serial device as configured.
///
/// # Errors
/// `Unavailable` when the device cannot be opened (missing, busy, no permission). A permission
/// refusal carries what to change (see [`refusal_hint`]): the bus logs it when it goes down.
pub fn open(line: &Line) -> Result<SerialStream, Error> {
    let path = line.path.to_string_lossy();
    let data_bits = match line.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match line.parity {
        Parity::None => SParity::None,
        Parity::Even => SParity::Even,
        Parity::Odd => SParity::Odd,
    };
    let stop_bits = if line.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let port = tokio_serial::new(path.as_ref(), line.baud_rate)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .open_native_async()
        .map_err(|e| {
            let held = {
                let text = e.to_string().to_lowercase();
                text.contains("exclusive lock") || text.contains("busy")
            };
            let hint = if held {
                format!("; {HELD}")
            } else {
                refusal(&line.path)
                    .and_then(|(refusal, device)| refusal_hint(refusal, &device, under_systemd()))
                    .map(|hint| format!("; {hint}"))
                    .unwrap_or_default()
            };
            Error::unavailable(format!("cannot open {path}: {e}{hint}"))
        })?;
    // Bytes that arrived while the port was closed belong to nobody; a USB adapter drops them,
    // a pty or a kernel buffer may not.
    if let Err(e) = tokio_serial::SerialPort::clear(&port, tokio_serial::ClearBuffer::Input) {
        log::debug!("cannot clear input of {path}: {e}");
    }
    Ok(port)
}

/// What an open refused because another process has the line says. serialport (under
/// tokio-serial) opens every port with `TIOCEXCL` and `flock(LOCK_EX | LOCK_NB)`, as terminal
/// programs (picocom, minicom) do: a second leafgate, `leafgate call --offline`, or such a
/// program on the same line is refused instead of interleaving its frames with ours.
pub const HELD: &str = "another process holds this line (a running leafgate, `leafgate call --offline`, or a terminal program); find it with `fuser -v` on the device";

/// Why the kernel refuses a device to this process, when it is a permission matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// EPERM. Under systemd: the unit's device policy (`DevicePolicy=closed` lets through only
    /// the `DeviceAllow=` classes) is the usual cause; file modes never give EPERM.
    NotPermitted,
    /// EACCES: the file's owner, group and mode do not let this user read and write it.
    AccessDenied,
}

/// What is known of the refused device, for the hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The node itself, symlinks (`/dev/serial/by-id/...`) resolved.
    pub node: PathBuf,
    /// Owner and group names (numbers when not in /etc/passwd, /etc/group), and the mode bits.
    pub owner: String,
    pub group: String,
    pub mode: u32,
}

/// True when systemd started this process (it sets `INVOCATION_ID` for every service, and
/// `NOTIFY_SOCKET` for `Type=notify`).
fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Asks the kernel whether this process may read and write `path`. tokio-serial folds EPERM
/// into an unknown error, so the reason is asked again with faccessat(2), which runs the same
/// checks as open(2) (file mode, then the cgroup device policy) without opening the device.
/// Plain faccessat, not faccessat2 with `AT_EACCESS`: a seccomp filter that lacks the newer call
/// would answer EPERM itself. `None` when access is granted now or the refusal is not a
/// permission one.
#[cfg(target_os = "linux")]
fn refusal(path: &Path) -> Option<(Refusal, Device)> {
    use rustix::fs::{Access, access};
    use std::os::unix::fs::MetadataExt as _;
    let refusal = match access(path, Access::READ_OK | Access::WRITE_OK) {
        Err(e) if e == rustix::io::Errno::PERM => Refusal::NotPermitted,
        Err(e) if e == rustix::io::Errno::ACCESS => Refusal::AccessDenied,
        _ => return None,
    };
    let node = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let meta = std::fs::metadata(&node).ok();
    let (uid, gid, mode) = meta.map_or((None, None, 0), |m| {
        (Some(m.uid()), Some(m.gid()), m.mode())
    });
    Some((
        refusal,
        Device {
            owner: id_name("/etc/passwd", uid),
            group: id_name("/etc/group", gid),
            mode: mode & 0o7777,
            node,
        },
    ))
}

#[cfg(not(target_os = "linux"))]
fn refusal(_path: &Path) -> Option<(Refusal, Device)> {
    None
}

/// The name of a user or group id from /etc/passwd or /etc/group (`name:x:id:...`), else the
/// number; `?` when unknown.
fn id_name(database: &str, id: Option<u32>) -> String {
    let Some(id) = id else {
        return "?".to_owned();
    };
    std::fs::read_to_string(database)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let found = fields.nth(1)?.parse::<u32>().ok()? == id;
                found.then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| id.to_string())
}

/// The device class systemd's `DeviceAllow=char-NAME` takes: the tty driver's name as listed in
/// /proc/devices. The kernel names tty nodes after their driver plus the line number
/// (`ttymxc` + `1`), so it is the node's name without its trailing digits.
fn device_class(node: &Path) -> Option<String> {
    let name = node.file_name()?.to_str()?;
    let class = name.trim_end_matches(|c: char| c.is_ascii_digit());
    (class.len() < name.len() && !class.is_empty()).then(|| class.to_owned())
}

/// What an operator should change when a serial device is refused, or `None` when there is
/// nothing specific to say. Under systemd it names the `systemctl edit leafgate` drop-in line
/// that lets the service at the device; the unit allows only the serial classes it lists, and
/// boards name their UARTs in many ways.
#[must_use]
pub fn refusal_hint(refusal: Refusal, device: &Device, under_systemd: bool) -> Option<String> {
    let node = device.node.display();
    let Device {
        owner, group, mode, ..
    } = device;
    let owned = format!("{owner}:{group} {mode:04o}");
    match (refusal, under_systemd) {
        (Refusal::NotPermitted, true) => {
            let allow = device_class(&device.node)
                .map_or_else(|| format!("{node} rw"), |class| format!("char-{class} rw"));
            Some(format!(
                "the service's device policy does not allow {node} (leafgate.service lets through \
                 only the serial device classes it lists): run `systemctl edit leafgate`, add the \
                 lines `[Service]` and `DeviceAllow={allow}`, then `systemctl restart leafgate`"
            ))
        }
        (Refusal::NotPermitted, false) => None,
        (Refusal::AccessDenied, true) if mode & 0o060 == 0o060 && group != "dialout" => {
            Some(format!(
                "{node} is {owned} and the service has group dialout only: give serial devices \
                 group dialout with a udev rule, or run `systemctl edit leafgate`, add the lines \
                 `[Service]` and `SupplementaryGroups={group}`, then `systemctl restart leafgate`"
            ))
        }
        (Refusal::AccessDenied, true) if mode & 0o060 == 0o060 => Some(format!(
            "{node} is {owned} but the service is not in group dialout: leafgate.service sets \
             `SupplementaryGroups=dialout`; look for a drop-in that clears it \
             (`systemctl cat leafgate`)"
        )),
        (Refusal::AccessDenied, true) => Some(format!(
            "{node} is {owned}, not read/writable by group dialout, the service's serial group: \
             give it group dialout and mode 0660 with a udev rule (GROUP=\"dialout\", MODE=\"0660\")"
        )),
        (Refusal::AccessDenied, false) if mode & 0o060 == 0o060 => Some(format!(
            "{node} is {owned}: run leafgate as a member of group {group} \
             (`usermod -aG {group} USER`, then log in again)"
        )),
        (Refusal::AccessDenied, false) => Some(format!(
            "{node} is {owned}, not read/writable by its group: serial devices are usually \
             root:dialout 0660 (a udev rule sets it), with leafgate's user in group dialout"
        )),
    }
}

/// Reads and discards input until the line has been quiet for `quiet`, or `limit` has passed.
/// Returns how many bytes were discarded.
///
/// # Errors
/// `Unavailable` when the port fails (unplugged adapter).
pub async fn drain<R: AsyncReadExt + Unpin>(
    port: &mut R,
    quiet: Duration,
    limit: Duration,
) -> Result<usize, Error> {
    let mut discarded = 0;
    let mut buf = [0u8; 256];
    let until = tokio::time::Instant::now() + limit;
    loop {
        let wait = quiet.min(until.saturating_duration_since(tokio::time::Instant::now()));
        if wait.is_zero() {
            return Ok(discarded);
        }
        match tokio::time::timeout(wait, port.read(&mut buf)).await {
            Err(_) => return Ok(discarded),
            Ok(Ok(0)) => return Err(Error::unavailable("line closed")),
            Ok(Ok(n)) => discarded += n,
            Ok(Err(e)) => return Err(Error::transport("read failed", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(node: &str, group: &str, mode: u32) -> Device {
        Device {
            node: PathBuf::from(node),
            owner: "root".to_owned(),
            group: group.to_owned(),
            mode,
        }
    }

    #[test]
    fn the_device_class_is_the_node_name_without_its_line_number() {
        for (node, class) in [
            ("/dev/ttyS0", Some("ttyS")),
            ("/dev/ttyAMA10", Some("ttyAMA")),
            ("/dev/ttymxc3", Some("ttymxc")),
            ("/dev/ttyO2", Some("ttyO")),
            ("/dev/modbus", None),
            ("/dev/42", None),
        ] {
            assert_eq!(device_class(Path::new(node)).as_deref(), class, "{node}");
        }
    }

    #[test]
    fn an_eperm_under_systemd_names_the_drop_in_line_that_allows_the_device_class() {
        let hint = refusal_hint(
            Refusal::NotPermitted,
            &device("/dev/ttymxc1", "dialout", 0o660),
            true,
        )
        .unwrap();
        assert!(hint.contains("/dev/ttymxc1"), "{hint}");
        assert!(hint.contains("`systemctl edit leafgate`"), "{hint}");
        assert!(hint.contains("`DeviceAllow=char-ttymxc rw`"), "{hint}");
        assert!(hint.contains("`systemctl restart leafgate`"), "{hint}");
        // A node without a line number is allowed by its path.
        let hint = refusal_hint(
            Refusal::NotPermitted,
            &device("/dev/modbus", "dialout", 0o660),
            true,
        )
        .unwrap();
        assert!(hint.contains("`DeviceAllow=/dev/modbus rw`"), "{hint}");
        // Outside systemd there is no device policy to blame.
        assert_eq!(
            refusal_hint(
                Refusal::NotPermitted,
                &device("/dev/ttyS0", "dialout", 0o660),
                false
            ),
            None
        );
    }

    #[test]
    fn an_eacces_under_systemd_names_the_group_or_the_mode_to_fix() {
        // Group-writable, but not dialout: add the group, or move the device to dialout.
        let hint = refusal_hint(
            Refusal::AccessDenied,
            &device("/dev/ttyLP2", "uucp", 0o660),
            true,
        )
        .unwrap();
        assert!(hint.contains("root:uucp 0660"), "{hint}");
        assert!(hint.contains("`SupplementaryGroups=uucp`"), "{hint}");
        assert!(hint.contains("`systemctl edit leafgate`"), "{hint}");
        // Not group read/writable: only a udev rule helps.
        let hint = refusal_hint(
            Refusal::AccessDenied,
            &device("/dev/ttyLP2", "dialout", 0o600),
            true,
        )
        .unwrap();
        assert!(hint.contains("GROUP=\"dialout\", MODE=\"0660\""), "{hint}");
        // Outside systemd: the user running leafgate needs the group, or the device a mode.
        let hint = refusal_hint(
            Refusal::AccessDenied,
            &device("/dev/ttyUSB0", "dialout", 0o660),
            false,
        )
        .unwrap();
        assert!(hint.contains("`usermod -aG dialout USER`"), "{hint}");
        let hint = refusal_hint(
            Refusal::AccessDenied,
            &device("/dev/ttyUSB0", "root", 0o600),
            false,
        )
        .unwrap();
        assert!(
            hint.contains("root:root 0600, not read/writable by its group"),
            "{hint}"
        );
    }
}
