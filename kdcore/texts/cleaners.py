"""Per-format cleaners: the members read from one pinned package in, paragraphs of running text out.

A cleaner takes `{member path: bytes}` and yields paragraphs, one string each, in a fixed order (members
sorted by name, entries in file order), so the corpus is the same on every fetch. Cleaners only take
the text apart from its markup; what is prose, what repeats and what is held out is decided later by
`kdcore.texts.corpus` for every source alike.

The dictionary formats read dictd files (`.index` + `.dict`); the manuals rST, plain text or HTML; the
fiction Dungeon Crawl's descriptions and Battle for Wesnoth's WML strings. Two readers serve only the
held-out filter: the King James Bible of bible-kjv-text and the fortune files.
"""

from __future__ import annotations

import html.parser
import re
import struct
import unicodedata
from typing import Callable, Iterator

Members = dict[str, bytes]
Cleaner = Callable[[Members], Iterator[str]]

# --- text helpers -----------------------------------------------------------------------------------

ASCII_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2013": "-", "\u2014": " -- ", "\u2015": " -- ", "\u2212": "-", "\u2010": "-", "\u2011": "-",
    "\u2026": "...", "\u00a0": " ", "\u00b7": "", "\u2022": "", "\u00e6": "ae", "\u00c6": "Ae",
    "\u0153": "oe", "\u0152": "Oe", "\u00df": "ss", "\u00f0": "th", "\u00fe": "th",
    "\u2192": "->", "\u00d7": "x", "\u00ad": "", "\u200b": "",
}


def to_ascii(text: str) -> str:
    """Curly quotes, dashes and ligatures as the shipped texts write them (` -- `), accents dropped."""
    text = unicodedata.normalize("NFKD", "".join(ASCII_MAP.get(c, c) for c in text))
    return "".join(c for c in text if not unicodedata.combining(c))


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def blocks(text: str) -> Iterator[list[str]]:
    """The blank-line separated blocks of `text`, each a list of its (right-stripped) lines."""
    block: list[str] = []
    for line in text.split("\n"):
        if line.strip():
            block.append(line.rstrip())
        elif block:
            yield block
            block = []
    if block:
        yield block


def indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _texts(members: Members) -> Iterator[str]:
    for name in sorted(members):
        yield members[name].decode("utf-8", "replace")


# --- dictd dictionaries (GCIDE, Devil's Dictionary, Jargon File) -----------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64number(digits: str) -> int:
    n = 0
    for c in digits:
        n = n * 64 + _B64.index(c)
    return n


def dictd_entries(members: Members) -> Iterator[tuple[str, str]]:
    """(headword, entry text) in file order, each entry once (the index lists some under several words)."""
    data = next(b for name, b in members.items() if ".dict" in name)
    index = next(b for name, b in members.items() if name.endswith(".index")).decode("utf-8", "replace")
    spans = {}
    for line in index.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00"):  # 00-database-info and friends
            continue
        spans.setdefault((_b64number(parts[1]), _b64number(parts[2])), parts[0])
    for (offset, length), head in sorted(spans.items()):
        yield head, data[offset:offset + length].decode("utf-8", "replace")


# GCIDE quotes the King James Bible a lot: blocks attributed to a book of it, or to an English
# translator of it, are dropped here (the held-out filter would drop most of them anyway).
_BIBLE_BOOKS = (
    r"Gen|Gen\.? Bible|Ex|Exod|Lev|Levit|Num|Numb|Deut|Josh|Judg|Judges|Ruth|Sam|Kings|Kin|"
    r"Chron|Ezra|Neh|Esth|Esther|Job|Ps|Psa|Psalm|Prov|Eccl|Eccles|Song|Cant|Isa|Is|Jer|Lam|"
    r"Ezek|Dan|Hos|Joel|Amos|Obad|Jonah|Mic|Micah|Nah|Nahum|Hab|Zeph|Hag|Zech|Mal|Matt|Mat|"
    r"Math|Mark|Luke|John|Acts|Rom|Cor|Gal|Eph|Phil|Philip|Col|Thess|Tim|Tit|Titus|Philem|"
    r"Heb|James|Jas|Pet|Jude|Rev|Apoc|Esd|Tob|Tobit|Judith|Wisd|Wisdom|Ecclus|Macc|Bar|Sa|Ki|Chr|Ge|Pr|Mt|"
    r"Mk|Lk|Jn|Canticles|Thes|Corinth|Ephes|Coloss|Philipp|Revelation|Lament|Hebr|Deuter")
