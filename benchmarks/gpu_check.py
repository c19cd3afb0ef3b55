"""GPU check: our head against qpth SVM-CS, and a short ResNet-12 training with each head.

One script for a GPU session that must finish in under 8 minutes, and that also runs, smaller,
on a CPU (``tests/test_benchmark_gpu_check.py`` runs that form in CI):

    python benchmarks/gpu_check.py                          # CUDA if available: the full form
    python benchmarks/gpu_check.py --json benchmarks/results/gpu_check_h100.json
    python benchmarks/gpu_check.py --device cpu             # the small form (about a minute)

(a) **Head benchmark** (the problems of ``head_speed.py``, whose helpers it imports): 8 episodes
of 5-way with 30 queries, post-ReLU Gaussian features, λ2 = 1000, τ = 1e-3; forward + backward of
our head certified at a duality gap ≤ 1e-5 against qpth's SVM-CS (λ1 = 0, 15 iterations, as
MetaOptNet trains), interleaved, medians. The project's GPU target is ours ≥ 10× faster than
qpth at a certified gap of 1e-5; each row says whether it is met (on the CPU the target does not
apply: there it is ≤ 0.5× qpth's time, ``benchmarks/README.md`` §5). A qpth that is missing or
fails is recorded in its row and the check goes on.

(b) **Short ResNet-12 training** per head (group_sparse_svm, svm_cs, proto, ridge), through the
library's own ``Trainer.step`` on ``configs/miniimagenet/resnet12_<head>.yaml`` (MetaOptNet's
recipe: SGD, label smoothing, DropBlock, no pooling) with the data swapped for the built-in
generated ``glyphs`` drawn at 84×84 (one channel, so the first convolution takes 1 channel
instead of 3: 0.2 % of the backbone's FLOPs). MetaOptNet's training shapes: 5-way, 6
queries per class, 8 episodes per batch, at 1, 5 and 15 shots (p = 16000 features). Each
(head, shot) runs in a fresh process, so that its peak memory is its own: CUDA's
``max_memory_allocated`` over the warm-up and timed steps (weights included), or on the CPU
the growth of the process's peak RSS (``ru_maxrss``) over them. Reported: wall time of
``Trainer.step`` (median after warm-up steps), the head's share of it as ``Trainer.step`` splits
it (features cut from the graph, so head and backbone are timed apart), peak memory, episodes
per second of training steps (data loading excluded; its time per batch is reported beside).

**Time budget on one GPU** (an estimate from sizes: no GPU has run this yet). (a) 6 shapes,
each with qpth and our head at 3 λ1/λ_max: one warm-up call each, then interleaved rounds until
≥ 1 s of timing (at least 5, at most 25 rounds); if a qpth call (15 iterations on at most
8 × 375 dual variables) takes under 1 s, that is ≲ 1 min. (b) 12 processes, each ~10 s of
start-up (imports, CUDA context, data generation) plus 3 warm-up and 5 timed steps; a 15-shot
step is 840 images of 84×84 through ResNet-12 at 21 GFLOP each (fwd + bwd, counted by
``torch.utils.flop_counter``), 18 TFLOP, about a second at 20 TFLOP/s, and ≤ 64 MB of saved
activations per image (≤ 54 GB: an 80 GB GPU holds it): ≲ 4 min. Together ≲ 5 min.
``--budget`` (default 420 s) guards it: a row that would start after the budget is spent is
skipped and says so, a training process still running when it is spent (or 30 s after it
started, whichever is later) is stopped, and the elapsed time is printed as it goes.

The small form (default on the CPU): head benchmark at 1 and 5 shots, p = 2560, λ1/λ_max = 0.1,
2 episodes; training at 5-way 1-shot 1 query, 2 episodes per batch, 32×32 glyphs (ResNet-12 at
full width, p = 2560), 1 warm-up and 2 timed steps, one thread (qpth's batched LU breaks after
``torch.set_num_threads(n > 1)``). ``--json PATH`` writes every figure, the machine and the
settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from metasparse.utils import atomic_write_json, cpu_name

REPO = Path(__file__).resolve().parents[1]
HEADS = ("group_sparse_svm", "svm_cs", "proto", "ridge")
TARGET_SPEEDUP = 10.0  # the GPU target: ours ≥ 10× faster than qpth …
TARGET_GAP = 1e-5  # … at this certified relative duality gap
QUERIES = 30  # head benchmark queries per episode (head_speed.py's problems)
FORMS: dict[str, dict[str, Any]] = {
    "full": {
        "shots": [1, 5, 15],
        "dims": [2560, 16000],
        "ratios": [0.01, 0.1, 0.5],
        "tasks": 8,
        "repeats": 5,
        "min_seconds": 1.0,
        "train_shots": [1, 5, 15],
        "query": 6,
        "episodes": 8,
        "image_size": 84,
        "warmup": 3,
        "steps": 5,
    },
    "small": {
        "shots": [1, 5],
        "dims": [2560],
        "ratios": [0.1],
        "tasks": 2,
        "repeats": 1,
        "min_seconds": 0.0,
        "train_shots": [1],
        "query": 1,
        "episodes": 2,
        "image_size": 32,
        "warmup": 1,
        "steps": 2,
    },
}


def _head_speed() -> Any:
    """benchmarks/head_speed.py, imported from beside this script."""
    sys.path.insert(0, str(Path(__file__).parent))
    import head_speed

    return head_speed


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _error(exc: BaseException) -> str:
    """One line naming an exception (what a row records when its method fails)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


