"""Shared helpers of the chart tests and of render_deploy.py.

Renders charts/csi-fencer with a real Helm engine (helm-python-sdk, Helm v4 as
a shared library) and validates objects with kubernetes-validate (the
Kubernetes OpenAPI schemas, offline).
"""
from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import tempfile
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "csi-fencer"
TESTS = ROOT / "tests" / "chart"
DEPLOY = ROOT / "deploy"
MINIMAL = TESTS / "values-minimal.yaml"
RELEASE = "csi-fencer"
NAMESPACE = "kube-system"

# The example CSI driver of deploy/sidecar/.
DRIVER_NS = "block-csi-example"
DRIVER_SA = "block-csi-example-node"
DRIVER_DS = "block-csi-example-node"

# Helm's install order (pkg/release/util/kind_sorter.go), shortened to what
# this chart renders; unknown kinds go last.
KIND_ORDER = [
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap",
    "StorageClass", "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition",
    "ClusterRole", "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList",
    "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
]

OLDEST_KUBE = "1.30.0"


def minimal_values() -> dict:
    return helm.values_from_yaml(MINIMAL.read_text())


def merge(base: dict, over: dict) -> dict:
    """Deep merge like helm's -f: dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def newest_validate_version() -> str:
    """The newest Kubernetes version kubernetes-validate has schemas for."""
    return kv_utils.latest_version()


def validate_versions() -> list[str]:
    return sorted({OLDEST_KUBE, newest_validate_version()},
                  key=lambda v: tuple(int(x) for x in v.split(".")))


_helm_kube = None


def newest_helm_kube_version() -> str:
    """The Kubernetes version the Helm library renders for when offline
    (.Capabilities.KubeVersion), found by rendering a one-line chart."""
    global _helm_kube
    if _helm_kube is None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "probe"
            (p / "templates").mkdir(parents=True)
            (p / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
            (p / "templates" / "v.yaml").write_text("{{ .Capabilities.KubeVersion.Version }}\n")
            with helm.Chart.load(str(p)) as ch:
                out = ch.render(values={}, name="probe", namespace="default", is_install=True)
            _helm_kube = out["probe/templates/v.yaml"].strip()
    return _helm_kube


def render(values: dict | None = None, chart: Path = CHART, name: str = RELEASE,
           namespace: str = NAMESPACE) -> dict[str, str]:
    """Renders the chart; values are merged over the chart's values.yaml by
    Helm itself. Raises a helm error on schema violations and `fail`."""
    with helm.Chart.load(str(chart)) as ch:
        return ch.render(values=values or {}, name=name, namespace=namespace, is_install=True)


def crd_texts(chart: Path = CHART) -> dict[str, str]:
    with helm.Chart.load(str(chart)) as ch:
        return {c["name"]: c["data"] for c in ch.crds}


def split_docs(text: str) -> list[str]:
    """The non-empty YAML documents of a rendered template, as text."""
    docs = re.split(r"(?m)^---\s*$", text)
    out = []
    for d in docs:
        body = "\n".join(line for line in d.strip("\n").splitlines()).strip("\n")
        if yaml.safe_load(body) is not None:
            out.append(body.rstrip() + "\n")
    return out


def documents(rendered: dict[str, str], include_notes: bool = False):
    """(template path, text, object) for every rendered object."""
    for path in sorted(rendered):
        if path.endswith("NOTES.txt") and not include_notes:
            continue
        if not path.endswith((".yaml", ".yml", ".json")):
            continue
        for text in split_docs(rendered[path]):
            yield path, text, yaml.safe_load(text)


def objects(rendered: dict[str, str]) -> list[dict]:
    return [o for _, _, o in documents(rendered)]


def kind_key(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def ordered(docs):
    return sorted(docs, key=lambda d: (kind_key(d[2]["kind"]), d[2]["metadata"]["name"], d[0]))


def validate_k8s(obj: dict, version: str) -> None:
    """Raises kubernetes_validate.ValidationError on a schema violation."""
    kubernetes_validate.validate(obj, version, strict=True)


@contextlib.contextmanager
def harness_chart(extra_templates: dict[str, str]):
    """A copy of the chart with more templates, for rendering the sidecar
    named templates as a user's chart would."""
    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / "csi-fencer"
        shutil.copytree(CHART, dst)
        for name, text in extra_templates.items():
            (dst / "templates" / name).write_text(text)
        yield dst


# The kustomize patch of deploy/sidecar/: the sidecar named templates included
# into the example driver's DaemonSet, as a strategic merge patch.
SIDECAR_PATCH_TEMPLATE = """\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: %(ds)s
  namespace: %(ns)s
spec:
  template:
    spec:
      containers:
        - {{ include "csi-fencer.sidecar.container" (dict "root" $ "pluginDirVolume" "plugin-dir") | indent 10 | trim }}
      volumes:
        {{- include "csi-fencer.sidecar.volumes" (dict "root" $ "pluginDirVolume" "plugin-dir") | nindent 8 }}
""" % {"ds": DRIVER_DS, "ns": DRIVER_NS}


def sidecar_values() -> dict:
    return merge(minimal_values(), {
        "mode": "none",
        "rbac": {"extraServiceAccounts": [{"name": DRIVER_SA, "namespace": DRIVER_NS}]},
    })


def render_sidecar_patch(values: dict | None = None) -> str:
    with harness_chart({"zz-sidecar-patch.yaml": SIDECAR_PATCH_TEMPLATE}) as c:
        out = render(values if values is not None else sidecar_values(), chart=c,
                     namespace=DRIVER_NS)
    return out["csi-fencer/templates/zz-sidecar-patch.yaml"]
