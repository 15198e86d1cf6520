"""Damaged run directories: every command a user runs on one succeeds or fails in one line, never a traceback.

One tiny run is trained per session and kept pristine. Each example copies it, damages one of its
files (truncated, random bytes, JSON of the wrong shape or types, tensors of the wrong shape or
dtype, a file replaced by a directory, a link or nothing, a data file whose header claims petabytes)
and runs one command on the copy through :func:`betavae.cli.main`: ``train --resume``, ``evaluate``,
``report``, ``traverse``, or the explorer's loading. A command ends with exit code 0, or with 2 and
``betavae: error: ...``; a resume that fails leaves every file of the run as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from betavae.cli import main
from betavae.errors import BetaVAEError

STATE = "checkpoints/step-00000004/state.json"
TENSORS = "checkpoints/step-00000004/tensors.safetensors"
OLDER_STATE = "checkpoints/step-00000002/state.json"
JSON_FILES = ["config.json", STATE, OLDER_STATE, "diagnosis.json", "evaluation.json"]
TENSOR_FILES = ["model.safetensors", TENSORS]
ALL_FILES = [*JSON_FILES, *TENSOR_FILES, "metrics.jsonl", "data/small.npy"]

#: Bad inputs tried in this session, by the file damaged (printed at the end of the session).
TRIED: dict[str, int] = {}


@pytest.fixture(scope="session")
def pristine_run(tmp_path_factory, small_images):
    """A finished, evaluated tiny run (``root/run``) on labelled data in ``root/data``: every command accepts it."""
    from betavae.data.dsprites import DSprites

    root = tmp_path_factory.mktemp("pristine")
    (root / "data").mkdir()
    factors = DSprites().sample_factors(512, np.random.default_rng(0))[:64]
    np.save(root / "data" / "small.npy", small_images[:64])
    rows = ["shape,scale"] + [f"{int(a)},{int(b)}" for a, b in zip(factors[:, 1], factors[:, 2])]
    (root / "data" / "small.csv").write_text("\n".join(rows) + "\n")
    args = ["train", "--data", root / "data" / "small.npy", "--factors", root / "data" / "small.csv",
            "--out", root / "run", "--arch", "mlp", "--latents", 3, "--batch-size", 16, "--steps", 4,
            "--log-every", 1, "--checkpoint-every", 2, "--keep-checkpoints", 2, "--no-figures", "--device", "cpu"]
    assert main(list(map(str, args))) == 0
    assert main(["evaluate", str(root / "run"), "--metrics", "mig", "--device", "cpu"]) == 0
    for name in ALL_FILES:
        assert (root / ("" if name.startswith("data/") else "run") / name).is_file(), name
    (root / "data" / "small.npy.pristine").write_bytes((root / "data" / "small.npy").read_bytes())
    yield root
    print(f"\ndamaged run-directory inputs tried: {sum(TRIED.values())} ({TRIED})")


# --- damage -----------------------------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=6), st.sampled_from([10**400, -1, 0, 2**63, 1e308]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                  st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=6)
NON_OBJECTS = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3))


def _dumps(value) -> str:
    return json.dumps(value, allow_nan=True)  # NaN and Infinity as Python writes them


def _nested_keys(value, prefix=()):
    """Paths to every entry of a JSON value (dict keys and list indices)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    paths = []
    for key, item in items:
        paths.append((*prefix, key))
        paths += _nested_keys(item, (*prefix, key))
    return paths


@st.composite
def json_damage(draw, text: str) -> tuple[str, bytes]:
    """A damaged version of the JSON document ``text``: (what was done, the new bytes)."""
    value = json.loads(text)
    kind = draw(st.sampled_from(["random bytes", "truncated", "not an object", "value replaced", "key removed",
                                 "key added", "huge number", "NaN"]))
    if kind == "random bytes":
        return kind, draw(st.binary(max_size=64))
    if kind == "truncated":
        return kind, text.encode()[:draw(st.integers(0, len(text) - 1))]
    if kind == "not an object":
        return kind, _dumps(draw(NON_OBJECTS)).encode()
    paths = _nested_keys(value)
    if kind == "key added" or not paths:
        target = value
        if paths:
            path = draw(st.sampled_from(paths))
            parent = value
            for key in path[:-1]:
                parent = parent[key]
            target = parent if isinstance(parent, dict) else value
        target[draw(st.text(min_size=1, max_size=8))] = draw(JSON_VALUES)
        return kind, _dumps(value).encode()
    path = draw(st.sampled_from(paths))
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    if kind == "key removed":
        del parent[path[-1]]
    else:
        parent[path[-1]] = {"value replaced": draw(JSON_VALUES), "huge number": 10**draw(st.integers(20, 400)),
                            "NaN": draw(st.sampled_from([math.nan, math.inf, -math.inf]))}[kind]
    return f"{kind} at {list(path)[:4]}", _dumps(value).encode()