# "--Matt. v. 3", "--1 Cor. xiii. 12", "(Gen. i. 3)", "--Ps. xxiii"
_BIBLE_REF = re.compile(r"(?:--|\(|;)\s*(?:[1-3I]{1,3}\.?\s*)?(?:%s)[a-z]*\.?\s*[ivxlc]+\b" % _BIBLE_BOOKS)
_BIBLE_NAME = re.compile(r"--\s*[^\n]{0,30}\b(?:Bible|Wyclif|Wycliffe|Wicliffe|Tyndale|Coverdale|"
                         r"Rheims|Douay|Genevan|Cranmer|Book of Common Prayer|Com\. Prayer)", re.I)
_GC_TAG_LINE = re.compile(r"^\s*\[[^\]]*\]\s*$")
_GC_CHARS = {"ae": "ae", "AE": "AE", "oe": "oe", "OE": "OE", "eth": "th", "thorn": "th", "imac": "i",
             "root": "", "asl": "", "add": "", "mdash": " -- ", "ndash": "-", "deg": " degrees",
             "frac12": "1/2", "frac14": "1/4", "frac34": "3/4", "uum": "u", "cced": "c", "ccedil": "c",
             "nsm": "n", "ntil": "n", "sect": "section", "pound": "pounds", "cent": "cents"}
_GC_CHAR = re.compile(r"\[(ae|AE|oe|OE|eth|thorn|imac|root|asl|add|mdash|ndash|deg|frac\d+|uum|cced|ccedil|"
                      r"nsm|ntil|sect|pound|cent)\]")
# editorial and source tags: [Obs.], [R.], [Colloq.], [1913 Webster], [PJC] ...
_GC_TAG = re.compile(r"\[(?:[^\]]{0,40}\.|[^\]]*(?:Webster|WordNet|PJC|Century|Chambers|Dict|Cent\.|Vocab)"
                     r"[^\]]*|(?:[A-Z][\w.]*[,;]?\s?){1,4})\]")
_GC_ACCENT = re.compile(r"\[([`'\"=~^.\-]?)([A-Za-z]{1,2})([`'\"=~^\-]?)\]")
_GC_POS = re.compile(r"^(?:[a-z]{1,6}\.(?:\s*[a-z]{1,6}\.)*|&|or|and|pl\.?|sing\.?|imp\.?|p\. ?p\.)\s*")
_GC_ATTRIBUTION = re.compile(r"\s*--\s?(?=[A-Z(0-9])[^\"]*?(?=\s\"|$)")
# an evenly spread share of GCIDE's definitions, so the dictionary does not swamp the other kinds
GCIDE_DEFINITIONS_KEPT = 0.35


def _strip_balanced(s: str, opening: str, closing: str) -> str:
    depth = 0
    for i, c in enumerate(s):
        if c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
            if depth == 0:
                return s[i + 1:]
    return ""


def _gcide_text(s: str) -> str:
    """GCIDE's character codes decoded ([ae], ['e]), its tags and sense numbers removed."""
    s = s.replace("{", "").replace("}", "")
    s = _GC_CHAR.sub(lambda m: _GC_CHARS.get(m.group(1), m.group(1)), s)
    s = _GC_TAG.sub("", s)  # before the accents: [R.] is a tag, not an accented R
    s = _GC_ACCENT.sub(lambda m: m.group(2) if (m.group(1) or m.group(3) or len(m.group(2)) == 2)
                       else m.group(0), s)
    s = re.sub(r"\[\d+\]", "", s)
    return re.sub(r"\s+([,;.])", r"\1", squash(s))


