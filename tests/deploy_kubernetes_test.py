#!/usr/bin/env python3
"""Checks the Kubernetes manifests of deploy/kubernetes without a cluster.

Every kustomization is rendered here by a small renderer of the kustomize features the manifests
use (resources, namespace, ConfigMap and Secret generators with create, replace and merge, JSON
6902 patches, images), and every YAML file must be a kustomization or one's resource. Where
kubectl is installed, `kubectl kustomize` renders each kustomization too and must give the same
objects, which keeps the renderer honest (kubectl is not a Debian 12 package, so that part is
optional).

In each rendering: every object has apiVersion, kind and a name; workload selectors match their
pod templates; Services and PodDisruptionBudgets select a workload's pods, Services name ports
those pods have, and a PodDisruptionBudget over several pods lets some but not all go; every
volume mount names a volume or claim; ConfigMaps and Secrets a pod uses exist; probes and the
Prometheus annotations name container ports; $(VAR) in a container's command names one of its
env vars; the workers request a GPU, or none in the CPU trial; the number of supervisors is the
kustomization's (EXPECTED).

fieldprint's containers are checked against the binary: their flags are ones its --help lists,
their --config is a mounted ConfigMap file that parses with the binary's options, and per pod
(the StatefulSet's pod names, $(POD_NAME) substituted), the options in effect (the file, then
the flags) must fit the manifests: tls-name or --name is the pod's name; certs-dir holds ca.pem
and the pod's NAME.pem and NAME.key, and every *-file option names a file of the Secret mounted
there; workers and supervisors trust the same ca.pem; a supervisor's data-dir is on its own
PersistentVolume; a RocksDB-log supervisor runs alone; an etcd-log one lists every pod of an etcd
StatefulSet by the name in that member's certificate, on a port of its Service, and, with more
than one member, gets the shared ledger key (checkpoint.key) into its data-dir from a Secret
through an init container; a worker lists every supervisor pod as NAME@POD.SERVICE:PORT with the
pod's tls-name and worker port. Path arguments of other containers (etcd's certificates) name
files of the Secret mounted there.

Mutations show the checks are live: a broken selector, a missing certificate of the last pod, a
dropped --tls-name, an etcd endpoint naming no member, and a config key the binary does not know
must each fail.

Usage: deploy_kubernetes_test.py FIELDPRINT SOURCE_DIR. Exits 77 (CTest: skipped) without
python3-yaml (.ci/deps.sh installs it).
"""
import copy
import difflib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

SKIP = 77
WORKLOADS = ("StatefulSet", "Deployment", "DaemonSet")
ROLES = ("supervisor", "worker")
# What each kustomization deploys: supervisor pods, and whether its workers request GPUs (None:
# it has no workers). A new kustomization is added here.
EXPECTED = {
    "base": {"supervisors": 1, "gpus": True},
    "cpu-trial": {"supervisors": 1, "gpus": False},
    "etcd": {"supervisors": 0, "gpus": None},
    "cluster": {"supervisors": 3, "gpus": True},
}


class RenderError(Exception):
    pass


# ---- rendering ----------------------------------------------------------------------------------

class Rendering:
    def __init__(self, name):
        self.name = name
        self.objects = []    # (file relative to the source tree, object)
        self.generated = {}  # (kind, name) -> {key: source file}
        self.namespace = None
        self.files = set()   # every YAML file read


def json_pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer {path!r} does not start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def pointer_parent(document, path):
    tokens = json_pointer(path)
    if not tokens:
        raise RenderError("a patch of the whole object is not supported")
    node = document
    for token in tokens[:-1]:
        node = pointer_child(node, token, path)
    return node, tokens[-1]


def pointer_child(node, token, path):
    if isinstance(node, dict) and token in node:
        return node[token]
    if isinstance(node, list) and token.isdigit() and int(token) < len(node):
        return node[int(token)]
    raise RenderError(f"{path}: no {token!r}")


def pointer_get(document, path):
    parent, last = pointer_parent(document, path)
    return pointer_child(parent, last, path)


def pointer_add(document, path, value):
    parent, last = pointer_parent(document, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif last == "-":
        parent.append(value)
    elif last.isdigit() and int(last) <= len(parent):
        parent.insert(int(last), value)
    else:
        raise RenderError(f"{path}: cannot add at {last!r}")


def pointer_remove(document, path):
    parent, last = pointer_parent(document, path)
    pointer_child(parent, last, path)
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]


