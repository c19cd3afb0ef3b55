"""``metasparse data prepare|convert|download|check``: get benchmark files into a usable state."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metasparse.data import prepared
from metasparse.data.registry import SPLITS


def _prepare(args: argparse.Namespace) -> int:
    from metasparse.data import cifar

    benchmarks = cifar.BENCHMARKS if args.benchmark == "both" else (args.benchmark,)
    images_labels = cifar.read_cifar100(Path(args.cifar100))  # read the archive once
    for b in benchmarks:
        out = cifar.prepare(b, Path(args.cifar100), Path(args.out), images_labels)
        print(f"{b}: written to {out} (set data.root to this folder, or to {args.out})")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from metasparse.data import check, miniimagenet

    src, dst = Path(args.source), Path(args.dest)
    cache = Path(args.cache_dir) if args.cache_dir else None
    if args.benchmark == "miniimagenet":
        out = miniimagenet.convert(src, dst, args.format, cache)
    else:
        if args.format != "prepared":
            raise ValueError(f"{args.benchmark} converts to the prepared format only")
        detect, load = check._loaders(cache)[args.benchmark]
        if detect(src) is None:
            raise FileNotFoundError(f"no {args.benchmark} layout found under {src}")
        splits = {}
        for split in SPLITS:
            images, labels, names, _ = load(src, split)
            splits[split] = (images, labels, names)
        out = prepared.write_prepared(dst, args.benchmark, splits, source=f"converted from {src}")
    print(f"{args.benchmark}: {args.format} layout written to {out}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from metasparse.data import download

    try:
        paths = download.download(args.name, Path(args.to), timeout=args.timeout)
    except download.DownloadError as exc:
        print(f"metasparse: error: {exc}", file=sys.stderr)
        return 3
    for p in paths:
        print(f"ok: {p}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from metasparse.data import check

    root = Path(args.dir)
    reports = check.check(
        root, Path(args.cache_dir) if args.cache_dir else None, verify=not args.no_verify
    )
    print(check.format_reports(root, reports))
    return 0 if reports and all(r.ok for r in reports) else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``metasparse data ...`` on the top-level parser."""
    data = subparsers.add_parser("data", help="prepare, convert, download or check benchmark data")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("prepare", help="build CIFAR-FS / FC100 from the CIFAR-100 python archive")
    p.add_argument("benchmark", choices=["cifar-fs", "fc100", "both"])
    p.add_argument(
        "--cifar100", required=True, help="cifar-100-python folder, its parent or .tar.gz"
    )
    p.add_argument("--out", required=True, help="writes OUT/<benchmark>/ (memmap + manifest)")
    p.set_defaults(func=_prepare)

    c = sub.add_parser("convert", help="convert a benchmark to the MetaOptNet or prepared layout")
    c.add_argument("benchmark", choices=["miniimagenet", "tieredimagenet", "cifar-fs", "fc100"])
    c.add_argument("--from", dest="source", required=True, help="folder in any accepted layout")
    c.add_argument("--to", dest="dest", required=True, help="output folder")
    c.add_argument("--format", choices=["metaoptnet", "prepared"], default="prepared")
    c.add_argument("--cache-dir", default=None, help="decode cache (default $METASPARSE_CACHE)")
    c.set_defaults(func=_convert)

    d = sub.add_parser("download", help="download Omniglot or CIFAR-100 (needs network)")
    d.add_argument("name", choices=["omniglot", "cifar100"])
    d.add_argument("--to", required=True, help="destination folder")
    d.add_argument("--timeout", type=float, default=10.0, help="seconds per network operation")
    d.set_defaults(func=_download)

    k = sub.add_parser("check", help="say which benchmark is in DIR, its counts, and any problem")
    k.add_argument("dir")
    k.add_argument("--no-verify", action="store_true", help="skip re-hashing prepared files")
    k.add_argument("--cache-dir", default=None, help="decode cache (default $METASPARSE_CACHE)")
    k.set_defaults(func=_check)
