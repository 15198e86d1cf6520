"""Tiny trained runs (shared by the report and explorer tests) and an HTML page reader."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import betavae
from betavae.data.dsprites import DSprites, render


def _train(out: Path, data: Path, **kw) -> Path:
    values = dict(data=str(data), steps=10, batch_size=16, latents=4, lr=1e-3, log_every=5, checkpoint_every=10,
                  out=str(out), figures=False)
    values.update(kw)
    with open(out.parent / f"{out.name}.log", "w") as log:
        return betavae.train(betavae.TrainConfig(**values), stream=log)


@pytest.fixture(scope="session")
def labelled_npz(tmp_path_factory) -> Path:
    """512 dSprites images with their factor labels, as a user's labelled array."""
    factors = DSprites().sample_factors(512, np.random.default_rng(1))
    path = tmp_path_factory.mktemp("data") / "labelled.npz"
    np.savez(path, images=render(factors), factors=factors, factor_names=np.array(DSprites().factor_names))
    return path


@pytest.fixture(scope="session")
def beta_run(tmp_path_factory, labelled_npz) -> Path:
    """A β-VAE run on data with ground-truth factors (no figures: the tests write the report)."""
    return _train(tmp_path_factory.mktemp("runs") / "beta", labelled_npz)


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory, small_images) -> Path:
    """A β-VAE run on images without labels, with figures on: training writes report.html itself."""
    data = tmp_path_factory.mktemp("data") / "plain.npy"
    np.save(data, small_images)
    return _train(tmp_path_factory.mktemp("runs") / "plain", data, figures=True)


@dataclass
class Page:
    """What the tests read from a report: section ids in order, and per section its images and text."""

    sections: list[str] = field(default_factory=list)
    images: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    external: list[str] = field(default_factory=list)  # anything that would load from elsewhere

    def figures(self, section: str) -> list[str]:
        return [i.get("data-figure", "") for i in self.images.get(section, [])]


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._section: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section, self._depth = a["id"], 0
            self.page.sections.append(a["id"])
            self.page.images[a["id"]], self.page.text[a["id"]] = [], ""
        elif tag in ("img", "script", "link", "iframe", "source"):
            source = a.get("src") or a.get("href") or ""
            if source and not source.startswith("data:"):
                self.page.external.append(source)
            if tag == "img" and self._section is not None:
                self.page.images[self._section].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section is not None:
            self.page.text[self._section] += data


def read_page(path: Path) -> Page:
    """Parse a report; every embedded image must decode as the format its data URI names."""
    reader = _Reader()
    reader.feed(Path(path).read_text(encoding="utf-8"))
    reader.close()
    for images in reader.page.images.values():
        for image in images:
            header, payload = image["src"].split(",", 1)
            kind = header.removeprefix("data:image/").removesuffix(";base64")
            with Image.open(io.BytesIO(base64.b64decode(payload))) as decoded:
                assert decoded.format.lower() == kind, (image.get("data-figure"), decoded.format, kind)
                assert decoded.width > 10 and decoded.height > 10
    return reader.page


@pytest.fixture
def train_tiny():
    """``train_tiny(out, data, **config)``: a 10-step run of 4 latents, no figures unless asked."""
    return _train


@pytest.fixture
def parse_page():
    return read_page


class TurnedEncoder(torch.nn.Module):
    """Reads a ``FactorGrid`` image (its factor indices) and codes factors 3 and 4 turned by ``degrees``
    in dims 1 and 4, factor 1 in dim 0; its other dims stay at 0."""

    latents = 6

    def __init__(self, degrees: float, sizes: tuple[int, ...]):
        super().__init__()
        theta = np.radians(degrees)
        weight = torch.zeros(self.latents, len(sizes), dtype=torch.float64)
        weight[0, 1] = 1.0
        weight[1, 3], weight[1, 4] = np.cos(theta), -np.sin(theta)
        weight[4, 3], weight[4, 4] = np.sin(theta), np.cos(theta)
        self.register_buffer("weight", weight / torch.tensor([max(s - 1, 1) for s in sizes], dtype=torch.float64))
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, so the model has a device

    def encode(self, x: torch.Tensor):
        mu = x.flatten(1).double() @ self.weight.T
        return mu.float(), torch.zeros_like(mu, dtype=torch.float32)
