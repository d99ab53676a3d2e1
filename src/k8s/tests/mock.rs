//! The one mock API server, used by the tests and the benchmarks. It
//! answers with the API server's JSON shapes and status codes: Status
//! objects, LISTs paginated from a consistent snapshot (a continue token of
//! a compacted snapshot gets 410 Expired), watch streams from any
//! resourceVersion still in history (ERROR 410 Expired for an older one),
//! bookmarks, list items without kind and apiVersion as built-in lists carry
//! them, Nodes only as metadata. It records every request so tests can
//! assert on verbs, bodies and field managers, and counts what it served so
//! benchmarks can report it.
//!
//! Reached two ways: in-process as a tower service under the real kube
//! client (the kube-rs tower-test style, [`MockApi::client`]), or over
//! loopback HTTP for a daemon process ([`MockApi::serve`],
//! `examples/kube_bench.rs`). VolumeAttachments are kept serialized, so a
//! LIST of 100 000 of them costs a copy, not a serialization.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::{json, Value};

const VA_API_VERSION: &str = "storage.k8s.io/v1";
const VA_KIND: &str = "VolumeAttachment";
/// The API server sends a bookmark about once a minute.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// Largest piece written to a watch stream at once.
const CHUNK: usize = 256 * 1024;
/// LIST snapshots kept for continue tokens (the real server keeps them
/// until compaction, about five minutes).
const SNAPSHOTS: usize = 8;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Content-Type.
    pub content_type: String,
    /// Accept.
    pub accept: String,
    /// Body as JSON (Null when empty or not JSON).
    pub body: Value,
}

/// What the mock has served, for benchmarks.
#[derive(Debug, Clone, Default)]
#[allow(dead_code)]
pub struct Traffic {
    /// VolumeAttachment LIST pages.
    pub list_pages: u64,
    /// Items in them.
    pub list_items: u64,
    /// Their bytes of JSON.
    pub list_bytes: u64,
    /// When the first and the last page were served.
    pub first_list: Option<Instant>,
    pub last_list: Option<Instant>,
    /// Bytes written to watch streams.
    pub watch_bytes: u64,
    /// Requests the mock does not serve (answered 404 or 405).
    pub unexpected: Vec<String>,
}

/// A VolumeAttachment watch event, serialized ahead of time so a benchmark
/// can deliver thousands of them without serializing while it measures.
pub struct Change {
    rv: u64,
    name: String,
    line: Bytes,
    /// The list item after it (None: deleted).
    item: Option<Bytes>,
}

impl Change {
    /// `kind` (ADDED, MODIFIED, DELETED) of `obj`, which carries its
    /// resourceVersion.
    pub fn new(kind: &str, obj: &Value) -> Change {
        let mut typed = obj.clone();
        typed["kind"] = json!(VA_KIND);
        typed["apiVersion"] = json!(VA_API_VERSION);
        let meta = &obj["metadata"];
        Change {
            rv: meta["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("a Change needs a numeric resourceVersion: {meta}")),
            name: meta["name"].as_str().unwrap_or("").to_string(),
            line: event_line(kind, &typed),
            item: (kind != "DELETED").then(|| list_item(obj)),
        }
    }

    /// An event the caller serialized itself: `typed` is the object as an
    /// event carries it (with kind and apiVersion), `item` as a list item
    /// (None: deleted). Keeps the caller's key order, which `serde_json`
    /// would sort: the benchmark sends what the API server writes.
    #[allow(dead_code)]
    pub fn serialized(kind: &str, typed: &str, item: Option<String>) -> Change {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: String,
            resource_version: String,
        }
        #[derive(serde::Deserialize)]
        struct Head {
            metadata: Meta,
        }
        let head: Head = serde_json::from_str(typed).unwrap_or_else(|e| {
            panic!("not a VolumeAttachment with a name and resourceVersion: {e}")
        });
        Change {
            rv: head.metadata.resource_version.parse().unwrap_or_else(|e| {
                panic!("resourceVersion {:?}: {e}", head.metadata.resource_version)
            }),
            name: head.metadata.name,
            line: event_line(kind, typed),
            item: item.map(Bytes::from),
        }
    }

    /// Bytes of its watch event line.
    #[allow(dead_code)]
    pub fn line_len(&self) -> usize {
        self.line.len()
    }
}

/// A LIST snapshot's items by name.
type Snapshot = Arc<Vec<(String, Bytes)>>;

#[derive(Default)]
struct Db {
    rv: u64,
    /// name → list item (no kind, no apiVersion).
    vas: BTreeMap<String, Bytes>,
    /// (resourceVersion, event line) of every change, for watches.
    log: Vec<(u64, Bytes)>,
    /// Watches and continue tokens from before this get 410 Expired.
    compacted: u64,
    /// The resourceVersions of ERROR lines: a watch ends after one.
    expiries: BTreeSet<u64>,
    snapshots: BTreeMap<u64, Snapshot>,
    pvs: BTreeMap<String, Value>,
    scs: BTreeMap<String, Value>,
    nodes: Vec<Value>,
    vres: BTreeMap<String, Value>,
    seen: Vec<Seen>,
    traffic: Traffic,
    forbidden: BTreeSet<(String, String)>,
    down: bool,
    hidden: BTreeSet<String>,
    foreign_get: BTreeMap<String, String>,
}

