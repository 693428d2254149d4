"""Run TransformerLens's own unit and integration tests against TransformerLens and against lens.

What it measures (issue #12): of the TransformerLens tests that TransformerLens 2.18 itself passes without
network, how many pass on lens when only the imports and the config construction are translated, and why
the others fail, grouped by cause and ranked by how many tests each cause blocks.

Where the tests come from: TransformerLens 2.18.0's sdist ships no ``tests/``; the earliest sdist on PyPI
that does is 3.0.0, whose unit and integration tests for ``HookedTransformer`` are 2.x's tests carried on.
Get it once (the script itself never touches the network)::

    pip download --no-deps --no-binary :all: transformer-lens==3.0.0 -d /tmp/tl-src3

Three 3.0 import paths are mapped back to 2.18's (``transformer_lens.config.HookedTransformerConfig``,
``transformer_lens.cache.key_value_cache``); every test that still fails on TransformerLens 2.18 (3.x-only
features, model_bridge) drops out of the count, as do the tests that need the network (they fail there with
``HF_HUB_OFFLINE=1``; counted as "needs network").

How the lens run is translated: every ``transformer_lens`` in a test file becomes ``_tl2lens``, a package that
:func:`install_shim` serves from this file: ``_tl2lens.X.name`` resolves to the lens module doing X's job
(``utils`` -> ``lens.utils``, ``hook_points`` -> ``lens.hooks``, ...), ``HookedTransformerConfig(**kw)``
builds a ``lens.TransformerConfig`` through ``lens.HookedTransformerConfig`` (TL field names to lens's), and a name
lens lacks becomes a placeholder that raises :class:`LensMissing` only when a test uses it (so one missing
name fails the tests that use it, not the whole file). ``transformer_lens`` itself cannot be imported then.

Usage (not part of the README test command, not run by CI)::

    .venv-tl/bin/python scripts/tl_suite.py --tests /tmp/tl-src3/transformer_lens-3.0.0.tar.gz \\
        --json /tmp/tl_suite.json

It prints the counts and the failure groups; ``--json`` writes every test's outcome and cause.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import importlib.abc
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
SHIM = "_tl2lens"

# -- 3.0 test paths -> 2.18 paths (applied to both runs) --------------------------------------------------
BACKPORT = [
    (
        r"from transformer_lens\.config import HookedTransformerConfig",
        "from transformer_lens import HookedTransformerConfig",
    ),
    (r"transformer_lens\.config\.HookedTransformerConfig", "transformer_lens.HookedTransformerConfig"),
    (r"transformer_lens\.cache\.key_value_cache", "transformer_lens.past_key_value_caching"),
    (r"\bTransformerLensKeyValueCache", "HookedTransformerKeyValueCache"),
]
SKIP_DIRS = ("model_bridge",)  # 3.x-only; nothing there imports on 2.18

# -- the lens side of the translation ----------------------------------------------------------------------
# TL module (relative to transformer_lens) -> lens modules searched for a name, in order.
MODULES = {
    "": ["lens"],
    "utils": ["lens.utils", "lens.names"],
    "hook_points": ["lens.hooks"],
    "HookedTransformer": ["lens.model", "lens"],
    "ActivationCache": ["lens.analysis", "lens"],
    "FactoredMatrix": ["lens.factored_matrix"],
    "patching": ["lens.tools.patching"],
    "head_detector": ["lens.tools.head_detectors"],
    "past_key_value_caching": ["lens.generation"],
    "loading_from_pretrained": ["lens.loading"],
    "HookedTransformerConfig": [],
    "evals": [],
    "train": [],
    "SVDInterpreter": [],
    "HookedEncoder": [],
    "HookedEncoderDecoder": [],
    "BertNextSentencePrediction": [],
    "supported_models": [],
}
# Top-level names that are classes in TL (their module of the same name must not shadow them).
TOP_CLASSES = (
    "HookedTransformer",
    "ActivationCache",
    "FactoredMatrix",
    "HookedTransformerConfig",
    "HookedEncoder",
    "HookedEncoderDecoder",
    "HookedAudioEncoder",
    "BertNextSentencePrediction",
    "SVDInterpreter",
)
# Test files whose subject is a TransformerLens internal (its concrete components, activation factories,
# weight converters, LIT integration): whatever fails there counts as "TL-internal".
INTERNAL_TESTS = (
    "unit/components/",
    "unit/factories/",
    "unit/pretrained_weight_conversions/",
    "unit/weight_conversion/",
    "unit/test_lit.py",
    "unit/test_xielu.py",
)
# TL modules whose contents are TransformerLens internals (its concrete components, weight converters...).
INTERNAL = (
    "components",
    "factories",
    "pretrained",
    "weight_conversion",
    "conversion_utils",
    "utilities",
    "weight_processing",
    "lit",
    "config",
    "tools",
    "cache",
    "model_bridge",
    "benchmarks",
)


class LensMissing(Exception):
    """A TransformerLens name a test used that lens does not have."""


class _Missing:
    """Placeholder for a name lens lacks: fails with LensMissing the moment a test uses it."""

    def __init__(self, dotted: str, internal: bool):
        object.__setattr__(self, "_dotted", dotted)
        object.__setattr__(self, "_internal", internal)

    def _fail(self, *_a, **_k):
        kind = "TL-internal" if self._internal else "not in lens"
        raise LensMissing(f"{kind}: transformer_lens.{self._dotted}")

    def __getattr__(self, name):
        if name.startswith("__") or name.startswith("_pytest") or name == "pytestmark":
            raise AttributeError(name)
        self._fail()

    __call__ = __getitem__ = __iter__ = __dir__ = _fail

    def __mro_entries__(self, bases):
        self._fail()

    def __repr__(self):
        return f"<missing transformer_lens.{self._dotted}>"


def _is_internal(tl_module: str, name: str) -> bool:
    return name.startswith("_") or tl_module.split(".")[0] in INTERNAL


def _resolve(tl_module: str, name: str):
    dotted = f"{tl_module}.{name}".strip(".")
    if name == "HookedTransformerConfig" and tl_module in ("", "HookedTransformerConfig"):
        from lens.tl_config import HookedTransformerConfig

        return HookedTransformerConfig
    if tl_module == "" and name in MODULES and name not in TOP_CLASSES or name in INTERNAL and tl_module == "":
        return importlib.import_module(f"{SHIM}.{name}")
    candidates = MODULES.get(tl_module, []) if not _is_internal(tl_module, name) else []
    for mod_name in candidates:
        mod = importlib.import_module(mod_name)
        if hasattr(mod, name):
            return getattr(mod, name)
    return _Missing(dotted, _is_internal(tl_module, name))


class _Proxy(types.ModuleType):
    def __init__(self, tl_module: str):
        super().__init__(f"{SHIM}.{tl_module}".rstrip("."))
        self.__path__ = []  # a package: submodules import through _Finder
        self._tl_module = tl_module

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _resolve(self._tl_module, name)
        return value

    def __setattr__(self, name, value):
        # the import system binds a submodule on its parent; TL's classes of the same name win
        if isinstance(value, types.ModuleType) and name in TOP_CLASSES:
            return
        super().__setattr__(name, value)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "transformer_lens" or fullname.startswith("transformer_lens."):
            raise ImportError(f"{fullname}: the lens run must not import TransformerLens")
        if fullname.startswith(SHIM + "."):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Proxy(spec.name[len(SHIM) + 1 :])

    def exec_module(self, module):
        pass


def install_shim() -> None:
    """Serve ``_tl2lens`` (TL names resolved in lens) and refuse ``transformer_lens`` imports."""
    sys.meta_path.insert(0, _Finder())
    sys.modules[SHIM] = _Proxy("")


# -- config translation: lens.HookedTransformerConfig (lens/tl_config.py) builds a lens.TransformerConfig from
# TransformerLens's field names and raises ConfigUntranslatable (a ValueError) for what lens cannot express.


# -- pytest plugin: one record per test --------------------------------------------------------------------
_RECORDS: dict[str, dict] = {}
_COLLECT_ERRORS: dict[str, str] = {}


def _record(nodeid: str) -> dict:
    return _RECORDS.setdefault(nodeid, {"outcome": "passed", "exc_type": None, "message": None})


def pytest_runtest_makereport(item, call):
    if call.excinfo is None:
        return
    rec = _record(item.nodeid)
    if rec["exc_type"] is not None:
        return
    exc = call.excinfo.value
    rec["exc_type"] = type(exc).__name__
    rec["message"] = str(exc)[:600]
    rec["when"] = call.when
    try:
        import inspect

        rec["uses_raises"] = "raises(" in inspect.getsource(item.obj)
    except (OSError, TypeError, AttributeError):
        rec["uses_raises"] = False


def pytest_runtest_logreport(report):
    rec = _record(report.nodeid)
    if report.failed:
        rec["outcome"] = "failed"
    elif report.skipped and rec["outcome"] != "failed":
        rec["outcome"] = "skipped"


def pytest_collectreport(report):
    if report.failed:
        _COLLECT_ERRORS[report.nodeid] = str(report.longrepr)[-1500:]


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("TL_SUITE_OUT")
    if out:
        Path(out).write_text(json.dumps({"tests": _RECORDS, "collect_errors": _COLLECT_ERRORS}))


# -- classification ----------------------------------------------------------------------------------------
NETWORK = re.compile(
    r"offline|HF_HUB_OFFLINE|LocalEntryNotFound|couldn't connect|Cannot find the requested files"
    r"|not found in the cache|huggingface\.co|MaxRetryError|ConnectionError|gated repo",
    re.I,
)
NUMERIC = re.compile(r"not close|allclose|Mismatched elements|isclose|atol|rtol|Greatest absolute difference", re.I)


def classify(rec: dict) -> tuple[str, str]:
    """(cause, key): cause is one of the report's categories, key the specific name or message."""
    exc, msg = rec.get("exc_type") or "?", rec.get("message") or ""
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    if NETWORK.search(msg):
        return "needs network", exc
    if exc == "LensMissing":
        kind, _, name = first.partition(": ")
        return ("TL-internal class/function" if kind == "TL-internal" else "missing name"), name
    if exc == "ConfigUntranslatable":
        return "config field lens lacks", first
    if exc == "ImportError" and "must not import TransformerLens" in msg:
        return "TL-internal class/function", first.split(":")[0]
    m = re.search(
        r"'(\w+)' object has no attribute '(\w+)'|type object '(\w+)' has no attribute '(\w+)'"
        r"|module '([\w.]+)' has no attribute '(\w+)'",
        msg,
    )
    if exc == "AttributeError" and m:
        owner, attr = [g for g in m.groups() if g]
        cause = "TL-internal class/function" if attr.startswith("_") else "missing name"
        return cause, f"{owner}.{attr}"
    m = re.search(r"(\w+(?:\.\w+)?)\(\) got an unexpected keyword argument '(\w+)'", msg)
    if exc == "TypeError" and m:
        return "missing name", f"{m.group(1)}({m.group(2)}=...)"
    if "DID NOT RAISE" in msg:
        return "different exception type", f"lens raised nothing where TL raised: {first}"
    if rec.get("uses_raises") and exc not in ("AssertionError", "Failed"):
        return "different exception type", f"lens raised {exc}"
    if exc in ("AssertionError", "Failed") and NUMERIC.search(msg):
        return "numeric difference", "values differ from the test's expectation"
    short = re.sub(r"\d+(\.\d+)?", "N", first)[:110]
    return "other", f"{exc}: {short}"


