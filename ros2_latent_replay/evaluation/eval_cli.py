r"""``latent-replay-eval``: offline evaluation of scenarios or bags through the core learner.

Examples::

    latent-replay-eval --scenario NIC_coil/run0 --images coil100/images --out results/
    latent-replay-eval --scenario run0 --scenario run1 --images IMG --out OUT \\
        --strategy ar1_free --strategy naive
    latent-replay-eval --bag scenario_bag --out OUT --config my_params.yaml
    latent-replay-eval --merge OUT_A/results.json OUT_B/results.json --out OUT

Writes ``OUT/results.json`` (top-level ``final_accuracy`` in percent) and
``OUT/accuracy.png``, after every finished run, so an interrupted evaluation keeps what ran;
``OUT/progress.json`` and ``OUT/progress.pt`` hold the run in progress (its batches and
the learner's state), so ``--resume`` continues an interrupted evaluation.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core.config import STRATEGIES, LearnerConfig
from ..core.errors import LatentReplayError
from ..core.evaluation import ScenarioSource, compare, load_config, parse_override, \
    plot_results, results_document, summarize, write_results
from ..core.host_info import host_facts
from ..core.scenario import read_scenario


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line options of ``latent-replay-eval``."""
    parser = argparse.ArgumentParser(
        prog='latent-replay-eval',
        description='Evaluate the continual learner offline on CORe50-format scenarios '
                    '(train_batch_XX_filelist.txt + test_filelist.txt) or on bags written by '
                    'latent-replay-write-bag: every training batch is one teaching episode '
                    '(observe + learn, as the node does), the test set is classified after '
                    'each. Writes OUT/results.json and OUT/accuracy.png.')
    source = parser.add_argument_group('what to evaluate')
    source.add_argument('--scenario', action='append', default=[], metavar='DIR',
                        help='scenario folder; repeat for several runs (results are averaged '
                             'per configuration)')
    source.add_argument('--images', metavar='DIR',
                        help='image root the filelists are relative to (with --scenario)')
    source.add_argument('--labels', metavar='FILE',
                        help='label names file (default: labels.txt or core50_labels.txt '
                             'found next to the scenario; else the label numbers)')
    source.add_argument('--allow-missing', action='store_true',
                        help='skip missing/unreadable images and malformed lines (reported) '
                             'instead of stopping')
    source.add_argument('--bag', action='append', default=[], metavar='PATH',
                        help='bag written by latent-replay-write-bag; repeat for several runs')
    source.add_argument('--test-bag', metavar='PATH',
                        help='bag holding the test frames, when they are not in --bag')
    source.add_argument('--merge', nargs='+', default=[], metavar='JSON',
                        help='combine the runs of existing results.json files (no training)')
    method = parser.add_argument_group('configurations (default: the product defaults)')
    method.add_argument('--config', action='append', default=[], metavar='YAML',
                        help="the node's params file (/**: ros__parameters:) or a plain "
                             'mapping of learner settings; node-only keys are ignored; repeat '
                             'to compare configurations on one plot')
    method.add_argument('--strategy', action='append', default=[], choices=STRATEGIES,
                        help='evaluate each configuration with this strategy; repeat to '
                             'compare (e.g. --strategy ar1_free --strategy naive)')
    method.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a learner setting in every configuration')
    method.add_argument('--seed', type=int, help='random seed of every configuration')
    method.add_argument('--threads', type=int,
                        help='torch CPU threads (same as --set threads=N)')
    protocol = parser.add_argument_group('protocol')
    protocol.add_argument('--eval-every', type=int, default=1, metavar='K',
                          help='test after every K-th batch and after the last (default 1)')
    protocol.add_argument('--max-batches', type=int, metavar='N',
                          help='only the first N training batches')
    protocol.add_argument('--test-stride', type=int, default=1, metavar='K',
                          help='every K-th test frame only (default 1: all)')
    output = parser.add_argument_group('output')
    output.add_argument('--out', required=True, metavar='DIR', help='output folder')
    output.add_argument('--title', default='', help='plot title')
    output.add_argument('--no-progress', action='store_true', help='no progress bars')
    output.add_argument('--resume', action='store_true',
                        help='continue an interrupted evaluation in OUT: keep its finished '
                             'runs and continue the one in progress from OUT/progress.pt')
    return parser


