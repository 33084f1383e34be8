"""Checks of deploy/ that need no container engine and no cluster (run by check.sh).

- every YAML file parses; every Kubernetes object has what the API server requires, and
  the workloads keep the project's rules (non-root, read-only root, no capabilities,
  probes on /healthz and /readyz, resources); names that refer to one another resolve;
- the kustomizations resolve (and render with `kubectl kustomize` where it exists);
- the real server (build/bin/s3dliod) starts with each deployment's command line and
  config file, with paths moved under a temporary directory and listeners moved to
  127.0.0.1, and stops cleanly on SIGTERM: the image's default, the pool Deployment, the
  node DaemonSet (and its socket's mode), the systemd unit. Settings that only a server
  built after issue 6 knows make the as-written run SKIP, and the rest must still pass;
- the Dockerfile: COPY sources exist, the runtime packages provide every shared library
  s3dliod needs, the build packages provide every pkg-config module CMakeLists.txt needs,
  every package exists in Debian's lists, EXPOSE/HEALTHCHECK/USER/ENTRYPOINT are set;
- the systemd unit passes `systemd-analyze verify`.
Prints one line per check and ends with 'N passed, N failed, N skipped'; exits 1 on a FAIL.
"""

import base64
import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
SERVER = os.environ.get("S3DLIOD", os.path.join(ROOT, "build", "bin", "s3dliod"))
IMAGE_BIN = "/usr/local/bin/s3dliod"

# The settings issue 6 adds to s3dliod (config keys = long option names).
ISSUE6 = ("metrics", "token-file", "tls-cert", "tls-key", "tls-client-ca", "cache-mem",
          "cache-dir", "cache-disk")
# Flags that take no value.
NOVALUE = ("help", "version")

results = []  # (status, name, detail)


def report(status, name, detail=""):
    results.append((status, name, detail))
    line = f"{status:4} {name}"
    if detail:
        line += ": " + detail
    print(line, flush=True)


class Fail(Exception):
    pass


def check(name, fn):
    """Run fn(); it returns None (PASS), or ('SKIP', why); raising Fail or anything is FAIL."""
    try:
        r = fn()
    except Fail as e:
        report("FAIL", name, str(e))
        return
    except Exception as e:  # a bug here is a failure too, with its cause
        report("FAIL", name, f"{type(e).__name__}: {e}")
        return
    if r and r[0] == "SKIP":
        report("SKIP", name, r[1])
    else:
        report("PASS", name, r[1] if r else "")


def rel(p):
    return os.path.relpath(p, ROOT)


# ---------------------------------------------------------------------------- YAML ----

def yaml_files():
    out = []
    for ext in ("yaml", "yml"):
        out += glob.glob(os.path.join(DEPLOY, "**", "*." + ext), recursive=True)
    return sorted(out)


DOCS = {}  # path -> [doc, ...]


def check_yaml_parses():
    files = yaml_files()
    if not files:
        raise Fail("no YAML files under deploy/")
    bad = []
    for f in files:
        try:
            with open(f) as fh:
                DOCS[f] = [d for d in yaml.safe_load_all(fh) if d is not None]
        except yaml.YAMLError as e:
            bad.append(f"{rel(f)}: {e}")
    if bad:
        raise Fail("; ".join(bad))
    return ("PASS", f"{len(files)} files")


def k8s_objects():
    for f, docs in DOCS.items():
        for i, d in enumerate(docs):
            if isinstance(d, dict) and d.get("kind") != "Kustomization":
                yield f, i, d


def check_required_fields():
    errs, n = [], 0
    for f, i, d in k8s_objects():
        n += 1
        where = f"{rel(f)}#{i}"
        for key in ("apiVersion", "kind"):
            if not isinstance(d.get(key), str) or not d.get(key):
                errs.append(f"{where}: no {key}")
        md = d.get("metadata")
        if not isinstance(md, dict) or not md.get("name"):
            errs.append(f"{where}: no metadata.name")
        elif not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", md["name"]) or len(md["name"]) > 63:
            errs.append(f"{where}: metadata.name {md['name']!r} is not a DNS label")
        spec = pod_spec(d)
        if d.get("kind") in WORKLOADS:
            if spec is None:
                errs.append(f"{where}: no pod template spec")
                continue
            cs = spec.get("containers")
            if not isinstance(cs, list) or not cs:
                errs.append(f"{where}: no containers")
                continue
            for c in cs + (spec.get("initContainers") or []):
                if not c.get("name") or not c.get("image"):
                    errs.append(f"{where}: a container without name or image")
        if d.get("kind") == "Service":
            if not (d.get("spec") or {}).get("ports"):
                errs.append(f"{where}: a Service without ports")
        if d.get("kind") in ("ConfigMap", "Secret"):
            for k in list((d.get("data") or {})) + list((d.get("stringData") or {})):
                if not re.fullmatch(r"[-._a-zA-Z0-9]+", k):
                    errs.append(f"{where}: key {k!r} is not a valid ConfigMap/Secret key")
    if errs:
        raise Fail("; ".join(errs))
    return ("PASS", f"{n} objects")


WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "Job", "Pod")


def pod_spec(d):
    if d.get("kind") == "Pod":
        return d.get("spec")
    if d.get("kind") in WORKLOADS:
        return ((d.get("spec") or {}).get("template") or {}).get("spec")
    return None


def pod_labels(d):
    if d.get("kind") == "Pod":
        return (d.get("metadata") or {}).get("labels") or {}
    return (((d.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


# ------------------------------------------------------------------- kustomizations ----

def kustomize(dirpath, seen=None):
    """The objects a kustomization directory lists, recursively (resources only)."""
    seen = seen or set()
    dirpath = os.path.abspath(dirpath)
    if dirpath in seen:
        raise Fail(f"{rel(dirpath)}: kustomization cycle")
    seen.add(dirpath)
    kf = os.path.join(dirpath, "kustomization.yaml")
    if not os.path.exists(kf):
        raise Fail(f"{rel(dirpath)}: no kustomization.yaml")
    with open(kf) as fh:
        k = yaml.safe_load(fh)
    if k.get("kind") != "Kustomization" or not str(k.get("apiVersion", "")).startswith(
            "kustomize.config.k8s.io/"):
        raise Fail(f"{rel(kf)}: not a kustomize.config.k8s.io Kustomization")
    objs = []
    for r in k.get("resources") or []:
        p = os.path.join(dirpath, r)
        if os.path.isdir(p):
            objs += kustomize(p, seen)
        elif os.path.isfile(p):
            with open(p) as fh:
                objs += [d for d in yaml.safe_load_all(fh) if d]
        else:
            raise Fail(f"{rel(kf)}: resource {r} does not exist")
    return objs


def kustomizations():
    return sorted(os.path.dirname(f) for f in glob.glob(os.path.join(DEPLOY, "k8s", "**",
                                                                      "kustomization.yaml"),
                                                         recursive=True))


def example_secrets():
    out = {}
    for f in glob.glob(os.path.join(DEPLOY, "k8s", "**", "*.example.yaml"), recursive=True):
        for d in DOCS.get(f, []):
            if d.get("kind") == "Secret":
                out[d["metadata"]["name"]] = d
    return out


def secret_files(d):
    files = {k: v for k, v in (d.get("stringData") or {}).items()}
    for k, v in (d.get("data") or {}).items():
        files[k] = base64.b64decode(v).decode()
    return files


def check_workload_rules(dirpath):
    """The rules of the brief and the references between objects, for one kustomization."""
    objs = kustomize(dirpath)
    secrets = example_secrets()
    cms = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "ConfigMap"}
    sas = {o["metadata"]["name"] for o in objs if o.get("kind") == "ServiceAccount"}
    loads = [o for o in objs if o.get("kind") in WORKLOADS]
    errs = []
    names = {}
    for o in objs:
        key = (o.get("kind"), o["metadata"]["name"])
        if key in names:
            errs.append(f"two {key[0]} named {key[1]}")
        names[key] = o
    for w in loads:
        wn = f"{w['kind']}/{w['metadata']['name']}"
        spec = pod_spec(w)
        sel = ((w.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        labels = pod_labels(w)
        if w["kind"] != "Pod" and (not sel or any(labels.get(k) != v for k, v in sel.items())):
            errs.append(f"{wn}: selector {sel} does not match the template labels {labels}")
        if spec.get("serviceAccountName") and spec["serviceAccountName"] not in sas:
            errs.append(f"{wn}: service account {spec['serviceAccountName']} is not defined")
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            errs.append(f"{wn}: pod securityContext.runAsNonRoot is not true")
        if not isinstance(psc.get("runAsUser"), int) or psc["runAsUser"] == 0:
            errs.append(f"{wn}: pod securityContext.runAsUser is not a non-zero uid")
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        for v in vols.values():
            if "configMap" in v and v["configMap"]["name"] not in cms and not v["configMap"].get(
                    "optional"):
                errs.append(f"{wn}: volume {v['name']}: ConfigMap {v['configMap']['name']} "
                            "is not in the kustomization")
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                errs.append(f"{wn}: volume {v['name']}: Secret {v['secret']['secretName']} "
                            "has no example in deploy/k8s/**/*.example.yaml")
        init = spec.get("initContainers") or []
        for c in spec["containers"] + init:
            cn = f"{wn} container {c['name']}"
            is_init = c in init
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                errs.append(f"{cn}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                errs.append(f"{cn}: readOnlyRootFilesystem is not true")
            if sc.get("privileged"):
                errs.append(f"{cn}: privileged")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                errs.append(f"{cn}: capabilities.drop lacks ALL")
            if not is_init and caps.get("add"):
                errs.append(f"{cn}: adds capabilities {caps['add']}")
            if not is_init and (sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False):
                errs.append(f"{cn}: runs as root")
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        errs.append(f"{cn}: no resources.{kind}.{r}")
            for m in c.get("volumeMounts") or []:
                if m["name"] not in vols:
                    errs.append(f"{cn}: volumeMount {m['name']} has no volume")
            for ef in c.get("envFrom") or []:
                ref = ef.get("secretRef")
                if ref and ref["name"] not in secrets:
                    errs.append(f"{cn}: envFrom Secret {ref['name']} has no example")
            if is_init:
                continue
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                pr = c.get(probe)
                if not pr or "httpGet" not in pr:
                    errs.append(f"{cn}: no {probe} with httpGet")
                    continue
                g = pr["httpGet"]
                if g.get("path") != path:
                    errs.append(f"{cn}: {probe} path is {g.get('path')}, not {path}")
                if g.get("port") != "metrics" or "metrics" not in ports:
                    errs.append(f"{cn}: {probe} is not on the container's metrics port")
            sp = c.get("startupProbe")
            if sp and (sp.get("httpGet") or {}).get("port") not in ports:
                errs.append(f"{cn}: startupProbe port is not a container port")
    services = [o for o in objs if o.get("kind") == "Service"]
    for s in services:
        sel = (s.get("spec") or {}).get("selector") or {}
        match = [w for w in loads if sel and all(pod_labels(w).get(k) == v for k, v in sel.items())]
        if not match:
            errs.append(f"Service/{s['metadata']['name']}: selector {sel} matches no workload")
            continue
        cports = {p.get("name") for w in match for c in pod_spec(w)["containers"]
                  for p in c.get("ports") or []}
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p.get("port"))
            if isinstance(tp, str) and tp not in cports:
                errs.append(f"Service/{s['metadata']['name']}: targetPort {tp} is no container port")
    for o in objs:
        if o.get("kind") == "PodDisruptionBudget":
            sel = o["spec"]["selector"].get("matchLabels") or {}
            if not any(all(pod_labels(w).get(k) == v for k, v in sel.items()) for w in loads):
                errs.append(f"PodDisruptionBudget/{o['metadata']['name']}: selector matches nothing")
    if errs:
        raise Fail("; ".join(errs))
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
    return ("PASS", ", ".join(kinds))


def check_pool_has_headless():
    objs = kustomize(os.path.join(DEPLOY, "k8s", "pool"))
    svcs = [o for o in objs if o.get("kind") == "Service"]
    if not any(o["spec"].get("clusterIP") == "None" for o in svcs):
        raise Fail("no headless Service (clusterIP: None) in deploy/k8s/pool")
    if not any(o.get("kind") == "PodDisruptionBudget" for o in objs):
        raise Fail("no PodDisruptionBudget in deploy/k8s/pool")


def check_kubectl_kustomize(dirpath):
    exe = shutil.which("kustomize")
    cmd = [exe, "build", dirpath] if exe else None
    if not cmd and shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", dirpath]
    if not cmd:
        return ("SKIP", "neither kubectl nor kustomize is installed")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise Fail(f"{' '.join(cmd)}: {p.stderr.strip()}")
    rendered = [d for d in yaml.safe_load_all(p.stdout) if d]
    want = sorted((o["kind"], o["metadata"]["name"]) for o in kustomize(dirpath))
    got = sorted((o["kind"], o["metadata"]["name"]) for o in rendered)
    if want != got:
        raise Fail(f"rendered {got}, expected {want}")
    return ("PASS", f"{' '.join(cmd[:2])}: {len(rendered)} objects")


# -------------------------------------------------------------- the real server ----

_known = None


def help_keys():
    global _known
    if _known is None:
        p = subprocess.run([SERVER, "--help"], capture_output=True, text=True, timeout=10)
        _known = set(re.findall(r"--([a-z][a-z0-9-]*)", p.stdout))
    return _known


def lacks(key):
    """An issue-6 setting this build does not know yet."""
    return key in ISSUE6 and key not in help_keys()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    """Container or host paths moved under one temporary directory."""

    def __init__(self, base):
        self.root = base
        self.metrics_port = None

    def path(self, p):
        return self.root + p if p.startswith("/") else p

    def value(self, key, v):
        """The value of setting key, moved into the sandbox."""
        if v.startswith("tcp://"):
            if key == "metrics":
                self.metrics_port = self.metrics_port or free_port()
                return f"tcp://127.0.0.1:{self.metrics_port}"
            return "tcp://127.0.0.1:0"
        m = re.match(r"^(unix|file|direct)://(/.*)$", v)
        if m:
            path = self.path(m.group(2))
            d = path if m.group(1) != "unix" else os.path.dirname(path)
            os.makedirs(d, exist_ok=True)
            return f"{m.group(1)}://{path}"
        if v.startswith("/"):
            p = self.path(v)
            if key == "cache-dir":
                os.makedirs(p, exist_ok=True)
            elif key == "token-file" and not os.path.exists(p):
                write(p, "")
            elif key in ("tls-cert", "tls-key", "tls-client-ca"):
                self.tls_pair(key, p)
            return p
        return v

    def tls_pair(self, key, p):
        """A self-signed pair for tls-cert/tls-key (and it as tls-client-ca) when the given
        file is missing or a placeholder."""
        if os.path.exists(p) and "..." not in open(p).read():
            return
        d = os.path.join(self.root, "selfsigned")
        os.makedirs(d, exist_ok=True)
        crt, k = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        if not os.path.exists(crt):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", k, "-out", crt, "-days", "1", "-subj", "/CN=localhost"],
                           check=True, capture_output=True, timeout=60)
        write(p, open(k if key == "tls-key" else crt).read())


def write(p, text):
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as fh:
        fh.write(text)


def conf_lines(text, with_issue6):
    """(key, value, line) of each setting; with_issue6=True also takes the commented-out
    issue-6 lines ('# metrics = ...')."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if with_issue6:
            m = re.match(r"^#\s*([a-z0-9_-]+)\s*=\s*(\S.*)$", s)
            if m and m.group(1).replace("_", "-") in ISSUE6:
                s = f"{m.group(1)} = {m.group(2)}"
        s = re.sub(r"(^|\s)#.*$", "", s).strip()
        if not s:
            continue
        if "=" not in s:
            raise Fail(f"config line {line!r} is not 'key = value'")
        k, v = (x.strip() for x in s.split("=", 1))
        out.append((k.replace("_", "-"), v))
    return out


def rewrite_conf(text, sb, mode):
    """mode: 'as-is', 'no-issue6' (drop the issue-6 keys this build lacks), 'issue6'
    (uncomment the commented-out issue-6 lines too)."""
    out = []
    for k, v in conf_lines(text, mode == "issue6"):
        if mode == "no-issue6" and lacks(k):
            continue
        out.append(f"{k} = {sb.value(k, v)}")
    return "\n".join(out) + "\n"


def rewrite_args(args, sb, mode):
    """Flags of an s3dliod command line, moved into the sandbox."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise Fail(f"unexpected argument {a!r}")
        key, val = a[2:], None
        if "=" in key:
            key, val = key.split("=", 1)
        elif key not in NOVALUE:
            i += 1
            if i >= len(args):
                raise Fail(f"--{key} has no value")
            val = args[i]
        i += 1
        if mode == "no-issue6" and lacks(key):
            continue
        out.append("--" + key)
        if val is not None:
            out.append(sb.value(key, val))
    return out


def listeners_of(argv_flags, conf_texts):
    n = sum(1 for a in argv_flags if a == "--listen")
    for t in conf_texts:
        n += sum(1 for k, _ in conf_lines(t, False) if k == "listen")
    return n or 1  # the default listener


def run_server(argv, root, umask=None, expect_sockets_private=False, probe_metrics=None):
    """Start argv, wait for its 'listening on' lines, SIGTERM, expect exit 0. Returns
    ('ok', detail) or ('unknown', key) when a setting is unknown to this build; raises Fail."""
    # no credentials or S3DLIO_* from the caller's environment
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, preexec_fn=pre)
    lines = []
    t = threading.Thread(target=lambda: lines.extend(iter(p.stderr.readline, "")), daemon=True)
    t.start()
    want = probe_metrics["listeners"] if probe_metrics else None
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            if p.poll() is not None:
                t.join(2)
                err = "".join(lines).strip()
                m = re.search(r"unknown option (?:--)?([a-z0-9-]+)|: ([a-z0-9-]+): unknown option", err)
                key = m and (m.group(1) or m.group(2))
                if p.returncode == 2 and key:
                    return ("unknown", key)
                raise Fail(f"exited {p.returncode} before listening: {err[-600:]}")
            got = [l for l in lines if "s3dliod: listening on " in l]
            if len(got) >= (want or 1):
                break
            time.sleep(0.05)
        else:
            raise Fail("no 'listening on' line within 15 s: " + "".join(lines)[-600:])
        time.sleep(0.2)  # every listener has printed by now (they are bound in order)
        urls = [l.split("listening on ", 1)[1].strip() for l in lines if "listening on " in l]
        socks = [u[len("unix://"):] for u in urls if u.startswith("unix://")]
        for s in socks:
            st = os.stat(s)
            if not stat.S_ISSOCK(st.st_mode):
                raise Fail(f"{s} is not a socket")
            if expect_sockets_private and st.st_mode & 0o007:
                raise Fail(f"{s} has mode {oct(st.st_mode & 0o777)}: others may connect")
        detail = "listening on " + ", ".join(u.replace(root, "<tmp>") for u in urls)
        if probe_metrics and probe_metrics.get("port"):
            for path in ("/healthz", "/readyz"):
                url = f"http://127.0.0.1:{probe_metrics['port']}{path}"
                code, t_end = None, time.monotonic() + 10
                while time.monotonic() < t_end:
                    try:
                        with urllib.request.urlopen(url, timeout=2) as r:
                            code = r.status
                            break
                    except Exception as e:  # not up yet, or not 200
                        code = getattr(e, "code", repr(e))
                        time.sleep(0.2)
                if code != 200:
                    raise Fail(f"GET {path} on the metrics port: {code}")
            detail += "; /healthz and /readyz answer 200"
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(15)
        except subprocess.TimeoutExpired:
            raise Fail("still running 15 s after SIGTERM")
        if rc != 0:
            raise Fail(f"exit {rc} after SIGTERM: {''.join(lines)[-600:]}")
        for s in socks:
            if os.path.exists(s):
                raise Fail(f"{s} was not removed at exit")
        return ("ok", detail)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def server_case(name, build):
    """build(sandbox, mode) -> dict(argv, listeners, umask, private), or None when mode is
    'issue6' and the files have no commented-out issue-6 lines. Runs the files as written;
    when this build lacks an issue-6 setting that SKIPs, and the same without the issue-6
    settings must pass. Then with the commented-out issue-6 lines too (SKIP likewise)."""
    if not os.access(SERVER, os.X_OK):
        report("SKIP", name, f"{rel(SERVER)} is not built (cmake --build build)")
        return

    def run(mode):
        with tempfile.TemporaryDirectory(prefix="s3dd-") as tmp:
            sb = Sandbox(tmp)
            spec = build(sb, mode)
            if spec is None:
                return ("none", None)
            return run_server(spec["argv"], tmp, umask=spec.get("umask"),
                              expect_sockets_private=spec.get("private", False),
                              probe_metrics={"port": sb.metrics_port,
                                             "listeners": spec["listeners"]})

    def unknown(key):
        if key not in ISSUE6:
            raise Fail(f"{key}: neither an option of `s3dliod --help` nor an issue-6 setting")
        return ("SKIP", f"this s3dliod does not know --{key} yet (issue 6)")

    later = []

    def as_written():
        r = run("as-is")
        if r[0] == "ok":
            return ("PASS", r[1])
        skip = unknown(r[1])
        later.append(f"{name} [as written, less the issue-6 settings this build lacks]")
        return skip

    check(f"{name} [as written]", as_written)
    for n in later:
        def rest():
            r = run("no-issue6")
            if r[0] != "ok":
                raise Fail(f"{r[1]}: unknown to this s3dliod")
            return ("PASS", r[1])
        check(n, rest)

    def uncommented():
        r = run("issue6")
        if r[0] == "none":
            return ("SKIP", "no commented-out issue-6 settings")
        return ("PASS", r[1]) if r[0] == "ok" else unknown(r[1])

    check(f"{name} [issue-6 lines uncommented]", uncommented)


# ---- the deployments, as argv + files ----

def dockerfile_stages():
    with open(os.path.join(DEPLOY, "Dockerfile")) as fh:
        text = fh.read()
    text = re.sub(r"\\\n", " ", text)
    stages, cur = [], None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        ins, _, rest = s.partition(" ")
        ins = ins.upper()
        if ins == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            cur = {"from": m.group(1), "name": m.group(2), "ins": []}
            stages.append(cur)
        elif cur is None:
            if ins != "ARG":
                raise Fail(f"Dockerfile: {ins} before FROM")
        else:
            cur["ins"].append((ins, rest.strip()))
    return stages


def exec_form(rest):
    try:
        v = json.loads(rest)
    except ValueError:
        raise Fail(f"not in exec (JSON) form: {rest}")
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise Fail(f"not a JSON list of strings: {rest}")
    return v


def image_case(sb, mode):
    final = dockerfile_stages()[-1]
    ep = cmd = None
    files = {}
    for ins, rest in final["ins"]:
        if ins == "ENTRYPOINT":
            ep = exec_form(rest)
        elif ins == "CMD":
            cmd = exec_form(rest)
        elif ins == "COPY" and not rest.startswith("--"):
            src, dst = rest.split()
            files[dst] = os.path.join(ROOT, src)
    argv = (ep or []) + (cmd or [])
    if not argv or argv[0] != IMAGE_BIN:
        raise Fail(f"ENTRYPOINT/CMD do not start {IMAGE_BIN}: {argv}")
    confs = []
    for a, b in zip(argv, argv[1:]):
        if a == "--config":
            if b not in files:
                raise Fail(f"--config {b} is not COPYed into the image")
            confs.append(open(files[b]).read())
    if mode == "issue6" and not any(conf_lines(t, True) != conf_lines(t, False) for t in confs):
        return None
    for dst, src in files.items():
        if dst.endswith(".conf"):
            write(sb.path(dst), rewrite_conf(open(src).read(), sb, mode))
    os.makedirs(sb.path("/data"), exist_ok=True)  # the image makes it
    args = rewrite_args(argv[1:], sb, "no-issue6" if mode == "no-issue6" else "as-is")
    return {"argv": [SERVER] + args + ["--parent-pid", str(os.getpid())],
            "listeners": listeners_of(argv[1:], confs)}


def workload(kdir, kind):
    objs = kustomize(os.path.join(DEPLOY, "k8s", kdir))
    ws = [o for o in objs if o.get("kind") == kind]
    if len(ws) != 1:
        raise Fail(f"deploy/k8s/{kdir}: {len(ws)} {kind} objects")
    return objs, ws[0]


def k8s_case(kdir, kind, private=False):
    def build(sb, mode):
        objs, w = workload(kdir, kind)
        spec = pod_spec(w)
        c = spec["containers"][0]
        cms = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "ConfigMap"}
        secrets = example_secrets()
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        confs = []
        has_issue6_comment = False
        mounts = [(vols[m["name"]], sb.path(m["mountPath"])) for m in c.get("volumeMounts") or []]
        # Secrets and directories first: the config's rewrite may replace a placeholder
        # (a TLS pair made up here for the example's "...").
        for v, mp in mounts:
            if "secret" in v:
                for key, text in secret_files(secrets[v["secret"]["secretName"]]).items():
                    write(os.path.join(mp, key), text)
            elif "configMap" not in v:  # emptyDir, hostPath, a PVC: a directory
                os.makedirs(mp, exist_ok=True)
        for v, mp in mounts:
            if "configMap" in v:
                for key, text in (cms[v["configMap"]["name"]].get("data") or {}).items():
                    if key.endswith(".conf"):
                        confs.append(text)
                        has_issue6_comment |= conf_lines(text, True) != conf_lines(text, False)
                        text = rewrite_conf(text, sb, mode)
                    write(os.path.join(mp, key), text)
        if mode == "issue6" and not has_issue6_comment:
            return None
        command = c.get("command") or [IMAGE_BIN]
        args = c.get("args") or []
        flags = rewrite_args(args, sb, "no-issue6" if mode == "no-issue6" else "as-is")
        flags += ["--parent-pid", str(os.getpid())]
        if command[0] == IMAGE_BIN:
            argv = [SERVER] + command[1:] + flags
        elif command[:2] == ["/bin/sh", "-c"] and IMAGE_BIN in command[2]:
            # sh -c 'SCRIPT' $0 "$@": the script runs here with the build's binary
            argv = ["/bin/sh", "-c", command[2].replace(IMAGE_BIN, SERVER)] + command[3:] + flags
        else:
            raise Fail(f"cannot tell how {command} starts s3dliod")
        return {"argv": argv, "private": private, "listeners": listeners_of(args, confs)}
    return build


def check_init_container():
    """The DaemonSet's init container, run as root with only the capabilities it adds,
    twice (the second time the directory is already 10001's)."""
    _, w = workload("node", "DaemonSet")
    inits = pod_spec(w).get("initContainers") or []
    if not inits:
        raise Fail("no init container")
    c = inits[0]
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return ("SKIP", "needs root and setpriv to run with a reduced capability set")
    caps = [x.lower() for x in (c["securityContext"]["capabilities"].get("add") or [])]
    bounding = "-all" + "".join(",+" + x for x in caps)
    with tempfile.TemporaryDirectory(prefix="s3dd-") as tmp:
        mounts = [m["mountPath"] for m in c.get("volumeMounts") or []]
        for m in mounts:
            os.makedirs(tmp + m, mode=0o755, exist_ok=True)
        script = c["command"][2]
        for m in mounts:
            script = script.replace(m, tmp + m)
        for attempt in (1, 2):
            p = subprocess.run(["setpriv", "--reuid=0", "--regid=0", "--clear-groups",
                                "--inh-caps=-all", "--ambient-caps=-all",
                                f"--bounding-set={bounding}"] + c["command"][:2] + [script],
                               capture_output=True, text=True, timeout=30)
            if p.returncode != 0:
                raise Fail(f"run {attempt}: exit {p.returncode}: {p.stderr.strip()}")
        st = os.stat(tmp + mounts[0])
        if (st.st_uid, st.st_gid) != (10001, 10001) or st.st_mode & 0o777 != 0o750:
            raise Fail(f"{mounts[0]} is {oct(st.st_mode & 0o777)} {st.st_uid}:{st.st_gid}")
    return ("PASS", f"twice with only {caps}: {mounts[0]} 0750 10001:10001")


def unit_directives():
    d = {}
    with open(os.path.join(DEPLOY, "systemd", "s3dliod.service")) as fh:
        for line in fh:
            s = line.strip()
            if s and not s.startswith(("#", ";", "[")) and "=" in s:
                k, v = s.split("=", 1)
                d.setdefault(k.strip(), []).append(v.strip())
    return d


def systemd_case(sb, mode):
    d = unit_directives()
    argv = shlex.split(d["ExecStart"][0])
    if argv[0] != IMAGE_BIN:
        raise Fail(f"ExecStart runs {argv[0]}, not {IMAGE_BIN}")
    conf_src = os.path.join(DEPLOY, "systemd", "s3dliod.conf")
    confs = []
    for a, b in zip(argv, argv[1:]):
        if a == "--config":
            if b != "/etc/s3dliod.conf":
                raise Fail(f"--config {b}: the example is installed as /etc/s3dliod.conf")
            text = open(conf_src).read()
            confs.append(text)
            if mode == "issue6" and conf_lines(text, True) == conf_lines(text, False):
                return None
            write(sb.path(b), rewrite_conf(text, sb, mode))
    args = rewrite_args(argv[1:], sb, "no-issue6" if mode == "no-issue6" else "as-is")
    umask = int(d["UMask"][0], 8) if "UMask" in d else None
    return {"argv": [SERVER] + args + ["--parent-pid", str(os.getpid())], "umask": umask,
            "private": umask is not None and umask & 0o007 == 0o007,
            "listeners": listeners_of(argv[1:], confs)}


# ------------------------------------------------------------------- Dockerfile ----

def apt_packages(stage):
    pkgs = []
    for ins, rest in stage["ins"]:
        if ins == "RUN" and "apt-get install" in rest:
            seg = rest.split("apt-get install", 1)[1].split("&&")[0]
            pkgs += [w for w in seg.split() if not w.startswith("-")]
    return pkgs


def check_dockerfile_static():
    stages = dockerfile_stages()
    errs = []
    if stages[0]["from"] != "debian:12":
        errs.append(f"the build stage is FROM {stages[0]['from']}, not debian:12")
    final = stages[-1]
    if final["from"] != "debian:12-slim":
        errs.append(f"the last (runtime) stage is FROM {final['from']}, not debian:12-slim")
    ins = {}
    for i, rest in final["ins"]:
        ins.setdefault(i, []).append(rest)
    if "9400" not in " ".join(ins.get("EXPOSE", [])).split():
        errs.append("no EXPOSE 9400")
    if not ins.get("HEALTHCHECK"):
        errs.append("no HEALTHCHECK")
    elif "9400" not in ins["HEALTHCHECK"][-1]:
        errs.append("the HEALTHCHECK does not probe port 9400")
    user = (ins.get("USER") or ["root"])[-1].split(":")[0]
    if user in ("root", "0"):
        errs.append("the runtime stage runs as root (no USER)")
    ign = os.path.join(DEPLOY, "Dockerfile.dockerignore")
    kept = None
    if os.path.exists(ign):  # '**' then '!PATH' lines: only those go into the context
        lines = [l.strip() for l in open(ign) if l.strip() and not l.startswith("#")]
        if lines and lines[0] == "**":
            kept = [l[1:].rstrip("/") for l in lines if l.startswith("!")]
    for st in stages:
        for i, rest in st["ins"]:
            if i in ("COPY", "ADD") and not rest.startswith("--from"):
                for src in rest.split()[:-1]:
                    if src.startswith("--"):
                        continue
                    if not glob.glob(os.path.join(ROOT, src)):
                        errs.append(f"COPY {src}: not in the repository")
                    if kept is not None and src.rstrip("/") not in kept:
                        errs.append(f"COPY {src}: left out of the context by "
                                    "Dockerfile.dockerignore")
    if errs:
        raise Fail("; ".join(errs))
    return ("PASS", f"{len(stages)} stages; runtime FROM {final['from']}, USER {user}, EXPOSE 9400")


def dpkg_owner(path):
    p = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
    if p.returncode != 0:
        real = os.path.realpath(path)
        p = subprocess.run(["dpkg", "-S", real], capture_output=True, text=True)
        if p.returncode != 0:
            return None
    return p.stdout.split(":")[0].split(",")[0].strip()


def check_runtime_libs():
    if not os.access(SERVER, os.X_OK):
        return ("SKIP", f"{rel(SERVER)} is not built")
    for tool in ("readelf", "ldd", "dpkg"):
        if not shutil.which(tool):
            return ("SKIP", f"{tool} is not installed")
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run(["readelf", "-d", SERVER], capture_output=True,
                                       text=True).stdout)
    where = dict(re.findall(r"^\s*(\S+) => (\S+)", subprocess.run(
        ["ldd", SERVER], capture_output=True, text=True).stdout, re.M))
    runtime = set(apt_packages(dockerfile_stages()[-1]))
    missing, seen = [], []
    for lib in needed:
        pkg = dpkg_owner(where.get(lib, lib))
        if pkg is None:
            missing.append(f"{lib} (no Debian package owns it)")
        elif pkg != "libc6" and pkg not in runtime:
            missing.append(f"{lib} from {pkg}")
        seen.append(f"{lib}={pkg}")
    if missing:
        raise Fail("the runtime stage lacks " + ", ".join(missing))
    return ("PASS", ", ".join(seen))


