"""Turn benchmarks/results/*.json into Markdown tables (results/tables.md) and PNG plots.

Run after any benchmark: ``python benchmarks/report.py``. Missing result files are skipped.
"""

import json

import numpy as np
from common import DEFAULT_CUT, RESULTS

MB = 1e6


def load(name):
    """Return a result file as a dict (None when absent)."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def fmt(v, digits=2):
    """Format a number or '-'."""
    if v is None:
        return '-'
    if isinstance(v, float):
        return f'{v:.{digits}f}'
    return str(v)


def context(d):
    """One line of context: threads, load before/after, commit."""
    m = d['machine']
    return (f"_{m['cpu_model']}, {m['cores']} cores; load average before "
            f"{m['load_average'][0]:.1f}, after {d['load_average_after'][0]:.1f}; "
            f"settings {json.dumps(d['settings'])}; torch {d['versions'].get('torch')}, "
            f"onnxruntime {d['versions'].get('onnxruntime')}, commit "
            f"{d['versions'].get('package_commit', '')[:12]}; {d['date_utc']}_")


def md_table(header, rows):
    """Markdown table text."""
    out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    out += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(out)


#: Figure 1's main table: the newest run of all three methods at the default cut.
FIGURE1_MAIN = 'learn_latency_all_default_cut.json'
#: Figure 2: learn-time re-runs on a quieter machine (MobileNetV2 timed with random weights);
#: a later file's row replaces an earlier one's for the same backbone and cut.
#: (file, label shown beside its times).
FIGURE2_TIMES = [('layer_table_learn_time_v2.json', 'v2'),
                 ('layer_table_learn_time_v3.json', 'v3')]


def learn_latency(plt, parts):
    """Render the figure 1 table and plot."""
    d = load(FIGURE1_MAIN) or load('learn_latency.json')
    if not d:
        return
    if 'ratios' not in d:   # interrupted run: summarise the rounds it completed
        from common import summary
        raw = d['seconds']
        d['names'] = {'ours': 'ours (latent replay, default)', 'ar1': 'Avalanche AR1',
                      'native': 'native rehearsal (our code)'}
        d['ratios'] = {f'{k}_over_ours': {'median': float(np.median(
            [p / o for o, p in zip(raw['ours'], raw[k])]))} for k in ('ar1', 'native')
            if k in raw}
        d['seconds'] = {k: summary(v) for k, v in raw.items()}
        d['floors_met'] = {
            'ar1_over_ours >= 4': d['ratios'].get('ar1_over_ours', {}).get('median', 0) >= 4,
            'native_over_ours >= 6':
                d['ratios'].get('native_over_ours', {}).get('median', 0) >= 6}
    names = d['names']
    rows = []
    for key in ('ours', 'ar1', 'native'):
        if key not in d['seconds']:
            continue
        s = d['seconds'][key]
        ratio = 1.0 if key == 'ours' else d['ratios'].get(f'{key}_over_ours', {}).get('median')
        rows.append([names[key], fmt(s['p50']), fmt(s['min']), fmt(s['max']), s['n'],
                     fmt(ratio, 1) + 'x'])
    floors = ', '.join(f"{k}: {'met' if v else 'MISSED'}" for k, v in d['floors_met'].items())
    every = []
    for path in sorted(RESULTS.glob('learn_latency*.json')):
        if path.stem.endswith('_quick'):   # smoke-check sizes (run_all --quick), not figure 1's
            continue
        other = json.loads(path.read_text())
        runs = other.get('runs', {})
        mine = [(r, ours) for key in ('ours', 'ours_alt')   # ours_alt: --alt-cut, same run
                for r, ours in enumerate(runs.get(key, []))]
        for r, ours in mine:
            cut = ours.get('latent_layer') or other.get('ours_latent_layer', '?')
            row = [path.name, other['settings'].get('threads'), cut, r, f"{ours['seconds']:.1f}"]
            for peer in ('ar1', 'native'):
                peer_runs = runs.get(peer, [])
                row.append(f"{peer_runs[r]['seconds'] / ours['seconds']:.2f}x"
                           if r < len(peer_runs) else '-')
            row.append(f"{ours['load_average'][0]:.1f}")
            every.append(row)
    parts.append('## Figure 1: learn latency of one 300-frame episode\n\n' + md_table(
        ['method', 'median s', 'min s', 'max s', 'rounds', 'time / ours'], rows)
        + f'\n\nFloors (median of this run\'s rounds): {floors}.\n\n' + context(d)
        + '\n\nEvery same-run round in results/ (ratio = peer time / ours in that round):\n\n'
        + md_table(['file', 'threads', 'our cut', 'round', 'ours s', 'AR1 / ours',
                    'native / ours',
                    'load (1 min)'], every))
    fig, ax = plt.subplots(figsize=(6, 3))
    keys = [k for k in ('ours', 'ar1', 'native') if k in d['seconds']]
    ax.barh([names[k] for k in keys], [d['seconds'][k]['p50'] for k in keys], color='C0')
    ax.set_xlabel('seconds per 300-frame episode (median)')
    fig.tight_layout()
    fig.savefig(RESULTS / 'learn_latency.png', dpi=110)
    plt.close(fig)


def predict_latency(plt, parts):
    """Render the figure 3 table and plot."""
    d = load('predict_latency.json')
    if not d or 'floors_met' not in d:
        return
    rows = []
    names = {'onnxruntime': 'onnxruntime, float32 lower and upper parts',
             'int8': 'onnxruntime, int8 lower part, float32 upper part',
             'int8_upper': 'onnxruntime, int8 lower and upper parts',
             'torch': 'torch (eager)'}
    default = d.get('default_backend') or (   # files before 2026-12-02 do not name it
        'int8_upper' if 'int8 lower + int8 upper (default) idle p50 <= 2 ms'
        in d['floors_met'] else 'int8')
    names[default] += ' (default)'
    for backend, r in d['results'].items():
        rows.append([names.get(backend, backend), fmt(r['idle_ms']['p50']),
                     fmt(r['idle_ms']['p99']),
                     fmt(r['during_learn_ms'].get('p50')), fmt(r['during_learn_ms'].get('p99')),
                     r['during_learn_ms'].get('n'), fmt(r['slowdown_p50'], 2) + 'x',
                     fmt((r.get('network_alone_ms') or {}).get('p50'))])
    floors = ', '.join(f"{k}: {'met' if v else 'MISSED'}" for k, v in d['floors_met'].items())
    parts.append('## Figure 3: predict latency per frame (batch 1, ms)\n\n' + md_table(
        ['predictions run on', 'idle p50', 'idle p99', 'learning p50', 'learning p99',
         'calls during learning', 'slowdown p50', 'ONNX sessions alone p50'], rows)
        + f"\n\nEager / ONNX Runtime idle p50: {d['eager_over_ort_idle_p50']:.2f}x"
        + (f"; ONNX Runtime float32 / int8 lower part: {d['ort_over_int8_idle_p50']:.2f}x"
           if 'ort_over_int8_idle_p50' in d else '')
        + (f"; int8 lower part / int8 lower and upper parts: "
           f"{d['int8_over_int8_upper_idle_p50']:.2f}x"
           if 'int8_over_int8_upper_idle_p50' in d else '')
        + f'. Floors: {floors}.\n\n' + context(d))
    fig, ax = plt.subplots(figsize=(6, 3))
    labels, vals = [], []
    for backend, r in d['results'].items():
        for phase, key in (('idle', 'idle_ms'), ('learning', 'during_learn_ms')):
            labels.append(f'{backend} {phase}')
            vals.append(r[key].get('p50', 0))
    ax.barh(labels, vals, color='C1')
    ax.set_xlabel('predict latency p50 (ms)')
    fig.tight_layout()
    fig.savefig(RESULTS / 'predict_latency.png', dpi=110)
    plt.close(fig)


def memory(plt, parts):
    """Render the figure 5 tables."""
    d = load('memory.json')
    if not d:
        return
    rows = [[r['backbone'], r['cut'], 'x'.join(map(str, r['latent_shape'])), r['storage'],
             r['bytes_per_pattern'], fmt(r['bytes_1500'] / MB, 2), fmt(r['shm_segment_bytes']
                                                                       / MB, 2)]
            for r in d['storage']]
    ar1 = d.get('avalanche_ar1', {})
    if ar1.get('available'):
        rows.append(['Avalanche AR1 (MobileNetV1)', 'lat_features.19 (conv5_4/dw)',
                     'x'.join(map(str, ar1['latent_shape'])), 'float32',
                     ar1['bytes_per_pattern'], fmt(ar1['bytes_1500'] / MB, 2), '-'])
    text = ('## Figure 5: replay memory for 1,500 patterns\n\n' + md_table(
        ['backbone', 'cut', 'latent', 'storage', 'bytes/pattern', 'MB (1,500)',
         'shared-memory segment MB'], rows))
    if 'floors_met' in d:
        floors = ', '.join(f"{k}: {'met' if v else 'MISSED'}"
                           for k, v in d['floors_met'].items())
        text += (f"\n\nThe paper's float32 store at conv5_4/dw is "
                 f"{d['paper_over_default']:.1f}x the default uint8 store. Floors: {floors}.")
    rss = d.get('learner_process_rss') or {}
    if rss:
        rrows = [[k, fmt(v.get('constructed_rss', 0) / MB, 0),
                  fmt(v.get('memory_full_rss', 0) / MB, 0),
                  fmt(v.get('after_learn_rss', 0) / MB, 0), fmt(v.get('peak_rss', 0) / MB, 0)]
                 for k, v in rss.items() if 'error' not in v]
        text += '\n\nResident memory of a learner process (MB):\n\n' + md_table(
            ['lower part runs on', 'after construction', 'memory full', 'after a learn',
             'peak'], rrows)
    parts.append(text + '\n\n' + context(d))


def pooled_runs(names, method):
    """``method``'s runs (run name -> result) pooled from several accuracy.py files."""
    runs = {}
    for name in names:
        runs.update(((load(name) or {}).get('results') or {}).get(method, {}))
    return runs


