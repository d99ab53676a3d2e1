//! A real Kubernetes control plane for the tests: etcd and kube-apiserver
//! (and kube-controller-manager where a test needs its controllers) on
//! loopback, with fresh certificates and ports per plane, RBAC on. The
//! chart's CRD, ServiceAccount, ClusterRole and ClusterRoleBinding are
//! installed exactly as shipped (`deploy/csi-fencer.yaml`, which the chart
//! tests keep equal to the chart's render), and the daemon under test talks
//! with a token of that ServiceAccount: what the shipped RBAC does not grant
//! fails here as it would in a cluster.
//!
//! The binaries come from `KUBEBUILDER_ASSETS` (controller-runtime's
//! envtest convention) or, failing that, from the project's copy beside the
//! repository (`../shared/kube`, unpacked into `target/kube-bin`). Without
//! either the test fails and says how to get them; it never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::Request;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::rest::Rest;
use crate::testutil::TempDir;

/// The chart's ServiceAccount, as `deploy/csi-fencer.yaml` names it.
pub const SERVICE_ACCOUNT: (&str, &str) = ("kube-system", "csi-fencer");

/// A control plane, stopped when dropped.
pub struct Plane {
    dir: TempDir,
    bin: PathBuf,
    etcd: Child,
    apiserver: Option<Child>,
    kcm: Option<Child>,
    api_port: u16,
    etcd_url: String,
    /// The API server's address.
    pub url: String,
    /// A client in `system:masters`, for the tests' own objects.
    pub admin: kube::Client,
    rest: Rest,
    _slot: OwnedSemaphorePermit,
}

