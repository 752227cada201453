"""Benchmark of the diffusion core: training and sampling throughput against a reference construction.

The reference is rebuilt from the description of the MeDi reference code (not
copied): a diffusers `UNet2DModel` with the same channels, class and site
embeddings summed and passed as the identity class embedding, diffusers'
`DDPMScheduler.add_noise`, a mean-reduced MSE, plain AdamW, diffusers'
`EMAModel` and DDIM sampling. Both run in the same process, alternating, so
machine load affects both alike.

Run::

    python benchmarks/bench_core.py --preset tiny
    python benchmarks/bench_core.py --preset medi-paper --batch 4 --train-steps 3 --sample-steps 3 --sample-repeats 2
    python benchmarks/bench_core.py --preset medi-paper --batch 2 --isolate --train-steps 3 --skip-solvers
    python benchmarks/bench_core.py --sampler RUN_DIR/sampler   # DPM-Solver++ 20 vs DDIM 100, pixel difference
    python benchmarks/bench_core.py --preset tiny --skip-train --skip-solvers --medi-precision bf16

Timing alternates the two implementations call by call in one process and
compares medians; peak memory (max RSS) comes from one subprocess per case.
With ``--isolate`` each implementation is timed in a subprocess of its own
instead, in the order reference, medi, medi, reference, and the two runs of
each are pooled. A `medi-paper` trainer peaked at 10.1 GiB at batch 2, so
two in one process do not fit in 24 GiB beside anything else.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from torch import nn

from medi_core.config import DiffusionConfig, TrainConfig, model_preset
from medi_core.metadata import CategoricalField, MetadataSpec
from medi_core.model import build_model
from medi_core.sampling import generate
from medi_core.training import Trainer
from medi_core.diffusion import GaussianDiffusion

N_CLASSES, N_SITES = 4, 6
IMPLS = ("reference", "medi")
SPEC = MetadataSpec(
    (
        CategoricalField("class", tuple(f"c{i}" for i in range(N_CLASSES))),
        CategoricalField("site", tuple(f"s{i}" for i in range(N_SITES))),
    )
)


class ReferenceMeDi(nn.Module):
    """UNet2DModel plus summed class and site embeddings, as the reference describes it."""

    def __init__(self, preset: str) -> None:
        super().__init__()
        cfg = model_preset(preset)
        self.unet = UNet2DModel(
            sample_size=cfg.sample_size,
            block_out_channels=tuple(cfg.block_out_channels),
            down_block_types=tuple(cfg.down_block_types),
            up_block_types=tuple(cfg.up_block_types),
            layers_per_block=cfg.layers_per_block,
            attention_head_dim=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
            class_embed_type="identity",
        )
        self.class_embedding = nn.Embedding(N_CLASSES, cfg.time_embed_dim)
        self.site_embedding = nn.Embedding(N_SITES, cfg.time_embed_dim)

    def forward(self, x, t, classes, sites):
        emb = self.class_embedding(classes) + self.site_embedding(sites)
        return self.unet(x, t, class_labels=emb).sample


def _batch(preset: str, batch: int):
    size = model_preset(preset).sample_size
    x = torch.rand(batch, 3, size, size) * 2 - 1
    classes = torch.arange(batch) % N_CLASSES
    sites = torch.arange(batch) % N_SITES
    return x, classes, sites


def make_train_step(impl: str, preset: str, batch: int):
    """A closure doing one optimiser step of ``impl`` ("reference" or "medi") on a fixed batch."""
    torch.manual_seed(0)
    x, classes, sites = _batch(preset, batch)
    if impl == "reference":
        model = ReferenceMeDi(preset)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
        ema = EMAModel(model.parameters(), decay=0.999)
        sched = DDPMScheduler(num_train_timesteps=1000)

        def step():
            noise = torch.randn_like(x)
            t = torch.randint(0, 1000, (batch,))
            pred = model(sched.add_noise(x, noise, t), t, classes, sites)
            loss = nn.functional.mse_loss(pred, noise)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.step(model.parameters())

        return step
    model = build_model(model_preset(preset), SPEC)
    trainer = Trainer(model, GaussianDiffusion(DiffusionConfig()), TrainConfig(total_steps=10_000), device="cpu")
    cond = SPEC.encode([{"class": f"c{c}", "site": f"s{s}"} for c, s in zip(classes.tolist(), sites.tolist(), strict=True)])

    def forever():
        while True:
            yield x, cond

    batches = forever()
    return lambda: trainer.train_steps(batches, 1)


def make_sample_call(impl: str, preset: str, batch: int, steps: int, scheduler: str = "ddim", precision: str = "fp32"):
    """A closure generating one batch of ``batch`` images with ``steps`` sampler steps."""
    torch.manual_seed(0)
    _, classes, sites = _batch(preset, batch)
    size = model_preset(preset).sample_size
    if impl == "reference":
        model = ReferenceMeDi(preset).eval()

        @torch.no_grad()
        def call():
            sched = DDIMScheduler(num_train_timesteps=1000)
            sched.set_timesteps(steps)
            x = torch.randn(batch, 3, size, size)
            for t in sched.timesteps:
                eps = model(x, t.expand(batch), classes, sites)
                x = sched.step(eps, t, x).prev_sample
            return x

        return call
    model = build_model(model_preset(preset), SPEC).eval()
    conditions = [{"class": f"c{c}", "site": f"s{s}"} for c, s in zip(classes.tolist(), sites.tolist(), strict=True)]
    return lambda: generate(
        model, conditions, list(range(batch)), diffusion_config=DiffusionConfig(),
        scheduler=scheduler, num_steps=steps, batch_size=batch, progress=False, precision=precision,
    )


def alternate(calls: dict[str, object], repeats: int) -> dict[str, float]:
    """Median seconds per call, running the implementations in turn so load hits both alike."""
    for call in calls.values():
        call()  # warm-up: allocator, oneDNN kernel selection
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for _ in range(repeats):
        order.reverse()  # neither implementation always runs right after the other
        for name in order:
            call = calls[name]
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def timing_child(args: argparse.Namespace) -> None:
    """Time one implementation alone: one warm-up call, then ``--train-steps`` or ``--sample-repeats`` calls."""
    if args.mode == "train":
        call, repeats = make_train_step(args.impl, args.preset, args.batch), args.train_steps
    else:
        call = make_sample_call(args.impl, args.preset, args.batch, args.sample_steps, precision=args.medi_precision)
        repeats = args.sample_repeats
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def isolated(args: argparse.Namespace, mode: str) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per call and peak MiB per implementation, each timed in its own subprocesses (ABBA order)."""
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    peaks: dict[str, float] = {impl: 0.0 for impl in IMPLS}
    for impl in (*IMPLS, *reversed(IMPLS)):
        cmd = [
            sys.executable, __file__, "--child", "--timing", "--mode", mode, "--impl", impl, "--preset", args.preset,
            "--batch", str(args.batch), "--sample-steps", str(args.sample_steps),
            "--train-steps", str(args.train_steps), "--sample-repeats", str(args.sample_repeats),
            "--medi-precision", args.medi_precision,
        ]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        times[impl] += out["seconds"]
        peaks[impl] = max(peaks[impl], out["peak_rss_mib"])
        print(f"  {mode} {impl}: {', '.join(f'{t:.2f}' for t in out['seconds'])} s per call", flush=True)
    return {impl: statistics.median(v) for impl, v in times.items()}, peaks