def json_patch(document, operations):
    """RFC 6902, as kustomize's patches apply it."""
    for operation in operations:
        op, path = operation["op"], operation["path"]
        if op == "add":
            pointer_add(document, path, copy.deepcopy(operation["value"]))
        elif op == "replace":
            pointer_remove(document, path)
            pointer_add(document, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            pointer_remove(document, path)
        elif op == "copy":
            pointer_add(document, path, copy.deepcopy(pointer_get(document, operation["from"])))
        elif op == "move":
            value = pointer_get(document, operation["from"])
            pointer_remove(document, operation["from"])
            pointer_add(document, path, value)
        elif op == "test":
            if pointer_get(document, path) != operation["value"]:
                raise RenderError(f"test {path} failed")
        else:
            raise RenderError(f"unknown patch op {op!r}")


def pod_template_containers(obj):
    if obj.get("kind") not in WORKLOADS:
        return []
    pod = obj["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod.get("containers", [])


def set_image(image, entry):
    name = re.split(r"[@]|:(?=[^/]*$)", image)[0]
    if name != entry["name"]:
        return image
    new = entry.get("newName", name)
    if "digest" in entry:
        return f"{new}@{entry['digest']}"
    tag = entry.get("newTag", image[len(name) + 1:] if len(image) > len(name) else None)
    return f"{new}:{tag}" if tag else new


def render(directory, source):
    """Renders the kustomization in `directory` (which must be below source); RenderError when it
    uses a kustomize feature this renderer does not know, or uses one wrongly."""
    import yaml
    relative = os.path.relpath(directory, source)
    path = os.path.join(directory, "kustomization.yaml")
    with open(path) as f:
        kustomization = yaml.safe_load(f)
    known = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator",
             "secretGenerator", "patches", "images"}
    if set(kustomization) - known:
        raise RenderError(f"{relative}: unsupported fields {sorted(set(kustomization) - known)}")
    result = Rendering(relative)
    result.files.add(path)
    for resource in kustomization.get("resources", []):
        target = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(target):
            inner = render(target, source)
            result.objects += inner.objects
            result.files |= inner.files
            for key, files in inner.generated.items():
                if key in result.generated:
                    raise RenderError(f"{relative}: {key} is generated twice")
                result.generated[key] = files
        elif os.path.isfile(target):
            with open(target) as f:
                documents = [d for d in yaml.safe_load_all(f) if d is not None]
            result.objects += [(os.path.relpath(target, source), d) for d in documents]
            result.files.add(target)
        else:
            raise RenderError(f"{relative}: resource {resource} is missing")
    for kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for generator in kustomization.get(field, []):
            files = {}
            for entry in generator.get("files", []):
                key, _, name = entry.rpartition("=")
                files[key or os.path.basename(name)] = os.path.join(directory, name)
            for literal in generator.get("literals", []):
                files[literal.split("=", 1)[0]] = None
            key = (kind, generator["name"])
            behavior = generator.get("behavior", "create")
            if behavior == "create" and key in result.generated:
                raise RenderError(f"{relative}: {key} exists (behavior merge or replace?)")
            if behavior != "create" and key not in result.generated:
                raise RenderError(f"{relative}: {behavior} of {key}, which no resource generates")
            if behavior == "merge":
                files = {**result.generated[key], **files}
            result.generated[key] = files
    for patch in kustomization.get("patches", []):
        target = patch.get("target", {})
        if "path" in patch or set(target) - {"kind", "name"}:
            raise RenderError(f"{relative}: only inline patches with a kind and name target")
        operations = yaml.safe_load(patch["patch"])
        if not isinstance(operations, list):
            raise RenderError(f"{relative}: only JSON 6902 patches (a list of operations)")
        matched = [o for _, o in result.objects if o.get("kind") == target.get("kind")
                   and o.get("metadata", {}).get("name") == target.get("name")]
        if not matched:
            raise RenderError(f"{relative}: patch target {target} matches nothing")
        for obj in matched:
            try:
                json_patch(obj, operations)
            except (RenderError, KeyError, TypeError) as error:
                raise RenderError(f"{relative}: patch of {target}: {error}") from error
    result.namespace = kustomization.get("namespace")
    for _, obj in result.objects:
        if result.namespace and obj.get("kind") != "Namespace":
            obj.setdefault("metadata", {})["namespace"] = result.namespace
        for container in pod_template_containers(obj):
            for entry in kustomization.get("images", []):
                container["image"] = set_image(container.get("image", ""), entry)
    return result


def render_all(source):
    root = os.path.join(source, "deploy", "kubernetes")
    renderings = []
    for path in sorted(glob.glob(os.path.join(root, "*", "kustomization.yaml"))):
        renderings.append(render(os.path.dirname(path), source))
    read = set().union(*(r.files for r in renderings))
    errors = [f"{os.path.relpath(p, source)} is no kustomization's resource"
              for p in sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True))
              if p not in read]
    return renderings, errors