def _safetensors_bytes(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def _read_header(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


@st.composite
def tensor_damage(draw, data: bytes) -> tuple[str, bytes]:
    """A damaged version of the safetensors file ``data``."""
    from safetensors.torch import load

    kind = draw(st.sampled_from(["random bytes", "truncated", "metadata not an object", "metadata entry removed",
                                 "metadata entry damaged", "tensor reshaped", "tensor retyped", "tensor removed",
                                 "header length huge"]))
    header, payload = _read_header(data)
    if kind == "random bytes":
        return kind, draw(st.binary(max_size=64))
    if kind == "truncated":
        return kind, data[:draw(st.integers(0, len(data) - 1))]
    if kind == "header length huge":
        return kind, struct.pack("<Q", draw(st.integers(len(data), 2**64 - 1))) + data[8:]
    if kind == "metadata not an object":
        header["__metadata__"] = draw(NON_OBJECTS)
        return kind, _safetensors_bytes(header, payload)
    metadata = header.get("__metadata__") or {}
    if kind.startswith("metadata entry"):
        if not metadata:
            return "metadata added", _safetensors_bytes({**header, "__metadata__": {"betavae_model": "{"}}, payload)
        key = draw(st.sampled_from(sorted(metadata)))
        if kind == "metadata entry removed":
            del metadata[key]
        else:
            metadata[key] = _dumps(draw(JSON_VALUES)) if draw(st.booleans()) else draw(st.text(max_size=8))
        header["__metadata__"] = metadata
        return f"{kind} {key}", _safetensors_bytes(header, payload)
    tensors = load(data)
    key = draw(st.sampled_from(sorted(tensors)))
    if kind == "tensor removed":
        del tensors[key]
    elif kind == "tensor reshaped":
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        tensors[key] = torch.zeros(shape)
    else:
        dtype = draw(st.sampled_from([torch.int64, torch.uint8, torch.float16, torch.bool, torch.float64]))
        tensors[key] = tensors[key].to(dtype)
    return f"{kind} {key}", save(tensors, metadata=metadata or None)


@st.composite
def metrics_damage(draw, text: str) -> tuple[str, bytes]:
    lines = text.splitlines()
    kind = draw(st.sampled_from(["garbage line", "not an object", "huge line", "wrong types", "truncated"]))
    if kind == "truncated":
        return kind, text.encode()[:draw(st.integers(0, len(text) - 1))]
    if kind == "garbage line":
        line = draw(st.binary(min_size=1, max_size=40)).replace(b"\n", b" ")
    elif kind == "not an object":
        line = _dumps(draw(NON_OBJECTS)).encode()
    elif kind == "huge line":
        line = b'{"step": 1, "loss": "' + b"x" * draw(st.integers(10**5, 3 * 10**6)) + b'"}'
    else:
        record = json.loads(draw(st.sampled_from(lines)))
        key = draw(st.sampled_from(sorted(record)))
        record[key] = draw(JSON_VALUES)
        line = _dumps(record).encode()
    at = draw(st.integers(0, len(lines)))
    encoded = [ln.encode() for ln in lines]
    return f"{kind} at line {at}", b"\n".join(encoded[:at] + [line] + encoded[at:]) + b"\n"


def npy_damage(draw, data: bytes) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["header claims petabytes", "truncated", "random bytes", "header damaged"]))
    if kind == "header claims petabytes":
        rows = draw(st.sampled_from([10**12, 2**50, 2**62, 10**18]))
        header = {"descr": "|u1", "fortran_order": False, "shape": (rows, 64, 64)}
        import io

        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, header)
        return f"{kind} ({rows} images)", buffer.getvalue() + data[128:4096]
    if kind == "truncated":
        return kind, data[:draw(st.integers(0, len(data) - 1))]
    if kind == "random bytes":
        return kind, draw(st.binary(max_size=200))
    header_end = data.index(b"\n") + 1
    header = bytearray(data[:header_end])
    at = draw(st.integers(10, header_end - 2))
    header[at] = draw(st.integers(32, 126))
    return kind, bytes(header) + data[header_end:]