def accuracy(plt, parts):
    """Render the figure 7 tables and plots."""
    for scen, title in (('clutter', 'COIL-100 clutter NIC'), ('nic_coil', 'COIL-100 NIC_coil')):
        d = load(f'accuracy_{scen}.json')
        if not d:
            continue
        ours_runs = {}
        native_runs = pooled_runs(sorted(p.name for p in RESULTS.glob(
            f'accuracy_{scen}_native*.json')), 'native')   # _native.json, _native_b.json ...
        for extra in ('cumulative', 'native', 'cut51', 'cut53',
                      'b14_default'):   # separate runs, own files
            more = load(f'accuracy_{scen}_{extra}.json')
            if not more:
                continue
            if extra.startswith('cut') or extra == 'b14_default':   # ours at an explicit cut
                cut = more['settings']['cut']
                if extra == 'b14_default':   # the defaults of that day, first 14 batches
                    cut += f", defaults of {more['date_utc'][:10]}"
                for method, value in more['summary'].items():
                    d['summary'][f'{method} ({cut})'] = value
                    ours_runs[f'{method} ({cut})'] = more['results'][method]
            elif extra == 'native':   # runs pooled from every native rehearsal file
                from accuracy import summarise
                d['summary'].update(summarise({'native': native_runs}))
            else:
                d['summary'].update(more['summary'])
        rows = []
        for method, s in d['summary'].items():
            spread = (lambda k: f" ± {100 * s[k]:.1f}") if s['n'] > 1 else (lambda k: '')
            rows.append([method, f"{100 * s['final_mean']:.1f}{spread('final_std')}",
                         f"{100 * s['mean_mean']:.1f}{spread('mean_std')}", s['n'],
                         ','.join(map(str, s['batches']))])
        text = (f'## Figure 7, early stretch: {title} (%, mean ± std over runs)\n\n'
                + md_table(['method', 'final', 'mean over the stream', 'runs', 'batches'],
                           rows))
        short = load(f'accuracy_{scen}_b14.json')
        if short:
            srows = [[m, f"{100 * s['final_mean']:.1f}", f"{100 * s['mean_mean']:.1f}", s['n']]
                     for m, s in short['summary'].items()]
            text += ('\n\nFirst 14 batches only ('
                     '%):\n\n' + md_table(['method', 'final', 'mean', 'runs'], srows))
        if native_runs:
            from accuracy import checkpoints_of
            cmp_rows = []
            for run, nat in sorted(native_runs.items()):
                for name, runs in ours_runs.items():
                    ours = runs.get(run)
                    if not ours or not name.startswith('ar1_free'):
                        continue
                    points = sorted(checkpoints_of(ours['batches'], 10))
                    at = nat['batches'] - 1
                    if at in points:
                        cmp_rows.append([run, nat['batches'], name,
                                         f"{100 * ours['curve'][points.index(at)]:.1f}",
                                         f"{100 * nat['final']:.1f}"])
            if cmp_rows:
                header = ['run', 'batches', 'ours', 'ours %', 'native rehearsal %']
                text += ('\n\nOurs (ar1_free) vs native rehearsal after the same number of '
                         'batches (%):\n\n' + md_table(header, cmp_rows))
        parts.append(text + '\n\n' + context(d))
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ms = list(d['summary'])
        ax.bar(ms, [100 * d['summary'][m]['final_mean'] for m in ms],
               yerr=[100 * d['summary'][m]['final_std'] for m in ms], color='C2', capsize=3)
        ax.set_ylabel('final accuracy %')
        ax.set_title(f'{title}: early stretch of run0 (batches per bar in the table)')
        plt.setp(ax.get_xticklabels(), rotation=30, ha='right')
        fig.tight_layout()
        fig.savefig(RESULTS / f'accuracy_{scen}.png', dpi=110)
        plt.close(fig)


