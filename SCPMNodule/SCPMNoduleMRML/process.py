"""Detection in a background process, so that Slicer's window stays responsive.

The module runs the library's command line (``python -m SCPMNoduleLib.cli detect INPUT --out DIR
--formats json ... --progress jsonl``) with an argument list, never a shell string. With
``--progress jsonl`` every stdout line is one JSON event::

    {"event": "progress", "scan": name, "fraction": 0..1, "stage": "read|resample|forward|decode|write"}
    {"event": "done", "scan": name, "outputs": {"json": path, ...}}
    {"event": "error", "scan": name, "message": sentence}

Two reader threads drain stdout and stderr so the child never blocks on a full pipe; the GUI
calls :meth:`DetectionProcess.poll` from a timer to collect the events that arrived. Cancelling
kills the whole process tree (the child runs in its own process group / session).

:class:`DetectionRun` is the whole job for one volume: write it to a temporary ``.nrrd``, run the
process, and on success turn the JSON report into a :class:`~.review.NoduleReview`. Nothing is
added to the scene before the run has succeeded, so a failed or cancelled run leaves the scene
as it was.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import SCPMNoduleLib
from SCPMNoduleLib.errors import EXIT_BAD_INPUT, UserInputError
from SCPMNoduleLib.export import read_detections_json
from SCPMNoduleLib.io import safe_file_name
from SCPMNoduleLib.models import read_manifest

from .nodules import ReviewStyle
from .review import NoduleReview
from .sidecar import attach_sidecar
from .volumes import check_input_volume, write_volume

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
"""The module's ``Resources/requirements.txt`` (installed beside it by CMake): the one list, in
Slicer, of the packages the detector's process needs."""


@dataclass(frozen=True)
class DetectionSettings:
    """What the user chose in the module panel."""

    model: str = "demo"
    """``demo``, a name in ``Resources/Models.json``, or a checkpoint file."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    threshold: float = 0.5
    """Detections with a lower probability are dropped."""
    max_detections: int = 100
    """At most this many detections per scan (LUNA16 counts at most 100)."""


@dataclass(frozen=True)
class ProgressEvent:
    """One line of the child's stdout. ``event`` is progress, done, error, or log (not JSON)."""

    event: str
    scan: str | None = None
    fraction: float | None = None
    stage: str | None = None
    outputs: dict = field(default_factory=dict)
    message: str | None = None


def detect_command(input_path: str | os.PathLike, out_dir: str | os.PathLike,
                   settings: DetectionSettings, python: str | None = None) -> list[str]:
    """The argument list that runs the detector on ``input_path``, writing its JSON into ``out_dir``."""
    return [
        python or sys.executable, "-m", "SCPMNoduleLib.cli", "detect", str(input_path),
        "--out", str(out_dir), "--formats", "json", "--model", str(settings.model),
        "--device", settings.device, "--threshold", repr(float(settings.threshold)),
        "--max-detections", str(int(settings.max_detections)), "--progress", "jsonl",
    ]


def detector_requirements(path: str | os.PathLike = REQUIREMENTS_FILE) -> dict[str, str]:
    """``{package: version specifier}`` from a requirements file, e.g. ``{"torch": ">=2.1", ...}``.

    Only the plain ``name specifier`` lines this project writes (``#`` starts a comment). Each
    package imports under its own name, so ``importlib.util.find_spec(package)`` tells whether
    it is installed.
    """
    requirements = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*([<>=!~][^;\s]*)?", text)
            if match is None:
                raise UserInputError(f"{path}: '{text}' is not a 'package>=version' line.")
            requirements[match.group(1)] = match.group(2) or ""
    return requirements


def model_names() -> list[str]:
    """The models of ``Models.json`` (read with json, never through PyTorch: this runs in Slicer's
    process as the panel is built), ``demo`` if it lists none or cannot be read."""
    try:
        return [model["name"] for model in read_manifest()["models"]] or ["demo"]
    except (UserInputError, KeyError, TypeError) as error:
        log.warning("Model list unavailable, offering only the demo model: %s", error)
        return ["demo"]


