//! Kubernetes watch-cache benchmark (`make bench-kube`); prints figures,
//! asserts nothing about speed.
//!
//! The tests' mock API server (`src/k8s/tests/mock.rs`, in this process,
//! over loopback HTTP) serves a paginated LIST of 100 000
//! VolumeAttachments on 200 nodes (realistic names, managedFields, ~1.3 KB of
//! JSON each), then a watch stream. The real daemon (`CSI_FENCER_BIN`, default
//! `target/release/csi-fencer`) runs as a child process on `node-bench`, a
//! 201st node with no attachment, so it does no SCSI work: what is measured is
//! its watch cache. Each round, with a fresh daemon:
//!
//! 1. LIST: until `csi_fencer_volumeattachments` is 100 000: wall time, CPU
//!    time (utime+stime of /proc/PID/stat), VmRSS and VmHWM.
//! 2. burst: 10 000 watch events (60% MODIFIED, 20% ADDED, 20% DELETED) written
//!    as fast as possible, until the daemon counted them
//!    (`csi_fencer_kube_watch_events_total`, apply + delete): events/s and
//!    the ratio to an arrival rate of 1 000/s.
//! 3. paced: 10 000 more events at 1 000/s: CPU per event and CPU utilisation.
//! 4. relist (`RELIST=0` skips it): the watch ends with 410 Gone and the
//!    daemon lists everything again: wall, CPU and the peak RSS with it.
//!
//! Env: `ROUNDS` (default 3), `OBJECTS` (100000), `NODES` (200), `EVENTS`
//! (10000), `PACED_RATE` (1000 events/s), `PHASE_TIMEOUT` (300 s),
//! `KUBE_API_QPS` / `KUBE_API_BURST` (passed to the daemon when set; its
//! defaults, 5 and 10, pace the LIST's pages as client-go would).

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/mock.rs"]
mod mock;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mock::{Change, MockApi, Seen};
use sha2::{Digest, Sha256};

const DRIVER: &str = "block.csi.example.com";
const FINALIZER: &str = "external-attacher/block-csi-example-com";
const NODE: &str = "node-bench";
/// The first resourceVersion: an etcd revision of a cluster that has lived.
const RV_BASE: u64 = 48_213_000;
/// Creation times are spread over the year before this (2025-01-01T00:00:00Z).
const EPOCH: u64 = 1_735_689_600;
const MIB: f64 = 1024.0 * 1024.0;
const INIT_DONE: &str = "csi_fencer_kube_watch_events_total{type=\"init-done\"}";

// ---------------------------------------------------------------- generation

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// RFC 3339 UTC, seconds precision, as the API server writes it.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn node_name(i: usize) -> String {
    format!("node-{i:03}")
}

/// One VolumeAttachment's changing state.
#[derive(Clone)]
struct Va {
    name: String,
    uid: String,
    pv: String,
    node: usize,
    lun: u32,
    wwn: String,
    created: u64,
    /// Time of the last status update (managedFields).
    updated: u64,
    attached: bool,
    rv: u64,
}

impl Va {
    fn new(rng: &mut Rng, nodes: usize, created: u64, rv: u64) -> Va {
        let pv = format!("pvc-{}", rng.uuid());
        let node = rng.below(nodes);
        let digest = Sha256::digest(format!("{pv}{DRIVER}{}", node_name(node)).as_bytes());
        Va {
            name: format!("csi-{}", hex(&digest)),
            uid: rng.uuid(),
            pv,
            node,
            lun: rng.below(255) as u32,
            wwn: format!("36{:015x}{:016x}", rng.next() >> 4, rng.next()),
            created,
            updated: created + 2 + rng.below(5) as u64,
            attached: true,
            rv,
        }
    }

