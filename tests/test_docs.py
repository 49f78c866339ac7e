"""The committed docs/*-help.txt match every script's --help (regenerate with `make docs`), and
requirements.txt, environment.yml and the Dockerfile name the same packages and versions."""

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_docs_are_current():
    from tools import make_help_docs
    texts = make_help_docs.help_texts()
    assert {'train-help.txt', 'generate-help.txt', 'fid-help.txt', 'dataset_tool-help.txt'} <= set(texts)
    stale = []
    for name, text in texts.items():
        path = os.path.join(REPO, 'docs', name)
        if not os.path.isfile(path) or open(path).read() != text:
            stale.append(name)
    assert not stale, f'docs out of date, run `make docs`: {stale}'


SUPPORTED_PYTHONS = ['3.10', '3.11', '3.12', '3.13']


def read_pins(text: str, pattern: str) -> dict:
    """{(package, marker): version} for the exact pins 'name==version[; marker]' that `pattern` finds."""
    pins = {}
    for name, version, marker in re.findall(pattern, text, flags=re.M):
        key = (name.lower(), marker.strip())
        assert key not in pins, f'{name} is pinned twice for the same Pythons'
        pins[key] = version
    return pins


def read_requirements(name: str = 'requirements.txt') -> dict:
    text = open(os.path.join(REPO, name)).read()
    lines = [line.split('#')[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    pins = read_pins('\n'.join(lines), r'^([A-Za-z0-9_.-]+)==([^\s;]+)\s*(?:;(.*))?$')
    assert len(pins) == len(lines), f'{name} holds a line that is not an exact pin'
    return pins


def pins_for(pins: dict, python: str) -> dict:
    """The pins pip installs on a given Python version: the markers evaluated with `packaging`."""
    from packaging.markers import Marker
    chosen = {}
    for (name, marker), version in pins.items():
        if not marker or Marker(marker).evaluate({'python_version': python, 'python_full_version': python + '.0'}):
            assert name not in chosen, f'{name} has two pins that apply to Python {python}'
            chosen[name] = version
    return chosen


@pytest.mark.parametrize('requirements', ['requirements.txt', 'requirements-demo.txt'])
def test_every_supported_python_gets_one_exact_pin_per_package(requirements):
    pins = read_requirements(requirements)
    names = {name for name, _ in pins}
    for python in SUPPORTED_PYTHONS:
        assert set(pins_for(pins, python)) == names, f'{requirements}: a package has no pin for Python {python}'


def test_pillow_follows_its_supported_pythons():
    # Pillow 13 dropped Python 3.10; the last release for it is pinned there.
    pins = pins_for(read_requirements(), '3.10')
    assert int(pins['pillow'].split('.')[0]) <= 12
    assert pins_for(read_requirements(), '3.11')['pillow'] == pins_for(read_requirements(), '3.13')['pillow']


def test_supported_pythons_agree_in_makefile_readme_and_scripts():
    makefile = open(os.path.join(REPO, 'Makefile')).read()
    assert re.search(r'^SUPPORTED_PYTHONS := (.*)$', makefile, flags=re.M).group(1).split() == SUPPORTED_PYTHONS
    script = open(os.path.join(REPO, 'tools', 'test_pythons.sh')).read()
    assert re.search(r'^SUPPORTED=\((.*)\)$', script, flags=re.M).group(1).split() == SUPPORTED_PYTHONS
    readme = open(os.path.join(REPO, 'README.md')).read()
    assert 'Python 3.10 to 3.13' in readme and '3.12)' not in readme


def test_environment_yml_matches_requirements():
    text = open(os.path.join(REPO, 'environment.yml')).read()
    pip_pins = read_pins(text, r'^\s+- ([A-Za-z0-9_.-]+)==([^\s;]+)\s*(?:;(.*))?$')
    assert pip_pins == read_requirements()
    conda_python = re.search(r'^\s+- python=(\S+)\s*$', text, flags=re.M).group(1)
    assert conda_python in SUPPORTED_PYTHONS


def test_dockerfile_installs_requirements_on_the_pinned_torch():
    text = open(os.path.join(REPO, 'Dockerfile')).read()
    assert re.search(r'^COPY requirements\.txt ', text, flags=re.M)
    assert re.search(r'^RUN pip install .*-r \S*requirements\.txt', text, flags=re.M)
    base_torch = re.search(r'^FROM pytorch/pytorch:([0-9.]+)-', text, flags=re.M).group(1)
    assert base_torch == pins_for(read_requirements(), '3.11')['torch']
