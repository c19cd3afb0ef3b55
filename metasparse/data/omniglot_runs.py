"""The Omniglot one-shot challenge layout (Lake et al. 2015): read it, and build new runs.

Layout of one run ``runNN``::

    runNN/training/classMM.png   one example of each of the run's classes (the support set)
    runNN/test/itemMM.png        the queries
    runNN/class_labels.txt       one line per query:
                                 ``runNN/test/itemMM.png runNN/training/classKK.png``

Each run is 20-way one-shot within one alphabet; the score is the error rate averaged over runs.
Images go through exactly the preprocessing of the training images
(:func:`metasparse.data.omniglot.preprocess_png`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metasparse.data.omniglot import ZIP_FILES, preprocess_png, split_definitions
from metasparse.utils import atomic_write_json

LAYOUT = (
    "runNN/training/classMM.png, runNN/test/itemMM.png and runNN/class_labels.txt with lines "
    "'runNN/test/itemMM.png runNN/training/classKK.png' (the layout of Lake's all_runs.zip)"
)
_RUN = re.compile(r"^run\d+$")
_CLASS = re.compile(r"^class(\d+)\.png$")
_ITEM = re.compile(r"^item(\d+)\.png$")
_PNG = re.compile(r"^[^/]+/([^/]+)/(character\d+)/([^/]+)_(\d+)\.png$")


@dataclass
class OmniglotRun:
    """One run: support (ways, 1, H, W) and query (n, 1, H, W) floats in [0, 1], query labels.

    ``query_labels[i]`` is the index (into ``support``) of the training class of query ``i``.
    """

    name: str
    support: Tensor
    query: Tensor
    query_labels: Tensor
    support_files: list[str]
    query_files: list[str]


def _load(path: Path, image_size: int) -> Tensor:
    arr = preprocess_png(path.read_bytes(), image_size)
    return torch.from_numpy(arr).float().div_(255.0).unsqueeze(0)


def _numbered(folder: Path, pattern: re.Pattern[str], what: str) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder} is missing; expected {LAYOUT}")
    files = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if not files:
        raise ValueError(f"{folder} holds no {what} images; expected {LAYOUT}")
    return [p for _, p in files]


def _resolve(runs_dir: Path, run_dir: Path, rel: str) -> Path:
    """A path of class_labels.txt: relative to the runs folder (Lake et al.'s own runs) or to
    the run."""
    for base in (runs_dir, run_dir):
        candidate = (base / rel).resolve()
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"{run_dir / 'class_labels.txt'} names {rel}, which does not exist; expected {LAYOUT}"
    )


def read_run(run_dir: Path, image_size: int = 28) -> OmniglotRun:
    """Read one ``runNN`` folder (see :data:`LAYOUT`)."""
    run_dir = Path(run_dir)
    support_files = _numbered(run_dir / "training", _CLASS, "training/classMM.png")
    query_files = _numbered(run_dir / "test", _ITEM, "test/itemMM.png")
    labels_path = run_dir / "class_labels.txt"
    if not labels_path.is_file():
        raise ValueError(f"{labels_path} is missing; expected {LAYOUT}")
    support_index = {p.resolve(): k for k, p in enumerate(support_files)}
    label_of: dict[Path, int] = {}
    for lineno, line in enumerate(labels_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if (
            len(parts) != 2
            or not _ITEM.match(Path(parts[0]).name)
            or not _CLASS.match(Path(parts[1]).name)
        ):
            raise ValueError(
                f"{labels_path}:{lineno}: cannot parse {line!r}; expected "
                "'runNN/test/itemMM.png runNN/training/classKK.png'"
            )
        item = _resolve(run_dir.parent, run_dir, parts[0])
        target = _resolve(run_dir.parent, run_dir, parts[1])
        if target not in support_index:
            raise ValueError(f"{labels_path}:{lineno}: {parts[1]} is not in {run_dir}/training")
        if item in label_of:
            raise ValueError(
                f"{labels_path}:{lineno}: {parts[0]} is labeled twice; keep one line per test image"
            )
        label_of[item] = support_index[target]
    unlabeled = [p.name for p in query_files if p.resolve() not in label_of]
    if unlabeled or len(label_of) != len(query_files):
        raise ValueError(
            f"{labels_path} labels {len(label_of)} test images but {run_dir}/test holds "
            f"{len(query_files)}; unlabeled: {unlabeled[:5]}. Add one line per test image: "
            f"{LAYOUT}"
        )
    return OmniglotRun(
        name=run_dir.name,
        support=torch.stack([_load(p, image_size) for p in support_files]),
        query=torch.stack([_load(p, image_size) for p in query_files]),
        query_labels=torch.tensor([label_of[p.resolve()] for p in query_files], dtype=torch.int64),
        support_files=[p.name for p in support_files],
        query_files=[p.name for p in query_files],
    )


def read_runs(runs_dir: str | os.PathLike[str], image_size: int = 28) -> list[OmniglotRun]:
    """Every ``runNN`` under ``runs_dir``, in order, preprocessed like the training images."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(
            f"Omniglot runs folder {runs_dir} not found; extract all_runs.zip of "
            "https://github.com/brendenlake/omniglot (python/one-shot-classification/) or build "
            "runs with write_runs / `metasparse omniglot-runs`"
        )
    run_dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir() and _RUN.match(p.name))
    if not run_dirs:
        raise ValueError(f"{runs_dir} holds no runNN folders; expected {LAYOUT}")
    return [read_run(p, image_size) for p in run_dirs]


