"""What a run charts in TensorBoard, under which tags, and the custom-scalars layout that groups them.

Tags (every one varies during a run; config constants such as the loss weights are in config.json, not charted):
  test/top1/<head>, test/top5/<head>   accuracy (%) of every branch, the peer ensemble, the peer mean and ONE's
                                       gated ensemble; test/ce/<head> their mean cross-entropy (nats)
  test/deployed/{top1,ce}              the head the method deploys, under one name for every method, so that
                                       runs of different methods compare in one chart
  test/diversity                       the peers' mean pairwise L2 distance of softmax outputs
  train/loss                           the minimised loss, mean over the logged steps
  train/weighted/<term>                each term times the weight the loss gives it: they add up to train/loss
  train/unweighted/<term>              the terms before weighting (the CD term is ~1e1 with weight 5e-8)
  train/ce_per_branch                  the mean over branches of each branch's cross-entropy
  train/accuracy_deployed              train top-1 (%) of the deployed head on the augmented batches
  train/images_per_second              training throughput since the previous progress line
  schedule/learning_rate, schedule/ramp_weight   (no ramp weight for methods that do not ramp)

The layout (custom_scalars plugin) is one event file of fixed name in the workdir, rewritten at every start:
the same charts for every run, so a sweep root opened in TensorBoard merges them into one set of charts.

The events are written here, in the calling thread, with TensorBoard's record format (EventsFile), not through
TensorFlow's summary writer: that one writes from its own thread and C++ ops, so a full disk surfaced as C++
warnings and a traceback from a writer thread, later, instead of an OSError where the write failed.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer import record_writer

LAYOUT_FILE = "events.out.tfevents.0.mbde_jax_layout"

# Terms the loss takes at weight 1; the kd terms take kd_weight * ramp_weight, the CD term cd_weight.
_UNIT_WEIGHT_TERMS = ("ce", "ce_ensemble")
_WEIGHTS = ("kd_weight", "cd_weight", "ramp_weight")


def _term_weight(term: str, summary: dict[str, float]) -> float:
    if term in _UNIT_WEIGHT_TERMS:
        return 1.0
    if term == "cd":
        return summary["cd_weight"]
    return summary["kd_weight"] * summary.get("ramp_weight", 1.0)


def train_scalars(summary: dict[str, float], num_branches: int, ramped: bool) -> dict[str, float]:
    """TensorBoard scalars of a train summary (means over steps of one epoch, as train_step's metrics).

    Exact as long as the summary spans one epoch: the weights are constant within an epoch.
    """
    scalars = {"train/loss": summary["loss"], "train/accuracy_deployed": summary["accuracy_deployed"],
               "train/ce_per_branch": summary["ce"] / num_branches,
               "schedule/learning_rate": summary["learning_rate"]}
    if ramped and "ramp_weight" in summary:
        scalars["schedule/ramp_weight"] = summary["ramp_weight"]
    terms = [name for name in summary if name not in (*_WEIGHTS, "loss", "learning_rate", "accuracy_deployed")
             and not (name == "cd" and summary["cd_weight"] == 0.0)]  # a method without the CD term
    for term in terms:
        scalars[f"train/weighted/{term}"] = _term_weight(term, summary) * summary[term]
        if term not in _UNIT_WEIGHT_TERMS:
            scalars[f"train/unweighted/{term}"] = summary[term]
    return scalars


def test_scalars(metrics: dict) -> dict[str, float]:
    """TensorBoard scalars of eval_metrics.summarize's output (the example count and matrices left out)."""
    scalars = {"test/diversity": metrics["diversity"]}
    for name, value in metrics.items():
        kind, _, head = name.partition("/")
        if kind in ("top1", "top5", "ce") and head and head != "deployed":
            scalars[f"test/{kind}/{head}"] = value
        elif head == "deployed" and kind in ("top1", "ce"):
            scalars[f"test/deployed/{kind}"] = value
    return scalars


def _multiline(title: str, *tag_regexes: str) -> layout_pb2.Chart:
    return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(tag_regexes)))


