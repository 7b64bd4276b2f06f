"""
What the deployment files promise, checked without a container engine or a
cluster: the Dockerfile lints clean, every kustomize overlay renders and
each rendered object is valid for Kubernetes, and what the image does — the
wheel installed into a fresh venv and run by an unprivileged user with the
image's settings — serves the bundled apps and the probes.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import yaml
from runtime import twistd_command
from twisted.internet import reactor
from twisted.internet.task import deferLater

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    which = shutil.which(name)
    if which is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return which


def test_the_dockerfile_lints_clean():
    lint = subprocess.run(
        [tool("hadolint"), "--no-color", str(ROOT / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_image_writes_twisted_s_plugin_cache_before_it_drops_root():
    """
    As the buntime user site-packages is read-only: without a cache written
    at build time, twistd would scan every plugin and fail to write
    C{dropin.cache} at every start (a log line, and a slower start).
    """
    final = (ROOT / "docker" / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    assert final.index("getPlugins(IPlugin)") < final.index("\nUSER ")
    code = re.search(r'python -c "([^"]*getPlugins[^"]*)"', final).group(1)
    import twisted.plugins

    caches = [Path(entry) / "dropin.cache" for entry in twisted.plugins.__path__]
    # this checkout's (an editable install of another may be on the path too)
    ours = [c for c in caches if (c.parent / "buntime_plugin.py").exists()]
    ours = [c for c in ours if c.is_relative_to(ROOT)]
    assert ours
    for cache in ours:
        cache.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert all(cache.exists() for cache in ours)


def test_the_image_runs_the_runtime_as_pid_1_without_root():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    final = text.rsplit("\nFROM ", 1)[1]  # the runtime stage
    # numeric, the UID useradd gave (runAsNonRoot can check it; k8s says 10001)
    assert "\nARG BUNTIME_UID=10001\n" in final and '--uid "${BUNTIME_UID}"' in final
    assert "\nUSER ${BUNTIME_UID}:${BUNTIME_UID}\n" in final
    assert 'CMD ["twistd", "--nodaemon", "--pidfile=", "buntime"]' in final
    assert "HEALTHCHECK" in final and "/api/health/live" in final
    assert "EXPOSE 8000" in final
    for volume in ("/data/apps", "/data/plugins", "/data/state"):
        assert volume in final
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    service = compose["services"]["buntime"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    # uploads through the shell work: the apps volume is the runtime's to
    # write, and changes from outside the container can bear a token
    assert "apps:/data/apps" in service["volumes"] and "apps" in compose["volumes"]
    assert service["environment"]["RUNTIME_API_TOKEN"] == "${RUNTIME_API_TOKEN:-}"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether C{path} (or a directory above it) matches a .dockerignore pattern."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions: teach this test Docker's rules"
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if bare != pattern and any(
                fnmatch.fnmatchcase("/".join(prefix.split("/")[start:]), bare)
                for start in range(len(prefix.split("/")))
            ):
                return True
    return False


def test_the_dockerignore_applies_to_the_compose_build_and_keeps_what_the_image_copies():
    """
    compose builds with the repository as context, so the repository's
    .dockerignore is the one used (no docker/Dockerfile.dockerignore beside
    the Dockerfile overrides it): it leaves out the venv and the git
    history, and none of the files the Dockerfile copies.
    """
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    context = (ROOT / "docker" / compose["services"]["buntime"]["build"]["context"]).resolve()
    assert context == ROOT
    assert not (ROOT / "docker" / "Dockerfile.dockerignore").exists()
    patterns = [
        line.strip().strip("/")
        for line in (context / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for heavy in (".git", ".venv", "tests", "apps/hello/.deps/x.py", "buntime/__pycache__/x.pyc"):
        assert _ignored(heavy, patterns), heavy
    sources = [
        source
        for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in [word for word in line.split()[1:] if not word.startswith("--")][:-1]
    ]
    assert {"pyproject.toml", "README.md", "buntime", "twisted", "apps"} <= set(sources)
    tracked = subprocess.run(
        ["git", "ls-files", "--", *sources], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked
    left_out = [path for path in tracked if _ignored(path, patterns)]
    assert left_out == []


def render(overlay: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [tool("kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [item for item in yaml.safe_load_all(rendered.stdout) if item]


@pytest.mark.parametrize("overlay", ["dev", "prod", "openshift"])
def test_each_overlay_renders_to_valid_kubernetes_objects(overlay):
    import kubernetes_validate

    objects = render(overlay)
    kinds = {item["kind"] for item in objects}
    expected = {
        "ConfigMap",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert expected <= kinds
    assert ("Route" in kinds, "Ingress" in kinds) == (
        (True, False) if overlay == "openshift" else (False, True)
    )
    for item in objects:
        if item["kind"] == "Route":  # OpenShift's own: not in the Kubernetes schemas
            assert item["spec"]["to"] == {"kind": "Service", "name": "buntime", "weight": 100}
            continue
        kubernetes_validate.validate(item, "1.37.0", strict=True)


def _image(objects: list[dict[str, Any]]) -> str:
    [deployment] = [item for item in objects if item["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return str(container["image"])


def test_an_overlay_s_images_entry_changes_the_image(tmp_path):
    """The dev overlay runs buntime:dev; an overlay of prod changes the tag as the docs say."""
    assert _image(render("dev")) == "buntime:dev"
    assert _image(render("prod")) == "ghcr.io/buntime/buntime:0.1.0"
    mine = tmp_path / "mine"
    mine.mkdir()
    prod = os.path.relpath(ROOT / "k8s" / "overlays" / "prod", mine)
    (mine / "kustomization.yaml").write_text(
        f"resources: [{prod}]\nimages:\n  - {{name: ghcr.io/buntime/buntime, newTag: 0.2.0}}\n"
    )
    rendered = subprocess.run(
        [tool("kubectl"), "kustomize", str(mine)], capture_output=True, text=True
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [item for item in yaml.safe_load_all(rendered.stdout) if item]
    assert _image(objects) == "ghcr.io/buntime/buntime:0.2.0"


def test_a_settings_change_in_an_overlay_rolls_the_pods(tmp_path):
    """
    The pods read the ConfigMap once, at start: a changed setting must
    change the pod template (the ConfigMap's name carries a hash of its
    contents), or a kubectl apply changes nothing until some pod restarts.
    """
    mine = tmp_path / "mine"
    mine.mkdir()
    prod = os.path.relpath(ROOT / "k8s" / "overlays" / "prod", mine)
    (mine / "kustomization.yaml").write_text(
        f"resources: [{prod}]\n"
        "configMapGenerator:\n"
        "  - {name: buntime-config, behavior: merge, literals: [RUNTIME_LOG_LEVEL=debug]}\n"
    )
    rendered = subprocess.run(
        [tool("kubectl"), "kustomize", str(mine)], capture_output=True, text=True
    )
    assert rendered.returncode == 0, rendered.stderr
    changed = [item for item in yaml.safe_load_all(rendered.stdout) if item]
    pods = []
    for objects in (render("prod"), changed):
        [deployment] = [item for item in objects if item["kind"] == "Deployment"]
        [config] = [item for item in objects if item["kind"] == "ConfigMap"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        [source] = container["envFrom"]
        assert source["configMapRef"]["name"] == config["metadata"]["name"]
        pods.append(deployment["spec"]["template"])
    assert pods[0] != pods[1]


def test_the_docs_make_the_api_token_s_secret_where_the_pods_read_it():
    """
    The Deployment reads C{RUNTIME_API_TOKEN} from the Secret C{buntime-api}
    of its own namespace, and optionally: made in another one, the pods
    start without a token and every change from outside is refused.
    """
    objects = render("prod")
    [deployment] = [item for item in objects if item["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    [token] = [item for item in container["env"] if item["name"] == "RUNTIME_API_TOKEN"]
    secret = token["valueFrom"]["secretKeyRef"]
    namespace = deployment["metadata"]["namespace"]
    docs = (ROOT / "docs" / "deployment.md").read_text()
    commands = re.findall(r"kubectl [^`\n]*create secret generic [^`\n]*", docs)
    assert commands
    for command in commands:
        assert f" {secret['name']} " in command and f"--from-literal={secret['key']}=" in command
        assert f"-n {namespace} " in command, command


def test_the_deployment_drains_before_it_stops_and_runs_locked_down():
    objects = render("prod")
    [deployment] = [item for item in objects if item["kind"] == "Deployment"]
    [config] = [item for item in objects if item["kind"] == "ConfigMap"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health/ready"
    # one slow answer under load must not take a pod (or all busy ones) out
    readiness = container["readinessProbe"]
    assert readiness.get("timeoutSeconds", 1) >= 2 and readiness.get("failureThreshold", 3) >= 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health/live"
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the shared volumes are not chowned file by file at every pod start
    # (a 50 Gi apps volume full of .deps would hold each start for minutes)
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {mount["mountPath"] for mount in container["volumeMounts"]} >= {
        "/data/apps",
        "/data/plugins",
        "/data/state",
        "/tmp",
    }
    # /tmp holds a spooled upload (up to BODY_SIZE_MAX's 100 MB) and pip's staging
    [tmp] = [volume for volume in pod["volumes"] if volume["name"] == "tmp"]
    assert tmp["emptyDir"]["sizeLimit"].endswith("Gi")
    assert "requests" in container["resources"] and "limits" in container["resources"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = int(config["data"]["RUNTIME_DRAIN_DELAY"].rstrip("s"))
    shutdown = int(config["data"]["RUNTIME_SHUTDOWN_TIMEOUT"].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + shutdown
    assert config["data"]["RUNTIME_FORWARDED_ALLOW_IPS"]
    claims = {
        item["metadata"]["name"]: item
        for item in objects
        if item["kind"] == "PersistentVolumeClaim"
    }
    assert claims["buntime-apps"]["spec"]["accessModes"] == ["ReadWriteMany"]
    [hpa] = [item for item in objects if item["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["minReplicas"] >= 3


@pytest.mark.parametrize("overlay", ["dev", "prod", "openshift"])
def test_the_hpa_alone_sets_the_replica_count(overlay):
    """
    A Deployment that names C{replicas} gets that count back at every
    C{kubectl apply}: an upgrade applied while the HPA has scaled out would
    first scale a busy Deployment down to it. With an HPA, it names none.
    """
    objects = render(overlay)
    [deployment] = [item for item in objects if item["kind"] == "Deployment"]
    [hpa] = [item for item in objects if item["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]


def _demo_extra() -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {}
    )
    return "[demo]" if "demo" in extras else ""


@pytest.fixture(scope="module")
def installed() -> Any:
    """The wheel, built and installed into a fresh venv that any user may run."""
    # without PYTHONPATH: a checkout on it (its buntime.egg-info, which the
    # wheel's build leaves) would make pip think the wheel already installed
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    home = tempfile.mkdtemp(prefix="buntime-image-")
    os.chmod(home, 0o755)
    wheels = os.path.join(home, "wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, str(ROOT)],
        check=True,
    )
    [wheel] = os.listdir(wheels)
    venv = os.path.join(home, "venv")
    subprocess.run([_python_for_anyone(), "-m", "venv", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", os.path.join(wheels, wheel) + _demo_extra()],
        check=True,
        env=env,
    )
    yield home, python
    shutil.rmtree(home, ignore_errors=True)


DROP = ["--reuid=65534", "--regid=65534", "--clear-groups", "--"]
"""setpriv's arguments that make the rest run as C{nobody}."""


