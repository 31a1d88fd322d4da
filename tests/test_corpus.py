"""The English corpus fetcher (kdcore.texts.corpus), without the network: each cleaner on a few lines of
its format, the .deb reader on a .deb built here, the sha256 pins, the held-out filter, atomic output,
and the shipped public-domain excerpt."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from kdcore.texts import HERE
from kdcore.texts import cleaners, corpus
from kdcore.texts.cleaners import CLEANERS
from kdcore.texts.corpus import CorpusError, Filter, build, excerpt, is_prose, read_members, shingles, words
from kdcore.texts.corpus_sources import (EXCERPT_AVOIDS, EXCERPT_SHA256, HELD_OUT, PUBLIC_DOMAIN,
                                         SHIPPED_HELD_OUT, SOURCES, Source)

# --- building packages -----------------------------------------------------------------------------


def _tar_xz(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def _deb(files: dict[str, bytes], payload: str = "data.tar.xz", **tar_args) -> bytes:
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({"./control": b"Package: x\n"})),
                (payload, _tar_xz(files, **tar_args))])


def _source(tmp_path: Path, id: str, files: dict[str, bytes], cleaner: str, members: tuple[str, ...],
            licence: str = "GPL-2.0-or-later") -> Source:
    """A pinned source served from a file:// URL under tmp_path/registry."""
    registry = tmp_path / "registry"
    registry.mkdir(exist_ok=True)
    path = registry / f"{id}_1.0_all.deb"
    path.write_bytes(_deb(files))
    return Source(id, "fiction", licence, path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest(),
                  members, cleaner)


def _dictd(entries: list[tuple[str, str]]) -> dict[str, bytes]:
    """A dictd dictionary: the .dict text and its .index (headword, base64 offset, base64 length)."""
    def b64(n: int) -> str:
        digits = ""
        while True:
            digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[n % 64] + digits
            n //= 64
            if not n:
                return digits

    data, index = b"", ["00databaseinfo\tA\tB"]
    for head, body in entries:
        index.append(f"{head}\t{b64(len(data))}\t{b64(len(body.encode()))}")
        data += body.encode()
    return {"./x.dict.dz": data, "./x.index": "\n".join(index).encode()}


def _clean(name: str, members: dict[str, bytes]) -> list[str]:
    return [corpus.squash(corpus.to_ascii(p)) for p in CLEANERS[name](members)]


# --- the source table --------------------------------------------------------------------------------


def test_every_source_is_pinned_and_names_a_cleaner():
    ids = [s.id for s in (*SOURCES, *HELD_OUT)]
    assert len(ids) == len(set(ids)) == 30
    for source in (*SOURCES, *HELD_OUT):
        assert source.cleaner in CLEANERS, source.id
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256), source.id
        assert source.url.startswith("https://") and source.members, source.id
    assert {s.id for s in SOURCES if s.licence == PUBLIC_DOMAIN} == {"devil", "jargon"}
    assert corpus.MIN_WORDS == 1_000_000  # build refuses a corpus under it (issue #24's floor)


def test_default_path_is_under_kd_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_CACHE", str(tmp_path))
    assert corpus.default_path() == tmp_path / "corpora" / "english.txt"
    assert corpus.default_path("other") == tmp_path / "corpora" / "other.txt"
    assert corpus.default_downloads() == tmp_path / "corpora" / "downloads"


# --- cleaners, one small sample of each format --------------------------------------------------------

GCIDE_QUIETUS = """Quietus \\Qui*e"tus\\, n. [LL. quietus quit, discharged, L., at
   rest, quiet, dead. See {Quiet}, a.]
   Final discharge or acquittance, as from debt or obligation;
   that which silences claims; rest; death.
   [1913 Webster]

         When he himself might his quietus make
         With a bare bodkin.                      --Shak.
   [1913 Webster]

         Blessed are the meek: for they shall inherit the earth.
                                                  --Matt. v. 5.
   [1913 Webster]

   Syn: discharge; release.
"""


def test_gcide_keeps_definitions_and_quotations_but_not_bible_quotes(monkeypatch):
    monkeypatch.setattr(cleaners, "GCIDE_DEFINITIONS_KEPT", 1.0)
    assert _clean("gcide", _dictd([("Quietus", GCIDE_QUIETUS)])) == [
        "Quietus: Final discharge or acquittance, as from debt or obligation; that which silences claims; rest; death.",
        "When he himself might his quietus make With a bare bodkin."]


