"""Hostile inputs to `edgeclf bundle` and `edgeclf check-bundle` (issue 21 items 2, 12, 16, 17).

A manifest, run.json or bench.json may come from someone else: nothing in them may become code
in check_golden.py, the Kotlin or the Swift, or live HTML in MODEL_CARD.md; a bundle someone
sends may not make check-bundle read outside it, unpack without bound, or blame the device for
a file swapped after bundling.
"""
from __future__ import annotations

import ast
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
import zipfile
from pathlib import Path

import pytest

from edgeclf.artefacts import sha256_file
from edgeclf.bundle import BundleError, archive, code, escape, parse_sums_line, sums_line
from edgeclf.bundle.builder import build_bundle, write_sums
from edgeclf.bundle.check import check_bundle
from edgeclf.bundle.handoff import HandOff
from edgeclf.errors import EdgeclfError, ModelError

PAYLOAD_FILE = "PWNED"
# A model file name that tries to close the string literal of every language and run code.
HOSTILE_MODEL = 'm"${File("PWNED").createNewFile()}\\(exit(1))\'\'\'"""\nimport os; open("PWNED", "w")#$x.tflite'
HOSTILE_LABELS = ['<img src=x onerror=alert(1)>', "*bold* _it_ `code` [link](http://x) | pipe", "blue\u202eder"]
LONG_LABEL = "l" * 245  # legal: a file name is at most 255 bytes


def hostile_artefact(tiny_int8: Path, dest: Path, model_name: str | None = None, labels: list[str] | None = None,
                     **changes) -> Path:
    """A copy of the tiny int8 artefact with a renamed model, other class names or manifest keys
    (dotted: `source_run.arch`), its manifest's file hashes kept consistent."""
    artefact = Path(shutil.copytree(tiny_int8, dest))
    manifest = json.loads((artefact / "manifest.json").read_text())
    if model_name:
        os.replace(artefact / manifest["model_file"], artefact / model_name)
        manifest["files"][model_name] = manifest["files"].pop(manifest["model_file"])
        manifest["model_file"] = model_name
    if labels:
        (artefact / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
        manifest["labels"] = labels
        manifest["files"]["labels.txt"]["sha256"] = sha256_file(artefact / "labels.txt")
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        record = manifest
        for part in path:
            record = record[part]
        record[key] = value
    (artefact / "manifest.json").write_text(json.dumps(manifest))
    return artefact


@pytest.fixture(scope="module")
def hostile(tiny_int8, tmp_path_factory) -> Path:
    """A bundle of an artefact whose model file name and class names attack every generated language."""
    root = tmp_path_factory.mktemp("hostile")
    labels = [*HOSTILE_LABELS]
    artefact = hostile_artefact(tiny_int8, root / "artefact", HOSTILE_MODEL, labels)
    return Path(build_bundle(artefact, root / "bundle", count=3)["path"])


# -- item 2: the escapers, one per language --------------------------------------------------------

HOSTILE_STRINGS = ['"""\nimport os; os.system("id")\n"""', 'a"b', "${System.exit(1)}", "$name", "\\(exit(1))",
                   "back\\slash\\", "new\nline\r\t", "\u202e\u200b\x00\x07", "emoji \U0001F600 é", "'''", "*/ /* //"]


def kotlin_string(src: str, i: int) -> tuple[tuple, int]:
    """Decode the Kotlin string literal whose opening quote is at src[i-1], by the language's rules:
    \\t \\b \\n \\r \\' \\" \\\\ \\$ \\uXXXX (UTF-16 units); $name and ${...} are templates."""
    parts, units = [], []
    simple = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "'": "'", '"': '"', "\\": "\\", "$": "$"}

    def flush():
        if units:
            parts.append("".join(units).encode("utf-16", "surrogatepass").decode("utf-16"))
            units.clear()
    while True:
        ch = src[i]
        if ch == "\n":
            raise ValueError("line break inside a Kotlin string")
        if ch == '"':
            flush()
            return tuple(parts), i + 1
        if ch == "\\":
            nxt = src[i + 1]
            if nxt == "u":
                units.append(chr(int(src[i + 2:i + 6], 16)))
                i += 6
            else:
                units.append(simple[nxt])  # KeyError: an escape Kotlin does not have
                i += 2
        elif ch == "$" and src[i + 1] == "{":
            flush()
            end = skip_code(src, i + 2, "}", kotlin_string)
            parts.append(("template", src[i + 2:end]))
            i = end + 1
        elif ch == "$" and (src[i + 1].isalpha() or src[i + 1] == "_"):
            flush()
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", src[i + 1:]).group(0)
            parts.append(("template", name))
            i += 1 + len(name)
        else:
            units.append(ch)
            i += 1


