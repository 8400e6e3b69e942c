#!/usr/bin/env python3
"""Extracts the provider schema facts nim-modcheck checks the cloud modules against.

The providers themselves cannot be downloaded here, but the prebuilt CDK for Terraform provider
packages on npm are generated from the providers' schemas and say which provider version they
were generated from. Their jsii type manifest (`package/.jsii`) lists, for every resource, data
source and the provider itself, each argument (name, type, required or optional) and each nested
block (single or repeated, required or optional). This script reads that manifest and keeps only
the resource and data source types the modules use, writing one small JSON file per provider
next to itself (aws.json, azurerm.json, google.json, tls.json).

Regenerate (after changing PACKAGES below, or when a module starts using a new resource type):

    python3 crates/modcheck/schemas/extract.py            # from the repository root

Packages are fetched with `npm pack` into --download-dir (default: $TMPDIR/nim-modcheck-packages,
never committed); an already downloaded tarball is reused. Python 3.11 standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Provider local name -> (npm package, package version). The newest of each on npm when chosen;
# the provider version each was generated from is read from the package itself.
PACKAGES = {
    "aws": ("@cdktf/provider-aws", "21.22.1"),
    "azurerm": ("@cdktf/provider-azurerm", "14.23.1"),
    "google": ("@cdktf/provider-google", "16.12.1"),
    "tls": ("@cdktf/provider-tls", "11.0.1"),
}

# The modules whose resource and data source types are kept (terraform/local uses no provider).
MODULES = ["terraform/aws", "terraform/azure", "terraform/gcp", "terraform/shared"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent

META_INTERFACE = "cdktf.TerraformMetaArguments"
ANCHOR = re.compile(r"Docs at Terraform Registry: \{@link (\S+)#([A-Za-z0-9_]+) ")
REPRESENTS = re.compile(r"Represents a \{@link (\S+) ([A-Za-z0-9_]+)\}")
# The manifests carry no `deprecated` flag (the generator drops it); what they do carry is the
# provider's own description, which for many deprecated arguments says so. Only these phrasings
# count, so "the image family returns its latest image that is not deprecated" does not.
DEPRECATED = re.compile(
    r"(?i)(^\s*\**\s*deprecated\b|\bis deprecated\b|\bhas been deprecated\b|\bwill be deprecated\b"
    r"|\bwill be removed in\b"
    r"|\bthis field is deprecated\b|\bdeprecated:\s)"
)


def used_types(modules):
    """Resource and data source types, and provider blocks, named in the modules' .tf files."""
    header = re.compile(r'^\s*(resource|data|provider)\s+"([A-Za-z0-9_-]+)"', re.M)
    used = {}
    for module in modules:
        for path in sorted((REPO / module).rglob("*.tf")):
            for kind, name in header.findall(path.read_text()):
                provider = name if kind == "provider" else name.split("_", 1)[0]
                entry = used.setdefault(provider, {"resource": set(), "data": set(), "provider": False})
                if kind == "provider":
                    entry["provider"] = True
                else:
                    entry[kind].add(name)
    return used


