"""How ``forward()`` takes the example input and what it returns, as flat, named tensors.

Users write ``forward()`` as they like: one tensor, several positional tensors, keyword tensors
(a dict example: Lightning calls ``forward(**example_input_array)`` for a dict), and return a
tensor, a tuple or list of tensors, or a dict of tensors. Exported files, the MLflow signature
and Triton see flat lists instead: the inputs in ``forward()``'s parameter order, the outputs in
the order ``forward()`` returns them (a dict's insertion order)::

    bound = bind_example(model, {"input_ids": ids, "attention_mask": mask})
    bound.tensors                    # (ids, mask), in forward()'s parameter order
    with export_mode(model):
        io = ForwardIO.of(model, bound)
        names = IONames.resolve(io)  # ("input_ids", "attention_mask"), ("logits", "pooled")
        flat = io.flat(model)        # flat(ids, mask) -> (logits, pooled)

Default names, as ``torch.onnx.export`` and ``LightningModule.to_onnx`` name graph inputs:

* inputs: the ``forward()`` parameter each tensor binds to; ``*args`` give ``args_0``...,
  ``**kwargs`` their keys (``input``, or ``input_0``..., when ``forward(*args)`` is all there
  is or it has no Python signature);
* outputs: ``output`` for one tensor, ``output_0``, ``output_1``... for a tuple or list, the
  keys for a dict.

Triton's libtorch backend feeds positional tensors (``INPUT__i`` is the i-th argument) and reads
a tensor or a tuple (``OUTPUT__j`` is the j-th element); it refuses dict and list outputs. So
when ``forward()`` needs keywords, or returns a dict or a list, the exported files come from
:class:`FlatForward`, which takes the inputs positionally and returns a tuple in the names'
order (:meth:`ForwardIO.export_module`).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch

Example = tuple[torch.Tensor, ...]
OutputKind = Literal["tensor", "tuple", "list", "dict"]


@dataclass(frozen=True)
class BoundExample:
    """The example input bound to ``forward()``'s parameters.

    Attributes:
        tensors: the example tensors, batch first, in ``forward()``'s parameter order.
        arguments: per tensor, the parameter (or ``**kwargs`` key) it binds to; for ``*args``,
            ``<name>_<i>``.
        positional: how many leading tensors are passed positionally; the rest go by keyword
            (their ``arguments`` entry).
    """

    tensors: Example
    arguments: tuple[str, ...]
    positional: int

    def call(self, module: torch.nn.Module, tensors: Sequence[torch.Tensor]) -> Any:
        """``module`` called with ``tensors`` (one per input, in order) the way it was bound."""
        keywords = dict(zip(self.arguments[self.positional :], tensors[self.positional :], strict=False))
        return module(*tensors[: self.positional], **keywords)


def bind_example(module: torch.nn.Module, input_sample: Any = None) -> BoundExample:
    """Bind ``input_sample`` (else ``module.example_input_array``) to ``forward()``'s parameters.

    A tensor is the first argument, a tuple or list the positional arguments, a dict the
    keyword arguments (as Lightning treats ``example_input_array``).

    Raises:
        ValueError: if there is no example, it is not tensors with one shared non-empty batch
            axis, or it does not fit ``forward()``'s parameters.
    """
    sample = getattr(module, "example_input_array", None) if input_sample is None else input_sample
    if sample is None:
        raise ValueError(
            f"Cannot export {type(module).__name__}: no example input. Pass "
            "`input_sample=torch.randn(batch, ...)` to the callback or set "
            "`self.example_input_array` in the LightningModule's __init__."
        )
    args, kwargs = _split_sample(sample)
    _check_tensors([*args, *kwargs.values()], [*map(str, range(len(args))), *kwargs])
    bound = _bind(module, args, kwargs)
    tensors = tuple(t.detach().to("cpu") for t in bound.tensors)
    return BoundExample(tensors, bound.arguments, bound.positional)


def _split_sample(sample: Any) -> tuple[tuple, dict]:
    if isinstance(sample, torch.Tensor):
        return (sample,), {}
    if isinstance(sample, (tuple, list)) and sample:
        return tuple(sample), {}
    if isinstance(sample, Mapping) and sample and all(isinstance(k, str) for k in sample):
        return (), dict(sample)
    raise ValueError(
        "The example input must be a tensor, a non-empty tuple/list of tensors (forward()'s "
        "positional arguments) or a non-empty dict of tensors keyed by forward()'s parameter "
        f"names (keyword arguments), got {type(sample).__name__}."
    )


def _check_tensors(tensors: Sequence[Any], labels: Sequence[str]) -> None:
    batch_sizes = set()
    for label, tensor in zip(labels, tensors, strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"Example input {label} is a {type(tensor).__name__}; every input must be a "
                "tensor (nested tuples, dicts and non-tensor arguments are not exported)."
            )
        if tensor.dim() == 0 or tensor.shape[0] == 0:
            raise ValueError(
                f"Example input {label} has shape {tuple(tensor.shape)}: every input needs a "
                "non-empty batch axis 0."
            )
        batch_sizes.add(tensor.shape[0])
    if len(batch_sizes) > 1:
        raise ValueError(
            f"The example inputs disagree on the batch size (axis 0): {sorted(batch_sizes)}."
        )


def _bind(module: torch.nn.Module, args: tuple, kwargs: dict) -> BoundExample:
    """Order the example as ``forward()``'s parameters; positional until the first gap."""
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):  # no Python signature (e.g. a compiled module)
        signature = None
    if signature is None or (not kwargs and _only_var_positional(signature)):
        if kwargs:
            raise ValueError(
                f"{type(module).__name__}.forward has no Python signature to bind the keyword "
                f"example {sorted(kwargs)} to; pass the inputs as a tuple."
            )
        names = ("input",) if len(args) == 1 else tuple(f"input_{i}" for i in range(len(args)))
        return BoundExample(tuple(args), names, len(args))
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as err:
        raise ValueError(
            f"The example input does not fit {type(module).__name__}.forward{signature}: {err}. "
            "Give a tensor or tuple for positional parameters, or a dict keyed by parameter names."
        ) from err
    tensors, arguments, positional, gap = [], [], 0, False
    for name, parameter in signature.parameters.items():
        if name not in bound.arguments:
            gap = True
            continue
        value = bound.arguments[name]
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            values, names = list(value), [f"{name}_{i}" for i in range(len(value))]
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            values, names, gap = list(value.values()), list(value), True
        else:
            values, names = [value], [name]
            gap = gap or parameter.kind is inspect.Parameter.KEYWORD_ONLY
        tensors += values
        arguments += names
        positional += 0 if gap else len(values)
    return BoundExample(tuple(tensors), tuple(arguments), positional)


