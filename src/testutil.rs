//! Test support shared by the unit tests and the examples that run the
//! tests' control plane or LUN (`examples/kube_relay.rs`,
//! `examples/acquire_bench.rs`) and the integration tests that include it:
//! a temporary directory, a sysfs fixture, polling, and a metric sample.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A self-cleaning temporary directory (no extra dependency).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "csi-fencer-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// A sysfs tree: dm-0 (uuid mpath-36001405000000001) over sdc (session1,
/// port 1) and sdd (session2, port 2), both from `initiator`.
#[cfg(unix)]
pub fn iscsi_fixture(initiator: &str) -> TempDir {
    use std::fs;
    use std::os::unix::fs::symlink;
    let d = TempDir::new("sysfs");
    let r = d.path();
    fs::create_dir_all(r.join("class/block/dm-0/dm")).unwrap();
    fs::write(
        r.join("class/block/dm-0/dm/uuid"),
        "mpath-36001405000000001",
    )
    .unwrap();
    for (sd, n) in [("sdc", 1), ("sdd", 2)] {
        let dev = r.join(format!(
            "devices/platform/host{n}/session{n}/target{n}:0:0/{n}:0:0:0"
        ));
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("state"), "running\n").unwrap();
        fs::create_dir_all(r.join(format!("class/block/dm-0/slaves/{sd}"))).unwrap();
        fs::create_dir_all(r.join(format!("class/block/{sd}"))).unwrap();
        symlink(&dev, r.join(format!("class/block/{sd}/device"))).unwrap();
        let sess = r.join(format!("class/iscsi_session/session{n}"));
        fs::create_dir_all(&sess).unwrap();
        fs::write(sess.join("initiatorname"), initiator).unwrap();
    }
    d
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `ready` every `every` until it holds or `within` has passed; true
/// if it held. The caller says what it waited for when it did not.
#[allow(dead_code)] // used by the integration tests that include this file
pub fn poll(within: Duration, every: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if t0.elapsed() >= within {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// [`poll`] for async tests: sleeps on the runtime's timer between polls.
pub async fn poll_async(
    within: Duration,
    every: Duration,
    mut ready: impl FnMut() -> bool,
) -> bool {
    let t0 = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if t0.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// The value of the first Prometheus sample line that starts with `prefix`
/// (`name{labels} value`).
#[allow(dead_code)] // used by the integration tests that include this file
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// (status code, body) of an HTTP GET of `path` on loopback `port`, or
/// `None` while nothing listens there.
#[allow(dead_code)] // used by the integration tests that include this file
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}
