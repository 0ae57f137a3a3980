"""Long documents that install offline: Debian's kernel documentation and manual pages.

Each source is one Debian package; its files are taken from dpkg's own file list
(``/var/lib/dpkg/info/<package>.list``) in sorted order, so the same package version gives the
same documents on any machine, whatever else is installed. Kernel documentation (reStructured
text) and manual pages (roff) are turned into plain text split into titled sections.

Install them with ``apt-get install linux-doc-6.1 manpages manpages-de manpages-zh``.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DEBIAN_PACKAGES = ("linux-doc-6.1", "manpages", "manpages-de", "manpages-zh")
KERNEL_DOC = "/usr/share/doc/linux-doc-6.1/Documentation/"


class SourceMissingError(Exception):
    """A Debian package the suite reads is not installed; the message says which to install."""


@dataclass(frozen=True)
class Section:
    """A titled part of a document, as plain text."""

    title: str
    text: str


@dataclass(frozen=True)
class SourceDoc:
    """A document: its name, language, one-line description (man pages) and sections."""

    name: str
    lang: str
    sections: tuple[Section, ...]
    description: str | None = None

    @property
    def chars(self) -> int:
        return sum(len(s.title) + len(s.text) for s in self.sections)


@dataclass(frozen=True)
class SourceSpec:
    """Files of one package that form one corpus: path prefixes, suffixes, and the format."""

    package: str
    lang: str
    kind: str  # "rst" or "man"
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...] = (".gz",)
    exclude: tuple[str, ...] = ()


#: Haystack documents per language (needle, passkey and section tasks).
HAYSTACK_SOURCES: dict[str, tuple[SourceSpec, ...]] = {
    "en": (
        SourceSpec(
            "linux-doc-6.1",
            "en",
            "rst",
            (KERNEL_DOC,),
            (".rst.gz", ".txt.gz"),
            (KERNEL_DOC + "translations/",),
        ),
    ),
    "de": (SourceSpec("manpages-de", "de", "man", ("/usr/share/man/de/",)),),
    "zh": (
        SourceSpec(
            "linux-doc-6.1", "zh", "rst", (KERNEL_DOC + "translations/zh_CN/",), (".rst.gz",)
        ),
        SourceSpec("manpages-zh", "zh", "man", ("/usr/share/man/zh_CN/",)),
    ),
}

#: Manual pages per language, whose NAME line is the reference of the summary task.
SUMMARY_SOURCES: dict[str, tuple[SourceSpec, ...]] = {
    "en": (SourceSpec("manpages", "en", "man", ("/usr/share/man/man",)),),
    "de": (SourceSpec("manpages-de", "de", "man", ("/usr/share/man/de/",)),),
    "zh": (SourceSpec("manpages-zh", "zh", "man", ("/usr/share/man/zh_CN/",)),),
}

LANGUAGES = tuple(HAYSTACK_SOURCES)


@dataclass
class SystemRoot:
    """Where packages are looked up: ``/`` normally, a fake tree in tests."""

    root: Path = Path("/")
    dpkg_info: Path = field(default_factory=lambda: Path("/var/lib/dpkg/info"))

    def package_files(self, package: str) -> list[str]:
        """Absolute paths (as dpkg lists them) of a package's files, sorted."""
        listing = self.dpkg_info / f"{package}.list"
        if not listing.is_file():
            raise SourceMissingError(
                f"Debian package {package} is not installed (no {listing}); install the suite's "
                f"sources with: apt-get install {' '.join(DEBIAN_PACKAGES)}"
            )
        return sorted(line.strip() for line in listing.read_text().splitlines() if line.strip())

    def package_version(self, package: str) -> str | None:
        """Installed version from dpkg's status file, if readable."""
        status = self.dpkg_info.parent / "status"
        if not status.is_file():
            return None
        current = None
        for line in status.read_text(errors="replace").splitlines():
            if line.startswith("Package: "):
                current = line[9:].strip()
            elif line.startswith("Version: ") and current == package:
                return line[9:].strip()
        return None

    def path(self, listed: str) -> Path:
        return self.root / listed.lstrip("/")


