"""``metasparse data check DIR``: which benchmark is in a folder, its counts, and what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metasparse.data import cifar, miniimagenet, prepared, splits_catalog, tieredimagenet
from metasparse.data.registry import SPLITS

Loader = Callable[[Path, str], tuple[np.ndarray, np.ndarray, list[str], str]]


@dataclass
class SplitSummary:
    """Counts of one split as read from disk."""

    split: str
    num_classes: int
    num_images: int
    min_per_class: int
    max_per_class: int
    image_shape: tuple[int, ...]
    matches_published: bool | None  # None: class names unknown (e.g. numeric labels)


@dataclass
class Report:
    """What :func:`check` found for one benchmark in one folder."""

    benchmark: str
    layout: str
    splits: list[SplitSummary] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _loaders(cache_dir: Path | None) -> dict[str, tuple[Callable[[Path], str | None], Loader]]:
    return {
        "miniimagenet": (
            miniimagenet.detect_format,
            lambda r, s: miniimagenet.load_split_arrays(r, s, cache_dir),
        ),
        "tieredimagenet": (
            tieredimagenet.detect_format,
            lambda r, s: tieredimagenet.load_split_arrays(r, s, cache_dir),
        ),
        "cifar-fs": (
            lambda r: cifar.detect_format("cifar-fs", r),
            lambda r, s: cifar.load_split_arrays("cifar-fs", r, s, cache_dir),
        ),
        "fc100": (
            lambda r: cifar.detect_format("fc100", r),
            lambda r, s: cifar.load_split_arrays("fc100", r, s, cache_dir),
        ),
    }


_PUBLISHED_COUNTS = {
    "miniimagenet": miniimagenet.CLASS_COUNTS,
    "tieredimagenet": tieredimagenet.CLASS_COUNTS,
    **cifar.CLASS_COUNTS,
}


def check(root: Path, cache_dir: Path | None = None, verify: bool = True) -> list[Report]:
    """Inspect ``root``: one :class:`Report` per benchmark layout found (empty if none)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} is not a folder; pass the folder that holds the benchmarks' data"
        )
    reports = []
    for benchmark, (detect, load) in _loaders(cache_dir).items():
        layout = detect(root)
        if layout is None:
            continue
        report = Report(benchmark, layout)
        names_by_split: dict[str, list[str]] = {}
        for split in SPLITS:
            try:
                images, labels, names, _ = load(root, split)
            except (ValueError, FileNotFoundError) as exc:
                report.problems.append(f"{split}: {exc}")
                continue
            counts = np.bincount(labels, minlength=len(names))
            published = splits_catalog.benchmark_classes(benchmark, split)
            known = not all(n.startswith("class_") for n in names)
            summary = SplitSummary(
                split,
                len(names),
                len(labels),
                int(counts.min()) if counts.size else 0,
                int(counts.max()) if counts.size else 0,
                tuple(images.shape[1:]),
                sorted(names) == published if known else None,
            )
            report.splits.append(summary)
            if known:
                names_by_split[split] = names
            if len(names) != _PUBLISHED_COUNTS[benchmark][split]:
                report.problems.append(
                    f"{split}: {len(names)} classes, the published split has "
                    f"{_PUBLISHED_COUNTS[benchmark][split]}"
                )
            elif summary.matches_published is False:
                report.problems.append(f"{split}: class names differ from the published split")
            if summary.min_per_class == 0:
                report.problems.append(f"{split}: some classes have no images")
        try:
            prepared.check_disjoint(names_by_split)
        except ValueError as exc:
            report.problems.append(str(exc))
        if verify and layout == "prepared":
            folder = next(
                (c for c in (root, root / benchmark) if prepared.is_prepared(c, benchmark)), root
            )
            report.problems += prepared.verify_checksums(folder)
        reports.append(report)
    if (root / "images_background.zip").is_file() or (root / "images_evaluation.zip").is_file():
        reports.append(_check_omniglot(root))
    return reports


_OMNIGLOT_VINYALS = {"train": 1028, "val": 172, "test": 423}  # characters, before rotations


def _check_omniglot(root: Path) -> Report:
    """Omniglot zips, read through its own builder (Vinyals split, without rotated classes)."""
    from metasparse.data.registry import build_dataset

    report = Report("omniglot", "zips")
    names_by_split = {}
    for split in SPLITS:
        try:
            ds = build_dataset("omniglot", split, root=root, rotations=False)
        except (ValueError, FileNotFoundError) as exc:
            report.problems.append(f"{split}: {exc}")
            continue
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        shape = tuple(ds.load_image(0).shape) if len(ds) else ()
        report.splits.append(
            SplitSummary(
                split,
                ds.num_classes,
                len(ds),
                int(counts.min()) if counts.size else 0,
                int(counts.max()) if counts.size else 0,
                shape,
                ds.num_classes == _OMNIGLOT_VINYALS[split],
            )
        )
        if ds.num_classes != _OMNIGLOT_VINYALS[split]:
            report.problems.append(
                f"{split}: {ds.num_classes} characters, Vinyals' split has "
                f"{_OMNIGLOT_VINYALS[split]}"
            )
        names_by_split[split] = ds.class_names
    try:
        prepared.check_disjoint(names_by_split)
    except ValueError as exc:
        report.problems.append(str(exc))
    return report


def format_reports(root: Path, reports: list[Report]) -> str:
    """Human-readable text of :func:`check`'s result."""
    if not reports:
        hints = [
            miniimagenet.expected_files(root),
            tieredimagenet.expected_files(root),
            cifar.expected_files("cifar-fs", root),
            cifar.expected_files("fc100", root),
        ]
        return f"{root}: no known benchmark layout found.\n" + "\n".join(f"  - {h}" for h in hints)
    lines = []
    for r in reports:
        lines.append(f"{root}: {r.benchmark} ({r.layout} layout)")
        for s in r.splits:
            per = (
                f"{s.min_per_class}"
                if s.min_per_class == s.max_per_class
                else f"{s.min_per_class}–{s.max_per_class}"
            )
            match = {
                True: "matches",
                False: "DIFFERS from",
                None: "unnamed classes, cannot compare to",
            }
            lines.append(
                f"  {s.split:5s}: {s.num_classes:4d} classes, {s.num_images:7d} images "
                f"({per} per class), images {'×'.join(map(str, s.image_shape))}; "
                f"{match[s.matches_published]} the published split"
            )
        lines += [f"  problem: {p}" for p in r.problems] or ["  no problems found"]
    return "\n".join(lines)
