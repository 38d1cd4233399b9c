"""Issue 25, item 1: every path that comes out of a model folder goes through one function.

A model folder is a user's file: its index names shards, its tokenizer config names files,
its entries may be links. The unit tests pin `model_files.model_file`'s rules; the loader
tests then run every place that opens a model file (in memory, onloaded, streamed, the
skeleton, header reads at submission, the memory estimate, `compressors.load`) while watching
every file the process opens (Python's audit hook for `open`, and every binding of
safetensors' `safe_open`, which opens files in Rust where the audit hook cannot see):

- on hostile folders (an index naming another model's weights by `../` and by absolute path,
  a pipe, a link out, a tokenizer config naming outside files) each loader refuses, the other
  model's file is never opened, and the refusal reads the same whether that file exists;
- on a plain folder, every file opened inside the model folder is one `model_file` returned.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compressors.io import model_files
from compressors.io.model_files import (
    INDEX_FILE,
    UnsafeModelFile,
    check_model_folder,
    model_file,
)
from compressors.recipe import Recipe

RECIPE = {"steps": [{"method": "magnitude", "sparsity": 0.5}],
          "calibration": {"samples": 2, "seqlen": 32}, "evaluation": {"windows": 1, "seqlen": 32}}


# ---------- the one function ----------

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weights.safetensors").write_bytes(b"x")
    (model / "sub").mkdir()
    (model / "sub" / "inner.json").write_text("{}")
    (tmp_path / "outside.safetensors").write_bytes(b"secret")
    return model


@pytest.mark.parametrize("reference", [
    "../outside.safetensors", "sub/../../outside.safetensors", "/etc/passwd",
    "/proc/self/fd/0", "a\x00b", "sub\\..\\..\\outside.safetensors", "C:/x", "", "x\n",
    "\ud800", "sub",
])
def test_model_file_refuses_what_is_not_a_regular_file_inside(folder: Path,
                                                              reference: str) -> None:
    with pytest.raises(UnsafeModelFile, match="not a regular file inside the model folder"):
        model_file(folder, reference)


def test_model_file_returns_plain_files_and_links_that_stay_inside(folder: Path) -> None:
    (folder / "alias.safetensors").symlink_to("weights.safetensors")
    assert model_file(folder, "weights.safetensors") == (folder / "weights.safetensors").resolve()
    assert model_file(folder, "sub/inner.json") == (folder / "sub/inner.json").resolve()
    assert model_file(folder, "alias.safetensors") == (folder / "weights.safetensors").resolve()


def test_links_out_pipes_and_dangling_links_are_refused_alike(folder: Path) -> None:
    """A link out of the folder is refused whether its target exists or not, with the same
    words: nothing tells a caller what lies outside."""
    (folder / "out.safetensors").symlink_to(folder.parent / "outside.safetensors")
    (folder / "nowhere.safetensors").symlink_to(folder.parent / "no-such-file")
    os.mkfifo(folder / "pipe.safetensors")
    messages = []
    for name in ("out.safetensors", "nowhere.safetensors", "pipe.safetensors"):
        with pytest.raises(UnsafeModelFile) as refused:
            model_file(folder, name)
        messages.append(str(refused.value).replace(name, "NAME"))
    assert len(set(messages)) == 1


def test_a_missing_plain_name_is_file_not_found(folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing from the model folder"):
        model_file(folder, "absent.safetensors")


def test_json_reads_are_bounded(folder: Path) -> None:
    (folder / "big.json").write_text("[" * 20 + "]" * 20)
    with pytest.raises(UnsafeModelFile, match="larger than 10 bytes"):
        model_files.read_json(model_file(folder, "big.json"), max_bytes=10)
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UnsafeModelFile, match="not valid JSON"):
        model_files.model_json(folder, "deep.json")


# ---------- hostile folders ----------

@pytest.fixture(scope="module")
def victim(tmp_path_factory, tiny_llama_folder: Path) -> Path:
    """Another key's model, beside the attacker's (as uploads/<key>/<name> are)."""
    root = tmp_path_factory.mktemp("uploads")
    target = root / "bob" / "secret-model"
    shutil.copytree(tiny_llama_folder, target)
    return target


def _hostile_copy(source: Path, destination: Path, weight_map_target: str) -> Path:
    """The probe's upload: a tiny model whose index maps every tensor to `weight_map_target`."""
    shutil.copytree(source, destination)
    names = list(model_files.header(destination / "model.safetensors"))
    (destination / "model.safetensors").unlink()
    (destination / INDEX_FILE).write_text(json.dumps(
        {"metadata": {}, "weight_map": dict.fromkeys(names, weight_map_target)}))
    return destination