def _config_stem(path: str) -> str:
    return Path(path).stem


def build_configs(args: argparse.Namespace) -> Tuple[List[Tuple[str, LearnerConfig]],
                                                     Dict[str, List[str]]]:
    """Build (name, config) pairs from --config x --strategy, with --set/--seed/--threads applied.

    Also returns, per name, the keys of its file that were ignored.
    """
    overrides: Dict[str, Any] = dict(parse_override(item) for item in args.set)
    if args.threads is not None:
        overrides['threads'] = args.threads
    if args.seed is not None:
        overrides['seed'] = args.seed
    bases = [(_config_stem(p), p) for p in args.config] or [('default', None)]
    names = [n for n, _ in bases]
    if len(set(names)) < len(names):
        bases = [(f'{n}{i}', p) for i, (n, p) in enumerate(bases)]
    configs, ignored = [], {}
    for base_name, path in bases:
        config, skipped = load_config(path, overrides)
        if not args.strategy:
            configs.append((base_name, config))
            ignored[base_name] = skipped
            continue
        for strategy in args.strategy:
            if len(bases) == 1:
                name = base_name if strategy == config.strategy else strategy
            else:
                name = f'{base_name}-{strategy}'
            configs.append((name, LearnerConfig.from_dict(config.to_dict(),
                                                          strategy=strategy)))
            ignored[name] = skipped
    if len({n for n, _ in configs}) < len(configs):
        raise LatentReplayError('two configurations got the same name; give the files '
                                'different names')
    return configs, ignored


def build_sources(args: argparse.Namespace) -> List[Any]:
    """Build the evaluation sources of --scenario/--bag."""
    sources: List[Any] = []
    if args.scenario and not args.images:
        raise LatentReplayError('--scenario needs --images (the root its paths are relative to)')
    for directory in args.scenario:
        scenario = read_scenario(directory, args.images, labels_file=args.labels,
                                 allow_missing=args.allow_missing,
                                 max_batches=args.max_batches)
        for problem in scenario.problems:
            print(f'warning: {directory}: skipped {problem}', file=sys.stderr)
        sources.append(ScenarioSource(scenario, test_stride=args.test_stride))
    if args.bag:
        from .bag_reader import BagSource
        for path in args.bag:
            sources.append(BagSource(path, test_bag=args.test_bag, max_batches=args.max_batches,
                                     test_stride=args.test_stride))
    return sources


def _print_summary(document: Dict[str, Any]) -> None:
    print('configuration            runs  final acc. (%)   mean acc. (%)   train s   wall s')
    for name, row in document['summary'].items():
        print(f'{name[:24]:<24} {row["runs"]:>5}  {row["final_accuracy_mean"]:6.2f} '
              f'± {row["final_accuracy_std"]:<5.2f}  {row["mean_accuracy_mean"]:6.2f} '
              f'± {row["mean_accuracy_std"]:<5.2f} {row["train_seconds_mean"]:8.1f} '
              f'{row["wall_seconds_mean"]:8.1f}')


def _merge(paths: Sequence[str]) -> List[Dict[str, Any]]:
    runs: List[Dict[str, Any]] = []
    for path in paths:
        try:
            with open(path, encoding='utf-8') as handle:
                document = json.load(handle)
        except (OSError, ValueError) as exc:
            raise LatentReplayError(f'cannot read results file {path}: {exc}') from None
        if not isinstance(document, dict) or not isinstance(document.get('runs'), list):
            raise LatentReplayError(f'{path} is not a latent-replay-eval results file')
        runs.extend(document['runs'])
    return runs