# ---- generic checks ---------------------------------------------------------------------------

def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def volume_source(volume):
    if "configMap" in volume:
        return ("ConfigMap", volume["configMap"]["name"])
    if "secret" in volume:
        return ("Secret", volume["secret"]["secretName"])
    return None


def defined_keys(rendering):
    """(kind, name) -> set of data keys, of generated and of literal ConfigMaps and Secrets."""
    keys = {k: set(v) for k, v in rendering.generated.items()}
    for _, obj in rendering.objects:
        if obj.get("kind") in ("ConfigMap", "Secret"):
            data = {**obj.get("data", {}), **obj.get("stringData", {}),
                    **obj.get("binaryData", {})}
            keys[(obj["kind"], obj["metadata"]["name"])] = set(data)
    return keys


def container_env(container, pod_name, namespace):
    env = {}
    for var in container.get("env", []):
        field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[var["name"]] = {"metadata.name": pod_name, "metadata.namespace": namespace}.get(
            field, var.get("value"))
    return env


def expand(text, env):
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: env[m.group(1)] if env.get(m.group(1)) is not None else m.group(0),
                  text)


def pod_spec_errors(where, workload, keys):
    errors = []
    spec = workload["spec"]
    template = spec["template"]
    labels = template["metadata"].get("labels", {})
    if not selects(spec["selector"].get("matchLabels"), labels):
        errors.append(f"{where}: selector does not match the pod template's labels")
    pod = template["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    for volume in volumes.values():
        source = volume_source(volume)
        if source is not None and source not in keys:
            errors.append(f"{where}: {source[0]} {source[1]} is not defined")
    ports = set()
    for container in pod.get("initContainers", []) + pod["containers"]:
        if not container.get("image"):
            errors.append(f"{where}: container {container['name']} has no image")
        own = set()
        for port in container.get("ports", []):
            own |= {port["containerPort"], port.get("name")}
        ports |= own
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes and mount["name"] not in claims:
                errors.append(f"{where}: mount {mount['name']} has no volume")
            source = volume_source(volumes.get(mount["name"], {}))
            if source in keys and "subPath" in mount and mount["subPath"] not in keys[source]:
                errors.append(f"{where}: {source[1]} has no {mount['subPath']} to mount")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            action = container.get(probe, {})
            port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
            if port is not None and port not in own:
                errors.append(f"{where}: {probe} port {port} is not a port of {container['name']}")
        names = {v["name"] for v in container.get("env", [])}
        for text in container.get("command", []) + container.get("args", []):
            for var in re.findall(r"\$\(([^)]*)\)", text):
                if var not in names:
                    errors.append(f"{where}: $({var}) is not an env var of {container['name']}")
    port = template["metadata"].get("annotations", {}).get("prometheus.io/port")
    if port is not None and int(port) not in ports:
        errors.append(f"{where}: prometheus.io/port {port} is not a container port")
    return errors, labels, ports


def disruptions_allowed(budget, replicas):
    spec = budget["spec"]
    if "maxUnavailable" in spec:
        return int(spec["maxUnavailable"])
    return replicas - int(spec.get("minAvailable", 0))


def check(rendering, expected):
    errors = []
    keys = defined_keys(rendering)
    objects = rendering.objects
    for where, obj in objects:
        for field in ("apiVersion", "kind"):
            if not obj.get(field):
                errors.append(f"{where}: no {field}")
        if not obj.get("metadata", {}).get("name"):
            errors.append(f"{where}: no metadata.name")
    pods = []  # (labels, ports, workload)
    for where, obj in objects:
        if obj.get("kind") not in WORKLOADS:
            continue
        found, labels, ports = pod_spec_errors(where, obj, keys)
        errors += found
        pods.append((labels, ports, obj))
        if obj["kind"] == "StatefulSet":
            headless = [o for _, o in objects if o.get("kind") == "Service"
                        and o["metadata"]["name"] == obj["spec"].get("serviceName")
                        and o["spec"].get("clusterIP") == "None"]
            if not headless:
                errors.append(f"{where}: serviceName names no headless Service")
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") == "worker":
            for c in obj["spec"]["template"]["spec"]["containers"]:
                gpu = "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                if gpu != expected["gpus"]:
                    errors.append(f"{where}: worker container {c['name']} "
                                  f"{'requests a GPU' if gpu else 'requests no GPU'}")
    for where, obj in objects:
        kind = obj.get("kind")
        if kind == "Service":
            matched = [p for p in pods if selects(obj["spec"].get("selector"), p[0])]
            if not matched:
                errors.append(f"{where}: Service {obj['metadata']['name']} selects no pods")
            for port in obj["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                if matched and not all(target in p[1] for p in matched):
                    errors.append(f"{where}: Service port {target} is not a port of its pods")
        if kind == "PodDisruptionBudget":
            matched = [p for p in pods if selects(obj["spec"]["selector"].get("matchLabels"), p[0])]
            if not matched:
                errors.append(f"{where}: PodDisruptionBudget selects no pods")
            for _, _, workload in matched:
                replicas = workload["spec"].get("replicas", 1)
                allowed = disruptions_allowed(obj, replicas)
                if allowed >= replicas or (replicas > 1 and allowed < 1):
                    errors.append(f"{where}: PodDisruptionBudget allows {allowed} of {replicas} "
                                  f"{workload['metadata']['name']} pods to go")
    return errors


# ---- fieldprint's containers ------------------------------------------------------------------

class Binary:
    """The fieldprint binary, with its answers cached (the mutations ask again)."""

    def __init__(self, path):
        self.path = path
        self.flags = {}
        self.parsed = {}

    def known_flags(self, role):
        if role not in self.flags:
            result = subprocess.run([self.path, role, "--help"], capture_output=True, text=True,
                                    check=True)
            self.flags[role] = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.stdout))
        return self.flags[role]

    def config_error(self, role, config):
        """None when `config` parses with the options of `fieldprint ROLE`, else the reason."""
        if (role, config) not in self.parsed:
            result = subprocess.run([self.path, role, "--config", config, "--help"],
                                    capture_output=True, text=True)
            self.parsed[(role, config)] = None if result.returncode == 0 else result.stderr.strip()
        return self.parsed[(role, config)]