#: Figure 7 over whole streams: (label, source, key). Sources under docs/results/ are
#: latent-replay-eval outputs (percent); the others accuracy.py outputs here (fractions).
WHOLE_STREAMS = {
    'COIL-100 clutter NIC, 383 batches': [
        ('ours, default (int8 lower and upper parts)', 'docs/coil100_clutter_upper_int8_5runs',
         'default'),
        ('ours, int8 lower part, float32 upper part (default until 2026-12-02)',
         'docs/coil100_clutter_default_5runs', 'default'),
        ('ours, AR1* (strategy ar1, otherwise default)', 'docs/coil100_clutter_ar1_5runs',
         'ar1'),
        ('ours, CWR* (strategy cwr; float32 upper part)', 'docs/coil100_clutter_cwr_5runs',
         'cwr'),
        ('ours, float32 lower part', 'docs/coil100_clutter_lr1e3_run0', 'default'),
        ('ours, float32 lower part', 'docs/coil100_clutter_lr1e3_run1', 'default'),
        ('ours, lr_incremental 3e-4 (earlier)', 'docs/coil100_clutter_all', 'default'),
        ('ours, naive fine-tuning', 'docs/coil100_clutter_all', 'naive'),
        ('Avalanche Cumulative, 1 batch/experience',
         '+'.join(f'accuracy_clutter_cumulative_g1_{s}.json' for s in 'abcde'),
         'av_cumulative'),   # one file per run and core: runs 2, 3 -> a, b; 0, 1, 4 -> c, d, e
        ('Avalanche Cumulative, 10 batches/experience',
         'accuracy_clutter_cumulative_full.json', 'av_cumulative'),
        ('Avalanche Replay, 1,500 latents',
         'accuracy_clutter_full_replay_a.json+accuracy_clutter_full_replay_b.json', 'av_replay'),
        ('Avalanche Naive', 'accuracy_clutter_full_naive.json', 'av_naive'),
        ('nearest class mean (frozen features)', 'accuracy_clutter_full_heads.json', 'ncm'),
        ('streaming LDA (frozen features)', 'accuracy_clutter_full_heads.json', 'slda'),
    ],
    'COIL-100 NIC_coil, 138 batches': [
        ('ours, default (int8 lower and upper parts)', 'docs/nic_coil_upper_int8_5runs',
         'default'),
        ('ours, int8 lower part, float32 upper part (default until 2026-12-02)',
         'docs/nic_coil_default_5runs', 'default'),
        ('ours, AR1* (strategy ar1; float32 upper part)', 'docs/nic_coil_ar1_5runs', 'ar1'),
        ('ours, CWR* (strategy cwr, otherwise default)', 'docs/nic_coil_cwr_5runs', 'cwr'),
        ('ours, CWR* (strategy cwr; float32 upper part)',
         'docs/nic_coil_cwr_float32upper_run0', 'cwr'),
        ('ours, float32 lower part', 'docs/nic_coil_lr1e3_run0', 'default'),
        ('ours, lr_incremental 3e-4 (earlier)', 'docs/nic_coil', 'default'),
        ('ours, naive fine-tuning', 'docs/nic_coil', 'naive'),
        ('Avalanche Cumulative, 1 batch/experience',
         'accuracy_nic_coil_full_cumulative_g1_a.json+accuracy_nic_coil_full_cumulative_g1_b.json',
         'av_cumulative'),
        ('Avalanche Cumulative, 10 batches/experience',
         'accuracy_nic_coil_full_cumulative.json', 'av_cumulative'),
        ('Avalanche Replay, 1,500 latents',
         'accuracy_nic_coil_full_replay_a.json+accuracy_nic_coil_full_replay_b.json',
         'av_replay'),
        ('Avalanche Naive', 'accuracy_nic_coil_full_cheap.json', 'av_naive'),
        ('nearest class mean (frozen features)', 'accuracy_nic_coil_full_cheap.json', 'ncm'),
        ('streaming LDA (frozen features)', 'accuracy_nic_coil_full_cheap.json', 'slda'),
    ],
}