def _only_var_positional(signature: inspect.Signature) -> bool:
    kinds = [p.kind for p in signature.parameters.values()]
    return kinds == [inspect.Parameter.VAR_POSITIONAL]


@dataclass(frozen=True)
class OutputLayout:
    """What ``forward()`` returns: ``kind`` and, for a dict, its ``keys`` in order."""

    kind: OutputKind
    count: int
    keys: tuple[str, ...] = ()

    @classmethod
    def of(cls, output: Any) -> "OutputLayout":
        """The layout of one ``forward()`` result.

        Raises:
            ValueError: unless it is a tensor, a non-empty tuple/list of tensors or a
                non-empty dict of tensors with string keys.
        """
        if isinstance(output, torch.Tensor):
            return cls("tensor", 1)
        if isinstance(output, (tuple, list)) and output and all(isinstance(t, torch.Tensor) for t in output):
            return cls("tuple" if isinstance(output, tuple) else "list", len(output))
        if (
            isinstance(output, Mapping) and output
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in output.items())
        ):  # fmt: skip
            return cls("dict", len(output), tuple(output))
        raise ValueError(
            "forward must return a tensor, a tuple/list of tensors or a dict of tensors with "
            f"string keys to be exported (nothing nested), got {_describe(output)}."
        )

    def default_names(self) -> tuple[str, ...]:
        """``output``; ``output_0``... for a tuple or list; the keys for a dict."""
        if self.kind == "tensor":
            return ("output",)
        if self.kind == "dict":
            return self.keys
        return tuple(f"output_{i}" for i in range(self.count))

    def flatten(self, output: Any) -> list[torch.Tensor]:
        """``output`` (of this layout) as a list of tensors in order."""
        if self.kind == "dict":
            return [output[key] for key in self.keys]
        return flatten_outputs(output)


