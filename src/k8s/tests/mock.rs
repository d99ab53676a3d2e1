//! A mock API server in the kube-rs tower-test style: an in-process tower
//! service the real kube client talks to, answering with the API server's
//! JSON shapes and status codes (Status objects, paginated lists, watch
//! streams with bookmarks, ERROR 410 Expired), recording every request so
//! tests can assert on verbs, bodies and field managers.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast;

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
    /// Body as JSON (Null when empty or not JSON).
    pub body: Value,
}

#[derive(Default)]
struct Db {
    rv: u64,
    vas: BTreeMap<String, Value>,
    /// (resourceVersion, type, object) of every change, for watches.
    log: Vec<(u64, String, Value)>,
    /// Watches asking for a resourceVersion at or below this get 410 Expired.
    compacted: u64,
    pvs: BTreeMap<String, Value>,
    scs: BTreeMap<String, Value>,
    nodes: Vec<String>,
    vres: BTreeMap<String, Value>,
    seen: Vec<Seen>,
    forbidden: BTreeSet<(String, String)>,
    down: bool,
    hidden: BTreeSet<String>,
    foreign_get: BTreeMap<String, String>,
}

/// The mock; clones share state.
#[derive(Clone)]
pub struct MockApi {
    db: Arc<Mutex<Db>>,
    changes: broadcast::Sender<(u64, String, Value)>,
}

fn status(code: u16, reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn ok(v: Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn query_param<'a>(q: &'a str, k: &str) -> Option<&'a str> {
    q.split('&')
        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
}

/// A realistic VolumeAttachment, with managedFields.
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

