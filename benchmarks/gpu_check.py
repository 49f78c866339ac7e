"""The GPU acceptance check: everything that needs CUDA, in one go, timed, summarised on one screen
and recorded in one JSON file, for the rare minutes a GPU is at hand.

    make gpu-check                                         # = python -m benchmarks.gpu_check
    make gpu-check GPU_CHECK="--out=h100.json"
    python -m benchmarks.gpu_check --dry-run               # What would run (anywhere, CUDA or not).

(1) tests: `pytest -m cuda` in a subprocess: tests/test_cuda.py (CPU/CUDA agreement of networks,
    sampler and training step in float32, per-seed sampling, bf16 + channels-last + torch.compile
    against fp32, two-process torchrun with NCCL resumed bitwise, generation and FID features) and
    the CUDA tests beside their modules (fused Adam, pinned-memory DataLoader). Each test's outcome,
    time and the numbers it measured (record_property) come from pytest's JUnit XML.
(2) throughput: benchmarks/throughput.py in a short mode (QUICK_THROUGHPUT_ARGS): the fp32 baseline,
    the published code's formulation and bf16 + channels-last + torch.compile, for the DDPM++
    CIFAR-10 training step (img/s, peak memory, MFU), 18-step sampling and FID feature extraction
    (when the Inception detector can be loaded; offline, that part says why it was skipped).

On one H100 the whole check should take under 8 minutes (--budget, BUDGET_S), compile warm-up
included: the tests may use half of the budget, the throughput run what the tests left; a part that
runs out of time is stopped and recorded as stopped.
The JSON file is rewritten after each part, so a machine taken away halfway still leaves a record.
It ends with a one-screen summary and a markdown table for the GPU section of docs/PERFORMANCE.md.
Exit status 0 when every test passed and the throughput run completed without a failing
configuration, 1 otherwise. Without CUDA: one line, exit status 0, nothing run, nothing written.
"""

import collections
import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from typing import Optional, Sequence

import click
import torch

from benchmarks import throughput
from torch_utils import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NO_CUDA_LINE = 'gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing to check.'
CPU_LINE = 'gpu-check: --device=cpu: this check is for CUDA devices; nothing to check.'
BUDGET_S = 8 * 60
OUTPUT_TAIL_CHARS = 6000

# The short throughput run: the baseline, the published formulation and the fastest configuration we
# expect (bf16 autocast, channels-last, torch.compile), at one training batch; every option of
# benchmarks/throughput.py, so the JSON records exactly what ran.
FAST_CONFIG = 'bf16-cl-compile'
QUICK_CONFIGS = (throughput.BASELINE, throughput.PUBLISHED, FAST_CONFIG)
QUICK_TRAIN_BATCH = 128
QUICK_THROUGHPUT_ARGS = (f'--configs={",".join(QUICK_CONFIGS)}', f'--batch={QUICK_TRAIN_BATCH}', '--iters=10', '--warmup=3',
                         '--sample-batch=64', '--sample-runs=2', '--fid-batch=256', '--fid-images=512')

# The targets of docs/PERFORMANCE.md for bf16 + compile against fp32 eager on one H100.
TARGETS = (('train', 'training images/s >= 2.5x fp32', 'ratio', 2.5),
           ('train', 'training MFU >= 40%', 'mfu', 0.40),
           ('sampling', 'sampling images/s >= 3x fp32', 'ratio', 3.0))

#----------------------------------------------------------------------------
# What runs.

def pytest_command(junit_path: str, test_paths: Sequence[str] = ('tests',), python: str = sys.executable) -> list[str]:
    """pytest -m cuda with a JUnit XML report (xunit1, the format that keeps record_property)."""
    return [python, '-m', 'pytest', '-m', 'cuda', '-q', '-p', 'no:cacheprovider', '-o', 'junit_family=xunit1',
            f'--junitxml={junit_path}', *test_paths]


