"""No markdown cell of a notebook types a result number (DESIGN.md, "Evidence").

A sentence that states an outcome of a run is computed in a code cell from the run's numbers; typed prose
keeps explanations, definitions, settings and results of the literature with their citation. This test
scans every markdown cell of notebooks/ and notebooks/solutions/, removes the forms of a number that are
not a result (the rules below, each with its reason) and fails on any digit left over.
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb")) + sorted((NOTEBOOKS / "solutions").glob("*.ipynb"))

# Numbers the rules do not cover but that are not results: (notebook file name, exact phrase) -> reason.
# Keep it small: a new entry needs a reason a reviewer accepts; a result never goes here.
ALLOW: dict[tuple[str, str], str] = {
    ("02_soft_targets_and_temperature.ipynb", "*Shirt 0.90, T-shirt 0.07, Pullover 0.02, Coat 0.01, Sandal 0.000001*"):
        "an invented illustration of soft targets ('it might say'), not a measurement; the notebook then shows "
        "the real teacher's",
}

# Each pattern is removed before the scan; the comment says why what it removes is not a result.
FENCED_CODE = re.compile(r"```.*?```", re.S)  # code blocks: code, not prose
INDENTED_CODE = re.compile(r"(?:(?<=\n\n)|^)(?: {4}|\t).*(?:\n(?: {4}|\t).*)*")  # the same, indented 4 spaces
DISPLAY_MATHS = re.compile(r"\$\$.*?\$\$", re.S)  # formulas and definitions are not results
INLINE_MATHS = re.compile(r"(?<![\\$])\$(?!\$)[^$\n]+?(?<!\\)\$")  # same, inline
INLINE_CODE = re.compile(r"`(?:[^`\n]|\n(?!\s*\n))*`")  # parameter names and values the learner types, code
LINK_TARGET = re.compile(r"\]\([^)\s]*\)")  # a link's address (arXiv ids, file names), not prose
HEADING = re.compile(r"^\s{0,3}#.*$", re.M)  # headings number the notebook's parts: "## 3. Prune"
ENUMERATOR = re.compile(r"^(\s*)\d+[.)](?=\s)", re.M)  # "1. " / "2) " count list items
# cross-references to other notebooks, sections, exercises ...: "notebooks 01, 03 and 06", "sections 3-4"
CROSS_REF = re.compile(
    r"\b(?:notebooks?|sections?|exercises?|blocks?|steps?|parts?|cells?|questions?|tasks?)"
    r"\s+\d+(?:\s*\([^()\d]*\))?(?:\s*(?:,|-|–|and|or|to)\s*\d+(?:\s*\([^()\d]*\))?)*", re.I)
# names with digits glued to letters: int8, fp32, bf16, SHA-256, CIFAR-100, resnet18; a metric at a
# threshold or batch size: mAP@.5, mAP@[.5:.95], ms @1
NAME = re.compile(r"\b[A-Za-z][A-Za-z_]*(?:-?\d+(?:[._]\d+)*[A-Za-z]*\b| ?@\[?[\d.:]+\]?)")
SHAPE = re.compile(r"\b\d+\s*[x×]\s*\d+\b")  # 3x3 / 1x1 kernels, 28x28 images: shapes, not results
# a sentence citing the literature: results of published work are allowed with their citation
# a year that ends a citation's parenthesis or part of it: "(2015)", "(Hinton et al., 2015)", "(2015 or 2019)",
# '(2015, "Soft targets as regularizers")'; not "(2024 runs)"
YEAR = r"(?:19[5-9]|20[0-3])\d[a-z]?(?=[),;:]|\s+(?:or|and)\b)"
CITATION = re.compile(rf"et al|\((?:[^()]*[\s,])?{YEAR}[^()]*\)|\b(?:CVPR|ICLR|NeurIPS|NIPS|ICML|ECCV|ICCV|arXiv)\b")
DIGITS = re.compile(r"\d(?:[\d,.]*\d)?")
SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z*_(\"“])")


def sentences(text: str) -> list[str]:
    """The sentences of a markdown text; each paragraph, list item and table row stands on its own."""
    text = HEADING.sub("", text)
    blocks = re.split(r"\n\s*\n|\n(?=\s*(?:[-*+]|\d+[.)])\s)|\n(?=\s*\|)|(?<=\|)\n", text)
    out = []
    for block in blocks:
        block = " ".join(block.split())
        out += [s for s in SENTENCE_END.split(block.replace("et al.", "et al")) if s.strip()]
    return out


def typed_numbers(text: str, allowed_phrases: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(number, sentence) for every number in markdown ``text`` that no rule allows."""
    for phrase in allowed_phrases:
        text = text.replace(phrase, " ")
    for pattern in (FENCED_CODE, INDENTED_CODE, DISPLAY_MATHS, INLINE_MATHS, INLINE_CODE, LINK_TARGET):
        text = pattern.sub(" … ", text)
    text = ENUMERATOR.sub(r"\1-", text)
    found = []
    for sentence in sentences(text):
        if CITATION.search(sentence):
            continue
        scrubbed = sentence
        for pattern in (CROSS_REF, NAME, SHAPE):
            scrubbed = pattern.sub(" ", scrubbed)
        found += [(m.group(), sentence) for m in DIGITS.finditer(scrubbed)]
    return found