def swift_string(src: str, i: int) -> tuple[tuple, int]:
    """Decode a Swift string literal: \\0 \\\\ \\t \\n \\r \\" \\' \\u{1-8 hex}; \\( ... ) interpolates."""
    parts, text = [], []
    simple = {"0": "\0", "\\": "\\", "t": "\t", "n": "\n", "r": "\r", '"': '"', "'": "'"}
    while True:
        ch = src[i]
        if ch == "\n":
            raise ValueError("line break inside a Swift string")
        if ch == '"':
            parts.append("".join(text))
            return tuple(p for p in parts if p != ""), i + 1
        if ch == "\\":
            nxt = src[i + 1]
            if nxt == "(":
                parts.append("".join(text))
                text = []
                end = skip_code(src, i + 2, ")", swift_string)
                parts.append(("interpolation", src[i + 2:end]))
                i = end + 1
            elif nxt == "u":
                match = re.match(r"\{([0-9A-Fa-f]{1,8})\}", src[i + 2:])
                text.append(chr(int(match.group(1), 16)))
                i += 2 + len(match.group(0))
            else:
                text.append(simple[nxt])
                i += 2
        else:
            text.append(ch)
            i += 1


def skip_code(src: str, i: int, close: str, string) -> int:
    """The index of the `close` that ends the code starting at i (nested brackets and strings skipped)."""
    opening = {"}": "{", ")": "("}[close]
    depth = 0
    while True:
        ch = src[i]
        if ch == '"':
            _, i = string(src, i + 1)
            continue
        if ch == opening:
            depth += 1
        elif ch == close:
            if depth == 0:
                return i
            depth -= 1
        i += 1


def tokens(src: str, string) -> list[tuple]:
    """Comments, decoded string literals and code, in order."""
    out, i, chunk = [], 0, []
    while i < len(src):
        if src.startswith("//", i) or src.startswith("/*", i):
            end = src.find("\n", i) if src[i + 1] == "/" else src.index("*/", i) + 2
            end = len(src) if end < 0 else end
            out.append(("comment", src[i:end]))
            i = end
        elif src[i] == '"':
            parts, i = string(src, i + 1)
            out.append(("string", parts))
        else:
            out.append(("code", src[i]))
            i += 1
    return out


@pytest.mark.parametrize("value", HOSTILE_STRINGS)
def test_each_escaper_round_trips_hostile_strings(value):
    assert ast.literal_eval(escape.python(value)) == value
    assert tokens(escape.kotlin(value), kotlin_string) == [("string", (value,) if value else ())]
    assert tokens(escape.swift(value), swift_string) == [("string", (value,) if value else ())]
    from markdown_it import MarkdownIt

    parser = Tags()
    parser.feed(MarkdownIt("commonmark", {"html": True}).render(f"text {escape.markdown(value)} text"))
    shown = "".join(f"U+{ord(c):04X}" if unicodedata.category(c) in escape.INVISIBLE else c for c in value)
    assert [tag for tag, _ in parser.tags] == ["p"] and "".join(parser.text).strip() == f"text {shown} text"


def test_templates_refuse_a_value_no_escaper_made():
    checked = {"arch": "mobilenetv2"}
    with pytest.raises(TypeError, match="not checked or escaped for kotlin"):
        code.render("Classifier.kt.tmpl", {"CLASS_NAME": "raw string"} | {k: escape.Code("1", "any") for k in checked})
    with pytest.raises(TypeError, match="MODEL_FILE .* not checked or escaped for swift"):
        code.render("Classifier.swift.tmpl", {"CLASS_NAME": escape.Code("X", "any"), "MODEL_NAME": escape.Code("x", "any"),
                                              "MODEL_FILE": escape.kotlin("model.tflite")})