def _whole_stream_row(label, source, key):
    if source.startswith('docs/'):
        path = RESULTS.parents[1] / 'docs' / 'results' / source[5:] / 'results.json'
        if not path.exists():
            return None
        s = json.loads(path.read_text())['summary'].get(key)
        if not s:
            return None
        final, final_sd, mean, mean_sd = (s['final_accuracy_mean'], s['final_accuracy_std'],
                                          s['mean_accuracy_mean'], s['mean_accuracy_std'])
        runs = ','.join(src.rsplit('/', 1)[-1] for src in s['sources'])
        where = f'docs/results/{source[5:]}'
    else:   # one accuracy.py file, or several ('a.json+b.json') whose runs are pooled
        per_run = pooled_runs(source.split('+'), key)
        if not per_run:
            return None
        from accuracy import summarise
        s = summarise({key: per_run})[key]
        final, final_sd, mean, mean_sd = (100 * s['final_mean'], 100 * s['final_std'],
                                          100 * s['mean_mean'], 100 * s['mean_std'])
        runs = ','.join(s['runs'])
        where = ' + '.join(n for n in source.split('+') if (RESULTS / n).exists())
    spread = (lambda v: f' ± {v:.1f}') if ',' in runs else (lambda v: '')
    return [label, f'{final:.1f}{spread(final_sd)}', f'{mean:.1f}{spread(mean_sd)}', runs,
            where]


def accuracy_whole_streams(plt, parts):
    """Render figure 7 over whole streams from every source that exists."""
    for title, sources in WHOLE_STREAMS.items():
        rows = [r for r in (_whole_stream_row(*src) for src in sources) if r]
        if not rows:
            continue
        parts.append(f'## Figure 7 over whole streams: {title} (%)\n\n' + md_table(
            ['method', 'final', 'mean over the stream', 'runs', 'source'], rows))
        fig, ax = plt.subplots(figsize=(12, 0.4 * len(rows) + 1.0))
        labels = [f"{r[0]}, run {r[3].replace('run', '')}" for r in rows][::-1]
        finals = [r[1].split(' ± ') for r in rows][::-1]   # '78.9 ± 1.5' or '80.8'
        ax.barh(labels, [float(f[0]) for f in finals],
                xerr=[float(f[1]) if len(f) > 1 else 0.0 for f in finals], capsize=2,
                color=['C0' if lab.startswith('ours') else 'C1' for lab in labels])
        ax.set_xlabel('final accuracy % (ours blue, peers orange; bars: std over runs)')
        ax.set_xlim(0, 100)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis='y', labelsize=7)
        fig.tight_layout()
        name = 'clutter' if 'clutter' in title else 'nic_coil'
        fig.savefig(RESULTS / f'accuracy_whole_{name}.png', dpi=110, bbox_inches='tight')
        plt.close(fig)


