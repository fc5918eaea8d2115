#!/usr/bin/env python3
"""Writes the protobuf field table of the Kubernetes API types (message, field number, field name,
wire kind), read from the `k8s-pb` crate's generated prost sources in the cargo registry.

kubectl sends built-in objects as protobuf (`application/vnd.kubernetes.protobuf`); the API
server decodes them with this table (crates/apiserver/src/protobuf/). Regenerate after bumping
k8s-pb:  python3 tools/proto-fields.py > crates/apiserver/src/protobuf/fields.txt
"""
import glob, os, re, sys

roots = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/k8s-pb-*/src")))
if not roots:
    sys.exit("k8s-pb is not in the cargo registry: run `cargo fetch` first")
root = roots[-1]
SKIP = ("testapigroup", "custom_metrics", "external_metrics", "v1alpha", "v1beta", "v2beta")

def full_name(module, name):
    parts = list(module)
    parts[0] = parts[0].replace("_", "-")
    return "io.k8s." + ".".join(parts + [name])

def resolve(module, path):
    path = path.strip().replace(" ", "")
    segs = path.split("::")
    mod = list(module)
    while segs and segs[0] == "super":
        segs.pop(0)
        mod.pop()
    return full_name(mod + segs[:-1], segs[-1])

def inner_type(text):
    t = text.replace("\n", " ").replace(" ", "")
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<"):
        if t.startswith(wrapper):
            t = t[len(wrapper):-1]
    if t.startswith("::prost::alloc::collections::BTreeMap<"):
        t = t[len("::prost::alloc::collections::BTreeMap<"):-1]
        t = t.split(",", 1)[1].rstrip(",")
    return t

out = []
for path in sorted(glob.glob(root + "/**/mod.rs", recursive=True)):
    rel = os.path.relpath(os.path.dirname(path), root)
    if rel == "." or any(s in rel for s in SKIP):
        continue
    module = rel.split(os.sep)
    text = open(path).read()
    for m in re.finditer(r"::prost::Message\)\]\npub struct (\w+) \{\n(.*?)\n\}", text, re.S):
        name, body = m.group(1), m.group(2)
        out.append(f"M {full_name(module, name)}")
        for chunk in body.split("#[prost(")[1:]:
            attrs, rest = chunk.split(")]", 1)
            decl = re.match(r"\s*pub (?:r#)?(\w+):(.*)", rest, re.S)
            field = decl.group(1)
            ty = "\n".join(l for l in decl.group(2).split("\n") if not l.strip().startswith("//"))
            ty = ty.strip().rstrip(",")
            tag = re.search(r'tag = "(\d+)"', attrs).group(1)
            repeated = "1" if "repeated" in attrs else "0"
            kind = attrs.split(",")[0].strip()
            target = "-"
            if kind.startswith("btree_map") or kind.startswith("map"):
                value = re.search(r'= "string, (\w+)"', attrs).group(1)
                kind = "map_" + value
                if value == "message":
                    target = resolve(module, inner_type(ty))
            elif kind.startswith("bytes"):
                kind = "bytes"
            elif kind == "message":
                target = resolve(module, inner_type(ty))
            out.append(f"F {tag} {field} {kind} {repeated} {target}")
print("\n".join(out))