/// At most this many planes at once in one test process: each costs about
/// 400 MiB and a burst of CPU at start, and the machine has two cores.
fn slots() -> Arc<Semaphore> {
    static S: OnceLock<Arc<Semaphore>> = OnceLock::new();
    S.get_or_init(|| Arc::new(Semaphore::new(2))).clone()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding `etcd`, `kube-apiserver` and `kube-controller-manager`.
fn binaries() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(find_binaries)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_binaries() -> Result<PathBuf, String> {
    let has_all = |d: &Path| {
        ["etcd", "kube-apiserver"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Ok(d) = std::env::var("KUBEBUILDER_ASSETS") {
        let d = PathBuf::from(d);
        return if has_all(&d) {
            Ok(d)
        } else {
            Err(format!(
                "KUBEBUILDER_ASSETS={} holds no etcd and kube-apiserver",
                d.display()
            ))
        };
    }
    let shared = repo().join("../shared/kube");
    let dest = repo().join("target/kube-bin");
    if shared.join("unpack.sh").is_file() {
        let out = Command::new(shared.join("unpack.sh"))
            .arg(&dest)
            .output()
            .map_err(|e| format!("{}/unpack.sh: {e}", shared.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{}/unpack.sh failed: {}",
                shared.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        return Ok(dest);
    }
    Err(
        "the real-API-server tests need kube-apiserver and etcd v1.36 (kube-controller-manager \
         for garbage collection): set KUBEBUILDER_ASSETS to a directory holding them (for example \
         `setup-envtest use 1.36.x -p path`, or the binaries of a Kubernetes server release), or \
         put the project's copy at ../shared/kube beside the repository"
            .into(),
    )
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl) to make the control plane's certificates");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, the API server's serving certificate for 127.0.0.1, an admin
/// client certificate (system:masters) and the service-account key pair.
fn certificates(pki: &Path) {
    std::fs::create_dir_all(pki).expect("pki dir");
    std::fs::write(
        pki.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("san.ext");
    // rustls takes only X.509 v3 certificates: an extension makes one.
    std::fs::write(pki.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("client.ext");
    let steps = [
        "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.crt",
        "req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr",
        "x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out apiserver.crt",
        "req -newkey rsa:2048 -nodes -subj /O=system:masters/CN=admin -keyout admin.key -out admin.csr",
        "x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out admin.crt",
        "genrsa -out sa.key 2048",
        "rsa -in sa.key -pubout -out sa.pub",
    ];
    for step in steps {
        openssl(pki, &step.split_whitespace().collect::<Vec<_>>());
    }
}

/// A child process that dies with the thread that started it, so a killed
/// test run leaves nothing listening.
fn spawn(mut cmd: Command, log: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()))
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Plane {
    fn drop(&mut self) {
        for c in [self.kcm.as_mut(), self.apiserver.as_mut()]
            .into_iter()
            .flatten()
        {
            stop(c);
        }
        stop(&mut self.etcd);
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

impl Plane {
    /// etcd and kube-apiserver, ready, with the shipped CRD and RBAC installed.
    pub async fn start() -> Plane {
        let slot = slots().acquire_owned().await.expect("semaphore");
        let bin = binaries();
        let dir = TempDir::new("kube");
        certificates(&dir.path().join("pki"));
        let (client, peer) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client}");
        let mut cmd = Command::new(bin.join("etcd"));
        cmd.arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args(["--name", "test", "--log-level", "warn", "--unsafe-no-fsync"])
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")]);
        let etcd = spawn(cmd, &dir.path().join("etcd.log"));
        let api_port = free_port();
        let url = format!("https://127.0.0.1:{api_port}");
        let admin = client_from(&admin_kubeconfig(dir.path(), &url)).await;
        let mut plane = Plane {
            dir,
            bin,
            etcd,
            apiserver: None,
            kcm: None,
            api_port,
            etcd_url,
            url,
            rest: Rest(admin.clone()),
            admin,
            _slot: slot,
        };
        plane.start_apiserver().await;
        plane.install_shipped().await;
        plane
    }

    /// The path of file `f` of the plane's PKI (`ca.crt`, `admin.crt`, …).
    pub fn pki(&self, f: &str) -> String {
        self.dir.path().join("pki").join(f).display().to_string()
    }

    /// Starts the API server (again) on the same port and etcd; returns once
    /// it answers /readyz.
    pub async fn start_apiserver(&mut self) {
        let mut cmd = Command::new(self.bin.join("kube-apiserver"));
        cmd.args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={}", self.api_port))
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--tls-cert-file={}", self.pki("apiserver.crt")))
            .arg(format!(
                "--tls-private-key-file={}",
                self.pki("apiserver.key")
            ))
            .arg(format!("--client-ca-file={}", self.pki("ca.crt")))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", self.pki("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                self.pki("sa.key")
            ))
            .args(["--authorization-mode=RBAC", "--allow-privileged=true"])
            .args([
                "--service-cluster-ip-range=10.96.0.0/24",
                "--profiling=false",
            ])
            .arg(format!(
                "--cert-dir={}",
                self.dir.path().join("certs").display()
            ));
        let log = self.dir.path().join("apiserver.log");
        self.apiserver = Some(spawn(cmd, &log));
        self.wait_ready().await;
    }

    /// Stops the API server (etcd keeps the data).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            stop(&mut c);
        }
    }

    /// Starts kube-controller-manager (the garbage collector, among others).
    pub fn start_controllers(&mut self) {
        let kc = self.dir.path().join("admin.kubeconfig");
        let mut cmd = Command::new(self.bin.join("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={}", kc.display()))
            .args([
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
            ])
            .arg("--controllers=*")
            .arg(format!(
                "--service-account-private-key-file={}",
                self.pki("sa.key")
            ))
            .arg(format!("--root-ca-file={}", self.pki("ca.crt")))
            .arg("--use-service-account-credentials=false");
        self.kcm = Some(spawn(cmd, &self.dir.path().join("kcm.log")));
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let req = Request::get("/readyz").body(Vec::new()).expect("request");
            if self.admin.request_text(req).await.is_ok_and(|t| t == "ok") {
                return;
            }
            let dead = self
                .apiserver
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if dead || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("apiserver.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!("kube-apiserver did not become ready:\n{}", tail.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The shipped CRD, ServiceAccount, ClusterRole and ClusterRoleBinding.
    async fn install_shipped(&self) {
        let text = std::fs::read_to_string(repo().join("deploy/csi-fencer.yaml"))
            .expect("deploy/csi-fencer.yaml");
        let wanted = [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
        ];
        self.until("namespace kube-system", || async {
            self.get("/api/v1/namespaces/kube-system").await.is_some()
        })
        .await;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("yaml");
            if wanted.contains(&v["kind"].as_str().unwrap_or("")) {
                self.apply(&v).await;
            }
        }
        self.until("the VolumeReservation API served", || async {
            let req = Request::get("/apis/csi-fencer.io/v1alpha1/volumereservations")
                .body(Vec::new())
                .expect("request");
            self.admin.request_text(req).await.is_ok()
        })
        .await;
    }

    /// The failover controller's shipped RBAC (`deploy/failover.yaml`:
    /// ServiceAccount, roles and bindings).
    pub async fn install_failover_rbac(&self) {
        let text = std::fs::read_to_string(repo().join("deploy/failover.yaml"))
            .expect("deploy/failover.yaml");
        let kinds = [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ];
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("yaml");
            if kinds.contains(&v["kind"].as_str().unwrap_or("")) {
                self.apply(&v).await;
            }
        }
    }

    /// A client with a fresh token of the chart's ServiceAccount: the
    /// daemon's identity in a cluster.
    pub async fn daemon_client(&self) -> kube::Client {
        let (ns, sa) = SERVICE_ACCOUNT;
        self.token_client(ns, sa).await
    }

    /// A client with a fresh token of ServiceAccount `ns/sa`.
    pub async fn token_client(&self, ns: &str, sa: &str) -> kube::Client {
        self.token_client_via(ns, sa, &self.url).await
    }

    /// The API server's port on loopback.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// [`Plane::token_client`] reaching the API server at `url` (a proxy
    /// that a test can cut, say).
    pub async fn token_client_via(&self, ns: &str, sa: &str, url: &str) -> kube::Client {
        client_from(&self.token_kubeconfig(ns, sa, url).await).await
    }

    /// A kubeconfig file with a fresh token of ServiceAccount `ns/sa`, for
    /// the API server at `url` (for a `csi-fencer` process of a test).
    pub async fn token_kubeconfig(&self, ns: &str, sa: &str, url: &str) -> PathBuf {
        let token = self.token(ns, sa).await;
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: local, cluster: {{server: \"{}\", \
             certificate-authority: \"{}\"}}}}]\nusers: [{{name: sa, user: {{token: \"{token}\"}}}}]\n\
             contexts: [{{name: local, context: {{cluster: local, user: sa}}}}]\ncurrent-context: local\n",
            url,
            self.pki("ca.crt")
        );
        let path = self
            .dir
            .path()
            .join(format!("sa-{}.kubeconfig", free_port()));
        std::fs::write(&path, kc).expect("kubeconfig");
        path
    }

    /// A fresh token (one hour) of ServiceAccount `ns/sa`, by TokenRequest.
    pub async fn token(&self, ns: &str, sa: &str) -> String {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}});
        let req = Request::post(format!(
            "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
        ))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body).expect("json"))
        .expect("request");
        let answer: Value = self.admin.request(req).await.expect("TokenRequest");
        answer["status"]["token"]
            .as_str()
            .expect("token")
            .to_string()
    }
}

impl std::ops::Deref for Plane {
    type Target = Rest;

    fn deref(&self) -> &Rest {
        &self.rest
    }
}

fn admin_kubeconfig(dir: &Path, url: &str) -> PathBuf {
    let pki = dir.join("pki");
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: local, cluster: {{server: \"{url}\", \
         certificate-authority: \"{ca}\"}}}}]\nusers: [{{name: admin, user: {{client-certificate: \
         \"{crt}\", client-key: \"{key}\"}}}}]\ncontexts: [{{name: local, context: {{cluster: local, \
         user: admin}}}}]\ncurrent-context: local\n",
        ca = pki.join("ca.crt").display(),
        crt = pki.join("admin.crt").display(),
        key = pki.join("admin.key").display(),
    );
    let path = dir.join("admin.kubeconfig");
    std::fs::write(&path, kc).expect("admin.kubeconfig");
    path
}

async fn client_from(path: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}
