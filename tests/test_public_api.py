"""Pins the public API: names exported by ``nndist`` and the emission_absorption signature."""

import inspect

import nndist

EXPECTED = [
    "GradientsConfig",
    "Monitor",
    "NndistError",
    "ReproduceConfig",
    "Summary",
    "UnknownNameError",
    "__version__",
    "create_model",
    "emission_absorption",
    "init_model",
    "ks_distance",
    "list_inits",
    "list_models",
    "load_split",
    "load_weights",
    "random_inputs",
    "register_handler",
    "register_model",
    "run_compare",
    "run_gradients",
    "run_reproduce",
    "save_checkpoint",
    "stratified_subset",
    "summarize",
    "wasserstein",
    "weight_table",
]


def test_all_is_pinned():
    assert sorted(nndist.__all__) == sorted(EXPECTED)
    for name in nndist.__all__:
        assert hasattr(nndist, name), name


def test_emission_absorption_signature():
    params = inspect.signature(nndist.emission_absorption).parameters
    shape = [(p.name, p.kind.name, p.default) for p in params.values()]
    empty = inspect.Parameter.empty
    assert shape == [
        ("model", "POSITIONAL_OR_KEYWORD", empty),
        ("inputs", "POSITIONAL_OR_KEYWORD", empty),
        ("targets", "POSITIONAL_OR_KEYWORD", None),
        ("loss", "KEYWORD_ONLY", "cross_entropy"),
        ("layers", "KEYWORD_ONLY", None),
        ("definition", "KEYWORD_ONLY", "paper"),
    ]


def test_monitor_signature():
    empty = inspect.Parameter.empty
    shape = [(p.name, p.kind.name, p.default) for p in inspect.signature(nndist.Monitor).parameters.values()]
    assert shape == [
        ("model", "POSITIONAL_OR_KEYWORD", empty),
        ("out", "POSITIONAL_OR_KEYWORD", empty),
        ("every", "KEYWORD_ONLY", 100),
        ("watch", "KEYWORD_ONLY", ("weights", "grads", "features")),
        ("layers", "KEYWORD_ONLY", None),
        ("per_channel", "KEYWORD_ONLY", False),
        ("gradients_every", "KEYWORD_ONLY", None),
        ("probe", "KEYWORD_ONLY", None),
        ("resume", "KEYWORD_ONLY", False),
    ]
    step = [(p.name, p.kind.name, p.default) for p in inspect.signature(nndist.Monitor.step).parameters.values()]
    assert step == [("self", "POSITIONAL_OR_KEYWORD", empty), ("step", "POSITIONAL_OR_KEYWORD", None)]
    assert callable(nndist.Monitor.close) and hasattr(nndist.Monitor, "__enter__") and hasattr(nndist.Monitor, "__exit__")