def _gcide_strip_header(s: str) -> str:
    """The first block without its 'Head \\pron\\, pos. [etym] (Domain)' header."""
    m = re.match(r"^[^\\\n]*\\[^\\]*\\", s)
    if m:
        s = s[m.end():]
    for _ in range(12):
        s = s.lstrip(" ,;\n")
        if s.startswith("["):
            s = _strip_balanced(s, "[", "]")
        elif s.startswith("("):
            s = _strip_balanced(s, "(", ")")
        elif (m := _GC_POS.match(s)) and m.end() > 0:
            s = s[m.end():]
        else:
            break
    return s


def _gcide_block(lines: list[str], first: bool) -> tuple[str, str] | None:
    """(kind, text) of one block of an entry: a definition, a usage note or a quotation; None to skip."""
    raw = "\n".join(lines)
    if first:
        kind, text = "definition", _gcide_strip_header(raw)
    elif lines[0].lstrip().startswith("Syn:"):
        return None
    elif re.match(r"\s*(Usage|Note):", lines[0]):
        kind, text = "note", re.sub(r"^\s*(Usage|Note):\s*", "", raw)
    else:
        kind, text = ("quotation" if indent(lines[0]) >= 8 else "definition"), raw  # quotations sit at 9 or 12+
    text = _gcide_text(_GC_ATTRIBUTION.sub("", squash(text)))
    if kind == "definition":
        text = re.sub(r"^(?:\d+\.|\([a-z]\))\s*", "", text)
        text = re.sub(r"^\((?:[A-Z][a-z]*\.?\s?)+\)\s*", "", text)  # (Bot.) (Mar. Law)
    return kind, text


def _gcide_blocks(head: str, body: str) -> Iterator[tuple[str, str]]:
    """(kind, text) of each kept block of one entry; definitions as 'Headword: definition'."""
    m = re.match(r"^([^\\\n]+?)\s*\\", body)
    headword = (m.group(1) if m else head).strip()
    first = True
    for block in blocks(body):
        lines = [line for line in block if not _GC_TAG_LINE.match(line)]
        raw = "\n".join(lines)
        if not lines or _BIBLE_REF.search(raw) or _BIBLE_NAME.search(raw):
            first = False
            continue
        judged, first = _gcide_block(lines, first), False
        if judged is None:
            continue
        kind, text = judged
        if kind == "definition":
            if "\\" in text or ("?" in text.split(".")[0] and len(text) < 40):
                continue
            if text and headword and len(re.findall(r"[a-z0-9']+", text.lower())) >= 4:
                text = f"{headword}: {text}"
        yield kind, text


def clean_gcide(members: Members) -> Iterator[str]:
    definitions = 0
    for head, body in dictd_entries(members):
        for kind, text in _gcide_blocks(head, body):
            if kind == "definition":
                definitions += 1
                if int(definitions * GCIDE_DEFINITIONS_KEPT) == int((definitions - 1) * GCIDE_DEFINITIONS_KEPT):
                    continue
            if "\\" not in text and " ? " not in text:
                yield text


def clean_devil(members: Members) -> Iterator[str]:
    for _, body in dictd_entries(members):
        for block in blocks(body):
            if len(block) == 1 and indent(block[0]) > 20:  # a right-aligned attribution
                continue
            text = squash(" ".join(line.strip() for line in block if indent(line) < 40))
            yield re.sub(r"^([A-Z][A-Z' -]+), ((?:[a-z]+\.\s?)+)\s*",
                         lambda m: m.group(1).capitalize() + ": ", text)


_JARGON_POS = re.compile(r"^(?:(?:n|v|vt|vi|adj|adv|interj|prep|pron|conj|pl|excl)\.(?:,\s*|\s+)?)+"
                         r"(?=[A-Z0-9\[(])")