def parse_flags(args):
    flags = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            if "=" in arg:
                name, value = arg[2:].split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                name, value = arg[2:], args[i + 1]
                i += 1
            else:
                name, value = arg[2:], True
            flags[name] = value
        i += 1
    return flags


class Pod:
    """One pod of a StatefulSet, with the effective options of one of its containers."""

    def __init__(self, where, workload, index, container, rendering):
        self.where = where
        self.workload = workload
        self.name = f"{workload['metadata']['name']}-{index}"
        self.spec = workload["spec"]["template"]["spec"]
        self.container = container
        self.env = container_env(container, self.name, rendering.namespace)
        self.args = [expand(a, self.env) for a in container.get("args", [])]
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        self.claims = {c["metadata"]["name"] for c in
                       workload["spec"].get("volumeClaimTemplates", [])}
        self.role = self.args[0] if self.args and self.args[0] in ROLES else None
        self.options = {}
        self.config = None  # the source file of --config

    def mount_for(self, path, container=None):
        best = None
        for mount in (container or self.container).get("volumeMounts", []):
            base = mount["mountPath"].rstrip("/")
            if (path == base or path.startswith(base + "/")) and \
                    (best is None or len(base) > len(best["mountPath"].rstrip("/"))):
                best = mount
        return best

    def file(self, path, generated, keys):
        """(source file or None, error or None) of a file the container reads at `path`."""
        mount = self.mount_for(path)
        if mount is None:
            return None, f"{path} is on no volume"
        volume = self.volumes.get(mount["name"])
        source = volume_source(volume) if volume else None
        if source is None:
            return None, None  # a claim or an emptyDir: written at run time
        base = mount["mountPath"].rstrip("/")
        key = mount["subPath"] if "subPath" in mount else path[len(base) + 1:]
        if "subPath" in mount and path != base:
            return None, f"{path} is below the single file mounted at {base}"
        if key not in keys.get(source, set()):
            return None, f"{path}: {source[0]} {source[1]} has no {key}"
        return generated.get(source, {}).get(key), None


