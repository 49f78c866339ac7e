"""benchmarks/throughput.py: the CPU smoke run end to end (JSON schema, baseline ratios, FLOPs against
the convolution and matmul formulas, MFU against its definition), failing configurations, an
unavailable detector, and every bad input. A stand-in TorchScript detector replaces Inception-v3.
benchmarks/gpu_check.py: the one line without CUDA, --dry-run, both parts run on the CPU against fake
CUDA tests and the smallest throughput run, the summary and the docs table from a made-up record, the
time limit of a part."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import gpu_check, throughput
from training.networks import EDMPrecond

from helpers import save_standin_detector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_CONFIGS = ['fp32', 'published', 'bf16']
PEAK_TFLOPS = 2.0
BATCH = 4

def _invoke(*args):
    """Run the CLI in-process with one thread; returns click's Result."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CliRunner().invoke(throughput.main, [str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """The CPU smoke run of the brief, with --peak-tflops so that MFU is reported: (JSON record, output)."""
    root = tmp_path_factory.mktemp('throughput')
    detector = root / 'standin.pt'
    save_standin_detector(detector)
    out = root / 'out.json'
    result = _invoke('--small', '--device=cpu', f'--configs={",".join(SMOKE_CONFIGS)}', f'--batch={BATCH}', '--iters=2',
                     '--warmup=1', '--workers=0', f'--peak-tflops={PEAK_TFLOPS}', '--detector', detector, '--out', out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output

#----------------------------------------------------------------------------
# The smoke run.

def test_json_has_every_part_and_config(smoke):
    record, output = smoke
    assert {'device', 'torch', 'date', 'command', 'peak_tflops', 'train', 'sampling', 'fid'} <= set(record)
    assert record['torch'] == torch.__version__ and record['peak_tflops'] == PEAK_TFLOPS
    assert list(record['train']['configs']) == SMOKE_CONFIGS
    assert list(record['sampling']['configs']) == SMOKE_CONFIGS
    assert list(record['fid']['configs']) == ['fp32', 'fp32-batch', 'tf32-batch']
    assert record['train']['configs']['published']['attention'] == 'einsum'
    assert record['train']['configs']['fp32']['attention'] == 'sdpa'
    assert record['sampling']['network_evaluations'] == 35
    for part in ('(a) Training', '(b) Sampling', '(c) FID', 'stand-in for that code', 'reduced precision'):
        assert part in output


def test_baseline_ratios_are_one_and_throughputs_positive(smoke):
    record, _ = smoke
    train = {name: c['batches'][str(BATCH)] for name, c in record['train']['configs'].items()}
    sampling, features = record['sampling']['configs'], record['fid']['configs']
    assert train['fp32']['ratio_to_fp32'] == 1.0
    assert sampling['fp32']['ratio_to_fp32'] == 1.0
    assert features['fp32']['ratio_to_fp32'] == 1.0
    for entries in (train, sampling, features):
        for name, entry in entries.items():
            assert 'error' not in entry, (name, entry)
            assert entry['images_per_s'] > 0
    for name in SMOKE_CONFIGS:
        assert train[name]['ratio_to_fp32'] == pytest.approx(train[name]['images_per_s'] / train['fp32']['images_per_s'])
        assert train[name]['peak_mem_gib'] is None  # CPU.
    assert record['train']['fp32_over_published'][str(BATCH)] == pytest.approx(1 / train['published']['ratio_to_fp32'])
    assert record['sampling']['fp32_over_published'] == pytest.approx(1 / sampling['published']['ratio_to_fp32'])
    assert record['fid']['end_to_end']['num_images'] == 64 and record['fid']['end_to_end']['images_per_s'] > 0


def test_mfu_is_flops_times_steps_per_second_over_peak(smoke):
    record, _ = smoke
    flops = record['train']['flops_per_step'][str(BATCH)]
    assert flops > 0
    for name in SMOKE_CONFIGS:
        entry = record['train']['configs'][name]['batches'][str(BATCH)]
        steps_per_s = entry['images_per_s'] / BATCH
        assert entry['mfu'] == pytest.approx(flops * steps_per_s / (PEAK_TFLOPS * 1e12), rel=1e-12)
        assert entry['step_ms'] == pytest.approx(1e3 / steps_per_s)


def test_training_flops_are_about_three_forwards(smoke):
    """Backward costs twice the forward, except the input gradient of the first layer, which nothing needs."""
    record, _ = smoke
    net = EDMPrecond(**throughput.SMALL_NETWORK)
    res = throughput.SMALL_NETWORK['img_resolution']
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn([BATCH, 3, res, res]), torch.ones([BATCH]))
    ratio = record['train']['flops_per_step'][str(BATCH)] / counter.get_total_flops()
    assert 2.9 < ratio <= 3.0