def layout() -> layout_pb2.Layout:
    """One chart per metric, every head (or loss term) a line in it."""
    return layout_pb2.Layout(category=[
        layout_pb2.Category(title="test: every head in one chart", chart=[
            _multiline("top-1 accuracy (%) of every head", r"^test/top1/"),
            _multiline("cross-entropy (nats) of every head", r"^test/ce/"),
            _multiline("top-5 accuracy (%) of every head", r"^test/top5/"),
            _multiline("deployed head: top-1 accuracy (%)", r"^test/deployed/top1$"),
            _multiline("deployed head: cross-entropy (nats)", r"^test/deployed/ce$"),
            _multiline("peer diversity", r"^test/diversity$"),
        ]),
        layout_pb2.Category(title="train", chart=[
            _multiline("loss and its weighted terms (the terms add up to the loss)",
                       r"^train/loss$", r"^train/weighted/"),
            _multiline("mean cross-entropy per branch", r"^train/ce_per_branch$"),
            _multiline("loss terms before weighting", r"^train/unweighted/"),
            _multiline("deployed head: train top-1 (%) on augmented batches", r"^train/accuracy_deployed$"),
            _multiline("images per second", r"^train/images_per_second$"),
        ]),
        layout_pb2.Category(title="schedule", chart=[
            _multiline("learning rate", r"^schedule/learning_rate$"),
            _multiline("ramp-up weight w(e) of the distillation terms", r"^schedule/ramp_weight$"),
        ]),
    ])


def write_layout(workdir: str) -> str:
    """Writes the custom-scalars layout into <workdir>/LAYOUT_FILE (atomically); returns its path."""
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                    string_val=[layout().SerializeToString()])
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=metadata.CONFIG_SUMMARY_TAG, metadata=metadata.create_summary_metadata(), tensor=tensor)])
    now = time.time()
    path = os.path.join(workdir, LAYOUT_FILE)
    partial = os.path.join(workdir, ".mbde_jax_layout.partial")  # not an event file name until it is whole
    with open(partial, "wb") as f:
        records = record_writer.RecordWriter(f)
        records.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        records.write(event_pb2.Event(wall_time=now, step=0, summary=summary).SerializeToString())
    os.replace(partial, path)
    return path


class EventsFile:
    """One session's TensorBoard events of a run: <workdir>/events.out.tfevents.<time>.<host>.<pid>.0.v2, as
    TensorFlow's writer names them. Each write_* call reaches the file before it returns, so a failure (a full
    disk) is an OSError naming the file, raised to the caller."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                                          f"{os.getpid()}.0.v2")
        self._charted: set[str] = set()  # tags whose metadata (the scalars plugin) this file holds already
        self._failed = False
        self._file = self._io(lambda: open(self.path, "ab"))
        self._records = record_writer.RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _io(self, operation):
        try:
            return operation()
        except OSError as error:
            self._failed = True
            raise OSError(error.errno, f"{error.strerror or error}: the TensorBoard events could not be written",
                          self.path) from error

    def _write(self, event: event_pb2.Event) -> None:
        def write_through() -> None:
            self._records.write(event.SerializeToString())
            self._file.flush()
        self._io(write_through)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        values = []
        for tag, value in scalars.items():
            tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                            float_val=[float(value)])
            summary_metadata = None
            if tag not in self._charted:
                summary_metadata = scalar_metadata.create_summary_metadata(display_name=tag, description="")
                self._charted.add(tag)
            values.append(summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=summary_metadata))
        self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """The hparams plugin's session start: the run's config constants (numbers, strings, booleans)."""
        self._write(event_pb2.Event(wall_time=time.time(), step=0, summary=hparams_summary.hparams_pb(dict(hparams))))

    def flush(self) -> None:
        if not self._failed:
            self._io(self._file.flush)

    def close(self) -> None:
        if self._file.closed:
            return
        if self._failed:  # what could not be written is lost either way; the first error was raised already
            try:
                self._file.close()
            except OSError:
                pass
            return
        self._io(self._file.close)


class NoEvents:
    """The writer of a process that writes no workdir files (every process of a multi-process run but one)."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        pass

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def create_writer(workdir: str, primary: bool) -> EventsFile | NoEvents:
    """The TensorBoard events writer of the workdir for the process that writes the workdir's files; one that
    drops everything for the others. Nothing is echoed to the console."""
    return EventsFile(workdir) if primary else NoEvents()
