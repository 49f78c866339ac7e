"""torch_utils/persistence.py: EDM's pickle format with embedded source, and the consent check."""

import copy
import importlib
import io
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from torch_utils import persistence

MODULE_SRC = textwrap.dedent('''\
    # {tag}
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class Scale(torch.nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.full([3], float(factor)))

        def forward(self, x):
            return x * self.weight
    ''')

#----------------------------------------------------------------------------

@pytest.fixture
def scale_module(tmp_path, monkeypatch):
    """A freshly written module with a persistent class; a unique tag keeps sources distinct per test."""
    name = f'persist_mod_{uuid.uuid4().hex[:8]}'
    (tmp_path / 'mods').mkdir()
    (tmp_path / 'mods' / f'{name}.py').write_text(MODULE_SRC.format(tag=name))
    monkeypatch.syspath_prepend(str(tmp_path / 'mods'))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


class _MetaCapture(pickle.Unpickler):
    """Unpickles EDM's reconstruction call into its bare `meta` argument."""

    def find_class(self, module, name):
        if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
            return lambda meta: meta
        return super().find_class(module, name)


def _write_pickle(path: Path, obj) -> Path:
    with open(path, 'wb') as f:
        pickle.dump(obj, f)
    return path

#----------------------------------------------------------------------------

def test_pickle_has_edm_format(scale_module):
    meta = _MetaCapture(io.BytesIO(pickle.dumps(scale_module.Scale(2.0)))).load()
    assert meta['type'] == 'class' and meta['version'] == 6 and meta['class_name'] == 'Scale'
    assert meta['module_src'] == Path(scale_module.__file__).read_text()
    assert meta['state']['_init_args'] == (2.0,) and meta['state']['_init_kwargs'] == {}
    assert torch.equal(meta['state']['_parameters']['weight'], torch.full([3], 2.0))
    assert persistence.is_persistent(scale_module.Scale) and persistence.is_persistent(scale_module.Scale(1))
    assert not persistence.is_persistent(torch.nn.Linear(1, 1))


def test_fresh_process_runs_embedded_source(scale_module, tmp_path):
    # The defining module is not importable in the new process: only the embedded source can build it.
    path = _write_pickle(tmp_path / 'obj.pkl', scale_module.Scale(2.5))
    script = textwrap.dedent(f'''
        import pickle, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from torch_utils import persistence
        obj = persistence.load_pickle({str(path)!r}, allow_pickle=True)
        again = pickle.loads(pickle.dumps(obj))
        assert type(obj).__module__.startswith('_persistent_module_'), type(obj).__module__
        assert type(again) is type(obj) and persistence.is_persistent(obj)
        print(obj(torch.ones(3)).tolist(), again(torch.ones(3)).tolist(), obj.init_args)
        ''')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['[2.5,', '2.5,', '2.5]', '[2.5,', '2.5,', '2.5]', '(2.5,)']


def test_same_process_gives_back_same_class(scale_module):
    obj = scale_module.Scale(3.0)
    for clone in [pickle.loads(pickle.dumps(obj)), copy.deepcopy(obj)]:
        assert type(clone) is scale_module.Scale
        assert torch.equal(clone(torch.ones(3)), torch.full([3], 3.0))
        clone.weight.data.zero_()
        assert torch.equal(obj.weight, torch.full([3], 3.0))  # A copy, not a view.


def test_reconstruct_from_source_that_never_was_a_file():
    # As in EDM snapshots: the source exists only inside the pickle, and the state may predate
    # attributes that newer PyTorch versions add to torch.nn.Module.
    tag = uuid.uuid4().hex
    src = MODULE_SRC.format(tag=tag) + '\nclass Plain:\n    pass\n'
    state = dict(persistence.persistent_class(torch.nn.Module)().__dict__)
    newer = ('_backward_pre_hooks', '_forward_pre_hooks_with_kwargs', '_forward_hooks_with_kwargs',
             '_forward_hooks_always_called', '_state_dict_pre_hooks', '_load_state_dict_post_hooks')
    state = {k: v for k, v in state.items() if k not in newer}
    state['_parameters'] = {'weight': torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))}
    obj = persistence._reconstruct_persistent_obj(dict(type='class', version=6, module_src=src, class_name='Scale', state=state))
    assert torch.equal(obj(torch.ones(3)), torch.tensor([1.0, 2.0, 3.0]))
    assert persistence.is_persistent(obj) and type(obj).__module__.startswith('_persistent_module_')

    plain = persistence._reconstruct_persistent_obj(dict(type='class', version=6, module_src=src, class_name='Plain', state={'a': 1}))
    assert plain.a == 1
    again = persistence._reconstruct_persistent_obj(dict(type='class', version=6, module_src=src, class_name='Scale', state=state))
    assert type(again) is type(obj)  # One module per distinct source.
    other = persistence._reconstruct_persistent_obj(dict(type='class', version=6, module_src=src + '\n# changed\n', class_name='Scale', state=state))
    assert type(other) is not type(obj)
    with pytest.raises(ValueError, match='no class'):
        persistence._reconstruct_persistent_obj(dict(type='class', version=6, module_src=src, class_name='Missing', state={}))


def test_legacy_snapshot_dict(scale_module, tmp_path):
    path = _write_pickle(tmp_path / 'network-snapshot-000100.pkl', dict(ema=scale_module.Scale(4.0), augment_pipe=None, dataset_kwargs=dict(path='x.zip')))
    data = persistence.load_pickle(path, allow_pickle=True)
    assert sorted(data) == ['augment_pipe', 'dataset_kwargs', 'ema']
    assert torch.equal(data['ema'](torch.ones(3)), torch.full([3], 4.0))


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").close()',)


def test_load_pickle_needs_consent(tmp_path):
    marker = tmp_path / 'ran'
    path = _write_pickle(tmp_path / 'evil.pkl', _RunsCode(marker))
    with pytest.raises(persistence.UntrustedPickleError, match='--allow-pickle') as info:
        persistence.load_pickle(path, allow_pickle=False)
    assert 'executes code' in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    with open(path, 'rb') as f:
        persistence.load_pickle(f, allow_pickle=False, trusted=True)
    assert marker.exists()
    marker.unlink()
    persistence.load_pickle(path, allow_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize('content', [b'not a pickle at all', b'', pickle.dumps({'a': list(range(100))})[:-20], b'\x80\x04\x95garbage'])
def test_load_pickle_rejects_non_pickles(tmp_path, content):
    path = tmp_path / 'bad.pkl'
    path.write_bytes(content)
    with pytest.raises(persistence.PickleFormatError, match='could not be unpickled') as info:
        persistence.load_pickle(path, allow_pickle=True)
    assert str(path) in str(info.value) and '\n' not in str(info.value)


def test_undecorated_subclass_refuses_to_pickle(scale_module):
    class Sub(scale_module.Scale):
        pass
    assert not persistence.is_persistent(Sub)
    with pytest.raises(pickle.PicklingError, match='persistent_class'):
        pickle.dumps(Sub(1.0))
    with pytest.raises(TypeError):
        persistence.persistent_class(lambda: None)

#----------------------------------------------------------------------------
