"""Tests 1-3: every value set renders, lints (strict) and every object
validates against the Kubernetes OpenAPI schemas."""
import functools

import jsonschema
import pytest
import helm_python as helm

import chartlib as cl
from cases import CASES, values

HELM_KUBE = ["v" + cl.OLDEST_KUBE, cl.newest_helm_kube_version()]
VALIDATE = cl.validate_versions()


@functools.lru_cache(maxsize=None)
def rendered(case):
    return cl.render(values(case))


def test_versions_found_programmatically():
    assert cl.newest_validate_version() in __import__("kubernetes_validate.utils").utils.all_versions()
    assert VALIDATE[0] == cl.OLDEST_KUBE and len(VALIDATE) == 2, VALIDATE
    assert HELM_KUBE[1].startswith("v1.") and HELM_KUBE[1] != HELM_KUBE[0], HELM_KUBE


@pytest.mark.parametrize("kube", HELM_KUBE)
@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_strict(case, kube):
    r = helm.lint(str(cl.CHART), values(case), strict=True, kube_version=kube)
    assert r["total_charts_linted"] == 1
    assert r["errors"] == [], r
    bad = [m for m in r["messages"] if m["severity"] >= 2]
    assert bad == [], bad


EXPECTED_KINDS = {
    "default": {"ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"},
    "modeNone": {"ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_renders_expected_kinds(case):
    kinds = [o["kind"] for o in cl.objects(rendered(case))]
    # The dashboard is a second ConfigMap; the failover controller has a
    # ServiceAccount, ClusterRole and binding of its own, and two Roles.
    twice = {"grafanaDashboard": 1, "everything": 1, "failover": 5, "windows": 2}
    assert len(kinds) == len(set(kinds)) + twice.get(case, 0), kinds
    want = set(EXPECTED_KINDS.get(case, EXPECTED_KINDS["default"]))
    if case == "failover":
        want |= {"Deployment", "PodDisruptionBudget", "Role", "RoleBinding"}
    if case in ("serviceMonitor", "everything"):
        want.add("ServiceMonitor")
    if case in ("prometheusRule", "everything"):
        want.add("PrometheusRule")
    assert set(kinds) == want, (case, kinds)


# Hand-written schemas of the fields this chart uses in the prometheus-operator
# custom resources: kubernetes-validate has no schema for custom resources (it
# only warns about them), so these two kinds are checked here instead.
_META = {"type": "object", "required": ["name", "namespace", "labels"],
         "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}
CR_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
            "metadata": _META,
            "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                     "properties": {
                         "selector": {"type": "object", "required": ["matchLabels"], "properties": {
                             "matchLabels": {"type": "object", "minProperties": 1,
                                             "additionalProperties": {"type": "string"}}}},
                         "namespaceSelector": {"type": "object", "properties": {
                             "matchNames": {"type": "array", "items": {"type": "string"}}}},
                         "endpoints": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "additionalProperties": False, "required": ["port"],
                             "properties": {
                                 "port": {"type": "string"}, "path": {"type": "string"},
                                 "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                 "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                 "relabelings": {"type": "array", "items": {
                                     "type": "object", "additionalProperties": False,
                                     "properties": {"sourceLabels": {"type": "array", "items": {"type": "string"}},
                                                    "targetLabel": {"type": "string"}}}}}}}}},
        },
    },
    "PrometheusRule": {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
            "metadata": _META,
            "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
                "groups": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                    "properties": {"name": {"type": "string"}, "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["alert", "expr", "labels", "annotations"],
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "labels": {"type": "object", "required": ["severity"], "properties": {
                                "severity": {"enum": ["critical", "warning", "info"]}}},
                            "annotations": {"type": "object", "required": ["summary", "description"],
                                            "additionalProperties": {"type": "string"}}}}}}}}}},
        },
    },
}


@pytest.mark.parametrize("version", VALIDATE)
@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_validate(case, version):
    objs = cl.objects(rendered(case))
    assert objs
    for o in objs:
        if o["kind"] in CR_SCHEMAS:
            jsonschema.validate(o, CR_SCHEMAS[o["kind"]])
        else:
            cl.validate_k8s(o, version)