impl Db {
    fn apply(&mut self, c: &Change) {
        assert!(
            c.rv > self.rv,
            "change of {} at resourceVersion {} is not after {}",
            c.name,
            c.rv,
            self.rv
        );
        self.rv = c.rv;
        match &c.item {
            Some(item) => self.vas.insert(c.name.clone(), item.clone()),
            None => self.vas.remove(&c.name),
        };
        self.log.push((c.rv, c.line.clone()));
    }
}

/// The mock; clones share state.
#[derive(Clone)]
pub struct MockApi {
    db: Arc<Mutex<Db>>,
    /// The newest resourceVersion in the log; wakes the watches.
    latest: tokio::sync::watch::Sender<u64>,
}

fn json_response(code: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: String) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        status_object(code, reason, &message).to_string(),
    )
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn ok(v: Value) -> Response<Body> {
    json_response(StatusCode::OK, v.to_string())
}

/// A watch event as the API server writes it: "type" before "object", which
/// lets a client decode the object in one pass (serde_json would sort the
/// keys, and "object" first makes the client buffer it).
fn event_line(kind: &str, obj: impl std::fmt::Display) -> Bytes {
    Bytes::from(format!("{{\"type\":{},\"object\":{obj}}}\n", json!(kind)))
}

/// `obj` as a built-in list carries it: without kind and apiVersion.
fn list_item(obj: &Value) -> Bytes {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    Bytes::from(o.to_string())
}

/// A stored list item as the object a GET or an event shows.
fn typed(item: &Bytes) -> Value {
    let mut v: Value = serde_json::from_slice(item).unwrap_or(Value::Null);
    v["kind"] = json!(VA_KIND);
    v["apiVersion"] = json!(VA_API_VERSION);
    v
}

fn query_param<'a>(q: &'a str, k: &str) -> Option<&'a str> {
    q.split('&')
        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
}

/// A continue token: opaque to clients, as the real server's.
fn continue_token(rv: u64, start: &str) -> String {
    let hex: String = start.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{rv}.{hex}")
}

fn parse_continue(token: &str) -> Option<(u64, String)> {
    let (rv, hex) = token.split_once('.')?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((rv.parse().ok()?, String::from_utf8(bytes).ok()?))
}

/// A VolumeAttachment of block.csi.example.com.
pub fn va(name: &str, uid: &str, node: &str, pv: &str, attached: bool) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name, "uid": uid, "creationTimestamp": "2026-11-23T10:00:00Z",
            "finalizers": ["external-attacher/block-csi-example-com"],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "storage.k8s.io/v1",
                 "time": "2026-11-23T10:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:attacher": {}, "f:nodeName": {}, "f:source": {"f:persistentVolumeName": {}}}}},
                {"manager": "csi-attacher", "operation": "Update", "apiVersion": "storage.k8s.io/v1",
                 "time": "2026-11-23T10:00:01Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:attached": {}}}}]},
        "spec": {"attacher": "block.csi.example.com", "nodeName": node,
                 "source": {"persistentVolumeName": pv}},
        "status": {"attached": attached}
    })
}

/// A CSI PV of block.csi.example.com for the simulated LUN.
pub fn pv(name: &str, modes: &[&str]) -> Value {
    pv_of(name, modes, "36001405000000001")
}

/// A CSI PV of block.csi.example.com whose volume handle is `handle`.
pub fn pv_of(name: &str, modes: &[&str], handle: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "annotations": {}},
        "spec": {"accessModes": modes, "capacity": {"storage": "10Gi"}, "volumeMode": "Block",
                 "storageClassName": "san-block",
                 "csi": {"driver": "block.csi.example.com", "volumeHandle": handle}}
    })
}

/// A Node as a metadata-only list carries it.
pub fn node_metadata(name: &str) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "5"}})
}