def throughput_command(out_json: str, device: str = 'cuda', args: Sequence[str] = QUICK_THROUGHPUT_ARGS,
                       detector: Optional[str] = None, python: str = sys.executable) -> list[str]:
    """benchmarks/throughput.py with `args`, its JSON to out_json."""
    command = [python, '-m', 'benchmarks.throughput', f'--device={device}', *args, f'--out={out_json}']
    return command + ([f'--detector={detector}'] if detector else [])


def shown(command: Sequence[str]) -> str:
    """A command as the record shows it: `python` for the interpreter, without the temporary report paths."""
    return shlex.join(['python', *(c for c in command[1:] if not c.startswith(('--junitxml=', '--out=')))])


def default_out_path(now: Optional[datetime.datetime] = None) -> str:
    """gpu-check-<YYYYmmdd-HHMMSS>.json in the current folder."""
    return f'gpu-check-{(now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")}.json'

#----------------------------------------------------------------------------
# Running one part: a subprocess in its own process group, its output shown live and its tail kept.

def run_part(command: Sequence[str], timeout_s: float, cwd: str = REPO, echo: bool = True) -> dict:
    """Run `command`; stop it (and every process it started) after timeout_s seconds. Returns
    {returncode, seconds, timed_out, output_tail}."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    tail = collections.deque(maxlen=400)

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # The part's own process group: pytest, torchrun and their children.
        proc.wait()

    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        stop()
    except BaseException:  # Ctrl-C: the part runs in its own session, which the terminal's signal does not reach.
        stop()
        raise
    reader.join(timeout=10)
    return dict(returncode=proc.returncode, seconds=time.perf_counter() - start, timed_out=timed_out,
                output_tail=''.join(tail)[-OUTPUT_TAIL_CHARS:])

#----------------------------------------------------------------------------
# (1) The CUDA tests.

def parse_junit(path: str) -> dict:
    """pytest's JUnit XML (xunit1) -> {'counts': {passed, failed, errors, skipped}, 'tests': [{name,
    outcome, seconds, message, properties}]}, tests in the order they ran."""
    tests = []
    for case in ElementTree.parse(path).getroot().iter('testcase'):
        outcome, message = 'passed', ''
        for tag, name in (('failure', 'failed'), ('error', 'error'), ('skipped', 'skipped')):
            element = case.find(tag)
            if element is not None:
                outcome, message = name, (element.get('message') or element.text or '').strip()
                break
        module = case.get('classname', '').split('.')[-1]
        properties = {p.get('name'): _number(p.get('value')) for p in case.iter('property')}
        tests.append(dict(name=f'{module}.py::{case.get("name")}' if module else case.get('name'), outcome=outcome,
                          seconds=float(case.get('time', 0)), message=message.splitlines()[0][:300] if message else '',
                          properties=properties))
    counts = {k: sum(t['outcome'] == v for t in tests) for k, v in
              (('passed', 'passed'), ('failed', 'failed'), ('errors', 'error'), ('skipped', 'skipped'))}
    return dict(counts=counts, tests=tests)


def _number(value: Optional[str]):
    """A record_property value back as a float when it is one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def run_tests(timeout_s: float, test_paths: Sequence[str] = ('tests',), echo: bool = True) -> dict:
    """Part (1): run the CUDA tests; status 'passed' only when at least one test ran and none failed,
    errored or was skipped (with CUDA present, a skip means a check did not happen)."""
    with tempfile.TemporaryDirectory(prefix='gpu-check-') as tmp:
        junit = os.path.join(tmp, 'junit.xml')
        command = pytest_command(junit, test_paths)
        result = run_part(command, timeout_s, echo=echo)
        parsed = parse_junit(junit) if os.path.isfile(junit) else dict(counts=None, tests=[])
    counts = parsed['counts']
    if result['timed_out']:
        status = 'timeout'
    elif counts is None:
        status = 'error'
    elif result['returncode'] == 0 and counts['passed'] > 0 and counts['failed'] == counts['errors'] == counts['skipped'] == 0:
        status = 'passed'
    else:
        status = 'failed'
    return dict(status=status, command=shown(command), **result, **parsed)

