"""docs/backprop.md stays true: its worked example matches what docs/worked_example.py prints, and
every file, function and section it links to exists; so does every path it names, every code name
it quotes, and every kernel its check commands (and the README's reading order) name."""
import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
GUIDE = os.path.join(DOCS, "backprop.md")
README = os.path.join(ROOT, "README.md")
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")                     # [text](target)
CODE_NAME = re.compile(r"^`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)`$")      # `name` or `Class.method`
BACKTICKED_PATH = re.compile(r"`((?:nn3d|mri2ct|tests|docs|benchmarks)/[\w/.]+\.(?:py|md|png))`")
ANY_PATH = re.compile(r"(?<![\w/.])((?:nn3d|mri2ct|tests|docs|benchmarks)/[\w/.]+\.(?:py|md|png))")
BACKTICKED_NAME = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)(?:\(\))?`")   # `name`, `Class.method`
CHECK_COMMAND = re.compile(r"python -m nn3d\.kernels\.check (\w+)")
LIKEWISE = re.compile(r"python -m nn3d\.kernels\.check \w+` \(likewise ([^)]*)\)")
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


def read(path):
    with open(path, encoding="utf-8") as file:
        return file.read()


def python_files(*folders):
    for folder in folders:
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(directory, name) for name in files if name.endswith(".py"))


@pytest.mark.parametrize("document", [GUIDE, README], ids=["backprop.md", "README.md"])
def test_every_path_named_exists(document):
    """Every nn3d/..., mri2ct/..., tests/... path in the text, backticked or not."""
    paths = set(ANY_PATH.findall(read(document)))
    assert paths
    missing = sorted(path for path in paths if not os.path.exists(os.path.join(ROOT, path)))
    assert not missing, f"{os.path.basename(document)} names files that do not exist: {missing}"


def test_every_quoted_code_name_is_in_the_code(guide):
    """A backticked name with an underscore (or Class.method) occurs in nn3d, mri2ct or docs/*.py:
    a renamed function or variable leaves its old name here."""
    names = {name for name in BACKTICKED_NAME.findall(guide) if "_" in name or "." in name}
    assert len(names) > 30
    words = set()
    for path in python_files("nn3d", "mri2ct", "docs"):
        words.update(re.findall(r"[A-Za-z_]\w*", read(path)))
    missing = sorted(name for name in names if not set(name.split(".")) <= words)
    assert not missing, f"backprop.md quotes names no code contains: {missing}"


@pytest.mark.parametrize("document", [GUIDE, README], ids=["backprop.md", "README.md"])
def test_every_check_command_names_a_kernel(document):
    """`python -m nn3d.kernels.check NAME` (and the names after "likewise") name functions of
    nn3d/kernels/, so the commands stay runnable when a kernel is renamed."""
    text = read(document).replace("\n", " ")
    names = set(CHECK_COMMAND.findall(text))
    for listed in LIKEWISE.findall(text):
        names.update(re.findall(r"`(\w+)`", listed))
    assert names
    kernels = set()
    for path in python_files(os.path.join("nn3d", "kernels")):
        kernels.update(name for name in defined_names(path) if "." not in name)
    missing = sorted(names - kernels)
    assert not missing, f"{os.path.basename(document)}'s check commands name no kernel: {missing}"


def test_each_layer_section_ends_with_its_code_path(guide):
    """Sections 1-6 (the loss back to the encoder) and 3a-3c each name reference -> kernel -> check."""
    sections = re.split(r"\n(?=#{2,3} )", guide)
    layer_sections = [section for section in sections
                      if re.match(r"#{2,3} (?:[1-6]\. |3[abc]\. )", section) and not section.startswith("## 3. ")]
    assert len(layer_sections) == 8
    for section in layer_sections:
        assert "**Reference → kernel → check:**" in section, section.splitlines()[0]