# -- driver ------------------------------------------------------------------------------------------------
def _extract_tests(src: Path, work: Path) -> Path:
    """The tests/ folder of an sdist (.tar.gz) or of a directory holding tests/."""
    if src.is_file():
        with tarfile.open(src) as tar:
            members = [m for m in tar.getmembers() if "/tests/" in f"/{m.name}"]
            tar.extractall(work / "sdist", members=members, filter="data")
        found = sorted((work / "sdist").glob("*/tests"))
        if not found:
            raise SystemExit(f"{src} has no tests/ folder")
        return found[0]
    tests = src / "tests" if (src / "tests").is_dir() else src
    if not (tests / "unit").is_dir():
        raise SystemExit(f"{tests} has no unit/ folder")
    return tests


def _copy_tree(tests: Path, dest: Path, translate: bool) -> None:
    for path in tests.rglob("*"):
        rel = path.relative_to(tests)
        if path.is_dir() or any(part in SKIP_DIRS for part in rel.parts):
            continue
        if rel.parts[0] not in ("unit", "integration", "mocks") and len(rel.parts) > 1:
            continue
        target = dest / "tests" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix != ".py":
            shutil.copy(path, target)
            continue
        text = path.read_text()
        for pattern, repl in BACKPORT:
            text = re.sub(pattern, repl, text)
        if translate:
            text = re.sub(r"\btransformer_lens\b", SHIM, text)
        target.write_text(text)
    for sub in ("unit", "integration"):  # packages, so same-named test files do not clash
        (dest / "tests" / sub / "__init__.py").touch()
    (dest / "tests" / "__init__.py").touch()