def clean_jargon(members: Members) -> Iterator[str]:
    for _, body in dictd_entries(members):
        entry = list(blocks(body))
        if not entry:
            continue
        base = None
        for block in entry[1:] if indent(entry[0][0]) == 0 else entry:
            base = indent(block[0]) if base is None else base
            if indent(block[0]) > base:  # code, verse and examples are indented deeper
                continue
            text = squash(" ".join(line.strip() for line in block))
            for _ in range(2):  # a leading "2.", "[techspeak]", "n.", "vt." in any order
                text = _JARGON_POS.sub("", text)
                text = re.sub(r"^(?:\d+\.\s*)?(?:\[[^\]]{1,30}\]\s*)+", "", text)
                text = re.sub(r"^\d+\.\s+", "", text)
            yield re.sub(r"\{\s*([^}]*?)\s*\}", r"\1", text)


# --- manuals: plain text, reStructuredText, HTML and Mallard -----------------------------------------


def clean_plaintext(members: Members) -> Iterator[str]:
    """debian-reference and the FAQ as text: tables, headings and console blocks dropped."""
    for text in _texts(members):
        for block in blocks(text):
            if any(re.match(r"^\s*[=\-~*+|]{3,}", line) or "|" in line for line in block):
                continue  # heading underlines, tables
            if len(block) == 1 and len(block[0]) < 60 and not block[0].rstrip().endswith("."):
                continue  # a heading
            first = block[0].lstrip()
            bullet = re.match(r"^([*\-o+]|\d+\.|\(\w\))\s+", first)
            if min(indent(line) for line in block) >= 4 and not bullet and not re.match(r"^[A-Z]", first):
                continue  # indented and not a sentence: code or console in these renderings
            text = squash(" ".join(line.strip() for line in block))
            text = re.sub(r"^([*\-o+]|\d+(\.\d+)*\.|\(\w\))\s+", "", text)
            yield re.sub(r"\[\d+\]", "", text)


_RST_ROLE = re.compile(r":[a-z:+-]+:`~?(?:([^`<]*?)\s*<[^`>]*>|\.?([^`]*))`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`_{1,2}")
_RST_RULE = re.compile(r"([=\-~^*+#\"'`.:_])\1{2,}")
_RST_ADMONITION = re.compile(r"\.\.\s+(note|warning|admonition|tip|important|seealso|versionadded|"
                             r"versionchanged|deprecated|attention|hint)::")


def _rst_inline(s: str) -> str:
    """Inline markup unwrapped: :role:`text`, `links <...>`_, ``literals``, *emphasis*, |subst|."""
    s = _RST_ROLE.sub(lambda m: m.group(2).split(".")[-1] if m.group(2) else m.group(1) or "", s)
    s = _RST_LINK.sub(r"\1", s)
    s = re.sub(r"`([^`]+)`_{1,2}", r"\1", s)
    s = re.sub(r"``([^`]+)``", r"\1", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"\1", s)
    s = re.sub(r"(?<!\w)\*([^*\s][^*]*)\*", r"\1", s)
    s = re.sub(r"\\ ", "", s)
    s = re.sub(r"\[#?\w*\]_", "", s)
    return re.sub(r"\|[\w -]+\|", "", s)