def model_version(name: str) -> str:
    """The manifest's version of model ``name``; ``unknown`` for a checkpoint file or an unreadable manifest."""
    try:
        entries = {model["name"]: model for model in read_manifest()["models"]}
    except (UserInputError, KeyError, TypeError):
        return "unknown"
    return str(entries.get(name, {}).get("version") or "unknown")


EXPORT_ONLY_PACKAGES = frozenset({"pydicom", "highdicom"})
"""Needed only to export a review as DICOM (imported there, on demand), not to detect."""


def ensure_dependencies(find_spec=importlib.util.find_spec) -> None:
    """Make sure the detector's process can run: PyTorch through the PyTorch extension (after
    asking), the rest of ``Resources/requirements.txt`` as Slicer ships it; an offline user with
    PyTorch is never asked. The DICOM export's packages (:data:`EXPORT_ONLY_PACKAGES`) are the
    export's business.

    Raises:
        UserInputError: the PyTorch extension is missing, PyTorch was not installed, or Slicer's
            Python lacks a package it ships.
    """
    requirements = detector_requirements()
    torch_version = requirements.pop("torch")
    if find_spec("torch") is None:
        try:  # here, not at the top: another extension's module, loaded after this one, or missing
            import PyTorchUtils
        except ModuleNotFoundError:
            raise UserInputError("This module needs the PyTorch extension: install 'PyTorch' from the "
                                 "Extensions Manager and restart Slicer.") from None
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if not torch_logic.torchInstalled() and torch_logic.installTorch(
                askConfirmation=True, torchVersionRequirement=torch_version) is None:
            raise UserInputError("PyTorch is needed to detect nodules, and it was not installed "
                                 "(declined, or no internet connection).")
    missing = [p for p in requirements if p not in EXPORT_ONLY_PACKAGES and find_spec(p) is None]
    if missing:  # they come with Slicer: nothing to install, something is broken
        raise UserInputError(f"Slicer's Python lacks {', '.join(missing)}, which Slicer ships; reinstall Slicer.")