def _run(
    python: str, root: Path, pythonpath: list[str], out: Path, timeout: int | None, log: Path, targets: list[str]
) -> dict:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TL_SUITE_OUT=str(out),
        PYTHONPATH=os.pathsep.join(pythonpath),
        WANDB_MODE="disabled",
    )
    has_timeout = subprocess.run([python, "-c", "import pytest_timeout"], capture_output=True).returncode == 0
    cmd = [
        python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "tl_suite",
        "-o",
        "addopts=",
        "--continue-on-collection-errors",
        "--rootdir",
        str(root),
        *targets,
    ]
    if has_timeout and timeout:
        cmd += [f"--timeout={timeout}"]
    with log.open("w") as fh:
        subprocess.run(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return json.loads(out.read_text())


def _expand_collect_errors(tl_pass: list[str], lens: dict) -> None:
    """A lens file that failed to import fails each of its TL-passing tests with that import error."""
    for file_id, longrepr in lens["collect_errors"].items():
        last = [ln for ln in longrepr.splitlines() if ln.startswith("E ")]
        text = last[-1][2:].strip() if last else longrepr[-300:]
        exc, _, msg = text.partition(": ")
        for nodeid in tl_pass:
            if nodeid.startswith(file_id + "::") and nodeid not in lens["tests"]:
                lens["tests"][nodeid] = {
                    "outcome": "failed",
                    "exc_type": exc.split(".")[-1],
                    "message": msg,
                    "collection": True,
                }


def summarise(tl: dict, lens: dict) -> dict:
    tl_tests = tl["tests"]
    tl_pass = sorted(n for n, r in tl_tests.items() if r["outcome"] == "passed")
    tl_network = sorted(
        n for n, r in tl_tests.items() if r["outcome"] == "failed" and NETWORK.search(r["message"] or "")
    )
    _expand_collect_errors(tl_pass, lens)
    results, groups = {}, collections.defaultdict(list)
    for nodeid in tl_pass:
        rec = lens["tests"].get(nodeid)
        if rec is None:
            rec = {"outcome": "failed", "exc_type": "NotCollected", "message": "test id not collected on lens"}
        if rec["outcome"] == "passed":
            results[nodeid] = {"outcome": "passed"}
            continue
        cause, key = classify(rec) if rec["outcome"] == "failed" else ("skipped on lens", rec.get("message") or "")
        if any(part in nodeid for part in INTERNAL_TESTS):
            cause = "TL-internal class/function"
        results[nodeid] = {
            "outcome": rec["outcome"],
            "cause": cause,
            "key": key,
            "message": (rec.get("message") or "")[:300],
        }
        groups[(cause, key)].append(nodeid)
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return {
        "tl_tests_run": len(tl_tests),
        "tl_passed": len(tl_pass),
        "tl_failed_needs_network": len(tl_network),
        "tl_files_needing_network": sorted(f for f, r in tl["collect_errors"].items() if NETWORK.search(r)),
        "tl_files_not_importable": sorted(f for f, r in tl["collect_errors"].items() if not NETWORK.search(r)),
        "lens_passed": sum(r["outcome"] == "passed" for r in results.values()),
        "by_cause": dict(collections.Counter(r["cause"] for r in results.values() if r["outcome"] != "passed")),
        "groups": [{"cause": c, "key": k, "count": len(ids), "example": ids[0]} for (c, k), ids in ranked],
        "tests": results,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tests",
        type=Path,
        default=Path("/tmp/tl-src3/transformer_lens-3.0.0.tar.gz"),
        help="TransformerLens sdist (.tar.gz) or a folder holding its tests/",
    )
    ap.add_argument("--tl-python", default=str(ROOT / ".venv-tl/bin/python"), help="python with transformer_lens")
    ap.add_argument("--lens-python", default=None, help="python for the lens run (default: --tl-python)")
    ap.add_argument("--json", type=Path, default=None, help="write the machine-readable result here")
    ap.add_argument("--timeout", type=int, default=120, help="per-test seconds (needs pytest-timeout)")
    ap.add_argument(
        "--tl-results",
        type=Path,
        default=None,
        help="TransformerLens's raw results: reused if the file exists, else written there",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and pytest logs")
    ap.add_argument("--top", type=int, default=40, help="failure groups to print")
    args = ap.parse_args(argv)
    if not args.tests.exists():
        raise SystemExit(f"{args.tests} not found; see this script's docstring for how to get TL's tests")
    work = Path(tempfile.mkdtemp(prefix="tl_suite_"))
    try:
        tests = _extract_tests(args.tests, work)
        for name, translate in (("tl", False), ("lens", True)):
            _copy_tree(tests, work / name, translate)
        (work / "lens" / "conftest.py").write_text(
            f"import sys\nsys.path.insert(0, {str(SCRIPTS)!r})\nimport tl_suite\ntl_suite.install_shim()\n"
        )
        if args.tl_results and args.tl_results.exists():
            print(f"reusing TransformerLens's results from {args.tl_results}", flush=True)
            tl = json.loads(args.tl_results.read_text())
        else:
            print(f"running TransformerLens's tests on TransformerLens ({work / 'tl'}) ...", flush=True)
            tl = _run(
                args.tl_python,
                work / "tl",
                [str(SCRIPTS)],
                work / "tl.json",
                args.timeout,
                work / "tl.log",
                ["tests/unit", "tests/integration"],
            )
            if args.tl_results:
                args.tl_results.write_text(json.dumps(tl))
        # only the files holding a test TransformerLens passes run on lens
        files = sorted({n.split("::")[0] for n, r in tl["tests"].items() if r["outcome"] == "passed"})
        print(f"running {len(files)} files on lens ...", flush=True)
        lens = _run(
            args.lens_python or args.tl_python,
            work / "lens",
            [str(SCRIPTS), str(ROOT)],
            work / "lens.json",
            args.timeout,
            work / "lens.log",
            files,
        )
        summary = summarise(tl, lens)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nTL tests run: {summary['tl_tests_run']}; TransformerLens passes {summary['tl_passed']} "
        f"({summary['tl_failed_needs_network']} others fail offline: needs network; "
        f"{len(summary['tl_files_needing_network'])} files load a model at import: needs network; "
        f"{len(summary['tl_files_not_importable'])} files do not import on TL 2.18)"
    )
    print(f"lens passes {summary['lens_passed']} of those {summary['tl_passed']}")
    print("failures by cause:", json.dumps(summary["by_cause"], indent=None))
    print(f"\n{'count':>5}  cause / key  (example)")
    for g in summary["groups"][: args.top]:
        print(f"{g['count']:>5}  {g['cause']}: {g['key']}\n       e.g. {g['example']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
