"""AndroidControl (github google-research/google-research android_control) as the official reader builds it
(`olmo/hf_datasets/android_control.py:AndroidControlBuilder`, `olmo/data/academic_datasets.py:AndroidControl`).

Files, as released in gs://gresearch/android_control, in one directory: the 20 GZIP TFRecord shards
`android_control-000NN-of-00020` of `tf.train.Example` episodes (screenshots, accessibility trees as
android_env `AndroidAccessibilityForest` protos, JSON actions, step instructions), `splits.json` and
`test_subsplits.json`. Both protos are parsed with the protobuf library from their field numbers (no
TensorFlow, no android_env install). Each step but an episode's last is one example: the screenshot
before the action, "low_level: <step instruction>" (mode ll), the target action with click coordinates
in percent of the screen (1 decimal), and its target box in percent: for a click / long press the
smallest visible node box around the point (else +-10 pixels), for "Open App X" the box of the first
reduced-tree node whose lower-cased text starts with X. Test is the "IDD" subsplit.

Official quirks kept (the boxes decide the scores): the app box search lower-cases the screen text but
not the app name, so names with capitals never get one; nodes of a window are de-duplicated by their text
alone before that search (the official identifier reads keys raw nodes do not have).
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import re
import struct
from typing import Any, Iterator, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.json_format import MessageToDict
from PIL import Image

SHARDS = tuple(f"android_control-000{i:02d}-of-00020" for i in range(20))
SOURCE = "gs://gresearch/android_control (gsutil -m cp 'gs://gresearch/android_control/*' <data_dir>/android_control)"
MODES = {  # official AndroidControl(mode=...): the prompt of a step
    "ll": lambda step: "low_level: " + step["ll_instruction"],
    "hl": lambda step: "high_level: " + step["hl_instruction"],
    "hl_ll": lambda step: "high_level: " + step["hl_instruction"] + " low_level: " + step["ll_instruction"],
}
SPLIT_KEYS = {"train": "train", "validation": "validation", "test": "test"}

_F = descriptor_pb2.FieldDescriptorProto
_MESSAGES = {  # message -> [(field, number, type, label, message type)]; only the fields read here
    "tensorflow.BytesList": [("value", 1, _F.TYPE_BYTES, _F.LABEL_REPEATED, None)],
    "tensorflow.Int64List": [("value", 1, _F.TYPE_INT64, _F.LABEL_REPEATED, None)],
    "tensorflow.Feature": [("bytes_list", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.BytesList"),
                           ("int64_list", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.Int64List")],
    "tensorflow.FeatureEntry": [("key", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                                ("value", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.Feature")],
    "tensorflow.Features": [("feature", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".tensorflow.FeatureEntry")],
    "tensorflow.Example": [("features", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.Features")],
    "android_env.ProtoRect": [(k, i, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None)
                              for i, k in enumerate(("left", "top", "right", "bottom"), start=1)],
    "android_env.AndroidAccessibilityNodeInfo": [
        ("bounds_in_screen", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".android_env.ProtoRect"),
        ("class_name", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("package_name", 6, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("text", 7, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("view_id_resource_name", 10, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("is_checkable", 12, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
        ("is_clickable", 14, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
        ("is_visible_to_user", 23, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None)],
    "android_env.AndroidAccessibilityTree": [
        ("nodes", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".android_env.AndroidAccessibilityNodeInfo")],
    "android_env.AndroidAccessibilityWindowInfo": [
        ("tree", 11, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".android_env.AndroidAccessibilityTree")],
    "android_env.AndroidAccessibilityForest": [
        ("windows", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".android_env.AndroidAccessibilityWindowInfo")],
}


def _message_classes() -> dict[str, type]:
    """Protobuf classes of `_MESSAGES` (tf.train.Example's map<string, Feature> as its wire-equal entries)."""
    pool = descriptor_pool.DescriptorPool()
    for package in ("tensorflow", "android_env"):
        file = descriptor_pb2.FileDescriptorProto(name=f"{package}_subset.proto", package=package, syntax="proto3")
        for full_name, fields in _MESSAGES.items():
            if full_name.startswith(package + "."):
                message = file.message_type.add(name=full_name.split(".")[1])
                for name, number, kind, label, type_name in fields:
                    message.field.add(name=name, number=number, type=kind, label=label,
                                      **({"type_name": type_name} if type_name else {}))
        pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name)) for name in _MESSAGES}