class _RstParagraphs:
    """The prose paragraphs of one rST file: headings, directives, comments, tables, literal blocks
    (after `::`) and interactive sessions dropped; admonition bodies kept as prose."""

    def __init__(self, text: str):
        self.lines = text.split("\n")
        self.out: list[str] = []
        self.para: list[str] = []
        self.skip_deeper_than: int | None = None  # inside a block indented deeper than this

    def paragraphs(self) -> list[str]:
        i = 0
        while i < len(self.lines):
            i = self._line(i)
        self._flush()
        return [_rst_inline(p) for p in self.out]

    def _flush(self) -> None:
        text = squash(" ".join(self.para))
        self.para.clear()
        if text:
            self.out.append(text)

    def _line(self, i: int) -> int:
        """Take in line i; the index of the next line to read."""
        line = self.lines[i]
        stripped, depth = line.strip(), indent(line)
        if self.skip_deeper_than is not None:
            if not stripped or depth > self.skip_deeper_than:
                return i + 1
            self.skip_deeper_than = None
        if not stripped:
            self._flush()
        elif _RST_RULE.fullmatch(stripped):  # a heading's overline or underline
            self.para.clear()
        elif i + 1 < len(self.lines) and _RST_RULE.fullmatch(self.lines[i + 1].strip()):
            self.para.clear()
            return i + 2
        elif stripped.startswith(".."):
            self._directive(stripped, depth)
        elif stripped.startswith(("|", "+-", ">>>", "$ ")):  # tables, sessions: skip to a blank line
            self.skip_deeper_than = depth - 1 if depth else -1
            self.para.clear()
        else:
            self._text(stripped, depth)
        return i + 1

    def _directive(self, stripped: str, depth: int) -> None:
        self._flush()
        if _RST_ADMONITION.match(stripped):  # its body follows as ordinary indented prose
            rest = stripped.split("::", 1)[1].strip()
            if rest and not re.match(r"^[\d.]+$", rest):
                self.para.append(rest)
        else:
            self.skip_deeper_than = depth

    def _text(self, stripped: str, depth: int) -> None:
        if bullet := re.match(r"^([*\-+]|#\.|\d+\.)\s+", stripped):
            self._flush()
            stripped = stripped[bullet.end():]
        if stripped.endswith("::"):  # a literal block follows, indented deeper
            self.para.append(stripped[:-2] + ("" if stripped.endswith(" ::") else ":"))
            self._flush()
            self.skip_deeper_than = depth
        else:
            self.para.append(stripped)


def clean_rst(members: Members) -> Iterator[str]:
    for text in _texts(members):
        yield from _RstParagraphs(text).paragraphs()


class _ParaParser(html.parser.HTMLParser):
    """The text of paragraph-like elements (<p>, <li>, <dd>, Publican's div.para, Mallard's <p>).
    Block code, tables and metadata are skipped; inline code keeps its text (the prose filter
    drops paragraphs that are mostly code). Mallard key and gui sequences read Ctrl+C and A, B."""

    PARA = {"p", "li", "dd", "desc"}
    SKIP = {"pre", "screen", "table", "script", "style", "synopsis", "programlisting",
            "head", "nav", "info", "title", "h1", "h2", "h3", "h4", "h5", "h6", "code"}
    VOID = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paras: list[str] = []
        self.buf: list[str] | None = None
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, skipped block, paragraph)
        self.skipping = 0

    def _emit(self) -> None:
        if self.buf:
            self.paras.append("".join(self.buf))
        self.buf = None

    def handle_starttag(self, tag, attrs):
        tag = tag.split(":")[-1].lower()
        if tag in self.VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        block = (tag in self.SKIP and not (tag == "code" and self.buf is not None)
                 or "programlisting" in classes or "screen" in classes)
        para = (tag in self.PARA or (tag == "div" and "para" in classes)) and not block
        self.stack.append((tag, block, para))
        if block:
            self.skipping += 1
        elif para and not self.skipping:
            self._emit()
            self.buf = []
        elif tag == "key" and self.buf and self.buf[-1][-1:].isalnum():
            self.buf.append("+")
        elif tag == "gui" and self.buf and self.buf[-1][-1:].isalnum():
            self.buf.append(", ")

    def handle_endtag(self, tag):
        tag = tag.split(":")[-1].lower()
        if tag in self.VOID:
            return
        for i in range(len(self.stack) - 1, -1, -1):  # up to the matching open tag: tolerates sloppy nesting
            if self.stack[i][0] == tag:
                for _, block, para in self.stack[i:]:
                    if block:
                        self.skipping -= 1
                    elif para:
                        self._emit()
                del self.stack[i:]
                break

    def handle_data(self, data):
        if self.buf is not None and not self.skipping:
            self.buf.append(data)


def clean_html(members: Members) -> Iterator[str]:
    for text in _texts(members):
        parser = _ParaParser()
        try:
            parser.feed(text)
            parser.close()
        except Exception:  # a page html.parser cannot take is left out, not the whole source
            continue
        for para in parser.paras:
            yield squash(para)