def native_further(plt, parts):
    """Render native rehearsal further into the clutter stream vs our default, same batches.

    Native rehearsal (``accuracy.py --methods native --native-eval-every N``) is compared
    only where our default's whole-stream evaluation (every 8 batches) has the same batch.
    """
    d = load('accuracy_clutter_longer_native.json')
    runs = ((d or {}).get('results') or {}).get('native')
    if not runs:
        return
    rows, curves = [], []
    for run, nat in sorted(runs.items()):
        ours = _accuracy_curve(eval_batches(f'coil100_clutter_upper_int8_{run}')[1] or [])
        pairs = [(b, 100 * a, ours[b - 1]) for b, a in zip(nat['eval_batches'], nat['curve'])
                 if b - 1 in ours]
        for b, native, mine in pairs:
            rows.append([run, b, f'{native:.1f}', f'{mine:.1f}', f'{mine - native:+.1f}',
                         'met' if mine >= native - 2 else 'MISSED'])
        curves.append((run, nat, ours))
    worst = min((float(r[4]) for r in rows), default=float('nan'))
    text = ('## Figure 7: native rehearsal further into the clutter stream vs our default '
            '(%)\n\n' + md_table(['run', 'batches learned', 'native rehearsal',
                                  'ours (default)', 'ours - native',
                                  'floor ours >= native - 2'], rows)
            + f'\n\nWorst difference {worst:+.1f} points; native rehearsal '
            + '; '.join(f"{run}: {nat['batches']} batches in {nat['seconds']:.0f} s"
                        + (' (partial: stopped before the end of the stream)'
                           if nat.get('partial') else '')
                        for run, nat in sorted(runs.items()))
            + '. Ours: `latent-replay-eval` whole-stream evaluations '
            '(docs/results/coil100_clutter_upper_int8_runN), taken every 8 batches.'
            + '\n\n' + context(d))
    parts.append(text)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k, (run, nat, ours) in enumerate(curves):
        last = max(nat['eval_batches'])
        xs = [b + 1 for b in sorted(ours) if b < last]
        ax.plot(xs, [ours[x - 1] for x in xs], '-', color=f'C{k}', label=f'ours, {run}')
        ax.plot(nat['eval_batches'], [100 * a for a in nat['curve']], 'o--', color=f'C{k}',
                markersize=3, label=f'native rehearsal, {run}')
    ax.set_xlabel('batches learned')
    ax.set_ylabel('accuracy % (1,029 test frames)')
    ax.set_title('COIL-100 clutter: native rehearsal vs our default', fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / 'accuracy_native_further_clutter.png', dpi=110)
    plt.close(fig)


def layer_table(plt, parts):
    """Render the figure 2 table and plot."""
    d = load('layer_table.json')
    if not d:
        return
    again, reruns = {}, []
    for name, label in FIGURE2_TIMES:
        rerun = load(name)
        if rerun and rerun['rows']:
            reruns.append((name, rerun))
            again.update({(r['backbone'], r['cut']): (r['learn_seconds_median'], label)
                          for r in rerun['rows'] if 'learn_seconds_median' in r})
    rows = []
    for r in d['rows']:
        acc = r.get('accuracy')
        rows.append([r['backbone'] + (' (random init)' if r['random_init'] else ''), r['cut'],
                     'x'.join(map(str, r['latent_shape'])), r['bytes_per_pattern']['uint8'],
                     r['bytes_per_pattern']['float16'], r['bytes_per_pattern']['float32'],
                     fmt(r.get('learn_seconds_median')),
                     '{} ({})'.format(fmt(again[r['backbone'], r['cut']][0]),
                                      again[r['backbone'], r['cut']][1])
                     if (r['backbone'], r['cut']) in again else '-',
                     fmt(100 * acc['final'], 1) if acc else '-',
                     fmt(100 * acc['mean'], 1) if acc else '-'])
    text = ('## Figure 2: the layer table (paper Table I) on our backbones\n\n' + md_table(
        ['backbone', 'cut', 'latent', 'B/pattern uint8', 'B/pattern fp16', 'B/pattern fp32',
         'learn s / episode', 'learn s, re-run (file)', 'final acc %', 'mean acc %'], rows)
        + '\n\n' + context(d))
    for name, rerun in reruns:
        text += f'\n\n{name}: ' + context(rerun)
    parts.append(text)
    lite = [r for r in d['rows'] if r['backbone'] == 'efficientnet_lite0']
    if lite:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        cuts = [r['cut'] for r in lite]
        ax.plot(cuts, [r.get('learn_seconds_median', float('nan')) for r in lite], 'o-',
                label='learn s / episode (left)')
        ax.set_ylabel('learn seconds / episode')
        ax2 = ax.twinx()
        ax2.plot(cuts, [100 * r['accuracy']['final'] if r.get('accuracy') else float('nan')
                        for r in lite], 's--', color='C3', label='final acc % (right)')
        ax2.set_ylabel('final accuracy %')
        fig.legend(loc='upper right', fontsize=8)
        plt.setp(ax.get_xticklabels(), rotation=30, ha='right')
        ax.set_title('EfficientNet-Lite0: cut vs learn time and accuracy')
        fig.tight_layout()
        fig.savefig(RESULTS / 'layer_table.png', dpi=110)
        plt.close(fig)