def markdown_cells(path: Path):
    for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] == "markdown":
            yield index, "".join(cell["source"])


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_no_markdown_cell_types_a_result_number(path):
    allowed = tuple(phrase for (name, phrase) in ALLOW if name == path.name)
    problems = [f"{path.relative_to(NOTEBOOKS.parent)} cell {index}: {number!r} in: {sentence}"
                for index, text in markdown_cells(path) for number, sentence in typed_numbers(text, allowed)]
    assert not problems, (
        "a markdown cell types a number (DESIGN.md, 'Evidence': no result number typed into a markdown cell).\n"
        "Fix: compute the sentence in a code cell from the run's numbers (display(Markdown(...))), or put a "
        "definition/formula in $...$ or a parameter value in `backticks`; a fixed fact of the setup may go "
        "in ALLOW with its reason.\n" + "\n".join(problems))


def test_every_allow_entry_is_still_needed():
    texts = {path.name: "\n".join(text for _, text in markdown_cells(path)) for path in PATHS}
    stale = [key for key in ALLOW if key[0] not in texts or key[1] not in texts[key[0]]]
    assert not stale, f"ALLOW entries whose phrase no longer appears in their notebook: {stale}"
    assert all(reason.strip() for reason in ALLOW.values())


def test_a_typed_result_is_flagged():
    found = typed_numbers("The student learns fast. KD beats scratch by 1.2 points on this run.")
    assert found == [("1.2", "KD beats scratch by 1.2 points on this run.")]
    assert [n for n, _ in typed_numbers("- pruning 70% of the weights costs 0.4 points")] == ["70", "0.4"]
    assert [n for n, _ in typed_numbers("int8 is 3.8x faster (see notebook 09)")] == ["3.8"]
    assert [n for n, _ in typed_numbers("The file is 47 MB.\n\n## 2. Next")] == ["47"]
    # a note beside a cross-reference that holds a number is still read; so is text between code spans
    assert [n for n, _ in typed_numbers("as notebook 03 found (1.2 points better)")] == ["1.2"]
    assert [n for n, _ in typed_numbers("Set `T = 4`: 3.5 points better, `alpha = 0.9`.")] == ["3.5"]
    assert [n for n, _ in typed_numbers("int8 is 3.8x faster (2024 runs)")] == ["3.8", "2024"]


@pytest.mark.parametrize("text", [
    "## 3. Prune 90% of the weights",  # heading
    "Set `amount = 0.7` and `epochs = 6`.",  # inline code
    "ECE $= 0$ means calibrated; $q = \\mathrm{round}(x / s) + z$ over $256$ steps.",  # inline maths
    "$$s(t) = s_f (1 - t/n)^3$$",  # display maths
    "See [the paper](https://arxiv.org/abs/1503.02531).",  # link target
    "Hinton et al. report 0.7% on MNIST.",  # citation: et al.
    "Soft targets help (Hinton, Vinyals and Dean, 2015) by 0.7 points.",  # citation: year in parentheses
    "Their CVPR paper reports 76.1% top-1.",  # citation: venue
    "As in notebook 03, notebooks 03-09 and notebooks 01, 03 and 06; sections 3 and 4, exercise 1, block 2.",
    "1. load the data\n2) train the teacher",  # list enumerators
    "int8, fp32, bf16, SHA-256 and CIFAR-100; a 3x3 kernel on a 28x28 image, 1 x 1 convolutions.",  # names
    "COCO's mAP@.5 and mAP@[.5:.95]; the columns ms @1 and ms @N.",  # metric names
    "Notebooks 01 (the teacher), 03 (distillation) and 06 (channel pruning).",  # cross-references with notes
    "Run it from Python: `pm.execute_notebook(\"03.ipynb\",\nparameters={\"T\": 2.0})`.",  # code over two lines
    "The formula\n\n    q = clip(round(x / scale) + zero_point, 0, 255)\n\nand back.",  # indented code block
    "```bash\npython -m distill_utils sweep 03 -p T 1 2 4 8\n```",  # fenced code block
])
def test_allowed_forms_are_not_flagged(text):
    assert typed_numbers(text) == []


def test_an_allow_phrase_is_removed_only_where_listed():
    assert typed_numbers("MNIST has 60,000 training images.", ("60,000 training images",)) == []
    assert [n for n, _ in typed_numbers("MNIST has 60,000 training images.")] == ["60,000"]
