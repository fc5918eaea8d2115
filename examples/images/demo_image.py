#!/usr/bin/env python3
"""Writes the demo app's images as one docker archive: the static binary as /demo in an otherwise
empty image, tagged bosun/demo:1.0 (VERSION=v1) and bosun/demo:2.0 (VERSION=v2), for rollouts.

usage: demo_image.py DEMO_BINARY OUT.tar
"""
import hashlib, io, json, sys, tarfile, time

def layer(binary):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ["etc", "tmp"]:
            info = tarfile.TarInfo(d); info.type = tarfile.DIRTYPE; info.mode = 0o1777 if d == "tmp" else 0o755
            t.addfile(info)
        data = open(binary, "rb").read()
        info = tarfile.TarInfo("demo"); info.size = len(data); info.mode = 0o755; info.mtime = int(time.time())
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()

def main():
    binary, out = sys.argv[1], sys.argv[2]
    tar_bytes = layer(binary)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    manifest = []
    configs = {}
    for tag, version in [("1.0", "v1"), ("2.0", "v2")]:
        config = {
            "architecture": "amd64", "os": "linux",
            "config": {
                "Entrypoint": ["/demo"], "Cmd": ["serve"],
                "Env": ["PATH=/", f"VERSION={version}"],
                "ExposedPorts": {"8080/tcp": {}, "81/tcp": {}},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        raw = json.dumps(config, sort_keys=True).encode()
        name = hashlib.sha256(raw).hexdigest() + ".json"
        configs[name] = raw
        manifest.append({"Config": name, "RepoTags": [f"bosun/demo:{tag}"], "Layers": ["layer/layer.tar"]})
    with tarfile.open(out, "w") as t:
        def add(name, data):
            info = tarfile.TarInfo(name); info.size = len(data); info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
        add("manifest.json", json.dumps(manifest).encode())
        for name, raw in configs.items():
            add(name, raw)
        add("layer/layer.tar", tar_bytes)

if __name__ == "__main__":
    main()
