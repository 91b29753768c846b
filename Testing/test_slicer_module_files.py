"""The Slicer module's files: the .ui matches the Widget code, the CMake files declare what Slicer's
extension template requires, and the MRML logic stays free of Qt."""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SCPMNodule"
MODULE_FILE = MODULE_DIR / "SCPMNodule.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SCPMNodule.ui"

# Which widget classes offer a signal, property or method the Widget code uses (Qt / CTK / qMRML API).
BUTTONS = {"QPushButton", "QToolButton", "ctkPushButton"}
PROVIDERS = {
    "clicked(bool)": BUTTONS | {"QCheckBox"},
    "setShortcut": BUTTONS,
    "currentTextChanged(QString)": {"QComboBox", "ctkComboBox"},
    "setCurrentText": {"QComboBox", "ctkComboBox"},
    "addItems": {"QComboBox", "ctkComboBox"},
    "currentPathChanged(QString)": {"ctkPathLineEdit"},
    "editingFinished()": {"QDoubleSpinBox", "ctkDoubleSpinBox", "QSpinBox", "QLineEdit"},
    "valueChanged(double)": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget"},
    "clear": {"QComboBox", "ctkComboBox", "QLineEdit"},
    "currentText": {"QComboBox", "ctkComboBox"},
    "selectionChanged()": {"qMRMLTableView"},
    "setMRMLTableNode": {"qMRMLTableView"},
    "selectRow": {"qMRMLTableView", "QTableView"},
    "currentIndex": {"qMRMLTableView", "QTableView", "QComboBox"},
    "directory": {"ctkDirectoryButton"},
    "value": {"QProgressBar", "QSpinBox", "QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget"},
    "text": BUTTONS | {"QLabel", "QLineEdit", "QCheckBox"},
    "toolTip": None,
    "enabled": None,
}

# Parameter types (SCPMNoduleParameterNode) and the widgets parameterNodeWrapper.connectGui binds them to.
BINDABLE = {
    "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"},
    "bool": {"QCheckBox"},
    "int": {"QSpinBox", "QSlider", "ctkSliderWidget"},
    "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget", "ctkRangeWidget"},
    "str": {"QComboBox", "QLineEdit"},
    "Path": {"ctkDirectoryButton", "ctkPathLineEdit"},
}
QT_WIDGETS = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QCheckBox",
              "QProgressBar", "QTableView", "QLineEdit"}


@pytest.fixture(scope="module")
def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    widgets = {w.get("name"): w for w in root.iter("widget")}
    assert len(widgets) == len(list(root.iter("widget"))), "widget names must be unique"
    return widgets


def _ui_uses(source: str) -> dict[str, set[str]]:
    """``{widget name: {members and connected signals}}`` for every ``self.ui.<name>`` in the source."""
    uses: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            continue
        uses.setdefault(node.attr, set())
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui":
            if node.attr != "connect":
                uses[node.value.attr].add(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect" \
                and isinstance(node.func.value, ast.Attribute) \
                and isinstance(node.func.value.value, ast.Attribute) and node.func.value.value.attr == "ui":
            uses[node.func.value.attr].add(node.args[0].value)
    for tuple_node in ast.walk(ast.parse(source)):  # (self.ui.button, "Alt+N") pairs given to setShortcut
        if isinstance(tuple_node, ast.For) and "setShortcut" in ast.unparse(tuple_node.body[0]):
            for element in tuple_node.iter.elts:
                uses[element.elts[0].attr].add("setShortcut")
    return uses


def test_ui_file_parses_with_a_qmrmlwidget_root_named_after_the_module(ui_widgets):
    root = ET.parse(UI_FILE).getroot()
    assert root.findtext("class") == "SCPMNodule"
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "SCPMNodule")


def test_every_widget_the_widget_code_uses_exists_with_a_class_that_has_what_it_uses(ui_widgets):
    uses = _ui_uses(MODULE_FILE.read_text(encoding="utf-8"))
    assert {"applyButton", "progressBar", "nodulesTableView", "acceptButton", "rejectButton"} <= set(uses)
    for name, members in uses.items():
        assert name in ui_widgets, f"self.ui.{name} is not in {UI_FILE.name}"
        widget_class = ui_widgets[name].get("class")
        for member in members:
            allowed = PROVIDERS.get(member, "unknown")
            assert allowed != "unknown", f"the test does not know which widgets offer {member!r}"
            assert allowed is None or widget_class in allowed, f"{name} is a {widget_class}, which lacks {member}"


