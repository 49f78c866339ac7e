"""torch.compile (inductor) against eager execution: the network's output, and training losses in the
fast configuration (bf16 + channels-last + compile). One module, so that one pytest worker pays
inductor's start-up (about 15 s on a cold cache) once."""

import pytest
import torch

from torch_utils import precision
from training import training_loop

from helpers import inputs, loop_config, random_net, read_stats, rel_max

pytestmark = pytest.mark.slow


def test_compiled_network_matches_eager():
    # float32: max |difference| <= 1e-5 x max |reference| (measured below 1e-6).
    net = random_net()
    x, sigma = inputs()
    ref = net(x, sigma)
    compiled = precision.prepare_network(net, 'fp32', compile=True)
    assert compiled.img_resolution == net.img_resolution  # Attributes reach the sampler through the wrapper.
    with torch.no_grad():
        assert rel_max(compiled(x, sigma), ref) <= 1e-5


def test_fast_configuration_losses_track_fp32(bars16_zip, tmp_path):
    # bf16 + channels-last + torch.compile against fp32 eager, 4 steps: each step's loss within 0.1%
    # (measured: 5e-9 at the first step, where the zero-initialised output layer hides the precision,
    # 2e-5 at most after). 16x16 data: the attention layers in play. One block per resolution: compiling
    # is most of this test's time.
    losses = {}
    for name, args in [('eager', []), ('fast', ['--precision=bf16', '--channels-last=1', '--compile=1'])]:
        config = loop_config(tmp_path, bars16_zip, '--augment=0.12', '--nblock=1', *args)
        (tmp_path / name).mkdir()
        training_loop.training_loop(**dict(config, run_dir=str(tmp_path / name), total_kimg=0.064, state_dump_ticks=None))
        losses[name] = [s['Loss/loss']['mean'] for s in read_stats(str(tmp_path / name))]
    assert len(losses['fast']) == len(losses['eager']) == 4
    assert all(abs(f - e) <= 1e-3 * e for f, e in zip(losses['fast'], losses['eager'])), losses
    assert losses['fast'] != losses['eager']