def _attacks(tmp_path: Path, tiny: Path, victim: Path) -> dict[str, Path]:
    """One folder per way the probe (and its variants) named a file that is not its own."""
    attacker = victim.parent.parent / "alice"
    attacker.mkdir(exist_ok=True)
    relative = os.path.relpath(victim / "model.safetensors", attacker / "x")
    folders = {
        "index ../": _hostile_copy(tiny, attacker / f"dotdot-{tmp_path.name}", relative),
        "index absolute": _hostile_copy(tiny, attacker / f"abs-{tmp_path.name}",
                                        str(victim / "model.safetensors")),
        "index /proc pipe": _hostile_copy(tiny, attacker / f"proc-{tmp_path.name}",
                                          "/proc/self/fd/0"),
    }
    piped = _hostile_copy(tiny, attacker / f"fifo-{tmp_path.name}", "pipe.safetensors")
    os.mkfifo(piped / "pipe.safetensors")
    folders["index names a pipe inside"] = piped
    linked = attacker / f"link-{tmp_path.name}"
    shutil.copytree(tiny, linked)
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(victim / "model.safetensors")
    folders["weights are a link out"] = linked
    tokenizer = attacker / f"tok-{tmp_path.name}"
    shutil.copytree(tiny, tokenizer)
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    config["fast_tokenizer_files"] = [relative.replace("model.safetensors", "tokenizer.json")]
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    folders["tokenizer names a file outside"] = tokenizer
    return folders


class OpenWatch:
    """Every path the process opens while watching: Python's `open` audit events, and each
    call of safetensors' `safe_open` under any module's binding of it."""

    def __init__(self) -> None:
        self.opened: list[Path] = []
        self.watching = False

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.watching and event == "open" and isinstance(args[0], str | bytes):
            with contextlib.suppress(ValueError):  # a NUL in the path: open() refuses it next
                self.opened.append(Path(os.fsdecode(args[0])))

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def watched(filename: Any, *args: Any, **kwargs: Any) -> Any:
            if self.watching:
                self.opened.append(Path(os.fsdecode(filename)))
            return original(filename, *args, **kwargs)
        return watched

    def inside(self, folder: Path) -> set[Path]:
        root = folder.resolve()
        return {p.resolve() for p in self.opened if p.resolve().is_relative_to(root)}


_HOOKED: list[OpenWatch] = []


def _rebind(monkeypatch: pytest.MonkeyPatch, original: Any, replacement: Any) -> None:
    """Replace every module-level binding of `original` (`from x import f` copies it)."""
    for module in list(sys.modules.values()):
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if value is original:
                monkeypatch.setattr(module, name, replacement)


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenWatch]:
    import safetensors
    import transformers.modeling_utils  # noqa: F401 - bind its safe_open before we rebind

    watcher = OpenWatch()
    if not _HOOKED:  # audit hooks cannot be removed: one per process, pointed at the current
        sys.addaudithook(lambda event, args: _HOOKED[-1].hook(event, args))
    _HOOKED.append(watcher)
    _rebind(monkeypatch, safetensors.safe_open, watcher.wrap(safetensors.safe_open))
    yield watcher
    watcher.watching = False


def _compress(placement: str) -> Callable[[Path, Path], Any]:
    def run(folder: Path, out: Path) -> Any:
        from compressors.pipeline import compress

        recipe = Recipe.model_validate({**RECIPE, "placement": placement})
        return compress(folder, recipe, out, overwrite=True)
    return run


def _admission(folder: Path, _out: Path) -> Any:
    from compressors.memory import Limits
    from jobs.admission import admission_errors

    return admission_errors(str(folder), Recipe.model_validate(RECIPE), Limits(64 * 1024**3))


def _estimate(folder: Path, _out: Path) -> Any:
    from compressors.memory import estimate_source

    return estimate_source(folder, Recipe.model_validate(RECIPE))


