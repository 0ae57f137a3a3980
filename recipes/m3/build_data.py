"""Build multilingual query / positive / hard-negative triples from documents installed offline.

Sources (Debian packages; ``apt-get install`` them first, see ``recipes/m3/README.md``):

* translated manual pages: ``manpages`` (en), ``manpages-de``, ``-fr``, ``-es``, ``-ru``,
  ``-ja``, ``-zh`` (zh_CN), rendered to text with ``groff`` (sections, subsections, paragraphs);
* reStructuredText: ``python3-doc`` (en, ``_sources/*.rst.txt``) and ``linux-doc-6.1``
  (``Documentation/**/*.rst.gz``; en, plus its zh_CN and it_IT translations).

Each document becomes passages (consecutive paragraphs of one section, ``--min-tokens`` to
``--max-tokens`` tokens of the retriever's tokenizer). Pseudo-queries:

* ``ict`` (inverse cloze task): one sentence taken out of a passage is the query; the passage
  without it is the positive (and is the passage's text in the corpus everywhere);
* ``heading``: "<document title>: <section heading>" for the first passage of a section, for
  headings that are not generic (a heading found in 5% or more of a language's documents, such
  as DESCRIPTION, is generic).

Hard negatives: other passages of the same document (filled up from other documents of the
same language when a document is short). The held-out split is by document key (a man page
and its translations share one key, so a page is never on both sides), decided by a hash of
the key: the split does not depend on what else is in the corpus. Everything is seeded.

Writes ``passages.jsonl``, ``train.jsonl``, ``test.jsonl`` and ``manifest.json`` to ``--out``::

    python -m recipes.m3.build_data --out ~/.cache/vllm-landmark/m3-data
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Man page packages and the language of each (zh: the zh_CN pages only).
MAN_PACKAGES = {
    "manpages": "en",
    "manpages-de": "de",
    "manpages-fr": "fr",
    "manpages-es": "es",
    "manpages-ru": "ru",
    "manpages-ja": "ja",
    "manpages-zh": "zh",
}
RST_PACKAGES = ("python3.11-doc", "linux-doc-6.1")
#: linux-doc translations kept (folder under Documentation/translations -> language).
LINUX_TRANSLATIONS = {"zh_CN": "zh", "it_IT": "it"}
GROFF = [
    "groff", "-man", "-Tutf8", "-K", "utf-8", "-k", "-t", "-Wall",
    "-rLL=3000n", "-rHY=0", "-dAD=l", "-P-c", "-P-b", "-P-u",
]  # fmt: skip
GENERIC_HEADING_SHARE = 0.05

_CJK = r"\u2e80-\u2fff\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_SPACE = re.compile(rf"(?<=[{_CJK}]) +(?=[{_CJK}])")
_SENTENCE_END = re.compile(rf"(?<=[.!?;])\s+(?=[\"'(\[A-ZÀ-ÖØ-ÞА-ЯЁ0-9{_CJK}])|(?<=[。！？；])")
_SPACES = re.compile(r"\s+")


@dataclass
class Section:
    """One section of a document: its heading path and its paragraphs (plain text)."""

    heading: str
    level: int
    paragraphs: list[str] = field(default_factory=list)


@dataclass
class Document:
    """A parsed document: ``key`` decides the split (shared by translations of one page)."""

    doc_id: str
    key: str
    lang: str
    source: str
    title: str
    sections: list[Section]


# ----------------------------------------------------------------------------------------------
# Text helpers
# ----------------------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Collapse whitespace; drop the spaces groff puts between two CJK characters."""
    text = _SPACES.sub(" ", text).strip()
    return _CJK_SPACE.sub("", text)


def split_sentences(text: str) -> list[str]:
    """Split on ., !, ?, ; followed by space and a capital/digit/CJK, and after 。！？；."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def is_prose(text: str, min_letters: float = 0.6) -> bool:
    """True when letters make at least ``min_letters`` of the non-space characters."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return False
    return sum(c.isalpha() for c in chars) / len(chars) >= min_letters


# A few frequent function words per Latin-script language, to catch untranslated paragraphs.
_STOPWORDS = {
    "en": "the of and to is in that for with this are be by or not which can when from",
    "de": "der die das und ist nicht ein eine mit von zu den auf für sich dem wird werden oder",
    "fr": "le la les des et est une un pour dans sur avec pas que qui par être sont ou du",
    "es": "el la los las de y es un una para en con por que se del no al como o",
    "it": "il lo la gli le di che è un una per con non del della sono nel si da",
}
_STOPWORD_SETS = {lang: set(words.split()) for lang, words in _STOPWORDS.items()}
_SCRIPTS = {
    "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]"),
    "ja": re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]"),
    "ru": re.compile(r"[\u0400-\u04ff]"),
}


