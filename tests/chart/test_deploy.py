"""Tests 6 and 10: deploy/ is exactly what the chart renders, and the
sidecar named templates patch a real CSI node DaemonSet into valid objects."""
import shutil
import subprocess

import pytest
import yaml

import chartlib as cl
import render_deploy


@pytest.fixture(scope="module")
def generated():
    return render_deploy.generate()


def test_deploy_files_up_to_date(generated):
    assert set(generated) == {
        "deploy/csi-fencer.yaml", "deploy/crds/volumereservations.csi-fencer.io.yaml",
        "deploy/sidecar/csi-fencer.yaml", "deploy/sidecar/csi-fencer-sidecar-patch.yaml",
        "deploy/failover.yaml"}
    stale = [rel for rel, text in generated.items()
             if not (cl.ROOT / rel).exists() or (cl.ROOT / rel).read_text() != text]
    assert stale == [], "stale, run tests/chart/render-deploy.sh: %s" % stale


def test_deploy_crds_equal_chart_crds():
    chart = sorted(p.name for p in (cl.CHART / "crds").iterdir())
    deploy = sorted(p.name for p in (cl.DEPLOY / "crds").iterdir())
    assert chart == deploy
    for n in chart:
        assert (cl.CHART / "crds" / n).read_bytes() == (cl.DEPLOY / "crds" / n).read_bytes(), n


def test_deploy_bundle_is_the_default_render(generated):
    text = generated["deploy/csi-fencer.yaml"]
    assert text.startswith("# GENERATED") and "tests/chart/render-deploy.sh" in text.splitlines()[0]
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds == ["CustomResourceDefinition", "ServiceAccount", "ConfigMap", "ClusterRole",
                     "ClusterRoleBinding", "Service", "DaemonSet"]
    rendered = cl.objects(cl.render(cl.minimal_values()))
    assert sorted(map(repr, docs[1:])) == sorted(map(repr, rendered))
    assert all(d["metadata"].get("namespace", "kube-system") == "kube-system" for d in docs)
    for d in docs:
        for v in cl.validate_versions():
            cl.validate_k8s(d, v)


def harness_ds(values):
    """A DaemonSet of a user's chart that includes the sidecar templates."""
    tpl = """\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: my-driver-node
  namespace: {{ .Release.Namespace }}
spec:
  selector:
    matchLabels: {app: my-driver-node}
  template:
    metadata:
      labels: {app: my-driver-node}
    spec:
      containers:
        - name: driver
          image: registry.example.com/driver:v1
          volumeMounts:
            - {name: socket-dir, mountPath: /plugin}
        - {{ include "csi-fencer.sidecar.container" (dict "root" $ "pluginDirVolume" "socket-dir" "pluginDirMountPath" "/plugin" "csiSocket" "driver.sock") | indent 10 | trim }}
      volumes:
        - name: socket-dir
          hostPath: {path: /var/lib/kubelet/plugins/my.driver, type: DirectoryOrCreate}
        {{- include "csi-fencer.sidecar.volumes" (dict "root" $ "pluginDirVolume" "socket-dir") | nindent 8 }}
"""
    with cl.harness_chart({"zz-harness.yaml": tpl}) as c:
        out = cl.render(values, chart=c)
    return yaml.safe_load(out["csi-fencer/templates/zz-harness.yaml"]), out


def test_sidecar_templates_in_a_users_daemonset():
    ds, out = harness_ds(cl.sidecar_values())
    for v in cl.validate_versions():
        cl.validate_k8s(ds, v)
    spec = ds["spec"]["template"]["spec"]
    fencer = next(c for c in spec["containers"] if c["name"] == "csi-fencer")
    assert "--grpc-socket=/plugin/csi-fencer.sock" in fencer["args"]
    assert "--csi-address=/plugin/driver.sock" in fencer["args"]
    mounts = {m["mountPath"]: m["name"] for m in fencer["volumeMounts"]}
    assert mounts["/plugin"] == "socket-dir"
    names = [v["name"] for v in spec["volumes"]]
    assert len(names) == len(set(names))
    assert {m["name"] for c in spec["containers"] for m in c["volumeMounts"]} <= set(names)
    # mode none: no DaemonSet of the chart's own
    assert not any(o["kind"] == "DaemonSet" for o in cl.objects(
        {k: v for k, v in out.items() if "zz-harness" not in k}))


def test_sidecar_template_needs_the_volume_name():
    tpl = '{{ include "csi-fencer.sidecar.container" (dict "root" $) }}\n'
    with cl.harness_chart({"zz-bad.yaml": tpl}) as c:
        with pytest.raises(Exception) as e:
            cl.render(cl.sidecar_values(), chart=c)
    assert "pluginDirVolume" in str(e.value)


def test_sidecar_patch_structure():
    patch = yaml.safe_load((cl.DEPLOY / "sidecar" / "csi-fencer-sidecar-patch.yaml").read_text())
    driver = [d for d in yaml.safe_load_all((cl.DEPLOY / "sidecar" / "example-driver-node.yaml").read_text())
              if d and d["kind"] == "DaemonSet"][0]
    assert (patch["kind"], patch["metadata"]["name"], patch["metadata"]["namespace"]) == (
        "DaemonSet", driver["metadata"]["name"], driver["metadata"]["namespace"])
    assert [c["name"] for c in patch["spec"]["template"]["spec"]["containers"]] == ["csi-fencer"]
    dvols = {v["name"]: v for v in driver["spec"]["template"]["spec"]["volumes"]}
    assert dvols["plugin-dir"]["hostPath"]["path"] == "/var/lib/kubelet/plugins/block.csi.example.com"
    pvols = {v["name"] for v in patch["spec"]["template"]["spec"]["volumes"]}
    assert not pvols & set(dvols)
    kz = yaml.safe_load((cl.DEPLOY / "sidecar" / "kustomization.yaml").read_text())
    assert kz["patchesStrategicMerge"] == ["csi-fencer-sidecar-patch.yaml"]
    assert set(kz["resources"]) == {"example-driver-node.yaml", "csi-fencer.yaml"}


def test_kustomize_sidecar_validates():
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed for `kubectl kustomize deploy/sidecar`"
    out = subprocess.run([kubectl, "kustomize", str(cl.DEPLOY / "sidecar")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for d in docs:
        for v in cl.validate_versions():
            cl.validate_k8s(d, v)
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["csi-fencer", "node-driver-registrar", "block-csi-driver"]
    fencer = spec["containers"][0]
    assert "--csi-address=/csi/csi.sock" in fencer["args"]
    assert "--grpc-socket=/csi/csi-fencer.sock" in fencer["args"]
    assert {m["mountPath"]: m["name"] for m in fencer["volumeMounts"]}["/csi"] == "plugin-dir"
    crb = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert {"kind": "ServiceAccount", "name": ds["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": ds["metadata"]["namespace"]} in crb["subjects"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert cm["metadata"]["namespace"] == ds["metadata"]["namespace"]
