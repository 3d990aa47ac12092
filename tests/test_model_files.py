"""Bad model files: each is one line naming the file and the problem, and no config makes llavarad read a file
outside the model folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from llavarad_cli.errors import UserError


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    from llavarad_cli.testing import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("bad-model-files")
    for layout in ("released", "native"):
        write_tiny_checkpoint(root / layout, layout)
    return root


def _copy(originals: Path, layout: str, tmp_path: Path) -> Path:
    folder = tmp_path / layout
    shutil.copytree(originals / layout, folder)
    return folder


def _load(folder: Path, layout: str):
    from llavarad_cli.model.loading import load_model

    return load_model(str(folder), str(folder / "base") if layout == "released" else None, device="cpu")


def _edit_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def _truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _reshape_all(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: torch.zeros(3, 3) for k in load_file(str(path))}, str(path))


def _reshape_norms(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file({k: torch.zeros(3) if "norm" in k else v for k, v in state.items()}, str(path), metadata={"format": "pt"})


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _malicious_base_bin(folder: Path) -> None:
    """The base LM's weights as a pickle that runs a command when unpickled without weights_only."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "base" / "model.safetensors"))
    (folder / "base" / "model.safetensors").unlink()
    state["payload"] = _Payload()
    torch.save(state, folder / "base" / "pytorch_model.bin")