# ----------------------------------------------------------------------------- (a) heads
def head_benchmark(args: argparse.Namespace, start: float) -> list[dict[str, Any]]:
    """One row per (shot, p, λ1/λ_max): our certified head's and qpth's fwd + bwd medians."""
    hs = _head_speed()
    warnings.filterwarnings("ignore", "group-sparse SVM: some episodes", RuntimeWarning)
    way, dev = 5, args.device
    try:
        from metasparse.heads.svm_cs import SVMCSHead

        qp = SVMCSHead(C_reg=1.0 / hs.LAM2, jitter=1.0, learn_scale=False).to(dev)
        qp_error = None
    except Exception as exc:  # qpth missing or broken: our rows still run
        qp, qp_error = None, _error(exc)
    rows = []
    for shot in args.shots:
        for p in args.dims:
            if time.perf_counter() - start > args.budget:
                rows += [_skipped(shot, p, r) for r in args.ratios]
                continue
            support, query, labels = hs._episodes(args.tasks, way, shot, p, QUERIES, dev, 0)

            def leaves(support=support, query=query) -> tuple[torch.Tensor, torch.Tensor]:
                return support.detach().requires_grad_(True), query.detach().requires_grad_(True)

            def qpth_call(labels=labels) -> dict[str, float]:
                s, q = leaves()
                logits, stats = qp(q, s, labels, way)
                logits.square().sum().backward()
                return {"gap": float(stats["qp_rel_gap"])}

            def ours_call(ratio: float, labels=labels) -> dict[str, float]:
                s, q = leaves()
                return hs._info(hs._ours(s, q, labels, way, ratio))

            methods: dict[Any, Any] = {r: (lambda r=r: ours_call(r)) for r in args.ratios}
            errors: dict[Any, str | None] = {r: None for r in args.ratios}
            errors["qpth"] = qp_error
            if qp is not None:
                methods["qpth"] = qpth_call
            times: dict[Any, list[float]] = {m: [] for m in methods}
            infos: dict[Any, dict[str, float]] = {}
            warm = 0.0
            for m, fn in list(methods.items()):  # warm-up; a failing method leaves the rounds
                try:
                    ms, infos[m] = hs._timed(fn, dev)
                    warm += ms
                except Exception as exc:
                    errors[m] = _error(exc)
                    del methods[m]
            for _ in range(hs._rounds(warm, args.repeats, args.min_seconds)):
                for m, fn in list(methods.items()):
                    try:
                        ms, infos[m] = hs._timed(fn, dev)
                        times[m].append(ms)
                    except Exception as exc:
                        errors[m] = _error(exc)
                        del methods[m]
            qp_ms = statistics.median(times["qpth"]) if times.get("qpth") else None
            for r in args.ratios:
                ours = infos.get(r, {})
                ms = statistics.median(times[r]) if times.get(r) else None
                speedup = qp_ms / ms if qp_ms and ms else None
                met = None
                if dev == "cuda" and speedup is not None:
                    met = speedup >= TARGET_SPEEDUP and ours["gap"] <= TARGET_GAP
                rows.append(
                    {
                        "shot": shot,
                        "p": p,
                        "ratio": r,
                        "ours_ms": ms,
                        "qpth_ms": qp_ms,
                        "speedup": speedup,
                        "ours_gap": ours.get("gap"),
                        "qpth_gap": infos.get("qpth", {}).get("gap"),
                        "iters": ours.get("iters"),
                        "features_used": ours.get("used"),
                        "target_met": met,
                        "error": errors[r],
                        "qpth_error": errors["qpth"],
                    }
                )
            print(f"[{time.perf_counter() - start:.0f} s] heads: shot {shot}, p {p}", flush=True)
            del support, query
            if dev == "cuda":
                torch.cuda.empty_cache()
    return rows