def check_build_modules():
    if not shutil.which("pkg-config") or not shutil.which("dpkg"):
        return ("SKIP", "pkg-config or dpkg is not installed")
    with open(os.path.join(ROOT, "CMakeLists.txt")) as fh:
        cm = fh.read()
    build = set(apt_packages(dockerfile_stages()[0]))
    errs, seen = [], []
    for m in re.finditer(r"pkg_check_modules\((\w+)\s+(REQUIRED\s+)?IMPORTED_TARGET\s+([^)]*)\)", cm):
        if m.group(1) == "CMOCKA":  # tests only (S3DLIO_TESTS=OFF in the image)
            continue
        for mod in m.group(3).split():
            p = subprocess.run(["pkg-config", "--path", mod], capture_output=True, text=True)
            if p.returncode != 0:
                if m.group(2):
                    errs.append(f"{mod}: not installed here, cannot tell its package")
                continue
            pkg = dpkg_owner(p.stdout.strip())
            seen.append(f"{mod}={pkg}")
            if pkg not in build:
                errs.append(f"pkg-config module {mod} comes from {pkg}, not in the build stage")
    if errs:
        raise Fail("; ".join(errs))
    return ("PASS", ", ".join(seen))


def check_packages_exist():
    if not shutil.which("apt-cache"):
        return ("SKIP", "apt-cache is not installed")
    pkgs = sorted({p for st in dockerfile_stages() for p in apt_packages(st)})
    probe = subprocess.run(["apt-cache", "show", "libc6"], capture_output=True, text=True)
    if probe.returncode != 0:
        return ("SKIP", "apt lists are empty (run apt-get update)")
    bad = [p for p in pkgs if subprocess.run(["apt-cache", "show", p], capture_output=True,
                                             text=True).returncode != 0]
    if bad:
        raise Fail("not in this machine's Debian lists: " + ", ".join(bad))
    return ("PASS", f"{len(pkgs)} packages")