def spec_files(system: SystemRoot, spec: SourceSpec) -> list[str]:
    """The files of a spec, sorted (regular files only)."""
    out = []
    for listed in system.package_files(spec.package):
        if not listed.startswith(spec.prefixes) or listed.startswith(spec.exclude or ("\0",)):
            continue
        if not listed.endswith(spec.suffixes):
            continue
        path = system.path(listed)
        if path.is_file() and not path.is_symlink():
            out.append(listed)
    return out


def read_text(path: Path) -> str:
    """A (possibly gzipped) UTF-8 text file; undecodable bytes replaced."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace").replace("\ufeff", "")


# --------------------------------------------------------------------------- helpers

_CJK_CHAR = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")


def join_lines(lines: list[str]) -> str:
    """Join filled text lines with spaces, but not between two CJK characters."""
    out = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if out and not (_CJK_CHAR.match(out[-1]) and _CJK_CHAR.match(line[0])):
            out += " "
        out += line
    return out


def split_long(sections: list[Section], max_chars: int = 3000) -> list[Section]:
    """Split sections longer than ``max_chars`` at line breaks into "title (2)", ... parts."""
    out: list[Section] = []
    for section in sections:
        if len(section.text) <= max_chars:
            out.append(section)
            continue
        parts, current = [], ""
        for line in section.text.split("\n"):
            if current and len(current) + len(line) + 1 > max_chars:
                parts.append(current)
                current = ""
            current = f"{current}\n{line}" if current else line
        if current:
            parts.append(current)
        for i, part in enumerate(parts, start=1):
            out.append(Section(section.title if i == 1 else f"{section.title} ({i})", part))
    return out


# --------------------------------------------------------------------------- roff (man pages)

_ROFF_NAMED = {
    "em": "—",
    "en": "–",
    "bu": "•",
    "aq": "'",
    "dq": '"',
    "lq": "“",
    "rq": "”",
    "oq": "‘",
    "cq": "’",
    "co": "©",
    "rg": "®",
    "Fo": "«",
    "Fc": "»",
    "fo": "‹",
    "fc": "›",
    "hy": "-",
    "mi": "-",
    "pl": "+",
    "mu": "×",
    "di": "÷",
    "<=": "≤",
    ">=": "≥",
    "ti": "~",
    "ha": "^",
    "rs": "\\",
    "sl": "/",
    "at": "@",
    "sh": "#",
    "Do": "$",
    "ss": "ß",
    "a:": "ä",
    "o:": "ö",
    "u:": "ü",
    "A:": "Ä",
    "O:": "Ö",
    "U:": "Ü",
}
_ROFF_ESCAPE = re.compile(
    r"\\(?:"
    r"f(?:\[[^\]]*\]|\(..|.)"  # font changes
    r"|\((..)"  # \(xx named character
    r"|\[([^\]]*)\]"  # \[name] named character
    r"|\*(?:\[[^\]]*\]|\(..|.)"  # strings
    r"|s[+-]?\d"  # size
    r"|[nk](?:\[[^\]]*\]|\(..|.)"  # registers
    r"|[hvwlLDxXbo]'[^']*'"  # motions and the like
    r"|(.)"  # any other single-character escape
    r")"
)
_ROFF_SINGLE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`"}
_SKIP_MACROS = {
    "nf", "fi", "RS", "RE", "in", "ad", "na", "hy", "nh", "ft", "ne", "ti", "ds", "so", "if",
    "ie", "el", "EX", "EE", "UR", "UE", "MT", "ME", "ll", "ta", "ps", "vs", "ss", "cs", "bp",
    "nr", "rm", "am", "ig", "ce", "tr", "cc", "ec", "eo", "lf", "mso", "pc", "ns", "rs", "fam",
    "ev", "PD", "DT", "UC", "AT", "hw", "HP", "OP", "SY", "YS", "TQ", "de", "de1", "MR",
}  # fmt: skip
_BREAK_MACROS = {"PP", "P", "LP", "sp", "br", "TP", "IP", "TQ"}
_FONT_MACROS = {"B", "I", "SM", "SB"}
_ALT_MACROS = {"BR", "RB", "BI", "IB", "IR", "RI"}


def roff_unescape(text: str) -> str:
    """Plain text of a roff line: escapes resolved or dropped, comments removed."""
    text = re.sub(r'\\".*$', "", text)

    def repl(match: re.Match[str]) -> str:
        named = match.group(1) or match.group(2)
        if named is not None:
            return _ROFF_NAMED.get(named, "")
        single = match.group(3)
        if single is not None:
            return _ROFF_SINGLE.get(single, "")
        return ""

    return _ROFF_ESCAPE.sub(repl, text)


def macro_args(rest: str) -> list[str]:
    """Arguments of a macro line: whitespace separated, double quotes group ("" is a quote)."""
    args, current, quoted, i, has = [], "", False, 0, False
    while i < len(rest):
        ch = rest[i]
        if quoted:
            if ch == '"' and rest[i + 1 : i + 2] == '"':
                current += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current += ch
        elif ch == '"':
            quoted, has = True, True
        elif ch in " \t":
            if current or has:
                args.append(current)
            current, has = "", False
        else:
            current += ch
        i += 1
    if current or has:
        args.append(current)
    return args


def parse_man(source: str, fallback_name: str, lang: str) -> SourceDoc | None:
    """A manual page as sections; None for a ``.so`` redirect or a page without text.

    The NAME section's line ("ls \\- list directory contents") becomes ``description``.
    """
    lines = source.replace("\r", "").split("\n")
    joined: list[str] = []
    for line in lines:  # roff line continuation: a trailing backslash
        if joined and joined[-1].endswith("\\") and not joined[-1].endswith("\\\\"):
            joined[-1] = joined[-1][:-1] + line
        else:
            joined.append(line)
    name = fallback_name
    sections: list[tuple[str, list[str]]] = []
    paragraph: list[str] = []
    nofill = False
    in_table = table_format = False
    in_macro_def = False

    def flush() -> None:
        if paragraph and sections:
            text = "\n".join(paragraph) if nofill else join_lines(paragraph)
            if text.strip():
                sections[-1][1].append(text)
        paragraph.clear()

    for raw in joined:
        if in_macro_def:
            in_macro_def = raw.strip() != ".."
            continue
        if raw.startswith(('.\\"', "'\\\"", '.\\"')) or raw.strip() in (".", "'"):
            continue
        if raw.startswith((".", "'")):
            match = re.match(r"[.'][ \t]*(\S+)[ \t]*(.*)$", raw)
            if not match:
                continue
            macro, rest = match.group(1), match.group(2)
            if macro == "so" and not sections:
                return None
            if macro in ("de", "de1", "ig", "am"):
                in_macro_def = True
                continue
            if macro == "TH":
                args = macro_args(roff_unescape(rest))
                if len(args) >= 2:
                    name = f"{args[0].lower()}({args[1]})"
                continue
            if macro in ("SH", "SS"):
                flush()
                title = " ".join(macro_args(roff_unescape(rest))).strip()
                sections.append((title or "?", []))
                continue
            if macro == "TS":
                flush()
                in_table, table_format = True, True
                continue
            if macro == "TE":
                flush()
                in_table = False
                continue
            if macro == "nf":
                flush()
                nofill = True
                continue
            if macro == "fi":
                flush()
                nofill = False
                continue
            if macro in _BREAK_MACROS:
                flush()
                if macro == "IP":
                    args = macro_args(roff_unescape(rest))
                    if args and args[0].strip():
                        paragraph.append(args[0])
                continue
            if macro in _FONT_MACROS:
                text = " ".join(macro_args(roff_unescape(rest)))
                if text:
                    paragraph.append(text)
                continue
            if macro in _ALT_MACROS:
                text = "".join(macro_args(roff_unescape(rest)))
                if text:
                    paragraph.append(text)
                continue
            continue  # anything else (_SKIP_MACROS and unknown requests)
        if in_table:
            if table_format:
                table_format = not raw.rstrip().endswith(".")
                continue
            paragraph.append(roff_unescape(raw).replace("\t", "  ").replace("T{", "").strip())
            continue
        text = roff_unescape(raw)
        if nofill:
            paragraph.append(text.rstrip())
        elif text.strip():
            paragraph.append(text)
        else:
            flush()
    flush()
    built = [Section(title, "\n".join(parts)) for title, parts in sections if parts]
    if not built:
        return None
    description = None
    first_title, first_text = built[0].title, built[0].text
    if first_title.upper() in ("NAME", "BEZEICHNUNG", "名称", "名字", "NOM", "NOMBRE", "ИМЯ"):
        description = " ".join(first_text.split())
        built = built[1:]
        if not built:
            return None
    return SourceDoc(
        name=name, lang=lang, sections=tuple(split_long(built)), description=description
    )


# --------------------------------------------------------------------------- reStructuredText

_UNDERLINE = re.compile(r"^([=\-~^\"'*+#<>_`:.])\1{2,}\s*$")
_ROLE = re.compile(r":[\w:.+-]+:`([^`<]*?)\s*(?:<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`__?")
_LITERAL = re.compile(r"``(.+?)``")
_DROP_DIRECTIVES = {
    "toctree", "kernel-doc", "include", "raw", "image", "figure", "only", "kernel-feat",
    "kernel-abi", "kernel-figure", "kernel-render", "kernel-include", "flat-table",
    "cssclass", "tabularcolumns", "contents", "c:namespace", "highlight", "SPDX-License-Identifier",
}  # fmt: skip


def rst_inline(text: str) -> str:
    """Roles, links and literals reduced to their text."""
    text = _ROLE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    return _LITERAL.sub(r"\1", text)


def parse_rst(source: str, name: str, lang: str) -> SourceDoc | None:
    """A reStructuredText (or plain .txt) document as sections split at its headings."""
    lines = source.replace("\r", "").replace("\t", "    ").split("\n")
    kept: list[str] = []
    drop_indent: int | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if drop_indent is not None:
            if not stripped or indent > drop_indent:
                continue
            drop_indent = None
        if stripped.startswith(".. "):
            match = re.match(r"\.\.\s+([\w:-]+)::", stripped)
            if match is None or match.group(1) in _DROP_DIRECTIVES:
                drop_indent = indent  # comments, labels, dropped directives and their bodies
            continue
        if re.match(r"^\s*:[\w -]+:(\s|$)", line) and kept and not kept[-1].strip():
            continue  # field lists / directive options right after a blank line
        kept.append(line.rstrip())

    sections: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(kept):
        line = kept[i]
        nxt = kept[i + 1] if i + 1 < len(kept) else ""
        if (
            line.strip()
            and not _UNDERLINE.match(line)
            and _UNDERLINE.match(nxt)
            and len(nxt.strip()) >= min(len(line.strip()), 3)
        ):
            if sections[-1][1] and _UNDERLINE.match(sections[-1][1][-1] or "x"):
                sections[-1][1].pop()  # overline of an over-and-underlined title
            sections.append((rst_inline(line.strip()), []))
            i += 2
            continue
        sections[-1][1].append(line)
        i += 1
    built = []
    for title, body in sections:
        text = "\n".join(rst_inline(b) for b in body)
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        if text:
            built.append(Section(title or name, text))
    if not built:
        return None
    return SourceDoc(name=name, lang=lang, sections=tuple(split_long(built)))


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """The documents of some specs, loaded lazily by index (file order is dpkg's, sorted)."""

    specs: tuple[SourceSpec, ...]
    system: SystemRoot = field(default_factory=SystemRoot)

    def __post_init__(self) -> None:
        self.entries: list[tuple[SourceSpec, str]] = [
            (spec, path) for spec in self.specs for path in spec_files(self.system, spec)
        ]
        if not self.entries:
            packages = ", ".join(sorted({s.package for s in self.specs}))
            raise SourceMissingError(f"no usable files in package(s) {packages}")

    def __len__(self) -> int:
        return len(self.entries)

    def doc(self, index: int) -> SourceDoc | None:
        """The document at an index (None when it is empty or a redirect)."""
        return _load(self.system.root, *self.entries[index])

    def packages(self) -> dict[str, str | None]:
        """Package -> installed version."""
        return {s.package: self.system.package_version(s.package) for s in self.specs}


@lru_cache(maxsize=4096)
def _load(root: Path, spec: SourceSpec, listed: str) -> SourceDoc | None:
    text = read_text(root / listed.lstrip("/"))
    rel = listed
    for prefix in spec.prefixes:
        if listed.startswith(prefix):
            rel = listed[len(prefix) :]
    if spec.kind == "man":
        fallback = Path(rel).name.removesuffix(".gz")
        return parse_man(text, fallback, spec.lang)
    name = rel.removesuffix(".gz").removesuffix(".rst").removesuffix(".txt")
    return parse_rst(text, name, spec.lang)
