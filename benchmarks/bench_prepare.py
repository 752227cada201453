"""Benchmark `prepare` against raw OpenSlide reads and histolab, and its peak memory on a large slide.

Run from the repository root (2-core CPU machine; takes several minutes)::

    python benchmarks/bench_prepare.py --histolab-python /work/helpers/bench-venv/bin/python

Measures, on the same slide and tiles (256 px, level 0, 50 % tissue), in one run,
for the two real SVS slides and a generated ``--medium-px`` slide whose tissue
is tiled from real H&E patches (``--textures``):

- ``prepare``: the whole pipeline with one worker process and
  ``--tile-threads`` tile threads (CSV join, thumbnail, tissue mask, tile
  reads, filters, JPEG encoding, shard, preview, records, report), patches/s;
- raw: ``OpenSlide.read_region`` of exactly the tiles ``prepare`` kept,
  converted to RGB arrays, in one thread (the baseline of the 0.7 goal), and
  the same reads spread over ``--tile-threads`` threads, tiles/s;
- the CPU seconds of each (all threads of this process), which shared-machine
  load changes less than wall-clock time;
- histolab ``GridTiler`` (PNG tiles, its own Otsu tissue check) in a separate
  virtual environment, patches/s;
- peak resident memory of ``prepare`` (parent and worker processes) on a
  generated ``--large-px`` square slide written to a temporary folder.

Each repeat runs prepare and the raw reads back to back, and a ratio is the
median over repeats of those back-to-back pairs, so load that drifts during
the run affects both sides of a pair alike. The load average is printed
with every slide.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide

from medi_core.wsi.config import PrepareConfig
from medi_core.wsi.prepare import prepare_slides
from medi_core.wsi.store import read_store_records
from medi_core.wsi.synthetic import write_synthetic_slide

logger = logging.getLogger("bench_prepare")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi"
TEXTURES = DATA.parent / "patches" / "brca-m2c" / "images"  # real TCGA-BRCA H&E crops, 465-505 px
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


def run_prepare_once(
    slide: Path, default_mpp: float | None, out: Path, tile_threads: int
) -> tuple[float, float, int]:
    """Run prepare on one slide; return wall seconds, CPU seconds and the number of patches."""
    folder = out / "slides"
    folder.mkdir(parents=True)
    (folder / slide.name).symlink_to(slide)
    csv = out / "slides.csv"
    csv.write_text(f"slide_id,class\n{slide.stem},bench\n", encoding="utf-8")
    config = PrepareConfig(workers=1, tile_threads=tile_threads, default_mpp=default_mpp)
    cpu_start, start = time.process_time(), time.perf_counter()
    report = prepare_slides([folder], csv, out / "store", config)
    return time.perf_counter() - start, time.process_time() - cpu_start, report.num_patches


def run_raw_once(slide: Path, tiles: list[tuple[int, int, int]], size: int, threads: int) -> tuple[float, float]:
    """Read ``tiles`` with read_region into RGB arrays in ``threads`` threads; return wall and CPU seconds."""
    cpu_start, start = time.process_time(), time.perf_counter()
    handle = openslide.OpenSlide(str(slide))

    def read(tile: tuple[int, int, int]) -> np.ndarray:
        x, y, level = tile
        return np.asarray(handle.read_region((x, y), level, (size, size)).convert("RGB"))

    if threads == 1:
        for tile in tiles:
            read(tile)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(read, tiles):
                pass
    handle.close()
    return time.perf_counter() - start, time.process_time() - cpu_start


def kept_tiles(slide: Path, default_mpp: float | None, tile_threads: int) -> list[tuple[int, int, int]]:
    """Return (x, y, level) of the tiles prepare keeps on ``slide`` (an untimed warm-up run)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_prepare_once(slide, default_mpp, Path(tmp), tile_threads)
        records = read_store_records(Path(tmp) / "store")
    return [(int(x), int(y), int(level)) for x, y, level in zip(records["x"], records["y"], records["level"], strict=True)]


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def bench_slide(
    name: str, slide: Path, default_mpp: float | None, repeats: int, tile_threads: int,
    histolab_python: str | None, histolab_repeats: int,
) -> dict:
    load_before = load_average()
    tiles = kept_tiles(slide, default_mpp, tile_threads)
    prepare_runs, raw_runs, threaded_runs = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, cpu_seconds, patches = run_prepare_once(slide, default_mpp, Path(tmp), tile_threads)
        if patches != len(tiles):
            raise RuntimeError(f"{name}: prepare kept {patches} patches in one run and {len(tiles)} in another")
        prepare_runs.append((seconds, cpu_seconds))
        raw_runs.append(run_raw_once(slide, tiles, 256, 1))
        threaded_runs.append(run_raw_once(slide, tiles, 256, tile_threads))

    def paired_ratio(baseline: list[tuple[float, float]], column: int) -> float:
        return statistics.median(b[column] / p[column] for b, p in zip(baseline, prepare_runs, strict=True))

    result = {
        "slide": name,
        "patches": len(tiles),
        "prepare_patches_per_s": len(tiles) / statistics.median(s for s, _ in prepare_runs),
        "raw_tiles_per_s": len(tiles) / statistics.median(s for s, _ in raw_runs),
        "threaded_tiles_per_s": len(tiles) / statistics.median(s for s, _ in threaded_runs),
        "ratio_raw": paired_ratio(raw_runs, 0),
        "ratio_threaded": paired_ratio(threaded_runs, 0),
        "cpu_ratio_raw": paired_ratio(raw_runs, 1),
        "prepare_cpu_ms_per_patch": 1000 * statistics.median(c for _, c in prepare_runs) / len(tiles),
        "raw_cpu_ms_per_tile": 1000 * statistics.median(c for _, c in raw_runs) / len(tiles),
    }
    if histolab_python:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [histolab_python, "-c", HISTOLAB_SCRIPT, str(slide), tmp, str(histolab_repeats)],
                capture_output=True, text=True, check=False, env=histolab_environment(histolab_python),
            )
        if proc.returncode == 0:
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            result["histolab_patches"] = measured["patches"][0]
            result["histolab_patches_per_s"] = measured["patches"][0] / statistics.median(measured["seconds"])
        else:
            result["histolab_error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
    result["load"] = f"{load_before} -> {load_average()}"
    return result


def bench_memory(side_px: int, workers: int, textures: list[Path]) -> dict:
    """Write a ``side_px`` square slide, then run prepare on it in a child process and read its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "slides"
        folder.mkdir()
        start = time.perf_counter()
        write_synthetic_slide(
            folder / "large.svs", width=side_px, height=side_px, mpp=0.25, downsamples=(1, 4, 16), texture_images=textures
        )
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


def texture_images(argument: str) -> list[Path]:
    """Return the H&E images named by ``--textures``, or none for ``noise``."""
    if argument == "noise":
        return []
    images = sorted(p for p in Path(argument).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise SystemExit(f"--textures {argument}: no PNG or JPEG images found; pass a folder of H&E patches or 'noise'")
    return images


def print_slide_row(row: dict, tile_threads: int) -> None:
    line = (
        f"{row['slide']}: {row['patches']} patches; prepare {row['prepare_patches_per_s']:.0f} patches/s, "
        f"raw read_region {row['raw_tiles_per_s']:.0f} tiles/s (1 thread), "
        f"{row['threaded_tiles_per_s']:.0f} tiles/s ({tile_threads} threads); "
        f"prepare/raw {row['ratio_raw']:.2f}, prepare/raw with {tile_threads} threads {row['ratio_threaded']:.2f}; "
        f"CPU ms per patch: prepare {row['prepare_cpu_ms_per_patch']:.2f}, raw {row['raw_cpu_ms_per_tile']:.2f} "
        f"(CPU ratio {row['cpu_ratio_raw']:.2f})"
    )
    if "histolab_patches_per_s" in row:
        ratio = row["prepare_patches_per_s"] / row["histolab_patches_per_s"]
        line += (
            f"; histolab {row['histolab_patches_per_s']:.1f} patches/s "
            f"({row['histolab_patches']} patches), prepare/histolab {ratio:.1f}x"
        )
    elif "histolab_error" in row:
        line += f"; histolab failed: {row['histolab_error']}"
    print(f"{line}; load average {row['load']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per slide; medians are reported")
    parser.add_argument("--tile-threads", type=int, default=PrepareConfig().tile_threads,
                        help="tile threads of prepare, and threads of the second raw baseline (default: %(default)s)")
    parser.add_argument("--histolab-python", default=None, help="python of a virtual environment with histolab")
    parser.add_argument("--histolab-repeats", type=int, default=3, help="histolab runs per slide (default: %(default)s)")
    parser.add_argument("--medium-px", type=int, default=12_288,
                        help="side of a generated slide added to the speed comparison, px (0: skip)")
    parser.add_argument("--textures", default=str(TEXTURES),
                        help="folder of H&E images that texture the generated slides' tissue, or 'noise' for "
                             "drawn noise (default: the BRCA-M2C patches)")
    parser.add_argument("--large-px", type=int, default=40_000, help="side of the generated slide in px (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the memory run")
    parser.add_argument("--part", choices=["all", "speed", "memory"], default="all",
                        help="run the speed comparison, the memory run, or both (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    textures = texture_images(args.textures)

    slides = [(name, DATA / file, default_mpp) for name, (file, default_mpp) in SLIDES.items()]
    scratch = tempfile.TemporaryDirectory()
    if args.medium_px and args.part != "memory":
        medium = write_synthetic_slide(
            Path(scratch.name) / "medium.svs", width=args.medium_px, height=args.medium_px, mpp=0.5,
            downsamples=(1, 4, 16), texture_images=textures,
        )
        texture = "H&E-textured" if textures else "noise-textured"
        slides.append((f"generated {args.medium_px} px, {texture}, 0.5 µm/px (JPEG)", medium, None))
    for name, path, default_mpp in slides if args.part != "memory" else ():
        row = bench_slide(
            name, path, default_mpp, args.repeats, args.tile_threads, args.histolab_python, args.histolab_repeats
        )
        print_slide_row(row, args.tile_threads)

    scratch.cleanup()
    if args.large_px and args.part != "speed":
        memory = bench_memory(args.large_px, args.workers, textures)
        print(
            f"large slide {memory['side_px']} x {memory['side_px']} px (written in {memory['write_seconds']:.0f} s): "
            f"{memory['patches']} patches in {memory['seconds']:.0f} s, "
            f"peak RSS parent {memory['parent_max_rss_kib'] / 2**20:.2f} GiB, "
            f"largest worker {memory['worker_max_rss_kib'] / 2**20:.2f} GiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
