"""Every measured tuning constant of the solvers, in one place.

None of these changes a result beyond round-off of the certificate's tolerance: they choose
between two correct code paths (a direct or an iterative solve, whole or chunked products,
oneDNN or MKL) or size a heuristic. Each was set by the measurement in its comment, on the
project's benchmark machine: the shared dev box, an AMD EPYC KVM VM with 2 cores, torch 2.14.1
(MKL 2024.2, oneDNN 3.12), one thread unless a comment says otherwise
(``benchmarks/head_speed.md``; its host varied between sessions, ratios are what carry over).
On other hardware they may be off; rerun ``benchmarks/head_speed.py`` (``--compare`` for the
solver's variants) before changing one.

Code reads them as ``tuning.NAME`` at the point of use, so a test (or an experiment) can
monkeypatch them here.
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------------------------
# Products with X (metasparse.solvers.products)
# --------------------------------------------------------------------------------------------

# oneDNN instead of MKL for float32 CPU products from these sizes (n·p entries per task): 8
# tasks, one thread, ms, MKL → oneDNN, A X / X Wᵀ / X Xᵀ: 75 × 16000 6.4 → 4.3, 6.5 → 3.8,
# 24.5 → 16.7; 25 × 16000 1.06 → 1.30, 1.95 → 1.58, 4.2 → 3.2; 75 × 2560 0.47 → 0.38,
# 0.54 → 0.65, 3.9 → 2.7; 25 × 2560 0.15 → 0.25, 0.18 → 0.33, 0.58 → 0.52 (table in the
# docstring of products.py)
THIN_MIN = 1_000_000  # n·p per task from which A X and X Wᵀ use oneDNN
GRAM_MIN = 150_000  # ... and X Xᵀ

# left_then_right chunks X when it is larger than FUSE_BYTES (a server's last-level cache:
# smaller, the second product reads X from there anyway), in chunks of about CHUNK_BYTES,
# which stay in cache between the two products. 8 tasks, 5-way, X (Y − α)-product then a
# per-feature map then the X-product, ms: 15-shot p = 16000 (X: 38 MB) 15.0 whole, 10.4 in
# chunks of 512 features (1.2 MB), 11.7 / 13.0 at 1024 / 2048. Smaller X gained little or lost
# (whole solves, fwd+bwd: 15-shot p = 2560 (6 MB) 1.07-1.09×, 5-shot p = 16000 (13 MB) 1.0×).
# On more than one thread the whole products run in parallel and each small op of a chunk pays
# a thread synchronisation: on 2 threads a fused FISTA step took 15.5 ms, the whole products
# 7.4 ms (one thread: 11.3 fused, 13.6 whole), so the chunks run on one thread only.
FUSE_BYTES = 32e6
CHUNK_BYTES = 1.4e6

# --------------------------------------------------------------------------------------------
# The forward solver (metasparse.solvers.svm: metric, fista, steps, polish)
# --------------------------------------------------------------------------------------------

# The working set (GroupSparseSVMSolver.run, sparse solutions): features with
# ‖M_j‖ > WS_THRESHOLD·λ1 at the start, in rounds of WS_ROUND iterations, then twice as many...
# 0.95 and 5 rather than 0.9 and 10: 15-shot at λ1/λ_max = 0.5, 5-way, 8 episodes, iterations
# 20.2 → 19.2 (p = 2560) and 17.4 → 16.1 (p = 16000); 5-shot 14.2 → 11.2 and 14.5 → 11.2.
WS_THRESHOLD = 0.95
WS_ROUND = 5
# Largest r·K of the metric's prox system. Conv-4 Omniglot features, 20-way 5-shot: rank 3
# (r·K = 60) took 4.2 s for 4 batches where rank 8 (160) took 5.6 s, despite 102 vs 53
# iterations; at 5-way the cap (r = 12) is above the default rank 8 (benchmarks/head_speed.md).
PROX_SIZE = 64
# The Newton polish (episodes FISTA has not certified after `polish_after` iterations) forms
# and factorises the dense (n·K)² dual Hessian: only up to n·K = 512 (10-way 5-shot, 5-way
# 15-shot...), and in λ2-continuation stages whose ‖X‖²/λ2 is at most 1e3 (κ ≤ 1e6 at τ = 1e-3).
POLISH_SIZE = 512
POLISH_SPREAD = 1e3
POLISH_FISTA = 30  # FISTA iterations on the first stage (100 took more in all: 201 vs 147)
# The smallest scale of the metric the adaptive steps of sparse solutions may take (see
# steps.adapt_scale): the steps measured at λ1/λ_max = 0.5 met 5-30% of the metric's curvature.
SCALE_MIN = 1.0 / 16.0
# Points of the segment searched by the ridge start (steps.ridge_warm_start): a step of 0.1
# found the iterations of a step of 0.05, one of 0.2 did not (15-shot p = 16000,
# λ1/λ_max = 0.1: 8.4 iterations with 11 or 21 points, 9.3 with 6; 5-shot 8 and 9.6)
RIDGE_GRID = 11
# ... and it runs where X has at least this many entries: its 3-7 ms of small ops (the prox of
# its FISTA steps) then cost less than the passes it saves. 8 episodes, 5-way, λ1/λ_max = 0.1,
# fwd+bwd new/old: 15-shot p = 16000 (9.6M entries) 0.94, 5-shot p = 16000 (3.2M) 0.92;
# 15-shot p = 2560 (1.5M) 1.07, 5-shot p = 2560 1.24, 1-shot p = 2560 1.25 (0.01: 0.87 / 0.99 at
# 15-shot p = 16000 / 2560, 1.03 at 1-shot p = 16000)
RIDGE_MIN_SIZE = 2.5e6

# --------------------------------------------------------------------------------------------
# The implicit backward of the SVM (metasparse.solvers.svm.backward)
# --------------------------------------------------------------------------------------------

# Relative residual of the SVM backward's CG. float32: 1e-5 changes the gradient by ≤ 4e-5
# (relative), below the error that the forward's certified gap of 1e-5 itself leaves in it
# (7e-5 to 5e-2, measured on the 15-shot benchmark problems); float64 stays tight for
# derivative checks.
CG_TOL = {torch.float64: 1e-11, torch.float32: 1e-5}
# Sparse solutions (at most DIRECT_ACTIVE of the features active) with faces of at most
# DIRECT_FACE coordinates (max over the batch) are solved directly, by one dense s × s system
# built in feature chunks, instead of by CG, whose step count grows with sparsity. Backward
# time direct / CG, 8 episodes of 5-way (benchmarks/head_speed_history.md, item 9): at
# λ1/λ_max = 0.5 (6-21% of features active) 0.70 / 0.84 (1-shot, p = 2560 / 16000) and
# 0.89-0.90 (5-shot, p = 1600 / 2560 / 16000), but 1.6 at 15-shot p = 2560 (s up to 375); with
# 55-100% of the features active it loses (0.97-3.5).
DIRECT_FACE = 128
DIRECT_ACTIVE = 0.25
# The "auto" backward solves the dense system only on tiny episodes: n·K·p ≤ CG_MIN_SIZE and at
# most DENSE_MAX_COORDS dual coordinates n·K (its cost grows as (n·K)³, CG's as n·K·p per
# product). Backward time dense / CG, one episode, λ1/λ_max = 0.1 and 0.5, 1 thread
# (benchmarks/results/small_backward.json, AMD EPYC): 0.20-1.27 up to n·K = 500 (5-way 1- to
# 15-shot, 20-way 1-shot, 10-way 5-shot), 3.0-38 at n·K = 2000 and 4212 (20-way 5-shot and
# 18-way 13-shot at p = 4-8: up to 5.3 s dense against 0.21 s by CG; the fuzz found them).
CG_MIN_SIZE = 2e4
DENSE_MAX_COORDS = 512
# The CG backward works on the active features only (gathered) when at most GATHER_ACTIVE of
# the features are active. Not from a recorded measurement.
GATHER_ACTIVE = 0.6
# The CG preconditioner's Gram is the forward's, updated on the features whose weight differs
# when they are fewer than 1/GRAM_UPDATE_SHARE of the (active) features; with more, used as it
# is. 15-shot, 5-way, 8 episodes, λ1/λ_max = 0.1-0.3: CG products the same or one more
# (p = 16000, 0.1: 6 instead of 5), while the update (4000 features there) cost two products.
GRAM_UPDATE_SHARE = 16
