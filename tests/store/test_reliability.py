"""Reliability of the activation store (lens.store): a harvest killed mid-run, a truncated or corrupted shard,
a full disk, an unwritable folder, and the same store from one process or from a ``torchrun`` job.

The oracle throughout is an uninterrupted single-process harvest with the same arguments: every broken run,
once resumed, must give a store whose shard files are byte-identical to it, whose columns are equal, and whose
index holds every (context, position) row exactly once."""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest
import torch

import lens
import lens.store
from lens.store import shards as fmt
from lens.store.sources import TokenSource

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gelu-4l"
HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out", "blocks.0.attn.hook_pattern"]
CONTEXT, BATCH, SHARD = 32, 4, 4
N_CONTEXTS = 42  # 11 shards of 4 contexts, the last one holding 2
FILES = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/*.py"))[:4]
SETTINGS = dict(hooks=HOOKS, context_size=CONTEXT, batch_size=BATCH, max_tokens=CONTEXT * N_CONTEXTS,
                shard_contexts=SHARD)  # fmt: skip
N_SHARDS = -(-N_CONTEXTS // SHARD)
TIMEOUT = 120

# Runs lens.store.harvest with SETTINGS (as JSON in argv[1]); joins the torchrun job when started by one; records
# its pid in pid_dir; with hang_shard, writes half of that shard's temporary file and then hangs (to be killed).
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    import torch
    args = json.loads(sys.argv[1])
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    import lens, lens.store
    from lens.store import shards
    hang = args.pop("hang_shard", None)
    if hang is not None:
        real = shards.write_atomic
        def write_atomic(path, data):
            if path.name == shards.shard_name(hang):
                with open(path.with_name(f".{path.name}.tmp"), "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                time.sleep(600)
            return real(path, data)
        shards.write_atomic = write_atomic
    pid_dir = Path(args.pop("pid_dir"))
    (pid_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    model = lens.zoo.load(args.pop("model"))
    lens.store.harvest(model, args.pop("files"), out_dir=args.pop("out"), progress=False, **args)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    """
)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--nnodes=1",
            "--master_addr=127.0.0.1", "--master_port", str(_free_port())]  # fmt: skip


def _cli_harvest_args(out: Path) -> list[str]:
    return ["harvest", "--model", MODEL, "--source", *FILES, "--out", str(out), "--hooks", *HOOKS,
            "--context-size", str(CONTEXT), "--batch-size", str(BATCH), "--max-tokens", str(CONTEXT * N_CONTEXTS),
            "--shard-contexts", str(SHARD)]  # fmt: skip


def _child_cmd(tmp: Path, out: Path, **extra) -> list[str]:
    script = tmp / "child.py"
    script.write_text(CHILD)
    args = dict(SETTINGS, model=MODEL, files=FILES, out=str(out), pid_dir=str(tmp), **extra)
    return [str(script), json.dumps(args)]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{cmd[:6]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _wait_for(proc: subprocess.Popen, *paths: Path) -> None:
    """Poll until every path exists (and is not empty); fails if the child exits first or after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while not all(p.exists() and p.stat().st_size > 0 for p in paths):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the harvest exited ({proc.returncode}) before {[str(p) for p in paths]}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {[str(p) for p in paths]}")
        time.sleep(0.05)


def _harvest(model, out: Path) -> Path:
    return lens.store.harvest(model, FILES, out_dir=out, progress=False, **SETTINGS)


def _records(out: Path) -> list[int]:
    return sorted(int(p.name[6:12]) for p in out.glob("shard-*.json"))


@pytest.fixture(scope="module")
def model():
    return lens.zoo.load(MODEL)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory) -> Path:
    """The uninterrupted single-process store every other run is compared with."""
    out = _harvest(model, tmp_path_factory.mktemp("reference") / "store")
    store = lens.store.open(out)
    assert len(store.shards) == N_SHARDS and lens.store.verify(out) == []
    # its tokens are the source's contexts (an oracle independent of the harvest), position 0 (BOS) left out
    src = TokenSource.from_any(FILES, model.tokenizer, CONTEXT)
    ids = torch.stack([torch.from_numpy(c) for _, c in src.contexts(0, N_CONTEXTS)])
    assert torch.equal(store.tokens[:], ids[:, 1:].reshape(-1))
    return out


def assert_same_store(got: Path, want: Path) -> None:
    """``got`` is complete and equal to ``want``: same files with the same bytes, same manifest shard list,
    equal columns, every (context, position) row once, and no temporary file left."""
    names = lambda d: sorted(p.name for p in d.iterdir() if p.name.startswith("shard-"))  # noqa: E731
    assert names(got) == names(want)
    for name in names(want):
        assert (got / name).read_bytes() == (want / name).read_bytes(), f"{name} differs"
    assert [p.name for p in got.glob(".*")] == [], "temporary files left behind"
    m_got, m_want = (json.loads((d / fmt.MANIFEST).read_text())["store"] for d in (got, want))
    assert m_got == m_want
    assert m_got["complete"] and [r["sha256"] for r in m_got["shards"]] == [
        fmt.file_sha256(got / fmt.shard_name(k)) for k in range(N_SHARDS)
    ]
    assert lens.store.verify(got) == []
    a, b = lens.store.open(got), lens.store.open(want)
    for name in HOOKS:
        assert torch.equal(a[name][:], b[name][:]), name
    assert torch.equal(a.tokens[:], b.tokens[:])
    kept = m_want["identity"]["kept_positions"]
    grid = torch.tensor([[c, p] for c in range(N_CONTEXTS) for p in kept])
    assert torch.equal(a.index[:], grid)  # every (context, position) once, in order: none missing or doubled


def test_kill_9_mid_run_then_resume(model, reference, tmp_path):
    out = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, *_child_cmd(tmp_path, out, hang_shard=2)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        tmp = out / f".{fmt.shard_name(2)}.tmp"
        _wait_for(proc, out / fmt.record_name(1), tmp)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert tmp.exists(), "the kill should have left a half-written temporary shard"
    assert _records(out) == [0, 1]
    with pytest.raises(lens.store.StoreError, match=r"not finished \(2 shard\(s\) done\)"):
        lens.store.open(out)
    # the half-written temporary file is not a shard: not listed, not checked, not counted
    assert lens.store.verify(out) == []
    assert lens.store.info(out)["shards"] == 2 and not lens.store.info(out)["complete"]
    assert not (out / fmt.shard_name(2)).exists()
    for k in (0, 1):
        assert (out / fmt.shard_name(k)).read_bytes() == (reference / fmt.shard_name(k)).read_bytes()

    _harvest(model, out)  # the same call, unpatched, in this process
    assert_same_store(out, reference)


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_damaged_shard_is_named_and_rewritten(model, reference, tmp_path, damage):
    out = tmp_path / "store"
    shutil.copytree(reference, out)
    bad = out / fmt.shard_name(3)
    data = bytearray(bad.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # flip bytes in the middle, same size
        mid = len(data) // 2
        data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    bad.write_bytes(bytes(data))

    problems = lens.store.verify(out)
    assert len(problems) == 1 and bad.name in problems[0] and damage in problems[0]
    cli = subprocess.run([sys.executable, "-m", "lens.store", "verify", str(out)], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert cli.returncode == 1, cli.stdout + cli.stderr
    named = {fmt.shard_name(k) for k in range(N_SHARDS) if fmt.shard_name(k) in cli.stdout + cli.stderr}
    assert named == {bad.name}

    store, ref = lens.store.open(out), lens.store.open(reference)
    rows = SHARD * len(store.identity["kept_positions"])
    with pytest.raises(lens.store.StoreError, match=bad.name):
        store[HOOKS[0]][3 * rows + 5]
    with pytest.raises(lens.store.StoreError, match=bad.name):
        store.tokens[3 * rows : 4 * rows]
    for row in (0, 2 * rows + 1, 4 * rows, len(store) - 1):  # the other shards still read, and read right
        for name in HOOKS:
            assert torch.equal(store[name][row], ref[name][row])

    _harvest(model, out)  # resuming rewrites the bad shard
    assert_same_store(out, reference)


def _full_disk_at(path_name: str):
    """An ``open`` for lens.store.shards whose writes to ``path_name`` put half the bytes on disk and then fail
    with ENOSPC, like a disk filling up mid-file."""
    real = open

    class Full(io.FileIO):
        def write(self, b):
            super().write(bytes(b)[: len(b) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def patched(file, mode="r", *args, **kwargs):
        if Path(file).name == path_name and "w" in mode:
            return Full(file, "wb")
        return real(file, mode, *args, **kwargs)

    return patched


def test_disk_full_names_shard_and_folder_and_resumes(model, reference, tmp_path, monkeypatch):
    out = tmp_path / "store"
    failing = fmt.shard_name(2)
    monkeypatch.setattr(fmt, "open", _full_disk_at(f".{failing}.tmp"), raising=False)
    with pytest.raises(OSError) as info:
        _harvest(model, out)
    monkeypatch.undo()
    e = info.value
    assert e.errno == errno.ENOSPC
    assert failing in str(e) and str(out) in str(e), str(e)
    assert _records(out) == [0, 1]  # the shards before it are complete and intact
    for k in (0, 1):
        record = json.loads((out / fmt.record_name(k)).read_text())
        assert fmt.check_shard(out, record) is None
        assert record["sha256"] == fmt.file_sha256(reference / fmt.shard_name(k))
    assert [p.name for p in out.glob("*.tmp")] + [p.name for p in out.glob(".*")] == []
    assert not (out / failing).exists()
    with pytest.raises(lens.store.StoreError, match="not finished"):
        lens.store.open(out)

    _harvest(model, out)  # disk space back: the same call completes the store
    assert_same_store(out, reference)


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_unwritable_folder_fails_before_compute(model, tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "store" if where == "under-a-file" else blocker
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        with pytest.raises(OSError) as info:
            _harvest(model, out)
    finally:
        handle.remove()
    assert str(out) in str(info.value) and "cannot be written" in str(info.value)
    assert forwards == [], "the model ran before the folder was checked"
    assert blocker.read_text() == "not a folder"


needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


@needs_gloo
def test_torchrun_two_processes_equal_one(reference, tmp_path):
    stores = {}
    for label, cmd in (
        ("torchrun-2", [*_torchrun(2), "-m", "lens.store"]),
        ("torchrun-1", [*_torchrun(1), "-m", "lens.store"]),
        ("python", [sys.executable, "-m", "lens.store"]),
    ):
        stores[label] = tmp_path / label
        proc = _run([*cmd, *_cli_harvest_args(stores[label])])
        assert f"in {N_SHARDS} shard(s)" in proc.stdout
    api = tmp_path / "api-2"  # lens.store.harvest called inside a 2-process job this test starts
    _run([*_torchrun(2), *_child_cmd(tmp_path, api)])
    assert sorted(p.name for p in tmp_path.glob("rank*.pid")) == ["rank0.pid", "rank1.pid"]
    for out in [*stores.values(), api]:
        assert_same_store(out, reference)
    full = [json.loads((d / fmt.MANIFEST).read_text()) for d in (*stores.values(), api)]
    assert all(m == full[0] for m in full), "the manifests differ beyond their store section"


@needs_gloo
def test_killed_rank_resumes_on_one_process(model, reference, tmp_path):
    out = tmp_path / "store"
    hang = 5  # a shard of rank 1 (5 % 2)
    proc = subprocess.Popen([*_torchrun(2), *_child_cmd(tmp_path, out, hang_shard=hang)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for(proc, tmp_path / "rank1.pid", out / fmt.record_name(3), out / f".{fmt.shard_name(hang)}.tmp")
        os.kill(int((tmp_path / "rank1.pid").read_text()), signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)  # torchrun stops rank 0 and fails
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    done = _records(out)
    assert {1, 3} <= set(done) and hang not in done
    with pytest.raises(lens.store.StoreError, match="not finished"):
        lens.store.open(out)
    assert lens.store.verify(out) == []

    _harvest(model, out)  # one process picks up both ranks' remaining shards
    assert_same_store(out, reference)
