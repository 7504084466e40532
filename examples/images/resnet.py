"""ResNet-18, the standard architecture, written with torch.nn, and its weights on disk.

    build_resnet18()                  the torchvision layout: BasicBlock x [2, 2, 2, 2], 1000
                                      classes, 11,689,512 parameters, the same state_dict keys
    make_weights(seed) ─► save_weights(path)      deterministic: torch.manual_seed + the standard
                                                  init (kaiming_normal_ fan_out for convolutions)
    ensure_weights(path) ─► load_weights(path)    written on first use; read back memory-mapped
    model_from_weights(state_dict)                built on the meta device and given the tensors
                                                  themselves (assign=True): no copy, no init

torchvision cannot be used here (its 0.28.0 wheel fails to import with the CPU build of torch
2.13: `operator torchvision::nms does not exist`), so the network is written out; the keys match
torchvision's, so its trained `resnet18` weights load into it unchanged.

Weights are ~47 MB: generated into examples/images/data/ (not committed), as a safetensors file
(or a torch.save file for a `.pt`/`.pth` path). Both load memory-mapped: every process that maps
the file shares the page cache's copy.

    python -m examples.images.resnet [--out PATH] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WEIGHTS = os.path.join(HERE, "data", "resnet18.safetensors")
NUM_PARAMETERS = 11_689_512  # torchvision.models.resnet18().parameters(), summed


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (a strided 1x1 convolution when the shape changes)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """He et al. 2015, as torchvision lays it out (stem, four stages, average pool, classifier)."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        cin = 64
        for i, (width, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        self._init()

    def _init(self) -> None:
        # torchvision's init; nn.Linear keeps its own default (kaiming_uniform_, a=sqrt(5)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes)


def make_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """The state_dict of a freshly initialized ResNet-18: the same tensors for the same seed."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
        torch.manual_seed(seed)
        model = build_resnet18()
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str, seed: int | None = None) -> str:
    """Write a state_dict to `path` (safetensors, or torch.save for .pt/.pth), atomically: a
    reader never sees half a file, and two writers of the same weights do not collide."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if _is_torch_file(path):
            torch.save(dict(state_dict), tmp)
        else:
            from safetensors.torch import save_file

            # One metadata key: safetensors writes the metadata map in hash order, so two keys
            # could come out in either order and the same weights give different bytes.
            meta = {"resnet18_seed": str(seed)} if seed is not None else None
            save_file(dict(state_dict), tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def ensure_weights(path: str = DEFAULT_WEIGHTS, seed: int = 0) -> str:
    """The weights file at `path`, written from `seed` if it does not exist yet."""
    if not os.path.exists(path):
        save_weights(make_weights(seed), path, seed)
    return path


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """A state_dict read memory-mapped: the tensors are views of the page cache, shared by every
    process that loads the same file (nothing is copied until written, and nobody writes)."""
    if _is_torch_file(path):
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    from safetensors.torch import load_file

    return load_file(path, device="cpu")


def model_from_weights(state_dict: Mapping[str, torch.Tensor]) -> ResNet:
    """A ResNet-18 in eval mode whose parameters ARE the given tensors (no copy): built on the
    meta device (no memory, no init) and then assigned the tensors."""
    with torch.device("meta"):
        model = build_resnet18(num_classes=_num_classes(state_dict))
    missing, unexpected = model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return model.eval()


def _num_classes(state_dict: Mapping[str, torch.Tensor]) -> int:
    try:
        return int(state_dict["fc.weight"].shape[0])
    except KeyError:
        raise ValueError("not ResNet weights: the state_dict has no 'fc.weight' "
                         f"(keys: {', '.join(list(state_dict)[:5])}, ...)") from None


def _is_torch_file(path: str) -> bool:
    return str(path).endswith((".pt", ".pth"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.images.resnet",
                                     description="Write deterministic ResNet-18 weights.")
    parser.add_argument("--out", default=DEFAULT_WEIGHTS, help="file to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    save_weights(make_weights(args.seed), args.out, args.seed)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