def in_language(text: str, lang: str) -> bool:
    """Whether ``text`` looks written in ``lang`` (not an untranslated English paragraph).

    zh/ja/ru: at least 30% of the letters in that script. Latin-script languages: the
    language's function words are not outnumbered by another one's (needs 3 hits to decide).
    """
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    if lang in _SCRIPTS:
        return len(_SCRIPTS[lang].findall(text)) >= 0.3 * len(letters)
    if lang not in _STOPWORD_SETS:
        return True
    words = re.findall(r"\w+", text.lower())
    hits = {code: sum(w in stop for w in words) for code, stop in _STOPWORD_SETS.items()}
    best = max(hits.values())
    return best < 3 or hits[lang] == best


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same on every run and machine."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


# ----------------------------------------------------------------------------------------------
# Man pages
# ----------------------------------------------------------------------------------------------


def render_man(path: Path, timeout: float = 60.0) -> str | None:
    """Plain text of a man page (one line per paragraph), or None if it is only a redirect."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = raw.decode("utf-8", "replace")
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(('.\\"', "'\\\""))]
    if len(body) <= 2 and any(ln.startswith(".so ") for ln in body):
        return None
    proc = subprocess.run(
        GROFF, input=text.encode("utf-8"), capture_output=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace")


def parse_rendered_man(rendered: str) -> list[Section]:
    """Sections from groff output: headings at column 0 (.SH) and 3 (.SS), body indented."""
    lines = rendered.splitlines()
    nonempty = [i for i, ln in enumerate(lines) if ln.strip()]
    if len(nonempty) < 3:
        return []
    lines = lines[nonempty[0] + 1 : nonempty[-1]]  # drop the page header and footer
    sections: list[Section] = []
    para: list[str] = []

    def flush() -> None:
        if para and sections:
            sections[-1].paragraphs.append(clean_text(" ".join(para)))
        para.clear()

    for line in lines:
        if not line.strip():
            flush()
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0 or (indent == 3 and sections):
            flush()
            sections.append(Section(clean_text(line), 1 if indent == 0 else 2))
        else:
            para.append(line.strip())
    flush()
    return sections


def man_documents(package: str, lang: str, files: list[Path]) -> Iterator[Document]:
    """Render and parse the man pages of one package (two groff processes at a time)."""
    if lang == "zh":
        files = [f for f in files if "/zh_CN/" in str(f)]

    def work(path: Path) -> Document | None:
        rendered = render_man(path)
        if rendered is None:
            return None
        sections = parse_rendered_man(rendered)
        name = path.name.removesuffix(".gz")
        return Document(
            doc_id=f"{package}:{name}",
            key=f"man:{name}",
            lang=lang,
            source=package,
            title=name.rsplit(".", 1)[0],
            sections=sections,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        for doc in pool.map(work, files):
            if doc is not None and doc.sections:
                yield doc


# ----------------------------------------------------------------------------------------------
# reStructuredText
# ----------------------------------------------------------------------------------------------

_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\.\.\s+(?:([\w:-]+)::)?")
_SKIP_DIRECTIVES = {
    "code-block", "code", "sourcecode", "literalinclude", "highlight", "toctree", "doctest",
    "testcode", "testoutput", "testsetup", "testcleanup", "productionlist", "kernel-doc",
    "kernel-abi", "kernel-feat", "raw", "image", "figure", "include", "index", "contents",
    "csv-table", "list-table", "table", "tabularcolumns", "only", "parsed-literal", "graphviz",
    "kernel-include", "maintainers-include", "flat-table", "sectionauthor", "moduleauthor",
    "module", "currentmodule", "c:namespace", "c:namespace-push", "c:namespace-pop",
    "cssclass", "rst-class", "class", "default-role", "role", "highlightlang", "audit-event",
    "impl-detail", "opcode", "program", "ifconfig",
}  # fmt: skip
_INLINE = [
    (re.compile(r":[\w:.+-]+:`~?!?([^`<]*?)\s*(?:<[^`>]*>)?`"), r"\1"),  # :role:`text <t>`
    (re.compile(r"``([^`]+)``"), r"\1"),
    (re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?"), r"\1"),  # `text <url>`_
    (re.compile(r"`([^`]+)`__?"), r"\1"),
    (re.compile(r"`([^`]+)`"), r"\1"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])"), r"\1"),
    (re.compile(r"\|([^|\s][^|]*)\|"), r"\1"),
    (re.compile(r"\[#?\w*\]_"), ""),
    (re.compile(r"\\(.)"), r"\1"),
]
_BULLET = re.compile(r"^(?:[-*+•]|#\.|\d+[.)]|\(\d+\)|[a-zA-Z][.)])\s+")


def rst_inline(text: str) -> str:
    """Strip the common inline markup of reStructuredText / Sphinx."""
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    if text.endswith("::"):
        text = text[:-1]
    return text


def parse_rst(text: str) -> tuple[str, list[Section]]:
    """Title and sections of an RST document; code, tables and most directives dropped."""
    lines = text.replace("\r\n", "\n").replace("\ufeff", "").split("\n")
    sections: list[Section] = [Section("", 0)]
    levels: list[str] = []  # adornment styles in order of first appearance
    title = ""
    i = 0
    skip_above: int | None = None  # skip blocks indented deeper than this (code, directives)

    def heading(text: str, style: str) -> None:
        nonlocal title
        if style not in levels:
            levels.append(style)
        clean = clean_text(rst_inline(text))
        sections.append(Section(clean, levels.index(style) + 1))
        if not title:
            title = clean

    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        # Overlined heading: adornment / text / same adornment.
        if (
            _ADORNMENT.match(line)
            and nxt.strip()
            and i + 2 < len(lines)
            and lines[i + 2].strip() == line.strip()
        ):
            heading(nxt.strip(), "o" + line.strip()[0])
            i += 3
            continue
        if (
            line.strip()
            and not line[0].isspace()
            and _ADORNMENT.match(nxt)
            and not _ADORNMENT.match(line)
            and len(nxt.strip()) >= min(3, len(line.strip()))
        ):
            heading(line.strip(), "u" + nxt.strip()[0])
            i += 2
            skip_above = None
            continue
        if not line.strip():
            i += 1
            continue
        # A block: consecutive non-blank lines.
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i])
            i += 1
        first = block[0]
        indent = len(first) - len(first.lstrip())
        if skip_above is not None:
            if indent > skip_above:
                continue  # inside a literal block or a skipped directive
            skip_above = None
        directive = _DIRECTIVE.match(first.strip())
        if directive:
            name = directive.group(1)
            # Comments, targets and skipped directives: drop, with their indented body.
            if name is None or name.lower() in _SKIP_DIRECTIVES:
                skip_above = indent
                continue
            body = [ln for ln in block[1:] if ln.strip() and not ln.strip().startswith(":")]
            if body:
                sections[-1].paragraphs.append(clean_text(rst_inline(" ".join(body))))
            continue
        stripped = [ln.strip() for ln in block]
        if stripped[0].startswith((">>>", "+--", "+==", "$ ", "# ")) or _ADORNMENT.match(
            stripped[0].replace(" ", "")
        ):
            continue
        if all(re.match(r"^:[^:]+:", s) for s in stripped):
            continue  # field list (:Author: ...)
        paragraph = clean_text(rst_inline(" ".join(_BULLET.sub("", s) for s in stripped)))
        if block[-1].rstrip().endswith("::"):
            skip_above = indent
        if paragraph:
            sections[-1].paragraphs.append(paragraph)
    return title, [s for s in sections if s.paragraphs]


def rst_documents(files: list[tuple[Path, str, str, str, str]]) -> Iterator[Document]:
    """``files``: (path, language, source, split key, document id) of RST files."""
    for path, lang, source, key, doc_id in files:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        title, sections = parse_rst(raw.decode("utf-8", "replace"))
        if sections:
            yield Document(
                doc_id=doc_id,
                key=key,
                lang=lang,
                source=source,
                title=title or Path(key).stem,
                sections=sections,
            )


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def package_files(package: str) -> list[Path]:
    """Regular files installed by a Debian package (sorted), empty if it is not installed."""
    try:
        out = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=False, timeout=60
        )
    except FileNotFoundError:
        return []
    if out.returncode != 0:
        return []
    paths = (Path(p) for p in out.stdout.splitlines() if p.startswith("/"))
    return sorted(p for p in paths if p.is_file() and not p.is_symlink())


def package_version(package: str) -> str | None:
    """Installed version of a Debian package, or None."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def all_documents(max_docs_per_source: int | None = None) -> Iterator[Document]:
    """Every document of the sources that are installed, in a fixed order."""
    have_groff = shutil.which("groff") is not None
    for package, lang in MAN_PACKAGES.items():
        files = [f for f in package_files(package) if re.search(r"/man\d\w*/[^/]+\.gz$", str(f))]
        if not files:
            print(f"[build_data] {package}: not installed, skipped", file=sys.stderr)
            continue
        if not have_groff:
            print("[build_data] groff missing: man pages skipped", file=sys.stderr)
            break
        yield from _limit(man_documents(package, lang, files), max_docs_per_source)

    python_files = [
        f for f in package_files("python3.11-doc") if str(f).endswith(".rst.txt")
    ] or sorted(Path("/usr/share/doc").glob("python3*/html/_sources/**/*.rst.txt"))
    entries = []
    for f in python_files:
        key = "python:" + str(f).split("/_sources/", 1)[-1].removesuffix(".rst.txt")
        entries.append((f, "en", "python3-doc", key, f"python3-doc:{key}"))
    yield from _limit(rst_documents(entries), max_docs_per_source)

    entries = []
    for f in package_files("linux-doc-6.1"):
        path = str(f)
        if not path.endswith(".rst.gz") or "/Documentation/" not in path:
            continue
        rel = path.split("/Documentation/", 1)[1].removesuffix(".rst.gz")
        lang = "en"
        if rel.startswith("translations/"):
            parts = rel.split("/")
            if len(parts) < 3 or parts[1] not in LINUX_TRANSLATIONS:
                continue
            lang, rel = LINUX_TRANSLATIONS[parts[1]], "/".join(parts[2:])
        # A translation shares the split key of its English original, not its id.
        entries.append((f, lang, "linux-doc-6.1", f"linux:{rel}", f"linux-doc-6.1:{lang}:{rel}"))
    yield from _limit(rst_documents(entries), max_docs_per_source)


