//! The API server as the daemon uses it: fresh reads for authority (I1, I2),
//! the PV lookup with a small cache, the Node list, all bounded by
//! `--timeout` and recorded in [`ApiHealth`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use kube::Client;

use super::api::{call, ApiHealth, Call, KubeError};
use super::store::{SlimVa, VaStore};
use super::volume::{storage_class, volume_info, VolumeInfo};
use crate::source::rules::DriverRule;

/// How long a PV's reading is reused (its CSI source is immutable; only
/// annotations and the StorageClass can change).
const VOLUME_TTL: Duration = Duration::from_secs(30);

/// One live attachment from a fresh list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fresh {
    /// The VolumeAttachment's name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// Its node.
    pub node: String,
    /// Being detached (deletionTimestamp set).
    pub deleting: bool,
    /// `status.attached`.
    pub attached: bool,
    /// The PV it attaches: another PV than the one asked about when both
    /// are the same LUN (static PVs sharing a volume handle).
    pub pv: String,
}

/// The name Kubernetes gives the VolumeAttachment of a CSI volume on a node:
/// `csi-` and the SHA-256 of volume handle, driver and node name (the
/// attach/detach controller's rule). Two PVs with one handle share it.
pub fn attachment_name(driver: &str, handle: &str, node: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{handle}{driver}{node}").as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("csi-{hex}")
}

/// The PVs a fresh list looks for, with their CSI (driver, handle) when known.
type Wanted = BTreeMap<String, Option<(String, String)>>;

/// Why a volume could not be read.
#[derive(Debug, Clone)]
pub enum VolumeError {
    /// The API call failed.
    Api(Arc<KubeError>),
    /// The PV is missing or does not say which LUN it is.
    Invalid(String),
}

impl std::fmt::Display for VolumeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeError::Api(e) => write!(f, "{e}"),
            VolumeError::Invalid(why) => f.write_str(why),
        }
    }
}

/// A PV's reading and when it was made.
type Cached = (Instant, Result<VolumeInfo, VolumeError>);

/// Shared Kubernetes state of the daemon.
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// This node.
    pub node: String,
    /// Bound of one API call (`--timeout`).
    pub timeout: Duration,
    /// Reachability.
    pub health: Arc<ApiHealth>,
    /// The drivers fenced.
    pub rules: Vec<DriverRule>,
    /// The compact watch cache.
    pub store: Mutex<VaStore>,
    volumes: tokio::sync::Mutex<HashMap<String, Cached>>,
    /// How long a PV's reading is reused (30 s; shorter in tests).
    pub volume_ttl: Duration,
    fresh: FreshLists,
}

/// What a fresh list found, per PV asked for.
type FreshByPv = HashMap<String, Vec<Fresh>>;

/// Coalesces fresh lists: a list serves every caller that asked before it
/// started (it is fresh for them), so a failover of many volumes at once
/// costs one pass over the VolumeAttachments, not one per volume.
#[derive(Default)]
struct FreshLists {
    /// The PVs callers are waiting for.
    wanted: Mutex<Wanted>,
    /// The last list: when it started and what it found for the wanted PVs.
    last: tokio::sync::Mutex<(Option<Instant>, FreshByPv)>,
}

impl Cluster {
    /// A cluster view for `node`, fencing volumes of `rules`.
    pub fn new(client: Client, node: String, timeout: Duration, rules: Vec<DriverRule>) -> Self {
        let store = VaStore::new(rules.iter().map(|r| r.name.clone()));
        Cluster {
            client,
            node,
            timeout,
            health: Arc::new(ApiHealth::default()),
            rules,
            store: Mutex::new(store),
            volumes: tokio::sync::Mutex::new(HashMap::new()),
            volume_ttl: VOLUME_TTL,
            fresh: FreshLists::default(),
        }
    }

    fn drivers(&self) -> BTreeSet<&str> {
        self.rules.iter().map(|r| r.name.as_str()).collect()
    }

    /// A fresh GET of one VolumeAttachment; `None` on 404.
    pub async fn get_va(&self, name: &str) -> Result<Option<SlimVa>, KubeError> {
        let api: Api<SlimVa> = Api::all(self.client.clone());
        call(
            &self.health,
            self.timeout,
            Call::GetVolumeAttachment,
            api.get_opt(name),
        )
        .await
    }

