"""Builds a Kustomize folder the way `kubectl kustomize` does, for the features that
deploy/kubernetes uses, so that the tests need no kubectl.

kubectl and kustomize do not install from the package registries that CI reaches, and no PyPI
package renders a kustomization, so this module does it: `resources` (files and folders),
`patches` (strategic merge, with or without a `target`, `$patch: delete`; JSON 6902 `add`,
`remove`, `replace`), `images` and `namespace`. A field or a patch feature that it does not know
raises instead of being skipped, so a new feature in the manifests fails the tests until it is
added here. Where kubectl is installed, tests/deploy/test_kubernetes.py compares the two.

Strategic merge is a subset of Kubernetes': mappings merge key by key (a null value removes the
key), the lists named in ``MERGE_KEYS`` merge item by item on their key, every other list is
replaced, which is also what kustomize does for custom resources.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
# Lists that Kubernetes' strategic merge merges by a key rather than replaces.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "envFrom": None,  # no merge key in Kubernetes either: replaced
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
# Kinds without a namespace among those the manifests could hold.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "IngressClass",
    "PriorityClass",
}


def load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def build(folder: Path) -> list[Resource]:
    """The resources that `kubectl kustomize folder` prints (in the order they were loaded)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise NotImplementedError(f"{folder}: kustomization fields not rendered: {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        resources += build(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches", []):
        resources = apply_patch(folder, resources, patch)
    for image in kustomization.get("images", []):
        set_image(resources, image)
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


# -- patches ------------------------------------------------------------------------------------


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def matches(resource: Resource, target: dict[str, Any]) -> bool:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise NotImplementedError(f"patch target fields not rendered: {sorted(unknown)}")
    api_version = resource["apiVersion"]
    version = api_version.split("/")[-1]
    meta = resource["metadata"]
    checks = {
        "group": group_of(api_version),
        "version": version,
        "kind": resource["kind"],
        "namespace": meta.get("namespace", ""),
    }
    if any(key in target and target[key] != value for key, value in checks.items()):
        return False
    # kustomize reads a target's name as a regular expression of the whole name.
    return "name" not in target or re.fullmatch(target["name"], meta["name"]) is not None


def apply_patch(folder: Path, resources: list[Resource], entry: dict[str, Any]) -> list[Resource]:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise NotImplementedError(f"patch fields not rendered: {sorted(unknown)}")
    text = (folder / entry["path"]).read_text() if "path" in entry else entry["patch"]
    body = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(body, list):  # JSON 6902
        if target is None:
            raise ValueError(f"{folder}: a JSON 6902 patch needs a target")
        chosen = [r for r in resources if matches(r, target)]
        if not chosen:
            raise ValueError(f"{folder}: no resource matches the target {target}")
        for resource in chosen:
            for op in body:
                json6902(resource, op)
        return resources
    if target is None:  # the patch names its resource itself
        meta = body["metadata"]
        target = {"group": group_of(body["apiVersion"]), "kind": body["kind"], "name": meta["name"]}
        target["name"] = re.escape(target["name"])
        if "namespace" in meta:
            target["namespace"] = meta["namespace"]
    chosen = [r for r in resources if matches(r, target)]
    if not chosen:
        raise ValueError(f"{folder}: no resource matches the patch for {target}")
    if body.get("$patch") == "delete":
        return [r for r in resources if not any(r is c for c in chosen)]
    patch = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")}
    meta_patch = {k: v for k, v in body["metadata"].items() if k not in ("name", "namespace")}
    for resource in chosen:
        merged = strategic_merge(resource, patch)
        if meta_patch:
            merged["metadata"] = strategic_merge(resource["metadata"], meta_patch)
        resource.clear()
        resource.update(merged)
    return resources


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(patch, dict):
        if "$patch" in patch:
            raise NotImplementedError(f"`$patch: {patch['$patch']}` inside {key or 'a resource'}")
        if not isinstance(base, dict):
            return copy.deepcopy(patch)
        out = copy.deepcopy(base)
        for name, value in patch.items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = strategic_merge(base.get(name), value, name)
        return out
    merge_key = MERGE_KEYS.get(key)
    if isinstance(patch, list) and isinstance(base, list) and merge_key:
        out_list = copy.deepcopy(base)
        for item in patch:
            for n, existing in enumerate(out_list):
                if existing.get(merge_key) == item.get(merge_key):
                    out_list[n] = strategic_merge(existing, item, key)
                    break
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"not a JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def json6902(resource: Resource, op: dict[str, Any]) -> None:
    """One operation of RFC 6902 on ``resource``, for `add`, `remove` and `replace`."""
    *parents, last = _pointer(op["path"])
    node: Any = resource
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if kind not in ("add", "remove", "replace"):
        raise NotImplementedError(f"JSON patch op {kind!r}")
    if isinstance(node, list):
        if kind == "add":
            index = len(node) if last == "-" else int(last)
            if index > len(node):
                raise IndexError(f"{op['path']}: past the end of the list")
            node.insert(index, copy.deepcopy(op["value"]))
            return
        index = int(last)
        if index >= len(node):
            raise IndexError(f"{op['path']}: no such item")
        if kind == "remove":
            del node[index]
        else:
            node[index] = copy.deepcopy(op["value"])
        return
    if kind in ("remove", "replace") and last not in node:
        raise KeyError(f"{op['path']}: nothing there to {kind}")
    if kind == "remove":
        del node[last]
    else:
        node[last] = copy.deepcopy(op["value"])


# -- images -------------------------------------------------------------------------------------


def split_image(image: str) -> tuple[str, str]:
    """("registry/name", ":tag" or "@digest" or "")."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def set_image(resources: list[Resource], rule: dict[str, str]) -> None:
    unknown = set(rule) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise NotImplementedError(f"images fields not rendered: {sorted(unknown)}")
    for resource in resources:
        for container in containers_of(resource):
            name, suffix = split_image(container["image"])
            if name != rule["name"]:
                continue
            if "digest" in rule:
                suffix = "@" + rule["digest"]
            elif "newTag" in rule:
                suffix = ":" + rule["newTag"]
            container["image"] = rule.get("newName", name) + suffix


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    if resource["kind"] == "Pod":
        return resource["spec"]
    template = resource.get("spec", {}).get("template")
    return template.get("spec") if isinstance(template, dict) else None


def containers_of(resource: Resource) -> list[dict[str, Any]]:
    spec = pod_spec(resource)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]