def _nobody_can_run(python: str | None) -> bool:
    """Whether C{nobody} can run C{python} (3.11+) and have it start itself again."""
    setpriv = shutil.which("setpriv")
    if python is None or setpriv is None:
        return False
    probe = (
        "import subprocess, sys; assert sys.version_info >= (3, 11);"
        " subprocess.run([sys.executable, '-c', ''], check=True)"
    )
    ran = subprocess.run([setpriv, *DROP, python, "-c", probe], capture_output=True)
    return ran.returncode == 0


def _python_for_anyone() -> str:
    """
    The Python the fresh venv is made from: this one, unless the tests run
    as root from a Python that C{nobody} may not run (one under C{/root},
    say), then the system's Python 3.11+ if C{nobody} may run that.
    """
    if os.geteuid() != 0:
        return sys.executable
    candidates = [sys.executable, shutil.which("python3.11"), "/usr/bin/python3"]
    return next((python for python in candidates if _nobody_can_run(python)), sys.executable)


def _as_unprivileged(argv: list[str]) -> list[str]:
    """
    C{argv} run as C{nobody} when the tests run as root (the image's user is
    not root), if this machine lets C{nobody} run that Python (a sandbox may
    not: then as root, with a warning).
    """
    if os.geteuid() != 0:
        return argv
    if not _nobody_can_run(argv[0]):
        warnings.warn("the installed wheel runs as root: nobody cannot run it here", stacklevel=2)
        return argv
    return [shutil.which("setpriv") or "setpriv", *DROP, *argv]


