#!/usr/bin/env python3
"""Checks the Kubernetes manifests of deploy/kubernetes without a cluster.

Every YAML file parses; every object has apiVersion, kind and a name; each kustomization's
resources exist; workload selectors match their pod templates; Services and
PodDisruptionBudgets select a workload's pods and name ports those pods have; every volume
mount names a volume or claim; ConfigMaps and Secrets a pod uses are defined or generated; the
Prometheus annotations name a container port; a container's --config file is where its
ConfigMap is mounted; the workers request a GPU; and the TOML configurations the ConfigMaps are
generated from parse with the binary's own options. A manifest with a broken selector must
fail the same checks, which shows they are live. Where kubectl is installed, every
kustomization also renders with `kubectl kustomize`.

Usage: deploy_kubernetes_test.py FIELDPRINT SOURCE_DIR. Exits 77 (CTest: skipped) without
python3-yaml (.ci/deps.sh installs it).
"""
import copy
import glob
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
WORKLOADS = ("StatefulSet", "Deployment", "DaemonSet")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_spec_errors(where, workload, defined):
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
        if "configMap" in volume and volume["configMap"]["name"] not in defined["ConfigMap"]:
            errors.append(f"{where}: ConfigMap {volume['configMap']['name']} is not defined")
        if "secret" in volume and volume["secret"]["secretName"] not in defined["Secret"]:
            errors.append(f"{where}: Secret {volume['secret']['secretName']} is not defined")
    ports = set()
    containers = pod.get("initContainers", []) + pod["containers"]
    for container in containers:
        if not container.get("image"):
            errors.append(f"{where}: container {container['name']} has no image")
        for port in container.get("ports", []):
            ports.add(port["containerPort"])
            ports.add(port.get("name"))
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes and mount["name"] not in claims:
                errors.append(f"{where}: mount {mount['name']} has no volume")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            action = container.get(probe, {})
            port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
            own = {p.get("name") for p in container.get("ports", [])} | \
                {p["containerPort"] for p in container.get("ports", [])}
            if port is not None and port not in own:
                errors.append(f"{where}: {probe} port {port} is not a port of {container['name']}")
        args = container.get("args", [])
        if "--config" in args:
            path = args[args.index("--config") + 1]
            mounted = [m for m in container.get("volumeMounts", [])
                       if m["mountPath"] == path and "configMap" in volumes.get(m["name"], {})]
            if not mounted:
                errors.append(f"{where}: --config {path} is not a mounted ConfigMap file")
    port = template["metadata"].get("annotations", {}).get("prometheus.io/port")
    if port is not None and int(port) not in ports:
        errors.append(f"{where}: prometheus.io/port {port} is not a container port")
    return errors, labels, ports


def check(objects, kustomizations):
    errors = []
    defined = {"ConfigMap": set(), "Secret": set()}
    for kustomization in kustomizations:
        for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
            defined[kind].update(g["name"] for g in kustomization.get(key, []))
    for where, obj in objects:
        for field in ("apiVersion", "kind"):
            if not obj.get(field):
                errors.append(f"{where}: no {field}")
        if not obj.get("metadata", {}).get("name"):
            errors.append(f"{where}: no metadata.name")
        if obj.get("kind") in defined:
            defined[obj["kind"]].add(obj["metadata"]["name"])
    pods = []  # (labels, ports, workload)
    for where, obj in objects:
        if obj.get("kind") in WORKLOADS:
            found, labels, ports = pod_spec_errors(where, obj, defined)
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
                    if "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}):
                        errors.append(f"{where}: worker container {c['name']} requests no GPU")
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
            if not any(selects(obj["spec"]["selector"].get("matchLabels"), p[0]) for p in pods):
                errors.append(f"{where}: PodDisruptionBudget selects no pods")
    return errors


def load(source):
    import yaml
    root = os.path.join(source, "deploy", "kubernetes")
    objects, kustomizations, configs = [], [], []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        relative = os.path.relpath(path, source)
        if os.path.basename(path) == "kustomization.yaml":
            kustomization = documents[0]
            kustomizations.append(kustomization)
            for resource in kustomization.get("resources", []):
                if not os.path.exists(os.path.join(os.path.dirname(path), resource)):
                    sys.exit(f"deploy_kubernetes: {relative}: resource {resource} is missing")
            for generator in kustomization.get("configMapGenerator", []):
                for name in generator.get("files", []):
                    configs.append(os.path.join(os.path.dirname(path), name))
            continue
        objects += [(relative, d) for d in documents]
    return objects, kustomizations, configs


def render_with_kubectl(binary, source):
    """Renders every kustomization with `kubectl kustomize` where kubectl exists (it is not a
    Debian 12 package, so this part is optional), on a copy with certificates from the binary's
    `certs init` in place of the ones an operator creates."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl not installed: kustomize rendering not checked"
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "kubernetes")
        shutil.copytree(os.path.join(source, "deploy", "kubernetes"), root)
        for directory, names in (("base", "supervisor-0,worker-0,worker-1,worker-2"),
                                 ("etcd", "etcd-0.etcd,etcd-1.etcd,etcd-2.etcd,supervisor-0")):
            subprocess.run([binary, "certs", "init", os.path.join(root, directory, "certs"),
                            "--names", names], check=True, capture_output=True)
        directories = sorted(os.path.dirname(p) for p in
                             glob.glob(os.path.join(root, "*", "kustomization.yaml")))
        for directory in directories:
            result = subprocess.run([kubectl, "kustomize", directory], capture_output=True,
                                    text=True)
            if result.returncode != 0:
                sys.exit(f"deploy_kubernetes: kubectl kustomize {directory}:\n{result.stderr}")
    return f"kubectl kustomize rendered {len(directories)} kustomizations"


def main():
    binary, source = sys.argv[1], sys.argv[2]
    try:
        import yaml  # noqa: F401
    except ImportError:
        print("deploy_kubernetes: python3-yaml not installed (.ci/deps.sh installs it)")
        return SKIP
    objects, kustomizations, configs = load(source)
    errors = check(objects, kustomizations)
    if errors:
        sys.exit("deploy_kubernetes:\n  " + "\n  ".join(errors))

    broken = copy.deepcopy(objects)
    for _, obj in broken:
        if obj.get("kind") == "StatefulSet":
            obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "nothing"
    if not check(broken, kustomizations):
        sys.exit("deploy_kubernetes: a StatefulSet with a broken selector passed the checks")

    for config in configs:
        role = os.path.basename(config).removesuffix(".toml")
        result = subprocess.run([binary, role, "--config", config, "--help"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"deploy_kubernetes: {config} does not parse:\n{result.stderr}")
    rendered = render_with_kubectl(binary, source)
    print(f"deploy_kubernetes: {len(objects)} objects, {len(kustomizations)} kustomizations, "
          f"{len(configs)} configs parse; {rendered}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
