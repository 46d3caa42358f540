"""docs/backprop.md stays true: its worked example matches what docs/worked_example.py prints, and
every file, function and section it links to exists."""
import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
GUIDE = os.path.join(DOCS, "backprop.md")
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")                     # [text](target)
CODE_NAME = re.compile(r"^`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)`$")      # `name` or `Class.method`
BACKTICKED_PATH = re.compile(r"`((?:nn3d|mri2ct|tests|docs|benchmarks)/[\w/.]+\.(?:py|md|png))`")
NUMBER = re.compile(r"-?\d+\.\d{4,}")                                # numbers quoted to 4+ decimals


@pytest.fixture(scope="module")
def guide():
    with open(GUIDE, encoding="utf-8") as file:
        return file.read()


@pytest.fixture(scope="module")
def example_output():
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, os.path.join(DOCS, "worked_example.py")],   # this tree's nn3d
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=environment)
    assert result.returncode == 0, result.stderr
    return result.stdout


def worked_example_section(text):
    start, end = "<!-- worked-example:start -->", "<!-- worked-example:end -->"
    assert start in text and end in text, "backprop.md lost its worked-example markers"
    return text[text.index(start):text.index(end)]


def test_quoted_output_blocks_match_the_script(guide, example_output):
    """Each ```text block of the worked example is a run of consecutive lines of the output."""
    blocks = re.findall(r"```text\n(.*?)\n```", worked_example_section(guide), flags=re.S)
    assert len(blocks) >= 5
    output = "\n" + example_output + "\n"
    for block in blocks:
        assert "\n" + block + "\n" in output, f"backprop.md quotes output the script no longer prints:\n{block}"


def test_numbers_in_the_prose_come_from_the_output(guide, example_output):
    section = worked_example_section(guide)
    quoted = set(NUMBER.findall(section))
    assert len(quoted) > 20
    missing = sorted(number for number in quoted if number not in example_output)
    assert not missing, f"numbers in backprop.md's worked example that the script does not print: {missing}"


def defined_names(path):
    """{'function', 'Class', 'Class.method', ...} defined at the top level of a Python file."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), path)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body
                         if isinstance(item, ast.FunctionDef))
    return names


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_points_at_an_existing_file_and_name(guide):
    anchors = {slug(line.lstrip("#")) for line in guide.splitlines() if line.startswith("#")}
    links = LINK.findall(guide)
    assert len(links) > 40
    checked_names = 0
    for text, target in links:
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, f"link to a missing section: {target}"
            continue
        path = os.path.normpath(os.path.join(DOCS, target))
        assert os.path.isfile(path), f"backprop.md links to a missing file: {target}"
        name = CODE_NAME.match(text)
        if name and path.endswith(".py"):
            assert name.group(1) in defined_names(path), f"{target} defines no {name.group(1)}"
            checked_names += 1
    assert checked_names > 30


def test_every_backticked_path_exists(guide):
    paths = set(BACKTICKED_PATH.findall(guide))
    assert paths
    missing = sorted(path for path in paths if not os.path.exists(os.path.join(ROOT, path)))
    assert not missing, f"backprop.md names files that do not exist: {missing}"