def _healthcheck() -> list[str]:
    """The Dockerfile's C{HEALTHCHECK} command (its exec form)."""
    text = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    return list(json.loads(line.split(" CMD ", 1)[1]))


def _owner(pid: int | None) -> int:
    """The real user id of process C{pid}."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


@pytest_twisted.ensureDeferred
async def test_the_installed_wheel_serves_the_bundled_apps_and_the_probes(runtimes, installed):
    home, python = installed
    data = Path(home) / "data"
    shutil.copytree(
        ROOT / "apps", data / "apps", ignore=shutil.ignore_patterns(".deps", "__pycache__")
    )
    (data / "plugins").mkdir()
    (data / "state").mkdir()
    if os.geteuid() == 0:
        for path in [data, *data.rglob("*")]:
            os.chown(path, 65534, 65534)
    # Kubernetes runs the image with a read-only root filesystem: /data (the
    # home and working directory) is not writable, only its three volumes.
    data.chmod(0o555)
    twistd = os.path.join(os.path.dirname(python), "twistd")
    env = {
        "RUNTIME_ENV": "production",
        "RUNTIME_WORKER_DIRS": str(data / "apps"),
        "RUNTIME_PLUGIN_DIRS": str(data / "plugins"),
        "RUNTIME_DATA_DIR": str(data / "state"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(data),
        "PATH": os.path.dirname(python) + os.pathsep + os.environ.get("PATH", ""),
        "VIRTUAL_ENV": os.path.dirname(os.path.dirname(python)),
        "PYTHONPATH": "",
    }
    proc = await runtimes.start(
        worker_dirs=None,
        env=env,
        cwd=str(data),
        command=_as_unprivileged([python, twistd]),
    )
    assert (await proc.get("/api/health/live")).code == 200
    assert (await proc.get("/api/health/ready")).code == 200
    metrics = await proc.get("/metrics/api/")  # a built-in plugin: its manifest is in the wheel
    assert metrics.code == 200
    for app in sorted(path.name for path in (ROOT / "apps").iterdir() if path.is_dir()):
        answer = await proc.get(f"/{app}/")
        body = await answer.content()
        assert answer.code == 200, f"/{app}/ answered {answer.code}: {body[:300]!r}"
    check = _healthcheck()
    assert check[0] == "python"
    healthy = subprocess.run(
        [python, *check[1:]], env={**env, "PORT": str(proc.port)}, capture_output=True, text=True
    )
    assert healthy.returncode == 0, healthy.stderr  # the image's HEALTHCHECK, as Docker runs it
    assert proc.unparsed == []
    if os.geteuid() == 0 and _nobody_can_run(python):
        assert _owner(proc.pid) == 65534  # the runtime ran as nobody, not root
    assert await proc.stop("TERM") == 0
    data.chmod(0o755)


@pytest_twisted.ensureDeferred
async def test_the_zipapp_runs_the_runtime_with_the_same_options(runtimes, installed, tmp_path):
    """C{buntime.pyz}, built with shiv from the wheel: C{python buntime.pyz} is the runtime."""
    home, _ = installed
    [wheel] = os.listdir(os.path.join(home, "wheels"))
    bundle = tmp_path / "buntime.pyz"
    built = subprocess.run(
        [
            tool("shiv"),
            "-q",
            "-c",
            "buntime",
            "-o",
            str(bundle),
            "--python",
            "/usr/bin/env python3",
            os.path.join(home, "wheels", wheel) + _demo_extra(),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    apps = tmp_path / "apps"
    shutil.copytree(ROOT / "apps" / "hello", apps / "hello")
    env = {"SHIV_ROOT": str(tmp_path / "shiv"), "RUNTIME_DATA_DIR": str(tmp_path / "state")}
    proc = await runtimes.start(
        worker_dirs=[str(apps)],
        env=env,
        command=[sys.executable, str(bundle)],
        twistd=False,
    )
    assert (await proc.get("/api/health/ready")).code == 200
    hello = await proc.get("/hello/")
    assert hello.code == 200
    version = subprocess.run(
        [sys.executable, str(bundle), "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "SHIV_ROOT": str(tmp_path / "shiv")},
    )
    assert version.stdout.startswith("buntime ")


def test_the_systemd_unit_in_the_docs_is_the_one_shipped():
    """docs/buntime.service is the unit docs/deployment.md shows, and it stops gracefully."""
    unit = (ROOT / "docs" / "buntime.service").read_text()
    shown = (ROOT / "docs" / "deployment.md").read_text()
    body = [line for line in unit.splitlines() if not line.startswith("#")]
    assert "\n".join(body).strip() in shown
    assert "KillSignal=SIGTERM" in unit and "--nodaemon" in unit
    timeout = int(next(line for line in body if line.startswith("TimeoutStopSec=")).split("=")[1])
    assert timeout > 30 + 5  # RUNTIME_SHUTDOWN_TIMEOUT + the production drain delay
    # ProtectSystem=strict leaves /tmp read-only but for a private one: uploads,
    # the fork template's warm-up and pip (per-app dependencies) need TMPDIR.
    assert "ProtectSystem=strict" not in body or "PrivateTmp=true" in body


def _image_command() -> list[str]:
    """The final stage's C{ENTRYPOINT} (if any) and C{CMD}, in their exec forms."""
    final = (ROOT / "docker" / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    command: list[str] = []
    for keyword in ("ENTRYPOINT", "CMD"):
        lines = [line for line in final.splitlines() if line.startswith(f"{keyword} ")]
        if lines:
            command += json.loads(lines[-1].split(" ", 1)[1])
    return command


def _zombies_of(pid: int) -> list[str]:
    """The names of the children of C{pid} that ended and were never waited for."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    zombies = []
    for child in children:
        stat = Path(f"/proc/{child}/stat").read_text(errors="replace")
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if rest.split()[0] == "Z":
            zombies.append(name)
    return zombies


@pytest_twisted.ensureDeferred
async def test_the_image_s_pid_1_reaps_orphans(runtimes, tmp_path):
    """
    In a container the image's command is PID 1, which inherits every
    orphan (a worker's subprocess outliving it, say) and must wait for it,
    or each one stays a zombie until the pod restarts.  The image's
    ENTRYPOINT and CMD are run as PID 1 of a new PID namespace, an orphan
    is made in it, and nothing may be left unreaped.
    """
    unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
    if os.geteuid() != 0 or unshare is None or nsenter is None:
        pytest.skip("needs root, unshare and nsenter for a PID namespace")
    command = _image_command()
    twistd = command.index("twistd")
    command[twistd : twistd + 1] = twistd_command()
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} (the image's PID 1) is not installed here")
    (tmp_path / "apps").mkdir()
    proc = await runtimes.start(
        worker_dirs=[str(tmp_path / "apps")],
        env={"RUNTIME_DATA_DIR": str(tmp_path / "state")},
        command=[unshare, "--pid", "--fork", "--kill-child", *command],
        twistd=False,
    )
    [init] = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    subprocess.run([nsenter, "-t", init, "-p", "--", "sh", "-c", "sleep 0.2 & exit 0"], check=True)
    await deferLater(reactor, 1.0)
    assert _zombies_of(int(init)) == []
    os.kill(int(init), signal.SIGTERM)  # what the container engine signals: PID 1
    assert await proc.wait_exit(40) == 0
