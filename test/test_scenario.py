"""The CORe50-format scenario reader on the real CORe50 filelists, NIC_coil and broken files."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from ros2_latent_replay.core.scenario import ScenarioError, list_batch_files, read_label_names, \
    read_scenario

DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
CORE50 = DATA / 'core50'
CORE50_RUN0 = CORE50 / 'batches_filelists_NICv2' / 'NIC_v2_391' / 'run0'
CORE50_IMAGES = CORE50 / 'core50_128x128'
NIC_COIL = DATA / 'coil100' / 'NIC_coil'
COIL_IMAGES = DATA / 'coil100' / 'images'
CLUTTER = DATA / 'coil100_clutter'


def _need(*paths):
    for path in paths:
        if not path.exists():
            pytest.skip(f'{path} not found (../shared/data absent)')


def _lines(path):
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rel, label = line.split()
            rows.append((rel, int(label)))
    return rows


# ---------------------------------------------------------------------- CORe50
def test_core50_reports_the_missing_images_clearly():
    _need(CORE50_RUN0, CORE50_IMAGES)
    listed = [row for name in sorted(p.name for p in CORE50_RUN0.iterdir())
              for row in _lines(CORE50_RUN0 / name)]
    present = {str(p.relative_to(CORE50_IMAGES)) for p in CORE50_IMAGES.rglob('*.png')}
    missing = sum(1 for rel, _ in listed if rel not in present)
    assert len(present) == 94 and missing > 160_000
    with pytest.raises(ScenarioError) as caught:
        read_scenario(CORE50_RUN0, CORE50_IMAGES)
    message = str(caught.value)
    assert f'{missing} missing images' in message
    assert 's1/o1/C_01_01_000.png (train_batch_00_filelist.txt)' in message   # the first one
    assert '--allow-missing' in message
    assert len(message) < 2000   # the first few, not 160,000 names


def test_core50_reads_the_present_frames_when_allowed():
    _need(CORE50_RUN0, CORE50_IMAGES)
    scenario = read_scenario(CORE50_RUN0, CORE50_IMAGES, allow_missing=True)
    assert len(scenario.batches) == 391                      # 00..390, numerically sorted
    assert any('missing image' in p for p in scenario.problems)
    assert any('training batches without any usable image' in p for p in scenario.problems)
    kept = [e for b in scenario.batches for e in b] + scenario.test
    assert 0 < len(kept) <= 94
    frames, names = scenario.load_entries(kept)
    assert frames.shape == (len(kept), 128, 128, 3) and frames.dtype == np.uint8
    assert frames.std() > 10                                 # real photographs
    # core50_labels.txt (one name per line, label order) is found next to the folders
    assert scenario.class_name(0) == 'plug_adapter1'
    for (rel, label), name in zip(kept, names):
        obj = int(rel.split('/')[1][1:])
        assert label == obj - 1 and name == scenario.label_names[label]


def test_core50_batches_follow_the_files_in_numeric_order():
    _need(CORE50_RUN0)
    numbered = list_batch_files(CORE50_RUN0)
    assert [i for i, _ in numbered] == list(range(391))
    assert numbered[100][1] == 'train_batch_100_filelist.txt'
    assert numbered[99][1] == 'train_batch_99_filelist.txt'


# ---------------------------------------------------------------------- COIL-100 scenarios
def test_nic_coil_reads_completely_in_file_order():
    _need(NIC_COIL / 'run0', COIL_IMAGES)
    scenario = read_scenario(NIC_COIL / 'run0', COIL_IMAGES)
    assert scenario.problems == []
    assert len(scenario.batches) == 138 and len(scenario.batches[0]) == 180
    assert all(14 <= len(b) <= 18 for b in scenario.batches[1:])   # 30 COIL views are missing
    assert scenario.num_training_frames + len(scenario.test) == 3498   # every image, once
    assert len(scenario.test) == 873
    assert scenario.batches[100] == _lines(NIC_COIL / 'run0' / 'train_batch_100_filelist.txt')
    assert scenario.batches[10] == _lines(NIC_COIL / 'run0' / 'train_batch_10_filelist.txt')
    assert scenario.class_name(0) == 'obj2'      # NIC_coil/labels.txt: 'label name' lines
    frames, names = scenario.load_entries(scenario.batches[1])
    assert frames.shape == (18, 128, 128, 3)
    assert set(names) == {scenario.class_name(scenario.batches[1][0][1])}
    short = read_scenario(NIC_COIL / 'run0', COIL_IMAGES, max_batches=3)
    assert len(short.batches) == 3 and len(short.test) == 873


def test_coil_clutter_reads_with_its_label_names():
    _need(CLUTTER / 'NIC' / 'run1')
    scenario = read_scenario(CLUTTER / 'NIC' / 'run1', CLUTTER, max_batches=2)
    assert scenario.class_name(0) == 'obj2' and scenario.class_name(48) == 'obj50'
    assert len(scenario.test) == 1029
    frames, _ = scenario.load_entries(scenario.batches[1])
    assert frames.shape == (12, 128, 128, 3)


# ---------------------------------------------------------------------- broken scenarios
@pytest.fixture()
def small_scenario(tmp_path):
    """Make a three-batch scenario over six real COIL-100 views, copied to a temporary folder."""
    _need(COIL_IMAGES)
    images = tmp_path / 'images'
    images.mkdir()
    views = [f'obj{o}__{a}.png' for o in (2, 3) for a in (0, 5, 10)]
    for name in views:
        shutil.copy(COIL_IMAGES / name, images / name)
    folder = tmp_path / 'run0'
    folder.mkdir()
    (folder / 'train_batch_00_filelist.txt').write_text(f'{views[0]} 0\n{views[1]} 0\n')
    (folder / 'train_batch_01_filelist.txt').write_text(f'{views[3]} 1\n{views[4]} 1\n')
    (folder / 'train_batch_02_filelist.txt').write_text(f'{views[2]} 0\n')
    (folder / 'test_filelist.txt').write_text(f'{views[2]} 0\n{views[5]} 1\n')
    return folder, images


def test_a_clean_small_scenario_reads(small_scenario):
    folder, images = small_scenario
    scenario = read_scenario(folder, images, verify_images=True)
    assert [len(b) for b in scenario.batches] == [2, 2, 1]
    assert scenario.class_name(1) == '1'            # no names file: the number as text
    assert scenario.labels == [0, 1]


def test_malformed_lines_are_reported_with_file_and_line(small_scenario):
    folder, images = small_scenario
    with open(folder / 'train_batch_01_filelist.txt', 'a') as handle:
        handle.write('obj3__10.png\n')                   # no label
        handle.write('obj3__10.png one\n')               # not a number
        handle.write('obj3__10.png -1\n')                # negative
        handle.write('obj3__10.png 1 extra\n')           # three fields
    with pytest.raises(ScenarioError) as caught:
        read_scenario(folder, images)
    message = str(caught.value)
    assert '4 malformed lines' in message
    assert 'train_batch_01_filelist.txt:3' in message
    assert 'train_batch_01_filelist.txt:6' in message
    scenario = read_scenario(folder, images, allow_missing=True)
    assert [len(b) for b in scenario.batches] == [2, 2, 1]
    assert scenario.problems[0].startswith('4 malformed lines')


def test_missing_images_are_counted_and_the_first_few_named(small_scenario):
    folder, images = small_scenario
    extra = ''.join(f'gone_{i}.png 0\n' for i in range(8))
    (folder / 'train_batch_02_filelist.txt').write_text(extra)
    with pytest.raises(ScenarioError) as caught:
        read_scenario(folder, images)
    message = str(caught.value)
    assert '8 missing images' in message and 'gone_0.png' in message
    assert '(and 3 more)' in message and 'gone_7.png' not in message
    assert '1 training batch without any usable image' in message
    scenario = read_scenario(folder, images, allow_missing=True)
    assert scenario.batches[2] == []


def test_unreadable_images_error_or_are_skipped(small_scenario):
    folder, images = small_scenario
    (images / 'obj2__5.png').write_bytes(b'this is not a png')
    with pytest.raises(ScenarioError, match='1 unreadable image'):
        read_scenario(folder, images, verify_images=True)
    scenario = read_scenario(folder, images)      # existence only: decoded when loaded
    with pytest.raises(ScenarioError, match='obj2__5.png'):
        scenario.load_entries(scenario.batches[0])
    tolerant = read_scenario(folder, images, allow_missing=True)
    frames, names = tolerant.load_entries(tolerant.batches[0])
    assert frames.shape == (1, 128, 128, 3) and names == ['0']
    assert any('unreadable image' in p for p in tolerant.problems)


def test_structural_errors(small_scenario, tmp_path):
    folder, images = small_scenario
    with pytest.raises(ScenarioError, match='does not exist'):
        read_scenario(tmp_path / 'nowhere', images)
    with pytest.raises(ScenarioError, match='image root'):
        read_scenario(folder, tmp_path / 'no_images')
    (folder / 'train_batch_01_filelist.txt').rename(folder / 'train_batch_07_filelist.txt')
    with pytest.raises(ScenarioError, match='without gaps'):
        read_scenario(folder, images)
    (folder / 'train_batch_07_filelist.txt').rename(folder / 'train_batch_01_filelist.txt')
    (folder / 'test_filelist.txt').unlink()
    with pytest.raises(ScenarioError, match='no test_filelist.txt'):
        read_scenario(folder, images)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ScenarioError, match='no train_batch'):
        read_scenario(empty, images)


def test_label_names_files(tmp_path):
    numbered = tmp_path / 'numbered.txt'
    numbered.write_text('0 mug\n1 red cup\n')
    assert read_label_names(numbered) == {0: 'mug', 1: 'red cup'}
    plain = tmp_path / 'plain.txt'
    plain.write_text('mug\ncup\n')
    assert read_label_names(plain) == {0: 'mug', 1: 'cup'}
    duplicate = tmp_path / 'duplicate.txt'
    duplicate.write_text('0 mug\n1 mug\n')
    with pytest.raises(ScenarioError, match='both named'):
        read_label_names(duplicate)