    /// Every attachment of `pv`'s LUN by the fenced drivers, from a fresh
    /// (quorum, paginated) list that started after this call. With `csi`
    /// (driver, handle) it also finds the attachments of other PVs with the
    /// same handle, by their names. Liveness asks this only when it has no
    /// name to GET by; a release, when the PV cannot be read.
    pub async fn fresh_attachments(
        &self,
        pv: &str,
        csi: Option<&(String, String)>,
    ) -> Result<Vec<Fresh>, KubeError> {
        let asked = Instant::now();
        if let Ok(mut w) = self.fresh.wanted.lock() {
            w.insert(pv.to_string(), csi.cloned());
        }
        let mut last = self.fresh.last.lock().await;
        if last.0.is_some_and(|started| started >= asked) {
            if let Some(found) = last.1.get(pv) {
                return Ok(found.clone());
            }
        }
        let mut wanted = self
            .fresh
            .wanted
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        // Never answer for a PV the list did not look for: an empty answer
        // would mean "no live node" and let a live key be preempted (I2).
        wanted.insert(pv.to_string(), csi.cloned());
        let started = Instant::now();
        let found = self.list_attachments_of(&wanted).await?;
        let mine = found.get(pv).cloned().unwrap_or_default();
        *last = (Some(started), found);
        Ok(mine)
    }

    /// One quorum list of every VolumeAttachment, keeping those of `wanted`.
    async fn list_attachments_of(&self, wanted: &Wanted) -> Result<FreshByPv, KubeError> {
        let api: &Api<SlimVa> = &Api::all(self.client.clone());
        let drivers = self.drivers();
        let mut out: FreshByPv = wanted.keys().map(|p| (p.clone(), Vec::new())).collect();
        let mut by_name = SameLun::new(wanted);
        self.each_page(
            Call::ListVolumeAttachments,
            |lp| async move { api.list(&lp).await },
            |page| {
                for va in page.items {
                    let s = &va.spec;
                    if !drivers.contains(s.attacher.as_str()) {
                        continue;
                    }
                    let pv = s.source.persistent_volume_name.as_deref().unwrap_or("");
                    let name = va.metadata.name.clone().unwrap_or_default();
                    let of = match out.contains_key(pv) {
                        true => Some(pv.to_string()),
                        false => by_name.of(&s.attacher, &s.node_name, &name),
                    };
                    let Some(list) = of.and_then(|p| out.get_mut(&p)) else {
                        continue;
                    };
                    list.push(Fresh {
                        name,
                        uid: va.metadata.uid.clone().unwrap_or_default(),
                        node: s.node_name.clone(),
                        deleting: va.metadata.deletion_timestamp.is_some(),
                        attached: va.status.as_ref().is_some_and(|x| x.attached),
                        pv: pv.to_string(),
                    });
                }
            },
        )
        .await?;
        Ok(out)
    }

