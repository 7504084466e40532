"""An offline image data set: synthetic JPEGs in Parquet, the same bytes for the same seed.

    make_image_shards(dest, images=3072, files=12, seed=0)
        image i ─► rng([seed, i]) ─► size (120-500 px a side), label ─► Pillow: a gradient, shapes
        that depend on the label, noise ─► JPEG bytes ─► row (image_id int64, image binary, label int16)
        rows ─► `files` Parquet files (part-00000.parquet, ...), row groups of 64 images

Shaped like Ray Data's batch inference benchmark (ImageNet JPEGs stored in Parquet), with no
download: every image is drawn from its own seeded generator, so a file's bytes depend only on
the seed, its image ids and the Pillow/libjpeg and pyarrow versions. Files are made in parallel
(one process per file, up to the cores) into a temporary folder that is renamed into place when
complete: a folder at `dest` always holds the whole data set.

    python -m examples.images.make_data [--out examples/images/data/images] [--images 3072] [--files 12]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DEST = os.path.join(HERE, "data", "images")
NUM_LABELS = 10
_SHAPES = ("ellipse", "rectangle", "triangle", "lines", "rings")


@dataclass(frozen=True)
class ImageSetSpec:
    """What to draw: every choice the generator makes follows from these fields."""

    seed: int = 0
    min_size: int = 120
    max_size: int = 500
    quality: int = 90
    num_labels: int = NUM_LABELS


def make_image_shards(dest: str = DEFAULT_DEST, *, images: int = 3072, files: int = 12, seed: int = 0,
                      row_group_size: int = 64, min_size: int = 120, max_size: int = 500,
                      quality: int = 90, processes: int | None = None) -> list[str]:
    """Write `images` synthetic JPEGs over `files` Parquet files in the local folder `dest`;
    returns the files' paths. Usable as a pipeline's `source.generate` factory."""
    if not (isinstance(images, int) and isinstance(files, int) and images >= files >= 1):
        raise ValueError(f"need 1 <= files <= images, found files={files!r}, images={images!r}")
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, found {min_size!r}, {max_size!r}")
    spec = ImageSetSpec(seed=seed, min_size=min_size, max_size=max_size, quality=quality)
    dest = dest.removeprefix("file://").rstrip("/")
    tmp = f"{dest}.tmp-{os.getpid()}"
    jobs = [(spec, ids, os.path.join(tmp, f"part-{i:05d}.parquet"), row_group_size)
            for i, ids in enumerate(split_ids(images, files))]
    os.makedirs(tmp, exist_ok=True)
    try:
        processes = min(files, processes or os.cpu_count() or 1)
        if processes > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(processes) as pool:
                pool.map(_write_file, jobs, chunksize=1)
        else:
            for job in jobs:
                _write_file(job)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        os.rename(tmp, dest)  # fails if another run made `dest` meanwhile: its data is the same
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [os.path.join(dest, os.path.basename(job[2])) for job in jobs]


def split_ids(images: int, files: int) -> list[range]:
    """Consecutive image ids per file, as even as possible: 10 over 3 -> [0:4], [4:7], [7:10]."""
    base, extra = divmod(images, files)
    bounds = np.cumsum([0] + [base + (i < extra) for i in range(files)])
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _write_file(job: tuple[ImageSetSpec, range, str, int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec, ids, path, row_group_size = job
    drawn = [draw_image(spec, i) for i in ids]
    table = pa.table({
        "image_id": pa.array(list(ids), pa.int64()),
        "image": pa.array([jpeg for jpeg, _ in drawn], pa.binary()),
        "label": pa.array([label for _, label in drawn], pa.int16()),
    })
    # JPEG bytes do not compress: store them as they are.
    pq.write_table(table, path, row_group_size=row_group_size, compression="none")


def draw_image(spec: ImageSetSpec, image_id: int) -> tuple[bytes, int]:
    """One image's JPEG bytes and label, from its own generator (independent of the others)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([spec.seed, image_id])
    width, height = (int(v) for v in rng.integers(spec.min_size, spec.max_size + 1, size=2))
    label = int(rng.integers(spec.num_labels))
    img = _gradient(rng, width, height)
    draw = ImageDraw.Draw(img)
    shape = _SHAPES[label % len(_SHAPES)]
    warm = label >= len(_SHAPES)  # the other half of the labels: warm colours instead of cool
    for _ in range(int(rng.integers(2, 7))):
        _draw_shape(draw, rng, shape, width, height, _colour(rng, warm))
    img = img.filter(ImageFilter.BoxBlur(float(rng.uniform(0.0, 1.5))))  # softer edges, O(pixels)
    noisy = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(height, width, 3), dtype=np.int16)
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=spec.quality)
    return out.getvalue(), label


def _gradient(rng: np.random.Generator, width: int, height: int):
    """A linear gradient between two random colours, in a random direction: computed on a 16x16
    grid and stretched by bilinear resampling (which keeps a linear ramp linear), for speed."""
    from PIL import Image

    a, b = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:16, 0:16] / 15.0
    t = x * np.cos(angle) + y * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    small = Image.fromarray((a + (b - a) * t[..., None]).astype(np.uint8), "RGB")
    return small.resize((width, height), Image.BILINEAR)


def _colour(rng: np.random.Generator, warm: bool) -> tuple[int, int, int]:
    hi, mid, lo = int(rng.integers(160, 256)), int(rng.integers(60, 200)), int(rng.integers(0, 90))
    return (hi, mid, lo) if warm else (lo, mid, hi)


def _draw_shape(draw, rng: np.random.Generator, shape: str, width: int, height: int,
                colour: tuple[int, int, int]) -> None:
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    r = rng.uniform(0.08, 0.35) * min(width, height)
    box = [cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r * rng.uniform(0.5, 1.5)]
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour, outline=(0, 0, 0), width=2)
    elif shape == "triangle":
        turn = rng.uniform(0, 2 * np.pi)
        draw.polygon([(cx + r * np.cos(turn + k * 2 * np.pi / 3), cy + r * np.sin(turn + k * 2 * np.pi / 3))
                      for k in range(3)], fill=colour)
    elif shape == "lines":
        for _ in range(5):
            x0, y0, x1, y1 = rng.uniform(0, 1, size=4) * (width, height, width, height)
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(2, 8)))
    else:  # rings
        for k in range(int(rng.integers(2, 5)), 0, -1):
            rk = r * k / 3
            draw.ellipse([cx - rk, cy - rk, cx + rk, cy + rk], outline=colour, width=max(2, int(r / 8)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.images.make_data",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_DEST, help="destination folder (default: %(default)s)")
    parser.add_argument("--images", type=int, default=3072)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        print(f"make_data: {args.out} exists; remove it first", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        paths = make_image_shards(args.out, images=args.images, files=args.files, seed=args.seed)
    except ValueError as exc:
        print(f"make_data: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.images} images in {len(paths)} files to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