# ---------------------------------------------------------------------- systemd ----

def check_systemd_verify():
    if not shutil.which("systemd-analyze"):
        return ("SKIP", "systemd-analyze is not installed")
    if not os.access(SERVER, os.X_OK):
        return ("SKIP", f"{rel(SERVER)} is not built")
    with tempfile.TemporaryDirectory(prefix="s3dd-") as tmp:
        unit = os.path.join(tmp, "s3dliod.service")
        with open(os.path.join(DEPLOY, "systemd", "s3dliod.service")) as fh:
            # verify wants ExecStart's binary to exist: the build's, at the same argv
            write(unit, fh.read().replace(IMAGE_BIN, SERVER))
        p = subprocess.run(["systemd-analyze", "verify", "--man=no", unit],
                           capture_output=True, text=True, timeout=60)
        out = (p.stdout + p.stderr).strip()
        # verify exits 0 on unknown keys too, with a warning: any output is a finding
        if p.returncode != 0 or out:
            raise Fail(out.replace(tmp + "/", "") or f"exit {p.returncode}")
        d = unit_directives()
        need = {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "Restart": "on-failure"}
        errs = [f"{k}={d.get(k)}" for k, v in need.items() if d.get(k, [None])[-1] != v]
        for k in ("ReadOnlyPaths", "LimitNOFILE", "ExecReload"):
            if k not in d:
                errs.append(f"no {k}")
        if "kill -HUP $MAINPID" not in " ".join(d.get("ExecReload", [])):
            errs.append("ExecReload is not kill -HUP $MAINPID")
        if not d.get("DynamicUser") and not d.get("User"):
            errs.append("runs as root (no User= or DynamicUser=)")
        if errs:
            raise Fail("; ".join(errs))
        sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", unit],
                             capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", sec.stdout)
    return ("PASS", f"verify clean; exposure {m.group(1)} {m.group(2)}" if m else "verify clean")