def fetch(package, version, download_dir):
    download_dir.mkdir(parents=True, exist_ok=True)
    tarball = download_dir / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not tarball.exists():
        print(f"extract.py: npm pack {package}@{version} -> {download_dir}", file=sys.stderr)
        subprocess.run(
            ["npm", "pack", "--silent", f"{package}@{version}", "--pack-destination", str(download_dir)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    with tarfile.open(tarball) as tar:
        manifest = json.load(tar.extractfile("package/package.json"))
        jsii = json.load(tar.extractfile("package/.jsii"))
    return manifest, jsii


def doc_text(docs):
    parts = [docs.get("summary", ""), docs.get("remarks", "")]
    parts += [str(v) for v in (docs.get("custom") or {}).values()]
    return "\n".join(parts)


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Converter:
    def __init__(self, types):
        self.types = types

    def properties(self, fqn):
        """Every property of a struct, including those of the structs it extends."""
        struct = self.types[fqn]
        props = list(struct.get("properties", []))
        for parent in struct.get("interfaces", []) or []:
            if parent != META_INTERFACE and parent in self.types:
                props += self.properties(parent)
        return props

    def block(self, fqn):
        attributes, blocks = {}, {}
        for prop in self.properties(fqn):
            docs = prop.get("docs", {})
            text = doc_text(docs)
            anchor = ANCHOR.search(text)
            name = anchor.group(2) if anchor else snake(prop["name"])
            required = not prop.get("optional", False)
            ty = prop["type"]
            description = ANCHOR.split(text)[0] if anchor else text
            deprecated = None
            if DEPRECATED.search(description):
                deprecated = " ".join(description.split())[:300]
            if docs.get("summary", "") == f"{name} block.":
                struct, nesting = self.block_struct(ty)
                entry = {"nesting": nesting, "required": required}
                entry["block"] = self.block(struct) if struct else None
                if deprecated:
                    entry["deprecated"] = deprecated
                blocks[name] = entry
            else:
                entry = {"type": self.type_of(ty), "required": required}
                if deprecated:
                    entry["deprecated"] = deprecated
                attributes[name] = entry
        return {"attributes": dict(sorted(attributes.items())), "blocks": dict(sorted(blocks.items()))}

    def block_struct(self, ty):
        """(struct fqn, nesting) of a block's jsii type: a struct is a block of at most one
        (max_items = 1), an array of structs a repeated block (list or set)."""
        if "fqn" in ty and ty["fqn"] in self.types:
            return ty["fqn"], "single"
        for member in ty.get("union", {}).get("types", []):
            coll = member.get("collection")
            if coll and coll["kind"] == "array" and "fqn" in coll["elementtype"]:
                return coll["elementtype"]["fqn"], "list"
        return None, "list"  # an untyped block: its contents are not checked

    def type_of(self, ty):
        if "primitive" in ty:
            return {"string": "string", "number": "number", "boolean": "bool"}.get(ty["primitive"], "any")
        if "collection" in ty:
            coll = ty["collection"]
            kind = "list" if coll["kind"] == "array" else "map"
            return {kind: self.type_of(coll["elementtype"])}
        if "union" in ty:
            members = [m for m in ty["union"]["types"] if m.get("fqn") != "cdktf.IResolvable"]
            return self.type_of(members[0]) if len(members) == 1 else "any"
        fqn = ty.get("fqn")
        if fqn in self.types and self.types[fqn].get("kind") == "interface":
            # A nested attribute (an object-typed argument, not a block).
            return {"object": self.block(fqn)["attributes"]}
        return "any"


def classes(types):
    """Terraform type name -> (kind, config struct fqn) for every resource, data source and the
    provider, from each generated class's "Represents a {@link ... aws_instance}" summary."""
    kinds = {
        "cdktf.TerraformResource": "resource",
        "cdktf.TerraformDataSource": "data",
        "cdktf.TerraformProvider": "provider",
    }
    found = {}
    for ty in types.values():
        kind = kinds.get(ty.get("base"))
        if ty.get("kind") != "class" or not kind:
            continue
        match = REPRESENTS.search(ty.get("docs", {}).get("summary", ""))
        if not match:
            continue
        params = ty.get("initializer", {}).get("parameters", [])
        config = next((p["type"]["fqn"] for p in params if p["name"] == "config"), None)
        if config:
            found[(kind, match.group(2))] = config
    return found


def extract(local_name, wanted, download_dir):
    package, version = PACKAGES[local_name]
    manifest, jsii = fetch(package, version, download_dir)
    provider = manifest["cdktf"]["provider"]
    types = jsii["types"]
    known = classes(types)
    convert = Converter(types)
    out = {
        "_about": (
            f"Schema facts of {provider['name']} {provider['version']} for the resource and data "
            f"source types nim's cloud modules use, extracted from the jsii manifest of the npm "
            f"package {package} {version}. Generated; do not edit. Regenerate: "
            f"python3 crates/modcheck/schemas/extract.py"
        ),
        "provider": local_name,
        "source": provider["name"],
        "version": provider["version"],
        "package": package,
        "package_version": version,
        "provider_config": convert.block(known[("provider", local_name)]),
        "resources": {},
        "data_sources": {},
    }
    missing = []
    for kind, key in (("resource", "resources"), ("data", "data_sources")):
        for name in sorted(wanted[kind]):
            config = known.get((kind, name))
            if config is None:
                missing.append(f'{kind} "{name}"')
                continue
            out[key][name] = convert.block(config)
    if missing:
        sys.exit(f"extract.py: {provider['name']} {provider['version']} has no {', '.join(missing)}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--download-dir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "nim-modcheck-packages",
    )
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    used = used_types(MODULES)
    unknown = sorted(set(used) - set(PACKAGES))
    if unknown:
        sys.exit(f"extract.py: the modules use providers with no package in PACKAGES: {unknown}")
    for local_name in sorted(used):
        schema = extract(local_name, used[local_name], args.download_dir)
        path = args.out_dir / f"{local_name}.json"
        path.write_text(json.dumps(schema, indent=1) + "\n")
        counts = f"{len(schema['resources'])} resources, {len(schema['data_sources'])} data sources"
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: "
              f"{schema['source']} {schema['version']} from {schema['package']} "
              f"{schema['package_version']} ({counts})")


if __name__ == "__main__":
    main()
