"""Layout of the evaluation bags: topics, message types, marker events and the timeline.

A scenario becomes a rosbag2 (mcap by default, sqlite3 on request) with three topics of
standard types, so any rosbag2 tool can open and play it:

- ``/camera/image_raw`` (``sensor_msgs/msg/Image``, ``rgb8``): every frame, header stamp =
  bag time, ``frame_id`` ``camera``, one frame per period of a 20 fps camera;
- ``/label`` (``std_msgs/msg/String``): the class name in force, sent one period before the
  first frame of each run of one class, and ``''`` one period after the batch's last frame
  (what a person teaching the robot would send);
- ``/eval/marker`` (``std_msgs/msg/String``, JSON): what an evaluator needs, one object per
  message with an ``event`` key (see :data:`EVENTS`).

Timeline of a bag (period T = 1 / fps)::

    t0            scenario {format, version, name, batches, training_frames, test_frames, fps,
                            test: "same" | "separate" | "none"}
    per batch i:  batch_begin {batch, frames, labels}
                  /label name, then frames every T (the label changes between classes)
                  /label '' one T after the last frame
                  learn {batch, frames, labels} one T later: the batch ends, call ~/learn
                  then a gap (batch_gap) before the next batch
    test section: test_begin {frames}
                  per test frame j: the image and test_frame {index, label, stamp_ns} at the
                  same time (join on stamp_ns = the image's header stamp), one every T
                  test_end {frames}
    end           end {}

The test section is at the end of the same bag or, with a separate test bag, alone in it
(that bag's scenario marker says ``test: "separate"`` and has no batches). No ``/label`` is
set while test frames play, so a node would not learn them.
"""

import json
from typing import Any, Dict

IMAGE_TOPIC = '/camera/image_raw'
LABEL_TOPIC = '/label'
MARKER_TOPIC = '/eval/marker'
IMAGE_TYPE = 'sensor_msgs/msg/Image'
STRING_TYPE = 'std_msgs/msg/String'
FORMAT = 'ros2_latent_replay.bag'
VERSION = 1
DEFAULT_FPS = 20.0
#: seconds of bag time between a batch's learn marker and the next batch
DEFAULT_BATCH_GAP_S = 1.0
#: bag time of the first message: 2020-01-01T00:00:00Z, so bags are reproducible
DEFAULT_START_NS = 1_577_836_800 * 1_000_000_000
FRAME_ID = 'camera'

#: marker events and their keys
EVENTS = {
    'scenario': ('format', 'version', 'name', 'batches', 'training_frames', 'test_frames',
                 'fps', 'test'),
    'batch_begin': ('batch', 'frames', 'labels'),
    'learn': ('batch', 'frames', 'labels'),
    'test_begin': ('frames',),
    'test_frame': ('index', 'label', 'stamp_ns'),
    'test_end': ('frames',),
    'end': (),
}


class BagFormatError(ValueError):
    """A bag does not follow this layout (missing topic, bad marker, unknown version)."""


def marker_text(event: str, **values: Any) -> str:
    """Return the JSON text of a marker (checked against :data:`EVENTS`)."""
    if event not in EVENTS:
        raise ValueError(f'unknown marker event {event!r}')
    missing = [k for k in EVENTS[event] if k not in values]
    if missing:
        raise ValueError(f'marker {event!r} needs {", ".join(missing)}')
    return json.dumps({'event': event, **values}, separators=(',', ':'), ensure_ascii=False)


def parse_marker(text: str) -> Dict[str, Any]:
    """Parse a marker's JSON object; raise :class:`BagFormatError` when it is not one."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BagFormatError(f'marker is not JSON: {text[:80]!r} ({exc})') from None
    if not isinstance(value, dict) or value.get('event') not in EVENTS:
        raise BagFormatError(f'not an evaluation marker: {text[:80]!r}')
    missing = [k for k in EVENTS[value['event']] if k not in value]
    if missing:
        raise BagFormatError(f'marker {value["event"]!r} lacks {", ".join(missing)}')
    return value