# (id, layout, how to break a copy, the file the line must name, words it must say)
CASES = [
    ("truncated projector", "native", lambda d: _truncate(d / "projector.safetensors"),
     "projector.safetensors", "not a readable safetensors file"),
    ("garbage tower weights", "native", lambda d: (d / "vision_tower.safetensors").write_bytes(b"\0junk" * 50),
     "vision_tower.safetensors", "not a readable safetensors file"),
    ("truncated adapter", "native", lambda d: _truncate(d / "adapter_model.safetensors", 300),
     "adapter_model.safetensors", "not a readable safetensors file"),
    ("truncated base LM", "native", lambda d: _truncate(d / "base" / "model.safetensors", 5000),
     "model.safetensors", "not a readable safetensors file"),
    ("garbage released pickle", "released", lambda d: (d / "non_lora_trainables.bin").write_bytes(b"garbage"),
     "non_lora_trainables.bin", "not a readable torch file"),
    ("adapter of another shape", "native", lambda d: _reshape_all(d / "adapter_model.safetensors"),
     "adapter_model.safetensors", "another shape"),
    ("base LM of another shape", "native", lambda d: _reshape_norms(d / "base" / "model.safetensors"),
     "model.safetensors", "another shape"),
    ("tower of another shape", "native", lambda d: _reshape_all(d / "vision_tower.safetensors"),
     "vision_tower.safetensors", "do not fit"),
    ("select_layer a string", "native", lambda d: _edit_json(d / "llavarad.json", vision_tower={"select_layer": "x"}),
     "llavarad.json", "`select_layer` must be an integer"),
    ("select_layer a float", "native", lambda d: _edit_json(d / "llavarad.json", vision_tower={"select_layer": 1.5}),
     "llavarad.json", "`select_layer` must be an integer"),
    ("released select_layer a word", "released",
     lambda d: _edit_json(d / "config.json", mm_vision_select_layer="penultimate"),
     "config.json", "`mm_vision_select_layer` must be an integer"),
    ("projector_type a number", "native", lambda d: _edit_json(d / "llavarad.json", projector_type=2),
     "llavarad.json", "`projector_type` must be a string"),
    ("mm_hidden_size a string", "released", lambda d: _edit_json(d / "config.json", mm_hidden_size="768"),
     "config.json", "`mm_hidden_size` must be an integer"),
    ("vision_tower a string", "native", lambda d: _edit_json(d / "llavarad.json", vision_tower="tower"),
     "llavarad.json", "`vision_tower` must be an object"),
    ("extra a list", "native", lambda d: _edit_json(d / "llavarad.json", extra=[1]),
     "llavarad.json", "`extra` must be an object"),
    ("config a list", "released", lambda d: (d / "config.json").write_text("[]"),
     "config.json", "must be a JSON object"),
    ("adapter r a string", "native", lambda d: _edit_json(d / "adapter_config.json", r="four"),
     "adapter_config.json", "`r` must be an integer"),
    ("adapter alpha a string", "released", lambda d: _edit_json(d / "adapter_config.json", lora_alpha="big"),
     "adapter_config.json", "`lora_alpha` must be a number"),
    ("adapter targets a number", "native", lambda d: _edit_json(d / "adapter_config.json", target_modules=5),
     "adapter_config.json", "`target_modules` must be"),
    ("adapter config not JSON", "native", lambda d: (d / "adapter_config.json").write_text("{nope"),
     "adapter_config.json", "not valid JSON"),
    ("base LM config of the wrong type", "native", lambda d: _edit_json(d / "base" / "config.json", hidden_size="x"),
     "config.json", "hidden_size"),
    ("tower image_size a string", "native", lambda d: _edit_json(d / "vision_tower.json", vision_cfg={"image_size": "x"}),
     "vision_tower.json", "`image_size` must be"),
    ("tower weights outside the folder", "native",
     lambda d: _edit_json(d / "llavarad.json", vision_tower={"weights": "../native-elsewhere/vision_tower.safetensors"}),
     "llavarad.json", "points outside the model folder"),
    ("tower config by absolute path", "native",
     lambda d: _edit_json(d / "llavarad.json", vision_tower={"config": str((d / "vision_tower.json").resolve())}),
     "llavarad.json", "points outside the model folder"),
    ("base LM folder outside the folder", "native", lambda d: _edit_json(d / "llavarad.json", base_lm="../base"),
     "llavarad.json", "points outside the model folder"),
    ("malicious base LM pickle", "native", _malicious_base_bin, "pytorch_model.bin", "refusing to unpickle"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_model_file_is_one_line_naming_the_file(originals, tmp_path, capfd, case):
    _, layout, breaks, file_name, words = case
    folder = _copy(originals, layout, tmp_path)
    # A folder beside the copy, for the configs that name a file outside it: it must not be read.
    shutil.copytree(originals / layout, tmp_path / "native-elsewhere")
    shutil.copytree(originals / layout / "base", tmp_path / "base")
    breaks(folder)
    with pytest.raises(UserError) as err:
        _load(folder, layout)
    line = err.value.one_line()
    assert file_name in line and words in line, line
    assert "this must never run" not in capfd.readouterr().out


def test_the_cli_prints_one_line_for_a_bad_model_file(originals, tmp_path):
    from typer.testing import CliRunner

    from llavarad_cli.cli import app

    folder = _copy(originals, "native", tmp_path)
    _truncate(folder / "projector.safetensors")
    image = Path(__file__).parent / "data" / "cxr-images" / "iu" / "CXR7_IM-2263-1001.png"
    result = CliRunner().invoke(app, ["infer", "--model", str(folder), "--image", str(image), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if "projector.safetensors" in ln]
    assert len(errors) == 1 and "not a readable safetensors file" in errors[0]


def test_a_symlink_out_of_the_model_folder_is_refused(originals, tmp_path):
    folder = _copy(originals, "native", tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.move(folder / "vision_tower.safetensors", outside)
    (folder / "vision_tower.safetensors").symlink_to(outside)
    with pytest.raises(UserError) as err:
        _load(folder, "native")
    assert "vision_tower.safetensors" in err.value.one_line() and "leads outside the model folder" in err.value.one_line()


def test_a_hub_cache_snapshot_may_link_into_its_own_blobs(originals, tmp_path, monkeypatch):
    """How the Hugging Face cache stores a download: snapshot files are links to ../../blobs/<hash>. A native
    checkpoint from the hub is read from such a snapshot folder, confined to its repo."""
    import huggingface_hub.constants as c

    from llavarad_cli.model.loading import load_model

    repo = tmp_path / "cache" / "models--someone--tiny-llavarad"
    snapshot, blobs = repo / "snapshots" / ("0" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for i, path in enumerate(sorted(p for p in (originals / "native").iterdir() if p.is_file())):
        shutil.copy(path, blobs / f"blob{i}")
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    base = str(originals / "native" / "base")
    model, _ = load_model("someone/tiny-llavarad", base, device="cpu")
    assert model.config.extra["layout"] == "native"
    # The same links from a folder that is no snapshot lead out of it.
    plain = tmp_path / "plain"
    plain.mkdir()
    for link in snapshot.iterdir():
        (plain / link.name).symlink_to(link.resolve())
    with pytest.raises(UserError, match="leads outside the model folder"):
        load_model(str(plain), base, device="cpu")


def test_trust_pickle_never_applies_to_the_base_lm(originals, tmp_path, capfd):
    from llavarad_cli.model.loading import load_model

    folder = _copy(originals, "native", tmp_path)
    _malicious_base_bin(folder)
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_model(str(folder), device="cpu", trust_pickle=True)
    assert "this must never run" not in capfd.readouterr().out


def test_a_good_base_lm_still_shows_transformers_warnings(originals, tmp_path):
    """The load report is held back only to be replaced by our line; a model that loads says what it said."""
    from safetensors.torch import load_file, save_file

    folder = _copy(originals, "native", tmp_path)
    state = load_file(str(folder / "base" / "model.safetensors"))
    state["extra.weight"] = torch.zeros(2)  # unexpected: loads, with transformers' report
    save_file(state, str(folder / "base" / "model.safetensors"), metadata={"format": "pt"})
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    keep = Keep(logging.WARNING)
    logging.getLogger("transformers").addHandler(keep)
    try:
        model, _ = _load(folder, "native")
    finally:
        logging.getLogger("transformers").removeHandler(keep)
    assert model.config.extra["layout"] == "native"
    assert any("LOAD REPORT" in m and "extra.weight" in m for m in seen), seen
