"""Malformed and hostile sensor_msgs/Image messages: rejected or converted exactly, never fatal.

Hypothesis generates messages over every encoding of ``sensor_msgs/image_encodings.hpp``
plus unknown strings, zero and huge announced sizes, ``step`` too small or too large, data
too short or too long, any ``is_bigendian`` value and every container rclpy may hand over.
A reference model written independently of the converter says what each message must give:
a refusal (UnsupportedEncodingError / MalformedImageError) or exactly these RGB pixels. The
same kind of stream then goes through a live node: it must count each message as received
or rejected, hold exactly the reference pixels for accepted ones, warn in a throttled way,
never let an exception escape, and still learn and answer ``~/predict`` afterwards.
"""

import array
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rcl_interfaces.msg import Log
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from hardening_support import HARDENED
from node_harness import Harness, views, wait_for
from ros2_latent_replay.core.errors import InputError
from ros2_latent_replay.image_conversion import (MAX_SIDE, MalformedImageError,
                                                 UnsupportedEncodingError,
                                                 image_fields_to_rgb)
from ros2_latent_replay.node import MIN_FRAME_SIDE, WARN_THROTTLE_S

#: every encoding named in sensor_msgs/image_encodings.hpp (ROS 2 Kilted)
ENCODINGS = (
    'rgb8', 'rgba8', 'rgb16', 'rgba16', 'bgr8', 'bgra8', 'bgr16', 'bgra16', 'mono8', 'mono16',
    *[f'{bits}{kind}C{n}'
      for bits, kind in (('8', 'U'), ('8', 'S'), ('16', 'U'), ('16', 'S'), ('32', 'S'),
                         ('32', 'F'), ('64', 'F'))
      for n in (1, 2, 3, 4)],
    *[f'bayer_{order}{bits}' for bits in (8, 16) for order in ('rggb', 'bggr', 'gbrg', 'grbg')],
    'uyvy', 'yuv422', 'yuyv', 'yuv422_yuy2', 'nv12', 'nv21', 'nv24',
)
#: near misses of real encodings
TRICKY = ('', ' ', 'RGB8', 'Rgb8', ' rgb8', 'rgb8 ', 'rgb8\n', 'rgb', 'rgb88', 'mono8;',
          'jpeg', 'png', 'compressed', '8UC3 ', 'bgr8' * 40, 'rgb8\x00', 'mono8\x00bgr8',
          'ÿ', '\U0001F600')
#: what the node converts, written independently of the converter: channels, R/G/B offsets
REFERENCE = {'rgb8': (3, (0, 1, 2)), 'bgr8': (3, (2, 1, 0)), 'rgba8': (4, (0, 1, 2)),
             'bgra8': (4, (2, 1, 0)), 'mono8': (1, (0, 0, 0))}
HUGE_SIDES = (10_000, MAX_SIDE, MAX_SIDE + 1, 65_535, 2**31 - 1, 2**32 - 1)
MAX_DATA = 48 * 1024
EXAMPLES = 1000


def _pixel_bytes(encoding):
    """Bytes per pixel an encoding would plausibly use (1 for unknown strings)."""
    match = re.fullmatch(r'(8|16|32|64)[USF]C([1-4])', encoding)
    if match:
        return int(match.group(1)) // 8 * int(match.group(2))
    depth = 2 if encoding.endswith('16') else 1
    if encoding.startswith(('rgba', 'bgra')):
        return 4 * depth
    if encoding.startswith(('rgb', 'bgr')):
        return 3 * depth
    if encoding in ('uyvy', 'yuv422', 'yuyv', 'yuv422_yuy2'):
        return 2
    return depth