#----------------------------------------------------------------------------
# (2) The throughput run.

def config_errors(record: dict) -> list[str]:
    """'part/config[/batch]: error' for every configuration of a throughput record that failed."""
    errors = []
    for name, c in record.get('train', {}).get('configs', {}).items():
        errors += [f'train/{name}/batch {b}: {e["error"]}' for b, e in c['batches'].items() if 'error' in e]
    for part in ('sampling', 'fid'):
        errors += [f'{part}/{name}: {e["error"]}' for name, e in record.get(part, {}).get('configs', {}).items() if 'error' in e]
    end_to_end = record.get('fid', {}).get('end_to_end', {})
    if 'error' in end_to_end:
        errors.append(f'fid/end-to-end: {end_to_end["error"]}')
    return errors


def run_throughput(timeout_s: float, device: str = 'cuda', args: Sequence[str] = QUICK_THROUGHPUT_ARGS,
                   detector: Optional[str] = None, echo: bool = True) -> dict:
    """Part (2): the short throughput run; status 'done' when it finished and no configuration failed."""
    with tempfile.TemporaryDirectory(prefix='gpu-check-') as tmp:
        out = os.path.join(tmp, 'throughput.json')
        command = throughput_command(out, device, args, detector)
        result = run_part(command, timeout_s, echo=echo)
        record = None
        if os.path.isfile(out):
            with open(out) as f:
                record = json.load(f)
    errors = config_errors(record) if record else []
    if result['timed_out']:
        status = 'timeout'
    elif result['returncode'] != 0 or record is None:
        status = 'error'
    else:
        status = 'failed' if errors else 'done'
    return dict(status=status, command=shown(command), **result, config_errors=errors, record=record)


def fastest(configs: dict, batch: Optional[str] = None) -> Optional[str]:
    """The configuration with the most images per second (of those that ran)."""
    speeds = {name: (c['batches'][batch] if batch else c).get('images_per_s') for name, c in configs.items()}
    speeds = {k: v for k, v in speeds.items() if v}
    return max(speeds, key=speeds.get) if speeds else None


def throughput_highlights(record: dict) -> dict:
    """The numbers the summary and docs/PERFORMANCE.md need: per part, the fp32 baseline and the
    fastest configuration with its ratio to fp32 (and MFU for training), plus the targets."""
    train = record['train']
    batch = next(iter(train['flops_per_step']))
    out = dict(train_batch=int(batch), sample_batch=record['sampling']['batch'])
    for part, configs, key in (('train', train['configs'], batch), ('sampling', record['sampling']['configs'], None)):

        def entry(name: Optional[str]) -> dict:
            if name not in configs:
                return {}
            return configs[name]['batches'][key] if key else configs[name]

        best = fastest(configs, key)
        out[part] = dict(fp32=entry(throughput.BASELINE).get('images_per_s'), fastest=best,
                         fastest_images_per_s=entry(best).get('images_per_s'), ratio=entry(best).get('ratio_to_fp32'),
                         fp32_mfu=entry(throughput.BASELINE).get('mfu'), mfu=entry(best).get('mfu'),
                         warmup_s={name: entry(name).get('warmup_s') for name in configs})
    out['targets'] = []
    for part, label, key, goal in TARGETS:
        value = out[part].get(key)
        out['targets'].append(dict(target=label, key=key, config=out[part]['fastest'], value=value,
                                   met=None if value is None else bool(value >= goal)))
    return out

#----------------------------------------------------------------------------
# The record, the summary and the table for docs/PERFORMANCE.md.

def environment() -> dict:
    """Python, torch, CUDA, cuDNN and NCCL versions, the GPUs, and the code's git commit."""
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(dict(name=props.name, memory_gib=round(props.total_memory / 2 ** 30, 1), capability=f'{props.major}.{props.minor}'))
    try:
        nccl = torch.cuda.nccl.version()
        nccl = '.'.join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    except Exception:  # A build without NCCL.
        nccl = None
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), nccl=nccl, devices=devices, git_commit=commit)