MESSAGES = _message_classes()


class MissingDataError(FileNotFoundError):
    """An AndroidControl file is not in the data directory."""


def tfrecords(path) -> Iterator[bytes]:
    """The records of a GZIP TFRecord file (length, length crc, data, data crc; crcs not checked)."""
    with gzip.open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            yield f.read(length)
            f.read(4)


def episode(record: bytes) -> dict[str, list]:
    """feature name -> values of one tf.train.Example episode."""
    example = MESSAGES["tensorflow.Example"].FromString(record)
    out = {}
    for entry in example.features.feature:
        values = entry.value.bytes_list if entry.value.HasField("bytes_list") else entry.value.int64_list
        out[entry.key] = list(values.value)
    return out


def forest(data: bytes) -> dict[str, Any]:
    """An AndroidAccessibilityForest as the official `MessageToJson` dict (camelCase, defaults left out)."""
    return MessageToDict(MESSAGES["android_env.AndroidAccessibilityForest"].FromString(data))


def action_text(action_json: str) -> str:
    """Official `process_action`: "Click(x, y)", "Long Press(x, y)", "Scroll <dir>", "Type <text>", ..."""
    a = json.loads(action_json)
    kind = a["action_type"]
    texts = {"open_app": lambda: "Open App " + a["app_name"], "click": lambda: f"Click({a['x']}, {a['y']})",
             "long_press": lambda: f"Long Press({a['x']}, {a['y']})", "scroll": lambda: "Scroll " + a["direction"],
             "input_text": lambda: "Type " + a["text"], "navigate_home": lambda: "Navigate Home",
             "navigate_back": lambda: "Navigate Back", "wait": lambda: "Wait"}
    return texts[kind]() if kind in texts else ""


