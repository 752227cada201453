"""Benchmark `prepare` against raw OpenSlide reads and histolab, and its peak memory on a large slide.

Run from the repository root (2-core CPU machine; takes several minutes)::

    python benchmarks/bench_prepare.py --histolab-python /work/helpers/bench-venv/bin/python

Measures, on the same slide and tiles (256 px, level 0, 50 % tissue), in one run,
for the two real SVS slides and a generated ``--medium-px`` slide:

- ``prepare``: the whole pipeline with one worker (thumbnail, tissue mask,
  tile reads, filters, JPEG encoding, shard, preview, report), patches/s;
- raw: ``OpenSlide.read_region`` of exactly the tiles ``prepare`` kept,
  converted to RGB arrays, tiles/s (the baseline of the 0.7 goal);
- histolab ``GridTiler`` (PNG tiles, its own Otsu tissue check) in a separate
  virtual environment, patches/s;
- peak resident memory of ``prepare`` (parent and worker processes) on a
  generated ``--large-px`` square slide written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import openslide

from medi_core.wsi.config import PrepareConfig
from medi_core.wsi.prepare import prepare_slides
from medi_core.wsi.store import read_store_records
from medi_core.wsi.synthetic import write_synthetic_slide

logger = logging.getLogger("bench_prepare")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi"
SLIDES = {  # name: (file, --mpp for slides without resolution metadata)
    "CMU-1-Small-Region (JPEG)": ("CMU-1-Small-Region.svs", None),
    "TCGA-CR-7395 frozen (JPEG 2000)": ("TCGA-CR-7395-01A-01-TS1.svs", 0.5),
}

HISTOLAB_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from histolab.slide import Slide
    from histolab.tiler import GridTiler
    path, out, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    times, counts = [], []
    for repeat in range(repeats):
        folder = f"{out}/run{repeat}"
        start = time.perf_counter()
        slide = Slide(path, processed_path=folder)
        tiler = GridTiler(tile_size=(256, 256), level=0, check_tissue=True, tissue_percent=50.0,
                          pixel_overlap=0, prefix="", suffix=".png")
        tiler.extract(slide)
        times.append(time.perf_counter() - start)
        import pathlib
        counts.append(len(list(pathlib.Path(folder).glob("*.png"))))
    print(json.dumps({"seconds": times, "patches": counts}))
    """
)


def histolab_environment(histolab_python: str) -> dict[str, str]:
    """Return the environment for histolab's interpreter.

    histolab 0.7.0 pins openslide-python 1.3.1, which predates openslide-bin and
    only finds libopenslide on the library path, so that path points at the
    library inside the environment's openslide-bin package.
    """
    env = dict(os.environ)
    venv = Path(histolab_python).absolute().parents[1]  # not resolve(): the venv python is a symlink
    bundled = sorted(venv.glob("lib/python*/site-packages/openslide_bin"))
    if bundled:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(bundled[0]), env.get("LD_LIBRARY_PATH")]))
    return env


def run_prepare_once(slide: Path, default_mpp: float | None, out: Path) -> tuple[float, int]:
    folder = out / "slides"
    folder.mkdir(parents=True)
    (folder / slide.name).symlink_to(slide)
    csv = out / "slides.csv"
    csv.write_text(f"slide_id,class\n{slide.stem},bench\n", encoding="utf-8")
    start = time.perf_counter()
    report = prepare_slides([folder], csv, out / "store", PrepareConfig(workers=1, default_mpp=default_mpp))
    return time.perf_counter() - start, report.num_patches


def run_raw_once(slide: Path, tiles: list[tuple[int, int, int]], size: int) -> float:
    start = time.perf_counter()
    handle = openslide.OpenSlide(str(slide))
    for x, y, level in tiles:
        np.asarray(handle.read_region((x, y), level, (size, size)).convert("RGB"))
    handle.close()
    return time.perf_counter() - start


