"""Download the freely distributed sources (Omniglot zips, CIFAR-100 archive), checked, resumable.

Files land as ``<name>.part`` and are renamed only after their checksum matches; an interrupted
download resumes from the ``.part`` with an HTTP ``Range`` request. Without network the first
connection fails within ``timeout`` seconds with a message saying so — nothing hangs.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT = 10.0


class DownloadError(OSError):
    """The network is unreachable, the server refused, or the bytes fail their checksum."""


@dataclass(frozen=True)
class Source:
    """One file to fetch: where from, its name on disk and its checksum."""

    url: str
    filename: str
    checksum: str  # "md5:<hex>" or "sha256:<hex>"


# Official locations and the checksums torchvision verifies for the same files.
SOURCES: dict[str, tuple[Source, ...]] = {
    "omniglot": (
        Source(
            "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_background.zip",
            "images_background.zip",
            "md5:68d2efa1b9178cc56df9314c21c6e718",
        ),
        Source(
            "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_evaluation.zip",
            "images_evaluation.zip",
            "md5:6b91aef0f799c5bb55b94e3f2daec811",
        ),
    ),
    "cifar100": (
        Source(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "cifar-100-python.tar.gz",
            "md5:eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ),
}


def file_checksum(path: Path, algorithm: str) -> str:
    """Hex digest of ``path`` with ``algorithm`` (md5 or sha256)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _matches(path: Path, checksum: str) -> bool:
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("md5", "sha256") or not expected:
        raise ValueError(f"checksum must look like 'md5:<hex>' or 'sha256:<hex>', got {checksum!r}")
    return file_checksum(path, algorithm) == expected.lower()


def fetch(source: Source, to: Path, timeout: float = DEFAULT_TIMEOUT, quiet: bool = False) -> Path:
    """Download ``source`` into folder ``to`` (resuming a ``.part``), verify it, return its path.

    Raises:
        DownloadError: no network / server error / checksum mismatch (the bad file is removed).
    """
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    final = to / source.filename
    if final.is_file() and _matches(final, source.checksum):
        return final
    part = to / (source.filename + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(source.url, headers={"User-Agent": "metasparse"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the .part is already complete
            response = None
        else:
            raise DownloadError(
                f"{source.url}: server answered HTTP {exc.code} {exc.reason}; retry later, or "
                f"download the file by hand and put it at {final}"
            ) from exc
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {source.url} ({reason}); this machine seems to have no network. "
            f"Download the file elsewhere and put it at {final}"
        ) from exc
    if response is not None:
        with response:
            resumed = response.status == 206
            mode = "ab" if resumed else "wb"
            total = response.headers.get("Content-Length")
            if not quiet:
                what = f"resuming at {have} bytes" if resumed else "downloading"
                print(f"{what}: {source.url} -> {final} ({total or '?'} bytes to fetch)")
            try:
                with open(part, mode) as fh:
                    while block := response.read(1 << 16):
                        fh.write(block)
            except OSError as exc:
                raise DownloadError(
                    f"{source.url}: transfer interrupted ({exc}); run the same command again to "
                    f"resume from {part}"
                ) from exc
    if not _matches(part, source.checksum):
        part.unlink()
        raise DownloadError(
            f"{source.filename} fails its checksum ({source.checksum}); the partial file was "
            "removed — run the command again"
        )
    os.replace(part, final)
    return final


def download(
    name: str, to: Path, timeout: float = DEFAULT_TIMEOUT, quiet: bool = False
) -> list[Path]:
    """Fetch dataset ``name`` (omniglot or cifar100) into ``to``; extract CIFAR-100's archive."""
    if name not in SOURCES:
        raise ValueError(f"unknown download {name!r}; choose one of {', '.join(SOURCES)}")
    paths = [fetch(src, Path(to), timeout, quiet) for src in SOURCES[name]]
    if name == "cifar100":
        target = Path(to) / "cifar-100-python"
        if not target.is_dir():
            with tarfile.open(paths[0]) as tar:
                tar.extractall(Path(to), filter="data")
        paths.append(target)
    return paths