def overall(record: dict) -> bool:
    """The check passed: the tests passed and the throughput run completed without failures."""
    parts = record['parts']
    return parts['tests']['status'] == 'passed' and parts['throughput']['status'] == 'done'


def fmt_s(seconds: Optional[float]) -> str:
    """'95.3 s', '6 min 41 s' or '8 min'."""
    if seconds is None:
        return '-'
    if seconds < 120:
        return f'{seconds:.1f} s'
    minutes, rest = divmod(int(round(seconds)), 60)
    return f'{minutes} min {rest} s' if rest else f'{minutes} min'


def fmt_value(value) -> str:
    """A measured number, compactly."""
    return f'{value:.3g}' if isinstance(value, float) else str(value)


def fmt_target(target: dict) -> str:
    """The measured value of a target and the configuration it comes from: '2.80x, bf16-cl-compile'."""
    if target['value'] is None:
        return '-'
    value = throughput.fmt_percent(target['value']) if target['key'] == 'mfu' else f'{target["value"]:.2f}x'
    return f'{value}, {target["config"]}'


def fmt_rate(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:,.0f}' if value >= 100 else f'{value:.3g}'


def device_line(record: dict) -> str:
    env = record['environment']
    names = [d['name'] for d in env['devices']]
    gpus = f'{names[0]} x{len(names)}' if names and len(set(names)) == 1 else ', '.join(names) or 'no GPU'
    return f'{gpus}, torch {env["torch"]}, CUDA {env["cuda"]}, cuDNN {env["cudnn"]}, NCCL {env["nccl"]}'


def summary_lines(record: dict) -> list[str]:
    """The one-screen summary of a gpu-check record: the verdict, each test with what it measured,
    the throughput ratios and MFU, the targets, and each part's time."""
    parts = record['parts']
    verdict = 'PASS' if record.get('ok') else 'FAIL'
    lines = [f'gpu-check {verdict}: {device_line(record)}; {fmt_s(record.get("total_s"))} '
             f'(budget {fmt_s(record["budget_s"])}{", EXCEEDED" if record.get("within_budget") is False else ""})']

    tests = parts['tests']
    counts = tests.get('counts')
    count_text = ', '.join(f'{v} {k}' for k, v in counts.items()) if counts else 'no report'
    lines.append(f'(1) CUDA tests (pytest -m cuda): {tests["status"]}, {count_text}; {fmt_s(tests.get("seconds"))}')
    for t in tests.get('tests', []):
        measured = ' '.join(f'{k}={fmt_value(v)}' for k, v in t['properties'].items())
        detail = t['message'] if t['outcome'] != 'passed' else measured
        lines.append(f'    {t["outcome"]:<7} {t["name"]}  {t["seconds"]:.1f} s  {detail}'.rstrip())
    lines += stopped_line(tests)

    part = parts['throughput']
    lines.append(f'(2) Throughput (benchmarks/throughput.py, short): {part["status"]}; {fmt_s(part.get("seconds"))}')
    highlights = part.get('highlights')
    if highlights:
        warmups = []
        for name, label in (('train', f'training, batch {highlights["train_batch"]}'),
                            ('sampling', f'sampling (18 Heun steps), batch {highlights["sample_batch"]}')):
            h = highlights[name]
            mfu = f'; MFU {throughput.fmt_percent(h["fp32_mfu"])} -> {throughput.fmt_percent(h["mfu"])}' if name == 'train' else ''
            lines.append(f'    {label}: fp32 {fmt_rate(h["fp32"])} img/s; fastest {h["fastest"]} {fmt_rate(h["fastest_images_per_s"])} '
                         f'img/s = {throughput.fmt(h["ratio"], ".2f")}x fp32{mfu}')
            warmups.append(f'{name} ' + ', '.join(f'{k} {fmt_s(v)}' for k, v in h['warmup_s'].items() if v is not None))
        lines.append(f'    warm-up, compilation included: {"; ".join(warmups)}')
        fid_part = part['record']['fid']
        if 'skipped' in fid_part:
            lines.append(f'    FID features: skipped ({fid_part["skipped"]})')
        else:
            lines.append('    FID features: ' + ', '.join(
                f'{name} (batch {e["batch"]}) ' + ('failed' if 'error' in e else f'{fmt_rate(e["images_per_s"])} img/s = {throughput.fmt(e["ratio_to_fp32"], ".2f")}x')
                for name, e in fid_part['configs'].items()))
        lines.append('    targets: ' + '; '.join(
            f'{t["target"]}: {"-" if t["met"] is None else "met" if t["met"] else "missed"} ({fmt_target(t)})'
            for t in highlights['targets']))
    for error in part.get('config_errors', []):
        lines.append(f'    failed: {error}')
    lines += stopped_line(part)
    return lines