impl MockApi {
    /// An API server with these nodes and nothing else.
    pub fn new(nodes: &[&str]) -> Self {
        let mut db = Db {
            rv: 100,
            nodes: nodes.iter().map(|n| node_metadata(n)).collect(),
            ..Default::default()
        };
        db.scs.insert(
            "san-block".into(),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "san-block"}, "provisioner": "block.csi.example.com",
            "parameters": {"pool": "gold"}}),
        );
        MockApi {
            latest: tokio::sync::watch::Sender::new(db.rv),
            db: Arc::new(Mutex::new(db)),
        }
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Nodes a metadata LIST shows (PartialObjectMetadata items).
    #[allow(dead_code)]
    pub fn set_nodes(&self, items: Vec<Value>) {
        self.db().nodes = items;
    }

    /// VolumeAttachments that exist from the start, at `rv`: no watch event.
    #[allow(dead_code)]
    pub fn load_vas(&self, rv: u64, objs: impl IntoIterator<Item = Value>) {
        let mut db = self.db();
        for o in objs {
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            db.vas.insert(name, list_item(&o));
        }
        db.rv = db.rv.max(rv);
        self.latest.send_replace(db.rv);
    }

    /// As [`MockApi::load_vas`], with list items the caller serialized
    /// (its key order kept), by name.
    #[allow(dead_code)]
    pub fn load_serialized(&self, rv: u64, items: impl IntoIterator<Item = (String, String)>) {
        let mut db = self.db();
        db.vas
            .extend(items.into_iter().map(|(n, i)| (n, Bytes::from(i))));
        db.rv = db.rv.max(rv);
        self.latest.send_replace(db.rv);
    }

    /// The newest resourceVersion.
    #[allow(dead_code)]
    pub fn resource_version(&self) -> u64 {
        self.db().rv
    }

    /// Applies changes prepared ahead (resourceVersions above the current
    /// one, in order) and wakes the watches once.
    #[allow(dead_code)]
    pub fn commit(&self, changes: &[Change]) {
        let Some(last) = changes.last() else { return };
        let mut db = self.db();
        for c in changes {
            db.apply(c);
        }
        drop(db);
        self.latest.send_replace(last.rv);
    }

    fn change(&self, kind: &str, mut obj: Value) {
        let mut db = self.db();
        obj["metadata"]["resourceVersion"] = json!((db.rv + 1).to_string());
        let c = Change::new(kind, &obj);
        db.apply(&c);
        drop(db);
        self.latest.send_replace(c.rv);
    }

    /// Creates or updates a VolumeAttachment (a watch event follows).
    pub fn put_va(&self, obj: Value) {
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        let kind = if self.db().vas.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.change(kind, obj);
    }

    /// Creates a VolumeAttachment that watches have not delivered yet: a
    /// fresh LIST or GET shows it, a watch cache does not.
    pub fn put_va_unwatched(&self, mut obj: Value) {
        let mut db = self.db();
        db.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(db.rv.to_string());
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        db.vas.insert(name, list_item(&obj));
    }

    /// Deletes a VolumeAttachment (a watch event follows).
    pub fn delete_va(&self, name: &str) {
        let item = self.db().vas.get(name).cloned();
        if let Some(item) = item {
            self.change("DELETED", typed(&item));
        }
    }

    /// Ends every watch with ERROR 410 Expired, as the API server does when
    /// a resourceVersion left its history; watches and continue tokens from
    /// before now get 410 too.
    pub fn expire_watches(&self) {
        let mut db = self.db();
        db.rv += 1;
        let rv = db.rv;
        let st = status_object(
            410,
            "Expired",
            &format!("too old resource version: {} ({rv})", rv - 1),
        );
        db.log.push((rv, event_line("ERROR", &st)));
        db.compacted = rv;
        db.expiries.insert(rv);
        db.snapshots.clear();
        drop(db);
        self.latest.send_replace(rv);
    }

    /// Deletes every VolumeAttachment while the watch history is compacted:
    /// no event is delivered, and watches end with 410 Expired.
    pub fn delete_va_unseen_and_expire_watches(&self) -> Vec<String> {
        let names = {
            let mut db = self.db();
            let names = db.vas.keys().cloned().collect();
            db.vas.clear();
            names
        };
        self.expire_watches();
        names
    }

    /// Adds a PV.
    pub fn put_pv(&self, obj: Value) {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        self.db().pvs.insert(name, obj);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.db().seen.clone()
    }

    /// What was served so far.
    #[allow(dead_code)]
    pub fn traffic(&self) -> Traffic {
        self.db().traffic.clone()
    }

    /// How many requests so far satisfy `f`.
    pub fn count(&self, f: impl Fn(&Seen) -> bool) -> usize {
        self.db().seen.iter().filter(|s| f(s)).count()
    }

    /// The last request whose path ends with `suffix`.
    pub fn last(&self, suffix: &str) -> Option<Seen> {
        self.db()
            .seen
            .iter()
            .rfind(|s| s.path.ends_with(suffix))
            .cloned()
    }

    /// RBAC: `verb` on `resource` is refused with 403.
    pub fn forbid(&self, verb: &str, resource: &str) {
        self.db().forbidden.insert((verb.into(), resource.into()));
    }

    /// Every request fails at the connection level while `down`.
    pub fn set_down(&self, down: bool) {
        self.db().down = down;
    }

    /// A GET of this VolumeAttachment answers 404 (the watch still shows it).
    pub fn hide_on_get(&self, name: &str) {
        self.db().hidden.insert(name.into());
    }

    /// A GET of this VolumeAttachment shows it on another node.
    pub fn get_shows_node(&self, name: &str, node: &str) {
        self.db().foreign_get.insert(name.into(), node.into());
    }

    /// The Events created so far (bodies).
    pub fn events(&self) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.ends_with("/events") && s.method == "POST")
            .map(|s| s.body)
            .collect()
    }
}

#[path = "mock_answer.rs"]
mod answer;