@st.composite
def image_fields(draw):
    """Field values of one (usually broken) sensor_msgs/Image."""
    source = draw(st.sampled_from(('supported',) * 3 + ('any', 'tricky', 'text')))
    encoding = draw({'supported': st.sampled_from(sorted(REFERENCE)),
                     'any': st.sampled_from(ENCODINGS), 'tricky': st.sampled_from(TRICKY),
                     'text': st.text(max_size=12)}[source])
    # each field is right more often than not, so that every mix of faults turns up
    shape = draw(st.sampled_from(('valid',) * 5 + ('wide',) * 2 + ('zero', 'huge',
                                                                   'random')))
    if shape == 'valid':
        side = st.integers(1, 7) if draw(st.integers(0, 3)) == 0 else st.integers(8, 32)
        height, width = draw(side), draw(side)
    elif shape == 'wide':
        height, width = draw(st.integers(1, 10)), draw(st.integers(100, 1500))
        if draw(st.booleans()):
            height, width = width, height
    elif shape == 'zero':
        height, width = draw(st.sampled_from(((0, 0), (0, 8), (8, 0))))
    elif shape == 'huge':
        side, other = draw(st.sampled_from(HUGE_SIDES)), draw(st.integers(0, 16))
        height, width = (side, other) if draw(st.booleans()) else (other, side)
    else:
        height, width = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    row = width * _pixel_bytes(encoding)
    step_kind = draw(st.sampled_from(('exact',) * 5 + ('padded',) * 2 + ('short', 'zero',
                                                                         'random')))
    step = {'exact': row, 'padded': row + draw(st.integers(1, 9)),
            'short': max(0, row - draw(st.integers(1, 4))), 'zero': 0,
            'random': draw(st.integers(0, 2**32 - 1))}[step_kind]
    step = min(step, 2**32 - 1)
    announced = step * height
    length_kind = draw(st.sampled_from(('exact',) * 6 + ('short', 'long', 'empty', 'random')))
    if announced > MAX_DATA and length_kind != 'empty':
        length_kind = 'random'
    length = {'exact': announced, 'short': max(0, announced - draw(st.integers(1, 5))),
              'long': announced + draw(st.integers(1, 5)), 'empty': 0,
              'random': draw(st.integers(0, 4096))}[length_kind]
    seed = draw(st.integers(0, 2**32 - 1))
    data = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    return {'encoding': encoding, 'height': height, 'width': width, 'step': step,
            'is_bigendian': draw(st.sampled_from((0, 1, 255))), 'data': data}


def reference(fields):
    """('unsupported' | 'malformed', None) or ('rgb', the H x W x 3 pixels it must give)."""
    layout = REFERENCE.get(fields['encoding'])
    if layout is None:
        return 'unsupported', None
    channels, order = layout
    height, width, step, data = (fields['height'], fields['width'], fields['step'],
                                 fields['data'])
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or step < width * channels \
            or len(data) != step * height:
        return 'malformed', None
    flat = np.frombuffer(data, dtype=np.uint8)
    rows = np.arange(height)[:, None, None] * step
    cols = np.arange(width)[None, :, None] * channels
    return 'rgb', flat[rows + cols + np.array(order)[None, None, :]]


def _container(data, kind):
    return {'bytes': data, 'bytearray': bytearray(data), 'array': array.array('B', data),
            'memoryview': memoryview(data), 'numpy': np.frombuffer(data, dtype=np.uint8),
            'list': list(data)}[kind]


_FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_encoding_list_matches_the_installed_header():
    """ENCODINGS is the full list of the sensor_msgs header (when the header is installed)."""
    header = Path(sys.prefix) / 'include' / 'sensor_msgs' / 'sensor_msgs' / \
        'image_encodings.hpp'
    if not header.is_file():
        pytest.skip(f'{header} not installed')
    named = set(re.findall(r'^const char \w+\[\] = "([^"]+)";', header.read_text(), re.M))
    assert named == set(ENCODINGS)


def test_thousand_generated_messages_are_rejected_or_converted_exactly():
    """The converter agrees with the reference on >= 1,000 generated messages."""
    outcomes = {}

    @_FUZZ
    @given(fields=image_fields(),
           kind=st.sampled_from(('bytes', 'bytearray', 'array', 'memoryview', 'numpy', 'list')))
    def check(fields, kind):
        expected, pixels = reference(fields)
        if kind == 'list' and len(fields['data']) > 4096:
            kind = 'bytes'
        args = dict(fields, data=_container(fields['data'], kind))
        try:
            rgb = image_fields_to_rgb(**args)
        except UnsupportedEncodingError as exc:
            assert expected == 'unsupported', (fields['encoding'], exc)
            assert repr(fields['encoding']) in str(exc)
            outcome = 'unsupported'
        except MalformedImageError as exc:
            assert expected == 'malformed', exc
            outcome = 'malformed'
        else:
            assert expected == 'rgb'
            assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
            assert np.array_equal(rgb, pixels)
            outcome = 'rgb'
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    check()
    print('conversion fuzz outcomes:', outcomes)
    assert sum(outcomes.values()) >= EXAMPLES
    assert min(outcomes.get(k, 0) for k in ('unsupported', 'malformed', 'rgb')) >= 50, outcomes


