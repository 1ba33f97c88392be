"""Figure 4's quantities under the paper's definition and under the author's published code.

On the pretrained CIFAR ResNet-56 (``$NNDIST_MODELS_DIR``, else ``../shared/models``) and real
CIFAR-10 test images (``$NNDIST_DATA_DIR/cifar10-jpeg``, else ``../shared/data``), a class-stratified
subset, this measures Emission and Absorption with ``definition="paper"`` (eval mode, cross-entropy,
batches) and ``definition="author_code"`` (train-mode BatchNorm, one image per pass, the code's seed)
and prints, per layer, the median over the first 15 channels of each channel's median and variance,
and the ratio of the Emission and Absorption variances (the paper says Emission varies more).

Usage: ``PYTHONPATH=src python benchmarks/paper_and_code.py [--samples 500]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nndist.data import load_split, stratified_subset  # noqa: E402
from nndist.models import create_model, get_model_spec  # noqa: E402
from nndist.probes.gradients import emission_absorption  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
LAYERS = ("conv1", "layer1.0.conv1", "layer1.8.conv2", "layer2.0.conv1", "layer2.8.conv2", "layer3.0.conv1", "layer3.8.conv2")
CHANNELS = 15


def _dir(var: str, default: Path) -> Path:
    return Path(os.environ[var]) if os.environ.get(var) else default


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, definition: str, batch: int) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, list[np.ndarray]]] = {layer: {"emission": [], "absorption": []} for layer in LAYERS}
    for start in range(0, len(y), batch):
        res = emission_absorption(model, x[start : start + batch], y[start : start + batch], layers=LAYERS, definition=definition)
        for layer in LAYERS:
            out[layer]["emission"].append(res[layer].emission[:, :CHANNELS].double().numpy())
            out[layer]["absorption"].append(res[layer].absorption[:, :CHANNELS].double().numpy())
    return {layer: {k: np.concatenate(v) for k, v in d.items()} for layer, d in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=500)
    args = ap.parse_args()
    models, data = _dir("NNDIST_MODELS_DIR", SHARED / "models"), _dir("NNDIST_DATA_DIR", SHARED / "data") / "cifar10-jpeg"
    model = create_model("cifar_resnet56", weights=str(next(models.glob("resnet56-*.th"))))
    spec = get_model_spec("cifar_resnet56")
    test = load_split(str(data), "test", progress=False)
    idx = stratified_subset(test.labels, args.samples, seed=0)
    x, y = test.normalized(spec.mean, spec.std, indices=idx), test.labels[idx]
    torch.manual_seed(0)
    paper = measure(model.eval(), x, y, "paper", 100)
    code = measure(model, x, y, "author_code", 100)
    print(f"pretrained CIFAR ResNet-56, {args.samples} CIFAR-10 test images, first {CHANNELS} channels of each layer; "
          "per layer: median over channels of each channel's median (med) and variance (var)\n")
    print("| layer | definition | Em med | Em var | Ab med | Ab var | Em var / Ab var |")
    print("|---|---|---|---|---|---|---|")
    for layer in LAYERS:
        for name, res in (("paper", paper), ("author_code", code)):
            em, ab = res[layer]["emission"], res[layer]["absorption"]
            ve, va = em.var(axis=0), ab.var(axis=0)
            print(f"| `{layer}` | {name} | {np.median(np.median(em, 0)):.3g} | {np.median(ve):.3g} | {np.median(np.median(ab, 0)):.3g} | "
                  f"{np.median(va):.3g} | {np.median(ve) / np.median(va):.3g} |")


if __name__ == "__main__":
    main()