def peak_memory_child(args: argparse.Namespace) -> None:
    """Run one implementation alone for two calls and print its peak resident memory."""
    if args.mode == "train":
        call = make_train_step(args.impl, args.preset, args.batch)
    else:
        call = make_sample_call(args.impl, args.preset, args.batch, args.sample_steps, precision=args.medi_precision)
    call()
    call()
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_memory(args: argparse.Namespace, mode: str, impl: str) -> float:
    cmd = [
        sys.executable, __file__, "--child", "--mode", mode, "--impl", impl, "--preset", args.preset,
        "--batch", str(args.batch), "--sample-steps", str(args.sample_steps),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def compare_solvers(sampler_dir: str, n: int) -> None:
    """DPM-Solver++ at 20 steps vs DDIM at 100 steps on a trained sampler: time ratio and pixel difference."""
    from medi_core.artifact import MediSampler

    sampler = MediSampler.from_pretrained(sampler_dir)
    spec = sampler.spec
    classes = spec.classes
    sites = spec.categorical_field("site").known_values if "site" in spec.field_names else ("",)
    conditions = [{"class": classes[i % len(classes)], "site": sites[i % len(sites)]} for i in range(n)]
    seeds = list(range(n))
    timings, images = {}, {}
    for name, steps in (("ddim", 100), ("dpmsolver++", 20)):
        start = time.perf_counter()
        images[name] = sampler.generate(conditions, seeds, scheduler=name, num_steps=steps, progress=False)
        timings[name] = time.perf_counter() - start
    # Mean absolute difference in 8-bit grey levels: [-1, 1] maps to [0, 255].
    mad = ((images["ddim"] - images["dpmsolver++"]).abs() * 127.5).mean().item()
    print(
        f"solvers on {sampler_dir} ({n} images): DDIM-100 {timings['ddim']:.1f} s, DPM-Solver++-20 "
        f"{timings['dpmsolver++']:.1f} s, time ratio {timings['ddim'] / timings['dpmsolver++']:.2f}, "
        f"mean |difference| {mad:.2f} grey levels of 255"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=8, help="timed training steps per implementation")
    p.add_argument("--sample-steps", type=int, default=10, help="sampler steps per timed batch")
    p.add_argument("--sample-repeats", type=int, default=4, help="timed sampling batches per implementation")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--skip-train", action="store_true", help="time sampling only (two medi-paper trainers need ~17 GiB)")
    p.add_argument("--isolate", action="store_true",
                   help="time each implementation in its own subprocesses (ABBA order); needed for medi-paper training")
    p.add_argument("--skip-solvers", action="store_true", help="skip the DDIM-100 vs DPM-Solver++-20 timing")
    p.add_argument("--medi-precision", choices=["fp32", "bf16"], default="fp32",
                   help="MeDi-Fed's sampling precision (the reference always samples in fp32)")
    p.add_argument("--sampler", help="a trained sampler folder: only compare DPM-Solver++ 20 vs DDIM 100 on it")
    p.add_argument("--n", type=int, default=16, help="images for the solver comparison")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="medi", help=argparse.SUPPRESS)
    p.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sampler:
        compare_solvers(args.sampler, args.n)
        return
    if args.child:
        timing_child(args) if args.timing else peak_memory_child(args)
        return
    params = build_model(model_preset(args.preset), SPEC).num_parameters()
    print(f"preset={args.preset} parameters={params:,} batch={args.batch} threads={torch.get_num_threads()} "
          f"medi sampling precision={args.medi_precision}")

    results: dict[str, tuple[dict[str, float], dict[str, float] | None]] = {}
    for mode in ("train", "sample"):
        if mode == "train" and args.skip_train:
            continue
        if args.isolate:
            results[mode] = isolated(args, mode)
        elif mode == "train":
            calls = {impl: make_train_step(impl, args.preset, args.batch) for impl in IMPLS}
            results[mode] = (alternate(calls, args.train_steps), None)
        else:
            calls = {impl: make_sample_call(impl, args.preset, args.batch, args.sample_steps, precision=args.medi_precision)
                     for impl in IMPLS}
            results[mode] = (alternate(calls, args.sample_repeats), None)
    for mode, (seconds, peaks) in results.items():
        ips = {impl: args.batch / seconds[impl] for impl in IMPLS}
        if peaks is None and not args.no_memory:
            peaks = {impl: peak_memory(args, mode, impl) for impl in IMPLS}
        memory = "" if peaks is None else " | peak MiB " + ", ".join(f"{impl} {peaks[impl]:.0f}" for impl in IMPLS)
        print(
            f"{mode:6s} img/s reference {ips['reference']:.3f}, medi {ips['medi']:.3f} | "
            f"ratio medi/reference {ips['medi'] / ips['reference']:.2f}{memory}"
        )

    if args.skip_solvers:
        return
    ddim_steps, dpm_steps = 100, 20
    solvers = alternate(
        {
            "ddim": make_sample_call("medi", args.preset, args.batch, ddim_steps, "ddim"),
            "dpmsolver++": make_sample_call("medi", args.preset, args.batch, dpm_steps, "dpmsolver++"),
        },
        1,
    )
    print(
        f"solvers: DDIM {ddim_steps} steps {solvers['ddim']:.1f} s, DPM-Solver++ {dpm_steps} steps "
        f"{solvers['dpmsolver++']:.1f} s per batch of {args.batch}: DPM-Solver++ is "
        f"{solvers['ddim'] / solvers['dpmsolver++']:.2f}x faster"
    )


if __name__ == "__main__":
    main()