impl MockApi {
    /// An API server with these nodes and nothing else.
    pub fn new(nodes: &[&str]) -> Self {
        let db = Db {
            rv: 100,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        let mut db = db;
        db.scs.insert(
            "san-block".into(),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "san-block"}, "provisioner": "block.csi.example.com",
            "parameters": {"pool": "gold"}}),
        );
        MockApi {
            db: Arc::new(Mutex::new(db)),
            changes: broadcast::channel(1024).0,
        }
    }

    /// A kube client talking to this mock in-process.
    pub fn client(&self) -> kube::Client {
        self.client_cut_by(Arc::new(AtomicBool::new(false)))
    }

    /// A client whose node is cut off from the API server while `cut` is set
    /// (a network partition of one node; the others still reach it).
    pub fn client_cut_by(&self, cut: Arc<AtomicBool>) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let me = me.clone();
            let cut = cut.load(Ordering::Relaxed);
            async move {
                if cut {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no route to host",
                    ));
                }
                me.handle(req).await
            }
        });
        kube::Client::new(svc, "default")
    }

    /// The mock as a tower service, for a client with layers of its own
    /// (`examples/acquire_bench.rs` puts the daemon's rate limit in front).
    #[allow(dead_code)]
    pub fn service(
        &self,
    ) -> tower::util::BoxCloneService<Request<kube::client::Body>, Response<Body>, std::io::Error>
    {
        let me = self.clone();
        tower::util::BoxCloneService::new(tower::service_fn(
            move |req: Request<kube::client::Body>| {
                let me = me.clone();
                async move { me.handle(req).await }
            },
        ))
    }

    /// A client whose requests hang while `cut` is set, as across a network
    /// partition (no answer at all, until the caller's timeout); counts the
    /// requests sent meanwhile in `hung`.
    pub fn client_hung_by(
        &self,
        cut: Arc<AtomicBool>,
        hung: Arc<std::sync::atomic::AtomicUsize>,
    ) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let me = me.clone();
            let cut = cut.load(Ordering::Relaxed);
            let hung = Arc::clone(&hung);
            async move {
                if cut {
                    hung.fetch_add(1, Ordering::Relaxed);
                    std::future::pending::<()>().await;
                }
                me.handle(req).await
            }
        });
        kube::Client::new(svc, "default")
    }

    fn change(&self, kind: &str, obj: Value) {
        let mut db = self.db.lock().unwrap();
        db.rv += 1;
        let rv = db.rv;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if kind == "DELETED" {
            db.vas.remove(&name);
        } else {
            db.vas.insert(name, obj.clone());
        }
        db.log.push((rv, kind.to_string(), obj.clone()));
        let _ = self.changes.send((rv, kind.to_string(), obj));
    }

    /// Creates or updates a VolumeAttachment (a watch event follows).
    pub fn put_va(&self, obj: Value) {
        let kind = if self
            .db
            .lock()
            .unwrap()
            .vas
            .contains_key(obj["metadata"]["name"].as_str().unwrap_or(""))
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.change(kind, obj);
    }

    /// Creates a VolumeAttachment that watches have not delivered yet: a
    /// fresh LIST or GET shows it, a watch cache does not.
    pub fn put_va_unwatched(&self, obj: Value) {
        let mut db = self.db.lock().unwrap();
        db.rv += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(db.rv.to_string());
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        db.vas.insert(name, obj);
    }

    /// Deletes a VolumeAttachment (a watch event follows).
    pub fn delete_va(&self, name: &str) {
        let obj = self.db.lock().unwrap().vas.get(name).cloned();
        if let Some(o) = obj {
            self.change("DELETED", o);
        }
    }

    /// Deletes a VolumeAttachment while the watch history is compacted: no
    /// event is delivered, and watches from before it get 410 Expired.
    pub fn delete_va_unseen_and_expire_watches(&self) -> Vec<String> {
        let mut db = self.db.lock().unwrap();
        let names: Vec<String> = db.vas.keys().cloned().collect();
        db.vas.clear();
        db.rv += 1;
        db.compacted = db.rv;
        let _ = self.changes.send((0, "EXPIRE".into(), Value::Null));
        names
    }

    /// Adds a PV.
    pub fn put_pv(&self, obj: Value) {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        self.db.lock().unwrap().pvs.insert(name, obj);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.db.lock().unwrap().seen.clone()
    }

    /// How many requests so far satisfy `f`.
    pub fn count(&self, f: impl Fn(&Seen) -> bool) -> usize {
        self.db.lock().unwrap().seen.iter().filter(|s| f(s)).count()
    }

    /// The last request whose path ends with `suffix`.
    pub fn last(&self, suffix: &str) -> Option<Seen> {
        self.seen().into_iter().rfind(|s| s.path.ends_with(suffix))
    }

    /// RBAC: `verb` on `resource` is refused with 403.
    pub fn forbid(&self, verb: &str, resource: &str) {
        self.db
            .lock()
            .unwrap()
            .forbidden
            .insert((verb.into(), resource.into()));
    }

    /// Every request fails at the connection level while `down`.
    pub fn set_down(&self, down: bool) {
        self.db.lock().unwrap().down = down;
    }

    /// A GET of this VolumeAttachment answers 404 (the watch still shows it).
    pub fn hide_on_get(&self, name: &str) {
        self.db.lock().unwrap().hidden.insert(name.into());
    }

    /// A GET of this VolumeAttachment shows it on another node.
    pub fn get_shows_node(&self, name: &str, node: &str) {
        self.db
            .lock()
            .unwrap()
            .foreign_get
            .insert(name.into(), node.into());
    }

    /// The Events created so far (bodies).
    pub fn events(&self) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.ends_with("/events") && s.method == "POST")
            .map(|s| s.body)
            .collect()
    }

    async fn handle(
        &self,
        req: Request<kube::client::Body>,
    ) -> Result<Response<Body>, std::io::Error> {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        let bytes: Bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let seen = Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            content_type: parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        };
        {
            let mut db = self.db.lock().unwrap();
            if db.down {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                ));
            }
            db.seen.push(seen.clone());
        }
        Ok(self.route(&seen))
    }

    fn route(&self, s: &Seen) -> Response<Body> {
        let Some((group, resource, verb)) =
            csi_fencer::k8s::api::classify(&s.method, &s.path, &s.query)
        else {
            return status(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({})",
                    s.path
                ),
            );
        };
        let name = s.path.rsplit('/').next().unwrap_or("").to_string();
        if self
            .db
            .lock()
            .unwrap()
            .forbidden
            .contains(&(verb.clone(), resource.clone()))
        {
            let g = if group.is_empty() {
                String::new()
            } else {
                format!(".{group}")
            };
            return status(403, "Forbidden", format!(
                "{resource}{g} is forbidden: User \"system:serviceaccount:kube-system:csi-fencer\" cannot {verb} resource \"{resource}\" in API group \"{group}\" at the cluster scope"));
        }
        match (verb.as_str(), resource.as_str()) {
            ("list", "nodes") => self.list_nodes(),
            ("list", "volumeattachments") => self.list_vas(&s.query),
            ("watch", "volumeattachments") => self.watch_vas(&s.query),
            ("get", "volumeattachments") => self.get_va(&name),
            ("get", "persistentvolumes") => self.get_from(|db| &db.pvs, &name, "persistentvolumes"),
            ("get", "storageclasses") => {
                self.get_from(|db| &db.scs, &name, "storageclasses.storage.k8s.io")
            }
            ("get", "volumereservations") => {
                self.get_from(|db| &db.vres, &name, "volumereservations.csi-fencer.io")
            }
            ("patch", "volumereservations") | ("patch", "volumereservations/status") => {
                self.apply(s, &resource)
            }
            ("create", "events") | ("patch", "events") => {
                let mut r = ok(s.body.clone());
                if verb == "create" {
                    *r.status_mut() = StatusCode::CREATED;
                }
                r
            }
            _ => status(
                405,
                "MethodNotAllowed",
                format!("{verb} {resource} is not supported by the mock"),
            ),
        }
    }

    fn list_nodes(&self) -> Response<Body> {
        let db = self.db.lock().unwrap();
        let items: Vec<Value> = db
            .nodes
            .iter()
            .map(|n| {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"name": n, "uid": format!("uid-{n}"), "resourceVersion": "5"}})
            })
            .collect();
        ok(
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": db.rv.to_string()}, "items": items}),
        )
    }

    fn list_vas(&self, q: &str) -> Response<Body> {
        let db = self.db.lock().unwrap();
        let limit: usize = query_param(q, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(usize::MAX);
        let start: usize = query_param(q, "continue")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let all: Vec<&Value> = db.vas.values().collect();
        let page: Vec<Value> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|v| (*v).clone())
            .collect();
        let next = start + page.len();
        let mut meta = json!({"resourceVersion": db.rv.to_string()});
        if next < all.len() {
            meta["continue"] = json!(next.to_string());
        }
        ok(
            json!({"kind": "VolumeAttachmentList", "apiVersion": "storage.k8s.io/v1", "metadata": meta, "items": page}),
        )
    }

    fn get_va(&self, name: &str) -> Response<Body> {
        let db = self.db.lock().unwrap();
        let not_found = || {
            status(
                404,
                "NotFound",
                format!("volumeattachments.storage.k8s.io \"{name}\" not found"),
            )
        };
        if db.hidden.contains(name) {
            return not_found();
        }
        match db.vas.get(name) {
            Some(v) => {
                let mut v = v.clone();
                if let Some(n) = db.foreign_get.get(name) {
                    v["spec"]["nodeName"] = json!(n);
                }
                ok(v)
            }
            None => not_found(),
        }
    }

    fn get_from(
        &self,
        table: impl Fn(&Db) -> &BTreeMap<String, Value>,
        name: &str,
        what: &str,
    ) -> Response<Body> {
        let db = self.db.lock().unwrap();
        match table(&db).get(name) {
            Some(v) => ok(v.clone()),
            None => status(404, "NotFound", format!("{what} \"{name}\" not found")),
        }
    }

    fn apply(&self, s: &Seen, resource: &str) -> Response<Body> {
        let name = s
            .path
            .trim_end_matches("/status")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        if s.content_type != "application/apply-patch+yaml"
            || query_param(&s.query, "fieldManager").is_none()
        {
            return status(
                415,
                "UnsupportedMediaType",
                "server-side apply needs application/apply-patch+yaml and a fieldManager".into(),
            );
        }
        let mut db = self.db.lock().unwrap();
        if resource.ends_with("/status") && !db.vres.contains_key(&name) {
            return status(
                404,
                "NotFound",
                format!("volumereservations.csi-fencer.io \"{name}\" not found"),
            );
        }
        let creates = !db.vres.contains_key(&name);
        if creates
            && db
                .forbidden
                .contains(&("create".into(), resource.to_string()))
        {
            // As the real server: an apply that makes the object is a create.
            return status(403, "Forbidden", format!(
                "volumereservations.csi-fencer.io \"{name}\" is forbidden: User \"system:serviceaccount:kube-system:csi-fencer\" cannot create resource \"volumereservations\" in API group \"csi-fencer.io\" at the cluster scope"));
        }
        let obj = db.vres.entry(name).or_insert_with(|| s.body.clone());
        if let Some(st) = s.body.get("status") {
            obj["status"] = st.clone();
        }
        ok(obj.clone())
    }

    fn watch_vas(&self, q: &str) -> Response<Body> {
        let from: u64 = query_param(q, "resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let bookmarks = query_param(q, "allowWatchBookmarks") == Some("true");
        let (backlog, rv, expired) = {
            let db = self.db.lock().unwrap();
            let b: Vec<(u64, String, Value)> =
                db.log.iter().filter(|e| e.0 > from).cloned().collect();
            (b, db.rv, from < db.compacted)
        };
        let line = |t: &str, o: &Value| {
            Ok::<_, Infallible>(Bytes::from(format!(
                "{}\n",
                json!({"type": t, "object": o})
            )))
        };
        if expired {
            let st = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({rv})"), "reason": "Expired", "code": 410});
            return ok_stream(futures_util::stream::iter(vec![line("ERROR", &st)]));
        }
        let mut first: Vec<Result<Bytes, Infallible>> =
            backlog.iter().map(|(_, t, o)| line(t, o)).collect();
        if bookmarks {
            first.push(line("BOOKMARK", &json!({"kind": "VolumeAttachment", "apiVersion": "storage.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}})));
        }
        let rx = self.changes.subscribe();
        let live = futures_util::stream::unfold(rx, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok((_, t, _)) if t == "EXPIRE" => return None,
                    Ok((r, t, o)) if r > rv => {
                        return Some((
                            Ok(Bytes::from(format!(
                                "{}\n",
                                json!({"type": t, "object": o})
                            ))),
                            rx,
                        ))
                    }
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        });
        use futures_util::StreamExt;
        ok_stream(futures_util::stream::iter(first).chain(live))
    }
}

fn ok_stream(
    s: impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response<Body> {
    let mut r = Response::new(Body::from_stream(s));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}