def _describe(output: Any) -> str:
    if isinstance(output, (tuple, list, Mapping)):
        items = output.values() if isinstance(output, Mapping) else output
        inner = sorted({type(v).__name__ for v in items})
        return f"a {type(output).__name__} of {', '.join(inner) or 'nothing'}"
    return f"a {type(output).__name__}"


def flatten_outputs(output: Any) -> list[torch.Tensor]:
    """The output tensors of a flat module, in order (a tensor, or a tuple/list of tensors).

    Raises:
        ValueError: for any other output type.
    """
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)) and output and all(isinstance(t, torch.Tensor) for t in output):
        return list(output)
    raise ValueError(
        "forward must return a tensor or a tuple/list of tensors to be exported, got "
        f"{_describe(output)}."
    )


@dataclass(frozen=True)
class ForwardIO:
    """How the example binds to ``forward()`` and what ``forward()`` returns."""

    inputs: BoundExample
    outputs: OutputLayout

    @classmethod
    def of(cls, module: torch.nn.Module, bound: BoundExample) -> "ForwardIO":
        """Run ``module`` once on the example (call inside :func:`export_mode`)."""
        return cls(bound, OutputLayout.of(bound.call(module, bound.tensors)))

    @property
    def needs_adapter(self) -> bool:
        """Whether exports need :class:`FlatForward`: keyword inputs, dict or list outputs."""
        keywords = self.inputs.positional < len(self.inputs.tensors)
        return keywords or self.outputs.kind in ("dict", "list")

    def flat(self, module: torch.nn.Module) -> "FlatForward":
        """``module`` taking positional tensors and returning a tensor or tuple, in order."""
        return FlatForward(module, self)

    def export_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """What the exporters compile: ``module`` itself when it is flat already."""
        return self.flat(module) if self.needs_adapter else module


class FlatForward(torch.nn.Module):
    """Calls the wrapped module with positional tensors; returns a tensor or a tuple.

    Keyword parameters get their tensors by name and a dict or list result becomes a tuple in
    the output names' order, which is the calling convention of Triton's libtorch backend
    (``INPUT__i``/``OUTPUT__j``) and of the ONNX graph. Tracing it keeps a scripted inner
    module's control flow (the trace records a call to its compiled ``forward``).
    """

    def __init__(self, module: torch.nn.Module, io: ForwardIO) -> None:
        super().__init__()
        self.module = module
        self.inputs = dataclasses.replace(io.inputs, tensors=())  # how to call, not the example
        self.layout = io.outputs

    def forward(self, *tensors: torch.Tensor) -> Any:
        output = self.inputs.call(self.module, tensors)
        if self.layout.kind in ("dict", "list"):
            return tuple(self.layout.flatten(output))
        return output


@dataclass(frozen=True)
class IONames:
    """Names of the model's inputs and outputs, shared by ONNX, the MLflow signature and Triton.

    Attributes:
        inputs: one name per input tensor, in ``forward()``'s parameter order.
        outputs: one name per output tensor, in the order ``forward`` returns them.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def resolve(
        cls,
        io: ForwardIO,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
    ) -> "IONames":
        """The names given, else the defaults (see the module docstring), checked.

        Raises:
            ValueError: if a list has the wrong length or repeats a name, or an input and an
                output share a name.
        """
        n_in, n_out = len(io.inputs.tensors), io.outputs.count
        inputs = tuple(input_names) if input_names else io.inputs.arguments
        outputs = tuple(output_names) if output_names else io.outputs.default_names()
        for kind, names, expected in (("input", inputs, n_in), ("output", outputs, n_out)):
            if len(names) != expected:
                raise ValueError(
                    f"{len(names)} {kind}_names given ({list(names)}) but the model has "
                    f"{expected} {kind}(s)."
                )
            if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"{kind}_names must be unique non-empty strings, got {list(names)}.")
        if shared := sorted(set(inputs) & set(outputs)):
            raise ValueError(
                f"Input and output names must differ, both contain {shared} (inputs "
                f"{list(inputs)}, outputs {list(outputs)}); pass input_names or output_names."
            )
        return cls(inputs, outputs)


def take_rows(example: Example, batch_size: int) -> Example:
    """``batch_size`` rows of ``example``, cycling through its rows when it has fewer."""
    have = example[0].shape[0]
    index = torch.arange(batch_size) % have
    return tuple(t.index_select(0, index) for t in example)