def _previous(out: Path, progress_file: Path, state_file: Path
              ) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """Finished runs of an interrupted evaluation in ``out``, and the run to continue."""
    runs = _merge([out / 'results.json']) if (out / 'results.json').exists() else []
    resume = None
    if progress_file.exists() and state_file.exists():
        with open(progress_file, encoding='utf-8') as handle:
            progress = json.load(handle)
        batches = progress.get('batches') or []
        if batches:
            resume = {'name': progress['name'], 'source': progress['source'].get('name', ''),
                      'batches': batches}
            # the last record may be one batch ahead of the saved state (a stop between
            # the two): the run then learns that batch again
            print(f'resuming {resume["name"]} on {resume["source"]}: batches up to '
                  f'{batches[-1]["batch"]} recorded', file=sys.stderr)
    if runs:
        print(f'keeping {len(runs)} finished run(s) from {out / "results.json"}',
              file=sys.stderr)
    return runs, resume


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Evaluate as the arguments say; write and return the results document."""
    out = Path(args.out)
    title = args.title
    if args.merge:
        runs = _merge(args.merge)
        document = results_document(runs, {'merged_from': [str(p) for p in args.merge]})
        write_results(out / 'results.json', document)
        plot_results(runs, out / 'accuracy.png', title=title)
        return document
    sources = build_sources(args)
    if not sources:
        raise LatentReplayError('nothing to evaluate: give --scenario DIR --images DIR, '
                                '--bag PATH or --merge JSON')
    configs, ignored = build_configs(args)
    for name, keys in ignored.items():
        if keys:
            print(f'note: {name}: not learner settings, ignored: {", ".join(keys)}',
                  file=sys.stderr)
    runs: List[Dict[str, Any]] = []
    extra = {'command': sys.argv, 'ignored_config_keys': ignored, 'host': host_facts()}
    progress_file, state_file = out / 'progress.json', out / 'progress.pt'
    resume = None
    if args.resume:
        runs, resume = _previous(out, progress_file, state_file)
    elif progress_file.exists() or state_file.exists():
        progress_file.unlink(missing_ok=True)
        state_file.unlink(missing_ok=True)

    def save(run_record: Dict[str, Any]) -> None:
        runs.append(run_record)
        write_results(out / 'results.json', results_document(runs, extra))
        plot_results(runs, out / 'accuracy.png', title=title)
        print(f'{run_record["name"]} on {run_record["source"]["name"]}: final accuracy '
              f'{run_record["final_accuracy"]:.2f}%, mean {run_record["mean_accuracy"]:.2f}%, '
              f'{run_record["wall_seconds"]:.0f} s', file=sys.stderr)

    partial: List[Any] = []

    def save_batch(name: str, source: Any, record: Dict[str, Any]) -> None:
        if not partial or partial[0] != (name, id(source)):
            earlier = [b for b in resume['batches'] if b['batch'] < record['batch']] \
                if resume and (resume['name'], resume['source']) == (name, source.name) else []
            partial[:] = [(name, id(source)), list(earlier)]
        partial[1].append(record)
        write_results(progress_file, {'name': name, 'source': source.describe(),
                                      'batches': partial[1]})

    done = [(r['name'], r['source'].get('name', '')) for r in runs]
    compare(sources, configs, eval_every=args.eval_every, progress=not args.no_progress,
            on_run=save, on_batch=save_batch, done=done, state_file=state_file,
            resume=resume)
    progress_file.unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    return results_document(runs, extra)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        document = run(args)
    except (LatentReplayError, ValueError, OSError) as exc:
        print(f'latent-replay-eval: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('latent-replay-eval: interrupted; results of finished runs are in '
              f'{Path(args.out) / "results.json"}', file=sys.stderr)
        return 130
    document['summary'] = summarize(document['runs'])
    _print_summary(document)
    print(f'final_accuracy {document["final_accuracy"]:.2f}% -> '
          f'{Path(args.out) / "results.json"}, {Path(args.out) / "accuracy.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