@pytest.mark.parametrize("key, value", [
    ("source_run__arch", '"""\nimport os; open("PWNED", "w")\n"""'),
    ("input__dtype", 'uint8"; System.exit(1); val x = "'),
    ("output__dtype", "float32\\(exit(1))"),
    ("quant", "int8 */ evil() /*"),
    ("target", "tflite\n"),
])
def test_manifest_values_outside_their_closed_set_are_refused(tiny_int8, tmp_path, key, value):
    artefact = hostile_artefact(tiny_int8, tmp_path / "artefact", **{key: value})
    with pytest.raises(EdgeclfError, match=r"manifest.json .* is .*not one of") as caught:
        build_bundle(artefact, tmp_path / "bundle", count=3)
    assert len(str(caught.value).splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefact"]


def test_export_refuses_a_run_json_arch_outside_the_backbones(tiny_run, tmp_path):
    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.jobs.export import export_run

    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("exports", "cache", "bench")))
    info = json.loads((run / "run.json").read_text())
    info["config"]["arch"] = '"""\nimport os; open("PWNED", "w")\n"""'
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match=r"run.json names arch .* not one of mobilenetv2"):
        export_run(run, ExportSpec(out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_generated_python_is_the_template_with_literals_and_runs(hostile, tiny_int8, tmp_path):
    source = (hostile / "check_golden.py").read_text()
    tree = ast.parse(source)
    constants = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()
                 and node.targets[0].id not in ("HERE",)}
    assert constants["MODEL_FILE"] == HOSTILE_MODEL and constants["NUM_LABELS"] == 3
    # The same program as for a plain model file name: only the MODEL_FILE literal differs.
    plain = code.render("check_golden.py.tmpl", code.values(code.contract(json.loads((tiny_int8 / "manifest.json").read_text())),
                                                              json.loads((hostile / "golden" / "golden.json").read_text()), "python"))
    plain_tree = ast.parse(plain)
    for node in ast.walk(plain_tree):
        if isinstance(node, ast.Constant) and node.value == "model.tflite":
            node.value = HOSTILE_MODEL
    assert ast.dump(tree) == ast.dump(plain_tree)
    ran = subprocess.run([sys.executable, "check_golden.py"], cwd=hostile, capture_output=True, text=True, timeout=300,
                         env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")})
    assert ran.returncode == 0 and "all 3 golden vectors pass" in ran.stdout, ran.stdout + ran.stderr
    assert not (hostile / PAYLOAD_FILE).exists() and not Path(PAYLOAD_FILE).exists()


@pytest.mark.parametrize("language, suffix, string", [("kotlin", "kt", kotlin_string), ("swift", "swift", swift_string)])
def test_kotlin_and_swift_literals_round_trip(hostile, tiny_int8, language, suffix, string):
    """Tokenized by each language's own rules, the generated file is the plain one but for the model
    file name, which decodes to exactly the hostile name with no template or interpolation in it."""
    generated = next((hostile / {"kotlin": "android", "swift": "ios"}[language]).glob(f"*Classifier.{suffix}")).read_text()
    plain = code.render(f"Classifier.{suffix}.tmpl", code.values(
        code.contract(json.loads((tiny_int8 / "manifest.json").read_text())),
        json.loads((hostile / "golden" / "golden.json").read_text()), language))
    got, want = tokens(generated, string), tokens(plain, string)
    assert len(got) == len(want)
    differ = [(g, w) for g, w in zip(got, want) if g != w]
    assert differ == [(("string", (HOSTILE_MODEL,)), ("string", ("model.tflite",)))]


class Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_model_card_shows_class_names_as_text(hostile):
    from markdown_it import MarkdownIt

    card = (hostile / "MODEL_CARD.md").read_text()
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(card)  # raw HTML passes, as on GitHub
    parser = Tags()
    parser.feed(rendered)
    assert {tag for tag, _ in parser.tags} <= {"h1", "h2", "p", "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "code"}
    assert not any(attrs for _, attrs in parser.tags)
    text = "".join(parser.text)
    assert HOSTILE_LABELS[0] in text and HOSTILE_LABELS[1] in text  # shown literally, not dropped
    assert "\u202e" not in card and "blueU+202Eder" in text


# -- item 17: long class names, absolute paths ---------------------------------------------------

def test_long_class_name_and_paths_kept_only_when_asked(tiny_int8, tmp_path):
    artefact = hostile_artefact(tiny_int8, tmp_path / "artefact", labels=[LONG_LABEL, "green", "red"])
    bundle = Path(build_bundle(artefact, tmp_path / "bundle", count=3, full_paths=True)["path"])
    names = [p.name for p in (bundle / "golden").iterdir()]
    assert any(name.startswith("000_lll") for name in names) and max(len(name.encode()) for name in names) <= 255
    run_dir = json.loads((tiny_int8 / "manifest.json").read_text())["source_run"]["path"]
    assert str(Path(run_dir).parent / "data") in (bundle / "MODEL_CARD.md").read_text()


def test_hand_off_files_carry_no_absolute_paths(hostile, tiny_int8, tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    leaks = {p.relative_to(hostile).as_posix() for p in hostile.rglob("*") if p.is_file() and base.encode() in p.read_bytes()}
    assert leaks == set()
    golden = json.loads((hostile / "golden" / "golden.json").read_text())
    assert golden["source"]["root"] == "data"
    manifest = json.loads((hostile / "manifest.json").read_text())
    assert manifest["source_run"]["path"] == "run" and manifest["labels"] == HOSTILE_LABELS
    card = (hostile / "MODEL_CARD.md").read_text()
    assert "45 images from data" in card
    assert re.search(r"- split: stratified --val-split 0.25 of data with seed 3", card)


def test_hand_off_names_whole_path_components_only():
    handoff = HandOff({"root": "/srv/u/data", "run": "/srv/u/data-run"})
    assert handoff.text("/srv/u/data/a.png, /srv/u/data-run and /srv/u/datax") == "data/a.png, data-run and /srv/u/datax"
    assert HandOff({"root": "/srv/u/data"}, full=True).text("/srv/u/data/a.png") == "/srv/u/data/a.png"


# -- item 12: check-bundle integrity -------------------------------------------------------------

def copy_bundle(bundle: Path, dest: Path) -> Path:
    return Path(shutil.copytree(bundle, dest))


def drop_from_sums(bundle: Path, name: str) -> None:
    with open(bundle / "SHA256SUMS", newline="") as f:
        entries = [parse_sums_line(line) for line in f.read().split("\n") if line]
    (bundle / "SHA256SUMS").write_text("".join(sums_line(d, n) for d, n in entries if n != name), newline="")


def test_a_model_left_out_of_sha256sums_is_tampering(hostile, tmp_path):
    bundle = copy_bundle(hostile, tmp_path / "b")
    model = bundle / HOSTILE_MODEL
    drop_from_sums(bundle, HOSTILE_MODEL)
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x55
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model file .* is not a file of the bundle listed in SHA256SUMS"):
        check_bundle(bundle)
    # Swapped and SHA256SUMS rewritten to match: the manifest still records the exported model.
    write_sums(bundle)
    with pytest.raises(BundleError, match=r"is not the model its manifest.json records \(swapped after export\)"):
        check_bundle(bundle)


@pytest.mark.parametrize("escape_to", ["absolute", "dotdot"])
def test_manifest_model_file_stays_inside_the_bundle(hostile, tmp_path, escape_to):
    bundle = copy_bundle(hostile, tmp_path / "b")
    outside = shutil.copyfile(bundle / HOSTILE_MODEL, tmp_path / "outside.tflite")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model_file"] = str(outside) if escape_to == "absolute" else "../outside.tflite"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    write_sums(bundle)
    with pytest.raises(ModelError, match=r"names model_file .*inside the export directory"):
        check_bundle(bundle)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.npy", "golden/../../outside.npy", "golden/unlisted.npy"])
def test_golden_vector_paths_stay_inside_the_bundle(hostile, tmp_path, path):
    bundle = copy_bundle(hostile, tmp_path / "b")
    first = json.loads((bundle / "golden" / "golden.json").read_text())["vectors"][0]
    shutil.copyfile(bundle / first["input"], tmp_path / "outside.npy")
    if path == "golden/unlisted.npy":
        shutil.copyfile(bundle / first["input"], bundle / path)
    record = json.loads((bundle / "golden" / "golden.json").read_text())
    record["vectors"][0]["input"] = path
    (bundle / "golden" / "golden.json").write_text(json.dumps(record))
    write_sums(bundle)
    if path == "golden/unlisted.npy":
        drop_from_sums(bundle, path)
    with pytest.raises(BundleError, match=r"golden vector .*'s file .* is not a file of the bundle listed in SHA256SUMS"):
        check_bundle(bundle)


def zip_folder(folder: Path, dest: Path, top: str | None) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, (f"{top}/" if top else "") + path.relative_to(folder).as_posix())
    return dest


@pytest.mark.parametrize("name, top", [("h (1).zip", "handoff"), ("renamed.zip", None)])
def test_the_zip_file_name_does_not_matter(hostile, tmp_path, name, top):
    zipped = zip_folder(hostile, tmp_path / name, top)
    result = check_bundle(zipped)
    assert result["failed"] == 0 and result["passed"] == 3


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = tmp_path / "bomb.zip"
    block = bytes(1 << 24)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("b/bundle.json", "{}")
        with zipped.open("b/zeros.npy", "w", force_zip64=True) as member:
            for _ in range(1536 // 16):  # 1.5 GiB of zeros
                member.write(block)
    assert bomb.stat().st_size < 2 << 20
    started = time.monotonic()
    with pytest.raises(BundleError, match=r"would unpack to 1536 MiB; a bundle is at most 1024 MiB"):
        check_bundle(bomb)
    assert time.monotonic() - started < 5


def test_a_zip_that_lies_about_its_sizes_or_has_too_many_members_is_refused(tmp_path, monkeypatch):
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zipped:
        zipped.writestr("b/bundle.json", "{}")
        for i in range(archive.MAX_MEMBERS):
            zipped.writestr(f"b/{i}", "")
    with pytest.raises(BundleError, match=rf"has {archive.MAX_MEMBERS + 1} members; a bundle has at most {archive.MAX_MEMBERS}"):
        check_bundle(many)
    # Declared sizes are checked first; the bytes written are counted too, against the same limit.
    monkeypatch.setattr(archive, "MAX_BYTES", 1 << 20)
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("b/bundle.json", "{}")
        zipped.writestr("b/a", bytes(600 << 10))
        zipped.writestr("b/c", bytes(600 << 10))
    with pytest.raises(BundleError, match="would unpack to 1 MiB"):
        check_bundle(big)
    with zipfile.ZipFile(big) as zipped:
        infos = zipped.infolist()
    for info in infos:
        info.file_size = 0 if info.filename != "b/bundle.json" else info.file_size
    monkeypatch.setattr(zipfile.ZipFile, "infolist", lambda self: infos)
    with pytest.raises(BundleError, match="damaged|unpacks to more than it declares"):
        check_bundle(big)


def test_zip_members_outside_the_bundle_folder_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("b/bundle.json", "{}")
        zipped.writestr("b/../../escape.txt", "x")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        check_bundle(evil)
    assert not (tmp_path / "escape.txt").exists()


def test_stray_files_are_ignored_with_a_warning(hostile, tmp_path, capsys):
    bundle = copy_bundle(hostile, tmp_path / "b")
    (bundle / ".DS_Store").write_bytes(b"finder")
    assert check_bundle(bundle)["failed"] == 0
    assert "not in SHA256SUMS and are ignored (e.g. '.DS_Store')" in capsys.readouterr().err


# -- item 16: a damaged golden.json --------------------------------------------------------------

@pytest.mark.parametrize("damage, message", [
    (lambda r: "{not json", "is not valid JSON"),
    (lambda r: json.dumps([r]), "holds a JSON list, not an object"),
    (lambda r: json.dumps({k: v for k, v in r.items() if k != "tolerance"}), "has no tolerance"),
    (lambda r: json.dumps(r | {"vectors": []}), "has no golden vectors"),
    (lambda r: json.dumps(r | {"vectors": [{"id": "x"}]}), "vector 0 lacks its id, input or output file"),
    (lambda r: json.dumps(r | {"reference": None}), "has no reference runtime"),
    (lambda r: json.dumps(r | {"output": {"dtype": "object"}}), "has no output.dtype"),
])
def test_damaged_golden_json_is_one_clear_line(hostile, tmp_path, damage, message):
    bundle = copy_bundle(hostile, tmp_path / "b")
    path = bundle / "golden" / "golden.json"
    path.write_text(damage(json.loads(path.read_text())))
    write_sums(bundle)
    with pytest.raises(BundleError, match=re.escape(message)) as caught:
        check_bundle(bundle)
    assert len(str(caught.value).splitlines()) == 1 and "re-create the bundle" in str(caught.value)