    /// Walks a paginated list (500 per page, as client-go does), handing each page to `take`.
    async fn each_page<K, Fut>(
        &self,
        which: Call,
        list: impl Fn(ListParams) -> Fut,
        mut take: impl FnMut(kube::core::ObjectList<K>),
    ) -> Result<(), KubeError>
    where
        K: Clone,
        Fut: std::future::Future<Output = Result<kube::core::ObjectList<K>, kube::Error>>,
    {
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().limit(500);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let page = call(&self.health, self.timeout, which, list(lp)).await?;
            token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
            take(page);
            if token.is_none() {
                return Ok(());
            }
        }
    }

    /// The volume behind PV `name`, cached for a while. While the API server
    /// is unreachable the last good reading is used (a PV's LUN never
    /// changes), so held volumes stay monitored (I7).
    ///
    /// No lock is held while asking, and while the API server is known to be
    /// unreachable a volume read before is not asked again: during a
    /// partition each request costs `--timeout`, and one after another they
    /// would starve the monitor of the node that needs it most.
    pub async fn volume(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        if let Some((at, v)) = self.volumes.lock().await.get(name) {
            let known = v.is_ok();
            if at.elapsed() < self.volume_ttl || (known && self.health.is_down()) {
                return v.clone();
            }
        }
        let v = self.read_volume(name).await;
        let mut cache = self.volumes.lock().await;
        if matches!(&v, Err(VolumeError::Api(e)) if e.unreachable()) {
            if let Some((_, Ok(old))) = cache.get(name) {
                return Ok(old.clone());
            }
            return v;
        }
        cache.insert(name.to_string(), (Instant::now(), v.clone()));
        v
    }

    async fn read_volume(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let api = |e| VolumeError::Api(Arc::new(e));
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = call(
            &self.health,
            self.timeout,
            Call::GetPersistentVolume,
            pvs.get_opt(name),
        )
        .await
        .map_err(api)?
        .ok_or_else(|| VolumeError::Invalid(format!("PersistentVolume {name} not found")))?;
        let params = match storage_class(&pv) {
            Some(sc) => {
                let scs: Api<StorageClass> = Api::all(self.client.clone());
                call(
                    &self.health,
                    self.timeout,
                    Call::GetStorageClass,
                    scs.get_opt(&sc),
                )
                .await
                .map_err(api)?
                .and_then(|c| c.parameters)
            }
            None => None,
        };
        volume_info(&pv, params.as_ref(), &self.rules)
            .map_err(|why| VolumeError::Invalid(format!("PersistentVolume {name}: {why}")))
    }

    /// Every Node's name (metadata only, paginated).
    pub async fn node_names(&self) -> Result<Vec<String>, KubeError> {
        let api: &Api<k8s_openapi::api::core::v1::Node> = &Api::all(self.client.clone());
        let mut names = Vec::new();
        self.each_page(
            Call::ListNodes,
            |lp| async move { api.list_metadata(&lp).await },
            |page| {
                names.extend(page.items.into_iter().filter_map(|n| n.metadata.name));
            },
        )
        .await?;
        Ok(names)
    }
}

/// Finds which wanted PV's LUN a VolumeAttachment of another PV attaches,
/// by its name: the names each node would give the wanted handles are worked
/// out once per node seen, so a list costs one hash per node and handle.
struct SameLun<'a> {
    wanted: &'a Wanted,
    names: HashMap<String, HashMap<String, String>>,
}

impl<'a> SameLun<'a> {
    fn new(wanted: &'a Wanted) -> Self {
        SameLun {
            wanted,
            names: HashMap::new(),
        }
    }

    /// The wanted PV whose handle `name` (by `driver`, on `node`) attaches.
    fn of(&mut self, driver: &str, node: &str, name: &str) -> Option<String> {
        if self.wanted.values().all(Option::is_none) {
            return None;
        }
        let key = format!("{driver}\0{node}");
        let wanted = self.wanted;
        let names = self.names.entry(key).or_insert_with(|| {
            wanted
                .iter()
                .filter_map(|(pv, csi)| {
                    let (d, h) = csi.as_ref().filter(|(d, _)| d == driver)?;
                    Some((attachment_name(d, h, node), pv.clone()))
                })
                .collect()
        });
        names.get(name).cloned()
    }
}

/// Two node names whose keys collide, if any (docs/design.md §4: refuse to run).
pub fn key_collision(
    tag: crate::fence::keys::ClusterTag,
    nodes: &[String],
) -> Option<(String, String)> {
    first_collision(nodes, |n| tag.key_for(n))
}

fn first_collision<K: Ord>(nodes: &[String], key: impl Fn(&str) -> K) -> Option<(String, String)> {
    let mut seen: BTreeMap<K, &String> = BTreeMap::new();
    for n in nodes {
        if let Some(other) = seen.insert(key(n), n) {
            if other != n {
                return Some((other.clone(), n.clone()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collision_names_both_nodes_and_a_repeated_name_is_none() {
        let names: Vec<String> = ["node-a", "node-b", "node-c"].map(String::from).to_vec();
        // A key function that collides on the last letter's parity.
        let parity = |n: &str| n.as_bytes()[n.len() - 1] % 2;
        assert_eq!(
            first_collision(&names, parity),
            Some(("node-a".to_string(), "node-c".to_string()))
        );
        let tag = crate::fence::keys::ClusterTag::new(0x7e57).unwrap();
        assert_eq!(key_collision(tag, &names), None);
        let twice: Vec<String> = ["n", "n"].map(String::from).to_vec();
        assert_eq!(key_collision(tag, &twice), None);
    }
}
