//! What a test does to the API server as its administrator: server-side
//! apply of objects and of a VolumeAttachment's status, GET, DELETE, and
//! polling. Shared by the real-server unit tests ([`super::plane`]) and the
//! VM rig's Kubernetes failover, which reaches the host's API server from
//! the guest.

use std::time::Duration;

use http::Request;
use serde_json::{json, Value};

/// A client in `system:masters`, for the tests' own objects.
#[derive(Clone)]
pub struct Rest(pub kube::Client);

impl Rest {
    /// SSA of one object as the admin; panics with the server's answer.
    pub async fn apply(&self, obj: &Value) {
        let path = object_path(obj);
        let body = serde_json::to_vec(obj).expect("json");
        let req = Request::patch(format!("{path}?fieldManager=test&force=true"))
            .header("Content-Type", "application/apply-patch+yaml")
            .body(body)
            .expect("request");
        if let Err(e) = self.0.request_text(req).await {
            panic!("apply {path}: {e}");
        }
    }

    /// SSA of one object's status as the admin; returns the Warning headers.
    pub async fn apply_status_warnings(&self, obj: &Value) -> Vec<String> {
        self.warnings_of(format!("{}/status", object_path(obj)), obj)
            .await
    }

    /// SSA of one object as the admin; returns the server's Warning headers.
    pub async fn apply_warnings(&self, obj: &Value) -> Vec<String> {
        self.warnings_of(object_path(obj), obj).await
    }

    async fn warnings_of(&self, path: String, obj: &Value) -> Vec<String> {
        let body = serde_json::to_vec(obj).expect("json");
        let req = Request::patch(format!("{path}?fieldManager=test&force=true"))
            .header("Content-Type", "application/apply-patch+yaml")
            .body(kube::client::Body::from(body))
            .expect("request");
        let res = self.0.send(req).await.expect("apply");
        assert!(res.status().is_success(), "apply {path}: {}", res.status());
        res.headers()
            .get_all("warning")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// Sets a VolumeAttachment's `status.attached` as the attacher would.
    pub async fn set_attached(&self, va: &str, attached: bool) {
        let body = json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": va}, "status": {"attached": attached}});
        let req = Request::patch(format!(
            "/apis/storage.k8s.io/v1/volumeattachments/{va}/status?fieldManager=csi-attacher&force=true"
        ))
        .header("Content-Type", "application/apply-patch+yaml")
        .body(serde_json::to_vec(&body).expect("json"))
        .expect("request");
        if let Err(e) = self.0.request_text(req).await {
            panic!("attach {va}: {e}");
        }
    }

    /// DELETE of a path; a 404 is fine.
    pub async fn delete(&self, path: &str) {
        let req = Request::delete(path).body(Vec::new()).expect("request");
        match self.0.request_text(req).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("delete {path}: {e}"),
        }
    }

    /// GET of a path as JSON, `None` on 404.
    pub async fn get(&self, path: &str) -> Option<Value> {
        let req = Request::get(path).body(Vec::new()).expect("request");
        match self.0.request::<Value>(req).await {
            Ok(v) => Some(v),
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => panic!("get {path}: {e}"),
        }
    }

    /// Polls `f` every 100 ms for up to 30 s.
    pub async fn until<F, Fut>(&self, what: &str, f: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..300 {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out after 30 s waiting for: {what}");
    }
}

/// The REST path of a (cluster-scoped or namespaced) object the tests create.
fn object_path(obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().expect("name");
    let ns = obj["metadata"]["namespace"].as_str();
    let (prefix, plural) = match obj["kind"].as_str().expect("kind") {
        "CustomResourceDefinition" => {
            ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions")
        }
        "ServiceAccount" => ("/api/v1", "serviceaccounts"),
        "ClusterRole" => ("/apis/rbac.authorization.k8s.io/v1", "clusterroles"),
        "ClusterRoleBinding" => ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings"),
        "Role" => ("/apis/rbac.authorization.k8s.io/v1", "roles"),
        "RoleBinding" => ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
        "Lease" => ("/apis/coordination.k8s.io/v1", "leases"),
        "Pod" => ("/api/v1", "pods"),
        "Node" => ("/api/v1", "nodes"),
        "PersistentVolume" => ("/api/v1", "persistentvolumes"),
        "StorageClass" => ("/apis/storage.k8s.io/v1", "storageclasses"),
        "VolumeAttachment" => ("/apis/storage.k8s.io/v1", "volumeattachments"),
        "VolumeReservation" => ("/apis/csi-fencer.io/v1alpha1", "volumereservations"),
        k => panic!("the harness does not know where {k} lives"),
    };
    match ns {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{prefix}/{plural}/{name}"),
    }
}