@pytest.mark.parametrize('encoding, bigendian', [('mono16', 1), ('mono16', 0), ('rgb16', 1),
                                                 ('32FC1', 0), ('64FC1', 1), ('16UC1', 1)])
def test_deep_and_float_encodings_are_refused_by_name(encoding, bigendian):
    """16-bit, float and depth images are refused naming the encoding and what is accepted."""
    width, height = 4, 3
    step = width * _pixel_bytes(encoding)
    with pytest.raises(UnsupportedEncodingError) as info:
        image_fields_to_rgb(encoding, height, width, step, bigendian, bytes(step * height))
    assert repr(encoding) in str(info.value) and 'rgb8' in str(info.value)
    assert isinstance(info.value, InputError)


def test_big_endian_flag_does_not_change_8_bit_pixels():
    """For 8-bit encodings the byte-order flag is irrelevant and ignored."""
    frame = views(1, 1, 0)['cat'][0][0][:16, :16]
    data = frame.tobytes()
    for flag in (0, 1, 255):
        rgb = image_fields_to_rgb('rgb8', 16, 16, 48, flag, data)
        assert np.array_equal(rgb, frame)


def test_thousand_generated_messages_through_a_live_node(work_dir):
    """A live node counts, converts or rejects each message exactly, warns throttled, survives."""
    objects = views(2, 3, 1)
    logs = []
    with Harness(work_dir / 'state.pt', **HARDENED) as h:
        h.client.create_subscription(
            Log, '/rosout', logs.append,
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        h.teach('cat', objects['cat'][0])
        ok, body = h.call('learn')
        assert ok, body
        h.send_label('fuzz')
        started = time.monotonic()
        outcomes = {}

        @_FUZZ
        @given(fields=image_fields())
        def check(fields):
            # a ROS string ends at its first NUL: that is the encoding the node receives
            encoding = fields['encoding'].split('\x00', 1)[0]
            expected, pixels = reference(dict(fields, encoding=encoding))
            if expected == 'rgb' and min(pixels.shape[:2]) < MIN_FRAME_SIDE:
                expected = 'too_small'
            before = h.node.counters()
            h._stamp += 1
            msg = Image(**fields)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(h._stamp, 10**9)
            h.image_pub.publish(msg)

            def counted():
                now = h.node.counters()
                return now['frames_received'] + now['frames_rejected'] > \
                    before['frames_received'] + before['frames_rejected']
            wait_for(counted, 10.0, interval=0.0005, what='the node to count the message')
            after = h.node.counters()
            if expected == 'rgb':
                assert after['frames_received'] == before['frames_received'] + 1
                assert after['frames_rejected'] == before['frames_rejected']
                assert h.node.newest_stamp == pytest.approx(h._stamp * 1e-9, abs=1e-12)
                assert np.array_equal(h.node.newest_frame, pixels)
            else:
                assert after['frames_rejected'] == before['frames_rejected'] + 1, expected
                assert after['frames_received'] == before['frames_received']
            outcomes[expected] = outcomes.get(expected, 0) + 1

        check()
        seconds = time.monotonic() - started
        print('live fuzz outcomes:', outcomes, f'in {seconds:.1f} s')
        assert sum(outcomes.values()) >= EXAMPLES
        assert outcomes.get('rgb', 0) >= 50 and outcomes.get('unsupported', 0) >= 50

        assert h._thread.is_alive(), 'the executor stopped: an exception escaped a callback'
        counters = h.node.counters()
        assert counters['callback_errors'] == 0, counters
        # accepted frames, whatever their shape, were collected and get latents
        h.send_label('')
        assert h.node.wait_for_observed(120.0)
        assert h.node.counters()['observe_errors'] == 0
        assert h.node.learner.episode_size == outcomes['rgb']
        ok, body = h.call('learn')
        assert ok and body['frames'] == outcomes['rgb'], body
        answer = h.predict_frame(objects['coffee'][1][0])
        assert answer['label'] in ('cat', 'fuzz')

        # warnings about dropped images were throttled: one per call site and period at most
        wait_for(lambda: any('dropping image' in log.msg for log in logs),
                 what='a warning about the dropped images on /rosout')
        warnings = [log for log in logs if log.name == h.node.get_logger().name
                    and 'dropping image' in log.msg]
        limit = 2 * (int(seconds // WARN_THROTTLE_S) + 1)
        print(f'{len(warnings)} warnings for {sum(outcomes.values()) - outcomes["rgb"]} '
              f'rejected images (limit {limit})')
        assert 1 <= len(warnings) <= limit