# --- fiction: Dungeon Crawl descriptions, Battle for Wesnoth campaigns -----------------------------


def clean_crawl(members: Members) -> Iterator[str]:
    """Descriptions separated by %%%%: a key line, then the text; {{lua}}, @vars@ and $vars dropped."""
    for text in _texts(members):
        for entry in text.split("%%%%"):
            lines = [line for line in entry.strip().split("\n") if not line.startswith("#")]
            if len(lines) < 3:
                continue
            for block in blocks("\n".join(lines[1:])):
                para = squash(" ".join(block))
                if "{{" not in para and "@" not in para and "$" not in para:
                    yield re.sub(r"<[^>]*>", "", para)


_WML_STRING = re.compile(r'\b(message|story)\s*=\s*_\s*"((?:[^"]|"")*)"')


def clean_wesnoth(members: Members) -> Iterator[str]:
    """The translatable message = _ "..." and story = _ "..." strings, without $variables or macros."""
    for text in _texts(members):
        for m in _WML_STRING.finditer(text):
            string = m.group(2).replace('""', '"')
            if "$" in string or "{" in string or "^" in string[:40]:
                continue
            for para in re.split(r"\n\s*\n", re.sub(r"<[^>]*>", "", string)):
                yield squash(para)


# --- held-out texts: read only to filter against ---------------------------------------------------


def _unlzw(data: bytes, max_bits: int = 16) -> bytes:
    """Unix `compress` (LZW) data without its 3-byte header, as bible-kjv's compresslib.c reads it:
    codes come in groups of `width` bytes, and a width change or a CLEAR skips the rest of a group."""
    out, table = bytearray(), [bytes([i]) for i in range(256)] + [b""]  # 256 is CLEAR
    pos, width, bits, offset, size = 0, 9, 0, 0, 0
    previous, cleared = b"", False
    while True:
        if cleared or offset >= size or len(table) > (1 << width) - 1 and width < max_bits:
            width = 9 if cleared else width + (len(table) > (1 << width) - 1)
            group, pos, cleared = data[pos:pos + width], pos + width, False
            bits, offset, size = int.from_bytes(group, "little"), 0, len(group) * 8 - (width - 1)
            if offset >= size:
                return bytes(out)
        code = (bits >> offset) & ((1 << width) - 1)
        offset += width
        if code == 256 and previous:
            del table[256:]  # the next code adds a dummy entry 256, as compress does
            cleared = True
            continue
        entry = table[code] if code < len(table) else previous + previous[:1]
        out += entry
        if previous and len(table) < 1 << max_bits:
            table.append(previous + entry[:1])
        previous = entry


def clean_kjv(members: Members) -> Iterator[str]:
    """The verses of bible-kjv-text's bible.data: a header, a table of window offsets, then each
    64 KiB window of 'Ge1:1 In the beginning ...' lines compressed on its own (tsl.h)."""
    data = next(iter(members.values()))
    if data[:4] != b"EC02":
        raise ValueError("bible.data: not a version 02 text storage file")
    windows = struct.unpack(">I", data[88:92])[0]
    offsets = struct.unpack(f">{windows + 1}I", data[92:92 + 4 * (windows + 1)])
    text = b"".join(_unlzw(data[a:b]) for a, b in zip(offsets, offsets[1:])).decode("ascii", "replace")
    for line in text.split("\n")[1:]:  # the first line is the title
        if line.strip():
            yield re.sub(r"^\S+?\d+:\d+ ", "", line)


def clean_fortunes(members: Members) -> Iterator[str]:
    """Fortune files: entries separated by lines holding only %."""
    for text in _texts(members):
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            if entry.strip():
                yield squash(entry)


CLEANERS: dict[str, Cleaner] = {
    "gcide": clean_gcide, "devil": clean_devil, "jargon": clean_jargon,
    "plaintext": clean_plaintext, "rst": clean_rst, "html": clean_html,
    "crawl": clean_crawl, "wesnoth": clean_wesnoth,
    "kjv": clean_kjv, "fortunes": clean_fortunes,
}