#: Figure 2 over a whole stream: latent-replay-eval outputs (docs/results/), one per cut and
#: scenario run, same protocol: (label, folder, folder of the default on the same run).
FIGURE2_WHOLE_TITLE = 'COIL-100 clutter NIC, 383 batches, evaluated every 8'
FIGURE2_WHOLE = [
    ('blocks.4.2', 'coil100_clutter_cut_blocks_4_2_run0', 'coil100_clutter_upper_int8_run0'),
    ('blocks.5.1', 'coil100_clutter_cut_blocks_5_1_run0', 'coil100_clutter_upper_int8_run0'),
    ('blocks.5.3 (default)', 'coil100_clutter_upper_int8_run0', None),
    ('blocks.6.0', 'coil100_clutter_cut_blocks_6_0_run0', 'coil100_clutter_upper_int8_run0'),
    ('conv_head', 'coil100_clutter_cut_conv_head_run0', 'coil100_clutter_upper_int8_run0'),
    ('pool', 'coil100_clutter_cut_pool_run0', 'coil100_clutter_upper_int8_run0'),
    ('blocks.5.3, strategy ar1 (run beside the cuts above: timing reference)',
     'coil100_clutter_ar1_run0', 'coil100_clutter_upper_int8_run0'),
    ('blocks.5.1', 'coil100_clutter_cut_blocks_5_1_run1', 'coil100_clutter_upper_int8_run1'),
    ('blocks.6.0', 'coil100_clutter_cut_blocks_6_0_run1', 'coil100_clutter_upper_int8_run1'),
    ('conv_head', 'coil100_clutter_cut_conv_head_run1', 'coil100_clutter_upper_int8_run1'),
    ('pool', 'coil100_clutter_cut_pool_run1', 'coil100_clutter_upper_int8_run1'),
    *[('blocks.5.3, lower_mode slowed (lr x 0.1, lower BRN statistics fixed)',
       f'coil100_clutter_slowed_fixed_0_1_run{k}', f'coil100_clutter_upper_int8_run{k}')
      for k in range(5)],
    *[(f'blocks.5.3, lower_mode slowed, lower_frozen_until {layer}',
       f'coil100_clutter_slowed_after_{layer.replace(".", "_")}_run{k}',
       f'coil100_clutter_upper_int8_run{k}')
      for layer, k in (('blocks.3.2', 0), ('blocks.3.2', 1), ('blocks.4.2', 0))],
    ('blocks.5.3, lower_mode slowed, predicting from an int8 graph (slowed_lower_precision)',
     'coil100_clutter_slowed_int8_run0', 'coil100_clutter_upper_int8_run0'),
    ('blocks.5.3, lower_mode slowed, lower_frozen_until blocks.3.2, predicting in int8',
     'coil100_clutter_slowed_after_blocks_3_2_int8_run0', 'coil100_clutter_upper_int8_run0'),
    ('blocks.5.3, lower_mode slowed (lr x 0.1, lower BRN statistics drift)',
     'coil100_clutter_slowed_0_1_b96_run0', 'coil100_clutter_upper_int8_run0'),
    ('blocks.5.3, lower_mode slowed (lr x 1.0, lower BRN statistics fixed)',
     'coil100_clutter_slowed_fixed_1_0_b96_run0', 'coil100_clutter_upper_int8_run0'),
]
#: Rows of FIGURE2_WHOLE left out of its plot (short runs, runs 2-4 of the slowed lower
#: part, which would add six curves, the split after blocks.4.2 and the int8 predictions,
#: which follow their float32 twins within about a point; the table has them).
FIGURE2_WHOLE_NOT_PLOTTED = {'coil100_clutter_slowed_0_1_b96_run0',
                             'coil100_clutter_slowed_fixed_1_0_b96_run0',
                             'coil100_clutter_slowed_after_blocks_4_2_run0',
                             'coil100_clutter_slowed_int8_run0',
                             'coil100_clutter_slowed_after_blocks_3_2_int8_run0'} | {
    f'coil100_clutter_slowed_fixed_0_1_run{k}' for k in (2, 3, 4)}


def eval_batches(folder):
    """Return (run name, batches, finished) of a latent-replay-eval output.

    A run still going or stopped counts with what its progress file holds.
    """
    base = RESULTS.parents[1] / 'docs' / 'results' / folder
    if (base / 'results.json').exists():
        run = json.loads((base / 'results.json').read_text())['runs'][0]
        return run['source']['name'], run['batches'], True
    if (base / 'progress.json').exists():
        run = json.loads((base / 'progress.json').read_text())
        return run['source']['name'], run['batches'], False
    return None, None, False


def _accuracy_curve(batches):
    return {b['batch']: b['accuracy'] for b in batches if 'accuracy' in b}


