"""Run every benchmark figure in priority order, then render tables and plots.

    python benchmarks/run_all.py [--quick] [--threads N] [--only a,b] [--skip a,b]

Scripts that need Avalanche run with the bench venv's python (``$BENCH_PYTHON``, default
``.venv-bench/bin/python``; see benchmarks/README.md for how to create it); the node
benchmark runs with the project's ``.venv`` (it needs rclpy). ``--quick`` shrinks every
figure for a smoke check and runs the accuracy figure on the cluttered scenario only
(under 10 minutes on a quiet 2-core machine). Each script writes
its JSON under benchmarks/results/ as soon as it has something, so an interrupted run keeps
what it finished.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import Recorder  # noqa: E402  (benchmarks/ is not a package)


def pythons():
    """(bench python, project python)."""
    bench = os.environ.get('BENCH_PYTHON') or str(REPO / '.venv-bench' / 'bin' / 'python')
    project = os.environ.get('PROJECT_PYTHON') or str(REPO / '.venv' / 'bin' / 'python')
    if not os.path.exists(bench):
        print(f'bench venv python {bench} not found; Avalanche figures will fail '
              f'(set BENCH_PYTHON)', file=sys.stderr)
    return bench, project


def figures(quick, threads):
    """(name, interpreter kind, args) in priority order."""
    q = ['--quick'] if quick else []
    t = ['--threads', str(threads)]
    # quick: the cluttered scenario only (NIC_coil runs the same code), 6 batches; native
    # rehearsal, ~30 s per batch, for 2 of them
    acc_quick = ['--runs', '0', '--max-batches', '6', '--native-batches', '2',
                 '--checkpoints', '3', '--cumulative-group', '3']
    acc_full = ['--runs', '0,1,2,3,4', '--max-batches', '40', '--native-batches', '40']
    acc = acc_quick if quick else acc_full

    def out(name):
        return ['--out', f'{name}_quick.json'] if quick else []

    return [
        ('learn_latency', 'bench', ['learn_latency.py'] + q + t + out('learn_latency')),
        ('predict_latency', 'bench', ['predict_latency.py'] + q + t + out('predict_latency')),
        ('upper_precision', 'bench', ['upper_precision.py', '--scenario', 'clutter'] + q + t
         + out('upper_precision')),
        ('memory', 'bench', ['memory.py'] + q + t + (['--no-rss'] if quick else [])
         + out('memory')),
        ('accuracy_clutter', 'bench', ['accuracy.py', '--scenario', 'clutter'] + acc + t
         + (['--out', 'accuracy_clutter_quick.json'] if quick else [])),
    ] + ([] if quick else [
        ('accuracy_nic_coil', 'bench', ['accuracy.py', '--scenario', 'nic_coil'] + acc + t),
    ]) + [
        ('layer_table', 'bench', ['layer_table.py'] + q + t
         + (['--no-learn-time', '--batches', '5', '--out', 'layer_table_quick.json']
            if quick else [])),
        ('node_throughput', 'project', ['node_throughput.py'] + q + t
         + (['--sizes', '128x128', '--out', 'node_throughput_quick.json'] if quick else [])),
        ('scaling', 'bench', ['scaling.py'] + q + t
         + (['--skip-batches', '--out', 'scaling_quick.json'] if quick else [])),
    ]


def main():
    """Run the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--only', default='')
    parser.add_argument('--skip', default='')
    args = parser.parse_args()
    bench, project = pythons()
    only = set(filter(None, args.only.split(',')))
    skip = set(filter(None, args.skip.split(',')))
    status = {}
    rec = Recorder('run_all', {'quick': args.quick, 'threads': args.threads,
                               'only': sorted(only), 'skip': sorted(skip)})
    for name, kind, cmd in figures(args.quick, args.threads):
        if (only and name not in only) or name in skip:
            continue
        exe = bench if kind == 'bench' else project
        full = [exe] + cmd
        print(f'== {name}: {" ".join(full)}', flush=True)
        t0 = time.time()
        rc = subprocess.call(full, cwd=str(HERE))
        status[name] = (rc, round(time.time() - t0, 1))
        print(f'== {name}: exit {rc} after {status[name][1]} s', flush=True)
    if not args.quick:   # the tables are built from the full runs' files
        subprocess.call([bench if os.path.exists(bench) else project, 'report.py'],
                        cwd=str(HERE))
    print(status)
    rec.write('run_all_quick.json' if args.quick else 'run_all.json',
              figures={name: {'exit_code': rc, 'seconds': seconds}
                       for name, (rc, seconds) in status.items()},
              total_seconds=round(sum(seconds for _, seconds in status.values()), 1))
    return 0 if all(rc == 0 for rc, _ in status.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
