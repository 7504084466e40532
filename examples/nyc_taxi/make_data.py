"""Write synthetic NYC taxi shards shaped like the public 2009 sample.

    python -m examples.nyc_taxi.make_data --out examples/nyc_taxi/data --shards 12 --scale 1 --seed 0

`--out` may be a local folder or any fsspec URI (``s3://bucket/prefix``, honouring the AWS
environment). The work is done by `connectors.make_nyc_taxi_shards`.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.nyc_taxi.make_data",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/nyc_taxi/data",
                        help="destination folder or URI (default: %(default)s)")
    parser.add_argument("--shards", type=int, default=12, help="number of Parquet files")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies the 1,710,629 rows of the real sample")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    args = parser.parse_args(argv)

    from connectors import ConnectorError, make_nyc_taxi_shards

    start = time.perf_counter()
    try:
        paths = make_nyc_taxi_shards(args.out, shards=args.shards, scale=args.scale,
                                     seed=args.seed)
    except (ConnectorError, ValueError, OSError) as exc:
        print(f"make_data: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    print(f"wrote {len(paths)} shards to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