    /// The object as JSON. List items carry no kind/apiVersion (as the API
    /// server writes built-in lists); watch event objects do.
    fn json(&self, typed: bool, deleted_at: Option<u64>) -> String {
        let mut s = String::with_capacity(1600);
        s.push('{');
        if typed {
            s.push_str(r#""kind":"VolumeAttachment","apiVersion":"storage.k8s.io/v1","#);
        }
        let node = node_name(self.node);
        let created = rfc3339(self.created);
        let _ = write!(
            s,
            r#""metadata":{{"name":"{}","uid":"{}","resourceVersion":"{}","creationTimestamp":"{created}","#,
            self.name, self.uid, self.rv
        );
        if let Some(t) = deleted_at {
            let _ = write!(
                s,
                r#""deletionTimestamp":"{}","deletionGracePeriodSeconds":0,"#,
                rfc3339(t)
            );
        }
        let _ = write!(
            s,
            r#""annotations":{{"csi.alpha.kubernetes.io/node-id":"{node}"}},"finalizers":[{}],"#,
            if deleted_at.is_some() {
                String::new()
            } else {
                format!("\"{FINALIZER}\"")
            }
        );
        let _ = write!(
            s,
            concat!(
                r#""managedFields":[{{"manager":"kube-controller-manager","operation":"Update","apiVersion":"storage.k8s.io/v1","time":"{created}","fieldsType":"FieldsV1","#,
                r#""fieldsV1":{{"f:spec":{{"f:attacher":{{}},"f:nodeName":{{}},"f:source":{{"f:persistentVolumeName":{{}}}}}}}}}},"#,
                r#"{{"manager":"csi-attacher","operation":"Update","apiVersion":"storage.k8s.io/v1","time":"{updated}","fieldsType":"FieldsV1","#,
                r#""fieldsV1":{{"f:metadata":{{"f:annotations":{{".":{{}},"f:csi.alpha.kubernetes.io/node-id":{{}}}},"f:finalizers":{{".":{{}},"v:\"{fin}\"":{{}}}}}},"#,
                r#""f:status":{{"f:attached":{{}},"f:attachmentMetadata":{{".":{{}},"f:devicePath":{{}},"f:lun":{{}},"f:targetWWN":{{}}}}}}}}}}]}},"#
            ),
            created = created,
            updated = rfc3339(self.updated),
            fin = FINALIZER,
        );
        let _ = write!(
            s,
            r#""spec":{{"attacher":"{DRIVER}","nodeName":"{node}","source":{{"persistentVolumeName":"{}"}}}},"#,
            self.pv
        );
        let _ = write!(
            s,
            r#""status":{{"attached":{},"attachmentMetadata":{{"devicePath":"/dev/disk/by-id/wwn-0x{}","lun":"{}","targetWWN":"{}"}}}}}}"#,
            self.attached, self.wwn, self.lun, self.wwn
        );
        s
    }
}

/// The cluster's VolumeAttachments and the next resourceVersion.
struct Cluster {
    rng: Rng,
    nodes: usize,
    live: Vec<Va>,
    rv: u64,
    clock: u64,
}

impl Cluster {
    fn generate(objects: usize, nodes: usize) -> Cluster {
        let mut rng = Rng(0x6b75_6265_2d62_656e);
        let mut rv = RV_BASE;
        let live = (0..objects)
            .map(|_| {
                rv += 1 + rng.below(40) as u64;
                let created = EPOCH - 365 * 86_400 + rng.below(365 * 86_400) as u64;
                Va::new(&mut rng, nodes, created, rv)
            })
            .collect();
        Cluster {
            rng,
            nodes,
            live,
            rv,
            clock: EPOCH,
        }
    }