def _limit(docs: Iterable[Document], n: int | None) -> Iterator[Document]:
    for i, doc in enumerate(docs):
        if n is not None and i >= n:
            return
        yield doc


# ----------------------------------------------------------------------------------------------
# Passages, queries, triples
# ----------------------------------------------------------------------------------------------


@dataclass
class Passage:
    pid: str
    doc_id: str
    lang: str
    section: int
    text: str
    first_in_section: bool


class TokenCounter:
    """Token counts with the retriever's tokenizer (no special tokens), cached."""

    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_file))
        self.cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        n = self.cache.get(text)
        if n is None:
            n = len(self.tok.encode(text, add_special_tokens=False).ids)
            if len(self.cache) < 1_000_000:
                self.cache[text] = n
        return n


def chunk_paragraphs(
    paragraphs: list[str], count: TokenCounter, min_tokens: int, max_tokens: int, lang: str
) -> list[str]:
    """Merge consecutive prose paragraphs in ``lang`` into passages of the token range."""
    units: list[tuple[str, int]] = []
    for p in paragraphs:
        if not is_prose(p) or not in_language(p, lang):
            continue
        n = count(p)
        if n <= max_tokens:
            units.append((p, n))
            continue
        piece, size = [], 0  # too long: cut at sentence ends
        for s in split_sentences(p):
            k = count(s)
            if piece and size + k > max_tokens:
                units.append((" ".join(piece), size))
                piece, size = [], 0
            if k <= max_tokens:
                piece.append(s)
                size += k
        if piece:
            units.append((" ".join(piece), size))
    passages: list[tuple[str, int]] = []
    current: list[str] = []
    size = 0
    for text, n in units:
        if current and size + n > max_tokens:
            passages.append((" ".join(current), size))
            current, size = [], 0
        current.append(text)
        size += n
    if current:
        if size < min_tokens and passages and passages[-1][1] + size <= max_tokens:
            last, n = passages.pop()
            passages.append((last + " " + " ".join(current), n + size))
        else:
            passages.append((" ".join(current), size))
    return [t for t, n in passages if n >= min_tokens]


