"""The README and docs/ stay true to the code: every repository path they name exists, every flag they give to one
of this repository's commands is one its parser accepts, every config they name resolves, and every image and
relative link (with its #anchor) resolves. Each problem is reported as ``file:line: what``."""
import ast
import glob
import os
import re
import shlex
import subprocess
from functools import lru_cache
from types import SimpleNamespace

import pytest

from conftest import ROOT

DOCS = ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
# where the commands a shell script runs take their flags (for the .sh scripts: the Python command they start)
SCRIPT_TARGETS = {'tools/dist_train.sh': 'tools/train.py', 'tools/dist_test.sh': 'tools/test.py',
                  'tools/demo.sh': 'classification/main.py'}
SLURM_TARGETS = {'tools/slurm_train.sh': ('classification/main.py', 'tools/train.py'),
                 'tools/slurm_test.sh': ('classification/main.py', 'tools/test.py')}
SHELL_FLAGS = {'tools/install.sh': {'--core', '--keep-torch'}, 'tools/visualization/make_figures.sh': {'--full'},
               'modelcard.sh': set()}
NOT_CHECKED = {'tools/test.sh', 'tools/test_minimum.sh'}  # their arguments go to pytest
CONFIG_NAME = re.compile(r'^(mask_rcnn|upernet|vHeat_)[\w.\-]*\.(py|yaml)$')
USER_FOLDERS = ('output/', 'work_dirs/', 'data/', 'checkpoints/')  # where runs write, or a user keeps things


@lru_cache(maxsize=None)
def top_level() -> frozenset:
    files = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True).stdout.split()
    files += [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, '*'))]
    return frozenset(f.split('/')[0] for f in files)


def expand_braces(token: str) -> list:
    match = re.search(r'\{([^{}]*,[^{}]*)\}', token)
    if not match:
        return [token]
    return [x for part in match.group(1).split(',')
            for x in expand_braces(token[:match.start()] + part + token[match.end():])]


def lines_of(doc: str):
    with open(os.path.join(ROOT, doc), encoding='utf-8') as f:
        return f.read().split('\n')


def code_spans(doc: str):
    """(line number, text) of every inline code span and of every line of a code block, commands continued with
    a backslash joined (reported at their first line)."""
    spans, fenced, pending = [], False, None
    for number, line in enumerate(lines_of(doc), start=1):
        if line.strip().startswith('```'):
            fenced = not fenced
            continue
        indented = line.startswith('    ') and not line.lstrip().startswith(('- ', '| ', '* '))  # not a list item
        if fenced or pending is not None or indented:
            text = line.strip()
            if pending is not None:
                pending = (pending[0], pending[1] + ' ' + text.rstrip('\\'))
            else:
                pending = (number, text.rstrip('\\'))
            if not text.endswith('\\'):
                spans.append(pending)
                pending = None
            continue
        spans += [(number, m.group(1)) for m in re.finditer(r'`([^`]+)`', line)]
    return spans


def paths_in(text: str):
    for raw in re.findall(r'[\w.\-/{},*]+', text):
        token = raw.strip('.,:;)').removeprefix('./')
        if '/' not in token and token not in top_level():
            continue
        if token.split('/')[0] not in top_level() or token.startswith(USER_FOLDERS) or '..' in token:
            continue
        yield token