    /// The next `n` watch events: 60% MODIFIED, 20% ADDED, 20% DELETED.
    fn events(&mut self, n: usize) -> Vec<Change> {
        (0..n)
            .map(|_| {
                self.rv += 1;
                self.clock += 1;
                let roll = self.rng.below(10);
                if roll < 6 && !self.live.is_empty() {
                    let i = self.rng.below(self.live.len());
                    let flip = self.rng.below(4) == 0;
                    let va = &mut self.live[i];
                    va.rv = self.rv;
                    va.updated = self.clock;
                    va.lun = (va.lun + 1) % 255;
                    if flip {
                        va.attached = !va.attached;
                    }
                    change("MODIFIED", va, None)
                } else if roll < 8 || self.live.is_empty() {
                    let va = Va::new(&mut self.rng, self.nodes, self.clock, self.rv);
                    let e = change("ADDED", &va, None);
                    self.live.push(va);
                    e
                } else {
                    let i = self.rng.below(self.live.len());
                    let mut va = self.live.swap_remove(i);
                    va.rv = self.rv;
                    change("DELETED", &va, Some(self.clock))
                }
            })
            .collect()
    }
}

/// A watch event, serialized ahead of the measurement in the API server's
/// key order.
fn change(kind: &str, va: &Va, deleted_at: Option<u64>) -> Change {
    let item = deleted_at.is_none().then(|| va.json(false, None));
    Change::serialized(kind, &va.json(true, deleted_at), item)
}

// ---------------------------------------------------------------- the mock API server

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tests' mock API server holding the cluster, served on loopback.
fn serve(rt: &tokio::runtime::Runtime, c: &Cluster) -> Result<(MockApi, SocketAddr), String> {
    let api = MockApi::new(&[]);
    let mut rng = Rng(7);
    let nodes = (0..c.nodes)
        .map(node_name)
        .chain([NODE.to_string()])
        .map(|n| {
            serde_json::json!({
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": {
                    "name": n, "uid": rng.uuid(),
                    "resourceVersion": (RV_BASE - 1000 + rng.below(999) as u64).to_string(),
                    "creationTimestamp": rfc3339(EPOCH - 400 * 86_400),
                    "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                               "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": n,
                               "kubernetes.io/os": "linux"},
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                    "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
                }
            })
        })
        .collect();
    api.set_nodes(nodes);
    let items = c
        .live
        .iter()
        .map(|va| (va.name.clone(), va.json(false, None)));
    api.load_serialized(c.rv, items);
    let addr = rt
        .block_on(api.serve())
        .map_err(|e| format!("mock API server: {e}"))?;
    Ok((api, addr))
}

// ---------------------------------------------------------------- the daemon

/// The daemon child; killed when dropped.
struct Daemon {
    child: Child,
    pid: u32,
    metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn spawn(bin: &Path, dir: &Path, api: SocketAddr) -> Result<Daemon, String> {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: http://{api}\n\
                 contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\n\
                 current-context: bench\nusers:\n- name: bench\n  user:\n    token: bench-token\n"
            ),
        )
        .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!("clusterName: bench\ndrivers:\n  - name: {DRIVER}\n    volumeHandleRegex: '^(?P<wwid>3[0-9a-f]{{32}})$'\n"),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let state = dir.join("state");
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("picking a port for /metrics: {e}"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(["--source", "kubernetes", "--node-name", NODE])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(["--http-endpoint", &metrics.to_string()]);
        if let Ok(q) = std::env::var("KUBE_API_QPS") {
            cmd.args(["--kube-api-qps", &q]);
        }
        if let Ok(b) = std::env::var("KUBE_API_BURST") {
            cmd.args(["--kube-api-burst", &b]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e} (build it: cargo build --release --bin csi-fencer, or set CSI_FENCER_BIN)",
                    bin.display()
                )
            })?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    lock(&log).push(line);
                }
            });
        }
        Ok(Daemon {
            pid: child.id(),
            child,
            metrics,
            log,
        })
    }

    fn tail(&self, n: usize) -> String {
        let log = lock(&self.log);
        log[log.len().saturating_sub(n)..].join("\n")
    }

    /// Fails if the daemon has exited.
    fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => {
                std::thread::sleep(Duration::from_millis(200));
                Err(format!(
                    "the daemon exited early ({st}); its stderr ends with:\n{}",
                    self.tail(40)
                ))
            }
            Err(e) => Err(format!("waiting for the daemon: {e}")),
        }
    }

    /// `/metrics`, parsed into name{labels} → value; None until it answers.
    fn scrape(&self) -> Option<BTreeMap<String, f64>> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        Some(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// Seconds of CPU (user + system, all threads) so far.
    fn cpu(&self, tck: f64) -> Result<f64, String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|e| format!("/proc/{}/stat: {e}", self.pid))?;
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        // After the comm field: [0] is field 3 (state); utime is field 14, stime 15.
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        Ok((num(11) + num(12)) / tck)
    }

    /// (VmRSS, VmHWM) in bytes.
    fn mem(&self) -> Result<(f64, f64), String> {
        let st = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map_err(|e| format!("/proc/{}/status: {e}", self.pid))?;
        let kb = |key: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |v| v * 1024.0)
        };
        Ok((kb("VmRSS:"), kb("VmHWM:")))
    }

    /// Polls `/metrics` every `every` until `done` holds; the metrics then.
    fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        every: Duration,
        done: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> Result<(BTreeMap<String, f64>, u64), String> {
        let t0 = Instant::now();
        let mut polls = 0;
        loop {
            self.alive()?;
            if let Some(m) = self.scrape() {
                polls += 1;
                if done(&m) {
                    return Ok((m, polls));
                }
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "{what}: not done within {timeout:?}; the daemon's stderr ends with:\n{}",
                    self.tail(20)
                ));
            }
            std::thread::sleep(every);
        }
    }
}