def ict_query(
    text: str, lang: str, rng: random.Random, count: TokenCounter, args: argparse.Namespace
) -> tuple[str, str] | None:
    """(sentence, passage without it) for the inverse cloze task, or None if unsuitable."""
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return None
    candidates = [
        i
        for i, s in enumerate(sentences)
        if args.min_query_tokens <= count(s) <= args.max_query_tokens
        and is_prose(s, 0.7)
        and in_language(s, lang)
    ]
    if not candidates:
        return None
    i = rng.choice(candidates)
    joiner = "" if re.search(rf"[{_CJK}]", text) else " "
    rest = joiner.join(sentences[:i] + sentences[i + 1 :])
    if count(rest) < args.min_tokens // 2:
        return None
    return sentences[i], rest


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Parse every source, make passages, queries and the split; write the files."""
    start = time.monotonic()
    count = TokenCounter(Path(args.tokenizer))
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    docs = list(all_documents(args.max_docs_per_source))
    print(f"[build_data] {len(docs)} documents parsed in {time.monotonic() - start:.0f} s")
    duplicates = [d for d, n in Counter(doc.doc_id for doc in docs).items() if n > 1]
    if duplicates:
        raise RuntimeError(f"document ids are not unique: {duplicates[:5]}")

    # Generic headings: found in >= 5% of a language's documents (and at least 5 of them).
    heading_docs: dict[str, Counter[str]] = defaultdict(Counter)
    docs_per_lang: Counter[str] = Counter()
    for doc in docs:
        docs_per_lang[doc.lang] += 1
        for h in {s.heading.lower() for s in doc.sections}:
            heading_docs[doc.lang][h] += 1
    generic = {
        lang: {
            h
            for h, n in counter.items()
            if n >= max(5, GENERIC_HEADING_SHARE * docs_per_lang[lang])
        }
        for lang, counter in heading_docs.items()
    }

    seen_text: set[str] = set()
    passages: dict[str, Passage] = {}
    queries: list[dict[str, Any]] = []
    doc_passages: dict[str, list[str]] = defaultdict(list)
    doc_split: dict[str, str] = {}
    for doc in docs:
        rng = random.Random(f"{args.seed}:{doc.doc_id}")
        test = stable_hash(f"{args.seed}:{doc.key}") % 1000 < args.test_permille
        doc_split[doc.doc_id] = "test" if test else "train"
        for si, section in enumerate(doc.sections):
            chunks = chunk_paragraphs(
                section.paragraphs, count, args.min_tokens, args.max_tokens, doc.lang
            )
            first_pid = None
            for ci, text in enumerate(chunks):
                # Boilerplate shared by documents (translator credits, colophons, common
                # options): keep the first passage that starts so.
                norm = re.sub(r"[\d\W_]+", " ", text.lower())[:64]
                if norm in seen_text:
                    continue
                seen_text.add(norm)
                pid = f"{doc.doc_id}#{si}.{ci}"
                ict = ict_query(text, doc.lang, rng, count, args)
                if ict is not None:
                    query, text = ict
                    queries.append({"qid": f"{pid}:ict", "query": query, "kind": "ict", "pos": pid})
                passages[pid] = Passage(pid, doc.doc_id, doc.lang, si, text, first_pid is None)
                doc_passages[doc.doc_id].append(pid)
                first_pid = first_pid or pid
            heading = section.heading
            if first_pid and heading and heading.lower() not in generic[doc.lang]:
                query = heading if heading == doc.title else f"{doc.title}: {heading}"
                if args.min_query_tokens // 2 <= count(query) <= args.max_query_tokens:
                    queries.append(
                        {"qid": f"{first_pid}:head", "query": query, "kind": "heading",
                         "pos": first_pid}
                    )  # fmt: skip
    print(f"[build_data] {len(passages)} passages, {len(queries)} candidate queries")

    doc_of = {d.doc_id: d for d in docs}
    by_lang_split: dict[tuple[str, str], list[str]] = defaultdict(list)
    for doc_id, pids in doc_passages.items():
        by_lang_split[(doc_of[doc_id].lang, doc_split[doc_id])].extend(pids)

    # Test documents per language, in hash order, until the corpus cap.
    test_docs: set[str] = set()
    for lang in sorted(docs_per_lang):
        candidates = sorted(
            (d for d in doc_passages if doc_split[d] == "test" and doc_of[d].lang == lang),
            key=lambda d: stable_hash(f"{args.seed}:order:{d}"),
        )
        total = 0
        for d in candidates:
            if total >= args.max_test_passages_per_lang:
                break
            test_docs.add(d)
            total += len(doc_passages[d])

    # Sample queries per (language, source): the language cap split evenly over its sources.
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for q in queries:
        p = passages[q["pos"]]
        split = doc_split[p.doc_id]
        if split == "test" and p.doc_id not in test_docs:
            continue
        groups[(split, p.lang, doc_of[p.doc_id].source)].append(q)
    sources_per: dict[tuple[str, str], int] = Counter((s, lang) for s, lang, _ in groups)
    selected: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for (split, lang, source), qs in sorted(groups.items()):
        cap = (
            args.max_train_queries_per_lang if split == "train" else args.max_test_queries_per_lang
        )
        cap = max(1, cap // sources_per[(split, lang)])
        rng = random.Random(f"{args.seed}:sample:{split}:{lang}:{source}")
        per_doc: Counter[str] = Counter()
        qs = sorted(qs, key=lambda q: q["qid"])
        rng.shuffle(qs)
        for q in qs:
            doc_id = passages[q["pos"]].doc_id
            if per_doc[doc_id] >= args.max_queries_per_doc:
                continue
            per_doc[doc_id] += 1
            selected[split].append(q)
            if sum(per_doc.values()) >= cap:
                break

    # Hard negatives: other passages of the document, then same-language passages elsewhere.
    for split, qs in selected.items():
        for q in qs:
            p = passages[q["pos"]]
            rng = random.Random(f"{args.seed}:neg:{q['qid']}")
            same_doc = [x for x in doc_passages[p.doc_id] if x != p.pid]
            negs = rng.sample(same_doc, min(args.negatives, len(same_doc)))
            pool = by_lang_split[(p.lang, split)]
            while len(negs) < args.negatives and len(pool) > args.negatives + 1:
                x = pool[rng.randrange(len(pool))]
                if x != p.pid and x not in negs:
                    negs.append(x)
            q.update({"lang": p.lang, "doc": p.doc_id, "source": doc_of[p.doc_id].source})
            q["negs"] = negs

    # Passages written: every passage of the test corpus + those the train triples use.
    keep: set[str] = {pid for d in test_docs for pid in doc_passages[d]}
    for q in selected["train"]:
        keep.add(q["pos"])
        keep.update(q["negs"])
    with (out / "passages.jsonl").open("w", encoding="utf-8") as fh:
        for pid in sorted(keep):
            p = passages[pid]
            split = doc_split[p.doc_id]
            row = {"pid": pid, "doc": p.doc_id, "lang": p.lang, "split": split, "text": p.text}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    for split, qs in selected.items():
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
            for q in sorted(qs, key=lambda q: q["qid"]):
                fh.write(json.dumps(q, ensure_ascii=False) + "\n")

    stats: dict[str, Any] = {}
    for split, qs in selected.items():
        per: dict[str, Counter[str]] = defaultdict(Counter)
        for q in qs:
            per[q["lang"]][q["kind"]] += 1
        stats[f"{split}_queries"] = {lang: dict(c) for lang, c in sorted(per.items())}
    corpus = Counter(passages[pid].lang for d in test_docs for pid in doc_passages[d])
    stats["test_corpus_passages"] = dict(sorted(corpus.items()))
    stats["test_documents"] = dict(sorted(Counter(doc_of[d].lang for d in test_docs).items()))
    stats["documents"] = dict(sorted(docs_per_lang.items()))
    packages = [*MAN_PACKAGES, *RST_PACKAGES, "groff-base"]
    manifest = {
        "command": " ".join(["python -m recipes.m3.build_data", *sys.argv[1:]]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "packages": {p: package_version(p) for p in packages},
        "stats": stats,
        "files": {
            name: hashlib.sha256((out / name).read_bytes()).hexdigest()
            for name in ("passages.jsonl", "train.jsonl", "test.jsonl")
        },
        "seconds": round(time.monotonic() - start, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def default_tokenizer() -> Path:
    """The default retriever's tokenizer.json (prepares the retriever once if needed)."""
    from vllm_landmark.default_models import prepare_default_retriever

    return prepare_default_retriever() / "tokenizer.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from vllm_landmark.default_models import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_cache_dir() / "m3-data")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the retriever's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-permille", type=int, default=100, help="held-out share x 1000")
    parser.add_argument("--min-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--min-query-tokens", type=int, default=6)
    parser.add_argument("--max-query-tokens", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--max-train-queries-per-lang", type=int, default=3000)
    parser.add_argument("--max-test-queries-per-lang", type=int, default=300)
    parser.add_argument("--max-test-passages-per-lang", type=int, default=3000)
    parser.add_argument("--max-queries-per-doc", type=int, default=20)
    parser.add_argument("--max-docs-per-source", type=int, help="for quick trials")
    args = parser.parse_args(argv)
    if args.tokenizer is None:
        args.tokenizer = default_tokenizer()
    return args


def main(argv: list[str] | None = None) -> None:
    manifest = build(parse_args(argv))
    print(json.dumps(manifest["stats"], indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