def stopped_line(part: dict) -> list[str]:
    """For a part that crashed or ran out of time: its last line of output, which usually says why."""
    if part['status'] not in ('error', 'timeout'):
        return []
    last = [line for line in part.get('output_tail', '').splitlines() if line.strip()][-1:] or ['(no output)']
    return [f'    {part["status"]}: {last[0][:200]}']


def performance_table(record: dict) -> Optional[str]:
    """Markdown for docs/PERFORMANCE.md's GPU section from the throughput part, or None without it."""
    tp = record['parts']['throughput'].get('record')
    if not tp:
        return None
    train, sampling = tp['train'], tp['sampling']
    batch = next(iter(train['flops_per_step']))
    names = list(train['configs'])
    lines = [f'Measured {record["date"][:10]} on {device_line(record)}, with `make gpu-check` '
             f'(`{record["parts"]["throughput"]["command"]}`); ratios are to fp32 eager.', '',
             '| part | ' + ' | '.join(f'`{n}`' for n in names) + ' |', '| --- |' + ' --- |' * len(names)]

    def cell(entry: dict, mfu: bool) -> str:
        if 'error' in entry:
            return 'failed'
        text = f'{fmt_rate(entry["images_per_s"])} img/s ({throughput.fmt(entry.get("ratio_to_fp32"), ".2f")}x)'
        if mfu:
            text += f', MFU {throughput.fmt_percent(entry.get("mfu"))}, {throughput.fmt(entry.get("peak_mem_gib"), ".1f")} GiB'
        return text

    lines.append(f'| training step, batch {batch} | ' + ' | '.join(cell(train['configs'][n]['batches'][batch], True) for n in names) + ' |')
    lines.append(f'| 18-step Heun sampling, batch {sampling["batch"]} | ' +
                 ' | '.join(cell(sampling['configs'][n], False) if n in sampling['configs'] else '-' for n in names) + ' |')
    fid_part = tp['fid']
    if 'skipped' in fid_part:
        lines += ['', f'FID feature extraction: not measured ({fid_part["skipped"].rstrip(".")}).']
    else:
        lines += ['', 'FID feature extraction (Inception-v3, fp32): ' + ', '.join(
            f'{name} batch {e["batch"]}: ' + ('failed' if 'error' in e else f'{fmt_rate(e["images_per_s"])} img/s')
            for name, e in fid_part['configs'].items()) + '.']
    return '\n'.join(lines) + '\n'


def write_record(path: str, record: dict) -> None:
    """The record as JSON, atomically (a reader never sees half a file)."""
    throughput.write_json_atomic(path, record)

#----------------------------------------------------------------------------
# The check as a plain function (the CLI below is a thin wrapper).

