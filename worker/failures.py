"""Why a job failed, as an `ErrorKind`: read from the exception's type, never its message.

The dashboard used to guess the reason by matching regexes on the message text, and guessed
wrong (an unknown `model_type` said "no internet access", because transformers' advice names
github). Here the kind comes from what raised: the exception's class, looked up by name in its
method resolution order, and, for the few libraries that raise plain `ValueError`s, the module
the exception was raised in. Every link of the `raise ... from` / `during handling` chain is
looked at, because a library often wraps the telling exception in a generic one; the rules
are tried in order, each against the whole chain, so a specific rule wins wherever its link is.

Classes are named, not imported (`"torch:OutOfMemoryError"` is any class of that name defined
in `torch` or below it), so this module stays torch-free (the worker's parent process imports
it) and a class the library moves between its own modules is still recognised.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from jobs.records import ErrorKind

MAX_CHAIN = 8  # links of a cause/context chain looked at (a chain can be a cycle)


@dataclass(frozen=True)
class Rule:
    """A kind, for an exception of one of `types` (any, when empty) raised inside one of the
    modules `raised_in` (anywhere, when empty)."""

    kind: ErrorKind
    types: tuple[str, ...] = ()
    raised_in: tuple[str, ...] = ()


# First rule that any link of the chain matches wins, so the specific rules come first (an
# `UnpicklingError` is a refusal when torch's weights-only unpickler raised it, else damage).
RULES: tuple[Rule, ...] = (
    Rule(ErrorKind.timeout, types=("rq:JobTimeoutException",)),
    Rule(ErrorKind.out_of_memory, types=("torch:OutOfMemoryError", "builtins:MemoryError",
                                         "compressors:DoesNotFit")),
    Rule(ErrorKind.refused, types=("builtins:PermissionError", "compressors:UnsafeModelFile")),
    Rule(ErrorKind.refused, types=("_pickle:UnpicklingError", "pickle:UnpicklingError"),
         raised_in=("torch._weights_only_unpickler",)),
    Rule(ErrorKind.offline, types=("huggingface_hub:OfflineModeIsEnabled",
                                   "huggingface_hub:LocalEntryNotFoundError",
                                   "huggingface_hub:HfHubHTTPError", "requests:ConnectionError",
                                   "httpx:TransportError", "socket:gaierror",
                                   "builtins:ConnectionError")),
    Rule(ErrorKind.offline, types=("builtins:OSError",),
         raised_in=("transformers.utils.hub", "huggingface_hub")),
    Rule(ErrorKind.damaged_weights, types=("compressors:DamagedWeights",
                                           "safetensors:SafetensorError",
                                           "_pickle:UnpicklingError", "pickle:UnpicklingError")),
    Rule(ErrorKind.damaged_weights, raised_in=("torch.serialization",
                                               "compressors.engine.placement")),
    Rule(ErrorKind.unsupported_model, types=("builtins:ValueError", "builtins:KeyError"),
         raised_in=("transformers.models.auto",)),
    Rule(ErrorKind.not_found, types=("compressors:ModelNotFoundError", "jobs:UnknownModel",
                                     "builtins:FileNotFoundError")),
    Rule(ErrorKind.goal_not_met, types=("compressors:GoalNotMet",)),
    Rule(ErrorKind.numerical, types=("compressors:CholeskyError",)),
    Rule(ErrorKind.invalid_recipe, types=("pydantic_core:ValidationError",
                                          "compressors:InvalidPattern")),
    Rule(ErrorKind.invalid_recipe, types=("builtins:ValueError",),
         raised_in=("compressors.methods", "compressors.engine", "compressors.recipe",
                    "compressors.search", "compressors.ops")),
)


def classify(exc: BaseException) -> ErrorKind:
    """The kind of a job's failure; `internal` when no rule knows the exception."""
    chain = [(_type_names(link), _raised_in(link)) for link in _chain(exc)]
    for rule in RULES:
        for names, origin in chain:
            if _matches(rule, names, origin):
                return rule.kind
    return ErrorKind.internal


def _matches(rule: Rule, names: list[tuple[str, str]], origin: str) -> bool:
    if rule.types and not any(_is(wanted, names) for wanted in rule.types):
        return False
    return not rule.raised_in or any(_within(origin, module) for module in rule.raised_in)


def _is(wanted: str, names: list[tuple[str, str]]) -> bool:
    package, name = wanted.split(":")
    return any(qualname == name and _within(module, package) for module, qualname in names)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _type_names(exc: BaseException) -> list[tuple[str, str]]:
    """(module, qualified name) of the exception's class and every base class."""
    return [(cls.__module__, cls.__qualname__) for cls in type(exc).__mro__]


def _raised_in(exc: BaseException) -> str:
    """The module whose code raised `exc` (its traceback's innermost frame); "" if unknown."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or while handling. A context hidden with
    `raise ... from None` is followed too: torch re-raises its weights-only unpickler's refusal
    that way, and where a failure began is what tells its kind."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < MAX_CHAIN:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__
