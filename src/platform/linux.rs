//! Linux: SG_IO, sysfs, dm-multipath, the kernel log, unix sockets.

pub mod kernel_log;

use std::path::Path;
use std::time::Duration;

use crate::device::{Described, DeviceError, MapNames, Resolver, Sysfs};
use crate::transport::sgio::SgIo;

/// This system's name in messages and `--version`.
pub const NAME: &str = "linux";

/// Where the fenced-state records live.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/csi-fencer";

/// The kernel log followed for this node's own RESERVATION CONFLICTs.
pub const DEFAULT_KERNEL_LOG: Option<&str> = Some(kernel_log::DEFAULT_PATH);

/// The multipath.conf checked for keys multipathd would register itself.
pub const DEFAULT_MULTIPATH_CONFIG: Option<&str> = Some("/etc/multipath.conf");

/// The maps whose registrations multipathd is configured to own, by
/// multipath.conf at `path` (see `device::multipath`).
pub fn multipath_owners(path: &Path) -> std::io::Result<Vec<String>> {
    crate::device::multipath::owners(path).map(|o| o.iter().map(|o| o.to_string()).collect())
}

/// The transport that reaches real devices.
pub type Native = SgIo;

/// The transport that reaches real devices.
pub fn native() -> Native {
    SgIo
}

/// How LUNs are found.
pub type Locator = Resolver;

/// Finds LUNs in `/sys`, matching dm maps whose uuid starts with `map_uuid_prefix`.
pub fn locator(map_uuid_prefix: &str) -> Locator {
    Resolver::new(Sysfs::default(), map_uuid_prefix)
}

/// What a device node an operator named is, and the paths behind it.
pub fn describe(device: &Path) -> Result<Described, DeviceError> {
    describe_in(&Sysfs::default(), device)
}

/// [`describe`] over another sysfs tree (tests).
pub fn describe_in(sysfs: &Sysfs, device: &Path) -> Result<Described, DeviceError> {
    let (_, kernel_name) = sysfs.kernel_name(device)?;
    let lun = Resolver::new(sysfs.clone(), "mpath-").for_device(device)?;
    let map = lun.map.as_ref().map(|dm| MapNames {
        name: sysfs.dm_name(dm),
        uuid: sysfs.dm_uuid(dm),
    });
    Ok(Described {
        kernel_name,
        map,
        lun,
    })
}

/// Renames `from` over `to` (both in one directory); [`sync_dir`] then
/// makes the new name durable.
pub fn replace_file(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)
}

/// Makes the directory's entries (a rename, a removal) durable: fsync of
/// the directory itself.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// CLOCK_MONOTONIC now: the clock of the kernel log's timestamps, so that
/// an operation's start compares with a logged conflict.
pub fn monotonic() -> Option<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    Some(Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    ))
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Binds the unix socket at `path`, readable by root only (0600), after
/// removing a stale one: the connections of the gRPC node API.
pub fn listen(path: &Path) -> Result<tokio_stream::wrappers::UnixListenerStream, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create directory: {e}"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove stale socket: {e}")),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| format!("bind: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod 0600: {e}"))?;
    Ok(tokio_stream::wrappers::UnixListenerStream::new(listener))
}

/// Connects to the unix socket at `path`.
pub async fn dial(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(path).await
}

/// Follows the kernel log at `path` for reservation conflicts on this
/// node's paths (see [`kernel_log`]), calling `on` with the
/// LUN and when the kernel logged it.
pub fn follow_kernel_log<F>(path: &Path, on: F) -> Result<(), String>
where
    F: Fn(Option<String>, Option<Duration>) + Send + 'static,
{
    kernel_log::follow(path, Sysfs::default(), on)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_daemon_follows_kmsg_and_checks_multipath_conf_by_default() {
        assert_eq!(super::DEFAULT_KERNEL_LOG, Some("/dev/kmsg"));
        assert_eq!(super::DEFAULT_MULTIPATH_CONFIG, Some("/etc/multipath.conf"));
    }
}