def run_gpu_check(out: str, budget_s: float = BUDGET_S, detector: Optional[str] = None, device: str = 'cuda',
                  test_paths: Sequence[str] = ('tests',), throughput_args: Sequence[str] = QUICK_THROUGHPUT_ARGS,
                  command: str = '', echo: bool = True) -> dict:
    """Run part (1) and part (2), rewriting `out` after each; return the record. `device`,
    `test_paths` and `throughput_args` are there for tests of this function on the CPU."""
    start = time.perf_counter()
    pending = dict(status='pending')
    record = dict(kind='pfgmpp-gpu-check', version=1, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                  command=command, environment=environment(), budget_s=budget_s,
                  parts=dict(tests=dict(pending), throughput=dict(pending)), total_s=None, within_budget=None, ok=False)
    write_record(out, record)

    limit = budget_s / 2
    print(f'gpu-check (1/2): pytest -m cuda, at most {fmt_s(limit)}', flush=True)
    record['parts']['tests'] = dict(run_tests(limit, test_paths, echo=echo), limit_s=limit)
    record['total_s'] = time.perf_counter() - start
    write_record(out, record)

    limit = max(budget_s - (time.perf_counter() - start), 1)
    print(f'gpu-check (2/2): benchmarks/throughput.py (short), at most {fmt_s(limit)}', flush=True)
    part = dict(run_throughput(limit, device, throughput_args, detector, echo=echo), limit_s=limit)
    if part['record'] is not None:
        part['highlights'] = throughput_highlights(part['record'])
    record['parts']['throughput'] = part
    record['total_s'] = time.perf_counter() - start
    record['within_budget'] = record['total_s'] <= budget_s
    record['ok'] = overall(record)
    record['performance_table'] = performance_table(record)
    write_record(out, record)
    return record

#----------------------------------------------------------------------------
# Command line.

def plan_lines(out: str, budget_s: float, detector: Optional[str]) -> list[str]:
    """What a run would do, for --dry-run."""
    return [f'gpu-check would run, within {fmt_s(budget_s)} (the tests at most half of it, the throughput run the rest):',
            f'  (1) {shown(pytest_command("JUNIT.xml"))}',
            f'  (2) {shown(throughput_command("THROUGHPUT.json", detector=detector))}',
            f'and write the record to {out}.',
            f'CUDA here: {"yes, " + str(torch.cuda.device_count()) + " device(s)" if torch.cuda.is_available() else "no (a real run would do nothing)"}.']


@click.command(context_settings=cli.CONTEXT_SETTINGS)
@click.option('--device',   help='Where to check: auto and cuda run on CUDA when it is present, cpu does nothing',
              type=click.Choice(['auto', 'cuda', 'cpu']), default='auto', show_default=True)
@click.option('--out',      help='The JSON record  [default: gpu-check-<date>-<time>.json here]', metavar='PATH.json', type=str)
@click.option('--detector', help='FID detector for the throughput part  [default: Inception-v3 URL, or its cached copy]',
              metavar='PATH|URL', type=str)
@click.option('--budget',   help='Seconds the whole check may take (tests at most half)', metavar='SECONDS',
              type=click.IntRange(min=2), default=BUDGET_S, show_default=True)
@click.option('-n', '--dry-run', help='Print what would run and exit', is_flag=True)
def main(device: str, out: Optional[str], detector: Optional[str], budget: int, dry_run: bool) -> None:
    """The GPU acceptance check: the CUDA tests and a short throughput run, one JSON record."""
    out = out or default_out_path()
    if dry_run:
        throughput.check_out_path(out)
        for line in plan_lines(out, budget, detector):
            click.echo(line)
        return
    if device == 'cpu':
        click.echo(CPU_LINE)
        return
    if not torch.cuda.is_available():
        click.echo(NO_CUDA_LINE)
        return
    throughput.check_out_path(out)
    record = run_gpu_check(out, budget, detector, command='python -m benchmarks.gpu_check ' + shlex.join(sys.argv[1:]))
    click.echo('')
    for line in summary_lines(record):
        click.echo(line)
    if record['performance_table']:
        click.echo('')
        click.echo(record['performance_table'], nl=False)
    click.echo(f'Wrote {out}')
    if not record['ok']:
        sys.exit(1)


if __name__ == '__main__':
    main()
