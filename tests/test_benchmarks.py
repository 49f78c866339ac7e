"""benchmarks/throughput.py: the CPU smoke run end to end (JSON schema, baseline ratios, FLOPs against
the convolution and matmul formulas, MFU against its definition), failing configurations, an
unavailable detector, and every bad input. A stand-in TorchScript detector replaces Inception-v3."""

import json

import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import throughput
from training.networks import EDMPrecond

SMOKE_CONFIGS = ['fp32', 'published', 'bf16']
PEAK_TFLOPS = 2.0
BATCH = 4

#----------------------------------------------------------------------------
# A stand-in detector with Inception-v3's call signature: 8 features.

class StandInDetector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Parameter(torch.randn([8, 3, 3, 3], generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = x.to(torch.float32) / 127.5 - 1
        return torch.tanh(torch.nn.functional.conv2d(x, self.conv, padding=1)).mean(dim=[2, 3])


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
    torch.jit.save(torch.jit.script(StandInDetector()), str(detector))
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

@pytest.mark.parametrize('args, message', [
    (['--configs=fp32,bf17'], "'bf17'"),
    (['--configs=,'], '--configs'),
    (['--batch=0'], '--batch'),
    (['--batch=8,x'], '--batch'),
    (['--iters=0'], '--iters'),
    (['--peak-tflops=-1'], '--peak-tflops'),
    (['--device=tpu'], '--device'),
])
def test_bad_input_is_a_clean_error(tmp_path, args, message):
    out = tmp_path / 'out.json'
    result = _invoke('--small', '--device=cpu', *args, '--out', out)
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
