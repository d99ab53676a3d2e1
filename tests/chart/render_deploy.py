"""Regenerates deploy/ from charts/csi-fencer (or, with --check, reports
whether deploy/ is up to date). Run through tests/chart/render-deploy.sh.

Generated:
  deploy/csi-fencer.yaml                      the default render (values.yaml +
                                              tests/chart/values-minimal.yaml,
                                              release csi-fencer, ns kube-system),
                                              CRD first, then Helm's install order
  deploy/crds/volumereservations.csi-fencer.io.yaml   copy of the chart's CRD
  deploy/sidecar/csi-fencer.yaml              mode=none render in the example
                                              driver's namespace
  deploy/sidecar/csi-fencer-sidecar-patch.yaml  the sidecar named templates as
                                              a strategic merge patch
  deploy/failover.yaml                        the failover controller alone
                                              (failover.enabled=true), to apply
                                              beside deploy/csi-fencer.yaml
"""
from __future__ import annotations

import sys

import chartlib as cl

HEADER = """\
# GENERATED from charts/csi-fencer by tests/chart/render-deploy.sh: do not edit,
# change the chart and regenerate. Values: charts/csi-fencer/values.yaml +
# tests/chart/values-minimal.yaml%(extra)s; release %(release)s, namespace %(ns)s.
"""


def render_bundle(values: dict, namespace: str, extra: str) -> str:
    rendered = cl.render(values, namespace=namespace)
    parts = [HEADER % {"extra": extra, "release": cl.RELEASE, "ns": namespace}]
    for name, text in sorted(cl.crd_texts().items()):
        parts.append("---\n# Source: csi-fencer/%s\n%s" % (name, text.rstrip() + "\n"))
    for path, text, _ in cl.ordered(list(cl.documents(rendered))):
        parts.append("---\n# Source: %s\n%s" % (path, text))
    return "".join(parts)


def render_failover() -> str:
    values = cl.minimal_values()
    values["failover"] = {"enabled": True}
    rendered = cl.render(values, namespace=cl.NAMESPACE)
    parts = [HEADER % {"extra": " + failover.enabled=true,\n# only the controller's objects",
                       "release": cl.RELEASE, "ns": cl.NAMESPACE}]
    for path, text, _ in cl.ordered(list(cl.documents(rendered))):
        if path.endswith("templates/failover.yaml"):
            parts.append("---\n# Source: %s\n%s" % (path, text))
    return "".join(parts)


def generate() -> dict[str, str]:
    files: dict[str, str] = {}
    files["deploy/csi-fencer.yaml"] = render_bundle(cl.minimal_values(), cl.NAMESPACE, "")
    for name, text in cl.crd_texts().items():
        files["deploy/" + name] = text
    files["deploy/sidecar/csi-fencer.yaml"] = render_bundle(
        cl.sidecar_values(), cl.DRIVER_NS,
        " + mode=none,\n# rbac.extraServiceAccounts=[%s/%s]" % (cl.DRIVER_NS, cl.DRIVER_SA))
    files["deploy/sidecar/csi-fencer-sidecar-patch.yaml"] = (
        "# GENERATED from the chart's csi-fencer.sidecar.container and\n"
        "# csi-fencer.sidecar.volumes named templates by tests/chart/render-deploy.sh:\n"
        "# do not edit. A strategic merge patch adding csi-fencer to the example\n"
        "# driver's node DaemonSet; its plugin-dir volume is mounted at /csi.\n"
        + cl.render_sidecar_patch().rstrip() + "\n")
    files["deploy/failover.yaml"] = render_failover()
    return files


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for rel, text in generate().items():
        p = cl.ROOT / rel
        if check:
            if not p.exists() or p.read_text() != text:
                stale.append(rel)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            print("wrote", rel)
    if stale:
        print("stale (run tests/chart/render-deploy.sh):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
