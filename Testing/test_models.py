"""The model registry: the shipped manifest and what update_manifest writes follow its JSON schema."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from SCPMNoduleLib import models
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import sha256_of
from SCPMNoduleLib.models import manifest_entry, read_manifest, resolve_model, update_manifest

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "Resources" / "Models.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_shipped_manifest_validates_and_its_files_match_their_checksums():
    path = REPO / "Resources" / "Models.json"
    VALIDATOR.validate(json.loads(path.read_text(encoding="utf-8")))
    manifest = read_manifest(path)
    assert manifest["models"], "the repository ships at least the demo model"
    for entry in manifest["models"]:
        assert resolve_model(entry["name"]) == (path.parent / entry["file"], entry)


def _entry(tmp_path, name="mine", file="w.pt", **changes):
    checkpoint = tmp_path / file
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(name.encode())
    values = {"name": name, "version": "1.0", "architecture": "SCPM-Net, tiny", "training_data": "none",
              "description": "a test", "metrics": {"cpm": 0.5, "fp_rates": [0.125, 8.0], "sensitivities": [0.25, 0.75],
                                                   "n_scans": 2, "n_nodules": 4, "cpm_95ci": [0.25, 0.75]}}
    return manifest_entry(checkpoint, manifest=tmp_path / "Models.json", **{**values, **changes})


def test_update_manifest_writes_valid_manifests_and_replaces_an_entry_by_name(tmp_path):
    path = tmp_path / "Models.json"
    update_manifest(path, _entry(tmp_path))
    update_manifest(path, _entry(tmp_path, name="other", file="sub/o.pt", metrics=None))
    update_manifest(path, _entry(tmp_path, version="2.0"))
    document = json.loads(path.read_text(encoding="utf-8"))
    VALIDATOR.validate(document)
    assert [(m["name"], m["version"], m["file"]) for m in document["models"]] == [
        ("mine", "2.0", "w.pt"), ("other", "1.0", "sub/o.pt")]
    assert document["models"][1]["sha256"] == sha256_of(tmp_path / "sub" / "o.pt")
    assert document["models"][1]["metrics"] == {}
    assert "path" not in document


def test_the_schema_catches_what_the_writer_must_not_write(tmp_path):
    document = {"format": "scpm-nodule-models", "version": 1, "models": [_entry(tmp_path)]}
    VALIDATOR.validate(document)
    for change in ({"sha256": "ABC"}, {"file": "../w.pt"}, {"nmae": "typo"}, {"metrics": {"cpm": 2.0}}):
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate({**document, "models": [{**document["models"][0], **change}]})


def test_an_entry_for_a_checkpoint_outside_the_manifests_folder_is_refused(tmp_path):
    (tmp_path / "elsewhere.pt").write_bytes(b"x")
    with pytest.raises(UserInputError, match="must lie in"):
        manifest_entry(tmp_path / "elsewhere.pt", name="x", version="1", architecture="", training_data="",
                       manifest=tmp_path / "Resources" / "Models.json")


@pytest.mark.parametrize("document, message", [
    ({"format": "other", "version": 1, "models": []},
     r"Models.json: the file is not a model manifest \(its format is 'other', not 'scpm-nodule-models'\)"),
    ({"format": "scpm-nodule-models", "version": 2, "models": []},
     "Models.json: scpm-nodule-models version 2 is not the version 1 this program reads"),
    ([], r"Models.json: the file is not a model manifest \(it holds an array"),
])
def test_foreign_manifests_are_refused(tmp_path, document, message):
    (tmp_path / "Models.json").write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(UserInputError, match=message):
        read_manifest(tmp_path / "Models.json")


def test_without_a_manifest_there_are_no_named_models(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "MANIFEST_CANDIDATES", (tmp_path / "Models.json",))
    assert read_manifest()["models"] == [] and read_manifest()["path"] is None
    with pytest.raises(UserInputError, match="known: none"):
        resolve_model("demo")


def test_the_registry_loads_without_torch():
    """The Slicer module lists the models in Slicer's own process, before PyTorch is installed."""
    code = ("import sys; from SCPMNoduleLib.models import read_manifest; read_manifest(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"


@pytest.fixture
def manifest_with_demo(tmp_path, monkeypatch):
    """A manifest naming 'demo' (resources/w.pt), made the default; the working directory is tmp_path."""
    (tmp_path / "resources").mkdir()
    checkpoint = tmp_path / "resources" / "w.pt"
    checkpoint.write_bytes(b"the manifest's model")
    update_manifest(tmp_path / "resources" / "Models.json",
                    manifest_entry(checkpoint, name="demo", version="1", architecture="a", training_data="none",
                                   manifest=tmp_path / "resources" / "Models.json"))
    monkeypatch.setattr(models, "MANIFEST_CANDIDATES", (tmp_path / "resources" / "Models.json",))
    monkeypatch.chdir(tmp_path)
    return checkpoint


def test_a_local_file_never_stands_in_for_a_named_model(manifest_with_demo):
    Path("demo").write_bytes(b"a local file called demo")
    assert resolve_model("demo") == (manifest_with_demo, read_manifest()["models"][0])
    assert resolve_model("./demo") == (Path("./demo"), {})
    assert resolve_model(Path("demo")) == (Path("demo"), {})  # a Path object is a path


def test_an_unknown_name_is_not_a_file_even_when_one_has_its_name(manifest_with_demo):
    Path("mine").write_bytes(b"a local file")
    with pytest.raises(UserInputError, match=r"^mine: not a model name in the manifest \(known: demo\); to load the "
                                             r"local file mine, write it as a path: \./mine\.$"):
        resolve_model("mine")
    with pytest.raises(UserInputError, match=r"^other: not a model name in the manifest \(known: demo\)\.$"):
        resolve_model("other")


@pytest.mark.parametrize("written, is_path", [
    ("./w.pt", True), ("resources/w.pt", True), ("ABSOLUTE", True), ("w.pt", True), ("missing.pt", False),
])
def test_a_path_is_what_is_written_as_one(manifest_with_demo, written, is_path):
    Path("w.pt").write_bytes(b"a checkpoint here")
    written = str(manifest_with_demo) if written == "ABSOLUTE" else written
    if is_path:
        assert resolve_model(written) == (Path(written), {})
    else:  # an absent .pt file is a name, and no model has it
        with pytest.raises(UserInputError, match=r"^missing.pt: not a model name in the manifest"):
            resolve_model(written)
    with pytest.raises(UserInputError, match=r"^\./absent: checkpoint file not found\.$"):
        resolve_model("./absent")


@pytest.mark.parametrize("name", ["", "./demo", "a/b", "/abs", "model.pt"])
def test_a_model_name_that_would_read_as_a_path_is_refused(name):
    with pytest.raises(UserInputError, match=r"or it would be read as a file\.$"):
        models.check_model_name(name)


def test_both_command_lines_say_how_a_file_differs_from_a_name(capsys):
    from SCPMNoduleLib.cli import build_parser as nodule_parser
    from Training.cli import build_parser as train_parser

    for parser, command in ((nodule_parser(), "detect"), (nodule_parser(), "demo"), (train_parser(), "tune")):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert models.MODEL_HELP in " ".join(capsys.readouterr().out.split())
    assert "./NAME" in models.MODEL_HELP and "a bare name never loads a local file" in models.MODEL_HELP
