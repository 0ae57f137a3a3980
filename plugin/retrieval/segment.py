"""Multilingual sentence segmentation: the landmarks (sentence ends) of a document.

A document is cut into *units* with character offsets ``[start, end)`` into the text, stripped
of surrounding whitespace; the end of every unit is a landmark. Rules, in order:

1. Lines. A blank line ends a paragraph. Inside fenced code (```` ``` ```` / ``~~~``), an
   indented code paragraph (every line indented by 4 spaces or a tab) or a table (lines starting
   with ``|``), every non-blank line is its own unit (kind ``"code"`` / ``"table"``); so is a
   Markdown heading (``"heading"``). A list item (``-``, ``*``, ``+``, ``•``, ``1.``, ``1)``,
   ``(a)``, ``一、``, ``①`` ...) always starts a new unit; its indented continuation lines belong to
   it (kind ``"list"``).
2. Single newlines inside a prose paragraph. A line break is kept as a boundary unless the
   paragraph looks hard-wrapped at this point: the line is long (at least ``wrap_ratio`` of the
   paragraph's longest line, which is at least ``min_wrap_width`` characters), does not end
   with sentence punctuation or a colon, and the next line's first word would not have fitted
   on it. Short lines (poems, addresses, lines of a log) stay units of their own.
3. Sentence punctuation inside a paragraph:
   * Latin-script (and Greek, Cyrillic, ...) ``.``, ``!``, ``?``, ``…`` (optionally followed by
     closing quotes/brackets) end a sentence when whitespace follows and the next word does
     not start with a lower-case letter. A ``.`` does not end a sentence after a known
     abbreviation (``Dr.``, ``e.g.``, ``z.B.``, ``usw.``, ``Nr.`` ...), a single letter (initials,
     ``J. R. R.``), dotted abbreviations (``U.S.``), or a German-style ordinal before a month or
     after an article (``am 3. Oktober``, ``der 2. Weltkrieg``). No space after the dot (``3.14``,
     ``example.com``, ``v1.2``): no boundary.
   * CJK full-width ``。！？；`` (and half-width ``｡``), ``!``/``?`` right after a CJK character,
     the Devanagari danda ``।`` / ``॥``, Arabic ``؟`` / ``۔``, Armenian ``։``, Ethiopic ``።``
     end a sentence with or without a following space (languages written without spaces).
4. A unit longer than ``max_chars`` is split: at the last whitespace or comma-like mark in the
   second half of the window, else hard at ``max_chars`` (never inside a combining sequence).
   So a 100,000-character "sentence" gives ``ceil(100000 / max_chars)`` units or a few more.

Pure Python with precompiled regular expressions; about 10-20 MB/s of text on one core.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Literal, NamedTuple

__all__ = ["DEFAULT_MAX_CHARS", "Segment", "SegmentKind", "landmarks", "segment"]

#: Default longest unit in characters (about 100-200 encoder tokens of prose).
DEFAULT_MAX_CHARS = 600

SegmentKind = Literal["sentence", "line", "list", "code", "table", "heading", "split"]


class Segment(NamedTuple):
    """One unit: ``text[start:end]`` (no surrounding whitespace) and what produced it."""

    start: int
    end: int
    kind: SegmentKind


# --- line classification ---------------------------------------------------------------------

_LINE = re.compile(r"[^\n]*\n?")
_FENCE = re.compile(r"[ \t]{0,3}(```+|~~~+)")
_HEADING = re.compile(r"[ \t]{0,3}#{1,6}(?:[ \t]|$)")
_TABLE = re.compile(r"[ \t]*\|")
_INDENTED = re.compile(r"(?: {4}|\t)")
# A line that looks like source code (statement ends, braces, assignments, comments).
_CODE_LINE = re.compile(r"[;{}]\s*$|[=<>]|^\s*(?:#|//|/\*|\*\s|--\s)|[):]\s*$|\(\S*\)", re.M)
_LIST_ITEM = re.compile(
    r"[ \t]*(?:"
    r"[-*+•‣◦·▪–—]"  # bullets
    r"|\d{1,3}[.)]"  # 1.  1)
    r"|\(\d{1,3}\)|\([a-zA-Z]\)"  # (1)  (a)
    r"|[a-zA-Z][.)](?=[ \t])"  # a.  a)
    r"|[ivxIVX]{1,5}[.)](?=[ \t])"  # iv.
    r")[ \t]+\S"
    r"|[ \t]*(?:[一二三四五六七八九十百]+|\d{1,3})[、．]"  # 一、 1、 (CJK lists, no space needed)
    r"|[ \t]*[①-⑳⑴-⒇❶-❿]"
)

# --- sentence ends ---------------------------------------------------------------------------

_CJK_CHARS = (
    "\u3040-\u30ff"  # kana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uff66-\uff9f"  # half-width kana
    "\u3000-\u303f"  # CJK symbols and punctuation
)
_CLOSERS = "\"'”’»)\\]}」』）】〉》〕〗〙〛｣"
# Terminators that end a sentence wherever they stand (scripts written without spaces).
_HARD_END = re.compile(
    r"(?:[。！？；｡।॥؟۔։።]+|(?<=[" + _CJK_CHARS + r"])[!?]+)[" + _CLOSERS + r"]*"
)
# Latin-style terminators, which need whitespace after them.
_SOFT_END = re.compile(r"(?:[.!?…]+|\.\.\.)[" + _CLOSERS + r"]*(?=\s)")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_ABBREVIATIONS = _words(
    """
    mr mrs ms dr prof sr jr st mt vs eg ie cf p
    ed eds approx apr aug dec feb jan jul jun mar nov oct sep sept est inc ltd co corp dept
    univ gen gov col capt lt sgt rev hon messrs mme mlle mm env cap tab eq eqs ref refs al z
    b zb bzw ca nr str hr fr frl dipl ing d h dh u a ua evtl ggf vgl inkl exkl sog abs
    abb bspw bsp geb gest jh jhd mio mrd tel s vs vgl allg urspr anm hrsg verf zt o od sra
    sres srta ud uds pág núm av avda dña
    """
)
# Abbreviations only before a number ("No. 5", "Fig. 3"); elsewhere ordinary words.
_NUMBER_ABBREVIATIONS = _words(
    """
    no nos nr vol vols fig figs pp ch sec art tab eq eqs ref refs abs abb s p
    """
)
_MONTHS = _words(
    """
    januar februar märz april mai juni juli august september oktober november dezember
    jänner january february march june july october december
    """
)
_ORDINAL_CONTEXT = _words(
    """
    am im vom zum bis ab seit der die das den dem des ein einem einer eines zur
    """
)
_WORD_BEFORE = re.compile(r"(\w+(?:\.\w+)*)\W*$")
_NEXT_WORD = re.compile(r"\s*[\"'“‘«(\[]*(\w+)?")
_BREAK_CANDIDATE = re.compile(r"[\s,;:、，；：]")


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF
        or 0x3400 <= o <= 0x4DBF
        or 0x4E00 <= o <= 0x9FFF
        or 0xF900 <= o <= 0xFAFF
        or 0xAC00 <= o <= 0xD7AF
        or 0xFF66 <= o <= 0xFF9F
    )


def _is_code(text: str, lines: list[tuple[int, int]]) -> bool:
    """An indented paragraph with code-like lines, or a paragraph of nearly only such lines."""
    code = sum(1 for a, b in lines if _CODE_LINE.search(text, a, b))
    if all(_INDENTED.match(text, a) for a, _ in lines):
        return 2 * code >= len(lines)
    return len(lines) >= 2 and 5 * code >= 4 * len(lines)


def _soft_end_is_boundary(text: str, dot: int, after: int, stop: int) -> bool:
    """Whether the Latin-style terminator at ``text[dot:after]`` ends a sentence."""
    nxt = _NEXT_WORD.match(text, after, stop)
    next_word = nxt.group(1) if nxt else None
    if next_word is None:
        return True  # punctuation, digits-only handled below, or the end
    first = next_word[0]
    if first.islower():
        return False  # "e.g. this", "etc. and", "... and then"
    if text[dot] != ".":
        return True  # ! ? …
    if text[dot : dot + 2] == ".." or dot == 0:
        return True
    match = _WORD_BEFORE.search(text, max(0, dot - 40), dot)
    if match is None:
        return True
    word = match.group(1)
    if match.end(1) != dot:
        return True  # "(see above). Next": the word ends earlier
    low = word.lower()
    if "." in word:
        return False  # U.S. / z.B. / e.g.
    if low in _NUMBER_ABBREVIATIONS:
        return not first.isdigit()
    if low in _ABBREVIATIONS:
        return False
    if len(word) == 1 and word.isalpha():
        return False  # initials: "J. Smith"
    if word.isdigit() and len(word) <= 2:
        if next_word.lower() in _MONTHS:
            return False  # "am 3. Oktober"
        prev = _WORD_BEFORE.search(text, max(0, match.start() - 20), match.start())
        if prev is not None and prev.group(1).lower() in _ORDINAL_CONTEXT:
            return False  # "der 2. Weltkrieg"
    return True


def _sentence_ends(text: str, start: int, stop: int) -> list[int]:
    """Offsets just after each sentence end inside ``text[start:stop]`` (stop excluded)."""
    ends = [m.end() for m in _HARD_END.finditer(text, start, stop)]
    for m in _SOFT_END.finditer(text, start, stop):
        if m.end() >= stop:
            continue
        dot = m.start()
        # A '.'-run right after a CJK character behaves like a hard end (e.g. "日本語.Next").
        if _soft_end_is_boundary(text, dot, m.end(), stop):
            ends.append(m.end())
    ends.sort()
    return ends


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _split_long(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """Pieces of at most ``max_chars``, cut at whitespace or commas where possible."""
    while end - start > max_chars:
        limit = start + max_chars
        cut = -1
        lo = start + max_chars // 2
        # Last break candidate in the second half of the window.
        for m in _BREAK_CANDIDATE.finditer(text, lo, limit):
            cut = m.end()
        if cut <= start:
            cut = limit
            # Never cut inside a combining sequence or between CJK and its punctuation marks.
            while cut > lo and unicodedata.combining(text[cut]):
                cut -= 1
        a, b = _strip(text, start, cut)
        if b > a:
            yield a, b
        start, end = _strip(text, cut, end)
    if end > start:
        yield start, end


class _Segmenter:
    def __init__(self, text: str, max_chars: int, wrap_ratio: float, min_wrap_width: int) -> None:
        self.text = text
        self.max_chars = max_chars
        self.wrap_ratio = wrap_ratio
        self.min_wrap_width = min_wrap_width
        self.out: list[Segment] = []

    def emit(self, start: int, end: int, kind: SegmentKind) -> None:
        start, end = _strip(self.text, start, end)
        if end <= start:
            return
        if end - start <= self.max_chars:
            self.out.append(Segment(start, end, kind))
            return
        for a, b in _split_long(self.text, start, end, self.max_chars):
            self.out.append(Segment(a, b, "split"))

    def sentences(
        self, start: int, end: int, kind: SegmentKind = "sentence", keep_to: int | None = None
    ) -> None:
        """Split a run of prose at sentence ends (none at or before ``keep_to``: a list
        item's marker such as ``1.`` or ``iv.`` is not a sentence of its own)."""
        last = start
        floor = start if keep_to is None else keep_to
        for e in _sentence_ends(self.text, start, end):
            if e > last and e > floor:
                self.emit(last, e, kind)
                last = e
        self.emit(last, end, kind)

    def prose(self, lines: list[tuple[int, int]]) -> None:
        """A prose paragraph: decide which line breaks are hard, then split sentences."""
        text = self.text
        widths = [len(text[a:b].rstrip()) for a, b in lines]
        wrap = max(widths)
        hard_wrapped = wrap >= self.min_wrap_width
        run_start = lines[0][0]
        for i in range(len(lines) - 1):
            a, b = lines[i]
            line = text[a:b].rstrip()
            soft = False
            long_line = hard_wrapped and widths[i] >= self.wrap_ratio * wrap
            if long_line and line and line[-1] not in ".!?…:。！？；":
                nxt = text[lines[i + 1][0] : lines[i + 1][1]].strip()
                first_word = nxt.split(maxsplit=1)[0] if nxt else ""
                if _is_cjk(nxt[:1]):
                    first_word = nxt[:1]
                soft = widths[i] + 1 + len(first_word) > wrap
            if not soft:
                self.sentences(run_start, lines[i][1])
                run_start = lines[i + 1][0]
        self.sentences(run_start, lines[-1][1])

    def run(self) -> list[Segment]:
        text = self.text
        paragraph: list[tuple[int, int]] = []
        item: list[tuple[int, int]] = []  # the open list item
        fence: str | None = None

        def flush() -> None:
            if item:
                marker = _LIST_ITEM.match(text, item[0][0], item[0][1])
                keep_to = marker.end() if marker is not None else None
                self.sentences(item[0][0], item[-1][1], "list", keep_to)
                item.clear()
            if paragraph:
                if _is_code(text, paragraph):
                    for a, b in paragraph:
                        self.emit(a, b, "code")
                else:
                    self.prose(paragraph)
                paragraph.clear()

        pos = 0
        n = len(text)
        while pos < n:
            m = _LINE.match(text, pos)
            a, b = pos, m.end()
            pos = b
            content_end = b - 1 if b > a and text[b - 1] == "\n" else b
            if fence is not None:
                self.emit(a, content_end, "code")
                stripped = text[a:content_end].strip()
                if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                    fence = None
                continue
            if not text[a:content_end].strip():
                flush()
                continue
            f = _FENCE.match(text, a, content_end)
            if f is not None:
                flush()
                fence = f.group(1)
                self.emit(a, content_end, "code")
                continue
            if _HEADING.match(text, a, content_end):
                flush()
                self.emit(a, content_end, "heading")
                continue
            if _TABLE.match(text, a, content_end):
                flush()
                self.emit(a, content_end, "table")
                continue
            if _LIST_ITEM.match(text, a, content_end):
                flush()
                item.append((a, content_end))
                continue
            if item:
                if text[a] in " \t":  # indented continuation of the item
                    item.append((a, content_end))
                    continue
                flush()
            paragraph.append((a, content_end))
        flush()
        return self.out


def segment(
    text: str,
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    wrap_ratio: float = 0.75,
    min_wrap_width: int = 40,
) -> list[Segment]:
    """Units of ``text`` in document order, non-overlapping, without surrounding whitespace.

    ``max_chars`` bounds every unit (>= 16). Whitespace-only text gives ``[]``.
    See the module docstring for the rules.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if max_chars < 16:
        raise ValueError(f"max_chars must be at least 16, got {max_chars}")
    text = text.replace("\r", "\n") if "\r" in text and "\r\n" not in text else text
    return _Segmenter(text, max_chars, wrap_ratio, min_wrap_width).run()


def landmarks(text: str, **kwargs: int | float) -> list[int]:
    """Character offsets of the sentence ends (the end of every unit of :func:`segment`)."""
    return [s.end for s in segment(text, **kwargs)]  # type: ignore[arg-type]