def _parameter_fields() -> dict[str, str]:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SCPMNoduleParameterNode")
    fields = {}
    for statement in wrapper.body:
        if isinstance(statement, ast.AnnAssign):
            annotation = statement.annotation
            if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
                annotation = annotation.slice.elts[0]
            fields[statement.target.id] = ast.unparse(annotation)
    return fields


def test_parameter_defaults_come_from_the_logics_settings():
    """One home for each default (threshold, model, ...): DetectionSettings and ReviewStyle, not a literal."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SCPMNoduleParameterNode")
    defaults = {s.target.id: ast.unparse(s.value) for s in wrapper.body if isinstance(s, ast.AnnAssign) and s.value}
    assert defaults == {
        "model": "DETECTION_DEFAULTS.model", "device": "DETECTION_DEFAULTS.device",
        "threshold": "DETECTION_DEFAULTS.threshold", "maxDetections": "DETECTION_DEFAULTS.max_detections",
        "sphereOpacity": "REVIEW_DEFAULTS.sphere_opacity", "hideRejected": "False",
        "includeRejectedInExport": "False", "addDiameter": "REVIEW_DEFAULTS.default_diameter_mm",
    }


def test_parameter_bound_widgets_name_real_parameters_of_a_bindable_type(ui_widgets):
    fields = _parameter_fields()
    bound = {}
    for widget in ui_widgets.values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "SlicerParameterName must be a dynamic property"
                bound[prop.findtext("string")] = widget.get("class")
    assert bound, "no widget is bound to the parameter node"
    for parameter, widget_class in bound.items():
        assert parameter in fields, f"{parameter} is not a field of SCPMNoduleParameterNode"
        assert widget_class in BINDABLE[fields[parameter]], \
            f"{parameter}: {widget_class} cannot show a {fields[parameter]}"
    assert {"inputVolume", "device", "threshold", "maxDetections"} <= set(bound)


def test_custom_widgets_are_declared_and_mrml_widgets_receive_the_scene(ui_widgets):
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in ui_widgets.values()}
    assert used - QT_WIDGETS <= declared
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml_widgets = {name for name, w in ui_widgets.items()
                    if w.get("class").startswith("qMRML") and name != "SCPMNodule"}
    assert mrml_widgets and mrml_widgets <= receivers


def test_module_defines_the_four_classes_slicer_expects():
    classes = {n.name: [ast.unparse(b) for b in n.bases]
               for n in ast.parse(MODULE_FILE.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["SCPMNodule"]
    assert "ScriptedLoadableModuleWidget" in classes["SCPMNoduleWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["SCPMNoduleLogic"]
    assert "ScriptedLoadableModuleTest" in classes["SCPMNoduleTest"]


def test_mrml_logic_imports_no_gui():
    for path in (MODULE_DIR / "SCPMNoduleMRML").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"qt", "ctk", "PythonQt"}, f"{path.name} imports {name}"
                assert name not in {"slicer.util", "slicer.ScriptedLoadableModule"}, f"{path.name} imports {name}"


def _cmake(path: Path) -> str:
    """The file without comments (a ``#`` opening a line or following a closing parenthesis)."""
    return re.sub(r"(?m)(^|(?<=\)))[ \t]*#.*$", "", path.read_text(encoding="utf-8"))


def test_extension_cmake_declares_what_the_extension_template_requires():
    text = _cmake(REPO / "CMakeLists.txt")
    assert re.search(r"cmake_minimum_required\(VERSION [\d.]+", text)
    assert re.search(r"project\(SCPMNodule\)", text)
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                     "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        match = re.search(rf'set\({variable} "([^"]+)"\)', text)
        assert match and match.group(1).strip(), f"{variable} is not set"
    assert re.search(r'set\(EXTENSION_DEPENDS "?PyTorch"?\)', text)
    order = [text.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                     "add_subdirectory(SCPMNodule)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                     "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)


def test_module_cmake_builds_the_module_its_logic_and_the_shared_library():
    text = _cmake(MODULE_DIR / "CMakeLists.txt")
    assert "set(MODULE_NAME SCPMNodule)" in text and "slicerMacroBuildScriptedModule(" in text
    listed = set(re.findall(r"\$\{MODULE_NAME\}(MRML/\w+\.py|\.py)", text))
    logic_files = {f"MRML/{p.name}" for p in (MODULE_DIR / "SCPMNoduleMRML").glob("*.py")}
    assert listed == logic_files | {".py"}, "every SCPMNoduleMRML file must be installed"
    for resource in re.findall(r"(Resources/\S+)", text.split("slicerMacroBuildScriptedModule(")[0]):
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "SCPMNodule")).is_file(), resource
    library = text.split("ctkMacroCompilePythonScript(")[1]
    assert "SCPMNoduleLib/*.py" in text and "SOURCE_DIR ${PROJECT_SOURCE_DIR}" in library
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in library
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in library


