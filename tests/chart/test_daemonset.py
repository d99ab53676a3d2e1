"""Test 8 and the RBAC rules: the DaemonSet and ClusterRole say what the
daemon needs, no more."""
import posixpath

import pytest
import yaml

import chartlib as cl
from cases import values


def objs(case="default"):
    return cl.objects(cl.render(values(case)))


def daemonset(case="default"):
    return next(o for o in objs(case) if o["kind"] == "DaemonSet")


def container(case="default"):
    cs = daemonset(case)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in cs] == ["csi-fencer"]
    return cs[0]


def flag(args, name):
    vals = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    assert len(vals) == 1, (name, args)
    return vals[0]


def test_args_exactly():
    assert container()["args"] == [
        "run", "--source=kubernetes", "--config=/etc/csi-fencer/config.yaml",
        "--node-name=$(NODE_NAME)", "--http-endpoint=:9816", "--grpc-socket=/csi-fencer/fencer.sock",
        "--state-dir=/var/lib/csi-fencer", "--kube-api-qps=5", "--kube-api-burst=10", "--timeout=20",
        "--log-format=text"]


def test_optional_args():
    a = container("dryRun")["args"]
    assert a.count("-v") == 2 and "--dry-run" in a and "--log-format=json" in a
    assert not any(x.startswith("--csi-address") for x in a)
    a = container("csiAddress")["args"]
    assert flag(a, "--csi-address") == "/csi/csi.sock"
    assert "-v" not in a and "--dry-run" not in a
    mounts = {m["mountPath"] for m in container("csiAddress")["volumeMounts"]}
    assert "/csi" in mounts


def test_image():
    assert container()["image"] == "ghcr.io/csi-fencer/csi-fencer:0.1.0"
    assert container("everything")["image"] == (
        "ghcr.io/csi-fencer/csi-fencer:0.1.0-rc1@sha256:" + "ab" * 32)


def test_privileged_root_readonly():
    sc = container()["securityContext"]
    assert sc["privileged"] is True
    assert sc["runAsUser"] == 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc.get("allowPrivilegeEscalation") is not False


def test_privileged_is_explained():
    text = (cl.CHART / "templates" / "_helpers.tpl").read_text()
    i = text.index("privileged: true")
    why = text[i - 400:i]
    assert "CAP_SYS_RAWIO" in why and "device cgroup" in why


def test_node_name_from_downward_api():
    env = {e["name"]: e for e in container()["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_probes():
    c = container()
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port == {"http-metrics": 9816}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert flag(c["args"], "--http-endpoint") == ":%d" % port["http-metrics"]


def test_pod_spec():
    ds = daemonset()
    spec = ds["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["hostNetwork"] is False
    assert spec["terminationGracePeriodSeconds"] == 10
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert container()["resources"] == {"requests": {"cpu": "10m", "memory": "32Mi"},
                                        "limits": {"memory": "128Mi"}}
    sa = next(o for o in objs() if o["kind"] == "ServiceAccount")
    assert spec["serviceAccountName"] == sa["metadata"]["name"]


def volumes_by_mount(case="default"):
    spec = daemonset(case)["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    return {m["mountPath"]: (m, vols[m["name"]]) for m in container(case)["volumeMounts"]}


def test_host_volumes():
    vm = volumes_by_mount()
    m, v = vm["/dev"]
    assert v["hostPath"] == {"path": "/dev", "type": "Directory"}
    for p, host in (("/sys", "/sys"), ("/run/udev", "/run/udev"), ("/host/etc", "/etc")):
        m, v = vm[p]
        assert v["hostPath"]["path"] == host and m.get("readOnly") is True, p
    cm = next(o for o in objs() if o["kind"] == "ConfigMap")
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["multipathConfig"].startswith("/host/etc/"), "the one-owner check reads the mounted host /etc"
    m, v = vm["/var/lib/csi-fencer"]
    assert v["hostPath"] == {"path": "/var/lib/csi-fencer", "type": "DirectoryOrCreate"}
    assert flag(container()["args"], "--state-dir") == "/var/lib/csi-fencer"
    assert not m.get("readOnly")
    m, v = vm["/csi-fencer"]
    assert v["hostPath"] == {"path": "/var/lib/kubelet/plugins/csi-fencer", "type": "DirectoryOrCreate"}


def test_config_mount_matches_flag():
    vm = volumes_by_mount()
    cfg = flag(container()["args"], "--config")
    m, v = vm[posixpath.dirname(cfg)]
    cm = next(o for o in objs() if o["kind"] == "ConfigMap")
    assert v["configMap"]["name"] == cm["metadata"]["name"] == "csi-fencer-config"
    assert posixpath.basename(cfg) in cm["data"]


def test_grpc_socket_in_a_writable_mount():
    vm = volumes_by_mount()
    sock = flag(container()["args"], "--grpc-socket")
    m, v = vm[posixpath.dirname(sock)]
    assert "hostPath" in v and not m.get("readOnly")


def test_service():
    svc = next(o for o in objs() if o["kind"] == "Service")
    assert svc["metadata"]["name"] == "csi-fencer-metrics"
    assert svc["spec"]["ports"] == [{"name": "http-metrics", "port": 9816,
                                     "targetPort": "http-metrics", "protocol": "TCP"}]
    labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"], "a Service without a selector selects nothing"
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


RULES = [
    {"apiGroups": ["storage.k8s.io"], "resources": ["volumeattachments"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
    {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get"]},
    {"apiGroups": ["csi-fencer.io"], "resources": ["volumereservations"], "verbs": ["create", "get", "patch"]},
    {"apiGroups": ["csi-fencer.io"], "resources": ["volumereservations/status"], "verbs": ["patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]


@pytest.mark.parametrize("case", ["default", "modeNone"])
def test_clusterrole_exact(case):
    cr = next(o for o in objs(case) if o["kind"] == "ClusterRole")
    assert cr["rules"] == RULES


def test_clusterrole_one_comment_per_rule():
    text = (cl.CHART / "templates" / "clusterrole.yaml").read_text()
    lines = text.splitlines()
    starts = [i for i, l in enumerate(lines) if l.strip().startswith("- apiGroups:")]
    assert len(starts) == len(RULES)
    for i in starts:
        assert lines[i - 1].strip().startswith("#"), lines[i]


def test_binding_subjects():
    crb = next(o for o in objs("extraServiceAccounts") if o["kind"] == "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == "csi-fencer"
    assert [(s["name"], s["namespace"]) for s in crb["subjects"]] == [
        ("csi-fencer", "kube-system"), ("block-csi-node", "block-csi"), ("other-node", "other")]