def test_gcide_keeps_an_evenly_spread_share_of_definitions():
    entries = [(f"Word{i}", f"Word{i} \\Word{i}\\, n. The thing number {i} in a long list of things.\n")
               for i in range(100)]
    kept = _clean("gcide", _dictd(entries))
    assert len(kept) == 35 and kept[0].startswith("Word2: ") and kept[1].startswith("Word5: ")


def test_devil_writes_headword_colon_definition_and_drops_attributions():
    entry = ("ABSENTEE, n.  A person with an income who has had the forethought to\n"
             "remove himself from the sphere of exaction.\n\n"
             "    He stayed away and kept his money,\n"
             "    Which made his neighbours far from sunny.\n"
             "                                              Anon.\n")
    assert _clean("devil", _dictd([("absentee", entry)])) == [
        "Absentee: A person with an income who has had the forethought to remove himself from the sphere of exaction.",
        "He stayed away and kept his money, Which made his neighbours far from sunny."]


def test_jargon_drops_headword_senses_and_code_and_unwraps_cross_references():
    entry = ("kluge\n /klooj/\n\n"
             "    1. n. A clever programming trick that verges on being a {crock}.\n\n"
             "        if (x) goto fail;\n\n"
             "    2. [WPI] n. A feature that is implemented in a {rude} manner.\n")
    assert _clean("jargon", _dictd([("kluge", entry)])) == [
        "A clever programming trick that verges on being a crock.",
        "A feature that is implemented in a rude manner."]


def test_rst_keeps_prose_and_admonitions_but_not_headings_code_or_sessions():
    text = """Models
======

Django's :class:`~django.db.models.Model` class maps to a table. See
`the docs <https://example.org>`_ for ``save()``.

.. code-block:: python

    x = 1

.. note::

    A note body is prose too.

For example::

    print("hi")

>>> 1 + 1
2
"""
    assert _clean("rst", {"a.txt": text.encode()}) == [
        "Django's Model class maps to a table. See the docs for save().",
        "A note body is prose too.", "For example:"]


def test_plaintext_drops_headings_tables_and_console_blocks():
    text = """1.2. Setting the clock

The system keeps its clock in UTC. Times are shown
in local time.

    $ date -u
    Mon Jan 1

+-----+-----+
| a   | b   |
+-----+-----+

 * A bullet item that reads like a sentence.
"""
    assert _clean("plaintext", {"a.txt": text.encode()}) == [
        "The system keeps its clock in UTC. Times are shown in local time.",
        "A bullet item that reads like a sentence."]


def test_html_takes_paragraphs_and_skips_code_tables_and_metadata():
    publican = ('<html><head><title>T</title></head><body><div class="para">Use <code class="command">apt'
                '</code> to install packages.</div><pre class="screen">$ apt install x</pre>'
                '<table><tr><td>cell text</td></tr></table><ul><li><p>First item.</p></li></ul></body></html>')
    mallard = ('<page xmlns="http://projectmallard.org/1.0/"><info><desc>Meta.</desc></info><title>Copy</title>'
               '<p>Press <keyseq><key>Ctrl</key><key>C</key></keyseq> to copy, or choose '
               '<guiseq><gui>Edit</gui><gui>Copy</gui></guiseq>.</p></page>')
    assert _clean("html", {"a.html": publican.encode(), "b.page": mallard.encode()}) == [
        "Use apt to install packages.", "First item.", "Press Ctrl+C to copy, or choose Edit, Copy."]


def test_crawl_takes_descriptions_without_their_key_or_lua():
    text = "%%%%\norc\n\nA stout and ugly humanoid.\n\n{{ return 'lua' }}\n%%%%\nelf\n\nShort.\n%%%%\n"
    assert _clean("crawl", {"a.txt": text.encode()}) == ["A stout and ugly humanoid.", "Short."]


def test_wesnoth_takes_messages_and_stories_without_variables_or_markup():
    cfg = ('[message]\n    speaker=Konrad\n    message= _ "We must reach the <i>river</i> before nightfall."\n'
           '[/message]\n[message]\n    message= _ "Hello, $unit.name|!"\n[/message]\n'
           '    story= _ "Long ago, the land was at peace.\n\nAnd then it was not."\n')
    assert _clean("wesnoth", {"a.cfg": cfg.encode()}) == [
        "We must reach the river before nightfall.", "Long ago, the land was at peace.", "And then it was not."]


