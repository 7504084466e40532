"""Train the tip MLP on the NYC taxi sample data and save it with the example.

    python -m examples.nyc_taxi.train                      # -> examples/nyc_taxi/tip_mlp.pt
    python -m examples.nyc_taxi.train --torchscript --out /tmp/tip_mlp_script.pt

The sample shards are generated on first use (connectors.make_nyc_taxi_shards) into
examples/nyc_taxi/data/. The target is tip_amount (a regression: the expected tip, in dollars); the features are
model.FEATURES. Training is seeded, small (full-batch Adam on at most `--max-rows` rows) and takes
a few seconds on a CPU; the saved file is a few KB.
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import pyarrow.parquet as pq

from .model import DATA_DIR, FEATURES, MLP_PATH

LABEL = "tip_amount"


def load_data(data_dir: str = DATA_DIR, max_rows: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) from the sample shards, generating them if the folder is missing."""
    if not os.path.exists(data_dir):
        from connectors import make_nyc_taxi_shards

        make_nyc_taxi_shards(data_dir)
    tables, rows = [], 0
    for path in sorted(glob.glob(os.path.join(data_dir, "**", "*.parquet"), recursive=True)):
        t = pq.read_table(path, columns=list(FEATURES) + [LABEL])
        tables.append(t)
        rows += t.num_rows
        if rows >= max_rows:
            break
    if not tables:
        raise SystemExit(f"no Parquet files under {data_dir}")
    x = np.concatenate([np.column_stack([t.column(c).to_numpy(zero_copy_only=False).astype(np.float32)
                                         for c in FEATURES]) for t in tables])[:max_rows]
    y = np.concatenate([t.column(LABEL).to_numpy(zero_copy_only=False).astype(np.float32)
                        for t in tables])[:max_rows]
    keep = np.isfinite(x).all(axis=1)
    return x[keep], y[keep]


def train(x: np.ndarray, y: np.ndarray, epochs: int = 300, seed: int = 0, lr: float = 0.02):
    """A fitted TipMLP (full-batch Adam; the data is small)."""
    import torch

    from .mlp import TipMLP

    torch.manual_seed(seed)
    model = TipMLP(n_features=x.shape[1])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.mean.copy_(xt.mean(0))
    model.std.copy_(xt.std(0).clamp_min(1e-6))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.MSELoss()  # the expected tip: what a sum of predictions should match
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
    model.eval()
    return model


def rmse(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.inference_mode():
        p = model(torch.from_numpy(x)).clamp_min(0).numpy()
    return float(np.sqrt(((p - y) ** 2).mean()))


def save(model, out: str, torchscript: bool = False) -> None:
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if torchscript:
        torch.jit.script(model).save(out)
    else:
        torch.save(model, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m examples.nyc_taxi.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DATA_DIR, help="folder of sample shards (generated if missing)")
    p.add_argument("--out", default=MLP_PATH, help="where to save the model")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--max-rows", type=int, default=200_000)
    p.add_argument("--torchscript", action="store_true", help="save TorchScript instead of torch.save")
    args = p.parse_args(argv)
    x, y = load_data(args.data, args.max_rows)
    model = train(x, y, epochs=args.epochs)
    save(model, args.out, args.torchscript)
    baseline = float(y.std())
    print(f"trained on {len(x):,} rows: RMSE ${rmse(model, x, y):.3f} (predicting the mean tip: "
          f"${baseline:.3f}); saved {args.out} ({os.path.getsize(args.out):,} bytes)")


if __name__ == "__main__":
    main()
