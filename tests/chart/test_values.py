"""Tests 4, 5, 7: the schema rejects bad values naming the key, the chart
fails clearly without a key space or drivers, and README, values.yaml and
the schema list the same keys."""
import json
import re

import jsonschema
import pytest
import yaml
import helm_python as helm

import chartlib as cl

BAD = [
    ({"metrics": {"port": "abc"}}, "/metrics/port"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"foo": 1}, "'foo'"),
    ({"config": {"policy": {"bogus": True}}}, "'bogus'"),
    ({"config": {"policy": {"preempt": "sometimes"}}}, "/config/policy/preempt"),
    ({"config": {"maxConcurrentVolumes": 5000}}, "/config/maxConcurrentVolumes"),
    # The daemon's limits, exactly: 257 and a zero tag would pass Helm and fail at start.
    ({"config": {"maxConcurrentVolumes": 257}}, "/config/maxConcurrentVolumes"),
    ({"config": {"clusterTag": "0x0000"}}, "/config/clusterTag"),
    ({"config": {"clusterTag": "0x12345"}}, "/config/clusterTag"),
    ({"config": {"monitorIntervalSeconds": 0}}, "/config/monitorIntervalSeconds"),
    ({"config": {"deviceWaitSeconds": -1}}, "/config/deviceWaitSeconds"),
    ({"config": {"clusterTag": "xyz"}}, "/config/clusterTag"),
    ({"config": {"drivers": [{"name": "d", "volumeHandleRegex": "x", "bogus": 1}]}}, "'bogus'"),
    ({"config": {"drivers": [{"name": "d", "volumeAttributeRegex": "x", "volumeHandleRegex": "y"}]}},
     "/config/drivers/0"),
    ({"mode": "sidecar"}, "/mode"),
    ({"logFormat": "xml"}, "/logFormat"),
    ({"verbosity": 3}, "/verbosity"),
    ({"kubeApi": {"qps": "fast"}}, "/kubeApi/qps"),
    # A digest without its algorithm, or a tag in its place, would pull nothing.
    ({"image": {"digest": "0123abcd"}}, "/image/digest"),
    ({"image": {"digest": "sha256:latest"}}, "/image/digest"),
]


@pytest.mark.parametrize("over,key", BAD, ids=[f"{i}-{k}" for i, (_, k) in enumerate(BAD)])
def test_schema_rejects(over, key):
    v = cl.merge(cl.minimal_values(), over)
    with helm.Chart.load(str(cl.CHART)) as ch:
        with pytest.raises(helm.HelmError) as e:
            ch.validate_schema(v)
    assert key in str(e.value), str(e.value)
    with pytest.raises(helm.HelmError) as e:
        cl.render(v)
    assert key in str(e.value), str(e.value)


def test_schema_accepts_defaults_and_minimal():
    with helm.Chart.load(str(cl.CHART)) as ch:
        ch.validate_schema(cl.minimal_values())
        ch.validate_schema({})


FAILS = [
    ({}, "set config.clusterName (or config.clusterTag"),
    ({"config": {"clusterName": "c"}}, "set config.drivers: the CSI drivers whose volumes csi-fencer fences"),
    ({"config": {"clusterTag": "0x1a2b"}}, "set config.drivers: the CSI drivers whose volumes csi-fencer fences"),
    ({"config": {"drivers": [{"name": "d", "volumeHandleRegex": "x"}]}}, "set config.clusterName (or config.clusterTag"),
    ({"config": {"clusterName": "c", "clusterTag": "0x1", "drivers": [{"name": "d", "volumeHandleRegex": "x"}]}},
     "set config.clusterName or config.clusterTag, not both"),
    ({"config": {"clusterName": "c", "drivers": [{"name": "d", "volumeHandleRegex": "x"},
                                                 {"name": "d", "volumeAttribute": "wwn"}]}},
     'config.drivers[1]: driver "d" is listed twice'),
]


@pytest.mark.parametrize("vals,msg", FAILS)
def test_render_fails_clearly(vals, msg):
    with pytest.raises(helm.HelmError) as e:
        cl.render(vals)
    assert msg in str(e.value), str(e.value)