#----------------------------------------------------------------------------
# The FLOP counter against the formulas.

def test_flop_counter_matches_conv_and_linear_formulas():
    B, Cin, Cout, k, H, W = 3, 5, 7, 3, 6, 4
    conv = torch.nn.Conv2d(Cin, Cout, k, padding=1)
    with FlopCounterMode(display=False) as counter:
        conv(torch.randn([B, Cin, H, W]))
    assert counter.get_total_flops() == 2 * Cin * Cout * k * k * H * W * B
    linear = torch.nn.Linear(Cin, Cout)
    with FlopCounterMode(display=False) as counter:
        linear(torch.randn([B, Cin]))
    assert counter.get_total_flops() == 2 * B * Cin * Cout

#----------------------------------------------------------------------------
# Failures that must not end the run.

def test_failing_config_and_missing_detector_are_recorded(tmp_path, monkeypatch):
    def no_compile(*args, **kwargs):
        raise RuntimeError('torch.compile is unavailable in this test')
    monkeypatch.setattr(torch, 'compile', no_compile)
    out = tmp_path / 'out.json'
    backends = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark)
    result = _invoke('--small', '--device=cpu', '--configs=fp32,bf16-compile', '--batch=2', '--iters=1', '--warmup=0',
                     '--sample-batch=2', '--detector', tmp_path / 'missing.pt', '--out', out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert 'torch.compile is unavailable' in record['train']['configs']['bf16-compile']['batches']['2']['error']
    assert 'torch.compile is unavailable' in record['sampling']['configs']['bf16-compile']['error']
    assert record['train']['configs']['fp32']['batches']['2']['ratio_to_fp32'] == 1.0
    assert record['train']['fp32_over_published'] is None
    assert 'missing.pt' in record['fid']['skipped']
    assert '(c) FID feature extraction skipped' in result.output
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.benchmark) == backends  # The run leaves the process as it found it.


def test_peak_table():
    cuda = torch.device('cuda')
    for name, peak in [('NVIDIA H100 80GB HBM3', 989.4e12), ('NVIDIA H100 PCIe', 756e12), ('NVIDIA H200', 989.4e12),
                       ('NVIDIA A100-SXM4-80GB', 312e12), ('Tesla T4', None)]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.cuda, 'get_device_name', lambda device=None, name=name: name)
            assert throughput.peak_flops_for(cuda, None)[0] == peak
    assert throughput.peak_flops_for(torch.device('cpu'), None) == (None, None)
    assert throughput.peak_flops_for(torch.device('cpu'), 100.0)[0] == 100e12

#----------------------------------------------------------------------------
# Bad input: one clear error, no traceback, no JSON.

# A bad option and what its error names.
BAD_OPTIONS = {'--configs=fp32,bf17': "'bf17'", '--configs=,': '--configs', '--batch=0': '--batch', '--batch=8,x': '--batch',
               '--iters=0': '--iters', '--peak-tflops=-1': '--peak-tflops', '--device=tpu': '--device'}


@pytest.mark.parametrize('arg, message', BAD_OPTIONS.items())
def test_bad_input_is_a_clean_error(tmp_path, arg, message):
    out = tmp_path / 'out.json'
    result = _invoke('--small', '--device=cpu', arg, '--out', out)
    assert result.exit_code == 2, result.output
    assert message in result.output and 'Traceback' not in result.output
    assert isinstance(result.exception, SystemExit)
    assert not out.exists()


def test_out_in_missing_folder_is_a_clean_error(tmp_path):
    result = _invoke('--small', '--device=cpu', '--out', tmp_path / 'nowhere' / 'out.json')
    assert result.exit_code == 2 and '--out' in result.output and 'Traceback' not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error on machines without CUDA')
def test_cuda_without_gpu_is_a_clean_error():
    result = _invoke('--small', '--device=cuda')
    assert result.exit_code == 2 and 'CUDA is not available' in result.output and 'Traceback' not in result.output

#----------------------------------------------------------------------------
# benchmarks/gpu_check.py: everything but the GPU itself.