def _in_memory(folder: Path, _out: Path) -> Any:
    from compressors.io.loading import load_model

    return load_model(folder)


def _skeleton_and_blocks(folder: Path, _out: Path) -> Any:
    """What a streamed run does first: the skeleton, then a block's tensors by name."""
    import torch

    from compressors.io.loading import load_skeleton, resolve_model
    from compressors.io.stream import TensorSource

    source = resolve_model(folder)
    load_skeleton(source, torch.float32)
    tensors = TensorSource(source)
    return tensors.load(tensors.names("model.layers.0."))


def _library_load(folder: Path, _out: Path) -> Any:
    from compressors import load

    return load(folder)


LOADERS: dict[str, Callable[[Path, Path], Any]] = {
    "in memory": _in_memory,
    "compress in memory": _compress("in_memory"),
    "compress onloaded": _compress("onloaded"),
    "compress streamed": _compress("streamed"),
    "skeleton + tensor source": _skeleton_and_blocks,
    "submission header reads": _admission,
    "memory estimate": _estimate,
    "compressors.load": _library_load,
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("loader", list(LOADERS))
def test_no_loader_opens_what_a_hostile_folder_names(loader: str, tmp_path: Path, watch,
                                                     tiny_llama_folder: Path,
                                                     victim: Path) -> None:
    """The probe's folders: each loader refuses, the other key's weights are never opened,
    and no message quotes them (their tensor names)."""
    victim_file = (victim / "model.safetensors").resolve()
    victim_names = list(model_files.header(victim_file))[:3]
    for attack, folder in _attacks(tmp_path, tiny_llama_folder, victim).items():
        watch.watching = True
        with pytest.raises((UnsafeModelFile, FileNotFoundError)) as refused:
            LOADERS[loader](folder, tmp_path / "out")
        watch.watching = False
        opened = {p.resolve() for p in watch.opened}
        assert victim_file not in opened, f"{loader} opened the victim's weights ({attack})"
        assert victim.resolve() not in {p.parent for p in opened}, (loader, attack)
        assert not any(name in str(refused.value) for name in victim_names), (loader, attack)


def test_refusals_do_not_say_whether_the_outside_file_exists(tmp_path: Path,
                                                             tiny_llama_folder: Path,
                                                             victim: Path) -> None:
    attacker = victim.parent.parent / "alice"
    attacker.mkdir(exist_ok=True)
    there = _hostile_copy(tiny_llama_folder, attacker / "probe-exists",
                          str(victim / "model.safetensors"))
    absent = _hostile_copy(tiny_llama_folder, attacker / "probe-absent",
                           str(victim / "no-such.safetensors"))
    messages = []
    for folder, target in ((there, "model.safetensors"), (absent, "no-such.safetensors")):
        with pytest.raises(UnsafeModelFile) as refused:
            check_model_folder(folder)
        messages.append(str(refused.value).replace(str(victim / target)[:80], "TARGET"))
    assert messages[0] == messages[1]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_file_a_loader_opens_came_from_model_file(loader: str, tmp_path: Path, watch,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        tiny_llama_folder: Path) -> None:
    """A sharded model with an index, a tokenizer and a link inside the folder: every file any
    loader opens inside it is one that `model_file` returned (the check fails if a loader
    opens a model file by a path of its own)."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "sharded"
    shutil.copytree(tiny_llama_folder, folder)
    tensors = _load_all(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shard_names = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shard_names.items():
        save_file({n: tensors[n].contiguous() for n in part}, str(folder / file),
                  metadata={"format": "pt"})
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": {
        n: file for file, part in shard_names.items() for n in part}}))
    del tensors
    torch.manual_seed(0)
    returned: set[Path] = set()
    original = model_files.model_file

    def recording(*args: Any, **kwargs: Any) -> Path:
        path = original(*args, **kwargs)
        returned.add(path.resolve())
        return path

    _rebind(monkeypatch, original, recording)
    watch.watching = True
    LOADERS[loader](folder, tmp_path / "out")
    watch.watching = False
    opened = watch.inside(folder)
    assert opened, f"{loader} opened nothing in the folder: the watch is blind"
    assert opened <= returned, f"{loader} opened {sorted(opened - returned)} without model_file"
    assert any(p.name.startswith("model-0000") for p in opened), f"{loader}: no shard seen"


def _load_all(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))