def fieldprint_pods(rendering, binary, keys):
    """The pods running `fieldprint supervisor` or `fieldprint worker`, with their options."""
    pods, errors = [], []
    for where, obj in rendering.objects:
        containers = obj["spec"]["template"]["spec"]["containers"] \
            if obj.get("kind") in WORKLOADS else []
        for container in containers:
            args = container.get("args", [])
            if "command" in container or not args or args[0] not in ROLES:
                continue
            if obj["kind"] != "StatefulSet":
                errors.append(f"{where}: fieldprint {args[0]} needs a stable name (StatefulSet)")
                continue
            for index in range(obj["spec"].get("replicas", 1)):
                pod = Pod(where, obj, index, container, rendering)
                errors += pod_options(pod, binary, rendering, keys)
                pods.append(pod)
    return pods, errors


def pod_options(pod, binary, rendering, keys):
    errors = []
    flags = parse_flags(pod.args[1:])
    for name in flags:
        if f"--{name}" not in binary.known_flags(pod.role):
            errors.append(f"{pod.where}: fieldprint {pod.role} has no --{name}")
    if "config" in flags:
        pod.config, error = pod.file(flags["config"], rendering.generated, keys)
        if error is None and pod.config is None:
            error = f"--config {flags['config']} is not a mounted ConfigMap file"
        if error is None and pod.config is not None:
            error = binary.config_error(pod.role, pod.config)
            if error is None:
                with open(pod.config, "rb") as f:
                    pod.options = tomllib.load(f)
        if error is not None:
            errors.append(f"{pod.where}: {error}")
    pod.options.update({k: v for k, v in flags.items() if k != "config"})
    return errors


def certificate_errors(pod, name, rendering, keys):
    errors = []
    certs = pod.options.get("certs-dir", "")
    for file in ("ca.pem", f"{name}.pem", f"{name}.key"):
        _, error = pod.file(f"{certs}/{file}", rendering.generated, keys)
        if error is not None:
            errors.append(f"{pod.where}: pod {pod.name}: {error}")
    for option, value in pod.options.items():
        if option.endswith("-file"):
            _, error = pod.file(value, rendering.generated, keys)
            if error is not None:
                errors.append(f"{pod.where}: pod {pod.name}: {option}: {error}")
    return errors


def stateful_pod(objects, host):
    """(StatefulSet, Service) whose pod host (POD.SERVICE) names, else (None, None)."""
    pod, _, service = host.partition(".")
    for _, obj in objects:
        spec = obj.get("spec", {})
        if obj.get("kind") != "StatefulSet" or spec.get("serviceName") != service.split(".")[0]:
            continue
        names = {f"{obj['metadata']['name']}-{i}" for i in range(spec.get("replicas", 1))}
        services = [o for _, o in objects if o.get("kind") == "Service"
                    and o["metadata"]["name"] == spec["serviceName"]]
        if pod in names and services:
            return obj, services[0]
    return None, None


def etcd_errors(pod, rendering):
    errors = []
    listed = {}
    for endpoint in str(pod.options.get("etcd-endpoints", "")).split(","):
        match = re.fullmatch(r"https://([^:/]+):(\d+)", endpoint)
        if not match:
            errors.append(f"{pod.where}: etcd endpoint {endpoint!r} is not https://HOST:PORT")
            continue
        host, port = match.group(1), int(match.group(2))
        workload, service = stateful_pod(rendering.objects, host)
        if workload is None:
            errors.append(f"{pod.where}: etcd endpoint {endpoint} is no pod of a StatefulSet")
            continue
        if port not in {p["port"] for p in service["spec"].get("ports", [])}:
            errors.append(f"{pod.where}: etcd endpoint {endpoint}: Service has no port {port}")
        listed.setdefault(workload["metadata"]["name"], set()).add(host.split(".")[0])
        # etcd serves the certificate of its --cert-file: its name must be the endpoint's host.
        member = host.split(".")[0]
        for container in workload["spec"]["template"]["spec"]["containers"]:
            env = container_env(container, member, rendering.namespace)
            for arg in container.get("command", []) + container.get("args", []):
                if arg.startswith("--cert-file="):
                    name = os.path.basename(expand(arg.split("=", 1)[1], env))
                    if name.removesuffix(".pem") != host:
                        errors.append(f"{pod.where}: etcd endpoint {endpoint}: the member's "
                                      f"certificate is {name}")
    for _, obj in rendering.objects:
        if obj.get("kind") == "StatefulSet" and obj["metadata"]["name"] in listed:
            every = {f"{obj['metadata']['name']}-{i}" for i in range(obj["spec"]["replicas"])}
            if listed[obj["metadata"]["name"]] != every:
                errors.append(f"{pod.where}: etcd-endpoints leave out "
                              f"{sorted(every - listed[obj['metadata']['name']])}")
    return errors