@lru_cache(maxsize=None)
def parser_flags(script: str) -> frozenset:
    """The option strings of every ``add_argument`` in ``script`` and in the project modules it takes them from."""
    flags = set()
    runner = 'classification/mm/runner.py'
    sources = [script] + ([runner] if 'classification.mm.runner' in open(os.path.join(ROOT, script)).read() else [])
    for source in sources:
        tree = ast.parse(open(os.path.join(ROOT, source)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'add_argument':
                flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith('-')}
    flags.add('--help')
    return frozenset(flags)


def command_flags(text: str):
    """(script, flags given to it) of each command of this repository in ``text``."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        tokens = text.split()
    for index, token in enumerate(tokens):
        script = token.removeprefix('./')
        if script == 'main.py' and any(t in ('torch.distributed.launch', 'torchrun') for t in tokens[:index]):
            script = 'classification/main.py'  # the official command lines, run from classification/
        if not script.endswith(('.py', '.sh')) or not os.path.isfile(os.path.join(ROOT, script)):
            continue
        rest = tokens[index + 1:]
        end = next((i for i, t in enumerate(rest) if t in ('&&', '||', '|', ';')), len(rest))
        rest = rest[:end]
        flags = [t.split('=')[0] for t in rest if t.startswith('--')]
        yield script, flags, rest
        return


def flag_problems(script: str, flags, rest):
    if script in NOT_CHECKED:
        return []
    if script in SHELL_FLAGS:
        accepted = SHELL_FLAGS[script]
    elif script in SCRIPT_TARGETS:
        accepted = parser_flags(SCRIPT_TARGETS[script])
    elif script in SLURM_TARGETS:
        yaml_config = any(t.endswith(('.yaml', '.yml')) for t in rest)
        accepted = parser_flags(SLURM_TARGETS[script][0 if yaml_config else 1])
    elif script.endswith('.sh'):
        return [f'{script}: the flags of this script are not known to tests/test_docs.py'] if flags else []
    else:
        accepted = parser_flags(script)
    return [f'{script} does not accept {flag}' for flag in flags if flag not in accepted]


@lru_cache(maxsize=None)
def config_problem(path: str):
    """None if the config resolves (yacs for the classification configs, mmengine for the downstream ones)."""
    try:
        if path.endswith('.yaml'):
            from classification.config import get_config
            get_config(SimpleNamespace(cfg=os.path.join(ROOT, path), opts=[]))
        else:
            mmengine = pytest.importorskip('mmengine')
            mmengine.Config.fromfile(os.path.join(ROOT, path))
    except pytest.skip.Exception:
        return None
    except Exception as e:  # what a user gets for that config
        return f'{path} does not resolve: {type(e).__name__}: {str(e).splitlines()[0][:200]}'
    return None


CONFIG_DIRS = ('classification/configs', 'detection/configs', 'segmentation/configs')


def config_named(name: str):
    """The repository path of a config named by its file name alone, or None."""
    found = [p for d in CONFIG_DIRS for p in glob.glob(os.path.join(ROOT, d, '**', name), recursive=True)]
    return os.path.relpath(found[0], ROOT) if found else None


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r'[`*_]', '', heading.strip().lower())
    return re.sub(r'\s', '-', re.sub(r'[^\w\- ]', '', text))


@lru_cache(maxsize=None)
def anchors(doc: str) -> frozenset:
    seen, result, fenced = {}, set(), False
    for line in lines_of(doc):
        if line.strip().startswith('```'):
            fenced = not fenced
        match = re.match(r'^#+\s+(.*)$', line)
        if match and not fenced:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            result.add(base if count == 0 else f'{base}-{count}')
            seen[base] = count + 1
    return frozenset(result)


def problems_of(doc: str):
    found = []
    for number, text in code_spans(doc):
        for token in paths_in(text):
            matches = [p for p in expand_braces(token) if glob.glob(os.path.join(ROOT, p))]
            if len(matches) != len(expand_braces(token)):
                found.append((number, f'no such path in the repository: {token}'))
            for path in matches:
                if path.endswith(('.yaml', '.py')) and path.startswith(CONFIG_DIRS) and '*' not in path:
                    problem = config_problem(path)
                    if problem:
                        found.append((number, problem))
        for word in re.findall(r'[\w.\-]+\.(?:py|yaml)', text):
            if CONFIG_NAME.match(word) and '/' not in text.split(word)[0][-1:]:
                path = config_named(word)
                if path is None:
                    found.append((number, f'no config named {word} in {", ".join(CONFIG_DIRS)}'))
                elif config_problem(path):
                    found.append((number, config_problem(path)))
        for script, flags, rest in command_flags(text):
            found += [(number, p) for p in flag_problems(script, flags, rest)]
    for number, line in enumerate(lines_of(doc), start=1):
        for target in re.findall(r'\]\(([^)\s]+)\)', line):
            if target.startswith(('http://', 'https://', 'mailto:')):
                continue
            path, _, anchor = target.partition('#')
            resolved = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
            if not os.path.exists(os.path.join(ROOT, resolved)):
                found.append((number, f'link to a missing file: {target}'))
            elif anchor and resolved.endswith('.md') and anchor not in anchors(resolved):
                found.append((number, f'link to a missing heading: {target} (no #{anchor} in {resolved})'))
    return [f'{doc}:{number}: {problem}' for number, problem in found]


@pytest.mark.parametrize('doc', DOCS)
def test_paths_flags_configs_and_links_of_the_docs_exist(doc):
    problems = problems_of(doc)
    assert not problems, '\n'.join(problems)


def test_every_docs_page_is_listed_in_the_readme():
    readme = '\n'.join(lines_of('README.md'))
    unlisted = [doc for doc in DOCS[1:] if f']({doc})' not in readme]
    assert not unlisted, f'README.md does not link {", ".join(unlisted)}'


def test_the_checks_find_what_is_wrong(tmp_path, monkeypatch):
    """A wrong path, flag, config and anchor in a page are each reported with the page's name and line."""
    page = os.path.join(ROOT, 'docs', '_broken_test_page.md')
    with open(page, 'w') as f:
        f.write('# Broken\n\nSee `tools/no_such_tool.py`.\n\n    python tools/misc/predict.py x.jpg --no-such-flag\n\n'
                '`mask_rcnn_fpn_coco_huge.py` and [a link](model.md#no-such-heading).\n')
    try:
        problems = problems_of('docs/_broken_test_page.md')
    finally:
        os.remove(page)
    assert problems == [
        'docs/_broken_test_page.md:3: no such path in the repository: tools/no_such_tool.py',
        'docs/_broken_test_page.md:5: tools/misc/predict.py does not accept --no-such-flag',
        'docs/_broken_test_page.md:7: no config named mask_rcnn_fpn_coco_huge.py in classification/configs, '
        'detection/configs, segmentation/configs',
        'docs/_broken_test_page.md:7: link to a missing heading: model.md#no-such-heading (no #no-such-heading in '
        'docs/model.md)']


def python_blocks(doc: str, heading: str) -> list:
    """The fenced ```python blocks of the section of ``doc`` that starts with the line ``heading``."""
    text = '\n'.join(lines_of(doc))
    section = text.split('\n' + heading + '\n', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```python\n(.*?)```', section, re.S)


def test_the_hugging_face_transformers_snippets_run(tmp_path, monkeypatch):
    """docs/build_on_vheat.md's transformers blocks as a user runs them (a photo beside them): the saved folder
    loads into AutoModelForImageClassification with the timm model's logits and serves the pipeline; the DETR
    backbone gives vHeat's four maps and DETR predicts."""
    import shutil

    import torch
    pytest.importorskip('transformers')
    blocks = python_blocks('docs/build_on_vheat.md', '## Hugging Face transformers')
    assert len(blocks) == 2
    shutil.copy(os.path.join(ROOT, 'assets', 'sample.jpg'), tmp_path / 'photo.jpg')
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {}
    for block in blocks:
        exec(compile(block, 'docs/build_on_vheat.md', 'exec'), namespace)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = namespace['hf_model'].eval()(pixel_values=x).logits
        assert (logits - namespace['model'].eval()(x)).abs().max() <= 1e-5
    predictions = namespace['predictions']
    assert len(predictions) == 5 and abs(sum(p['score'] for p in predictions) - 1) <= 1e-4
    assert [tuple(f.shape) for f in namespace['features']] == [(1, 96, 64, 80), (1, 192, 32, 40), (1, 384, 16, 20),
                                                               (1, 768, 8, 10)]
    with torch.no_grad():
        out = namespace['detr'].eval()(pixel_values=torch.randn(1, 3, 128, 160))
    assert out.logits.shape == (1, 100, 92) and out.pred_boxes.shape == (1, 100, 4)