def test_the_self_test_is_registered_once():
    registrations = [(path, text.count("slicer_add_python_unittest("))
                     for path in REPO.rglob("CMakeLists.txt") if ".venv" not in path.parts
                     for text in [_cmake(path)] if "slicer_add_python_unittest(" in text]
    assert registrations == [(MODULE_DIR / "CMakeLists.txt", 1)]
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in _cmake(MODULE_DIR / "CMakeLists.txt")


# ---------------------------------------------------------------- the Extensions Index's checks (issue 23)

DESCRIPTION_FILE = REPO / "SCPMNodule.json"
CATALOG_SCHEMA = REPO / "Testing" / "data" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
INDEX_CATEGORY = "Chest Imaging Platform"
"""In Slicer/ExtensionsIndex scripts/check_description_files.py ACCEPTED_EXTENSION_CATEGORIES
("Chest Imaging", the category used before, is not)."""


def _module_source() -> str:
    return MODULE_FILE.read_text(encoding="utf-8")


def _function(name: str) -> str:
    """The source of the method ``name`` of the module file (any class)."""
    for node in ast.walk(ast.parse(_module_source())):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.unparse(node)
    raise AssertionError(f"{name} not found")


def test_extension_description_follows_the_catalog_schema_and_the_index_checks():
    """What check_description_files.py checks offline: JSON schema, category, scm_url syntax, a
    repository name with 'slicer' in it, project() named like the file, http icon and
    screenshot URLs (of files that exist here), a licence file at the root."""
    import jsonschema

    metadata = json.loads(DESCRIPTION_FILE.read_text(encoding="utf-8"))
    schema = json.loads(CATALOG_SCHEMA.read_text(encoding="utf-8"))
    assert metadata["$schema"].split("#")[0] == schema["$id"].split("#")[0]
    jsonschema.validate(metadata, schema)
    assert metadata["category"] == INDEX_CATEGORY and metadata["scm_revision"]
    url = urlsplit(metadata["scm_url"])
    assert "://" in metadata["scm_url"] and url.scheme in ("git", "https")
    assert "slicer" in Path(url.path).stem.lower()
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.findall(r"project\s*\(\s*([^\s)]+)", cmake, re.IGNORECASE)[0] == DESCRIPTION_FILE.stem
    icon = re.search(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"\s*\)', cmake).group(1)
    screenshots = re.search(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake).group(1).split()
    for address in (icon, *screenshots):
        assert address.startswith("http") and address.endswith(".png")
        assert (REPO / address.split("/main/", 1)[1]).is_file(), address
    assert metadata["build_dependencies"] == ["PyTorch"] and 'set(EXTENSION_DEPENDS "PyTorch")' in cmake
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', cmake).group(1)
    assert re.fullmatch(r"[^()]+ \([^()]+\)(, [^()]+ \([^()]+\))*", contributors), "Name (Organisation), ..."


def test_category_is_the_index_accepted_one_in_cmake_and_module():
    assert f'set(EXTENSION_CATEGORY "{INDEX_CATEGORY}")' in (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f'self.parent.categories = ["{INDEX_CATEGORY}"]' in _module_source()


def test_licence_file_is_the_apache_2_0_text_pyproject_names():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text(encoding="utf-8")


# ---------------------------------------------------------------- Widget behaviours read from source and .ui


def test_export_folder_is_a_path_parameter_bound_to_the_directory_button_defaulting_to_the_scene_folder(ui_widgets):
    assert _parameter_fields()["exportDirectory"] == "Path"
    button = ui_widgets["exportDirectoryButton"]
    assert button.get("class") == "ctkDirectoryButton"
    assert any(p.get("name") == "SlicerParameterName" and p.findtext("string") == "exportDirectory"
               for p in button.findall("property"))
    assert "Path(slicer.app.defaultScenePath)" in _function("initializeParameterNode")
    assert "self._parameterNode.exportDirectory" in _function("onExport")
    assert "exportDirectoryButton" not in _module_source()


def test_adding_a_nodule_has_its_own_size_and_the_diameter_box_resizes_on_value_changed(ui_widgets):
    assert _parameter_fields()["addDiameter"] == "float"
    assert ui_widgets["addDiameterSpinBox"].get("class") == "QDoubleSpinBox"
    uses = _ui_uses(_module_source())
    assert uses["diameterSpinBox"] >= {"valueChanged(double)"} and "editingFinished()" not in uses["diameterSpinBox"]
    assert "addDiameter" in _function("onAddNodule") and "diameterSpinBox" not in _function("onAddNodule")
    assert "_updatingGui" in _function("selectNodule") and "_updatingGui" in _function("onDiameterChanged")


def test_shortcuts_are_main_window_shortcuts_enabled_while_the_module_is_shown():
    source = _module_source()
    assert "setShortcut" not in source
    assert "qt.QShortcut(qt.QKeySequence(keys), mainWindow)" in _function("setup")
    assert "shortcut.setEnabled(True)" in _function("enter") and "shortcut.setEnabled(False)" in _function("exit")
    tree = ast.parse(source)
    shortcuts = next(ast.literal_eval(n.value) for n in tree.body
                     if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "SHORTCUTS")
    assert {name for _, name in shortcuts} == {"next", "previous", "accept", "reject", "delete", "undo"}
    assert "Ctrl+Z" not in {keys for keys, _ in shortcuts}, "Ctrl+Z is Slicer's own Edit > Undo"


def test_detection_shows_the_lung_window_through_the_volumes_logic():
    finish = _function("finishDetection")
    assert "apply_lung_window(run.volume_node, slicer.modules.volumes.logic())" in finish
    assert "remove_reviews(run.volume_node, keep=review)" in finish
    assert 'LUNG_PRESET = "CT_LUNG"' in (MODULE_DIR / "SCPMNoduleMRML" / "volumes.py").read_text(encoding="utf-8")


def test_module_never_imports_torch_or_the_torch_side_of_the_library():
    """Not at the top, not in a function: PyTorch runs only in the background process."""
    for node in ast.walk(ast.parse(_module_source())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                assert name.split(".")[0] != "torch", name
                assert name not in {"SCPMNoduleLib.inference", "SCPMNoduleLib.network", "SCPMNoduleLib.cli"}, name
    assert "mrml.model_names()" in _module_source()


def test_pythonslicer_missing_is_said_plainly_and_the_self_test_never_installs_torch():
    assert "sys.executable" not in _module_source().split("class SCPMNoduleLogic")[1].split("class SCPMNoduleTest")[0]
    assert "PythonSlicer, Slicer's Python interpreter, was not found" in _function("startDetection")
    test = _function("test_DetectInBackground")
    assert "find_spec('torch') is None" in test and "ensureDependencies" not in test
    assert "finally:" in test and "run.cancel()" in test


def test_scene_close_cancels_the_run_and_clears_the_review_gui():
    close = _function("onSceneStartClose")
    assert "self.onApplyButton()" in close and "self.logic.detachReview()" in close
    assert "self.updateReviewGui()" in close
    assert "self._run.cancel()" in _function("onApplyButton").split("with slicer.util")[0]
    assert "flushRecovery" in _function("detachReview")


def test_the_table_view_is_set_only_when_the_table_changes():
    update = _function("updateReviewGui")
    assert "if table is not self._shownTable:" in update
    assert update.count("setMRMLTableNode") == 1
    assert update.index("if table is not self._shownTable:") < update.index("setMRMLTableNode")


def test_checkpoint_field_filters_pt_files(ui_widgets):
    filters = [p for p in ui_widgets["checkpointPathLineEdit"].findall("property") if p.get("name") == "nameFilters"]
    assert filters and "*.pt" in filters[0].find("stringlist").findtext("string")