def ledger_key_errors(pod, keys):
    """With several members, each must hold the one checkpoint.key in data-dir before it starts."""
    target = f"{pod.options.get('data-dir')}/checkpoint.key"
    for init in pod.spec.get("initContainers", []):
        sources = [volume_source(pod.volumes.get(m["name"], {})) for m in
                   init.get("volumeMounts", [])]
        shared = any("checkpoint.key" in keys.get(s, set()) for s in sources if s)
        data = pod.mount_for(target, init)
        script = " ".join(init.get("command", []) + init.get("args", []))
        if shared and data is not None and data["name"] in pod.claims and target in script:
            return []
    return [f"{pod.where}: no init container puts a Secret's checkpoint.key at {target}"]


def supervisor_errors(pod, supervisors, rendering, keys):
    errors = certificate_errors(pod, pod.options.get("tls-name", "supervisor-0"), rendering, keys)
    if pod.options.get("tls-name", "supervisor-0") != pod.name:
        errors.append(f"{pod.where}: pod {pod.name} runs as tls-name "
                      f"{pod.options.get('tls-name', 'supervisor-0')}")
    data = pod.mount_for(str(pod.options.get("data-dir", "")))
    if data is None or data["name"] not in pod.claims:
        errors.append(f"{pod.where}: data-dir is not on the pod's own PersistentVolumeClaim")
    if pod.options.get("log-backend", "rocksdb") == "rocksdb":
        if len(supervisors) != 1:
            errors.append(f"{pod.where}: {len(supervisors)} RocksDB-log supervisors are "
                          "unrelated ledgers")
        return errors
    errors += etcd_errors(pod, rendering)
    if len(supervisors) > 1:
        errors += ledger_key_errors(pod, keys)
    return errors


def worker_errors(pod, supervisors, rendering, keys):
    errors = certificate_errors(pod, pod.options.get("name"), rendering, keys)
    if pod.options.get("name") != pod.name:
        errors.append(f"{pod.where}: pod {pod.name} runs as worker {pod.options.get('name')}")
    listed = set()
    for entry in pod.options.get("supervisor", []):
        match = re.fullmatch(r"([^@]+)@([^:]+):(\d+)", entry)
        if not match:
            errors.append(f"{pod.where}: supervisor {entry!r} is not NAME@HOST:PORT")
            continue
        name, host, port = match.group(1), match.group(2), int(match.group(3))
        target = [s for s in supervisors if s.name == host.split(".")[0]]
        _, service = stateful_pod(rendering.objects, host)
        if not target or service is None:
            errors.append(f"{pod.where}: supervisor {entry}: {host} is no supervisor pod")
            continue
        if target[0].options.get("tls-name", "supervisor-0") != name:
            errors.append(f"{pod.where}: supervisor {entry}: that pod's tls-name is "
                          f"{target[0].options.get('tls-name', 'supervisor-0')}")
        if target[0].options.get("worker-port") != port or \
                port not in {p["port"] for p in service["spec"].get("ports", [])}:
            errors.append(f"{pod.where}: supervisor {entry}: port {port} is not its worker port")
        listed.add(target[0].name)
    missing = sorted({s.name for s in supervisors} - listed)
    if missing:
        errors.append(f"{pod.where}: pod {pod.name} does not list supervisors {missing}")
    return errors


