"""Typed hooks and one way to call a plugin function: every hook spec is annotated and documents its
parameters, the spec callables have Protocols, and `tuneforge.specs.call_accepting` is the one place
that reads a plugin callable's signature to decide what to pass."""

import ast
import inspect
import typing
from pathlib import Path

import pytest

from tuneforge import hookspecs, specs
from tuneforge.host.hook_docs import hook_names, hook_signature
from tuneforge.specs import SPEC_KINDS, accepts_keyword, call_accepting


def _type_checking_names(module) -> dict:
    """The names a module imports under ``if TYPE_CHECKING:``, imported for real."""
    namespace: dict = {}
    for node in ast.parse(Path(module.__file__).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            exec(compile(ast.Module(body=node.body, type_ignores=[]), module.__file__, "exec"), namespace)
    return namespace


def _hints(function, module) -> dict:
    return typing.get_type_hints(function, globalns={**vars(module), **_type_checking_names(module)})


def test_every_hook_spec_annotates_its_parameters_and_return_and_documents_each_parameter():
    names = hook_names()
    assert len(names) >= 11
    for name in names:
        function = getattr(hookspecs, name)
        signature = inspect.signature(function)
        assert signature.return_annotation is not signature.empty, f"{name}: no return annotation"
        for parameter in signature.parameters.values():
            assert parameter.annotation is not parameter.empty, f"{name}: '{parameter.name}' has no annotation"
            assert f":param {parameter.name}:" in function.__doc__, f"{name}: '{parameter.name}' undocumented"
        hints = _hints(function, hookspecs)  # the annotations name real types
        assert set(hints) == {*signature.parameters, "return"}, name


def test_the_hook_annotations_are_the_types_the_host_passes_and_expects():
    from omegaconf import DictConfig

    from tuneforge.context import RunContext
    from tuneforge.host.components import RunConfig

    for spec_class, (_group, hook, _several) in SPEC_KINDS.items():
        assert _hints(getattr(hookspecs, hook), hookspecs)["return"] == typing.Iterable[spec_class], hook
    start = _hints(hookspecs.tuneforge_run_start, hookspecs)
    assert start == {"config": DictConfig, "run_dir": Path, "context": RunContext, "run_config": RunConfig,
                     "return": type(None)}
    end = _hints(hookspecs.tuneforge_run_end, hookspecs)
    assert end["status"] is str and end["metrics"] == dict[str, typing.Any] and end["context"] is RunContext
    assert end["run_config"] is RunConfig
    assert hook_signature(hookspecs.tuneforge_run_start) == \
        "(config: DictConfig, run_dir: Path, context: RunContext, run_config: RunConfig) -> None"  # as docs show


def test_the_spec_callables_protocols_name_their_arguments_and_results():
    from tuneforge import spec_signatures
    from tuneforge.data import DataSplits
    from tuneforge.losses import LossContext, LossOutput

    fields = {(cls.__name__, f): typing.get_type_hints(cls, globalns={**vars(specs), **_type_checking_names(specs)})[f]
              for cls, f in [(specs.ModelSourceSpec, "load"), (specs.DatasetSpec, "load"),
                             (specs.AdapterSpec, "apply"), (specs.LossSpec, "build")]}
    assert fields == {("ModelSourceSpec", "load"): typing.Optional[specs.LoadModel],
                      ("DatasetSpec", "load"): typing.Optional[specs.LoadData],
                      ("AdapterSpec", "apply"): typing.Optional[specs.ApplyAdapter],
                      ("LossSpec", "build"): typing.Optional[specs.BuildLoss]}
    names = {**vars(spec_signatures), **_type_checking_names(spec_signatures)}
    assert typing.get_type_hints(specs.LoadData.__call__, globalns=names)["return"] is DataSplits
    build = typing.get_type_hints(specs.BuildLoss.__call__, globalns=names)
    assert build["context"] is LossContext and build["return"] is specs.LossFunction
    assert typing.get_type_hints(specs.LossFunction.__call__, globalns=names)["return"] is LossOutput


# --------------------------------------------------------------------------- call_accepting


def _build_one(config):
    return ("one", config)


def _build_two(config, context):
    return ("two", config, context)


def _build_default(config, context=None):
    return ("default", config, context)


def _build_varargs(*args):
    return ("varargs", *args)


@pytest.mark.parametrize("build, expected", [
    (_build_one, ("one", "cfg")),
    (_build_two, ("two", "cfg", "ctx")),
    (_build_default, ("default", "cfg", "ctx")),
    (_build_varargs, ("varargs", "cfg", "ctx")),
    (lambda config, /: ("posonly", config), ("posonly", "cfg")),
    (lambda config, *, context=None: ("keyword", config, context), ("keyword", "cfg", None)),  # not positional
])
def test_an_optional_positional_argument_goes_where_the_signature_has_room(build, expected):
    assert call_accepting(build, "cfg", optional_args=("ctx",)) == expected


def test_an_unreadable_signature_gets_the_documented_form():
    with pytest.raises(TypeError):  # a callback's build: only config (max(3) is not iterable)
        call_accepting(max, 3, optional_args=(5,))
    assert call_accepting(max, 3, optional_args=(5,), optional_args_if_unreadable=True) == 5  # a logger's build
    assert call_accepting(max, 3, 5, evaluation="pass") == 5  # keywords are never passed blind


def test_named_only_keywords_skip_a_bare_kwargs():
    def evaluate(model, *, evaluation=None, **kwargs):
        return evaluation, kwargs

    def evaluate_with_context(model, *, evaluation=None, context=None, **kwargs):
        return evaluation, context, kwargs

    assert call_accepting(evaluate, "m", evaluation="p", context="c", named_only=("context",)) == ("p", {})
    assert call_accepting(evaluate_with_context, "m", evaluation="p", context="c", named_only=("context",)) == \
        ("p", "c", {})
    assert call_accepting(evaluate, "m", evaluation="p", context="c") == ("p", {"context": "c"})


def test_accepts_keyword():
    assert accepts_keyword(lambda a, *, evaluation: a, "evaluation")
    assert accepts_keyword(lambda a, **kw: a, "evaluation") and not accepts_keyword(lambda a, **kw: a, "x", False)
    assert not accepts_keyword(lambda a, evaluation, /: a, "evaluation")  # positional-only
    assert not accepts_keyword(lambda a, *evaluation: a, "evaluation")
    assert not accepts_keyword(max, "evaluation")  # no signature to read