def _gpu_check(*args, **kwargs):
    return CliRunner().invoke(gpu_check.main, [str(a) for a in args], **kwargs)


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail the test if the check starts a process."""
    def refuse(*args, **kwargs):
        raise AssertionError(f'started {args}')
    monkeypatch.setattr(gpu_check.subprocess, 'Popen', refuse)


def test_gpu_check_without_cuda_says_so_in_one_line(tmp_path, monkeypatch, nothing_runs):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.chdir(tmp_path)
    for args in ([], ['--out', tmp_path / 'record.json'], ['--device=cuda']):
        result = _gpu_check(*args)
        assert result.exit_code == 0 and result.output == gpu_check.NO_CUDA_LINE + '\n', result.output
    result = _gpu_check('--device=cpu')
    assert result.exit_code == 0 and result.output == gpu_check.CPU_LINE + '\n'
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_dry_run_lists_what_would_run(tmp_path, monkeypatch, nothing_runs):
    monkeypatch.chdir(tmp_path)
    result = _gpu_check('--dry-run', '--budget=300', '--detector=inception.pkl')
    assert result.exit_code == 0, result.output
    assert 'python -m pytest -m cuda' in result.output and 'within 5 min' in result.output
    assert ('python -m benchmarks.throughput --device=cuda --configs=fp32,published,bf16-cl-compile --batch=128'
            in result.output and '--detector=inception.pkl' in result.output)
    assert 'gpu-check-' in result.output and list(tmp_path.iterdir()) == []


def test_gpu_check_bad_out_is_a_clean_error(tmp_path, monkeypatch, nothing_runs):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    result = _gpu_check('--out', tmp_path / 'nowhere' / 'record.json')
    assert result.exit_code == 2 and '--out' in result.output and 'Traceback' not in result.output
    result = _gpu_check('--budget=0')
    assert result.exit_code == 2 and '--budget' in result.output


FAKE_TESTS = '''
import pytest

@pytest.mark.cuda
def test_measures(record_property):
    record_property('rel_err', 2.5e-07)
    record_property('backend', 'gloo')

@pytest.mark.cuda
@pytest.mark.parametrize('n', [1, 2])
def test_fails_for_two(n):
    assert n == 1, 'two is not one'

@pytest.mark.cuda
def test_skipped():
    pytest.skip('no second GPU')

def test_not_marked():
    raise AssertionError('pytest -m cuda must not run this')
'''


def test_gpu_check_records_tests_and_throughput(tmp_path, monkeypatch):
    # Both parts for real on the CPU: pytest -m cuda on a file of fake tests (one passes with
    # measurements, one fails, one skips, one is not marked) and the smallest throughput run.
    (tmp_path / 'test_fake.py').write_text(FAKE_TESTS)
    (tmp_path / 'pytest.ini').write_text('[pytest]\nmarkers =\n    cuda: fake\n')
    detector = tmp_path / 'standin.pt'
    save_standin_detector(detector)
    out = tmp_path / 'record.json'
    small = ['--small', '--configs=fp32,published', '--batch=2', '--iters=1', '--warmup=0', '--sample-batch=2',
             '--sample-runs=1', '--fid-batch=4', '--fid-images=4', '--workers=0']
    record = gpu_check.run_gpu_check(str(out), budget_s=400, detector=str(detector), device='cpu',
                                     test_paths=[str(tmp_path / 'test_fake.py')], throughput_args=small, echo=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    tests = record['parts']['tests']
    assert tests['status'] == 'failed' and tests['counts'] == dict(passed=2, failed=1, errors=0, skipped=1)
    outcomes = {t['name']: t for t in tests['tests']}
    assert set(outcomes) == {'test_fake.py::test_measures', 'test_fake.py::test_fails_for_two[1]',
                             'test_fake.py::test_fails_for_two[2]', 'test_fake.py::test_skipped'}
    assert outcomes['test_fake.py::test_measures']['properties'] == dict(rel_err=2.5e-07, backend='gloo')
    assert 'two is not one' in outcomes['test_fake.py::test_fails_for_two[2]']['message']
    assert 'no second GPU' in outcomes['test_fake.py::test_skipped']['message']
    part = record['parts']['throughput']
    assert part['status'] == 'done' and part['returncode'] == 0 and part['config_errors'] == []
    assert part['command'].startswith('python -m benchmarks.throughput --device=cpu --small') and '--out' not in part['command']
    train = part['record']['train']['configs']
    assert part['highlights']['train']['fp32'] == train['fp32']['batches']['2']['images_per_s']
    assert part['highlights']['train']['fastest'] in ('fp32', 'published')
    assert 0 < tests['seconds'] and 0 < part['seconds'] and tests['seconds'] + part['seconds'] <= record['total_s']
    assert record['ok'] is False and record['within_budget'] is True
    lines = gpu_check.summary_lines(record)
    assert lines[0].startswith('gpu-check FAIL: no GPU, torch ')
    assert any('failed  test_fake.py::test_fails_for_two[2]' in line and 'two is not one' in line for line in lines)
    assert any('passed  test_fake.py::test_measures' in line and 'rel_err=2.5e-07 backend=gloo' in line for line in lines)
    assert '| training step, batch 2 | ' in record['performance_table']


def fake_record(sampling_ratio: float = 2.0) -> dict:
    """A gpu-check record as run_gpu_check() builds it, with made-up numbers."""
    def train_entry(ips, ratio, mfu, warmup):
        return dict(images_per_s=ips, ratio_to_fp32=ratio, mfu=mfu, peak_mem_gib=10.5, warmup_s=warmup, step_ms=1e3 * 128 / ips)
    tp = dict(
        train=dict(flops_per_step={'128': 16e12}, configs={
            'fp32': dict(batches={'128': train_entry(1000.0, 1.0, 0.16, 2.0)}),
            'published': dict(batches={'128': train_entry(950.0, 0.95, 0.15, 2.0)}),
            'bf16-cl-compile': dict(batches={'128': train_entry(2800.0, 2.8, 0.45, 95.0)})}),
        sampling=dict(batch=64, configs={'fp32': dict(images_per_s=20.0, ratio_to_fp32=1.0, warmup_s=3.0),
                                         'published': dict(images_per_s=19.0, ratio_to_fp32=0.95, warmup_s=3.0),
                                         'bf16-cl-compile': dict(error='RuntimeError: compile failed')}),
        fid=dict(skipped='DownloadError: Cannot download the detector'))
    if sampling_ratio is not None:
        tp['sampling']['configs']['bf16-cl-compile'] = dict(images_per_s=20.0 * sampling_ratio, ratio_to_fp32=sampling_ratio, warmup_s=50.0)
    part = dict(status='done', seconds=200.0, command='python -m benchmarks.throughput --device=cuda', record=tp,
                config_errors=gpu_check.config_errors(tp), output_tail='')
    part['highlights'] = gpu_check.throughput_highlights(tp)
    tests = dict(status='passed', seconds=150.0, counts=dict(passed=1, failed=0, errors=0, skipped=0),
                 tests=[dict(name='test_cuda.py::test_x', outcome='passed', seconds=1.5, message='', properties=dict(err=1e-7))])
    record = dict(date='2026-12-01T10:00:00+00:00', budget_s=480, total_s=352.0, within_budget=True,
                  environment=dict(torch='2.13.0', cuda='12.8', cudnn=91000, nccl='2.27.3',
                                   devices=[dict(name='NVIDIA H100 80GB HBM3', memory_gib=79.1, capability='9.0')]),
                  parts=dict(tests=tests, throughput=part))
    record['ok'] = gpu_check.overall(record)
    record['performance_table'] = gpu_check.performance_table(record)
    return record


def test_gpu_check_summary_ratios_and_targets():
    record = fake_record(sampling_ratio=2.0)
    assert record['ok'] is True
    text = '\n'.join(gpu_check.summary_lines(record))
    assert text.startswith('gpu-check PASS: NVIDIA H100 80GB HBM3 x1, torch 2.13.0, CUDA 12.8')
    assert '5 min 52 s (budget 8 min)' in text
    assert '(1) CUDA tests (pytest -m cuda): passed, 1 passed, 0 failed, 0 errors, 0 skipped; 2 min 30 s' in text
    assert 'passed  test_cuda.py::test_x  1.5 s  err=1e-07' in text
    assert ('training, batch 128: fp32 1,000 img/s; fastest bf16-cl-compile 2,800 img/s = 2.80x fp32; MFU 16.0% -> 45.0%'
            in text)
    assert 'sampling (18 Heun steps), batch 64: fp32 20 img/s; fastest bf16-cl-compile 40 img/s = 2.00x fp32' in text
    assert ('warm-up, compilation included: train fp32 2.0 s, published 2.0 s, bf16-cl-compile 95.0 s; '
            'sampling fp32 3.0 s, published 3.0 s, bf16-cl-compile 50.0 s') in text
    assert 'FID features: skipped (DownloadError' in text
    assert ('targets: training images/s >= 2.5x fp32: met (2.80x, bf16-cl-compile); training MFU >= 40%: met '
            '(45.0%, bf16-cl-compile); sampling images/s >= 3x fp32: missed (2.00x, bf16-cl-compile)') in text
    table = record['performance_table']
    assert '| part | `fp32` | `published` | `bf16-cl-compile` |' in table
    assert '| training step, batch 128 | 1,000 img/s (1.00x), MFU 16.0%, 10.5 GiB | 950 img/s (0.95x)' in table
    assert '2,800 img/s (2.80x), MFU 45.0%, 10.5 GiB |' in table
    assert 'Measured 2026-12-01 on NVIDIA H100 80GB HBM3 x1' in table and 'not measured (DownloadError' in table


def test_gpu_check_failing_config_fails_the_check():
    record = fake_record(sampling_ratio=None)  # bf16-cl-compile sampling failed.
    assert record['parts']['throughput']['config_errors'] == ['sampling/bf16-cl-compile: RuntimeError: compile failed']
    record['parts']['throughput']['status'] = 'failed'
    assert gpu_check.overall(record) is False
    record['ok'] = False
    text = '\n'.join(gpu_check.summary_lines(record))
    assert text.startswith('gpu-check FAIL') and 'failed: sampling/bf16-cl-compile: RuntimeError: compile failed' in text
    assert '| 18-step Heun sampling, batch 64 | 20 img/s (1.00x) | 19 img/s (0.95x) | failed |' in record['performance_table']


def test_gpu_check_stops_a_part_past_its_time_limit():
    # The part starts a child of its own; both are stopped at the limit.
    script = ('import subprocess, sys, time; '
              'child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]); '
              'print(child.pid, flush=True); time.sleep(60)')
    result = gpu_check.run_part([sys.executable, '-c', script], timeout_s=3, echo=False)
    assert result['timed_out'] and result['seconds'] < 20
    child = int(result['output_tail'].split()[0])
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(f'/proc/{child}') and 'Z' not in open(f'/proc/{child}/stat').read().split()[2]:
        time.sleep(0.1)
    assert not os.path.exists(f'/proc/{child}') or open(f'/proc/{child}/stat').read().split()[2] == 'Z'


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks how the CUDA tests behave without CUDA')
def test_cuda_tests_are_collected_and_skipped_without_cuda():
    result = subprocess.run([sys.executable, '-m', 'pytest', '-m', 'cuda', '-q', '-rs', '-p', 'no:cacheprovider',
                             'tests/test_cuda.py'], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:]
    assert 'skipped' in result.stdout and 'passed' not in result.stdout and 'failed' not in result.stdout
    assert 'needs CUDA' in result.stdout


def test_make_gpu_check_and_its_documentation():
    makefile = open(os.path.join(REPO, 'Makefile')).read()
    assert 'gpu-check: check-python $(STAMP)\n\t$(PY) -m benchmarks.gpu_check $(GPU_CHECK)\n' in makefile
    performance = open(os.path.join(REPO, 'docs', 'PERFORMANCE.md')).read()
    assert '## GPU acceptance check' in performance and 'make gpu-check' in performance
    assert 'make gpu-check' in open(os.path.join(REPO, 'README.md')).read()


def test_gpu_check_summary_of_a_stopped_run():
    record = fake_record()
    record['parts']['tests'] = dict(status='timeout', seconds=240.0, counts=None, tests=[],
                                    output_tail='....F.\ntests/test_cuda.py::test_fast_configuration_losses_track_fp32 compiling\n\n')
    record['parts']['throughput'] = dict(status='pending')
    record.update(ok=gpu_check.overall(record), total_s=None, within_budget=None)
    assert record['ok'] is False
    lines = gpu_check.summary_lines(record)
    assert lines[0].startswith('gpu-check FAIL') and '; - (budget 8 min)' in lines[0]
    assert lines[1] == '(1) CUDA tests (pytest -m cuda): timeout, no report; 4 min'
    assert lines[2] == '    timeout: tests/test_cuda.py::test_fast_configuration_losses_track_fp32 compiling'
    assert lines[3] == '(2) Throughput (benchmarks/throughput.py, short): pending; -' and len(lines) == 4
