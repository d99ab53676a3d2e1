"""The value sets every render test runs over: the default render and each
optional feature switched on."""
import chartlib as cl

CASES = {
    "default": {},
    "serviceMonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "prometheusRule": {"prometheusRule": {"enabled": True, "preemptionsPer10m": 3}},
    "grafanaDashboard": {"grafanaDashboard": {"enabled": True}},
    "modeNone": {"mode": "none"},
    "extraServiceAccounts": {"rbac": {"extraServiceAccounts": [
        {"name": "block-csi-node", "namespace": "block-csi"},
        {"name": "other-node", "namespace": "other"}]}},
    "csiAddress": {
        "csiAddress": "/csi/csi.sock",
        "extraVolumes": [{"name": "driver-dir", "hostPath": {
            "path": "/var/lib/kubelet/plugins/block.csi.example.com", "type": "Directory"}}],
        "extraVolumeMounts": [{"name": "driver-dir", "mountPath": "/csi"}],
    },
    "dryRun": {"dryRun": True, "verbosity": 2, "logFormat": "json"},
    "failover": {"failover": {"enabled": True, "ignoreDrivers": ["local.csi.example.com"],
                              "dryRun": True, "tolerations": [{"operator": "Exists"}],
                              "priorityClassName": "system-cluster-critical"}},
    "windows": {"windows": {"enabled": True, "nodeSelector": {"san": "yes"},
                            "image": {"tag": "0.1.0-win", "digest": "sha256:" + "cd" * 32}},
                "dryRun": True, "verbosity": 1},
    "clusterTagAndAttribute": {"config": {"clusterName": "", "clusterTag": "0x1a2b", "drivers": [
        {"name": "fc.csi.example.com", "volumeAttribute": "wwn",
         "volumeAttributeRegex": "^(?P<wwid>3[0-9a-f]{32})$", "preempt": "preempt"}]}},
    "everything": {
        "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True}, "dryRun": True, "verbosity": 1,
        "rbac": {"extraServiceAccounts": [{"name": "x", "namespace": "y"}]},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "san", "operator": "In", "values": ["yes"]}]}]}}},
        "podAnnotations": {"a": "b"}, "podLabels": {"c": "d"},
        "imagePullSecrets": [{"name": "regcred"}],
        "updateStrategy": {"maxUnavailable": "10%"},
        "image": {"tag": "0.1.0-rc1", "digest": "sha256:" + "ab" * 32},
        "serviceAccount": {"annotations": {"e": "f"}},
    },
}


def values(case: str) -> dict:
    return cl.merge(cl.minimal_values(), CASES[case])