def bench_slide(name: str, slide: Path, default_mpp: float | None, repeats: int, histolab_python: str | None) -> dict:
    prepare_times, raw_times = [], []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, patches = run_prepare_once(slide, default_mpp, Path(tmp))
            records = read_store_records(Path(tmp) / "store")
            tiles = list(zip(records["x"], records["y"], records["level"], strict=True))
        prepare_times.append(seconds)
        raw_times.append(run_raw_once(slide, [(int(x), int(y), int(lv)) for x, y, lv in tiles], 256))
    result = {
        "slide": name,
        "patches": patches,
        "prepare_patches_per_s": patches / statistics.median(prepare_times),
        "raw_tiles_per_s": len(tiles) / statistics.median(raw_times),
    }
    if histolab_python:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [histolab_python, "-c", HISTOLAB_SCRIPT, str(slide), tmp, str(repeats)],
                capture_output=True, text=True, check=False, env=histolab_environment(histolab_python),
            )
        if proc.returncode == 0:
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            result["histolab_patches"] = measured["patches"][0]
            result["histolab_patches_per_s"] = measured["patches"][0] / statistics.median(measured["seconds"])
        else:
            result["histolab_error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
    return result


def bench_memory(side_px: int, workers: int) -> dict:
    """Write a ``side_px`` square slide, then run prepare on it in a child process and read its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "slides"
        folder.mkdir()
        start = time.perf_counter()
        write_synthetic_slide(folder / "large.svs", width=side_px, height=side_px, mpp=0.25, downsamples=(1, 4, 16))
        write_seconds = time.perf_counter() - start
        csv = Path(tmp) / "slides.csv"
        csv.write_text("slide_id,class\nlarge,bench\n", encoding="utf-8")
        child = textwrap.dedent(
            f"""
            import json, resource, sys
            from pathlib import Path
            from medi_core.wsi.config import PrepareConfig
            from medi_core.wsi.prepare import prepare_slides
            report = prepare_slides([Path({str(folder)!r})], Path({str(csv)!r}), Path({tmp!r}) / "store",
                                    PrepareConfig(workers={workers}))
            print(json.dumps({{
                "patches": report.num_patches, "seconds": report.seconds,
                "parent_max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "worker_max_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            }}))
            """
        )
        proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
    measured["write_seconds"] = write_seconds
    measured["side_px"] = side_px
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per slide; the median is reported")
    parser.add_argument("--histolab-python", default=None, help="python of a virtual environment with histolab")
    parser.add_argument("--medium-px", type=int, default=12_288,
                        help="side of a generated slide added to the speed comparison, px (0: skip)")
    parser.add_argument("--large-px", type=int, default=40_000, help="side of the generated slide in px (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the memory run")
    parser.add_argument("--part", choices=["all", "speed", "memory"], default="all",
                        help="run the speed comparison, the memory run, or both (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    slides = [(name, DATA / file, default_mpp) for name, (file, default_mpp) in SLIDES.items()]
    scratch = tempfile.TemporaryDirectory()
    if args.medium_px:
        medium = write_synthetic_slide(
            Path(scratch.name) / "medium.svs", width=args.medium_px, height=args.medium_px, mpp=0.5, downsamples=(1, 4, 16)
        )
        slides.append((f"synthetic {args.medium_px} px, 0.5 µm/px (JPEG)", medium, None))
    for name, path, default_mpp in slides if args.part != "memory" else ():
        row = bench_slide(name, path, default_mpp, args.repeats, args.histolab_python)
        ratio_raw = row["prepare_patches_per_s"] / row["raw_tiles_per_s"]
        line = (
            f"{name}: prepare {row['prepare_patches_per_s']:.0f} patches/s ({row['patches']} patches), "
            f"raw read_region {row['raw_tiles_per_s']:.0f} tiles/s, ratio {ratio_raw:.2f}"
        )
        if "histolab_patches_per_s" in row:
            ratio = row["prepare_patches_per_s"] / row["histolab_patches_per_s"]
            line += (
                f"; histolab {row['histolab_patches_per_s']:.1f} patches/s "
                f"({row['histolab_patches']} patches), prepare/histolab {ratio:.1f}x"
            )
        elif "histolab_error" in row:
            line += f"; histolab failed: {row['histolab_error']}"
        print(line, flush=True)

    scratch.cleanup()
    if args.large_px and args.part != "speed":
        memory = bench_memory(args.large_px, args.workers)
        print(
            f"large slide {memory['side_px']} x {memory['side_px']} px (written in {memory['write_seconds']:.0f} s): "
            f"{memory['patches']} patches in {memory['seconds']:.0f} s, "
            f"peak RSS parent {memory['parent_max_rss_kib'] / 2**20:.2f} GiB, "
            f"largest worker {memory['worker_max_rss_kib'] / 2**20:.2f} GiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
