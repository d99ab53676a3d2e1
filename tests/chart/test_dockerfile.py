"""Test 9: static checks of the Dockerfile."""
import re

import chartlib as cl

BUILD = "cargo build --release --locked --target x86_64-unknown-linux-musl --bin csi-fencer"


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


def stages():
    """(image, name) of every FROM."""
    out = []
    for w, rest in instructions():
        if w == "FROM":
            t = [x for x in rest.split() if not x.startswith("--")]
            out.append((t[0], t[2] if len(t) > 2 and t[1].upper() == "AS" else None))
    return out


def test_every_pulled_base_is_pinned_and_the_image_is_empty():
    names = [n for _, n in stages() if n]
    pulled = [i for i, _ in stages() if i != "scratch" and not i.startswith("${")]
    assert pulled, stages()
    for image in pulled:
        name = image.split("@")[0]
        assert ":" in name.rsplit("/", 1)[-1], f"{image}: no tag"
        tag = name.rsplit(":", 1)[1]
        assert tag and tag != "latest", image
        assert "$" not in image, image
    assert pulled == ["docker.io/library/rust:1.95-bookworm"], pulled
    # The binary stage is one of the two that make a binary.
    assert ("${BINARY}", "binary") in stages()
    assert {"builder", "prebuilt"} <= set(names)
    # The last stage, the one users get and the one `make image` builds: empty
    # but for the binary.
    assert stages()[-1] == ("scratch", "image"), stages()
    build = (cl.ROOT / "tests/image/build.sh").read_text()
    assert "--target image" in build and "BINARY=prebuilt" in build


def test_digest_pinning_comment():
    text = (cl.ROOT / "Dockerfile").read_text()
    assert "Pin the builder's base by digest in CI" in text


def test_build_command_is_the_make_image_one():
    runs = [rest for w, rest in instructions() if w == "RUN" and "cargo" in rest]
    assert len(runs) == 1 and runs[0].startswith(BUILD), runs
    build = (cl.ROOT / "tests/image/build.sh").read_text()
    assert 'cargo build --release --locked --target "$TARGET" --bin csi-fencer' in build


def test_user_entrypoint_and_labels():
    ins = instructions()
    users = [rest for w, rest in ins if w == "USER"]
    assert users, "no USER line"
    assert [rest for w, rest in ins if w == "ENTRYPOINT"] == ['["/usr/local/bin/csi-fencer"]']
    labels = " ".join(rest for w, rest in ins if w == "LABEL")
    keys = dict(re.findall(r'([\w.]+)="([^"]*)"', labels))
    for k in ("title", "description", "source", "licenses", "version", "revision"):
        assert "org.opencontainers.image." + k in keys, k
    assert keys["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert keys["org.opencontainers.image.version"] == "${VERSION}"
    assert any(w == "ARG" and rest.startswith("VERSION") for w, rest in ins)


def test_dockerignore():
    lines = {l.strip() for l in (cl.ROOT / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")}
    assert "target/" in lines and ("fuzz/" in lines or "fuzz/target" in lines) and ".git" in lines
    # The one file of target/ the prebuilt stage copies.
    assert "!target/image/out/csi-fencer" in lines
