"""Benchmark of the diffusion core: training and sampling throughput against a reference construction.

The reference is rebuilt from the description of the MeDi reference code (not
copied): a diffusers `UNet2DModel` with the same channels, class and site
embeddings summed and passed as the identity class embedding, diffusers'
`DDPMScheduler.add_noise`, a mean-reduced MSE, plain AdamW, diffusers'
`EMAModel` and DDIM sampling. Both run in the same process, alternating, so
machine load affects both alike.

Run::

    python benchmarks/bench_core.py --preset tiny --train-steps 6 --sample-steps 10
    python benchmarks/bench_core.py --preset medi-paper --batch 4 --train-steps 2 --sample-steps 3

Every case runs in its own subprocess so that peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
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


def run_train(impl: str, preset: str, batch: int, steps: int) -> float:
    """Training images per second over ``steps`` steps after one warm-up step."""
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
    else:
        model = build_model(model_preset(preset), SPEC)
        trainer = Trainer(model, GaussianDiffusion(DiffusionConfig()), TrainConfig(total_steps=steps + 1), device="cpu")
        cond = SPEC.encode([{"class": f"c{c}", "site": f"s{s}"} for c, s in zip(classes.tolist(), sites.tolist(), strict=True)])

        def forever():
            while True:
                yield x, cond

        batches = forever()

        def step():
            trainer.train_steps(batches, 1)

    step()  # warm-up: allocator, oneDNN kernel selection
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


@torch.no_grad()
def run_sample(impl: str, preset: str, batch: int, steps: int, scheduler: str = "ddim") -> float:
    """Sampling images per second for ``steps`` sampler steps (DDIM unless told)."""
    torch.manual_seed(0)
    _, classes, sites = _batch(preset, batch)
    size = model_preset(preset).sample_size
    if impl == "reference":
        model = ReferenceMeDi(preset).eval()
        sched = DDIMScheduler(num_train_timesteps=1000)
        start = time.perf_counter()
        sched.set_timesteps(steps)
        x = torch.randn(batch, 3, size, size)
        for t in sched.timesteps:
            eps = model(x, t.expand(batch), classes, sites)
            x = sched.step(eps, t, x).prev_sample
        return batch / (time.perf_counter() - start)
    model = build_model(model_preset(preset), SPEC).eval()
    conditions = [{"class": f"c{c}", "site": f"s{s}"} for c, s in zip(classes.tolist(), sites.tolist(), strict=True)]
    start = time.perf_counter()
    generate(
        model, conditions, list(range(batch)), diffusion_config=DiffusionConfig(),
        scheduler=scheduler, num_steps=steps, batch_size=batch, progress=False,
    )
    return batch / (time.perf_counter() - start)


def child(args: argparse.Namespace) -> None:
    if args.mode == "train":
        value = run_train(args.impl, args.preset, args.batch, args.train_steps)
    else:
        value = run_sample(args.impl, args.preset, args.batch, args.sample_steps, args.scheduler)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in build_model(model_preset(args.preset), SPEC).parameters())
    print(json.dumps({"images_per_s": value, "peak_rss_mib": peak_mib, "parameters": params}))


def spawn(args: argparse.Namespace, mode: str, impl: str, scheduler: str = "ddim", steps: int | None = None) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--mode", mode, "--impl", impl, "--preset", args.preset,
        "--batch", str(args.batch), "--train-steps", str(args.train_steps),
        "--sample-steps", str(steps or args.sample_steps), "--scheduler", scheduler,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


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
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats per case; the best is kept")
    p.add_argument("--sampler", help="a trained sampler folder: only compare DPM-Solver++ 20 vs DDIM 100 on it")
    p.add_argument("--n", type=int, default=16, help="images for the solver comparison")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="medi", help=argparse.SUPPRESS)
    p.add_argument("--scheduler", default="ddim", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sampler:
        compare_solvers(args.sampler, args.n)
        return
    if args.child:
        torch.set_num_threads(torch.get_num_threads())
        child(args)
        return
    print(f"preset={args.preset} batch={args.batch} threads={torch.get_num_threads()}")
    for mode in ("train", "sample"):
        best = {"reference": None, "medi": None}
        for _ in range(args.repeats):
            for impl in ("reference", "medi"):
                r = spawn(args, mode, impl)
                if best[impl] is None or r["images_per_s"] > best[impl]["images_per_s"]:
                    best[impl] = r
        ratio = best["medi"]["images_per_s"] / best["reference"]["images_per_s"]
        print(
            f"{mode:6s} reference {best['reference']['images_per_s']:.3f} img/s "
            f"(peak {best['reference']['peak_rss_mib']:.0f} MiB) | medi {best['medi']['images_per_s']:.3f} img/s "
            f"(peak {best['medi']['peak_rss_mib']:.0f} MiB) | ratio {ratio:.2f} | params {best['medi']['parameters']:,}"
        )
    ddim = spawn(args, "sample", "medi", "ddim", 100 if args.preset == "tiny" else args.sample_steps * 5)
    dpm = spawn(args, "sample", "medi", "dpmsolver++", 20 if args.preset == "tiny" else args.sample_steps)
    print(f"DPM-Solver++ ({'20' if args.preset == 'tiny' else args.sample_steps} steps) vs DDIM "
          f"({'100' if args.preset == 'tiny' else args.sample_steps * 5} steps): time ratio "
          f"{ddim['images_per_s'] / dpm['images_per_s']:.2f}x faster")


if __name__ == "__main__":
    main()
