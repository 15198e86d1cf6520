"""Where training terms go: ``metrics.jsonl``, TensorBoard event files, and the terminal."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from betavae.errors import TrainingError
from betavae.files import write_atomic

from betavae.training.rundir import DAMAGED_METRICS_FILE, METRICS_FILE, TENSORBOARD_DIR

if TYPE_CHECKING:
    from betavae.training.diagnostics import LiveDiagnosis


def truncate_metrics(run_dir: Path, last_step: int) -> int:
    """Drop logged records after ``last_step`` (used when resuming from a checkpoint: they are logged again).
    Lines that are no record betavae writes (cut by a kill during a write, damaged, edited) are not dropped but
    moved to :data:`DAMAGED_METRICS_FILE`, after what it already holds; returns how many were moved."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return 0
    pairs, damaged = _parse_lines(path)
    if damaged:
        aside = Path(run_dir) / DAMAGED_METRICS_FILE
        before = aside.read_bytes().decode("utf-8", errors="replace") if aside.exists() else ""
        write_atomic(aside, lambda f: f.write(before + "".join(line + "\n" for line in damaged)), mode="w")
    kept = [line for line, record in pairs if record["step"] <= last_step]
    write_atomic(path, lambda f: f.write("".join(line + "\n" for line in kept)), mode="w")
    return len(damaged)


#: Log keys renamed since, old name -> new: runs written before (the shipped reference models among them)
#: read as new ones. ``weighted_kl`` held the whole weighted regulariser for every objective, not only β·KL.
RENAMED_KEYS = {"weighted_kl": "weighted_regulariser"}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``RUN/metrics.jsonl``, with keys renamed since under their new names."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [_current_names(record) for _, record in _parse(path)]


def _current_names(record: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(record, dict) or not RENAMED_KEYS.keys() & record.keys():
        return record
    return {RENAMED_KEYS.get(key, key): value for key, value in record.items()}


def _parse(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) pairs; a line that is no record betavae writes (a partial last line after a kill during
    a write, or a damaged one) is dropped. A file that cannot be read is a :class:`TrainingError` naming it."""
    return _parse_lines(path)[0]


def _parse_lines(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """:func:`_parse`'s pairs, and the lines it drops (blank ones aside), in file order."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise TrainingError(f"cannot read {path} ({exc.strerror or exc}); it should be the run's training log, "
                            "a file of one JSON record per line. Move it aside to go on without it.") from exc
    parsed: list[tuple[str, dict[str, Any] | None]] = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        parsed.append((line, record if _is_record(record) else None))
    counts = Counter(len(record["kl_per_dim"]) for _, record in parsed if record is not None)
    # every record has one KL per latent dim: a line with another count is damaged
    latents = counts.most_common(1)[0][0] if counts else None
    pairs = [(line, record) for line, record in parsed if record is not None and len(record["kl_per_dim"]) == latents]
    dropped = [line for line, record in parsed
               if line.strip() and (record is None or len(record["kl_per_dim"]) != latents)]
    return pairs, dropped


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_record(record: Any) -> bool:
    """Whether ``record`` has the form of a logged record: a step, numbers, KL per dim and events."""
    if not isinstance(record, dict) or not isinstance(record.get("step"), int) or isinstance(record["step"], bool):
        return False
    if not (_is_number(record.get("reconstruction")) and _is_number(record.get("kl")) and "kl_per_dim" in record):
        return False
    for key, value in record.items():
        if key == "kl_per_dim":
            ok = isinstance(value, list) and all(map(_is_number, value))
        elif key == "events":
            ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
        else:
            ok = _is_number(value)
        if not ok:
            return False
    return True


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


class TrainingLog:
    """Writes each logged record to JSONL and TensorBoard and shows progress on the terminal.

    On a terminal a progress bar shows step, reconstruction, KL and the weighted regulariser (β·KL
    for the β-VAE, named by ``regulariser_label``); elsewhere (a file, CI) one plain line is printed
    per logged record.

    Given a ``diagnosis`` (:class:`~betavae.training.diagnostics.LiveDiagnosis`), each record is
    also watched for KL collapse, KL above log N and dims that collapse: a record at which such an
    episode starts or ends carries ``events`` in ``metrics.jsonl``, TensorBoard gets them as text
    (``diagnosis``) and every record the ``diagnosis/*`` flags, and the terminal a line per event. The
    records already in ``metrics.jsonl`` (a resumed run's) are fed to it first, silently, so an
    episode in progress at the checkpoint is neither lost nor announced twice.
    """

    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, stream: TextIO | None = None,
                 tensorboard: bool = True, regulariser_label: str = "β·KL", diagnosis: LiveDiagnosis | None = None):
        self.run_dir = Path(run_dir)
        self.stream = stream or sys.stderr
        self.total_steps = total_steps
        self.regulariser_label = regulariser_label
        self.diagnosis = diagnosis
        if diagnosis is not None:
            for record in read_metrics(self.run_dir):
                diagnosis.observe(record)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a", buffering=1)
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=start_step or None)
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, file=self.stream, unit="step", dynamic_ncols=True)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def write(self, record: dict[str, Any]) -> None:
        events = self.diagnosis.observe(record) if self.diagnosis is not None else []
        if events:
            record = {**record, "events": events}
        self._jsonl.write(json.dumps(record) + "\n")
        step = record["step"]
        if self._writer is not None:
            for key, value in record.items():
                if key == "kl_per_dim":
                    self._writer.add_scalars("kl_per_dim", {f"z{i}": v for i, v in enumerate(value)}, step)
                elif isinstance(value, (int, float)) and key != "step":
                    self._writer.add_scalar(key, value, step)
            if self.diagnosis is not None:
                for key, value in self.diagnosis.flags().items():
                    self._writer.add_scalar(f"diagnosis/{key}", value, step)
            for event in events:
                self._writer.add_text("diagnosis", f"step {step}: {event['message']}", step)
        summary = (
            f"recon {_fmt(record['reconstruction'])}  KL {_fmt(record['kl'])}  "
            f"{self.regulariser_label} {_fmt(record.get('weighted_regulariser', float('nan')))}  "
            f"active {record['active_dims']}"
        )
        if self._bar is not None:
            self._bar.set_postfix_str(summary, refresh=False)
        else:
            print(f"step {step}/{self.total_steps}  {summary}  {record['images_per_second']:.0f} img/s",
                  file=self.stream, flush=True)
        for event in events:
            self.message(f"betavae: step {step}: {event['message']}")

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        self._jsonl.close()