def library_environment(base: dict | None = None) -> dict:
    """The child's environment: ``SCPMNoduleLib`` importable, output unbuffered."""
    env = dict(os.environ if base is None else base)
    library_parent = str(Path(SCPMNoduleLib.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (library_parent, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def child_process_options(windows: bool | None = None) -> dict:
    """``Popen`` keyword arguments for the detector (and ``taskkill``): the child in its own
    process group or session, so that Cancel kills its whole tree, and on Windows with its
    console window hidden (``STARTF_USESHOWWINDOW`` with ``SW_HIDE``, as Slicer's
    ``launchConsoleProcess`` does; ``CREATE_NO_WINDOW`` so that no console is even made).
    ``windows`` defaults to ``os.name == "nt"``."""
    if not (os.name == "nt" if windows is None else windows):
        return {"start_new_session": True}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    info.wShowWindow = 0  # SW_HIDE
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW, "startupinfo": info}


def parse_progress_line(line: str) -> ProgressEvent:
    """Parse one stdout line; a line that is not a JSON event becomes a ``log`` event."""
    text = line.strip()
    try:
        content = json.loads(text)
    except json.JSONDecodeError:
        return ProgressEvent("log", message=text)
    if not isinstance(content, dict) or content.get("event") not in ("progress", "done", "error"):
        return ProgressEvent("log", message=text)
    fraction = content.get("fraction")
    return ProgressEvent(
        content["event"], scan=content.get("scan"),
        fraction=None if fraction is None else min(max(float(fraction), 0.0), 1.0),
        stage=content.get("stage"), outputs=dict(content.get("outputs") or {}),
        message=content.get("message"),
    )


class DetectionProcess:
    """A child process whose stdout lines arrive as :class:`ProgressEvent` objects."""

    def __init__(self, command: list[str], env: dict | None = None, stderr_lines_kept: int = 40):
        self.command = list(command)
        self.env = env
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue[ProgressEvent] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines_kept)
        self._threads: list[threading.Thread] = []
        self.cancelled = False

    def start(self) -> None:
        log.info("Starting: %s", subprocess.list2cmdline(self.command))
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", env=self.env, **child_process_options())
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        for line in self._process.stdout:
            if line.strip():
                self._events.put(parse_progress_line(line))

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            text = line.rstrip()
            if text:
                self._stderr.append(text)
                log.info("detector: %s", text)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def finished(self) -> bool:
        """The child has exited and all its output has been read."""
        return (self._process is not None and self._process.poll() is not None
                and not any(thread.is_alive() for thread in self._threads))

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def poll(self) -> list[ProgressEvent]:
        """The events that arrived since the last call (never blocks)."""
        events = []
        with contextlib.suppress(queue.Empty):
            while True:
                events.append(self._events.get_nowait())
        return events

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit and its output to be read; returns the exit status."""
        returncode = self._process.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return returncode

    def cancel(self) -> None:
        """Kill the child and everything it started."""
        self.cancelled = True
        if not self.running:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)],
                           capture_output=True, check=False, **child_process_options())
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()


class DetectionRun:
    """One detection job: volume → temporary file → background process → review in the scene.

    The volume is checked and written when the run is made, so bad input is reported before
    any process starts. ``poll()`` returns the new events and keeps :attr:`fraction`;
    ``finish()`` (after :attr:`finished`) builds the review or raises :class:`UserInputError`.
    ``python`` is the interpreter to run (in Slicer: ``PythonSlicer``), ``base_environment`` the
    environment it starts from (in Slicer: the application's startup environment).
    """

    def __init__(self, volume_node, settings: DetectionSettings, python: str | None = None,
                 style: ReviewStyle | None = None, sidecar_path: str | None = None,
                 base_environment: dict | None = None):
        check_input_volume(volume_node)
        self.volume_node = volume_node
        self.style = style
        self.sidecar_path = sidecar_path
        self.fraction = 0.0
        self.stage = ""
        self._result_path: str | None = None
        self._error: str | None = None
        self.temp_dir = Path(tempfile.mkdtemp(prefix="SCPMNodule-"))
        input_path = self.temp_dir / f"{safe_file_name(volume_node.GetName(), fallback='volume')}.nrrd"
        self.input_path = input_path
        try:
            write_volume(volume_node, input_path)
        except BaseException:
            self.cleanup()
            raise
        self.process = DetectionProcess(
            detect_command(input_path, self.temp_dir / "out", settings, python),
            library_environment(base_environment))

    def start(self) -> None:
        self.process.start()

    def poll(self) -> list[ProgressEvent]:
        events = self.process.poll()
        for event in events:
            if event.event == "progress" and event.fraction is not None:
                self.fraction, self.stage = event.fraction, event.stage or ""
            elif event.event == "done":
                self._result_path = event.outputs.get("json")
            elif event.event == "error":
                self._error = event.message
            else:
                log.info("detector: %s", event.message)
        return events

    @property
    def finished(self) -> bool:
        return self.process.finished

    def cancel(self) -> None:
        self.process.cancel()
        self.cleanup()

    def wait(self, timeout: float | None = None) -> None:
        self.process.wait(timeout)

    def finish(self) -> NoduleReview:
        """Build the review from the report; always removes the temporary files.

        Refused, with nothing added, when the volume left its scene meanwhile (removed, or the
        scene closed): the detections would have nowhere to go.
        """
        try:
            self.poll()
            if self.process.cancelled:
                raise UserInputError("The detection was cancelled; the scene was left as it was.")
            scene = self.volume_node.GetScene()
            if scene is None or not scene.IsNodePresent(self.volume_node):
                raise UserInputError(f"'{self.volume_node.GetName()}' left the scene (closed or removed) before its "
                                     "detection finished; nothing was added.")
            returncode = self.process.returncode
            if returncode != 0 or self._result_path is None:
                reason = self._error or (self.process.stderr_tail.splitlines() or ["no message"])[-1]
                if returncode == EXIT_BAD_INPUT:  # the detector's sentence, on the volume, not its temporary copy
                    raise UserInputError(reason.replace(str(self.input_path), self.volume_node.GetName()))
                raise UserInputError(f"The detection failed (exit status {returncode}: {reason}).")
            detections = read_detections_json(self._result_path)
            log.info("%d nodules detected in %s", len(detections), self.volume_node.GetName())
            review = NoduleReview.create(self.volume_node, detections, self.style)
            return attach_sidecar(review, self.sidecar_path) if self.sidecar_path else review
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)
