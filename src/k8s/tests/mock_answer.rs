//! How the mock answers: the ways a client reaches it, and each request
//! it serves.

use super::*;

impl MockApi {
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

    /// Serves the mock over HTTP on a loopback port, for a daemon process;
    /// runs until the runtime stops. While `set_down`, connections get 503.
    #[allow(dead_code)]
    pub async fn serve(&self) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let me = self.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let me = me.clone();
            async move {
                me.handle(req).await.unwrap_or_else(|e| {
                    status(503, "ServiceUnavailable", format!("the mock is down: {e}"))
                })
            }
        });
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("mock API server stopped: {e}");
            }
        });
        Ok(addr)
    }

    async fn handle<B>(&self, req: Request<B>) -> Result<Response<Body>, std::io::Error>
    where
        B: HttpBody<Data = Bytes>,
    {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        let bytes: Bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let header = |h: http::header::HeaderName| {
            parts
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let seen = Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            content_type: header(http::header::CONTENT_TYPE),
            accept: header(http::header::ACCEPT),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        };
        {
            let mut db = self.db();
            if db.down {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                ));
            }
            db.seen.push(seen.clone());
        }
        let r = self.route(&seen);
        if matches!(r.status().as_u16(), 404 | 405) {
            let what = format!("{} {}?{}", seen.method, seen.path, seen.query);
            self.db().traffic.unexpected.push(what);
        }
        Ok(r)
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
            .db()
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
            ("list", "nodes") => self.list_nodes(s),
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

    /// Nodes as metadata only: the daemon needs their names, and a full
    /// Node (images, conditions) is many kilobytes.
    fn list_nodes(&self, s: &Seen) -> Response<Body> {
        if !s.accept.contains("as=PartialObjectMetadataList") {
            return status(
                406,
                "NotAcceptable",
                format!(
                    "the mock serves Nodes as metadata only (Accept: {})",
                    s.accept
                ),
            );
        }
        let db = self.db();
        ok(
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": db.rv.to_string()}, "items": db.nodes}),
        )
    }

    /// The snapshot a page comes from: a fresh one, or the one a continue
    /// token names (410 once it is compacted); or the Status refusing it.
    fn snapshot(&self, q: &str) -> Result<(u64, Snapshot, usize), (u16, &'static str, String)> {
        let mut db = self.db();
        let Some(token) = query_param(q, "continue").filter(|c| !c.is_empty()) else {
            let rv = db.rv;
            let items: Snapshot =
                Arc::new(db.vas.iter().map(|(n, b)| (n.clone(), b.clone())).collect());
            db.snapshots.insert(rv, Arc::clone(&items));
            while db.snapshots.len() > SNAPSHOTS {
                db.snapshots.pop_first();
            }
            return Ok((rv, items, 0));
        };
        let Some((rv, start)) = parse_continue(token) else {
            return Err((
                400,
                "BadRequest",
                format!("continue key is not valid: {token}"),
            ));
        };
        match db.snapshots.get(&rv) {
            Some(items) if rv >= db.compacted => {
                let i = items.partition_point(|(n, _)| n.as_str() < start.as_str());
                Ok((rv, Arc::clone(items), i))
            }
            _ => Err((
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter."
                    .into(),
            )),
        }
    }

    fn list_vas(&self, q: &str) -> Response<Body> {
        let limit: usize = query_param(q, "limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let (rv, items, start) = match self.snapshot(q) {
            Ok(s) => s,
            Err((code, reason, message)) => return status(code, reason, message),
        };
        let end = start.saturating_add(limit).min(items.len());
        let page = &items[start..end];
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if end < items.len() {
            meta["continue"] = json!(continue_token(rv, &items[end].0));
            meta["remainingItemCount"] = json!(items.len() - end);
        }
        let head =
            json!({"kind": "VolumeAttachmentList", "apiVersion": VA_API_VERSION, "metadata": meta})
                .to_string();
        let mut body =
            Vec::with_capacity(page.iter().map(|(_, b)| b.len() + 1).sum::<usize>() + 256);
        body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        body.extend_from_slice(b",\"items\":[");
        for (i, (_, b)) in page.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b);
        }
        body.extend_from_slice(b"]}");
        let mut db = self.db();
        let t = &mut db.traffic;
        let now = Instant::now();
        t.first_list.get_or_insert(now);
        t.last_list = Some(now);
        t.list_pages += 1;
        t.list_items += page.len() as u64;
        t.list_bytes += body.len() as u64;
        json_response(StatusCode::OK, body)
    }

    fn get_va(&self, name: &str) -> Response<Body> {
        let db = self.db();
        let found = db.vas.get(name).filter(|_| !db.hidden.contains(name));
        let Some(item) = found else {
            return status(
                404,
                "NotFound",
                format!("volumeattachments.storage.k8s.io \"{name}\" not found"),
            );
        };
        let mut v = typed(item);
        if let Some(n) = db.foreign_get.get(name) {
            v["spec"]["nodeName"] = json!(n);
        }
        ok(v)
    }

    fn get_from(
        &self,
        table: impl Fn(&Db) -> &BTreeMap<String, Value>,
        name: &str,
        what: &str,
    ) -> Response<Body> {
        let db = self.db();
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
        let mut db = self.db();
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

    /// A watch from `resourceVersion`: the history after it, then each
    /// change as it is committed, a bookmark a minute if asked, until
    /// `timeoutSeconds`. Without a resourceVersion (or "0"), as the real
    /// server: an ADDED for every object first.
    fn watch_vas(&self, q: &str) -> Response<Body> {
        let from = query_param(q, "resourceVersion").and_then(|r| r.parse::<u64>().ok());
        let timeout = query_param(q, "timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800);
        let bookmarks = query_param(q, "allowWatchBookmarks") == Some("true");
        let (since, initial) = {
            let db = self.db();
            match from.filter(|r| *r != 0) {
                Some(r) if r < db.compacted => {
                    let st = status_object(
                        410,
                        "Expired",
                        &format!("too old resource version: {r} ({})", db.compacted),
                    );
                    let line = Ok::<_, Infallible>(event_line("ERROR", &st));
                    return json_response(
                        StatusCode::OK,
                        Body::from_stream(futures_util::stream::iter([line])),
                    );
                }
                Some(r) => (r, Vec::new()),
                None => (
                    db.rv,
                    db.vas
                        .values()
                        .map(|i| event_line("ADDED", typed(i)))
                        .collect(),
                ),
            }
        };
        let now = tokio::time::Instant::now();
        let st = Watch {
            mock: self.clone(),
            rx: self.latest.subscribe(),
            since,
            initial,
            ended: false,
            deadline: now + Duration::from_secs(timeout),
            bookmark: bookmarks.then(|| now + BOOKMARK_EVERY),
        };
        json_response(
            StatusCode::OK,
            Body::from_stream(futures_util::stream::unfold(st, Watch::next)),
        )
    }

    /// The log's lines after `since`, at most about [`CHUNK`] bytes of them,
    /// and whether they end with an ERROR (the end of the watch).
    fn lines_after(&self, since: &mut u64) -> Option<(Bytes, bool)> {
        let mut db = self.db();
        let i = db.log.partition_point(|(rv, _)| *rv <= *since);
        if i == db.log.len() {
            return None;
        }
        let mut out = Vec::with_capacity(CHUNK + 2048);
        let mut ended = false;
        for (rv, line) in &db.log[i..] {
            out.extend_from_slice(line);
            *since = *rv;
            ended = db.expiries.contains(rv);
            if ended || out.len() >= CHUNK {
                break;
            }
        }
        db.traffic.watch_bytes += out.len() as u64;
        Some((Bytes::from(out), ended))
    }
}

/// One watch stream's position.
struct Watch {
    mock: MockApi,
    rx: tokio::sync::watch::Receiver<u64>,
    since: u64,
    initial: Vec<Bytes>,
    ended: bool,
    deadline: tokio::time::Instant,
    bookmark: Option<tokio::time::Instant>,
}

impl Watch {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Watch)> {
        if !self.initial.is_empty() {
            let lines = std::mem::take(&mut self.initial).concat();
            return Some((Ok(Bytes::from(lines)), self));
        }
        loop {
            if self.ended {
                return None;
            }
            self.rx.mark_unchanged();
            if let Some((chunk, ended)) = self.mock.lines_after(&mut self.since) {
                self.ended = ended;
                return Some((Ok(chunk), self));
            }
            let now = tokio::time::Instant::now();
            if now >= self.deadline {
                return None;
            }
            if let Some(b) = self.bookmark.filter(|b| now >= *b) {
                self.bookmark = Some(b + BOOKMARK_EVERY);
                let obj = json!({"kind": VA_KIND, "apiVersion": VA_API_VERSION,
                    "metadata": {"resourceVersion": self.since.to_string()}});
                return Some((Ok(event_line("BOOKMARK", &obj)), self));
            }
            let wake = self
                .bookmark
                .map_or(self.deadline, |b| b.min(self.deadline));
            tokio::select! {
                r = self.rx.changed() => if r.is_err() { return None },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::BodyExt;

    async fn get(m: &MockApi, uri: &str, accept: &str) -> (u16, Value) {
        let req = Request::get(uri)
            .header(http::header::ACCEPT, accept)
            .body(Body::empty())
            .expect("a request");
        let r = m.handle(req).await.expect("the mock is up");
        let code = r.status().as_u16();
        let bytes = r.into_body().collect().await.expect("a body").to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    const VAS: &str = "/apis/storage.k8s.io/v1/volumeattachments";

    fn loaded() -> MockApi {
        let m = MockApi::new(&["node-a"]);
        let objs = (0..5).map(|i| {
            let mut v = va(&format!("csi-{i}"), "u", "node-a", "pv", true);
            v["metadata"]["resourceVersion"] = json!("200");
            v
        });
        m.load_vas(200, objs);
        m
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect()
    }

    #[tokio::test]
    async fn pages_come_from_one_snapshot_until_it_is_compacted() {
        let m = loaded();
        let (code, p1) = get(&m, &format!("{VAS}?limit=2"), "").await;
        assert_eq!(code, 200);
        assert_eq!(names(&p1), ["csi-0", "csi-1"]);
        assert!(
            p1["items"][0].get("kind").is_none(),
            "list items carry no kind"
        );
        m.delete_va("csi-3");
        m.put_va(va("csi-2a", "u", "node-a", "pv", true));
        let token = p1["metadata"]["continue"]
            .as_str()
            .expect("a continue token");
        let (_, p2) = get(&m, &format!("{VAS}?limit=10&continue={token}"), "").await;
        assert_eq!(
            names(&p2),
            ["csi-2", "csi-3", "csi-4"],
            "the snapshot, not now"
        );
        assert_eq!(p2["metadata"]["resourceVersion"], "200");
        assert!(p2["metadata"].get("continue").is_none());
        m.expire_watches();
        let (code, st) = get(&m, &format!("{VAS}?limit=2&continue={token}"), "").await;
        assert_eq!((code, st["reason"].as_str()), (410, Some("Expired")));
        let (code, st) = get(&m, &format!("{VAS}?continue=nonsense"), "").await;
        assert_eq!((code, st["reason"].as_str()), (400, Some("BadRequest")));
    }

    #[tokio::test]
    async fn a_watch_ends_at_410_and_an_older_resource_version_gets_410_at_once() {
        let m = loaded();
        let req = |rv: u64| {
            Request::get(format!("{VAS}?watch=true&resourceVersion={rv}"))
                .body(Body::empty())
                .expect("a request")
        };
        let live = m.handle(req(200)).await.expect("up");
        let mut body = live.into_body().into_data_stream();
        m.put_va(va("csi-9", "u", "node-a", "pv", true));
        let first = body.next().await.expect("an event").expect("bytes");
        let ev: Value = serde_json::from_slice(&first).expect("one JSON line");
        assert_eq!(ev["type"], "ADDED");
        assert_eq!(ev["object"]["kind"], "VolumeAttachment", "events are typed");
        m.expire_watches();
        let err = body.next().await.expect("the ERROR").expect("bytes");
        let ev: Value = serde_json::from_slice(&err).expect("one JSON line");
        assert_eq!(
            (ev["type"].as_str(), ev["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410))
        );
        assert!(body.next().await.is_none(), "the stream ends after ERROR");
        let old = m.handle(req(201)).await.expect("up");
        let bytes = old.into_body().collect().await.expect("body").to_bytes();
        let ev: Value = serde_json::from_slice(&bytes).expect("one JSON line");
        assert_eq!(ev["object"]["reason"], "Expired");
    }

    #[tokio::test]
    async fn nodes_are_served_as_metadata_only() {
        let m = loaded();
        let (code, _) = get(&m, "/api/v1/nodes", "application/json").await;
        assert_eq!(code, 406);
        let accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
        let (code, list) = get(&m, "/api/v1/nodes", accept).await;
        assert_eq!((code, names(&list)), (200, vec!["node-a".to_string()]));
        assert_eq!(m.traffic().unexpected, Vec::<String>::new());
        let (code, _) = get(&m, "/apis/apps/v1/deployments", "").await;
        assert_eq!(code, 405);
        assert_eq!(m.traffic().unexpected.len(), 1, "counted as unexpected");
    }
}