@st.composite
def damages(draw):
    """(file, what was done, new bytes or a replacement kind) for one file of the pristine run."""
    name = draw(st.sampled_from(ALL_FILES))
    if draw(st.integers(0, 5)) == 0:
        return name, draw(st.sampled_from(["missing", "directory", "dangling link", "link to a directory",
                                           "link loop", "empty"])), None
    source = PRISTINE / ("" if name.startswith("data/") else "run") / name
    if name.startswith("data/"):
        source = source.with_name("small.npy.pristine")
    data = source.read_bytes()
    if name in JSON_FILES:
        kind, new = draw(json_damage(data.decode()))
    elif name in TENSOR_FILES:
        kind, new = draw(tensor_damage(data))
    elif name == "metrics.jsonl":
        kind, new = draw(metrics_damage(data.decode()))
    else:
        kind, new = npy_damage(draw, data)
    return name, kind, new


PRISTINE: Path  # set by the first test to run (strategies read the pristine files)


def _apply(root: Path, name: str, kind: str, new: bytes | None) -> None:
    path = root / ("" if name.startswith("data/") else "run") / name
    if new is not None:
        path.write_bytes(new)
        return
    path.unlink()
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_text("{}")
    elif kind == "dangling link":
        path.symlink_to(root / "nowhere")
    elif kind == "link to a directory":
        path.symlink_to(root)
    elif kind == "link loop":
        path.symlink_to(path.name)
    elif kind == "empty":
        path.write_bytes(b"")


# --- commands ---------------------------------------------------------------------------------------------------

COMMANDS = {
    "resume": lambda run: ["train", "--resume", run, "--steps", "5"],
    "evaluate": lambda run: ["evaluate", run, "--metrics", "mig", "--device", "cpu"],
    "report": lambda run: ["report", run, "--images", "64"],
    "traverse": lambda run: ["traverse", run],
}


def _snapshot(run: Path) -> dict[str, tuple[str, str]]:
    """Every entry below ``run`` (the lock aside): its kind and, for a file, a hash of its bytes."""
    found = {}
    for folder, dirs, files in os.walk(run):
        for entry in dirs + files:
            path = Path(folder) / entry
            rel = str(path.relative_to(run))
            if entry == ".betavae.lock":
                continue
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("directory", "")
            else:
                found[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)``'s exit code and all it printed; an exception escaping it fails the test."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output, output
    assert code in (0, 2), output
    if code == 2:
        assert captured.err.strip().splitlines()[-1].startswith("betavae: error:"), captured.err
    return code, output


def _check(root: Path, command: str, capsys) -> int:
    run = root / "run"
    if command == "explorer":
        from betavae.report.explorer import Explorer

        try:
            Explorer(run).info()
        except BetaVAEError as exc:
            assert str(exc) and "\n" not in str(exc).strip()
            return 2
        return 0
    before = _snapshot(run)
    code, output = _run(COMMANDS[command](str(run)), capsys)
    if code != 0 and command == "resume":
        after = _snapshot(run)
        changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
        assert not changed, f"a failed resume changed or removed {changed}:\n{output}"
    return code


def _try(pristine: Path, damage: tuple[str, str, bytes | None], command: str, capsys) -> int:
    name, kind, new = damage
    TRIED[name] = TRIED.get(name, 0) + 1
    data = pristine / "data" / "small.npy"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(pristine / "run", root / "run", symlinks=True)
        if name.startswith("data/"):  # the config names the shared data file: damage it there, restore it after
            try:
                _apply(pristine, name, kind, new)
                return _check(root, command, capsys)
            finally:
                if data.is_symlink() or data.exists():
                    shutil.rmtree(data) if data.is_dir() and not data.is_symlink() else data.unlink()
                shutil.copyfile(data.with_name("small.npy.pristine"), data)
        _apply(root, name, kind, new)
        return _check(root, command, capsys)


@pytest.fixture
def pristine(pristine_run):
    global PRISTINE
    PRISTINE = pristine_run
    return pristine_run


