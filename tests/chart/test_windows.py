"""The node daemon on Windows nodes (windows.enabled): a HostProcess
DaemonSet of its own, only on Windows nodes, with the configuration minus
what only Linux has; and the Linux DaemonSet kept off Windows nodes."""
import yaml

import chartlib as cl
from cases import values


def objs(extra: dict | None = None, case: str = "windows") -> list[dict]:
    v = values(case)
    if extra:
        v = cl.merge(v, extra)
    return cl.objects(cl.render(v))


def windows_objs(extra: dict | None = None) -> dict[str, dict]:
    return {o["kind"]: o for o in objs(extra) if o["metadata"]["name"] == cl.RELEASE + "-windows"
            or o["metadata"]["name"] == cl.RELEASE + "-windows-config"}


def test_nothing_for_windows_by_default_and_the_linux_daemonset_stays_on_linux():
    got = objs(case="default")
    assert not [o for o in got if "windows" in o["metadata"]["name"]]
    ds = next(o for o in got if o["kind"] == "DaemonSet")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_a_hostprocess_daemonset_on_windows_nodes_only():
    w = windows_objs()
    assert set(w) == {"DaemonSet", "ConfigMap"}
    spec = w["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["securityContext"]["windowsOptions"] == {
        "hostProcess": True, "runAsUserName": "NT AUTHORITY\\SYSTEM"}
    assert spec["nodeSelector"] == {"kubernetes.io/os": "windows", "san": "yes"}
    assert spec["serviceAccountName"] == cl.RELEASE
    c = spec["containers"][0]
    assert c["image"] == "ghcr.io/csi-fencer/csi-fencer-windows:0.1.0-win@sha256:" + "cd" * 32
    assert c["command"] == ["$env:CONTAINER_SANDBOX_MOUNT_POINT\\csi-fencer.exe"]
    args = c["args"]
    assert args[:2] == ["run", "--source=kubernetes"]
    assert "--state-dir=C:\\ProgramData\\csi-fencer" in args
    assert "--dry-run" in args and "-v" in args
    assert not [a for a in args if a.startswith("--grpc-socket") or a.startswith("--csi-address")]
    assert "privileged" not in c.get("securityContext", {})


def test_its_configuration_is_the_linux_one_without_what_only_linux_has():
    every = objs()
    linux = yaml.safe_load(next(o for o in every if o["kind"] == "ConfigMap"
                                and o["metadata"]["name"] == cl.RELEASE + "-config")["data"]["config.yaml"])
    w = windows_objs()
    win = yaml.safe_load(w["ConfigMap"]["data"]["config.yaml"])
    assert linux["multipathConfig"] and linux["kernelLog"]
    assert win["multipathConfig"] == "" and win["kernelLog"] == ""
    assert {k: v for k, v in win.items() if k not in ("multipathConfig", "kernelLog")} == \
        {k: v for k, v in linux.items() if k not in ("multipathConfig", "kernelLog")}
    vol = w["DaemonSet"]["spec"]["template"]["spec"]["volumes"][0]
    assert vol["configMap"]["name"] == cl.RELEASE + "-windows-config"


def test_no_linux_selector_picks_the_windows_pods():
    every = objs()
    ds = {o["metadata"]["name"]: o for o in every if o["kind"] == "DaemonSet"}
    win_labels = ds[cl.RELEASE + "-windows"]["spec"]["template"]["metadata"]["labels"]
    selectors = [ds[cl.RELEASE]["spec"]["selector"]["matchLabels"]]
    selectors += [o["spec"]["selector"] for o in every if o["kind"] == "Service"]
    for sel in selectors:
        assert not all(win_labels.get(k) == v for k, v in sel.items()), sel


def test_a_linux_state_dir_is_refused():
    try:
        cl.render(cl.merge(values("windows"), {"windows": {"stateDir": "/var/lib/csi-fencer"}}))
    except Exception as e:  # the values schema
        assert "stateDir" in str(e), e
    else:
        raise AssertionError("a Linux path for windows.stateDir rendered")