fn watch_events(m: &BTreeMap<String, f64>) -> f64 {
    ["apply", "delete"]
        .iter()
        .map(|t| {
            m.get(&format!(
                "csi_fencer_kube_watch_events_total{{type=\"{t}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
        })
        .sum()
}

fn cached(m: &BTreeMap<String, f64>) -> f64 {
    m.get("csi_fencer_volumeattachments")
        .copied()
        .unwrap_or(-1.0)
}

// ---------------------------------------------------------------- one round

#[derive(Default)]
struct Round {
    /// Figures in the order they are printed.
    fig: Vec<(&'static str, f64)>,
    notes: Vec<String>,
}

impl Round {
    fn put(&mut self, k: &'static str, v: f64) {
        self.fig.push((k, v));
    }

    fn get(&self, k: &str) -> Option<f64> {
        self.fig.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }
}

struct Setup {
    bin: PathBuf,
    objects: usize,
    nodes: usize,
    events: usize,
    rate: f64,
    timeout: Duration,
    tck: f64,
    relist: bool,
}

fn round(rt: &tokio::runtime::Runtime, s: &Setup, n: usize) -> Result<Round, String> {
    let mut r = Round::default();
    let mut cluster = Cluster::generate(s.objects, s.nodes);
    let (mock, api) = serve(rt, &cluster)?;
    let dir = std::env::temp_dir().join(format!("kube-bench-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    // Phase 1: the LIST.
    let t_spawn = Instant::now();
    let mut d = Daemon::spawn(&s.bin, &dir, api)?;
    let want = s.objects as f64;
    let (_, polls) = d.until("LIST", s.timeout, Duration::from_millis(20), |m| {
        cached(m) >= want
    })?;
    let t_loaded = Instant::now();
    let cpu_list = d.cpu(s.tck)?;
    let (rss_list, hwm_list) = d.mem()?;
    let served = mock.traffic();
    let first = served
        .first_list
        .ok_or("the daemon never listed VolumeAttachments")?;
    r.put(
        "list: wall s (spawn -> cached)",
        (t_loaded - t_spawn).as_secs_f64(),
    );
    r.put(
        "list: wall s (1st page -> cached)",
        (t_loaded - first).as_secs_f64(),
    );
    r.put(
        "list: wall s (1st -> last page served)",
        served.last_list.map_or(0.0, |l| (l - first).as_secs_f64()),
    );
    r.put("list: daemon CPU s", cpu_list);
    r.put("list: VmRSS MiB", rss_list / MIB);
    r.put("list: VmHWM MiB", hwm_list / MIB);
    r.put("list: pages", served.list_pages as f64);
    r.put("list: JSON MiB served", served.list_bytes as f64 / MIB);
    r.put("list: items served", served.list_items as f64);
    r.notes
        .push(format!("{polls} /metrics polls during the LIST"));

    // Settle: what an idle daemon with 100k cached costs.
    std::thread::sleep(Duration::from_secs(2));
    let (m0, _) = d.until("settle", s.timeout, Duration::ZERO, |_| true)?;
    let cpu0 = d.cpu(s.tck)?;
    std::thread::sleep(Duration::from_secs(3));
    let idle = d.cpu(s.tck)? - cpu0;
    r.put("idle: CPU ms per s", idle / 3.0 * 1000.0);
    let base = watch_events(&m0);

    // Phase 2: the burst.
    let burst = cluster.events(s.events);
    let bytes: usize = burst.iter().map(Change::line_len).sum();
    r.put(
        "burst: event JSON bytes avg",
        bytes as f64 / burst.len() as f64,
    );
    let (cpu_a, t_a) = (d.cpu(s.tck)?, Instant::now());
    mock.commit(&burst);
    let target = base + s.events as f64;
    let (_, polls) = d.until(
        "burst of watch events",
        s.timeout,
        Duration::from_millis(2),
        |m| watch_events(m) >= target,
    )?;
    let wall = t_a.elapsed().as_secs_f64();
    let cpu = d.cpu(s.tck)? - cpu_a;
    r.put("burst: wall s", wall);
    r.put("burst: events/s", s.events as f64 / wall);
    r.put("burst: x arrival rate", s.events as f64 / wall / s.rate);
    r.put("burst: daemon CPU s", cpu);
    r.put("burst: CPU us/event", cpu / s.events as f64 * 1e6);
    r.notes.push(format!(
        "{polls} /metrics polls (every 2 ms) during the burst"
    ));
    let (rss_burst, _) = d.mem()?;
    r.put("burst: VmRSS MiB", rss_burst / MIB);
    check_count(&mut d, &cluster, &mut r, "burst")?;

    // Phase 3: paced at the arrival rate.
    let paced = cluster.events(s.events);
    let (m1, _) = d.until("before paced", s.timeout, Duration::ZERO, |_| true)?;
    let base = watch_events(&m1);
    let (cpu_a, t_a) = (d.cpu(s.tck)?, Instant::now());
    let mut sent = 0;
    while sent < paced.len() {
        let due = ((t_a.elapsed().as_secs_f64() * s.rate) as usize + 1).min(paced.len());
        if due > sent {
            mock.commit(&paced[sent..due]);
            sent = due;
        }
        let next = Duration::from_secs_f64(sent as f64 / s.rate);
        if let Some(w) = next.checked_sub(t_a.elapsed()) {
            std::thread::sleep(w);
        }
    }
    let t_sent = Instant::now();
    let target = base + s.events as f64;
    d.until(
        "paced watch events",
        s.timeout,
        Duration::from_millis(2),
        |m| watch_events(m) >= target,
    )?;
    let wall = t_a.elapsed().as_secs_f64();
    let cpu = d.cpu(s.tck)? - cpu_a;
    r.put("paced: wall s", wall);
    r.put(
        "paced: lag ms after last event",
        t_sent.elapsed().as_secs_f64() * 1000.0,
    );
    r.put("paced: daemon CPU s", cpu);
    r.put("paced: CPU us/event", cpu / s.events as f64 * 1e6);
    r.put("paced: CPU utilisation %", cpu / wall * 100.0);
    check_count(&mut d, &cluster, &mut r, "paced")?;

    let (rss, hwm) = d.mem()?;
    r.put("end: VmRSS MiB", rss / MIB);
    r.put("end: VmHWM MiB (peak)", hwm / MIB);
    r.put(
        "end: VmRSS growth KiB per 1k events",
        (rss - rss_list) / 1024.0 / (2.0 * s.events as f64 / 1000.0),
    );

    // Phase 4: the watch expires (410 Gone) and the daemon relists.
    if s.relist {
        let (m, _) = d.until("before relist", s.timeout, Duration::ZERO, |_| true)?;
        let done = m.get(INIT_DONE).copied().unwrap_or(0.0) + 1.0;
        let (cpu_a, t_a) = (d.cpu(s.tck)?, Instant::now());
        mock.expire_watches();
        d.until(
            "relist after 410 Gone",
            s.timeout,
            Duration::from_millis(20),
            |m| m.get(INIT_DONE).copied().unwrap_or(0.0) >= done,
        )?;
        r.put("relist: wall s", t_a.elapsed().as_secs_f64());
        r.put("relist: daemon CPU s", d.cpu(s.tck)? - cpu_a);
        check_count(&mut d, &cluster, &mut r, "relist")?;
        let (rss, hwm) = d.mem()?;
        r.put("relist: VmRSS MiB", rss / MIB);
        r.put("relist: VmHWM MiB (peak)", hwm / MIB);
    }

    // What else the daemon did.
    {
        let sv = mock.traffic();
        let seen = mock.seen();
        let asked = |what: &dyn Fn(&Seen) -> bool| -> Vec<String> {
            seen.iter()
                .filter(|s| what(s))
                .map(|s| format!("{}?{} (Accept: {})", s.path, s.query, s.accept))
                .collect()
        };
        let watches = asked(&|s| s.query.contains("watch=true"));
        r.put("watch requests", watches.len() as f64);
        r.put("watch MiB served", sv.watch_bytes as f64 / MIB);
        r.notes.push(format!("watch requests: {watches:?}"));
        let nodes = asked(&|s| s.path == "/api/v1/nodes");
        r.notes.push(format!("node lists: {nodes:?}"));
        if !sv.unexpected.is_empty() {
            r.notes
                .push(format!("unexpected requests: {:?}", sv.unexpected));
        }
    }
    let log = lock(&d.log).clone();
    let bad: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    r.notes.push(format!(
        "daemon log: {} lines, {} WARN/ERROR{}",
        log.len(),
        bad.len(),
        bad.iter()
            .take(5)
            .map(|l| format!("\n      {l}"))
            .collect::<String>()
    ));
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r)
}

/// The daemon's cache holds exactly the live objects after a phase.
fn check_count(d: &mut Daemon, c: &Cluster, r: &mut Round, phase: &str) -> Result<(), String> {
    let want = c.live.len() as f64;
    let t0 = Instant::now();
    loop {
        let (m, _) = d.until(phase, Duration::from_secs(10), Duration::ZERO, |_| true)?;
        if cached(&m) == want {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(2) {
            r.notes.push(format!(
                "MISMATCH after {phase}: the daemon caches {} VolumeAttachments, the API server has {want}",
                cached(&m)
            ));
            return Err(format!(
                "after the {phase} phase the daemon caches {} VolumeAttachments, the API server has {want}",
                cached(&m)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- main

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|_| format!("{name}={v:?}: not a number")),
        Err(_) => Ok(default),
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs, {model}")
}

fn clk_tck() -> (f64, &'static str) {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .map_or((100.0, "assumed: getconf failed"), |t| {
            (t, "getconf CLK_TCK")
        })
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (med, s[0], s[s.len() - 1])
}

fn fmt(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn run() -> Result<(), String> {
    let s = Setup {
        bin: PathBuf::from(
            std::env::var("CSI_FENCER_BIN").unwrap_or_else(|_| "target/release/csi-fencer".into()),
        ),
        objects: env_num("OBJECTS", 100_000)?,
        nodes: env_num("NODES", 200)?,
        events: env_num("EVENTS", 10_000)?,
        rate: env_num("PACED_RATE", 1000.0)?,
        timeout: Duration::from_secs(env_num("PHASE_TIMEOUT", 300)?),
        tck: clk_tck().0,
        relist: env_num("RELIST", 1)? != 0,
    };
    let rounds: usize = env_num("ROUNDS", 3)?;
    if rounds == 0 || s.objects == 0 || s.nodes == 0 || s.events == 0 || s.rate <= 0.0 {
        return Err("ROUNDS, OBJECTS, NODES, EVENTS and PACED_RATE must be > 0".into());
    }
    if !s.bin.exists() {
        return Err(format!(
            "{}: no such file (cargo build --release --bin csi-fencer, or set CSI_FENCER_BIN)",
            s.bin.display()
        ));
    }
    let sample = Cluster::generate(1000, s.nodes);
    let avg = sample
        .live
        .iter()
        .map(|v| v.json(false, None).len())
        .sum::<usize>() as f64
        / 1000.0;
    println!("kube_bench: csi-fencer's VolumeAttachment watch cache against a mock API server");
    println!("  machine:  {}", machine());
    println!(
        "  daemon:   {} (node {NODE}, no attachment of its own)",
        s.bin.display()
    );
    println!(
        "  cluster:  {} VolumeAttachments on {} nodes, avg {avg:.0} B of JSON each as a list item",
        s.objects, s.nodes
    );
    println!(
        "  events:   {} as fast as possible, then {} at {}/s (60% MODIFIED, 20% ADDED, 20% DELETED)",
        s.events, s.events, s.rate
    );
    println!(
        "  CPU time: utime+stime of /proc/PID/stat at CLK_TCK={} ({}): {:.0} ms resolution",
        s.tck,
        clk_tck().1,
        1000.0 / s.tck
    );
    println!(
        "  client rate limit: --kube-api-qps {} --kube-api-burst {}",
        std::env::var("KUBE_API_QPS").unwrap_or_else(|_| "5 (default)".into()),
        std::env::var("KUBE_API_BURST").unwrap_or_else(|_| "10 (default)".into())
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let mut all = Vec::new();
    for n in 1..=rounds {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        println!("\nround {n}/{rounds} (unix time {t})");
        let r = round(&rt, &s, n)?;
        for (k, v) in &r.fig {
            println!("  {k:<40} {}", fmt(*v));
        }
        for note in &r.notes {
            println!("  - {note}");
        }
        all.push(r);
    }
    println!("\nsummary over {rounds} rounds (median [min .. max])");
    println!(
        "  {:<40} {:>10}  {:>10} .. {:>10}",
        "figure", "median", "min", "max"
    );
    for (k, _) in &all[0].fig {
        let v: Vec<f64> = all.iter().filter_map(|r| r.get(k)).collect();
        let (med, lo, hi) = stats(&v);
        println!(
            "  {k:<40} {:>10}  {:>10} .. {:>10}",
            fmt(med),
            fmt(lo),
            fmt(hi)
        );
    }
    let med = |k: &str| stats(&all.iter().filter_map(|r| r.get(k)).collect::<Vec<_>>()).0;
    let hwm = med("end: VmHWM MiB (peak)");
    let ratio = med("burst: x arrival rate");
    println!("\ngoals (medians; figures, not assertions):");
    println!(
        "  peak RSS {hwm:.1} MiB with {} cached (goal < 64 MiB): {}",
        s.objects,
        if hwm < 64.0 { "met" } else { "NOT met" }
    );
    println!(
        "  events processed at {:.0}/s = {ratio:.1}x the {}/s arrival rate (goal >= 10x): {}",
        med("burst: events/s"),
        s.rate,
        if ratio >= 10.0 { "met" } else { "NOT met" }
    );
    println!(
        "  for comparison: the LIST was {:.1} MiB of JSON, the daemon's peak RSS {hwm:.1} MiB",
        med("list: JSON MiB served")
    );
    if s.relist {
        let peak = med("relist: VmHWM MiB (peak)");
        println!(
            "  peak RSS including a relist after 410 Gone: {peak:.1} MiB (< 64 MiB: {})",
            if peak < 64.0 { "yes" } else { "NO" }
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("kube_bench: error: {e}");
        std::process::exit(1);
    }
}