def test_fortunes_are_split_at_percent_lines():
    assert _clean("fortunes", {"f": b"A fortune.\n%\nAnother one\n  -- Someone\n%\n"}) == [
        "A fortune.", "Another one -- Someone"]


def _lzw(data: bytes) -> bytes:
    """Unix compress's codes for `data` (no CLEAR): 9 bits for the first 256 codes, 10 for the next
    512, ...; those counts are whole groups of 8, so the codes are packed back to back."""
    table, word, codes = {bytes([i]): i for i in range(256)}, b"", []
    for byte in data:
        if word + bytes([byte]) in table:
            word += bytes([byte])
            continue
        codes.append(table[word])
        table[word + bytes([byte])] = len(table) + 1  # 256 is CLEAR
        word = bytes([byte])
    codes.append(table[word])
    bits, packed = 0, 0
    for k, code in enumerate(codes):
        width = 9 + sum(k >= (1 << w) - 256 for w in range(9, 16))
        packed |= code << bits
        bits += width
    return packed.to_bytes((bits + 7) // 8, "little")


def test_the_kjv_reader_decompresses_windows_and_drops_verse_references():
    windows = [b"Holy Bible\nGe1:1 In the beginning God created the heaven and the earth.\n",
               b"".join(b"1Co%d:1 Verse %d of a chapter that goes on and on.\n" % (i, i) for i in range(80))]
    assert len(_lzw(windows[1])) < len(windows[1]) // 2  # codes past 511: widths 10 and 11 are read too
    compressed = [_lzw(w) for w in windows]
    start = 84 + 8 + 4 * (len(windows) + 1)
    offsets = [start, start + len(compressed[0]), start + len(compressed[0]) + len(compressed[1])]
    data = (b"EC02" + b"Compressed Data File".ljust(80, b"\0") + (65536).to_bytes(4, "big")
            + len(windows).to_bytes(4, "big") + b"".join(o.to_bytes(4, "big") for o in offsets)
            + b"".join(compressed))
    verses = _clean("kjv", {"./usr/lib/bible.data": data})
    assert verses[0] == "In the beginning God created the heaven and the earth."
    assert verses[1:] == [f"Verse {i} of a chapter that goes on and on." for i in range(80)]


def test_lzw_clear_restarts_the_codes_in_a_fresh_group():
    first = (72 | 105 << 9 | 256 << 18).to_bytes(9, "little")  # H, i, CLEAR: the rest of the 9-byte group is skipped
    second = (72 | 105 << 9 | 257 << 18).to_bytes(4, "little")  # H, i, and 257: the first entry made after CLEAR
    assert cleaners._unlzw(first + second) == b"HiHiHi"


# --- reading a .deb -------------------------------------------------------------------------------------


def test_deb_reader_takes_matching_members_gunzipped_and_skips_the_rest(tmp_path):
    files = {"./usr/share/dictd/x.dict.dz": gzip.compress(b"the dictionary"), "./usr/share/dictd/x.index": b"idx",
             "./usr/share/dictd/x.dat": b"skipped", "./usr/share/doc/x/copyright": b"not matched"}
    data = _deb(files, symlinks={"./usr/share/dictd/x.link": "x.index"})
    names = [name for name, _ in corpus.ar_members(data)]
    assert names == ["debian-binary", "control.tar.xz", "data.tar.xz"]
    source = Source("x", "dictionary", PUBLIC_DOMAIN, "file:///x.deb", "0" * 64, ("./usr/share/dictd/*",),
                    "devil", skip=("*.dat",))
    assert read_members(source, data) == {"./usr/share/dictd/x.dict.dz": b"the dictionary",
                                          "./usr/share/dictd/x.index": b"idx"}


def test_ar_members_are_read_past_odd_sizes():
    data = _ar([("odd", b"abc"), ("even", b"defg")])
    assert list(corpus.ar_members(data)) == [("odd", b"abc"), ("even", b"defg")]
    with pytest.raises(ValueError, match="not an ar archive"):
        list(corpus.ar_members(b"PK\x03\x04"))


def test_a_zstd_deb_or_a_member_pattern_matching_nothing_is_refused_by_url():
    source = Source("x", "manual", "MIT", "https://example.org/x.deb", "0" * 64, ("./nothing/*",), "html")
    with pytest.raises(CorpusError, match=r"https://example.org/x.deb: its data.tar.zst is zstd"):
        read_members(source, _deb({"./a": b"a"}, payload="data.tar.zst"))
    with pytest.raises(CorpusError, match=r"https://example.org/x.deb: no member matches ./nothing/\*"):
        read_members(source, _deb({"./a": b"a"}))


# --- downloads and their sha256 ---------------------------------------------------------------------------


def test_a_file_with_the_wrong_sha256_is_refused_and_not_kept(tmp_path):
    good = _source(tmp_path, "good", {"./a": b"a"}, "wesnoth", ("./a",))
    wrong = Source(**{**good.__dict__, "sha256": "f" * 64})
    with pytest.raises(CorpusError) as e:
        corpus.download(wrong, tmp_path / "downloads")
    assert str(e.value).startswith(f"{good.url}: sha256 is {good.sha256}, not the pinned {'f' * 64}")
    assert not (tmp_path / "downloads" / good.filename).exists()
    assert corpus.download(good, tmp_path / "downloads") == (tmp_path / "registry" / good.filename).read_bytes()


def test_a_damaged_download_is_fetched_again(tmp_path):
    good = _source(tmp_path, "good", {"./a": b"a"}, "wesnoth", ("./a",))
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / good.filename).write_bytes(b"half a file")
    data = corpus.download(good, tmp_path / "downloads")
    assert hashlib.sha256(data).hexdigest() == good.sha256
    assert (tmp_path / "downloads" / good.filename).read_bytes() == data


