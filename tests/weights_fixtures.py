"""Generated checkpoints for the weights-file tests: no downloads, everything under tmp_path.

* :func:`hf_tensors` / :func:`write_hf_folder`: a small Hugging Face-style model split over two
  safetensors shards (bfloat16, float16, float32 and an int64 tensor) with its index.json.
* :func:`write_planted_pair`: two such folders, B with one tensor scaled by 1.5 (or negated), one
  dropped, one added and one reshaped: the planted change every comparison must rank first.
* :func:`torchvision_state_dict` / :func:`write_torchvision_pth`: a conv/BN/linear model's state
  dict saved as a training script does, ``{"state_dict": {"module.<name>": ...}, "epoch": ...}``.
* :func:`write_safetensors_stream`: a safetensors file of any size written in fixed-size blocks
  (the memory tests' 2 GB checkpoints), never holding a tensor in memory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

# safetensors dtype codes and element sizes of the streamed writer.
_ST_CODES = {"float32": ("F32", 4), "bfloat16": ("BF16", 2), "float16": ("F16", 2), "float64": ("F64", 8)}


def hf_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """A two-layer decoder's tensors: bf16 matrices, fp16 norms, an fp32 head, an int64 buffer."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, dtype: torch.dtype, scale: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": randn(50, 16, dtype=torch.bfloat16)}
    for i in range(2):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = (1 + randn(16, dtype=torch.float64, scale=0.1)).to(torch.float16)
        t[f"{p}.self_attn.q_proj.weight"] = randn(16, 16, dtype=torch.bfloat16)
        t[f"{p}.self_attn.k_proj.weight"] = randn(8, 16, dtype=torch.bfloat16)
        t[f"{p}.mlp.up_proj.weight"] = randn(32, 16, dtype=torch.bfloat16)
        t[f"{p}.mlp.down_proj.weight"] = randn(16, 32, dtype=torch.float16)
    t["model.norm.weight"] = torch.ones(16, dtype=torch.float16)
    t["model.position_ids"] = torch.arange(12, dtype=torch.int64)
    t["lm_head.weight"] = randn(50, 16, dtype=torch.float32)
    return t


def write_hf_folder(folder: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """``folder/model-0000{1,2}-of-00002.safetensors`` + ``model.safetensors.index.json``.

    Layer 0 and the embedding go to shard 1, everything else to shard 2.
    """
    tensors = hf_tensors() if tensors is None else tensors
    folder.mkdir(parents=True, exist_ok=True)
    shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    weight_map = {k: shards[0] if ("layers.0." in k or "embed" in k) else shards[1] for k in tensors}
    for shard in shards:
        save_file({k: v.contiguous() for k, v in tensors.items() if weight_map[k] == shard}, str(folder / shard),
                  metadata={"format": "pt"})
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_planted_pair(root: Path, *, negate: bool = False) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """``root/a`` and ``root/b``: two HF folders (bf16 and fp16 tensors over two shards).

    A holds :func:`hf_tensors` with lm_head on a 2^-12 grid (so x 1.5 is exact in float32); B is
    A with lm_head scaled by 1.5 (or, with ``negate``, layers.1 q_proj negated), model.norm
    dropped, model.extra.bias added and layers.0 k_proj reshaped.
    """
    tensors = hf_tensors()
    tensors["lm_head.weight"] = torch.round(tensors["lm_head.weight"] * 4096) / 4096
    a = write_hf_folder(root / "a", tensors)
    b = dict(tensors)
    if negate:
        b["model.layers.1.self_attn.q_proj.weight"] = -tensors["model.layers.1.self_attn.q_proj.weight"]
    else:
        b["lm_head.weight"] = tensors["lm_head.weight"] * 1.5
    del b["model.norm.weight"]
    b["model.extra.bias"] = torch.zeros(3)
    b["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"].reshape(16, 8)
    return a, write_hf_folder(root / "b", b), tensors


class SmallConvNet(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, pool, linear: the parameter and buffer kinds of a torchvision CNN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.layer1(x))
        return self.fc(x.mean((2, 3)))


def torchvision_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of a seeded :class:`SmallConvNet` with non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = SmallConvNet()
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 12, 12))  # running stats away from 0 and 1
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_torchvision_pth(path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """``{"state_dict": {"module.<name>": tensor}, "epoch": 90, "best_acc1": 71.2}``, as DDP training saves it."""
    sd = torchvision_state_dict() if state_dict is None else state_dict
    torch.save({"epoch": 90, "best_acc1": 71.2, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return path


def _block(dtype: str, seed: int, nbytes: int) -> bytes:
    """``nbytes`` of normal(0, 0.02) values of ``dtype`` (bf16: the top half of float32)."""
    rng = np.random.default_rng(seed)
    if dtype == "bfloat16":
        bits = (rng.standard_normal(nbytes // 2, dtype=np.float32) * 0.02).view(np.uint32) >> 16
        return bits.astype(np.uint16).tobytes()
    np_dtype = {"float32": np.float32, "float16": np.float16, "float64": np.float64}[dtype]
    size = nbytes // np.dtype(np_dtype).itemsize
    return (rng.standard_normal(size) * 0.02).astype(np_dtype).tobytes()


def write_safetensors_stream(
    path: Path,
    tensors: Sequence[tuple[str, str, tuple[int, ...]]],
    *,
    seed: int = 0,
    block_bytes: int = 16 << 20,
) -> Path:
    """A safetensors file written block by block: ``(name, dtype, shape)`` per tensor.

    Each tensor repeats one random block of ``block_bytes`` (summaries do not care, and writing
    2 GB stays a matter of seconds); memory use is one block.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        size = int(np.prod(shape)) * _ST_CODES[dtype][1]
        header[name] = {"dtype": _ST_CODES[dtype][0], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for i, (_, dtype, shape) in enumerate(tensors):
            size = int(np.prod(shape)) * _ST_CODES[dtype][1]
            block = _block(dtype, seed * 1000 + i, min(block_bytes, size))
            for start in range(0, size, len(block)):
                fh.write(block[: min(len(block), size - start)])
    return path