def held_out_alphabets() -> list[str]:
    """Evaluation alphabets none of whose characters is trained on by any split scheme.

    The Lake scheme tests on the whole evaluation set; the Vinyals scheme trains on 8 evaluation
    alphabets (Gurmukhi in part), so runs are drawn from the other 12.
    """
    spec = split_definitions()["vinyals"]
    seen = {a for s in ("train", "val") for a in spec[s].get("evaluation", {})}
    return sorted(a for a in spec["test"]["evaluation"] if a not in seen)


def _evaluation_zip(zip_path_or_root: str | os.PathLike[str]) -> Path:
    path = Path(zip_path_or_root)
    if path.is_dir():
        path = path / ZIP_FILES["evaluation"]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: give images_evaluation.zip or the folder holding it (from "
            "https://github.com/brendenlake/omniglot, folder python/)"
        )
    return path


def write_runs(
    out_dir: str | os.PathLike[str],
    zip_path_or_root: str | os.PathLike[str],
    n_runs: int = 20,
    ways: int = 20,
    seed: int = 0,
    alphabets: list[str] | None = None,
) -> list[Path]:
    """Build ``n_runs`` one-shot runs in Lake's layout from held-out evaluation characters.

    As in Lake et al.: each run takes ``ways`` characters of one alphabet and two different
    drawers, one drawer's images as the training (support) examples and the other's as the test
    items; the original 105×105 PNGs are copied byte for byte. ``alphabets`` defaults to
    :func:`held_out_alphabets`. A ``sources.json`` beside the runs records every choice.

    Returns:
        The run folders, in order.
    """
    if not 1 <= n_runs <= 999 or not 2 <= ways <= 999:
        raise ValueError(f"need 1 <= n_runs <= 999 and 2 <= ways <= 999, got {n_runs}, {ways}")
    zip_path = _evaluation_zip(zip_path_or_root)
    out_dir = Path(out_dir)
    width_run, width_cls = max(2, len(str(n_runs))), max(2, len(str(ways)))
    names = [f"run{r + 1:0{width_run}d}" for r in range(n_runs)]
    clash = [n for n in names if (out_dir / n).exists()]
    if clash:
        raise FileExistsError(
            f"{out_dir} already holds {clash[0]}; remove it or choose another output folder"
        )
    with zipfile.ZipFile(zip_path) as zf:
        table: dict[str, dict[str, dict[int, str]]] = {}
        for name in zf.namelist():
            if m := _PNG.match(name):
                table.setdefault(m.group(1), {}).setdefault(m.group(2), {})[int(m.group(4))] = name
        wanted = alphabets if alphabets is not None else held_out_alphabets()
        missing = [a for a in wanted if a not in table]
        if missing:
            raise ValueError(
                f"alphabets {missing} are not in {zip_path}; it holds {', '.join(sorted(table))}"
            )
        eligible = sorted(a for a in wanted if len(table[a]) >= ways)
        if not eligible:
            raise ValueError(f"no alphabet among {wanted} has {ways} characters; lower ways")
        rng = np.random.default_rng(seed)
        order = np.concatenate(
            [rng.permutation(eligible) for _ in range(-(-n_runs // len(eligible)))]
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".runs-", dir=out_dir))
        sources = []
        try:
            for r, run_name in enumerate(names):
                alphabet = str(order[r])
                chars = sorted(table[alphabet])
                picked = [chars[i] for i in rng.choice(len(chars), size=ways, replace=False)]
                common = sorted(set.intersection(*(set(table[alphabet][c]) for c in picked)))
                if len(common) < 2:
                    raise ValueError(f"{alphabet}: fewer than two drawers drew all characters")
                d_train, d_test = (int(d) for d in rng.choice(common, size=2, replace=False))
                test_order = rng.permutation(ways)
                run = staging / run_name
                (run / "training").mkdir(parents=True)
                (run / "test").mkdir()
                lines, record = [], []
                for k, char in enumerate(picked):
                    src = table[alphabet][char][d_train]
                    (run / "training" / f"class{k + 1:0{width_cls}d}.png").write_bytes(zf.read(src))
                for i, k in enumerate(test_order):
                    src = table[alphabet][picked[k]][d_test]
                    item = f"item{i + 1:0{width_cls}d}.png"
                    (run / "test" / item).write_bytes(zf.read(src))
                    cls = f"class{k + 1:0{width_cls}d}.png"
                    lines.append(f"{run_name}/test/{item} {run_name}/training/{cls}")
                    record.append({"item": item, "class": cls, "character": picked[k]})
                (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
                sources.append(
                    {
                        "run": run_name,
                        "alphabet": alphabet,
                        "train_drawer": d_train,
                        "test_drawer": d_test,
                        "classes": [f"{alphabet}/{c}" for c in picked],
                        "items": record,
                    }
                )
            for run_name in names:
                os.replace(staging / run_name, out_dir / run_name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    atomic_write_json(
        out_dir / "sources.json",
        {"zip": str(zip_path), "seed": seed, "ways": ways, "runs": sources},
    )
    return [out_dir / n for n in names]


__all__ = ["LAYOUT", "OmniglotRun", "held_out_alphabets", "read_run", "read_runs", "write_runs"]