def _skipped(shot: int, p: int, ratio: float) -> dict[str, Any]:
    keys = ("ours_ms", "qpth_ms", "speedup", "ours_gap", "qpth_gap", "iters", "features_used")
    return {
        "shot": shot,
        "p": p,
        "ratio": ratio,
        **dict.fromkeys(keys),
        "target_met": None,
        "error": "skipped: over the --budget",
        "qpth_error": None,
    }


# ----------------------------------------------------------------------------- (b) training
def train_one(spec: dict[str, Any]) -> dict[str, Any]:
    """A few ``Trainer.step`` calls of one head at one shot on generated images (in this
    process): step time, head share, peak memory, episodes per second."""
    from metasparse.config import DataConfig, apply_override, load_config
    from metasparse.data.episodes import episode_loader
    from metasparse.training import Trainer

    dev = spec["device"]
    if dev == "cpu":
        torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore", "group-sparse SVM: some episodes", RuntimeWarning)
    shot, query, size = spec["shot"], spec["query"], spec["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "configs" / "miniimagenet" / f"resnet12_{spec['head']}.yaml")
        cfg.data = DataConfig(
            name="glyphs",
            options={
                "num_classes": [10, 5, 5],
                "samples_per_class": max(shot + query, cfg.val.shot + cfg.val.query),
                "image_size": size,
            },
            augment=False,
        )
        if size < 84:  # MetaOptNet's DropBlock size for 32×32 data
            cfg.model.backbone_options["dropblock_size"] = 2
        t = cfg.train
        t.way, t.shot, t.query, t.episodes_per_batch = 5, shot, query, spec["episodes"]
        t.device, t.checkpoint_minutes = dev, 0.0
        for item in [*spec["set"], f"output_dir={tmp}/run"]:
            apply_override(cfg, item)
        trainer = Trainer(cfg, progress=False)
        model = trainer.model
        with torch.no_grad():
            was = model.backbone.training
            model.backbone.eval()
            probe = torch.zeros(1, trainer.in_channels, size, size, device=trainer.device)
            p = int(model.backbone(probe).flatten(1).shape[1])
            model.backbone.train(was)
        n = spec["warmup"] + spec["steps"]
        loader = episode_loader(
            trainer.train_set, t.way, t.shot, t.query, t.episodes_per_batch, n, seed=t.seed
        )
        batches, data_s = [], []
        t0 = time.perf_counter()
        for batch in loader:
            data_s.append(time.perf_counter() - t0)
            batches.append(batch)
            t0 = time.perf_counter()
        _sync(dev)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the steps' growth
        for batch in batches[: spec["warmup"]]:
            trainer.step(batch)
        walls, heads, backbones, metrics = [], [], [], {}
        for batch in batches[spec["warmup"] :]:
            _sync(dev)
            t0 = time.perf_counter()
            metrics, times = trainer.step(batch)
            _sync(dev)
            walls.append(time.perf_counter() - t0)
            heads.append(times["head"])
            backbones.append(times["backbone"])
        if dev == "cuda":
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    step, head, backbone = (statistics.median(v) for v in (walls, heads, backbones))
    return {
        "head": spec["head"],
        "shot": shot,
        "query": query,
        "episodes": t.episodes_per_batch,
        "images": t.episodes_per_batch * t.way * (shot + query),
        "image_size": size,
        "p": p,
        "step_ms": 1e3 * step,
        "head_ms": 1e3 * head,
        "backbone_ms": 1e3 * backbone,
        "head_share": head / (head + backbone),
        "peak_mb": peak_mb,
        "episodes_per_s": t.episodes_per_batch / step,
        "data_ms": 1e3 * statistics.median(data_s),
        "loss": metrics.get("loss"),
        "head_gap": metrics.get("gap", metrics.get("qp_rel_gap")),
        "threads": torch.get_num_threads(),
        "error": None,
    }


def training(args: argparse.Namespace, start: float) -> list[dict[str, Any]]:
    """Every (head, shot) of the short training, each in a fresh process."""
    rows = []
    for shot in args.train_shots:
        for head in args.heads:
            spec = {
                "head": head, "shot": shot, "query": args.query, "episodes": args.episodes,
                "image_size": args.image_size, "warmup": args.warmup, "steps": args.steps,
                "device": args.device, "threads": args.threads, "set": args.set,
            }  # fmt: skip
            left = args.budget - (time.perf_counter() - start)
            row = {"head": head, "shot": shot, "error": None}
            if left <= 0:
                row["error"] = "skipped: over the --budget"
            else:
                try:
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", json.dumps(spec)],
                        capture_output=True,
                        text=True,
                        timeout=max(left, 30.0),
                    )
                    if out.returncode == 0:
                        row = json.loads(out.stdout.strip().splitlines()[-1])
                    else:
                        tail = out.stderr.strip().splitlines() or ["(no output)"]
                        row["error"] = f"exit {out.returncode}: {tail[-1]}"[:300]
                except subprocess.TimeoutExpired:
                    row["error"] = f"timed out after {max(left, 30.0):.0f} s"
            rows.append(row)
            print(
                f"[{time.perf_counter() - start:.0f} s] training: {head}, {shot}-shot"
                + (f" — {row['error']}" if row["error"] else ""),
                flush=True,
            )
    return rows