def test_validation_catches_a_bad_object():
    """The validator really checks: a typo in a DaemonSet fails."""
    ds = next(o for o in cl.objects(rendered("default")) if o["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["privilegd"] = True
    with pytest.raises(Exception):
        cl.validate_k8s(ds, cl.OLDEST_KUBE)
    sm = next(o for o in cl.objects(rendered("serviceMonitor")) if o["kind"] == "ServiceMonitor")
    sm["spec"]["endpoints"][0]["intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sm, CR_SCHEMAS["ServiceMonitor"])


@pytest.mark.parametrize("version", VALIDATE)
def test_crd_validates(version):
    import yaml
    crds = cl.crd_texts()
    assert list(crds) == ["crds/volumereservations.csi-fencer.io.yaml"]
    docs = [d for d in yaml.safe_load_all(next(iter(crds.values()))) if d]
    assert len(docs) == 1
    crd = docs[0]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "volumereservations.csi-fencer.io"
    assert crd["spec"]["group"] == "csi-fencer.io" and crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["kind"] == "VolumeReservation"
    cl.validate_k8s(crd, version)


def test_prometheus_rules():
    pr = next(o for o in cl.objects(rendered("prometheusRule")) if o["kind"] == "PrometheusRule")
    rules = {r["alert"]: r for r in pr["spec"]["groups"][0]["rules"]}
    assert set(rules) == {"CsiFencerVolumeFencedWhileAttached", "CsiFencerPreemptionRateHigh",
                          "CsiFencerPathsNotRegistered", "CsiFencerReconcileErrors",
                          "CsiFencerApiServerUnreachable"}
    assert rules["CsiFencerVolumeFencedWhileAttached"]["expr"] == 'csi_fencer_volumes{state="fenced"} > 0'
    assert rules["CsiFencerVolumeFencedWhileAttached"]["for"] == "1m"
    assert rules["CsiFencerPreemptionRateHigh"]["expr"] == "rate(csi_fencer_preemptions_total[10m]) * 600 > 3"
    assert rules["CsiFencerPathsNotRegistered"]["expr"] == (
        'csi_fencer_volume_paths{kind="registered"} < on(volume, instance) csi_fencer_volume_paths{kind="total"}')
    assert rules["CsiFencerPathsNotRegistered"]["for"] == "5m"
    assert rules["CsiFencerReconcileErrors"]["expr"] == "rate(csi_fencer_reconcile_errors_total[5m]) > 0"
    assert rules["CsiFencerReconcileErrors"]["for"] == "10m"
    assert rules["CsiFencerApiServerUnreachable"]["expr"] == "csi_fencer_kube_api_up == 0"
    assert rules["CsiFencerApiServerUnreachable"]["for"] == "2m"
    for name, r in rules.items():
        d = r["annotations"]["description"]
        assert any(c in d for c in ("csi-fencer inspect", "csi-fencer check", "kubectl get volumereservations")), name
        # Prometheus templating survives Helm: {{ $labels.x }} is literal.
        assert "{{ $labels." in r["annotations"]["summary"], name


def test_dashboard():
    import json
    cm = next(o for o in cl.objects(rendered("grafanaDashboard"))
              if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    d = json.loads(cm["data"]["csi-fencer.json"])
    exprs = " ".join(t["expr"] for p in d["panels"] for t in p["targets"])
    for metric in ("csi_fencer_volumes", "csi_fencer_preemptions_total",
                   "csi_fencer_reservation_conflicts_total",
                   "histogram_quantile(0.95, sum by (le, operation) (rate(csi_fencer_operation_duration_seconds_bucket",
                   "csi_fencer_attachment_to_held_seconds_bucket", "csi_fencer_scsi_commands_total",
                   "csi_fencer_kube_api_up"):
        assert metric in exprs, metric
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_notes():
    for case in ("default", "modeNone", "dryRun"):
        notes = rendered(case)["csi-fencer/templates/NOTES.txt"]
        assert "kubectl get volumereservations" in notes
        assert "reservation_key" in notes and "multipath" in notes
    assert "logs ds/csi-fencer" in rendered("default")["csi-fencer/templates/NOTES.txt"]
    assert "DRY RUN" in rendered("dryRun")["csi-fencer/templates/NOTES.txt"]
