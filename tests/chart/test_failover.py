"""The failover controller (failover.enabled): rendered only when enabled,
with rights of its own, labels no other object selects, and the flags the
values ask for."""
import pytest
import helm_python as helm

import chartlib as cl
from cases import values


def objs(case_values: dict) -> list[dict]:
    return cl.objects(cl.render(case_values))


def failover_objs(extra: dict | None = None) -> dict[tuple[str, str], dict]:
    v = values("failover")
    if extra:
        v = cl.merge(v, extra)
    return {(o["kind"], o["metadata"]["name"]): o for o in objs(v)
            if o["metadata"]["name"].startswith(cl.RELEASE + "-failover")}


def deployment(extra: dict | None = None) -> dict:
    return failover_objs(extra)[("Deployment", cl.RELEASE + "-failover")]


def test_nothing_of_the_controller_by_default():
    names = [o["metadata"]["name"] for o in objs(values("default"))]
    assert not [n for n in names if "failover" in n], names


def test_enabled_renders_its_own_identity_rbac_deployment_and_budget():
    got = failover_objs()
    name = cl.RELEASE + "-failover"
    assert set(got) == {
        ("ServiceAccount", name), ("ClusterRole", name), ("ClusterRoleBinding", name),
        ("Role", name + "-node-leases"), ("RoleBinding", name + "-node-leases"),
        ("Role", name + "-leader"), ("RoleBinding", name + "-leader"),
        ("Deployment", name), ("PodDisruptionBudget", name)}
    assert got[("Role", name + "-node-leases")]["metadata"]["namespace"] == "kube-node-lease"
    assert got[("Role", name + "-leader")]["metadata"]["namespace"] == cl.NAMESPACE
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for o in [o for (k, _), o in got.items() if k == kind]:
            assert o["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": cl.NAMESPACE}]
    d = got[("Deployment", name)]
    assert d["spec"]["template"]["spec"]["serviceAccountName"] == name
    assert d["spec"]["replicas"] == 2
    assert got[("PodDisruptionBudget", name)]["spec"]["selector"] == d["spec"]["selector"]


def test_no_other_selector_picks_the_controller_pods():
    all_objs = objs(values("failover"))
    d = next(o for o in all_objs if o["kind"] == "Deployment")
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    for o in all_objs:
        sel = None
        if o["kind"] == "DaemonSet":
            sel = o["spec"]["selector"]["matchLabels"]
        elif o["kind"] == "Service":
            sel = o["spec"]["selector"]
        if sel:
            assert not all(pod_labels.get(k) == v for k, v in sel.items()), (o["kind"], sel)
    assert all(pod_labels.get(k) == v for k, v in d["spec"]["selector"]["matchLabels"].items())


def test_the_pod_runs_unprivileged():
    spec = deployment()["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    c = spec["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "volumes" not in spec and "volumeMounts" not in c
    assert spec["priorityClassName"] == "system-cluster-critical"


def test_the_flags_follow_the_values():
    args = deployment()["spec"]["template"]["spec"]["containers"][0]["args"]
    drivers = [d["name"] for d in values("failover")["config"]["drivers"]]
    assert args[0] == "controller"
    for d in drivers:
        assert "--driver=" + d in args
    for flag in ("--ignore-driver=local.csi.example.com", "--lease-grace-seconds=25",
                 "--max-unhealthy-percent=50", "--max-concurrent=3", "--http-endpoint=:9817",
                 "--dry-run", "--delete-pods=true"):
        assert flag in args, (flag, args)
    args = deployment({"failover": {"dryRun": False, "leaseGraceSeconds": 40, "maxConcurrent": 1}})[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--dry-run" not in args
    assert "--lease-grace-seconds=40" in args and "--max-concurrent=1" in args


def test_the_replicas_prefer_different_nodes_unless_told_otherwise():
    aff = deployment()["spec"]["template"]["spec"]["affinity"]
    term = aff["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "x", "operator": "Exists"}]}]}}}
    assert deployment({"failover": {"affinity": mine}})["spec"]["template"]["spec"]["affinity"] == mine


@pytest.mark.parametrize("bad", [
    {"leaseGraceSeconds": 10}, {"maxUnhealthyPercent": 101}, {"replicas": 0},
    {"ignoreDrivers": [""]}, {"unknown": 1}])
def test_the_schema_refuses_bad_values(bad):
    with pytest.raises(helm.HelmError):
        cl.render(cl.merge(values("failover"), {"failover": bad}))


def test_pods_are_deleted_only_with_the_right_to():
    def rules(extra):
        cr = failover_objs(extra)[("ClusterRole", cl.RELEASE + "-failover")]
        return [r for r in cr["rules"] if "pods" in r["resources"]]
    assert rules(None) == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]}]
    assert rules({"failover": {"deletePods": False}}) == []
    args = deployment({"failover": {"deletePods": False}})["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--delete-pods=false" in args
