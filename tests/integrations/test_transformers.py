"""``nndist.integrations.transformers.NndistCallback`` with a tiny BERT and the HF ``Trainer``
(skipped without the extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the [transformers] extra is not installed: "
                                                          "pip install 'nndist[transformers]'")

from nndist.integrations.transformers import NndistCallback  # noqa: E402
from nndist.results import load_run  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
from monitor_cases import hooks_on  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 40, (n, 9), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def test_callback_records_the_trainer_steps(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=5, per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, learning_rate=1e-3, report_to=[],
                                          logging_strategy="no", save_strategy="no", use_cpu=True,
                                          dataloader_num_workers=0, disable_tqdm=True)
    callback = NndistCallback(tmp_path / "run", every=2, layers=["bert.embeddings.*", "classifier"])
    transformers.Trainer(model=model, args=args, train_dataset=Tokens(64), callbacks=[callback]).train()
    run = load_run(tmp_path / "run")
    layers = run.manifest["config"]["layers"]
    assert "classifier" in layers and "bert.embeddings.word_embeddings" in layers and "bert.embeddings.LayerNorm" in layers
    w, f = run.table("weights"), run.table("features")
    assert sorted(w["step"].unique()) == [0, 2, 4] and sorted(f["step"].unique()) == [0, 2, 4]
    # word embeddings on (B, T) tokens: two micro-batches of 4 x 9 tokens x 16 dims
    emb = f[f["layer"] == "bert.embeddings.word_embeddings"]
    assert (emb["n"] == 2 * 4 * 9 * 16).all()
    assert hooks_on(model) == 0 and run.manifest["status"] == "finished"