def check_fieldprint(rendering, binary, expected):
    keys = defined_keys(rendering)
    pods, errors = fieldprint_pods(rendering, binary, keys)
    if errors:
        return errors  # without the options in effect, the checks below would only add noise
    supervisors = [p for p in pods if p.role == "supervisor"]
    if len(supervisors) != expected["supervisors"]:
        errors.append(f"{rendering.name}: {len(supervisors)} supervisor pods, expected "
                      f"{expected['supervisors']}")
    for pod in supervisors:
        errors += supervisor_errors(pod, supervisors, rendering, keys)
    for pod in pods:
        if pod.role == "worker":
            errors += worker_errors(pod, supervisors, rendering, keys)
    authorities = {pod.file(f"{pod.options.get('certs-dir')}/ca.pem", rendering.generated,
                            keys)[0] for pod in pods}
    if len(authorities) > 1:
        errors.append(f"{rendering.name}: workers and supervisors trust different CAs "
                      f"{sorted(str(a) for a in authorities)}")
    # Other containers' path arguments into Secrets and ConfigMaps (etcd's certificates).
    for where, obj in rendering.objects:
        for container in pod_template_containers(obj):
            if any(p.container is container for p in pods):
                continue
            for index in range(obj["spec"].get("replicas", 1)):
                pod = Pod(where, obj, index, container, rendering)
                for arg in container.get("command", []) + container.get("args", []):
                    path = expand(arg.split("=", 1)[-1], pod.env)
                    mount = pod.mount_for(path) if path.startswith("/") else None
                    if mount and volume_source(pod.volumes.get(mount["name"], {})):
                        _, error = pod.file(path, rendering.generated, keys)
                        if error is not None:
                            errors.append(f"{where}: pod {pod.name}: {error}")
    return errors


def all_errors(rendering, binary):
    name = os.path.basename(rendering.name)
    if name not in EXPECTED:
        return [f"{rendering.name}: not in EXPECTED (tests/deploy_kubernetes_test.py)"]
    errors = check(rendering, EXPECTED[name]) + check_fieldprint(rendering, binary, EXPECTED[name])
    # Pods of one StatefulSet repeat each other's errors.
    return [f"{name}: {error}" for error in dict.fromkeys(errors)]


# ---- mutations --------------------------------------------------------------------------------

def mutations(renderings, binary, tmp):
    """Each mistake must be found in every rendering it changes (and it must change one);
    returns the ones that were not."""
    missed = []

    def must_fail(what, mutate):
        changed = 0
        for rendering in renderings:
            broken = copy.deepcopy(rendering)
            if not mutate(broken):
                continue
            changed += 1
            if not all_errors(broken, binary):
                missed.append(f"{what} ({rendering.name})")
        if not changed:
            missed.append(f"{what} (no kustomization to make it in)")

    def break_selectors(rendering):
        changed = False
        for _, obj in rendering.objects:
            if obj.get("kind") == "StatefulSet":
                obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "nothing"
                changed = True
        return changed

    def drop_last_certificate(rendering):
        changed = False
        for _, obj in rendering.objects:
            if obj.get("kind") == "StatefulSet" and obj["metadata"]["name"] in ROLES:
                last = f"{obj['metadata']['name']}-{obj['spec'].get('replicas', 1) - 1}.key"
                for files in rendering.generated.values():
                    changed |= files.pop(last, None) is not None
        return changed

    def drop_tls_name(rendering):
        changed = False
        for _, obj in rendering.objects:
            for container in pod_template_containers(obj):
                args = container.get("args", [])
                if "--tls-name" in args and obj["spec"].get("replicas", 1) > 1:
                    del args[args.index("--tls-name"):args.index("--tls-name") + 2]
                    changed = True
        return changed

    def edit_config(old, new):
        def mutate(rendering):
            changed = False
            for files in rendering.generated.values():
                for key, path in files.items():
                    if path and path.endswith(".toml") and os.path.exists(path):
                        with open(path) as f:
                            text = f.read()
                        if old not in text:
                            continue
                        copied = os.path.join(tmp, f"{len(os.listdir(tmp))}-{key}")
                        with open(copied, "w") as f:
                            f.write(text.replace(old, new, 1))
                        files[key] = copied
                        changed = True
            return changed
        return mutate

    must_fail("a StatefulSet with a broken selector", break_selectors)
    must_fail("a missing certificate of the last pod", drop_last_certificate)
    must_fail("members without --tls-name", drop_tls_name)
    must_fail("an etcd endpoint naming no member", edit_config("etcd-2.etcd", "etcd-3.etcd"))
    must_fail("a config key the binary does not know",
              edit_config("log-level =", "no-such-option = 1\nlog-level ="))
    return missed