def test_config_yaml_is_what_the_daemon_reads():
    out = cl.render(cl.minimal_values())
    cm = next(o for o in cl.objects(out) if o["kind"] == "ConfigMap")
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["clusterName"] == "example-cluster"
    assert "clusterTag" not in cfg  # the daemon rejects both keys together
    assert cfg["drivers"] == [{"name": "block.csi.example.com",
                               "volumeHandleRegex": "^(?P<wwid>3[0-9a-f]{32})$"}]
    want = {"clusterName", "mapUuidPrefix", "multipathConfig", "policy", "monitorIntervalSeconds", "kernelLog", "resyncIntervalSeconds",
            "maxConcurrentVolumes", "operationTimeoutSeconds", "commandTimeoutSeconds",
            "deviceWaitSeconds", "knownNodes", "drivers"}
    assert set(cfg) == want
    assert set(cfg["policy"]) == {"preempt", "allTgPt", "aptpl", "removeForeignKeys"}
    tag = cl.merge(cl.minimal_values(), {"config": {"clusterName": "", "clusterTag": "0x1a2b"}})
    cm = next(o for o in cl.objects(cl.render(tag)) if o["kind"] == "ConfigMap")
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["clusterTag"] == "0x1a2b" and "clusterName" not in cfg


# ---- keys: values.yaml, values.schema.json and README.md agree ----

def schema():
    return json.loads((cl.CHART / "values.schema.json").read_text())


def schema_leaves(node, prefix=""):
    """Dotted paths of the schema's leaves: a property whose schema has no
    `properties` of its own (scalars, lists, free-form maps)."""
    out = set()
    for k, sub in node.get("properties", {}).items():
        p = prefix + k
        if "properties" in sub:
            out |= schema_leaves(sub, p + ".")
        else:
            out.add(p)
    return out


def value_leaves(values, node, prefix=""):
    """Dotted paths of values.yaml's leaves, descending into a map only where
    the schema describes its keys (so resources.requests is one leaf)."""
    out = set()
    for k, v in values.items():
        p = prefix + k
        sub = (node or {}).get("properties", {}).get(k)
        if isinstance(v, dict) and sub and "properties" in sub:
            out |= value_leaves(v, sub, p + ".")
        else:
            out.add(p)
    return out


def readme_rows():
    text = (cl.CHART / "README.md").read_text()
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|\s*([^|]+?)\s*\|\s*(.*?)\s*\|\s*(.+?)\s*\|\s*$", text, re.M)
    return {k: (t, d, desc) for k, t, d, desc in rows}


def test_schema_is_draft7_and_strict_everywhere():
    s = schema()
    jsonschema.Draft7Validator.check_schema(s)
    assert s["$schema"] == "http://json-schema.org/draft-07/schema#"

    def walk(node, path):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
            for k, sub in node["properties"].items():
                walk(sub, path + "." + k)
        if "items" in node:
            walk(node["items"], path + "[]")
        if node is not s:
            assert "type" in node or "enum" in node or "const" in node, path
    walk(s, "")
    drv = s["properties"]["config"]["properties"]["drivers"]["items"]
    assert drv["additionalProperties"] is False


def test_values_yaml_valid_against_schema_with_jsonschema():
    vals = yaml.safe_load((cl.CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema()).validate(vals)
    jsonschema.Draft7Validator(schema()).validate(cl.merge(vals, cl.minimal_values()))


def test_schema_keys_equal_values_keys():
    vals = yaml.safe_load((cl.CHART / "values.yaml").read_text())
    assert value_leaves(vals, schema()) == schema_leaves(schema())


def test_readme_table_lists_exactly_the_values():
    vals = yaml.safe_load((cl.CHART / "values.yaml").read_text())
    leaves = value_leaves(vals, schema())
    rows = readme_rows()
    assert set(rows) == leaves, (sorted(set(rows) - leaves), sorted(leaves - set(rows)))
    for k, (typ, default, desc) in rows.items():
        assert typ and desc, k


def test_readme_defaults_match_values_yaml():
    vals = yaml.safe_load((cl.CHART / "values.yaml").read_text())
    for k, (_, default, _) in readme_rows().items():
        v = vals
        for part in k.split("."):
            v = v[part]
        shown = default.strip("`")
        assert yaml.safe_load(shown) == v or (shown == '""' and v == ""), (k, shown, v)


def test_the_image_defaults_to_the_version_in_cargo_toml():
    cargo = (cl.ROOT / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', cargo, re.M).group(1)
    chart = (cl.CHART / "Chart.yaml").read_text()
    assert f'appVersion: "{version}"' in chart, "Chart.yaml appVersion != Cargo.toml version"