def test_the_pristine_run_passes_every_command(pristine, capsys):
    for command in [*COMMANDS, "explorer"]:
        assert _try(pristine, ("config.json", "unchanged", (pristine / "run" / "config.json").read_bytes()),
                    command, capsys) == 0, command


# No shrinking: each example runs a command (about a second), and the drawn damage reads plainly as it is.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(data=st.data(), command=st.sampled_from([*COMMANDS, "explorer"]))
def test_damaged_run_files_end_in_success_or_one_line_error(pristine, data, command, capsys):
    _try(pristine, data.draw(damages(), label="damage"), command, capsys)


# --- cases found by the suite above, kept as examples -----------------------------------------------------------

def _state_with(pristine: Path, edit) -> bytes:
    state = json.loads((pristine / "run" / STATE).read_text())
    edit(dict(state["state"]["__dict__"]))
    return json.dumps(state).encode()


def _damaged_optimizer(entries):
    groups = dict(entries["optimizer"]["__dict__"])["param_groups"]
    for pair in groups[0]["__dict__"]:
        if pair[0] == "betas":
            pair[1] = ["0.9", 1]


@pytest.mark.parametrize("command", ["resume", "report", "traverse", "explorer"])
@pytest.mark.parametrize("damage", [
    ("metrics.jsonl", "not an object at line 0", b"3\n"),
    ("metrics.jsonl", "garbage line", b"\xaa\xff{\n"),
    ("metrics.jsonl", "wrong types", b'{"step": 1, "reconstruction": 1.0, "kl": 0.5, "kl_per_dim": [0, 0, 0], '
                                     b'"lr": [1, 2]}\n'),
    ("metrics.jsonl", "huge line", b'{"step": 1, "loss": "' + b"x" * 200_000 + b'"}\n'),
    ("metrics.jsonl", "directory", None),
    ("diagnosis.json", "truncated", b'{\n  "step": 4,\n  "w'),
    ("diagnosis.json", "not an object", b"[1, 2]"),
])
def test_found_damage_ends_in_success_or_one_line_error(pristine, damage, command, capsys):
    _try(pristine, damage, command, capsys)


def test_a_damaged_optimizer_setting_is_a_clear_error_and_the_run_is_kept(pristine, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(pristine / "run", root / "run")
        (root / "run" / STATE).write_bytes(_state_with(pristine, _damaged_optimizer))
        (root / "run" / OLDER_STATE).write_bytes(b"{")
        before = _snapshot(root / "run")
        code, output = _run(COMMANDS["resume"](str(root / "run")), capsys)
        assert code == 2 and "optimizer setting 'betas'" in output, output
        assert _snapshot(root / "run") == before


def test_an_unreadable_training_log_stops_a_resume_before_its_config_changes(pristine, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(pristine / "run", root / "run")
        _apply(root, "metrics.jsonl", "directory", None)
        before = _snapshot(root / "run")
        code, output = _run(COMMANDS["resume"](str(root / "run")), capsys)
        assert code == 2 and f"cannot read {root / 'run' / 'metrics.jsonl'}" in output, output
        assert _snapshot(root / "run") == before


def test_a_damaged_diagnosis_names_the_file_in_traverse(pristine, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(pristine / "run", root / "run")
        _apply(root, "diagnosis.json", "truncated", b'{"kl_per_dim": [1, 2')
        code, output = _run(COMMANDS["traverse"](str(root / "run")), capsys)
        assert code == 2 and f"{root / 'run' / 'diagnosis.json'} is damaged" in output, output


@pytest.mark.parametrize("episodes", [[10**300], "none", [{"start": "x", "end": 2}]])
def test_a_diagnosis_with_damaged_episodes_is_reported_not_drawn(pristine, capsys, episodes):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(pristine / "run", root / "run")
        run = root / "run"
        diagnosis = json.loads((run / "diagnosis.json").read_text())
        _apply(root, "diagnosis.json", "episodes replaced", json.dumps({**diagnosis, "episodes": episodes}).encode())
        shutil.rmtree(run / "figures", ignore_errors=True)  # so the report would draw them
        code, output = _run(COMMANDS["report"](str(run)), capsys)
        assert code == 0, output
        assert "diagnosis.json is damaged" in (run / "report.html").read_text()
        code, output = _run(COMMANDS["traverse"](str(run)), capsys)
        assert code == 2 and f"{run / 'diagnosis.json'} is damaged" in output, output
