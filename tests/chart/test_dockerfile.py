"""Test 9: static checks of the Dockerfile."""
import re

import chartlib as cl

BUILD = "cargo build --release --locked --bin csi-fencer"


def instructions():
    text = (cl.ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            word, _, rest = s.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_from_is_pinned():
    froms = [rest for w, rest in instructions() if w == "FROM"]
    assert len(froms) >= 2, froms
    for f in froms:
        image = [t for t in f.split() if not t.startswith("--")][0]
        name = image.split("@")[0]
        assert ":" in name.rsplit("/", 1)[-1], f"{image}: no tag"
        tag = name.rsplit(":", 1)[1]
        assert tag and tag != "latest", image
        assert "$" not in image, image
    assert froms[0].startswith("rust:1.95-bookworm")
    assert "bookworm" in froms[-1] or froms[-1].startswith("debian:12")


def test_digest_pinning_comment():
    text = (cl.ROOT / "Dockerfile").read_text()
    assert "# pin by digest in CI: docker buildx imagetools inspect" in text


def test_build_command_is_the_readme_one():
    runs = [rest for w, rest in instructions() if w == "RUN" and "cargo" in rest]
    assert runs == [BUILD], runs


def test_user_entrypoint_and_labels():
    ins = instructions()
    users = [rest for w, rest in ins if w == "USER"]
    assert users, "no USER line"
    assert [rest for w, rest in ins if w == "ENTRYPOINT"] == ['["/usr/local/bin/csi-fencer"]']
    labels = " ".join(rest for w, rest in ins if w == "LABEL")
    keys = dict(re.findall(r'([\w.]+)="([^"]*)"', labels))
    for k in ("title", "description", "source", "licenses", "version"):
        assert "org.opencontainers.image." + k in keys, k
    assert keys["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert keys["org.opencontainers.image.version"] == "${VERSION}"
    assert any(w == "ARG" and rest.startswith("VERSION") for w, rest in ins)


def test_dockerignore():
    lines = {l.strip() for l in (cl.ROOT / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")}
    assert "target/" in lines and ("fuzz/" in lines or "fuzz/target" in lines) and ".git" in lines
