#!/usr/bin/env python3
"""Checks deploy/prometheus and deploy/grafana with Debian's promtool.

- both scrape configurations pass `promtool check config` (Debian's Prometheus is built without
  Kubernetes service discovery, so the Kubernetes one is checked with its kubernetes_sd_configs
  swapped for static targets and the pod's service account files for empty ones: everything
  else in it, relabelling included, is checked as is);
- the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`), and
  the unit tests bite: a rule with a changed threshold fails them;
- every alert has a unit test that expects it to fire, and a section in docs/operations.md;
- every PromQL expression of the Grafana dashboard parses (as a recording rule for promtool,
  with Grafana's variables replaced by values).

Usage: deploy_prometheus_test.py SOURCE_DIR. Exits 77 (CTest: skipped) without promtool or
python3-yaml, both installed by .ci/deps.sh.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77


def promtool(*args, cwd):
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)


def require_ok(result, what):
    if result.returncode != 0:
        sys.exit(f"deploy_prometheus: {what} failed:\n{result.stdout}{result.stderr}")


def main():
    source = sys.argv[1]
    if shutil.which("promtool") is None:
        print("deploy_prometheus: promtool not installed (.ci/deps.sh installs prometheus)")
        return SKIP
    try:
        import yaml
    except ImportError:
        print("deploy_prometheus: python3-yaml not installed (.ci/deps.sh installs it)")
        return SKIP
    prom = os.path.join(source, "deploy", "prometheus")
    with tempfile.TemporaryDirectory() as tmp:
        require_ok(promtool("check", "config", "prometheus.yml", cwd=prom), "check config")
        require_ok(promtool("check", "rules", "alerts.yml", cwd=prom), "check rules")
        require_ok(promtool("test", "rules", "alerts_test.yml", cwd=prom), "test rules")

        with open(os.path.join(prom, "prometheus-kubernetes.yml")) as f:
            kube = yaml.safe_load(f)
        swapped = 0
        for job in kube["scrape_configs"]:
            if "kubernetes_sd_configs" in job:
                del job["kubernetes_sd_configs"]
                job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
                swapped += 1
        if swapped == 0:
            sys.exit("deploy_prometheus: prometheus-kubernetes.yml has no Kubernetes discovery")
        shutil.copy(os.path.join(prom, "alerts.yml"), tmp)
        # promtool opens the service account's files, which exist only inside a pod.
        account = "/var/run/secrets/kubernetes.io/serviceaccount/"
        for name in ("ca.crt", "token"):
            open(os.path.join(tmp, name), "w").close()
        with open(os.path.join(tmp, "kube.yml"), "w") as f:
            f.write(yaml.safe_dump(kube).replace(account, tmp + "/"))
        require_ok(promtool("check", "config", "kube.yml", cwd=tmp), "check config (kubernetes)")

        # The unit tests bite: raise the checkpoint-age threshold tenfold and they must fail.
        with open(os.path.join(prom, "alerts.yml")) as f:
            rules_text = f.read()
        if "checkpoint_age_seconds > 300" not in rules_text:
            sys.exit("deploy_prometheus: the mutation target is gone from alerts.yml; update it")
        with open(os.path.join(tmp, "alerts.yml"), "w") as f:
            f.write(rules_text.replace("checkpoint_age_seconds > 300",
                                       "checkpoint_age_seconds > 3000"))
        shutil.copy(os.path.join(prom, "alerts_test.yml"), tmp)
        if promtool("test", "rules", "alerts_test.yml", cwd=tmp).returncode == 0:
            sys.exit("deploy_prometheus: the rule unit tests pass against a mutated rule")

        rules = yaml.safe_load(rules_text)
        alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
        with open(os.path.join(prom, "alerts_test.yml")) as f:
            tests = yaml.safe_load(f)
        fired = {case["alertname"] for t in tests["tests"] for case in t.get("alert_rule_test", [])
                 if case.get("exp_alerts")}
        with open(os.path.join(source, "docs", "operations.md")) as f:
            operations = f.read()
        for alert in alerts:
            if alert not in fired:
                sys.exit(f"deploy_prometheus: no unit test expects {alert} to fire")
            if f"`{alert}`" not in operations:
                sys.exit(f"deploy_prometheus: docs/operations.md does not describe {alert}")

        with open(os.path.join(source, "deploy", "grafana", "fieldprint.json")) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        if not exprs:
            sys.exit("deploy_prometheus: the dashboard has no queries")
        substitutions = {"$__rate_interval": "5m", "$supervisor": ".*", "$worker": ".*"}
        recording = []
        for i, expr in enumerate(exprs):
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            if "$" in expr:
                sys.exit(f"deploy_prometheus: unknown dashboard variable in {expr}")
            recording.append({"record": f"dashboard:query{i}", "expr": expr})
        with open(os.path.join(tmp, "dashboard.yml"), "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}, f)
        require_ok(promtool("check", "rules", "dashboard.yml", cwd=tmp), "dashboard queries")
    print(f"deploy_prometheus: 2 configs, {len(alerts)} alerts with unit tests, "
          f"{len(exprs)} dashboard queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