# ---- kubectl ----------------------------------------------------------------------------------

def compare_with_kubectl(renderings, source):
    """Renders every kustomization with `kubectl kustomize` (where kubectl exists) on a copy with
    placeholder files for the certificates and keys an operator creates, and compares."""
    import yaml
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return [], "kubectl not installed: not compared with kubectl kustomize"
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(source, "deploy", "kubernetes")
        copied = os.path.join(tmp, "kubernetes")
        shutil.copytree(root, copied)
        for rendering in renderings:
            for files in rendering.generated.values():
                for path in filter(None, files.values()):
                    placeholder = os.path.join(copied, os.path.relpath(path, root))
                    if not os.path.exists(placeholder):
                        os.makedirs(os.path.dirname(placeholder), exist_ok=True)
                        with open(placeholder, "w") as f:
                            f.write("placeholder\n")
        for rendering in renderings:
            directory = os.path.join(copied, os.path.relpath(rendering.name, "deploy/kubernetes"))
            result = subprocess.run([kubectl, "kustomize", directory], capture_output=True,
                                    text=True)
            if result.returncode != 0:
                errors.append(f"kubectl kustomize {rendering.name}:\n{result.stderr}")
                continue
            theirs = list(yaml.safe_load_all(result.stdout))
            errors += compare(rendering, theirs)
    return errors, f"kubectl kustomize gave the same {len(renderings)} renderings"


def compare(rendering, theirs):
    names = {name for _, name in rendering.generated}

    def unhash(value):
        if isinstance(value, dict):
            return {k: unhash(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unhash(v) for v in value]
        if isinstance(value, str):
            match = re.fullmatch(r"(.+)-[a-z0-9]{10}", value)
            if match and match.group(1) in names:
                return match.group(1)
        return value

    theirs = [unhash(o) for o in theirs]
    errors = []
    their_data = {(o["kind"], o["metadata"]["name"]): sorted(o.get("data", {})) for o in theirs
                  if o["kind"] in ("ConfigMap", "Secret")}
    for key in sorted(set(rendering.generated) | set(their_data)):
        here = sorted(rendering.generated.get(key, {}))
        if key not in their_data or here != their_data[key]:
            errors.append(f"{rendering.name}: {key[0]} {key[1]} holds {here} here, "
                          f"{their_data.get(key)} with kubectl")
    ours = {(o["kind"], o["metadata"]["name"]): o for _, o in rendering.objects}
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in theirs
              if o["kind"] not in ("ConfigMap", "Secret") or (o["kind"], o["metadata"]["name"])
              not in rendering.generated}
    for key in sorted(set(ours) | set(theirs)):
        a = json.dumps(ours.get(key), indent=1, sort_keys=True).splitlines()
        b = json.dumps(theirs.get(key), indent=1, sort_keys=True).splitlines()
        if a != b:
            diff = "\n".join(list(difflib.unified_diff(a, b, "here", "kubectl", lineterm=""))[:40])
            errors.append(f"{rendering.name}: {key[0]} {key[1]} differs:\n{diff}")
    return errors


def main():
    binary, source = Binary(sys.argv[1]), os.path.abspath(sys.argv[2])
    try:
        import yaml  # noqa: F401
    except ImportError:
        print("deploy_kubernetes: python3-yaml not installed (.ci/deps.sh installs it)")
        return SKIP
    try:
        renderings, errors = render_all(source)
    except RenderError as error:
        sys.exit(f"deploy_kubernetes: {error}")
    for rendering in renderings:
        errors += all_errors(rendering, binary)
    if errors:
        sys.exit("deploy_kubernetes:\n  " + "\n  ".join(errors))
    with tempfile.TemporaryDirectory() as tmp:
        missed = mutations(renderings, binary, tmp)
    if missed:
        sys.exit("deploy_kubernetes: the checks did not find " + "; ".join(missed))
    errors, compared = compare_with_kubectl(renderings, source)
    if errors:
        sys.exit("deploy_kubernetes:\n  " + "\n  ".join(errors))
    objects = sum(len(r.objects) for r in renderings)
    pods = sum(len(fieldprint_pods(r, binary, defined_keys(r))[0]) for r in renderings)
    print(f"deploy_kubernetes: {len(renderings)} kustomizations, {objects} objects, "
          f"{pods} fieldprint pods checked; {compared}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