def _same_stretch(folder, last):
    """Return 'final / mean' of the run in ``folder`` over its batches 0..``last``."""
    curve = _accuracy_curve(eval_batches(folder)[1] or [])
    if last not in curve:
        return '-'
    seen = [a for b, a in curve.items() if b <= last]
    return f'{curve[last]:.1f} / {np.mean(seen):.1f}'


def layer_table_whole_stream(plt, parts):
    """Render figure 2's accuracy per cut over whole streams, with a plot of the curves."""
    rows, curves = [], {}
    for label, folder, default in FIGURE2_WHOLE:
        name, batches, finished = eval_batches(folder)
        if not batches:
            continue
        curve = _accuracy_curve(batches)
        full = [b['train_seconds'] for b in batches if b['replay_fill'] >= 1500]
        last = max(curve)
        rows.append([
            label, name.rsplit('/', 1)[-1],
            f'{last + 1}' + ('' if finished else ' (unfinished)'),
            f'{curve[last]:.1f}', f'{np.mean(list(curve.values())):.1f}',
            _same_stretch(default, last) if default else '-',
            fmt(float(np.median(full)), 2) if full else '-',
            fmt(sum(b['train_seconds'] for b in batches), 0), f'docs/results/{folder}'])
        if 'reference' in label or folder in FIGURE2_WHOLE_NOT_PLOTTED:
            continue
        curves[folder] = (f"{label}, {name.rsplit('/', 1)[-1]}", curve)
        if default and default not in curves:   # the default's curve on every run shown
            run, batches_default, _ = eval_batches(default)
            if batches_default:
                curves[default] = (f"{DEFAULT_CUT} (default), {run.rsplit('/', 1)[-1]}",
                                   _accuracy_curve(batches_default))
    if not rows:
        return
    parts.append(
        f'## Figure 2 over whole streams: accuracy per cut ({FIGURE2_WHOLE_TITLE})\n\n'
        + md_table(['cut', 'run', 'batches learned', 'final acc %', 'mean acc %',
                    f'default ({DEFAULT_CUT}) on the same run and batches, final / mean %',
                    'train s / batch, memory full (median)', 'train s, all batches',
                    'source'], rows))
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (label, curve) in enumerate(curves.values()):   # tab20: a colour per curve
        ax.plot([b + 1 for b in curve], list(curve.values()), label=label,
                color=plt.cm.tab20(i % 20), lw=2 if 'default' in label else 1,
                ls='--' if 'run0' not in label else '-')
    ax.set_xlabel('batches learned')
    ax.set_ylabel('test accuracy %')
    ax.set_title(f'EfficientNet-Lite0 cuts, {FIGURE2_WHOLE_TITLE}', fontsize=9)
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(RESULTS / 'layer_table_whole_stream.png', dpi=110)
    plt.close(fig)


def upper_precision(plt, parts):
    """Render figure 3b: the same trained models predicting with an int8 or float32 upper part."""
    files = sorted(p.name for p in RESULTS.glob('upper_precision_*.json')
                   if not p.name.endswith('_quick.json'))
    docs = [d for d in (load(name) for name in files) if d and d.get('results')]
    if not docs:
        return
    rows, deltas = [], []
    for d in docs:
        s = d['settings']
        for r in d['results']:
            acc = r['accuracy']
            deltas.append(acc['int8'] - acc['float32'])
            rows.append([f"{s['scenario']} run {s['run']}", r['steps'], r['classes'],
                         s['test_frames'], fmt(acc['float32']), fmt(acc['int8']),
                         fmt(acc['int8'] - acc['float32']), fmt(r['agreement'], 1),
                         fmt(r['float32_over_int8_p50']) + 'x',
                         fmt(r['load_average'][0], 1)])
    parts.append(
        '## Figure 3b: upper part in int8 vs float32 for predictions, same trained models\n\n'
        + md_table(['stream', 'learned steps', 'classes', 'test frames', 'accuracy float32 %',
                    'accuracy int8 %', 'int8 - float32', 'same label %',
                    'predict p50 float32 / int8', 'load'], rows)
        + f'\n\nMean difference over {len(deltas)} states: {np.mean(deltas):+.2f} points. '
        'States are evaluations\' progress files part-way through and near the end of the '
        'whole stream; both learners run the int8 lower part (the default) and the int8 '
        'upper part is calibrated on the state\'s replay memory, as after a restart. The '
        'latency ratio is only indicative where the load was high (other jobs on both '
        'cores); Figure 3 has it on a quiet machine.\n\n'
        + '\n\n'.join(context(d) for d in docs))