# ----------------------------------------------------------------------------- report
def machine(device: str) -> dict[str, Any]:
    """What ran it: device, processor, library versions, the precision settings of CUDA."""
    info: dict[str, Any] = {
        "device": device,
        "processor": cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(),
            gpu_memory_gb=torch.cuda.get_device_properties(0).total_memory / 2**30,
            cudnn=torch.backends.cudnn.version(),
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            matmul_fp32_precision=getattr(torch.backends.cuda.matmul, "fp32_precision", None),
            cudnn_fp32_precision=getattr(torch.backends.cudnn, "fp32_precision", None),
        )
    return info


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def to_markdown(result: dict[str, Any]) -> str:
    """The two tables, with the machine and the settings."""
    m, s = result["machine"], result["settings"]
    where = (
        f"{m['gpu']} (CUDA {m['cuda']}, TF32 matmul {m['matmul_tf32']} / cuDNN "
        f"{m['cudnn_tf32']}), host {m['processor']}"
        if m["device"] == "cuda"
        else f"CPU {m['processor']}, {s['threads']} thread(s)"
    )
    gap = f"{TARGET_GAP:.0e}".replace("e-0", "e-")
    lines = [
        f"Machine: {where}; torch {m['torch']}; {s['form']} form.",
        "",
        f"(a) Head fwd + bwd, {s['tasks']} episodes of 5-way, {QUERIES} queries, λ2 = 1000, "
        f"τ = 1e-3; medians. Target (GPU): ours ≥ {TARGET_SPEEDUP:g}× faster than qpth at a "
        f"certified gap ≤ {gap}.",
        "",
        "| shot | p | λ1/λ_max | ours ms | qpth ms | qpth / ours | ours max gap | "
        "qpth mean gap | target | note |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["head_benchmark"]:
        target = {True: "met", False: "not met", None: "n/a"}[r["target_met"]]
        if m["device"] != "cuda":
            target = "n/a (CPU)"
        note = "; ".join(
            x for x in (r["error"], r["qpth_error"] and f"qpth: {r['qpth_error']}") if x
        )
        lines.append(
            f"| {r['shot']} | {r['p']} | {r['ratio']:g} | {_f(r['ours_ms'], '.1f')} | "
            f"{_f(r['qpth_ms'], '.1f')} | {_f(r['speedup'], '.2f')} | {_f(r['ours_gap'], '.1e')} "
            f"| {_f(r['qpth_gap'], '.1e')} | {target} | {note} |"
        )
    mem = "CUDA peak allocated" if m["device"] == "cuda" else "peak RSS growth"
    lines += [
        "",
        f"(b) ResNet-12 training steps on generated {s['image_size']}×{s['image_size']} glyphs, "
        f"5-way, {s['query']} quer{'y' if s['query'] == 1 else 'ies'} per class, "
        f"{s['episodes']} episode{'' if s['episodes'] == 1 else 's'} per batch; median of "
        f"{s['steps']} step{'' if s['steps'] == 1 else 's'} after {s['warmup']} warm-up.",
        "",
        f"| head | shot | images | p | step ms | head ms | head share | {mem} MB | "
        "episodes/s | data ms/batch | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["training"]:
        if r["error"]:
            lines.append(f"| {r['head']} | {r['shot']} | | | | | | | | | {r['error']} |")
            continue
        lines.append(
            f"| {r['head']} | {r['shot']} | {r['images']} | {r['p']} | {r['step_ms']:.0f} | "
            f"{r['head_ms']:.1f} | {100 * r['head_share']:.1f} % | {r['peak_mb']:.0f} | "
            f"{r['episodes_per_s']:.2f} | {r['data_ms']:.0f} | |"
        )
    lines += ["", f"Total {result['elapsed_s']:.0f} s (budget {s['budget']:g} s)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; unset shapes take the form's (small on the CPU, full on CUDA)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if any")
    form = ap.add_mutually_exclusive_group()
    form.add_argument("--small", action="store_true", help="the small form (default on the CPU)")
    form.add_argument("--full", action="store_true", help="the full form (default on CUDA)")
    ap.add_argument("--shots", type=int, nargs="+", help="head benchmark shots")
    ap.add_argument("--dims", type=int, nargs="+", help="head benchmark feature dimensions p")
    ap.add_argument("--ratios", type=float, nargs="+", help="head benchmark λ1/λ_max")
    ap.add_argument("--tasks", type=int, help="head benchmark episodes per batch")
    ap.add_argument("--repeats", type=int, help="head benchmark: at least this many rounds")
    ap.add_argument("--min-seconds", type=float, help="head benchmark: timing per shape")
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    ap.add_argument("--train-shots", type=int, nargs="+", help="training shots")
    ap.add_argument("--query", type=int, help="training queries per class")
    ap.add_argument("--episodes", type=int, help="training episodes per batch")
    ap.add_argument("--image-size", type=int, help="side of the generated images")
    ap.add_argument("--warmup", type=int, help="untimed training steps")
    ap.add_argument("--steps", type=int, help="timed training steps")
    ap.add_argument("--set", nargs="*", default=[], help="training config overrides key=value")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU form)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later rows are skipped")
    ap.add_argument("--skip-heads", action="store_true", help="no head benchmark")
    ap.add_argument("--skip-training", action="store_true", help="no training")
    ap.add_argument("--json", default=None, help="also write every figure here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but CUDA is not available; use --device cpu")
    args.form = "small" if args.small or (args.device == "cpu" and not args.full) else "full"
    for key, value in FORMS[args.form].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run both parts, print the tables, optionally write the JSON; returns the figures."""
    args = parse_args(argv)
    if args.child:
        print(json.dumps(train_one(json.loads(args.child))))
        return None
    start = time.perf_counter()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)  # qpth's batched LU: one thread
    heads = [] if args.skip_heads else head_benchmark(args, start)
    trained = [] if args.skip_training else training(args, start)
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "json")}
    result = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine(args.device),
        "settings": settings,
        "head_benchmark": heads,
        "training": trained,
        "elapsed_s": time.perf_counter() - start,
    }
    print()
    print(to_markdown(result))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
