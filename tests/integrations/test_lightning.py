"""``nndist.integrations.lightning.NndistCallback`` with a tiny LightningModule (skipped without the extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch", reason="the [lightning] extra is not installed: pip install 'nndist[lightning]'")

from nndist.integrations.lightning import NndistCallback  # noqa: E402
from nndist.results import load_run  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
from monitor_cases import data, hooks_on, tiny  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")  # Lightning's own advice


class Module(pl.LightningModule):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = tiny()
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):  # noqa: ANN001
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):  # noqa: ANN001
        x, y = batch
        self.net(x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader(steps: int) -> torch.utils.data.DataLoader:
    batches = data(steps, batch=4)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def _trainer(callback: NndistCallback, steps: int, accumulate: int = 1) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                      accumulate_grad_batches=accumulate, val_check_interval=2, limit_val_batches=1)


def test_callback_records_the_optimizer_steps(tmp_path) -> None:  # noqa: ANN001
    module = Module()
    callback = NndistCallback(tmp_path / "run", every=2, layers=["net.conv", "net.fc", "net.head"])
    _trainer(callback, steps=5, accumulate=2).fit(module, _loader(12), val_dataloaders=_loader(1))
    run = load_run(tmp_path / "run")
    assert run.manifest["status"] == "finished" and run.manifest["config"]["layers"] == ["net.conv", "net.fc", "net.head"]
    f = run.table("features")
    assert sorted(f["step"].unique()) == [0, 2, 4]
    # two micro-batches of 4 per optimizer step, and no validation pass
    assert (f[f["layer"] == "net.head"]["n"] == 2 * 4 * 5).all()
    assert sorted(run.table("grads")["step"].unique()) == [0, 2, 4]
    assert hooks_on(module) == 0 and (tmp_path / "run" / "report.html").is_file()


def test_an_exception_removes_the_hooks(tmp_path) -> None:  # noqa: ANN001
    module = Module(fail_at=3)
    callback = NndistCallback(tmp_path / "run", every=1)
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(callback, steps=6).fit(module, _loader(6), val_dataloaders=_loader(1))
    assert hooks_on(module) == 0 and load_run(tmp_path / "run").manifest["status"] == "running"
