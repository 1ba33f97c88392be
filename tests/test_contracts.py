"""docs/CONTRACTS.md against the code: the layer rule of the imports, the module list, the run
directory schema (generated from nndist.results), class sizes and a CLI frame without torch.

Run ``python tests/test_contracts.py`` to rewrite the generated schema section of the doc.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "nndist"
DOC = ROOT / "docs" / "CONTRACTS.md"
MAX_CLASS_LINES = 400


def _layers() -> dict[str, int]:
    """Top-level module or package of nndist -> its layer's position in the doc's table."""
    block = DOC.read_text(encoding="utf-8").split("<!-- layers:begin -->")[1].split("<!-- layers:end -->")[0]
    out: dict[str, int] = {}
    rows = [line for line in block.strip().splitlines()[2:] if line.startswith("|")]
    for position, line in enumerate(rows):
        modules = line.split("|")[2]
        for name in re.findall(r"`([^`]+)`", modules):
            out[name] = position
    return out


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _top(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _internal_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, imported module as ``nndist.x.y``, imported name or None) of every import in a file,
    function-level ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["nndist", *path.relative_to(SRC).with_suffix("").parts][:-1]  # the package holding the file
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "nndist"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "nndist":
                out += [(node.lineno, module, a.name) for a in node.names]
    return out


def test_every_module_has_a_layer():
    layers = _layers()
    missing = sorted({_top(p) for p in _modules()} - set(layers) - {"__init__"})
    assert not missing, f"modules missing from the layer table of docs/CONTRACTS.md: {missing}"


def test_imports_follow_the_layers_and_never_the_package():
    layers = _layers()
    bad = []
    for path in _modules():
        if path == SRC / "__init__.py":
            continue  # the package re-exports every layer (lazily)
        own = layers[_top(path)]
        for line, module, name in _internal_imports(path):
            parts = module.split(".")
            if len(parts) == 1:  # from nndist import X / from .. import X
                target = name or ""
                if not (SRC / target).is_dir() and not (SRC / f"{target}.py").is_file():
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name!r} from the package nndist")
                    continue
            else:
                target = parts[1]
            if layers[target] > own:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({_top(path)}) imports {module} (layer of {target} comes later)")
    assert not bad, "\n".join(bad)


def test_no_class_over_the_limit():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long.append(f"{path.relative_to(ROOT)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def render_schema() -> str:
    """The run-directory section of the doc, from nndist.results.layout and nndist.results.schema."""
    from nndist.results import layout
    from nndist.results.schema import TABLES

    def table_lines(kind: str, name: str) -> list[str]:
        spec = TABLES[kind][name]
        values = "the summary columns" if spec.values[:1] == ("n",) else ", ".join(spec.values)
        order = (f"; rows ordered by `{spec.order}`" + (", then by the run's place in the config" if "init" in spec.keys else "")
                 if spec.order else "")
        return [f"- `{layout.table_file(name)}`: keys `{', '.join(spec.keys)}`, then {values}{order}"]

    fig = layout.FIGURE_FORMATS
    lines = [f"Every run directory holds `{layout.MANIFEST}` (its `kind`: {', '.join(f'`{k}`' for k in layout.KINDS)}),"
             f" `{layout.REPORT}`, `{layout.CLAIMS}`, `{layout.TB_DIR}/` (TensorBoard events) and, until it has"
             f" finished, `{layout.STATE_DIR}/` (kept with `--keep-state`). While a process writes `RUN`, it holds"
             f" `{layout.lock_file(Path('RUN')).name}` beside it; an `--overwrite` run writes into"
             f" `{layout.staging_dir(Path('RUN')).name}` and replaces `RUN` with it when it has finished.", ""]
    extra = {
        layout.REPRODUCE: [
            f"- `{layout.checkpoint_file('<run key>', '<stage>')}`: stages `{layout.BEFORE}` and `{layout.AFTER}`; the run key is"
            f" `{layout.run_key('<init>', 0)}` for seed 0, `{layout.run_key('<init>', 7).replace('7', '<S>')}` otherwise",
            f"- stages: `{layout.BEFORE}`, `{layout.epoch_stage(1).replace('1', 'K')}` (after epoch K, with every_epoch), `{layout.AFTER}`",
            *(f"- `{layout.FIGURES_DIR}/{name}.{{{','.join(fig[name])}}}`" for name in layout.KIND_FIGURES[layout.REPRODUCE]),
        ],
        layout.MONITOR: [
            f"- while it runs, each table is a folder `{layout.table_file('<table>')}/` of parts `part-<step>.parquet`"
            f" (one per logging step, `<step>` zero-padded to {layout.PART_DIGITS} digits: `{layout.part_name(17)}`);"
            " `close()` compacts it into the single file; `channel` is null on whole-tensor rows",
            "- `histograms.parquet` holds whole-tensor rows only, on every 8th of the summaries' global bucket edges"
            " (8 buckets per octave of |v|)",
            f"- `{layout.figure_file('bands', '<table>')}`, `{layout.figure_file('last_histograms', '<table>')}`"
            " for tables weights, grads, features;"
            f" `{layout.figure_file('std_heatmap')}`, `{layout.figure_file('channel_gradients')}`",
        ],
        layout.GRADIENTS: [
            f"- `{layout.per_sample_file('<layer>', '<stat>')}`: float32 (N, C), stat `emission` or `absorption`, memory-mappable;"
            f" `<layer>` is the module name with `/` as `_`, `{layout.layer_file_stem('')}` for the root module",
            f"- `{layout.PER_SAMPLE_ORDER}`: the dataset index of each per-sample row",
            f"- `{layout.CHANNEL_NORMS}`: per layer the mean over samples of ||LG^(c1->c2)||, (C_out, C_in)",
            f"- `{layout.FIGURES_DIR}/overview.{{{','.join(fig['overview'])}}}`; for the layers named by `layer_figures`:",
            *(f"- `{layout.figure_file(name, '<layer>', fig[name][0])}`" for name in layout.KIND_FIGURES[layout.GRADIENTS] if name != "overview"),
        ],
        layout.COMPARE: [
            f"- `{layout.FIGURES_DIR}/{name}.{{{','.join(fig[name])}}}`" for name in layout.KIND_FIGURES[layout.COMPARE]
        ],
    }
    for kind in (k for k in layout.KINDS if k in TABLES):
        lines += [f"`{kind}`:", ""]
        for name in TABLES[kind]:
            lines += table_lines(kind, name)
        lines += [*extra.get(kind, []), *([f"- `{layout.STATE_FILES[kind]}`: resume state"] if kind in layout.STATE_FILES else []), ""]
    return "\n".join(lines).strip()


def _doc_schema(text: str) -> str:
    assert text.count("<!-- schema:begin -->") == 1 and text.count("<!-- schema:end -->") == 1, "one schema block"
    return text.split("<!-- schema:begin -->")[1].split("<!-- schema:end -->")[0].strip()


def test_schema_section_is_generated_from_the_code():
    assert _doc_schema(DOC.read_text(encoding="utf-8")) == render_schema(), (
        "docs/CONTRACTS.md is stale: run `python tests/test_contracts.py` to rewrite its schema section"
    )


def test_cli_frame_imports_no_torch():
    code = ("import sys\nfrom nndist.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'scipy', 'numba') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("module", ["nndist"])
def test_package_import_is_light(module):
    done = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


if __name__ == "__main__":  # rewrite the generated section
    sys.path.insert(0, str(ROOT / "src"))
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split("<!-- schema:begin -->", 1)
    tail = rest.split("<!-- schema:end -->", 1)[1]
    # splice between the markers (str.replace of the old block would hit every copy of it,
    # every newline when the block was empty)
    DOC.write_text(f"{head}<!-- schema:begin -->\n{render_schema()}\n<!-- schema:end -->{tail}", encoding="utf-8")
    print(f"rewrote the schema section of {DOC}")
