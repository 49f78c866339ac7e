"""The committed docs/*-help.txt match every script's --help (regenerate with `make docs`), and
requirements.txt, environment.yml and the Dockerfile name the same packages and versions."""

import os
import re


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


def read_requirements():
    pins = {}
    for line in open(os.path.join(REPO, 'requirements.txt')):
        line = line.split('#')[0].strip()
        if line:
            name, version = re.fullmatch(r'([A-Za-z0-9_.-]+)==([^\s;]+)', line).groups()
            pins[name.lower()] = version
    return pins


def test_environment_yml_matches_requirements():
    text = open(os.path.join(REPO, 'environment.yml')).read()
    pip_pins = dict((n.lower(), v) for n, v in re.findall(r'^\s+- ([A-Za-z0-9_.-]+)==(\S+)\s*$', text, flags=re.M))
    assert pip_pins == read_requirements()


def test_dockerfile_installs_requirements_on_the_pinned_torch():
    text = open(os.path.join(REPO, 'Dockerfile')).read()
    assert re.search(r'^COPY requirements\.txt ', text, flags=re.M)
    assert re.search(r'^RUN pip install .*-r \S*requirements\.txt', text, flags=re.M)
    base_torch = re.search(r'^FROM pytorch/pytorch:([0-9.]+)-', text, flags=re.M).group(1)
    assert base_torch == read_requirements()['torch']