def node_boxes(tree: dict[str, Any], width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of every visible node with bounds (missing sides: 0 / the screen's)."""
    boxes = []
    for window in tree.get("windows", []):
        for node in window.get("tree", {}).get("nodes", []):
            bounds = node.get("boundsInScreen", {})
            if bounds and node.get("isVisibleToUser", False):
                boxes.append((bounds.get("left", 0), bounds.get("top", 0), bounds.get("right", width),
                              bounds.get("bottom", height)))
    return boxes


def click_box(x: int, y: int, boxes: Sequence[tuple[int, int, int, int]]) -> tuple:
    """The smallest (by width, then height) box around (x, y), else the point +-10 pixels."""
    around = [b for b in boxes if b[0] <= x <= b[2] and b[1] <= y <= b[3]]
    if not around:
        return (x - 10, y - 10, x + 10, y + 10)
    return min(around, key=lambda b: (b[2] - b[0], b[3] - b[1]))


def app_box(tree: dict[str, Any], app_name: str) -> tuple | None:
    """The official `extract_app_bb` over the reduced tree: the first node (grouped by package, in order)
    whose lower-cased text starts with `app_name`, as (cx - w//2, cy - h//2, cx + w//2, cy + h//2)."""
    by_package: dict[Any, list] = {}
    for window in tree.get("windows", []):
        seen = set()
        for node in window.get("tree", {}).get("nodes", []):
            if node.get("text") in seen:
                continue
            seen.add(node.get("text"))
            if node.get("isVisibleToUser") and (node.get("isClickable") or node.get("isCheckable") or
                                                node.get("text") != "" or node.get("viewIdResourceName") != ""):
                by_package.setdefault(node.get("packageName"), []).append(node)
    for node in (n for nodes in by_package.values() for n in nodes):
        b = node.get("boundsInScreen", {})
        left, top, right, bottom = (b.get(k, 0) for k in ("left", "top", "right", "bottom"))
        w, h = right - left, bottom - top
        cx, cy = int(left + w / 2), int(top + h / 2)
        text = node.get("text")
        if min(cx, cy, w, h) >= 0 and text and text.lower().startswith(app_name):
            return (cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2)
    return None


def percent_box(box, width: int, height: int) -> list[float]:
    return [round(v / s * 100, 1) for v, s in zip(box, (width, height, width, height))]


def step_target(action: str, tree: dict[str, Any], width: int, height: int) -> tuple[str, str]:
    """(target action with click coordinates in percent, target box in percent as text, or "")."""
    point = re.match(r"(Click|Long Press)\((\d+), (\d+)\)", action)
    if point:
        x, y = int(point.group(2)), int(point.group(3))
        box = percent_box(click_box(x, y, node_boxes(tree, width, height)), width, height)
        return f"{point.group(1)}({round(x / width * 100, 1)}, {round(y / height * 100, 1)})", str(box)
    if action.startswith("Open App"):
        box = app_box(tree, action[9:])
        return action, "" if box is None else str(percent_box(box, width, height))
    return action, ""


def _read_json(path: str):
    if not os.path.exists(path):
        raise MissingDataError(f"android_control: {path} not found; get it from {SOURCE}")
    with open(path) as f:
        return json.load(f)


def read_steps(home: str, split: str) -> list[dict[str, Any]]:
    """The steps of `split` (validation, test: the IDD subsplit, train) in shard order."""
    episodes = set(_read_json(os.path.join(home, "splits.json"))[SPLIT_KEYS[split]])
    if split == "test":
        episodes &= set(_read_json(os.path.join(home, "test_subsplits.json"))["IDD"])
    missing = [s for s in SHARDS if not os.path.exists(os.path.join(home, s))]
    if missing:
        raise MissingDataError(f"android_control: {os.path.join(home, missing[0])} not found "
                               f"({len(missing)} of 20 shards missing); get them from {SOURCE}")
    steps = []
    for shard in SHARDS:
        for record in tfrecords(os.path.join(home, shard)):
            ep = episode(record)
            if ep["episode_id"][0] not in episodes:
                continue
            for i, screenshot in enumerate(ep["screenshots"][:-1]):
                with Image.open(io.BytesIO(screenshot)) as im:
                    width, height = im.size
                target, box = step_target(action_text(ep["actions"][i].decode()),
                                          forest(ep["accessibility_trees"][i]), width, height)
                steps.append(dict(image=screenshot, ll_instruction=ep["step_instructions"][i].decode(),
                                  hl_instruction=ep["goal"][0].decode(), target_action=target, target_box=box))
    return steps


@dataclasses.dataclass
class AndroidControlSource:
    """The steps of a split (held in memory) as a `pixmo.Source` of the official mode's examples."""
    steps: list[dict[str, Any]]
    mode: str = "ll"

    def __len__(self) -> int:
        return len(self.steps)

    def get(self, index: int, rng=None) -> dict[str, Any]:
        step = self.steps[index]
        return dict(image=step["image"], prompt=MODES[self.mode](step), text=step["target_action"],
                    style="android_control",
                    metadata={k: step[k] for k in ("target_action", "target_box", "ll_instruction", "hl_instruction")})


def load(data_dir, split: str = "validation", mode: str = "ll") -> AndroidControlSource:
    """AndroidControl from `<data_dir>/android_control` (see the module docstring)."""
    if split not in SPLIT_KEYS or mode not in MODES:
        raise ValueError(f"android_control: split {split!r} / mode {mode!r}; allowed {sorted(SPLIT_KEYS)} / "
                         f"{sorted(MODES)}")
    return AndroidControlSource(read_steps(os.path.join(os.fspath(data_dir), "android_control"), split), mode)