def test_a_failed_download_names_the_url(tmp_path):
    gone = Source("gone", "manual", "MIT", (tmp_path / "nowhere.deb").as_uri(), "0" * 64, ("*",), "html")
    with pytest.raises(CorpusError, match=f"cannot download {re.escape(gone.url)}: .*No such file"):
        corpus.download(gone, tmp_path / "downloads")


def test_the_command_line_says_one_line_and_exits_1_on_a_bad_pin(tmp_path, monkeypatch, capsys):
    good = _source(tmp_path, "good", {"./a": b"a"}, "wesnoth", ("./a",))
    monkeypatch.setattr(corpus, "SOURCES", (Source(**{**good.__dict__, "sha256": "0" * 64}),))
    monkeypatch.setattr(corpus, "HELD_OUT", ())
    out = tmp_path / "corpora" / "english.txt"
    assert corpus.main(["--out", str(out), "--downloads", str(tmp_path / "downloads")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {good.url}: sha256 is ") and "Traceback" not in err
    assert not out.exists()


# --- the filters -----------------------------------------------------------------------------------------


def test_is_prose_keeps_sentences_and_drops_code_and_fragments():
    assert is_prose("The system keeps its clock in UTC, and shows local time to its users.")
    assert not is_prose("x = compute(a, b) if a else {b: c} # fallback;")
    assert not is_prose("Too short to count.")
    assert not is_prose("This sentence has no ending punctuation at all and goes on")


def test_held_out_drops_a_paragraph_sharing_8_words_and_keeps_one_sharing_7():
    keep = Filter(shingles(words("one two three four five six seven eight nine ten")))
    assert keep.judge("The words one two three four five six seven eight are shared here.") == "held_out"
    assert keep.judge("Here the words two three four five six seven eight appear, in order.") is None


def test_held_out_counts_8_grams_across_the_boundary_with_the_text_before():
    keep = Filter(shingles(words("one two three four five six seven eight nine ten")))
    assert keep.judge("A paragraph that ends with the words one two three four.") is None
    assert keep.judge("Five six seven eight are the words that begin this one.") == "held_out"
    assert keep.judge("Nine and ten are the words that begin this other one.") is None


def test_a_paragraph_most_of_whose_8_grams_were_kept_is_a_duplicate():
    keep = Filter(set())
    para = "The river was high that spring, and the boats stayed in the harbour all week."
    assert keep.judge(para) is None
    assert keep.judge(para.replace("all week", "all month")) == "duplicate"
    assert keep.judge("A different paragraph about the mill, the miller and the grain he ground.") is None


# --- building ------------------------------------------------------------------------------------------------

TALES = [
    "The river was high that spring, and the boats stayed in the harbour.",
    "The river was high that spring, and the boats stayed in the harbour.",
    "x = 1",
    "An old saying holds that all good things must come to an end before long.",
    "She said the quick brown fox jumps over the lazy dog near the bank, twice.",
    "Later the travellers rested in a small village beside the old mill.",
]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(sources, held-out sources, shipped texts) served from file:// URLs: a story, a fortune, an eval text.
    They are a few words: the corpus's floor is lowered for them."""
    monkeypatch.setattr(corpus, "MIN_WORDS", 1)
    cfg = "".join(f'[message]\n    message= _ "{t}"\n[/message]\n' for t in TALES).encode()
    tales = _source(tmp_path, "tales", {"./tales.cfg": cfg}, "wesnoth", ("./*.cfg",))
    more = _source(tmp_path, "more", {"./more.cfg": b'story= _ "Then the rain stopped, and the whole valley '
                                                     b'was green again by summer."'}, "wesnoth", ("./*.cfg",))
    sayings = _source(tmp_path, "sayings", {"./fortunes/sayings": b"All good things must come to an end "
                                                                  b"before long, they say.\n%\n"},
                      "fortunes", ("./fortunes/*",))
    shipped = tmp_path / "eval.txt"
    shipped.write_text("The quick brown fox jumps over the lazy dog near the bank of the river.\n")
    return (tales, more), (sayings,), (shipped,)


def test_build_writes_the_kept_paragraphs_and_a_manifest(tmp_path, fake):
    sources, held_out, shipped = fake
    lines = []
    manifest = build(tmp_path / "out" / "english.txt", tmp_path / "dl", sources, held_out, shipped, lines.append)
    text = (tmp_path / "out" / "english.txt").read_text()
    assert text == (f"{TALES[0]}\n\n{TALES[5]}\n\n"
                    "Then the rain stopped, and the whole valley was green again by summer.\n")
    assert json.loads((tmp_path / "out" / "english.json").read_text()) == manifest
    assert manifest["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert manifest["total_words"] == len(words(text)) == sum(s["words"] for s in manifest["sources"])
    assert manifest["sources"][0]["dropped"] == {"not_prose": 1, "duplicate": 1, "held_out": 2}
    assert manifest["dropped"] == {"not_prose": 1, "duplicate": 1, "held_out": 2}
    assert [s["licence"] for s in manifest["sources"]] == ["GPL-2.0-or-later"] * 2
    assert [line.split()[0] for line in lines] == ["held", "tales", "more"]  # one progress line per source
    assert "sayings" not in text and "they say" not in text


def test_a_corpus_under_its_floor_is_refused_and_not_written(tmp_path, fake):
    """The pinned sources must give MIN_WORDS words; fewer (a re-pin whose cleaner finds little) is
    one line naming each source's count, and nothing is written."""
    out = tmp_path / "out" / "english.txt"
    total = build(out, tmp_path / "dl", *fake, log=lambda line: None)["total_words"]
    out.unlink(), out.with_suffix(".json").unlink()
    with pytest.raises(CorpusError, match=rf"gave {total} words, fewer than {total + 1}; not written .*tales \d+"):
        build(out, tmp_path / "dl", *fake, log=lambda line: None, min_words=total + 1)
    assert list(out.parent.iterdir()) == []


def test_build_is_deterministic(tmp_path, fake):
    for name in ("a", "b"):
        build(tmp_path / name / "english.txt", tmp_path / "dl", *fake, log=lambda line: None)
    assert (tmp_path / "a" / "english.txt").read_bytes() == (tmp_path / "b" / "english.txt").read_bytes()
    assert (tmp_path / "a" / "english.json").read_bytes() == (tmp_path / "b" / "english.json").read_bytes()


def test_a_failure_part_way_leaves_no_output(tmp_path, fake):
    sources, held_out, shipped = fake
    gone = Source("gone", "fiction", "MIT", (tmp_path / "nowhere.deb").as_uri(), "0" * 64, ("*",), "wesnoth")
    out, lines = tmp_path / "out" / "english.txt", []
    with pytest.raises(CorpusError, match="cannot download"):
        build(out, tmp_path / "dl", (sources[0], gone), held_out, shipped, lines.append)
    assert lines[-1].startswith("tales ")  # the first source was written before the second failed
    assert list(out.parent.iterdir()) == []
    out.write_text("the previous corpus\n")
    with pytest.raises(CorpusError):
        build(out, tmp_path / "dl", (sources[0], gone), held_out, shipped, lines.append)
    assert list(out.parent.iterdir()) == [out] and out.read_text() == "the previous corpus\n"


def test_the_written_text_is_checked_against_the_held_out_texts(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(Filter, "crosses", lambda self, tokens: False)  # a broken filter
    out = tmp_path / "out" / "english.txt"
    with pytest.raises(RuntimeError, match="shares 8 8-grams with the held-out texts"):
        build(out, tmp_path / "dl", *fake, log=lambda line: None)
    assert list(out.parent.iterdir()) == []


def test_the_command_line_builds_with_one_progress_line_per_source(tmp_path, fake, monkeypatch, capsys):
    monkeypatch.setattr(corpus, "SOURCES", fake[0])
    monkeypatch.setattr(corpus, "HELD_OUT", fake[1])
    out = tmp_path / "english.txt"
    assert corpus.main(["--out", str(out), "--downloads", str(tmp_path / "dl")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split()[0] for line in err] == ["held", "tales", "more", f"{out}:"]
    assert out.exists() and (tmp_path / "english.json").exists()


# --- the public-domain excerpt ------------------------------------------------------------------------------

EXCERPT = HERE / "corpus_excerpt.txt"


def test_excerpt_takes_only_public_domain_paragraphs_clear_of_the_shipped_texts(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "EXCERPT_AVOIDS", frozenset({hashlib.sha256(b"grasshopper").hexdigest()[:16]}))
    shipped = tmp_path / "eval.txt"
    shipped.write_text("It was the best of times, it was the worst of times, it was the age of wisdom.\n")
    gpl = [f"A paragraph from a GPL manual, number {i}, about configuring the system." for i in range(6)]
    public = [f"A public-domain paragraph, number {i}, about the follies of mankind." for i in range(6)]
    public[2] = "He wrote that it was the best of times, it was the worst of times."
    public[4] = "A public-domain paragraph about the grasshopper, which sang all summer."
    text = "\n\n".join(gpl + public) + "\n"
    manifest = {"sources": [{"licence": "GPL-2.0-or-later", "paragraphs": 6, "words": 66},
                            {"licence": PUBLIC_DOMAIN, "paragraphs": 6, "words": 66}]}
    chosen = excerpt(text, manifest, [shipped], budget=1000).strip().split("\n\n")
    assert chosen == [p for i, p in enumerate(public) if i not in (2, 4)]


def test_the_shipped_excerpt_is_ascii_prose_of_3000_to_5000_words():
    text = EXCERPT.read_text(encoding="utf-8")
    assert text.isascii() and text.endswith("\n") and "\n\n\n" not in text
    assert 3000 <= len(words(text)) <= 5000
    assert all(p.strip() and "\n" not in p for p in text.strip("\n").split("\n\n"))


def test_the_shipped_excerpt_is_what_the_fetcher_selects_from_public_domain_sources():
    # the fetcher writes it from the pinned Devil's Dictionary and Jargon File only (`--excerpt`);
    # an edited excerpt no longer matches the sha256 recorded beside the pins
    digest = hashlib.sha256(EXCERPT.read_bytes()).hexdigest()
    assert digest == EXCERPT_SHA256, ("kdcore/texts/corpus_excerpt.txt is not the fetcher's excerpt: regenerate "
                                      "it with python -m kdcore.texts.corpus --excerpt and record its sha256")
    avoided = {w for w in words(EXCERPT.read_text()) if hashlib.sha256(w.encode()).hexdigest()[:16] in EXCERPT_AVOIDS}
    assert not avoided


@pytest.mark.parametrize("split", [words, str.split], ids=["words", "whitespace"])
def test_the_shipped_excerpt_shares_no_8_word_sequence_with_the_shipped_texts(split):
    def grams(text):
        tokens = split(text)
        return {tuple(tokens[i:i + 8]) for i in range(len(tokens) - 7)}

    ours = grams(EXCERPT.read_text(encoding="utf-8"))
    for name in SHIPPED_HELD_OUT:
        assert not ours & grams((HERE / name).read_text(encoding="utf-8")), name