def node(plt, parts):
    """Render the figure 4 table."""
    d = load('node_throughput.json')
    if not d:
        return
    rows = []
    for size, r in d['results'].items():
        if 'error' in r:
            rows.append([size, 'error', r['error'][:80], '', '', '', '', '', ''])
            continue
        for phase in ('idle', 'learning'):
            w = r[phase]
            lat = w['latency_stamp_to_prediction_ms']
            cpu = w.get('node_cpu_seconds_by_thread')
            share = '-' if cpu is None else (
                f"{100 * w['node_cpu_share_of_one_core']:.0f} "
                f"({100 * cpu.get('main', 0.0) / w['cpu_window_seconds']:.0f})")
            rows.append([size, phase, fmt(w.get('frames_received_per_s')),
                         w.get('dropped_in_transport', '-'),
                         w.get('node_frames_dropped', '-'), fmt(w['predictions_per_s']),
                         fmt(lat.get('p50'), 1), fmt(lat.get('p99'), 1), share])
        rows.append([size, 'node RSS MB', fmt(r['node_rss_bytes'] / MB, 0),
                     'peak ' + fmt(r['node_peak_rss_bytes'] / MB, 0), '', '', '', '', ''])
    parts.append('## Figure 4: node throughput, 30 fps camera in another process\n\n'
                 + md_table(['image', 'phase', 'frames received/s', 'dropped in transport',
                             'dropped by node', 'predictions/s', 'latency p50 ms',
                             'latency p99 ms', 'node CPU % of a core (spin thread)'], rows)
                 + '\n\n' + executor_summary(d['results']) + context(d))


def executor_summary(results):
    """Frames lost per executor, image size and phase over all rounds of one run."""
    totals = {}
    for key, r in results.items():
        if 'error' in r or 'executor' not in r:
            continue
        size = key.split()[0]
        for phase in ('idle', 'learning'):
            w = r[phase]
            if w.get('frames_sent') is None:
                continue
            t = totals.setdefault((r['executor'], size, phase), [0, 0, 0, 0])
            t[0] += 1
            t[1] += w['frames_sent']
            t[2] += w['dropped_in_transport']
            t[3] += int(w['dropped_in_transport'] > 0)
    if not {executor for executor, _, _ in totals} - {'CallbackPoolExecutor'}:
        return ''
    rows = [[executor, size, phase, n, sent, lost, f'{100 * lost / max(sent, 1):.1f}', bad]
            for (executor, size, phase), (n, sent, lost, bad) in sorted(totals.items())]
    return ('Executors compared in the same run (all rounds):\n\n'
            + md_table(['executor', 'image', 'phase', 'windows', 'frames sent',
                        'lost in transport', 'lost %', 'windows with losses'], rows)
            + '\n\n')


def scaling(plt, parts):
    """Render the figure 6 tables and plot."""
    d = load('scaling_full.json') or load('scaling.json')
    if not d:
        return
    text = '## Figure 6: scaling\n\n'
    if d.get('vs_classes'):
        text += md_table(['classes', 'learn s (300 frames)', 'replay MB', 'RSS MB'],
                         [[r['classes'], fmt(r['learn_seconds_300']),
                           fmt(r['replay_bytes'] / MB), fmt(r['rss_bytes'] / MB, 0)]
                          for r in d['vs_classes']]) + '\n\n'
    if d.get('vs_batches'):
        text += md_table(['batches seen', 'learn s (300 frames)', 'replay fill', 'replay MB',
                          'RSS MB'],
                         [[r['batches_seen'], fmt(r['learn_seconds_300']), r['replay_fill'],
                           fmt(r['replay_bytes'] / MB), fmt(r['rss_bytes'] / MB, 0)]
                          for r in d['vs_batches']]) + '\n\n'
    parts.append(text + context(d))
    fig, axes = plt.subplots(2, 2, figsize=(8, 5), sharex='col')
    for col, (key, x, label) in enumerate((('vs_classes', 'classes', 'classes'),
                                           ('vs_batches', 'batches_seen', 'batches seen'))):
        rows = d.get(key) or []
        if not rows:
            continue
        xs = [r[x] for r in rows]
        axes[0][col].plot(xs, [r['learn_seconds_300'] for r in rows], 'o-')
        axes[0][col].set_ylabel('learn s / 300-frame episode')
        axes[0][col].set_ylim(bottom=0)
        axes[1][col].plot(xs, [r['rss_bytes'] / MB for r in rows], 'o-', label='process RSS')
        axes[1][col].plot(xs, [r['replay_bytes'] / MB for r in rows], 's-',
                          label='replay memory')
        axes[1][col].set_ylabel('MB')
        axes[1][col].set_ylim(bottom=0)
        axes[1][col].set_xlabel(label)
        axes[1][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / 'scaling.png', dpi=110)
    plt.close(fig)


def main():
    """Render every figure."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    parts = []
    for fn in (learn_latency, layer_table, layer_table_whole_stream, predict_latency,
               upper_precision, node, memory, scaling, accuracy, accuracy_whole_streams,
               native_further):
        try:
            fn(plt, parts)
        except Exception as exc:  # noqa: B902 - one broken file must not hide the others
            parts.append(f'## {fn.__name__}: could not render ({type(exc).__name__}: {exc})')
    text = '\n\n'.join(parts) + '\n'
    (RESULTS / 'tables.md').write_text(text)
    readme = RESULTS.parent / 'README.md'
    begin, end = '<!-- tables:begin -->\n', '<!-- tables:end -->'
    doc = readme.read_text()
    if begin in doc and end in doc:   # the README shows the same tables, one level down
        head, rest = doc.split(begin, 1)
        tail = rest.split(end, 1)[1]
        readme.write_text(head + begin + text.replace('\n## ', '\n### ').replace(
            '## ', '### ', 1) + end + tail)
    print((RESULTS / 'tables.md').read_text())


if __name__ == '__main__':
    main()