def main():
    check("YAML parses (deploy/**/*.yaml)", check_yaml_parses)
    if not DOCS:
        return finish()
    check("Kubernetes objects have apiVersion, kind, metadata.name, containers with image",
          check_required_fields)
    for d in kustomizations():
        if os.path.basename(d) == "base":
            continue
        check(f"{rel(d)}: references, securityContext, resources, probes",
              lambda d=d: check_workload_rules(d))
    for d in kustomizations():
        check(f"{rel(d)}: kustomize renders it", lambda d=d: check_kubectl_kustomize(d))
    check("deploy/k8s/pool has a headless Service and a PodDisruptionBudget",
          check_pool_has_headless)
    check("Dockerfile: stages, COPY sources, EXPOSE, HEALTHCHECK, USER", check_dockerfile_static)
    check("Dockerfile: runtime packages provide every library s3dliod links", check_runtime_libs)
    check("Dockerfile: build packages provide CMakeLists.txt's pkg-config modules",
          check_build_modules)
    check("Dockerfile: every apt package exists in Debian 12", check_packages_exist)
    check("systemd-analyze verify deploy/systemd/s3dliod.service", check_systemd_verify)
    if os.access(SERVER, os.X_OK):
        keys = help_keys()
        report("INFO", f"{rel(SERVER)} knows the issue-6 settings",
               ", ".join(k for k in ISSUE6 if k in keys) or "none yet")
    server_case("s3dliod with the image's ENTRYPOINT, CMD and deploy/s3dliod.conf", image_case)
    server_case("s3dliod as the pool Deployment runs it", k8s_case("pool", "Deployment"))
    server_case("s3dliod as the node DaemonSet runs it (socket not world-connectable)",
                k8s_case("node", "DaemonSet", private=True))
    check("node DaemonSet init container prepares the socket directory", check_init_container)
    server_case("s3dliod as deploy/systemd/s3dliod.service runs it (UMask applied)",
                systemd_case)
    return finish()


def finish():
    n = {s: sum(1 for r in results if r[0] == s) for s in ("PASS", "FAIL", "SKIP")}
    print(f"deploy: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped")
    return 1 if n["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
